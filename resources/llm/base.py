"""`LLMBackend`: the Dagster resource every LLM backend is, and the one call loop they share.

A backend is an OpenAI-compatible chat endpoint plus a health check. This module owns what
is the same for all of them: pooled HTTP clients (one sync, one async per event loop),
argument checks, the attempt loop (retries with back-off, the once-only structured-output
fallback), the bookkeeping in `CompletionMetadata`, and keeping secrets out of everything.
Subclasses say where the secret comes from, what their health check is, and their defaults.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import aiohttp
import httpx
from dagster import ConfigurableResource, InitResourceContext
from httpx_aiohttp import AiohttpTransport
from pydantic import Field, PrivateAttr

from resources.llm.openai_protocol import (
    Failure,
    Outcome,
    Reply,
    StreamAccumulator,
    StructuredForm,
    StructuredOutput,
    bearer,
    build_chat_payload,
    error_from_exception,
    is_response_format_rejection,
    normalize_response_format,
    parse_chat_response,
    redact_error,
    render_response_format,
    tokens_per_second,
    validate_call,
    with_fix,
)
from resources.llm.results import (
    RETRYABLE_CODES,
    CompletionMetadata,
    CompletionResult,
    ErrorCode,
    HealthResult,
    LLMError,
)

log = logging.getLogger(__name__)

# Exceptions a request can end in besides httpx's own: aiohttp's (the hot path, and what
# httpx-aiohttp lets through unmapped), and asyncio's timeouts (TimeoutError).
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, TimeoutError, OSError, aiohttp.ClientError)


@dataclass(slots=True)
class _AsyncPool:
    """One event loop's HTTP clients, sharing one aiohttp connection pool.

    `client` (httpx over the httpx-aiohttp transport) serves probes and streams. Non-streamed
    completions, the enrichment hot path, go to `session` directly: httpx's request and response
    models, cookie jar and URL parsing cost about 0.45 ms of CPU per call over aiohttp's own
    (benchmarks/profile_runner.py), which is most of the client's budget at 64 calls in flight.
    """

    client: httpx.AsyncClient
    session: aiohttp.ClientSession
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout  # the httpx client's, in aiohttp's terms
    proxy: Any | None = None  # the environment's proxy for the chat URL, looked up once
    proxy_auth: aiohttp.BasicAuth | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    max_total_seconds: float
    backoff_base_seconds: float
    backoff_max_seconds: float

    def delay_before_next(self, attempt: int, failure: Failure, elapsed: float,
                          rng: random.Random | None = None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up now."""
        if failure.error.code not in RETRYABLE_CODES or attempt >= self.max_attempts:
            return None
        if failure.retry_after is not None:
            delay = failure.retry_after
        else:
            # Exponential, with "equal jitter": never zero, never synchronised across callers.
            cap = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
            delay = (rng or random).uniform(cap / 2, cap)
        # A wait that runs past the budget would only delay the same answer: give up instead.
        if elapsed + delay >= self.max_total_seconds:
            return None
        return delay


