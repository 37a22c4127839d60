"""`RemoteLLMResource`: any OpenAI-compatible remote API (OpenAI, OpenRouter, vLLM...), with retries."""

from __future__ import annotations

from pydantic import Field

from gemantria_dag.llm.health import RemoteHealthCheck
from gemantria_dag.llm.probe import REMOTE_KEY_FIX
from gemantria_dag.llm.results import ErrorCode, HealthResult
from gemantria_dag.settings import Settings, get_settings, setting_default
from resources.llm.backend import LLMBackend


class RemoteLLMResource(LLMBackend):
    """A remote API. Its key comes from REMOTE_LLM_API_KEY through the settings at call time, so it
    never sits in this resource's config (which Dagster shows in its UI). Defaults: the settings'."""

    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    provider: str = Field(
        default=setting_default("remote_llm_provider"), description="Provider id, recorded as the backend/tool name."
    )
    timeout_seconds: float = Field(default=setting_default("remote_llm_timeout_seconds"), gt=0)
    max_connections: int = Field(default=setting_default("remote_llm_max_concurrency"), ge=1)
    max_attempts: int = Field(default=4, ge=1, le=20)
    max_total_seconds: float = Field(default=120.0, gt=0)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RemoteLLMResource:
        """The resource for REMOTE_LLM_BASE_URL, _MODEL, _TIMEOUT_SECONDS, _PROVIDER and _MAX_CONCURRENCY
        (the key is read at call time)."""
        s = settings or get_settings()
        return cls(
            base_url=s.remote_llm_base_url,
            model=s.remote_llm_model,
            timeout_seconds=s.remote_llm_timeout_seconds,
            provider=s.remote_llm_provider,
            max_connections=s.remote_llm_max_concurrency,
        )

    @property
    def backend_name(self) -> str:
        return self.provider

    @property
    def chat_url(self) -> str:
        return f"{(self.base_url or '').rstrip('/')}/chat/completions"

    def _secret(self) -> str | None:
        key = get_settings().remote_llm_api_key
        return key.get_secret_value() if key is not None else None

    def _not_configured(self) -> str | None:
        return None if self.base_url else "the remote LLM has no base URL: set REMOTE_LLM_BASE_URL"

    def _fixes(self) -> dict[str, str]:
        return {ErrorCode.UNAUTHORIZED.value: REMOTE_KEY_FIX}

    def health(self) -> HealthResult:
        """remote_ready | remote_off | error, from `GET /models` alone: it never spends a completion."""
        check = RemoteHealthCheck(
            base_url=self.base_url, model=self.model, api_key=self._secret(), provider=self.provider
        )
        configured = self.base_url and self.model and check.api_key
        return check.health(self._sync_client() if configured else None)
