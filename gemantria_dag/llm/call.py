"""One chat completion across its attempts, as pure state: what to send next, when to give up.

No I/O here. A backend's call loop (`resources/llm/backend.py`) sends what a `CallState` says,
hands back each attempt's `Outcome`, and sleeps for the delay `after()` returns, until `after()`
returns the `CompletionResult`. What differs between servers (LM Studio's native route and model
loading) is a `ServerPolicy` the loop is given, never a hook it reaches into.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gemantria_dag.llm.errors import is_response_format_rejection, redact_error, with_fix
from gemantria_dag.llm.reply import Failure, Outcome, Reply, tokens_per_second
from gemantria_dag.llm.request import StructuredForm, StructuredOutput, build_chat_payload, render_response_format
from gemantria_dag.llm.results import CompletionMetadata, CompletionResult, ErrorCode, LLMError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

# How often a call polls a server that is loading its model (llama.cpp: ready in 0.5-20 s).
LOADING_POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The one timeout type of a call, in seconds; each transport converts it once (pools.py).

    `read` bounds the wait for each piece of the answer, `connect` the TCP/TLS set-up. None: no bound.
    """

    read: float | None
    connect: float | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt is tried again: retryable errors only (`LLMError.is_retryable`), at most
    `max_attempts` attempts within `max_total_seconds`, waiting Retry-After when the server said, else
    exponential back-off with equal jitter between `backoff_base_seconds` and `backoff_max_seconds`.

    A model that is loading (`model_loading`) is waited for whatever `max_attempts` says, polling at
    most every `LOADING_POLL_SECONDS`, for at most `load_budget_seconds` from the call's start
    (LM_STUDIO_LOAD_TIMEOUT_SECONDS for LM Studio).
    """

    max_attempts: int
    max_total_seconds: float
    backoff_base_seconds: float
    backoff_max_seconds: float
    load_budget_seconds: float = 0.0

    def delay_before_next(
        self, attempt: int, failure: Failure, elapsed: float, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up now."""
        if failure.error.code == ErrorCode.MODEL_LOADING:
            return self._loading_delay(attempt, failure, elapsed)
        if not failure.error.is_retryable or attempt >= self.max_attempts:
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

    def _loading_delay(self, attempt: int, failure: Failure, elapsed: float) -> float | None:
        if elapsed >= self.load_budget_seconds:
            return None
        delay = failure.retry_after
        if delay is None:
            delay = min(LOADING_POLL_SECONDS, max(self.backoff_base_seconds, 0.1) * 2 ** (attempt - 1))
        return max(min(delay, self.load_budget_seconds - elapsed), 0.05)


class ServerPolicy(Protocol):
    """What a kind of server changes in the call loop. `PlainServer` is the OpenAI-compatible default;
    LM Studio's policy (resources/llm/lm_studio.py) adds its native route and its model loading."""

    def endpoint(self, call: CallState) -> tuple[str, str]:
        """(URL, path) this attempt goes to."""
        ...

    def read_timeout(self, call: CallState) -> float | None:
        """A read timeout for this attempt other than the backend's (e.g. a model-load budget), or None."""
        ...

    def observe(self, call: CallState, outcome: Outcome) -> bool:
        """See each attempt's outcome; True: send the call again at once (it will go elsewhere)."""
        ...

    def fix_for(self, error: LLMError, call: CallState) -> str | None:
        """The fix for an error on this server (the setting to change, the command to run), or None."""
        ...

    def needs_preparing(self) -> bool:
        """Whether `prepare` should run before the next call (cheap: asked before every call)."""
        ...

    def prepare(self, client: httpx.Client) -> None:
        """Learn what the policy needs from the server (a few small GETs); never raises for a server fault."""
        ...


@dataclass(slots=True)
class PlainServer:
    """An OpenAI-compatible server: `{base_url}/chat/completions`, nothing learned."""

    chat_url: str
    chat_path: str
    fixes: dict[str, str] = field(default_factory=dict)  # ErrorCode value -> fix

    def endpoint(self, call: CallState) -> tuple[str, str]:
        """Always `chat_url` and `chat_path`."""
        return self.chat_url, self.chat_path

    def read_timeout(self, call: CallState) -> float | None:
        """None: every attempt has the backend's read timeout."""
        return None

    def observe(self, call: CallState, outcome: Outcome) -> bool:
        """False: nothing to learn, no attempt sent again at once."""
        return False

    def fix_for(self, error: LLMError, call: CallState) -> str | None:
        """The fix configured in `fixes` for the error's code, or None."""
        return self.fixes.get(error.code.value)

    def needs_preparing(self) -> bool:
        """False: nothing to learn."""
        return False

    def prepare(self, client: httpx.Client) -> None:
        """Nothing to learn: no request."""
        return None


