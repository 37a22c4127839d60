"""The live half of `pmagent control summary`: backend health and the current routing decision.

Cheap (the health checks' own short timeouts, run in parallel) and never raises for a backend that is down.
"""

from __future__ import annotations

from typing import Any

from gemantria_dag.engine.health import EngineHealthCheck
from gemantria_dag.llm.health import LMStudioHealthCheck, RemoteHealthCheck
from gemantria_dag.names import ENGINE, LM_STUDIO, REMOTE
from gemantria_dag.routing.live import decide_now
from gemantria_dag.settings import Settings


def live_status(settings: Settings) -> dict[str, Any]:
    """{"lm_studio": health, "remote": health, "engine": health, "routing": decision}, as JSON-ready dicts."""
    engine = EngineHealthCheck(settings)
    decision, lm, rm = decide_now(
        LMStudioHealthCheck.from_settings(settings), RemoteHealthCheck.from_settings(settings), settings, engine
    )
    return {
        LM_STUDIO: lm.model_dump(mode="json"),
        REMOTE: rm.model_dump(mode="json"),
        ENGINE: engine.health().model_dump(mode="json"),
        "routing": decision.model_dump(mode="json"),
    }
