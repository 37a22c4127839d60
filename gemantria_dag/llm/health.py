"""One way to build each backend's health check, shared by the resources and `pmagent`.

`LMStudioHealthCheck` / `RemoteHealthCheck` hold the arguments of a check (from the settings,
or from a resource's own fields) and run the probes of `gemantria_dag.llm.probe`. The resources
add what they keep between calls (LM Studio's server profile); everything a user sees in a health
result (the `USE_LM_STUDIO=0` note included) is decided here, whichever path asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx

from gemantria_dag.llm.probe import lm_studio_health, remote_health
from gemantria_dag.llm.request import bearer
from gemantria_dag.llm.results import ErrorCode, HealthResult, LLMError
from gemantria_dag.llm.structured_check import check_structured_output
from gemantria_dag.settings import Settings

# The structured-output check's own budget (a first request may queue behind others on a busy server).
STRUCTURED_CHECK_SECONDS = 8.0
ROUTING_OFF_NOTE = (
    "USE_LM_STUDIO=0: routing sends no calls to LM Studio whatever its health (set USE_LM_STUDIO=1 to allow it)."
)


class HealthCheck(Protocol):
    """Anything with a cheap `health()` that never raises for a backend fault (LM Studio's spends at most one
    tiny structured-output check per server and model: structured_check.py)."""

    def health(self) -> HealthResult:
        """The backend's health now (a backend fault is a result, never an exception)."""
        ...


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class LMStudioHealthCheck:
    """LM Studio's health: lm_ready | lm_off | error (see `gemantria_dag.llm.probe`).

    `api_token` is a secret: it goes with every probe and never into the result.
    """

    base_url: str
    model: str | None
    api_token: str | None
    health_endpoint: str
    use_lm_studio: bool = True
    # One tiny schema-constrained request per server and model (cached): see structured_check.py.
    check_structured_output: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> LMStudioHealthCheck:
        """The check `pmagent health lm` runs: LM_STUDIO_BASE_URL, _MODEL, _API_TOKEN, _HEALTH_ENDPOINT."""
        return cls(
            base_url=settings.lm_studio_base_url,
            model=settings.lm_studio_model,
            api_token=_secret(settings.lm_studio_api_token),
            health_endpoint=settings.lm_studio_health_endpoint,
            use_lm_studio=settings.use_lm_studio,
        )

    def health(self, client: httpx.Client | None = None) -> HealthResult:
        """Run the probes (on `client` when given, else a client of its own that it closes), then, when
        the server is ready and a model is set, check once that structured output works."""
        owned = client is None
        http = client or httpx.Client(trust_env=False)
        try:
            result = lm_studio_health(
                base_url=self.base_url.rstrip("/"),
                model=self.model,
                api_token=self.api_token,
                client=http,
                health_endpoint=self.health_endpoint,
            )
            if result.ok and self.model and self.check_structured_output:
                result = self._with_structured_check(result, http)
        finally:
            if owned:
                http.close()
        return result if self.use_lm_studio else _with_note(result, ROUTING_OFF_NOTE)

    def _with_structured_check(self, result: HealthResult, client: httpx.Client) -> HealthResult:
        assert self.model is not None
        d = result.details
        check = check_structured_output(
            client,
            chat_url=f"{self.base_url.rstrip('/')}/chat/completions",
            model=self.model,
            server_state=f"{d.server_kind}:{','.join(d.loaded_models or [])}",
            headers=bearer(self.api_token),
            seconds=STRUCTURED_CHECK_SECONDS,
        )
        cost = {
            "latency_ms": check.latency_ms,
            "prompt_tokens": check.prompt_tokens,
            "completion_tokens": check.completion_tokens,
            "cached": check.cached,
            "reason": check.reason,
        }
        details = d.model_copy(update={"structured_output": check.verdict, "structured_output_check": cost})
        if check.verdict != "broken":
            return result.model_copy(update={"details": details})
        fix = (
            f"update LM Studio, or load another model than {self.model}; until then routing prefers the remote "
            "(USE_LM_STUDIO=0 keeps calls off LM Studio)"
        )
        details.error = LLMError(
            code=ErrorCode.BAD_RESPONSE, message=f"structured output is broken: {check.reason} (fix: {fix})", fix=fix
        )
        details.message = f"{d.message}; but structured output is broken: {check.reason}"
        return HealthResult(ok=False, mode="error", details=details)


@dataclass(frozen=True, slots=True)
class RemoteHealthCheck:
    """A remote API's health from `GET /models` alone: remote_ready | remote_off | error.

    `api_key` is a secret: it goes with the probe and never into the result.
    """

    base_url: str | None
    model: str | None
    api_key: str | None
    provider: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteHealthCheck:
        """The check `pmagent health remote` runs: REMOTE_LLM_BASE_URL, _MODEL, _API_KEY, _PROVIDER."""
        return cls(
            base_url=settings.remote_llm_base_url,
            model=settings.remote_llm_model,
            api_key=_secret(settings.remote_llm_api_key),
            provider=settings.remote_llm_provider,
        )

    def health(self, client: httpx.Client | None = None) -> HealthResult:
        """Run the probe (on `client` when given and the check is configured, else a client of its own)."""
        base = self.base_url.rstrip("/") if self.base_url else None
        usable = client if base and self.api_key and self.model else None
        return remote_health(
            base_url=base, model=self.model, api_key=self.api_key, provider=self.provider, client=usable
        )


def _with_note(result: HealthResult, note: str) -> HealthResult:
    """The server's health stays what it is (useful while setting LM Studio up); the message gains `note`."""
    message = f"{result.details.message} {note}" if result.details.message else note
    return result.model_copy(update={"details": result.details.model_copy(update={"message": message})})
