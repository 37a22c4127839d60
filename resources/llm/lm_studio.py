"""`LMStudioResource`: LM Studio's server (or any llama.cpp-style local server) as a Dagster resource.

The call loop is `LLMBackend`'s; what LM Studio changes in it (its native chat route and stats, its
just-in-time model loading) is the server policy `gemantria_dag.llm.lm_studio.LMStudioServer`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from gemantria_dag.llm.call import ServerPolicy
from gemantria_dag.llm.health import LMStudioHealthCheck
from gemantria_dag.llm.lm_studio import LMStudioServer, ServerProfile
from gemantria_dag.llm.results import HealthResult, ServerKind
from gemantria_dag.names import LM_STUDIO
from gemantria_dag.settings import Settings, get_settings, setting_default
from resources.llm.backend import LLMBackend


class LMStudioResource(LLMBackend):
    """LM Studio on this machine or the LAN. The optional API token (LM Studio 0.4 can require one)
    comes from LM_STUDIO_API_TOKEN through the settings and goes with every request, health checks
    included; it is never part of this resource's config nor of any result. Defaults: the settings'."""

    base_url: str = Field(
        default=setting_default("lm_studio_base_url"), description="LM Studio's OpenAI-compatible base URL."
    )
    timeout_seconds: float = Field(default=setting_default("lm_studio_timeout_seconds"), gt=0)
    load_timeout_seconds: float = Field(
        default=setting_default("lm_studio_load_timeout_seconds"),
        gt=0,
        description=(
            "Read timeout of a call that may make LM Studio load its model just in time (the model is not known "
            "to be loaded): loading takes 10-25 s, which the per-call timeout must not cut short."
        ),
    )
    # A local server runs a few predictions at once and queues the rest: a small pool is enough.
    max_connections: int = Field(default=setting_default("lm_studio_max_concurrency"), ge=1)
    health_endpoint: str = Field(
        default=setting_default("lm_studio_health_endpoint"),
        description=(
            "Tried first by health(), relative to the server root (not /v1). LM Studio serves none (it answers "
            "HTTP 200 with an error body), so health() falls back to /lmstudio-greeting and the model listings."
        ),
    )
    native_api: bool = Field(
        default=True,
        description=(
            "On LM Studio, send non-streamed calls to /api/v0/chat/completions, whose stats fill the metadata."
        ),
    )

    # LM Studio is local or on the LAN: a proxy from the environment would only misroute it.
    _trust_env: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LMStudioResource:
        """The resource for LM_STUDIO_BASE_URL, _MODEL, _TIMEOUT_SECONDS, _LOAD_TIMEOUT_SECONDS,
        _HEALTH_ENDPOINT and _MAX_CONCURRENCY (the token is read at call time)."""
        s = settings or get_settings()
        return cls(
            base_url=s.lm_studio_base_url,
            model=s.lm_studio_model,
            timeout_seconds=s.lm_studio_timeout_seconds,
            load_timeout_seconds=s.lm_studio_load_timeout_seconds,
            health_endpoint=s.lm_studio_health_endpoint,
            max_connections=s.lm_studio_max_concurrency,
        )

    @property
    def backend_name(self) -> str:
        return LM_STUDIO

    def _secret(self) -> str | None:
        token = get_settings().lm_studio_api_token
        return token.get_secret_value() if token is not None else None

    def _load_budget_seconds(self) -> float:
        # LM Studio's retry policy: one attempt (a failure goes to the remote fallback when one is
        # configured), except that a model still loading is waited for within the load budget.
        return self.load_timeout_seconds

    def server_policy(self) -> ServerPolicy:
        return LMStudioServer(
            base_url=self.base_url,
            native_api=self.native_api,
            timeout_seconds=self.timeout_seconds,
            load_timeout_seconds=self.load_timeout_seconds,
            secret=self._secret,
        )

    @property
    def server(self) -> LMStudioServer:
        """This resource's server policy (what it learned of its server)."""
        policy = self.calls.server
        assert isinstance(policy, LMStudioServer)
        return policy

    def health(self) -> HealthResult:
        """lm_ready | lm_off | error: the health endpoint, the greeting, then the model listings (never a
        completion). What it finds (server kind, loaded models) is kept for the calls that follow."""
        check = LMStudioHealthCheck(
            base_url=self.base_url,
            model=self.model,
            api_token=self._secret(),
            health_endpoint=self.health_endpoint,
            use_lm_studio=get_settings().use_lm_studio,
        )
        result = check.health(self._sync_client())
        self.server.learn_from_health(result)
        return result

    @property
    def server_kind(self) -> ServerKind | None:
        """lm_studio | lm_studio_legacy | openai_compatible, once learned (None before)."""
        profile = self.server.profile
        return profile.kind if profile is not None else None

    @property
    def profile(self) -> ServerProfile | None:
        return self.server.profile

    @property
    def advertised_parallel(self) -> int | None:
        """The predictions the configured model runs at once, as LM Studio said in its model listing
        (`loaded_instances[].config.parallel`, learned by the last health check); None when unknown."""
        return self.server.parallel_for(self.model)

    @property
    def uses_native_chat(self) -> bool:
        """Whether non-streamed calls go to LM Studio's /api/v0/chat/completions."""
        return self.server.uses_native_chat
