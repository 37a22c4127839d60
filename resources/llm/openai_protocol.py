"""The OpenAI chat-completions protocol as pure functions, shared by every backend.

Nothing here does I/O: building a request body, reading a reply (parsed once, with
`model_validate_json`), and turning an HTTP status, an error body or a transport exception
into an `ErrorCode`. Keeping this free of sockets lets the hot path stay cheap and lets the
LM Studio resource, the remote resource and the health probes agree on every mapping.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from resources.llm.results import ErrorCode, LLMError

StructuredForm = Literal["json_schema", "json_object"]
# How much of a server's error text is kept in a message: enough to act on, never a whole page.
MAX_MESSAGE_CHARS = 300


# ---------------------------------------------------------------- request side


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A request for JSON output, independent of the wire form a given server accepts."""

    name: str
    schema: Mapping[str, Any] | None


def validate_call(
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    temperature: float,
    max_tokens: int,
) -> list[dict[str, Any]]:
    """Check the caller's arguments (a mistake here is a bug: raise) and return the messages."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of `prompt` or `messages`")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be between 0 and 2, got {temperature!r}")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        return [{"role": "user", "content": prompt}]
    assert messages is not None
    if isinstance(messages, (str, bytes)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} mappings")
    out: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValueError(f"each message needs a 'role' and a 'content', got {m!r}")
        out.append(dict(m))
    return out


def normalize_response_format(response_format: object) -> StructuredOutput | None:
    """Accept the OpenAI forms, llama.cpp's form, or a pydantic model class; None means free text."""
    if response_format is None:
        return None
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        return StructuredOutput(name=response_format.__name__, schema=response_format.model_json_schema())
    if not isinstance(response_format, Mapping):
        raise ValueError("response_format must be None, a mapping such as {'type': 'json_schema', ...} "
                         "or a pydantic model class")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise ValueError("a json_schema response_format needs {'json_schema': {'name': ..., 'schema': {...}}}")
        return StructuredOutput(name=str(spec.get("name") or "response"), schema=spec["schema"])
    if kind == "json_object":
        schema = response_format.get("schema")
        if schema is not None and not isinstance(schema, Mapping):
            raise ValueError("the schema of a json_object response_format must be a mapping")
        return StructuredOutput(name="response", schema=schema)
    raise ValueError(f"unknown response_format type {kind!r}: use text, json_schema or json_object")


def render_response_format(spec: StructuredOutput, form: StructuredForm) -> dict[str, Any]:
    if form == "json_object":
        # llama-cpp-python's server: grammar-constrained by the schema when one is given.
        return {"type": "json_object", "schema": dict(spec.schema)} if spec.schema else {"type": "json_object"}
    # LM Studio and OpenAI only take json_schema; without a schema, any object is the closest match.
    schema = dict(spec.schema) if spec.schema else {"type": "object"}
    return {"type": "json_schema", "json_schema": {"name": spec.name, "schema": schema}}


