"""The reply side of OpenAI's chat-completions protocol, as pure functions.

Reading a whole answer or a stream of server-sent events (parsed once, with
`model_validate_json`) into a `Reply` or a `Failure`. No I/O: the LM Studio resource, the remote
resource and the health probes share every mapping, and the hot path stays cheap.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from gemantria_dag.llm.errors import GENERIC_FIXES, MAX_MESSAGE_CHARS, classify_error, clip, parse_retry_after
from gemantria_dag.llm.reasoning import content_text, final_answer
from gemantria_dag.llm.results import ErrorCode, LLMError


class Lenient(BaseModel):
    """Servers add fields freely: read what we need, ignore the rest."""

    model_config = ConfigDict(extra="ignore")


class _Message(Lenient):
    # A string, or OpenAI-style content parts (see gemantria_dag.llm.reasoning).
    content: str | list[Any] | None = None
    # Reasoning in a field of its own: llama.cpp/DeepSeek/vLLM `reasoning_content`, LM Studio/OpenRouter `reasoning`.
    reasoning_content: str | None = None
    reasoning: str | None = None


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
_STOP_REASONS = {
    "eosFound": "stop",
    "stopStringFound": "stop",
    "maxPredictedTokensReached": "length",
    "contextLengthReached": "length",
    "toolCalls": "tool_calls",
    "userStopped": "stop",
}


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
    """An answer: `text` without its reasoning, the model that answered (as the server named it), token usage
    and `finish_reason` (OpenAI's vocabulary). Times in milliseconds: `ttft_ms` measured on a stream or from
    LM Studio's `stats`, which also give `server_tokens_per_second` and `server_generation_ms`."""

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
    # Reasoning that came with the answer (inline or in its own field), removed from `text`.
    reasoning_chars: int = 0
    # The reasoning was opened and never closed: the budget ran out while thinking (`text` is empty).
    reasoning_unfinished: bool = False


@dataclass(slots=True)
class Failure:
    """A failed attempt: its error, and the wait in seconds the server asked for (Retry-After), if it did."""

    error: LLMError
    # Seconds the server asked us to wait (Retry-After), if it said.
    retry_after: float | None = None


Outcome = Reply | Failure


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


def error_from_body(status: int, content: bytes, retry_after: str | None = None) -> Failure:
    """An error answer (any status >= 400, or a 2xx whose body is an error) as a Failure.

    A 2xx whose error object carries a numeric HTTP code (OpenRouter answers 200 with
    `{"error": {"code": 429, ...}}` when a provider refused) is typed as that status would be.
    """
    message: str | None = None
    code: str | None = None
    plain = False
    try:
        body = ChatCompletionBody.model_validate_json(content)
        message, code, plain = _error_fields(body)
    except ValidationError:
        message = content.decode("utf-8", "replace") if content else None
    effective = status
    if status < 400 and code is not None and code.isdigit() and 400 <= int(code) <= 599:
        effective = int(code)
    reason = httpx.codes.get_reason_phrase(effective) if effective >= 400 else ""
    text = clip(message or reason or "no error message")
    error_code = classify_error(effective, text, code, plain_string=plain)
    if status >= 400:
        prefix = f"HTTP {status}: "
    elif effective != status:
        prefix = f"error {effective} in an HTTP {status} answer: "
    else:
        prefix = "error in answer: "
    return Failure(
        LLMError(code=error_code, message=prefix + text + GENERIC_FIXES.get(error_code, ""), http_status=status),
        retry_after=parse_retry_after(retry_after)
        if error_code in (ErrorCode.RATE_LIMITED, ErrorCode.SERVER_ERROR, ErrorCode.MODEL_LOADING)
        else None,
    )


def parse_chat_response(status: int, content: bytes, retry_after: str | None = None) -> Outcome:
    """Read a whole (non-streamed) chat-completion answer: parsed once, validated once."""
    if status >= 400:
        return error_from_body(status, content, retry_after)
    try:
        body = ChatCompletionBody.model_validate_json(content)
    except ValidationError:
        return Failure(
            LLMError(
                code=ErrorCode.BAD_RESPONSE,
                http_status=status,
                message=f"HTTP {status}: the answer is not a JSON chat completion: "
                + clip(content.decode("utf-8", "replace") or "(empty body)"),
            )
        )
    if body.error is not None or not body.choices:
        if body.error is not None or body.detail is not None:
            return error_from_body(status, content)
        return Failure(
            LLMError(
                code=ErrorCode.BAD_RESPONSE, http_status=status, message=f"HTTP {status}: the answer has no choices"
            )
        )
    choice = body.choices[0]
    message = choice.message
    text = content_text(message.content) if message is not None else choice.text
    if text is None and message is not None and (message.reasoning_content or message.reasoning):
        text = ""  # all reasoning, no answer (e.g. the budget ran out while thinking)
    if text is None:
        return Failure(
            LLMError(
                code=ErrorCode.BAD_RESPONSE,
                http_status=status,
                message=f"HTTP {status}: the answer has no message content",
            )
        )
    usage = body.usage
    stats = body.stats
    stop_reason = stats.stop_reason if stats else None
    answer = final_answer(text, (message.reasoning_content or message.reasoning) if message is not None else None)
    return Reply(
        text=answer.text,
        reasoning_chars=answer.reasoning_chars,
        reasoning_unfinished=answer.reasoning_unfinished,
        model=body.model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        finish_reason=choice.finish_reason or (_STOP_REASONS.get(stop_reason, stop_reason) if stop_reason else None),
        ttft_ms=stats.time_to_first_token * 1000.0 if stats and stats.time_to_first_token is not None else None,
        server_tokens_per_second=stats.tokens_per_second if stats else None,
        server_generation_ms=stats.generation_time * 1000.0 if stats and stats.generation_time is not None else None,
        server_timing=stats is not None
        and (stats.tokens_per_second is not None or stats.time_to_first_token is not None),
    )


class StreamAccumulator:
    """Builds one Reply from server-sent events; a stream cut before its finish reason is a failure."""

    __slots__ = (
        "_started",
        "_parts",
        "_model",
        "_finish",
        "_usage",
        "_ttft_ms",
        "_chunks",
        "_failure",
        "_done",
        "_reasoning",
    )

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
        self._reasoning = 0

    @property
    def finished(self) -> bool:
        """True once `[DONE]` came or the stream failed: further lines are ignored."""
        return self._done or self._failure is not None

    def feed_line(self, line: str) -> None:
        """Read one line of the stream: a `data:` event adds to the answer (`[DONE]` ends it; an event that is
        not JSON, or an error, fails it); other lines (comments, `event:`, keep-alives) are ignored."""
        if self.finished or not line.startswith("data:"):
            return  # comments, `event:` lines, keep-alives
        data = line[5:].strip()
        if data == "[DONE]":
            self._done = True
            return
        try:
            chunk = ChatCompletionBody.model_validate_json(data)
        except ValidationError:
            self._failure = Failure(
                LLMError(code=ErrorCode.BAD_RESPONSE, message="a streamed event is not JSON: " + clip(data))
            )
            return
        if chunk.error is not None:
            self._failure = error_from_body(200, data.encode())
            return
        self._model = chunk.model or self._model
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta is not None:
                self._reasoning += len(delta.reasoning_content or delta.reasoning or "")
            piece = (content_text(delta.content) if delta else None) or choice.text
            if piece:
                if self._ttft_ms is None:
                    self._ttft_ms = (time.perf_counter() - self._started) * 1000.0
                self._parts.append(piece)
                self._chunks += 1
            if choice.finish_reason:
                self._finish = choice.finish_reason

    def outcome(self) -> Outcome:
        """The Reply, or the Failure: the stream's error, or `truncated` when no finish reason came."""
        if self._failure is not None:
            return self._failure
        if self._finish is None:
            return Failure(
                LLMError(
                    code=ErrorCode.TRUNCATED,
                    message="the stream ended before a finish reason: the answer is incomplete",
                )
            )
        usage = self._usage
        answer = final_answer("".join(self._parts))
        return Reply(
            text=answer.text,
            reasoning_chars=answer.reasoning_chars + self._reasoning,
            reasoning_unfinished=answer.reasoning_unfinished,
            model=self._model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            # Without a usage chunk, one content event is one token on llama.cpp-based servers.
            completion_tokens=usage.completion_tokens
            if usage and usage.completion_tokens is not None
            else self._chunks,
            finish_reason=self._finish,
            ttft_ms=self._ttft_ms,
        )


def tokens_per_second(
    completion_tokens: int | None, generation_ms: float, ttft_ms: float | None = None
) -> float | None:
    """Completion tokens per second of generation: `generation_ms` less `ttft_ms` when it is known (the
    prompt's processing), else all of it; None without tokens or time."""
    if not completion_tokens or generation_ms <= 0:
        return None
    # With a known time to first token, the prompt's processing is not generation time.
    seconds = (generation_ms - (ttft_ms or 0.0)) / 1000.0
    if seconds <= 0:
        seconds = generation_ms / 1000.0
    return completion_tokens / seconds
