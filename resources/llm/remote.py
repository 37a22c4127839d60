"""`RemoteLLMResource`: any OpenAI-compatible remote API (OpenAI, OpenRouter, vLLM...), with retries."""

from __future__ import annotations

from pydantic import Field

from gemantria_dag.settings import Settings, get_settings
from resources.llm.base import LLMBackend, _Call
from resources.llm.probe import REMOTE_KEY_FIX, remote_health
from resources.llm.results import ErrorCode, HealthResult, LLMError

DEFAULT_PROVIDER = "remote_llm"


class RemoteLLMResource(LLMBackend):
    """A remote API. Its key comes from REMOTE_LLM_API_KEY through the settings at call time, so it
    never sits in this resource's config (which Dagster shows in its UI)."""

    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    provider: str = Field(default=DEFAULT_PROVIDER, description="Provider id, recorded as the backend/tool name.")
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    max_total_seconds: float = Field(default=120.0, gt=0)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RemoteLLMResource:
        s = settings or get_settings()
        return cls(base_url=s.remote_llm_base_url, model=s.remote_llm_model, timeout_seconds=s.remote_llm_timeout_seconds,
                   provider=s.remote_llm_provider, max_connections=s.remote_llm_max_concurrency)

    @property
    def backend_name(self) -> str:
        return self.provider

    def _secret(self) -> str | None:
        key = get_settings().remote_llm_api_key
        return key.get_secret_value() if key is not None else None

    def _not_configured(self) -> str | None:
        return None if self.base_url else "the remote LLM has no base URL: set REMOTE_LLM_BASE_URL"

    def _fix_for(self, error: LLMError, call: _Call) -> str | None:
        return REMOTE_KEY_FIX if error.code == ErrorCode.UNAUTHORIZED else None

    def health(self) -> HealthResult:
        """remote_ready | remote_off | error, from `GET /models` alone: it never spends a completion."""
        base = self.base_url.rstrip("/") if self.base_url else None
        secret = self._secret()
        client = self._sync_client() if base and secret and self.model else None
        return remote_health(base_url=base, model=self.model, api_key=secret, provider=self.provider, client=client)
