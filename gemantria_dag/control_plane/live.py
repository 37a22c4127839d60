"""The live half of `pmagent control summary`: backend health and the current routing decision.

Cheap (the health checks' own short timeouts, run in parallel) and never raises for a backend that is down.
"""

from __future__ import annotations

from typing import Any

from gemantria_dag.settings import Settings


def live_status(settings: Settings) -> dict[str, Any]:
    # Imported here: `pmagent control` without the live part should not pay for the LLM stack.
    from gemantria_dag.routing.live import decide_now
    from resources.llm.lm_studio import LMStudioResource
    from resources.llm.remote import RemoteLLMResource

    lm_studio = LMStudioResource.from_settings(settings)
    remote = RemoteLLMResource.from_settings(settings)
    try:
        decision, lm, rm = decide_now(lm_studio, remote, settings)
    finally:
        lm_studio.close()
        remote.close()
    return {
        "lm_studio": lm.model_dump(mode="json"),
        "remote": rm.model_dump(mode="json"),
        "routing": decision.model_dump(mode="json"),
    }