StructuredMode = Literal["auto", "json_schema", "json_object"]


@dataclass(slots=True)
class Backend:
    """What every call of one backend shares: its name (metadata and logs), server policy, retry
    policy, structured-output mode and the form its server accepted, and the substitutions seen."""

    name: str
    server: ServerPolicy
    retry: RetryPolicy
    structured_mode: StructuredMode = "auto"
    learned_form: StructuredForm | None = None
    substitutions_seen: set[tuple[str | None, str | None]] = field(default_factory=set)

    def structured_form(self) -> StructuredForm:
        """The response_format form to send first: the configured one, or what worked, or json_schema."""
        if self.structured_mode != "auto":
            return self.structured_mode
        return self.learned_form or "json_schema"

    def learn_form(self, form: StructuredForm) -> None:
        """Remember `form` as the one this server accepted (`auto` mode only): later calls send it first."""
        if self.structured_mode == "auto" and self.learned_form != form:
            self.learned_form = form

    def note_substitution(self, requested: str | None, answered: str | None) -> None:
        """Log a warning the first time this backend answers `requested` with model `answered`."""
        key = (requested, answered)
        if key not in self.substitutions_seen:
            self.substitutions_seen.add(key)
            log.warning(
                "%s answered a request for model %r with model %r (a substitution; recorded in each call's metadata)",
                self.name,
                requested,
                answered,
            )


