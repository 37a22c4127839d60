"""Compute the routing decision now, from live health checks (sensor, run start, pmagent)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gemantria_dag.routing.decision import RoutingDecision, select_backend
from gemantria_dag.settings import Settings
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource
from resources.llm.results import HealthResult


def check_both(lm_studio: LMStudioResource, remote: RemoteLLMResource) -> tuple[HealthResult, HealthResult]:
    # In parallel: a hung LM Studio must not add its timeout to the remote's.
    with ThreadPoolExecutor(max_workers=2) as pool:
        lm = pool.submit(lm_studio.health)
        rm = pool.submit(remote.health)
        return lm.result(), rm.result()


def decide_now(lm_studio: LMStudioResource, remote: RemoteLLMResource, settings: Settings
               ) -> tuple[RoutingDecision, HealthResult, HealthResult]:
    lm, rm = check_both(lm_studio, remote)
    return select_backend(lm, rm, settings), lm, rm