@dataclass(slots=True)
class _Call:
    """One `complete()` call across its attempts: what to send next, and the bookkeeping."""

    backend: "LLMBackend"
    messages: list[dict[str, Any]]
    requested_model: str | None
    temperature: float
    max_tokens: int
    structured: StructuredOutput | None
    stream: bool
    policy: RetryPolicy
    form: StructuredForm | None = None
    fell_back: bool = False
    attempts: int = 0
    started: float = field(default_factory=time.perf_counter)
    attempt_started: float = 0.0
    payload: dict[str, Any] = field(default_factory=dict)
    # Where this attempt goes, and how long it may wait (None: the client's timeout).
    url: str = ""
    endpoint: str = ""
    timeout: httpx.Timeout | None = None

    def __post_init__(self) -> None:
        if self.structured is not None:
            self.form = self.backend._structured_form()
        self._build()

    def _build(self) -> None:
        rf = render_response_format(self.structured, self.form) if self.structured and self.form else None
        self.payload = build_chat_payload(self.messages, model=self.requested_model, temperature=self.temperature,
                                          max_tokens=self.max_tokens, response_format=rf, stream=self.stream)

    def fail_now(self, error: LLMError) -> CompletionResult:
        return self._result(Failure(error))

    def begin_attempt(self) -> None:
        self.attempts += 1
        self.url, self.endpoint = self.backend._chat_endpoint(self)
        read = self.backend._read_timeout_for(self)
        self.timeout = None if read is None else self.backend._timeout(read)
        self.attempt_started = time.perf_counter()

    @property
    def send_timeout(self) -> httpx.Timeout | Any:
        return self.timeout if self.timeout is not None else httpx.USE_CLIENT_DEFAULT

    def after(self, outcome: Outcome) -> CompletionResult | float:
        """The final result, or the seconds to wait before the next attempt."""
        if self.backend._observe(self, outcome):
            return 0.0  # the backend learned something about the server: send again at once
        if isinstance(outcome, Reply):
            if self.structured is not None and self.form is not None:
                self.backend._learn_structured_form(self.form)
            return self._result(outcome)
        if (self.structured is not None and not self.fell_back and self.backend.structured_output == "auto"
                and is_response_format_rejection(outcome.error)):
            # The server refused this form of response_format: try the other one once, at once.
            self.fell_back = True
            previous = self.form
            self.form = "json_object" if self.form == "json_schema" else "json_schema"
            log.info("%s refused response_format %s; retrying with %s", self.backend.backend_name, previous, self.form)
            self._build()
            return 0.0
        elapsed = time.perf_counter() - self.started
        delay = self.policy.delay_before_next(self.attempts, outcome, elapsed)
        if delay is None:
            return self._result(outcome)
        log.warning("%s attempt %d/%d failed (%s); retrying in %.2f s%s", self.backend.backend_name, self.attempts,
                    self.policy.max_attempts, outcome.error.code.value, delay,
                    " (Retry-After)" if outcome.retry_after is not None else "")
        return delay

    def _result(self, outcome: Outcome) -> CompletionResult:
        now = time.perf_counter()
        meta = CompletionMetadata(
            backend=self.backend.backend_name,
            requested_model=self.requested_model,
            latency_ms=round((now - self.started) * 1000.0, 3),
            attempts=self.attempts,
            response_format_type=self.form if self.structured is not None else None,
            endpoint=self.endpoint or None,
            load_budget_used=self.timeout is not None,
        )
        if isinstance(outcome, Failure):
            error = redact_error(outcome.error, self.backend._secret())
            fix = self.backend._fix_for(error, self)
            if fix:
                error = with_fix(error, fix)
            return CompletionResult(ok=False, error=error, metadata=meta)
        attempt_ms = (now - self.attempt_started) * 1000.0
        meta.model = outcome.model
        meta.ttft_ms = None if outcome.ttft_ms is None else round(outcome.ttft_ms, 3)
        meta.prompt_tokens = outcome.prompt_tokens
        meta.completion_tokens = outcome.completion_tokens
        meta.finish_reason = outcome.finish_reason
        if outcome.server_timing:
            meta.timing_source = "server"
            meta.tokens_per_second = outcome.server_tokens_per_second or tokens_per_second(
                outcome.completion_tokens, outcome.server_generation_ms or attempt_ms)
            generation = outcome.server_generation_ms
        else:
            meta.timing_source = "client"
            meta.tokens_per_second = tokens_per_second(outcome.completion_tokens, attempt_ms, outcome.ttft_ms)
            generation = None if outcome.ttft_ms is None else max(attempt_ms - outcome.ttft_ms, 0.0)
        meta.generation_ms = None if generation is None else round(generation, 3)
        if meta.model_substituted:
            self.backend._note_substitution(meta.requested_model, meta.model)
        return CompletionResult(ok=True, response=outcome.text, metadata=meta)


