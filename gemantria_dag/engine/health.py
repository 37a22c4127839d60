"""The embedded engine's health, for routing: can it serve (its files are there, USE_ENGINE is on), and
is it running. It never starts the engine (a run does, when routing chose it) and never spends a token."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gemantria_dag.engine.files import EngineFileError, find_binary, find_model
from gemantria_dag.llm.results import ErrorCode, HealthDetails, HealthResult, LLMError
from gemantria_dag.settings import Settings


@dataclass(frozen=True, slots=True)
class EngineHealthCheck:
    """engine_ready (running, or ready to start on first use) | engine_off (USE_ENGINE=0, a file missing)."""

    settings: Settings

    def health(self) -> HealthResult:
        """engine_off when USE_ENGINE=0 or a file is missing, else engine_ready (running or not); never starts it."""
        from gemantria_dag.engine.server import running_engine  # its HTTP client only when asked

        started = time.perf_counter()
        s = self.settings
        details = HealthDetails(model=s.engine_model, provider="llama-server")
        if not s.use_engine:
            details.message = "the embedded engine is off: USE_ENGINE=0 (set USE_ENGINE=1 to allow it)"
            return HealthResult(ok=False, mode="engine_off", details=details)
        try:
            binary, model = find_binary(s), find_model(s)
        except EngineFileError as exc:
            details.error = LLMError(code=ErrorCode.CONNECTION_REFUSED, message=str(exc))
            details.message = f"the embedded engine cannot start: {exc}"
            return HealthResult(ok=False, mode="engine_off", details=details)
        state = running_engine(s)
        details.latency_ms = round((time.perf_counter() - started) * 1000.0, 2)
        details.available_models = [s.engine_model]
        details.model_present = True
        if state is not None:
            details.base_url, details.model_loaded = state.base_url, True
            details.message = f"the embedded engine runs at {state.base_url} ({binary.name}, {model.name})"
        else:
            details.message = (
                f"the embedded engine is available, not running: {binary.name} serves {model.name} "
                "once a run needs it (pmagent engine start starts it now)"
            )
        return HealthResult(ok=True, mode="engine_ready", details=details)
