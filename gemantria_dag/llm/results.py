"""The result types every LLM backend returns: one shape for LM Studio and remote APIs.

They are plain pydantic models so that callers can store them as JSON (the control plane's
`result_json`) and Dagster can show them as metadata. None of them ever holds a secret.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field


class ErrorCode(StrEnum):
    """Why an LLM call or a health check failed, as `result_json.error_code` records it.

    `RETRYABLE_CODES` are the transient ones; docs/runbooks/TROUBLESHOOTING.md gives the fixes.
    """

    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_NOT_LOADED = "model_not_loaded"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    BAD_RESPONSE = "bad_response"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    TRUNCATED = "truncated"
    # The server is loading its model (llama.cpp's 503 "Loading model", LM Studio's JIT load): wait.
    MODEL_LOADING = "model_loading"
    # The run's process died while the call was in flight: the server may have answered, and charged, it;
    # the reply never arrived. Written when its journal is recovered (gemantria_dag/control_plane/journal.py).
    WORKER_DIED = "worker_died"


# Faults of the path or the server that another attempt may not see again.
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.CONNECTION_REFUSED,
        ErrorCode.TIMEOUT,
        ErrorCode.RATE_LIMITED,
        ErrorCode.SERVER_ERROR,
        ErrorCode.TRUNCATED,
        ErrorCode.MODEL_LOADING,
    }
)


class LLMError(BaseModel):
    """A failure of a call or a check: its code, a readable message, the HTTP status when there was one."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    # Readable, and ends with the fix when there is one (the same text as `fix`, in parentheses).
    message: str
    http_status: int | None = None
    # What to do about it, when the project knows: a command (`lms load <model>`) or a setting to change.
    fix: str | None = None
    # Overrides the code's default (RETRYABLE_CODES): an answer cut by max_tokens is `truncated` like a
    # cut stream, but sending it again with the same budget would only cut it again.
    retryable: bool | None = None

    @property
    def is_retryable(self) -> bool:
        """Whether another attempt (or another backend) may not see this failure again."""
        return self.code in RETRYABLE_CODES if self.retryable is None else self.retryable


class CompletionMetadata(BaseModel):
    """Bookkeeping of one `complete()` call, whatever its outcome."""

    backend: str
    # The model that answered, as the server named it (may differ from the one requested).
    model: str | None = None
    requested_model: str | None = None
    # Wall time of the whole call, every attempt and back-off included.
    latency_ms: float = 0.0
    # Only known when the answer was streamed (or the server reports it).
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    finish_reason: str | None = None
    attempts: int = 0
    # "json_schema" or "json_object" when structured output was asked for: the form this server took.
    response_format_type: str | None = None
    # The chat path the last attempt went to, e.g. "/api/v0/chat/completions" (LM Studio's native
    # route, which reports timing stats) or "/v1/chat/completions".
    endpoint: str | None = None
    # Generation time without the prompt's processing: from the server's stats, or measured on a stream.
    generation_ms: float | None = None
    # Where ttft_ms / tokens_per_second / generation_ms come from: "server" (LM Studio's `stats`) or
    # "client" (measured here); None when nothing was measured (a failure).
    timing_source: Literal["server", "client"] | None = None
    # True when the last attempt waited on the model-load budget (LM_STUDIO_LOAD_TIMEOUT_SECONDS) instead
    # of the per-call timeout, because the model was not known to be loaded.
    load_budget_used: bool = False
    # Rate limits (gemantria_dag/llm/rate_limits.py): the answers of this call's attempts that were HTTP 429,
    # and the milliseconds it waited before sending for the remote's allowance to grow back (a reset, or a
    # 429's retry-after pausing the whole backend); None: it did not wait.
    rate_limited: int = 0
    rate_limit_wait_ms: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model_substituted(self) -> bool:
        """True when the server answered with another model than the one asked for."""
        return bool(self.requested_model and self.model and not same_model(self.requested_model, self.model))


def same_model(requested: str, answered: str) -> bool:
    """Whether `answered` is the model asked for: the same name, or one of its further LM Studio
    instances (`key:2`, `key:3`, ... when one model is loaded more than once)."""
    if answered == requested:
        return True
    head, sep, tail = answered.rpartition(":")
    return bool(sep) and tail.isdigit() and head == requested


class CompletionResult(BaseModel):
    """What one `complete()` call returns: the answer's text when `ok`, else `error`; `metadata` either way."""

    ok: bool
    response: str | None = None
    error: LLMError | None = None
    metadata: CompletionMetadata


HealthMode = Literal[
    "lm_ready", "lm_loading", "lm_off", "remote_ready", "remote_off", "engine_ready", "engine_off", "error"
]
ServerKind = Literal["lm_studio", "lm_studio_legacy", "openai_compatible"]


class ProbeStep(BaseModel):
    """One request of a health check: the endpoint, its HTTP status (None: no answer) and what it said."""

    endpoint: str
    status: int | None = None
    outcome: str


class HealthDetails(BaseModel):
    """What a health check found: the server and its kind, the models, each probe, and one readable `message`;
    `latency_ms` is the check's time, in milliseconds."""

    base_url: str | None = None
    # The configured model (None: not configured).
    model: str | None = None
    available_models: list[str] = Field(default_factory=list)
    model_present: bool | None = None
    # None where the server cannot tell (a plain OpenAI-compatible server lists but never says "loaded").
    model_loaded: bool | None = None
    # The models the server says are loaded (LM Studio's native listings); None where it cannot tell.
    loaded_models: list[str] | None = None
    # Predictions each loaded model runs at once (LM Studio 0.4's `loaded_instances[].config.parallel`),
    # by model key and instance id; None where the server does not say.
    loaded_parallel: dict[str, int] | None = None
    latency_ms: float = 0.0
    error: LLMError | None = None
    # The endpoint whose answer decided the result, e.g. "/api/v1/models" or "/v1/models".
    probe: str | None = None
    # lm_studio (0.4, /api/v1), lm_studio_legacy (/api/v0 only), openai_compatible (anything else).
    server_kind: ServerKind | None = None
    # The endpoint that identified the server as LM Studio: the configured health endpoint or
    # /lmstudio-greeting (None: neither did; a native model listing may still have).
    identified_by: str | None = None
    # Every request of the check, in order.
    probes: list[ProbeStep] = Field(default_factory=list)
    # Remote backends only: the provider id (the control plane's `tool` name).
    provider: str | None = None
    # One readable sentence: what was found, or what is wrong and how to fix it.
    message: str | None = None
    # LM Studio: whether a schema-constrained request gives JSON on this server and model (ok, broken,
    # unknown), and what finding out cost (`latency_ms`, `prompt_tokens`, `completion_tokens`, `cached`).
    structured_output: Literal["ok", "broken", "unknown"] | None = None
    structured_output_check: dict[str, Any] | None = None


class HealthResult(BaseModel):
    """One backend's health: `ok` when it can serve calls, its `mode`, and what the check found (`details`)."""

    ok: bool
    mode: HealthMode
    details: HealthDetails

    def to_json_dict(self) -> dict[str, Any]:
        """The result as JSON-safe values (what `pmagent health` prints)."""
        return self.model_dump(mode="json")