@dataclass(slots=True)
class CallState:
    """One `complete()` call across its attempts: what to send next, and the bookkeeping.

    `secret` (the bearer token) is only used to redact it from error messages.
    """

    backend: Backend
    messages: list[dict[str, Any]]
    requested_model: str | None
    temperature: float
    max_tokens: int
    structured: StructuredOutput | None
    stream: bool
    secret: str | None = None
    form: StructuredForm | None = None
    fell_back: bool = False
    attempts: int = 0
    started: float = field(default_factory=time.perf_counter)
    attempt_started: float = 0.0
    payload: dict[str, Any] = field(default_factory=dict)
    # Where this attempt goes, and its read timeout when not the backend's (None).
    url: str = ""
    endpoint: str = ""
    read_timeout: float | None = None
    # The last reply when it was cut by max_tokens (its token usage still counts).
    truncated_reply: Reply | None = None
    # Attempts answered 429, and seconds waited for the remote's rate-limit allowance before sending.
    rate_limited: int = 0
    rate_limit_wait_s: float = 0.0
    # The pacer's mark of this attempt's request (gemantria_dag/llm/rate_limits.py); None: not paced.
    pace_mark: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.structured is not None:
            self.form = self.backend.structured_form()
        self._build()

    def _build(self) -> None:
        rf = render_response_format(self.structured, self.form) if self.structured and self.form else None
        self.payload = build_chat_payload(
            self.messages,
            model=self.requested_model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            response_format=rf,
            stream=self.stream,
        )

    def fail_now(self, error: LLMError) -> CompletionResult:
        """The result of a call that cannot be sent at all (e.g. a backend with no URL)."""
        return self._result(Failure(error))

    def begin_attempt(self) -> None:
        """Count the attempt and ask the server policy where it goes and how long it may wait."""
        self.attempts += 1
        server = self.backend.server
        self.url, self.endpoint = server.endpoint(self)
        self.read_timeout = server.read_timeout(self)
        self.attempt_started = time.perf_counter()

    def after(self, outcome: Outcome) -> CompletionResult | float:
        """The final result, or the seconds to wait before the next attempt."""
        backend = self.backend
        if backend.server.observe(self, outcome):
            return 0.0  # the server policy learned something: send again at once
        if isinstance(outcome, Failure) and outcome.error.code == ErrorCode.RATE_LIMITED:
            self.rate_limited += 1
        if isinstance(outcome, Reply) and outcome.finish_reason == "length" and self.structured is not None:
            # JSON cut mid-way is never valid; free text cut by the budget is still an answer (its
            # finish_reason says so).
            outcome = self._truncated(outcome)
        if isinstance(outcome, Reply):
            if self.structured is not None and self.form is not None:
                backend.learn_form(self.form)
            return self._result(outcome)
        if (
            self.structured is not None
            and not self.fell_back
            and backend.structured_mode == "auto"
            and is_response_format_rejection(outcome.error)
        ):
            # The server refused this form of response_format: try the other one once, at once.
            self.fell_back = True
            previous = self.form
            self.form = "json_object" if self.form == "json_schema" else "json_schema"
            log.info("%s refused response_format %s; retrying with %s", backend.name, previous, self.form)
            self._build()
            return 0.0
        elapsed = time.perf_counter() - self.started
        delay = backend.retry.delay_before_next(self.attempts, outcome, elapsed)
        if delay is None:
            return self._result(outcome)
        log.warning(
            "%s attempt %d/%d failed (%s); retrying in %.2f s%s",
            backend.name,
            self.attempts,
            backend.retry.max_attempts,
            outcome.error.code.value,
            delay,
            " (Retry-After)" if outcome.retry_after is not None else "",
        )
        return delay

    def _truncated(self, reply: Reply) -> Failure:
        """An answer cut by the token budget (finish_reason `length`, LM Studio's maxPredictedTokensReached):
        `truncated`, naming max_tokens, and not retryable (the same budget would cut it again)."""
        if reply.reasoning_unfinished or (not reply.text.strip() and reply.reasoning_chars):
            what = f"spent max_tokens={self.max_tokens} on reasoning ({reply.reasoning_chars} characters), no answer"
        else:
            what = f"was cut at max_tokens={self.max_tokens} ({len(reply.text)} characters of answer)"
        fix = "raise max_tokens (run config of noun_enrichments), or use a model that reasons less"
        self.truncated_reply = reply
        message = f"the answer {what} (finish_reason: length) (fix: {fix})"
        return Failure(LLMError(code=ErrorCode.TRUNCATED, retryable=False, fix=fix, message=message))

    def _result(self, outcome: Outcome) -> CompletionResult:
        now = time.perf_counter()
        meta = CompletionMetadata(
            backend=self.backend.name,
            requested_model=self.requested_model,
            latency_ms=round((now - self.started) * 1000.0, 3),
            attempts=self.attempts,
            response_format_type=self.form if self.structured is not None else None,
            endpoint=self.endpoint or None,
            load_budget_used=self.read_timeout is not None,
            rate_limited=self.rate_limited,
            rate_limit_wait_ms=round(self.rate_limit_wait_s * 1000.0, 3) if self.rate_limit_wait_s else None,
        )
        if isinstance(outcome, Failure):
            error = redact_error(outcome.error, self.secret)
            fix = self.backend.server.fix_for(error, self)
            if fix:
                error = with_fix(error, fix)
            cut = self.truncated_reply
            if cut is not None and error.code == ErrorCode.TRUNCATED:
                _usage(meta, cut)  # a cut answer was still generated (and paid for)
            return CompletionResult(ok=False, error=error, metadata=meta)
        attempt_ms = (now - self.attempt_started) * 1000.0
        _usage(meta, outcome)
        meta.ttft_ms = None if outcome.ttft_ms is None else round(outcome.ttft_ms, 3)
        if outcome.server_timing:
            meta.timing_source = "server"
            meta.tokens_per_second = outcome.server_tokens_per_second or tokens_per_second(
                outcome.completion_tokens, outcome.server_generation_ms or attempt_ms
            )
            generation = outcome.server_generation_ms
        else:
            meta.timing_source = "client"
            meta.tokens_per_second = tokens_per_second(outcome.completion_tokens, attempt_ms, outcome.ttft_ms)
            generation = None if outcome.ttft_ms is None else max(attempt_ms - outcome.ttft_ms, 0.0)
        meta.generation_ms = None if generation is None else round(generation, 3)
        if meta.model_substituted:
            self.backend.note_substitution(meta.requested_model, meta.model)
        return CompletionResult(ok=True, response=outcome.text, metadata=meta)


def _usage(meta: CompletionMetadata, reply: Reply) -> None:
    meta.model = reply.model
    meta.prompt_tokens = reply.prompt_tokens
    meta.completion_tokens = reply.completion_tokens
    meta.finish_reason = reply.finish_reason
