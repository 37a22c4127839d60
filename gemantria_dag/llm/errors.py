"""Errors of LLM calls as pure functions: an HTTP status, an error body or a transport exception
becomes an `ErrorCode`, a `Retry-After` header becomes seconds, and a secret never reaches a message."""

from __future__ import annotations

import sys
import time
from email.utils import parsedate_to_datetime

import httpx

from gemantria_dag.llm.results import ErrorCode, LLMError

# How much of a server's error text is kept in a message: enough to act on, never a whole page.
MAX_MESSAGE_CHARS = 300


def clip(text: str) -> str:
    """`text` on one line, at most MAX_MESSAGE_CHARS characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


# How servers say "the model is still loading": llama.cpp's server (and LM Studio, Ollama, and
# Hugging Face's inference API, "Model X is currently loading") answer 503 with one of these.
_LOADING = ("loading model", "model is loading", "currently loading", "model is being loaded")


def classify_error(status: int, message: str, code: str | None = None, *, plain_string: bool = False) -> ErrorCode:
    """The ErrorCode of an error answer: by LM Studio's and llama.cpp's known messages first, then by
    the HTTP status (OpenAI's conventions); a 2xx carrying an error is `bad_response`."""
    lowered = message.lower()
    if status == 503 and any(s in lowered for s in _LOADING):
        return ErrorCode.MODEL_LOADING
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


def is_response_format_rejection(error: LLMError) -> bool:
    """The server refused the *form* of response_format (json_schema vs json_object), nothing else.

    llama-cpp-python answers json_schema with a 500 carrying its validation message; LM Studio
    answers json_object with a 400. Either names the field or the type it refused.
    """
    if error.http_status not in (400, 422, 500):
        return False
    text = error.message.lower()
    return "response_format" in text or "json_schema" in text or "json_object" in text


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
    detail = clip(str(cause) or type(cause).__name__)
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
    detail = clip(str(exc) or type(exc).__name__)
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


REDACTED = "[REDACTED]"


def redact(text: str, secret: str | None) -> str:
    """Servers may echo a key back in an error message (OpenAI does): never pass it on."""
    if not secret or len(secret) < 4 or secret not in text:
        return text
    return text.replace(secret, REDACTED)


def redact_error(error: LLMError, secret: str | None) -> LLMError:
    """`error` with `secret` replaced in its message (`redact`); the same object when there was nothing to hide."""
    clean = redact(error.message, secret)
    return error if clean == error.message else error.model_copy(update={"message": clean})
