"""`EmbeddedEngineResource`: the embedded llama.cpp `llama-server` (gemantria_dag/engine/) as a backend.

The project starts the server itself, on a free loopback port, when a run routed to it makes its first
call (or `pmagent engine start` did already); it outlives the run so that the next one attaches at once,
and `pmagent engine stop` stops it. Its calls are recorded under the tool `embedded_engine`, with the
server that answered in each record.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from pydantic import Field, PrivateAttr

from gemantria_dag.engine.health import EngineHealthCheck
from gemantria_dag.engine.server import EngineState, start_engine
from gemantria_dag.llm.call import CallState, PlainServer, ServerPolicy
from gemantria_dag.llm.results import HealthResult
from gemantria_dag.names import TOOL_ENGINE
from gemantria_dag.settings import Settings, get_settings, setting_default
from resources.llm.backend import LLMBackend


class _EngineServer(PlainServer):
    """A plain llama.cpp server whose address is known once the engine runs."""

    def __init__(self, resource: EmbeddedEngineResource) -> None:
        super().__init__(chat_url="", chat_path="/v1/chat/completions")
        self._resource = resource

    def endpoint(self, call: CallState) -> tuple[str, str]:
        return self._resource.chat_url, self.chat_path


class EmbeddedEngineResource(LLMBackend):
    """llama.cpp's llama-server serving ENGINE_MODEL_PATH (default SmolLM2-135M-Instruct) with
    ENGINE_PARALLEL slots. `base_url` is empty until the engine runs. Defaults: the settings'."""

    base_url: str = Field(default="", description="Set when the engine runs (a free loopback port).")
    model: str | None = Field(default=setting_default("engine_model"))
    timeout_seconds: float = Field(default=setting_default("lm_studio_timeout_seconds"), gt=0)
    max_connections: int = Field(default=setting_default("engine_parallel"), ge=1)

    # The engine listens on loopback: a proxy from the environment would only misroute it.
    _trust_env: ClassVar[bool] = False
    _state: EngineState | None = PrivateAttr(default=None)
    _start_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EmbeddedEngineResource:
        """The resource for ENGINE_MODEL and ENGINE_PARALLEL (the files are found when it starts)."""
        s = settings or get_settings()
        return cls(model=s.engine_model, max_connections=s.engine_parallel, timeout_seconds=s.lm_studio_timeout_seconds)

    @property
    def backend_name(self) -> str:
        return TOOL_ENGINE

    def _secret(self) -> str | None:
        return None

    def ensure_started(self) -> EngineState:
        """Start the engine, or attach to the running one; raises EngineFileError / EngineStartError."""
        with self._start_lock:
            if self._state is None:
                self._state = start_engine(get_settings())
            return self._state

    def _not_configured(self) -> str | None:
        try:
            self.ensure_started()
        except Exception as exc:  # noqa: BLE001 - a failed start is this call's error, never a crash
            return f"the embedded engine did not start: {exc}"
        return None

    @property
    def chat_url(self) -> str:
        state = self._state
        return f"{state.base_url.rstrip('/')}/chat/completions" if state is not None else ""

    @property
    def server_label(self) -> str:
        state = self._state
        if state is None:
            return "llama-server (not started)"
        return f"llama-server at {state.base_url} ({str(state.model_path).rsplit('/', 1)[-1]})"

    def server_policy(self) -> ServerPolicy:
        return _EngineServer(self)

    def health(self) -> HealthResult:
        """engine_ready | engine_off, from its files and its state; never starts it."""
        return EngineHealthCheck(get_settings()).health()
