"""One attempt of a chat completion, four ways (sync or async, whole or streamed), each bounded by
wall-clock time and each sent again once when a pooled connection turns out to be dead.

- **Wall clock.** `Timeouts.read` bounds the whole attempt, not only the wait between bytes: a server
  that sends the status at once and then one byte every 2 s is cut at the limit (aiohttp's `total`;
  a deadline checked between chunks on httpx), recorded as `timeout`.
- **Dead pooled connection.** A server may close a keep-alive connection while it sits in our pool
  (llama.cpp's server drops idle ones after a few seconds): the next request on it ends with no
  byte of an answer (aiohttp's ServerDisconnectedError, httpx's "Server disconnected without
  sending a response"). The server never read that request, so it is sent again at once, on a new
  connection, once; it is not an attempt and not a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import aiohttp
import httpx

from gemantria_dag.llm.call import CallState, Timeouts
from gemantria_dag.llm.errors import error_from_exception
from gemantria_dag.llm.reply import Failure, Outcome, StreamAccumulator, parse_chat_response
from gemantria_dag.llm.results import ErrorCode, LLMError
from resources.llm.pools import AsyncPool, aiohttp_timeout, httpx_timeout

# Exceptions a request can end in besides httpx's own: aiohttp's (the hot path, and what
# httpx-aiohttp lets through unmapped), and asyncio's timeouts (TimeoutError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, TimeoutError, OSError, aiohttp.ClientError)


# Sees each answer (the call, its status, `get(name)`: a header's value or None): the backend's rate-limit pacer.
Observer = Callable[[CallState, int, Callable[[str], str | None]], None]


class _Deadline(Exception):
    """The attempt ran past its wall-clock limit while the answer was still arriving."""


def _unanswered(exc: BaseException) -> bool:
    """The connection closed before any byte of an answer: the request was never read."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ServerDisconnectedError):
            return True
        if isinstance(cause, httpx.RemoteProtocolError) and "without sending a response" in str(cause):
            return True
        cause = cause.__cause__
    return False


def _failure(exc: BaseException, limit: float | None) -> Failure:
    if isinstance(exc, (_Deadline, TimeoutError)) and not isinstance(exc, aiohttp.ClientError) and limit:
        return Failure(
            LLMError(code=ErrorCode.TIMEOUT, message=f"no complete answer within {limit:g} s (one attempt's limit)")
        )
    return Failure(error_from_exception(exc))


def _chunks_until(chunks: Iterator[bytes], deadline: float | None) -> bytes:
    parts: list[bytes] = []
    for chunk in chunks:
        parts.append(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise _Deadline()
    return b"".join(parts)


def send(
    client: httpx.Client, call: CallState, timeouts: Timeouts, own: bool, observe: Observer | None = None
) -> Outcome:
    """A whole answer on the sync client (`own`: the attempt's timeouts differ from the client's)."""
    timeout = httpx_timeout(timeouts) if own else httpx.USE_CLIENT_DEFAULT
    for resend in (False, True):
        deadline = None if timeouts.read is None else time.monotonic() + timeouts.read
        try:
            with client.stream("POST", call.url, json=call.payload, timeout=timeout) as response:
                if observe is not None:
                    observe(call, response.status_code, response.headers.get)
                content = _chunks_until(response.iter_bytes(), deadline)
                return parse_chat_response(response.status_code, content, response.headers.get("retry-after"))
        except (*TRANSPORT_ERRORS, _Deadline) as exc:
            if not resend and _unanswered(exc):
                continue
            return _failure(exc, timeouts.read)
    raise AssertionError("unreachable")


async def asend(
    pool: AsyncPool, call: CallState, timeouts: Timeouts, own: bool, observe: Observer | None = None
) -> Outcome:
    """A whole answer on the loop's aiohttp session (the enrichment hot path)."""
    timeout = aiohttp_timeout(timeouts) if own else pool.timeout
    for resend in (False, True):
        try:
            async with pool.session.post(
                call.url,
                json=call.payload,
                headers=pool.headers,
                timeout=timeout,
                allow_redirects=False,
                proxy=pool.proxy,
                proxy_auth=pool.proxy_auth,
            ) as response:
                if observe is not None:
                    observe(call, response.status, response.headers.get)
                content = await response.read()
                return parse_chat_response(response.status, content, response.headers.get("retry-after"))
        except TRANSPORT_ERRORS as exc:
            if not resend and _unanswered(exc):
                continue
            return _failure(exc, timeouts.read)
    raise AssertionError("unreachable")


def send_stream(
    client: httpx.Client, call: CallState, timeouts: Timeouts, own: bool, observe: Observer | None = None
) -> Outcome:
    """A streamed answer on the sync client; the deadline is checked between events."""
    timeout = httpx_timeout(timeouts) if own else httpx.USE_CLIENT_DEFAULT
    for resend in (False, True):
        deadline = None if timeouts.read is None else time.monotonic() + timeouts.read
        try:
            with client.stream("POST", call.url, json=call.payload, timeout=timeout) as response:
                if observe is not None:
                    observe(call, response.status_code, response.headers.get)
                if response.status_code >= 400 or not _is_event_stream(response):
                    content = _chunks_until(response.iter_bytes(), deadline)
                    return parse_chat_response(response.status_code, content, response.headers.get("retry-after"))
                acc = StreamAccumulator(call.attempt_started)
                for line in response.iter_lines():
                    acc.feed_line(line)
                    if acc.finished:
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        raise _Deadline()
                return acc.outcome()
        except (*TRANSPORT_ERRORS, _Deadline) as exc:
            if not resend and _unanswered(exc):
                continue
            return _failure(exc, timeouts.read)
    raise AssertionError("unreachable")


async def asend_stream(
    client: httpx.AsyncClient, call: CallState, timeouts: Timeouts, own: bool, observe: Observer | None = None
) -> Outcome:
    """A streamed answer on the loop's httpx client, under one asyncio timeout for the attempt."""
    timeout = httpx_timeout(timeouts) if own else httpx.USE_CLIENT_DEFAULT
    for resend in (False, True):
        try:
            async with asyncio.timeout(timeouts.read):
                return await _astream(client, call, timeout, observe)
        except TRANSPORT_ERRORS as exc:
            if not resend and _unanswered(exc):
                continue
            return _failure(exc, timeouts.read)
    raise AssertionError("unreachable")


async def _astream(
    client: httpx.AsyncClient, call: CallState, timeout: httpx.Timeout | object, observe: Observer | None
) -> Outcome:
    async with client.stream("POST", call.url, json=call.payload, timeout=timeout) as response:  # type: ignore[arg-type]
        if observe is not None:
            observe(call, response.status_code, response.headers.get)
        if response.status_code >= 400 or not _is_event_stream(response):
            await response.aread()
            return parse_chat_response(response.status_code, response.content, response.headers.get("retry-after"))
        acc = StreamAccumulator(call.attempt_started)
        async for line in response.aiter_lines():
            acc.feed_line(line)
            if acc.finished:
                break
        return acc.outcome()


def _is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")