def build_chat_payload(
    messages: list[dict[str, Any]],
    *,
    model: str | None,
    temperature: float,
    max_tokens: int,
    response_format: dict[str, Any] | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    # Without a model name, LM Studio and llama.cpp answer with the loaded model.
    if model:
        payload["model"] = model
    if response_format is not None:
        payload["response_format"] = response_format
    if stream:
        payload["stream"] = True
        # Servers that know it send token counts in a last chunk; others ignore it.
        payload["stream_options"] = {"include_usage": True}
    return payload


# ---------------------------------------------------------------- reply side


class Lenient(BaseModel):
    """Servers add fields freely: read what we need, ignore the rest."""

    model_config = ConfigDict(extra="ignore")


class _Message(Lenient):
    content: str | None = None


class _Choice(Lenient):
    message: _Message | None = None
    delta: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Usage(Lenient):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Stats(Lenient):
    """LM Studio's `/api/v0` chat answers carry these; the OpenAI-compatible ones do not."""

    tokens_per_second: float | None = None
    time_to_first_token: float | None = None  # seconds
    generation_time: float | None = None  # seconds
    stop_reason: str | None = None


# LM Studio's stop reasons in the OpenAI vocabulary of finish_reason.
_STOP_REASONS = {"eosFound": "stop", "stopStringFound": "stop", "maxPredictedTokensReached": "length",
                 "contextLengthReached": "length", "toolCalls": "tool_calls", "userStopped": "stop"}


class _ErrorObject(Lenient):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class ChatCompletionBody(Lenient):
    """Any JSON object a chat endpoint may answer: a completion, a chunk, or an error."""

    model: str | None = None
    choices: list[_Choice] = []
    usage: _Usage | None = None
    stats: _Stats | None = None
    # OpenAI-style object, LM Studio's plain string, FastAPI's `detail`.
    error: _ErrorObject | str | None = None
    detail: Any = None
    message: str | None = None


@dataclass(slots=True)
class Reply:
    text: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    ttft_ms: float | None = None
    server_tokens_per_second: float | None = None
    # Set only when the server reported its own timing (LM Studio's `stats`).
    server_generation_ms: float | None = None
    server_timing: bool = False


@dataclass(slots=True)
class Failure:
    error: LLMError
    # Seconds the server asked us to wait (Retry-After), if it said.
    retry_after: float | None = None


Outcome = Reply | Failure


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _error_fields(body: ChatCompletionBody) -> tuple[str | None, str | None, bool]:
    """(message, code, error_is_plain_string) from whatever error shape the body has."""
    err = body.error
    if isinstance(err, str):
        return err, None, True
    if isinstance(err, _ErrorObject):
        code = None if err.code is None else str(err.code)
        return err.message or err.type or code, code, False
    if body.detail is not None:
        return body.detail if isinstance(body.detail, str) else json.dumps(body.detail)[:MAX_MESSAGE_CHARS], None, False
    return body.message, None, False


def classify_error(status: int, message: str, code: str | None = None, *, plain_string: bool = False) -> ErrorCode:
    lowered = message.lower()
    # LM Studio: 400 (404 on 0.3.5) "No models loaded. Please load a model ..."; checked before the
    # code, which may say model_not_found for this too.
    if "no models loaded" in lowered:
        return ErrorCode.MODEL_NOT_LOADED
    if code == "model_not_found":
        return ErrorCode.MODEL_NOT_FOUND
    if status in (401, 403):
        return ErrorCode.UNAUTHORIZED
    if status == 429:
        return ErrorCode.RATE_LIMITED
    if status == 408:
        return ErrorCode.TIMEOUT
    if status == 404:
        return ErrorCode.MODEL_NOT_FOUND if "model" in lowered else ErrorCode.BAD_REQUEST
    if status >= 500:
        return ErrorCode.SERVER_ERROR
    if status == 400 and plain_string and "crash" in lowered:
        # LM Studio reports a crashed model as a 400 whose `error` is a plain string.
        return ErrorCode.SERVER_ERROR
    if status >= 400:
        return ErrorCode.BAD_REQUEST
    # A 2xx that carries an error: LM Studio answers unknown routes that way.
    return ErrorCode.BAD_RESPONSE


GENERIC_FIXES: dict[ErrorCode, str] = {
    ErrorCode.UNAUTHORIZED: " (check the API key / token in the settings)",
    ErrorCode.MODEL_NOT_LOADED: " (load it, e.g. `lms load <model>`)",
}


def with_fix(error: LLMError, fix: str) -> LLMError:
    """The error with this fix (instead of the generic hint) at the end of its message and in `fix`."""
    generic = GENERIC_FIXES.get(error.code, "")
    message = error.message.removesuffix(generic) if generic else error.message
    return error.model_copy(update={"message": f"{message} (fix: {fix})", "fix": fix})


def is_unknown_route(error: LLMError) -> bool:
    """The server has no such route (as opposed to: the route is there and refused this request).

    LM Studio answers an unknown route with HTTP 200 and "Unexpected endpoint or method"; other
    servers with a 404/405 that names no model (a 404 naming a model is LM Studio's model_not_found,
    and 0.3.5's "No models loaded" is a 404 too).
    """
    if "unexpected endpoint" in error.message.lower():
        return True
    return error.http_status in (404, 405, 501) and error.code in (ErrorCode.BAD_REQUEST, ErrorCode.SERVER_ERROR)


def error_from_body(status: int, content: bytes, retry_after: str | None = None) -> Failure:
    """An error answer (any status >= 400, or a 2xx whose body is an error) as a Failure."""
    message: str | None = None
    code: str | None = None
    plain = False
    try:
        body = ChatCompletionBody.model_validate_json(content)
        message, code, plain = _error_fields(body)
    except ValidationError:
        message = content.decode("utf-8", "replace") if content else None
    reason = httpx.codes.get_reason_phrase(status) if status >= 400 else ""
    text = _clip(message or reason or "no error message")
    error_code = classify_error(status, text, code, plain_string=plain)
    prefix = f"HTTP {status}: " if status >= 400 else "error in answer: "
    return Failure(
        LLMError(code=error_code, message=prefix + text + GENERIC_FIXES.get(error_code, ""), http_status=status),
        retry_after=parse_retry_after(retry_after) if error_code in (ErrorCode.RATE_LIMITED, ErrorCode.SERVER_ERROR) else None,
    )


def parse_chat_response(status: int, content: bytes, retry_after: str | None = None) -> Outcome:
    """Read a whole (non-streamed) chat-completion answer: parsed once, validated once."""
    if status >= 400:
        return error_from_body(status, content, retry_after)
    try:
        body = ChatCompletionBody.model_validate_json(content)
    except ValidationError:
        return Failure(LLMError(code=ErrorCode.BAD_RESPONSE, http_status=status,
                                message=f"HTTP {status}: the answer is not a JSON chat completion: "
                                        + _clip(content.decode("utf-8", "replace") or "(empty body)")))
    if body.error is not None or not body.choices:
        if body.error is not None or body.detail is not None:
            return error_from_body(status, content)
        return Failure(LLMError(code=ErrorCode.BAD_RESPONSE, http_status=status,
                                message=f"HTTP {status}: the answer has no choices"))
    choice = body.choices[0]
    text = choice.message.content if choice.message is not None else choice.text
    if text is None:
        return Failure(LLMError(code=ErrorCode.BAD_RESPONSE, http_status=status,
                                message=f"HTTP {status}: the answer has no message content"))
    usage = body.usage
    stats = body.stats
    stop_reason = stats.stop_reason if stats else None
    return Reply(
        text=text,
        model=body.model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        finish_reason=choice.finish_reason or (_STOP_REASONS.get(stop_reason, stop_reason) if stop_reason else None),
        ttft_ms=stats.time_to_first_token * 1000.0 if stats and stats.time_to_first_token is not None else None,
        server_tokens_per_second=stats.tokens_per_second if stats else None,
        server_generation_ms=stats.generation_time * 1000.0 if stats and stats.generation_time is not None else None,
        server_timing=stats is not None and (stats.tokens_per_second is not None
                                             or stats.time_to_first_token is not None),
    )


class StreamAccumulator:
    """Builds one Reply from server-sent events; a stream cut before its finish reason is a failure."""

    __slots__ = ("_started", "_parts", "_model", "_finish", "_usage", "_ttft_ms", "_chunks", "_failure", "_done")

    def __init__(self, started: float) -> None:
        self._started = started
        self._parts: list[str] = []
        self._model: str | None = None
        self._finish: str | None = None
        self._usage: _Usage | None = None
        self._ttft_ms: float | None = None
        self._chunks = 0
        self._failure: Failure | None = None
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done or self._failure is not None

    def feed_line(self, line: str) -> None:
        if self.finished or not line.startswith("data:"):
            return  # comments, `event:` lines, keep-alives
        data = line[5:].strip()
        if data == "[DONE]":
            self._done = True
            return
        try:
            chunk = ChatCompletionBody.model_validate_json(data)
        except ValidationError:
            self._failure = Failure(LLMError(code=ErrorCode.BAD_RESPONSE,
                                             message="a streamed event is not JSON: " + _clip(data)))
            return
        if chunk.error is not None:
            self._failure = error_from_body(200, data.encode())
            return
        self._model = chunk.model or self._model
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices[:1]:
            piece = (choice.delta.content if choice.delta else None) or choice.text
            if piece:
                if self._ttft_ms is None:
                    self._ttft_ms = (time.perf_counter() - self._started) * 1000.0
                self._parts.append(piece)
                self._chunks += 1
            if choice.finish_reason:
                self._finish = choice.finish_reason

    def outcome(self) -> Outcome:
        if self._failure is not None:
            return self._failure
        if self._finish is None:
            return Failure(LLMError(code=ErrorCode.TRUNCATED,
                                    message="the stream ended before a finish reason: the answer is incomplete"))
        usage = self._usage
        return Reply(
            text="".join(self._parts),
            model=self._model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            # Without a usage chunk, one content event is one token on llama.cpp-based servers.
            completion_tokens=usage.completion_tokens if usage and usage.completion_tokens is not None else self._chunks,
            finish_reason=self._finish,
            ttft_ms=self._ttft_ms,
        )


def is_response_format_rejection(error: LLMError) -> bool:
    """The server refused the *form* of response_format (json_schema vs json_object), nothing else.

    llama-cpp-python answers json_schema with a 500 carrying its validation message; LM Studio
    answers json_object with a 400. Either names the field or the type it refused.
    """
    if error.http_status not in (400, 422, 500):
        return False
    text = error.message.lower()
    return "response_format" in text or "json_schema" in text or "json_object" in text


def tokens_per_second(completion_tokens: int | None, generation_ms: float, ttft_ms: float | None = None) -> float | None:
    if not completion_tokens or generation_ms <= 0:
        return None
    # With a known time to first token, the prompt's processing is not generation time.
    seconds = (generation_ms - (ttft_ms or 0.0)) / 1000.0
    if seconds <= 0:
        seconds = generation_ms / 1000.0
    return completion_tokens / seconds


# ---------------------------------------------------------------- transport faults


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _aiohttp_error(exc: BaseException) -> LLMError | None:
    """httpx-aiohttp maps aiohttp's exceptions coarsely (a dropped connection becomes ConnectTimeout):
    classify from the original aiohttp exception instead."""
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, aiohttp.ClientError):
        cause = cause.__cause__
    if cause is None:
        return None
    detail = _clip(str(cause) or type(cause).__name__)
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return LLMError(code=ErrorCode.TIMEOUT, message=f"no answer in time: {detail}")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return LLMError(code=ErrorCode.CONNECTION_REFUSED, message=f"cannot connect: {detail}")
    if isinstance(cause, aiohttp.ClientPayloadError):
        return LLMError(code=ErrorCode.TRUNCATED, message=f"the answer was cut off: {detail}")
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return LLMError(code=ErrorCode.SERVER_ERROR, message="the server closed the connection without answering")
    return LLMError(code=ErrorCode.SERVER_ERROR, message=f"transport error: {detail}")