class LLMBackend(ConfigurableResource, abc.ABC):
    """An OpenAI-compatible chat backend. `complete()` never raises for a backend failure."""

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://localhost:1234/v1")
    model: str | None = Field(default=None, description="Model to ask for when a call names none.")
    timeout_seconds: float = Field(default=60.0, gt=0, description=(
        "Per network operation of a completion (a non-streamed answer arrives in one piece, so this "
        "bounds the wait for it)."))
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=16, ge=1, description="Connection pool size: the calls in flight at once.")
    max_attempts: int = Field(default=1, ge=1, le=20)
    max_total_seconds: float = Field(default=300.0, gt=0, description="Budget for all attempts of one call.")
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=8.0, ge=0)
    structured_output: Literal["auto", "json_schema", "json_object"] = Field(default="auto", description=(
        "Wire form of response_format. auto starts with json_schema (OpenAI, LM Studio), falls back once to the "
        "other form (json_object: llama-cpp-python) on that specific rejection, and remembers what worked; "
        "json_schema / json_object send only that form."))

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _client: httpx.Client | None = PrivateAttr(default=None)
    _aclients: dict[asyncio.AbstractEventLoop, _AsyncPool] = PrivateAttr(default_factory=dict)
    _learned_form: StructuredForm | None = PrivateAttr(default=None)
    _pool_size: int | None = PrivateAttr(default=None)
    _substitutions_seen: set[tuple[str | None, str | None]] = PrivateAttr(default_factory=set)

    # ------------------------------------------------------------ what subclasses define

    @property
    @abc.abstractmethod
    def backend_name(self) -> str:
        """The name recorded in metadata (and as the control plane's tool)."""

    @abc.abstractmethod
    def _secret(self) -> str | None:
        """The bearer token, read from the settings at call time (never a config field)."""

    @abc.abstractmethod
    def health(self) -> HealthResult:
        """A cheap check that never spends a completion and never raises for a backend failure."""

    # Whether proxies and certificates may come from the process environment (httpx's trust_env).
    _trust_env: ClassVar[bool] = True

    def _not_configured(self) -> str | None:
        """Why this backend cannot be called at all (a configuration gap), or None."""
        return None

    # Hooks for what a server teaches a backend (LM Studio's native routes, its model loading).

    def _prepare(self, client: httpx.Client) -> None:
        """Before a call's first attempt (sync): e.g. learn, once, which server this is."""

    async def _aprepare(self, client: httpx.AsyncClient) -> None:
        """Before a call's first attempt (async)."""

    def _chat_endpoint(self, call: _Call) -> tuple[str, str]:
        """(URL, path) this attempt goes to."""
        url = self._chat_url
        return url, urlsplit(url).path  # urlsplit caches: no parse per call

    def _read_timeout_for(self, call: _Call) -> float | None:
        """A read timeout for this attempt other than `timeout_seconds` (e.g. a model-load budget), or None."""
        return None

    def _observe(self, call: _Call, outcome: Outcome) -> bool:
        """See each attempt's outcome; True: send the call again at once (it will go elsewhere)."""
        return False

    def _fix_for(self, error: LLMError, call: _Call) -> str | None:
        """This backend's fix for an error (the setting to change, the command to run), or None."""
        return None

    def _note_substitution(self, requested: str | None, answered: str | None) -> None:
        key = (requested, answered)
        if key not in self._substitutions_seen:
            self._substitutions_seen.add(key)
            log.warning("%s answered a request for model %r with model %r (a substitution; recorded in each "
                        "call's metadata)", self.backend_name, requested, answered)

    # ------------------------------------------------------------ completions

    def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        response_format: object = None,
        stream: bool = False,
    ) -> CompletionResult:
        """One chat completion. Bad arguments raise ValueError; backend failures come back in the result."""
        call = self._new_call(prompt, messages, model, temperature, max_tokens, response_format, stream)
        problem = self._not_configured()
        if problem is not None:
            return call.fail_now(LLMError(code=ErrorCode.BAD_REQUEST, message=problem))
        client = self._sync_client()
        self._prepare(client)
        while True:
            call.begin_attempt()
            outcome = self._send_stream(client, call) if stream else self._send(client, call)
            step = call.after(outcome)
            if isinstance(step, CompletionResult):
                return step
            if step > 0:
                time.sleep(step)

    async def acomplete(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        response_format: object = None,
        stream: bool = False,
    ) -> CompletionResult:
        """`complete()` for asyncio; many may run at once on one loop (up to `max_connections` in flight)."""
        call = self._new_call(prompt, messages, model, temperature, max_tokens, response_format, stream)
        problem = self._not_configured()
        if problem is not None:
            return call.fail_now(LLMError(code=ErrorCode.BAD_REQUEST, message=problem))
        pool = self._async_pool()
        await self._aprepare(pool.client)
        while True:
            call.begin_attempt()
            outcome = await (self._asend_stream(pool.client, call) if stream else self._asend(pool, call))
            step = call.after(outcome)
            if isinstance(step, CompletionResult):
                return step
            if step > 0:
                await asyncio.sleep(step)

    def _new_call(self, prompt: str | None, messages: Sequence[Mapping[str, Any]] | None, model: str | None,
                  temperature: float, max_tokens: int, response_format: object, stream: bool) -> _Call:
        checked = validate_call(prompt, messages, temperature, max_tokens)
        return _Call(backend=self, messages=checked, requested_model=model or self.model,
                     temperature=float(temperature), max_tokens=max_tokens,
                     structured=normalize_response_format(response_format), stream=bool(stream),
                     policy=self.retry_policy())

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.max_total_seconds, self.backoff_base_seconds,
                           self.backoff_max_seconds)

    @property
    def _chat_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    def _structured_form(self) -> StructuredForm:
        if self.structured_output != "auto":
            return self.structured_output  # type: ignore[return-value]
        return self._learned_form or "json_schema"

    def _learn_structured_form(self, form: StructuredForm) -> None:
        # Only on a change: setting an attribute of a Dagster resource is slow, and this runs per call.
        if self.structured_output == "auto" and self._learned_form != form:
            self._learned_form = form

    @property
    def learned_structured_form(self) -> StructuredForm | None:
        """The response_format form this server accepted, once a structured call has succeeded."""
        return self._learned_form

    # ------------------------------------------------------------ one attempt, four ways

    def _send(self, client: httpx.Client, call: _Call) -> Outcome:
        try:
            response = client.post(call.url, json=call.payload, timeout=call.send_timeout)
        except _TRANSPORT_ERRORS as exc:
            return Failure(error_from_exception(exc))
        return parse_chat_response(response.status_code, response.content, response.headers.get("retry-after"))

    async def _asend(self, pool: _AsyncPool, call: _Call) -> Outcome:
        timeout = pool.timeout if call.timeout is None else _aiohttp_timeout(call.timeout)
        try:
            async with pool.session.post(call.url, json=call.payload, headers=pool.headers, timeout=timeout,
                                         allow_redirects=False, proxy=pool.proxy,
                                         proxy_auth=pool.proxy_auth) as response:
                content = await response.read()
                return parse_chat_response(response.status, content, response.headers.get("retry-after"))
        except _TRANSPORT_ERRORS as exc:
            return Failure(error_from_exception(exc))

    def _send_stream(self, client: httpx.Client, call: _Call) -> Outcome:
        try:
            with client.stream("POST", call.url, json=call.payload, timeout=call.send_timeout) as response:
                if response.status_code >= 400 or not _is_event_stream(response):
                    response.read()
                    return parse_chat_response(response.status_code, response.content,
                                               response.headers.get("retry-after"))
                acc = StreamAccumulator(call.attempt_started)
                for line in response.iter_lines():
                    acc.feed_line(line)
                    if acc.finished:
                        break
                return acc.outcome()
        except _TRANSPORT_ERRORS as exc:
            return Failure(error_from_exception(exc))

    async def _asend_stream(self, client: httpx.AsyncClient, call: _Call) -> Outcome:
        try:
            async with client.stream("POST", call.url, json=call.payload, timeout=call.send_timeout) as response:
                if response.status_code >= 400 or not _is_event_stream(response):
                    await response.aread()
                    return parse_chat_response(response.status_code, response.content,
                                               response.headers.get("retry-after"))
                acc = StreamAccumulator(call.attempt_started)
                async for line in response.aiter_lines():
                    acc.feed_line(line)
                    if acc.finished:
                        break
                return acc.outcome()
        except _TRANSPORT_ERRORS as exc:
            return Failure(error_from_exception(exc))

    # ------------------------------------------------------------ pooled clients

    def _headers(self) -> dict[str, str]:
        return bearer(self._secret())

    def _timeout(self, read: float | None = None) -> httpx.Timeout:
        # No pool timeout: callers bound their concurrency; a queued call waits for a connection.
        seconds = self.timeout_seconds if read is None else read
        return httpx.Timeout(seconds, connect=min(self.connect_timeout_seconds, self.timeout_seconds), pool=None)

    @property
    def pool_size(self) -> int:
        """Connections per pool: `max_connections`, or more after `ensure_pool_size`."""
        return max(self.max_connections, self._pool_size or 0)

    def ensure_pool_size(self, calls_in_flight: int) -> None:
        """Let `calls_in_flight` calls be in flight at once in the pools opened from now on.

        A run may ask for more concurrency than the resource's `max_connections` (run config
        against the environment's default); without this the pool would quietly cap it.
        """
        if calls_in_flight > self.pool_size:
            self._pool_size = calls_in_flight

    def _limits(self) -> httpx.Limits:
        size = self.pool_size
        return httpx.Limits(max_connections=size, max_keepalive_connections=size)

    def _sync_client(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(headers=self._headers(), timeout=self._timeout(),
                                                limits=self._limits(), trust_env=self._trust_env)
                client = self._client
        return client

    def _async_pool(self) -> _AsyncPool:
        loop = asyncio.get_running_loop()
        pool = self._aclients.get(loop)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._aclients.get(loop)
            if pool is None:
                # An async client belongs to the loop it first ran on; drop those of finished loops.
                for old_loop in [lp for lp in self._aclients if lp.is_closed()]:
                    _discard_async_pool(old_loop, self._aclients.pop(old_loop))
                pool = self._new_async_pool()
                self._aclients[loop] = pool
        return pool

    def _new_async_pool(self) -> _AsyncPool:
        limits, timeout, headers = self._limits(), self._timeout(), self._headers()
        # aiohttp underneath costs a fraction of httpx's own transport in CPU per call; the session is
        # ours (not the transport's lazy one) so the hot path can use it too, on the same connections.
        # trust_env stays off in the session: with it on, aiohttp looks up .netrc and the proxy
        # variables in a worker thread on every request (two thread hops a call); the proxy is
        # looked up here once instead, and the key travels in the Authorization header.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limits.max_connections or 0, limit_per_host=0,
                                            keepalive_timeout=limits.keepalive_expiry))
        proxy, proxy_auth = _env_proxy(self._chat_url) if self._trust_env else (None, None)
        transport = AiohttpTransport(limits=limits, trust_env=self._trust_env, client=session)
        client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, transport=transport,
                                   trust_env=self._trust_env)
        return _AsyncPool(client, session, headers, _aiohttp_timeout(timeout), proxy, proxy_auth)

    def close(self) -> None:
        """Close the pooled clients; the next call opens new ones."""
        with self._lock:
            client, self._client = self._client, None
            aclients, self._aclients = self._aclients, {}
        if client is not None:
            client.close()
        for loop, pool in aclients.items():
            _discard_async_pool(loop, pool)

    async def aclose(self) -> None:
        """Close the clients from inside the event loop that used them (cleanest for async code)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._aclients.pop(loop, None)
        if pool is not None:
            await pool.client.aclose()
        self.close()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()


def _env_proxy(url: str) -> tuple[Any | None, aiohttp.BasicAuth | None]:
    """(proxy, auth) the environment (HTTP(S)_PROXY, NO_PROXY) sets for `url`, as aiohttp would find it."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


def _aiohttp_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """httpx's per-operation timeouts in aiohttp's terms (no pool timeout, as in `_timeout`)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read)


def _is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _discard_async_pool(loop: asyncio.AbstractEventLoop, pool: _AsyncPool) -> None:
    """Close a loop's clients from outside that loop, as well as the loop's state allows."""
    if loop.is_closed():
        _abandon(pool.session)
        return
    try:
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(pool.client.aclose(), loop)
        else:
            loop.run_until_complete(pool.client.aclose())
    except RuntimeError:
        _abandon(pool.session)


def _abandon(session: aiohttp.ClientSession) -> None:
    """Its loop is gone, so nothing can be awaited: mark the aiohttp session closed so that it does not
    log an error when collected; the sockets close when the garbage collector takes their transports."""
    if not session.closed:
        connector = session.connector
        session.detach()
        close_now = getattr(connector, "_close", None)
        if callable(close_now):
            close_now()