def error_from_exception(exc: BaseException) -> LLMError:
    """A transport exception (httpx, httpx-aiohttp, asyncio timeout) as an LLMError."""
    mapped = _aiohttp_error(exc)
    if mapped is not None:
        return mapped
    detail = _clip(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ConnectError):
        return LLMError(code=ErrorCode.CONNECTION_REFUSED, message=f"cannot connect: {detail}")
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return LLMError(code=ErrorCode.TIMEOUT, message=f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.RemoteProtocolError):
        if "incomplete" in detail or "without sending complete message body" in detail:
            return LLMError(code=ErrorCode.TRUNCATED, message=f"the answer was cut off: {detail}")
        return LLMError(code=ErrorCode.SERVER_ERROR, message=f"the server broke the protocol: {detail}")
    if isinstance(exc, httpx.DecodingError):
        return LLMError(code=ErrorCode.BAD_RESPONSE, message=f"the answer cannot be decoded: {detail}")
    return LLMError(code=ErrorCode.SERVER_ERROR, message=f"transport error ({type(exc).__name__}): {detail}")


def is_connect_failure(exc: BaseException) -> bool:
    """Nothing answered at the address at all (refused, unroutable, no SYN-ACK in time)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


# ---------------------------------------------------------------- secrets

REDACTED = "[REDACTED]"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def redact(text: str, secret: str | None) -> str:
    """Servers may echo a key back in an error message (OpenAI does): never pass it on."""
    if not secret or len(secret) < 4 or secret not in text:
        return text
    return text.replace(secret, REDACTED)


def redact_error(error: LLMError, secret: str | None) -> LLMError:
    clean = redact(error.message, secret)
    return error if clean == error.message else error.model_copy(update={"message": clean})
