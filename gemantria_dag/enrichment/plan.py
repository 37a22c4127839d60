"""Turning a routing decision and a partition into work: which nouns, which routes."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gemantria_dag.control_plane.records import TOOL_LM_STUDIO
from gemantria_dag.enrichment.partitions import LETTER_BY_NAME, LETTER_NAMES
from gemantria_dag.routing.circuit_breaker import CircuitBreaker
from gemantria_dag.routing.decision import RoutingDecision
from gemantria_dag.routing.failover import FailoverRouter, Route
from gemantria_dag.settings import Settings
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource


def nouns_for_partitions(noun_gematria: pd.DataFrame, partitions: list[str]) -> list[dict[str, Any]]:
    letters = {LETTER_BY_NAME[p] for p in partitions}
    frame = noun_gematria[noun_gematria["first_letter"].isin(letters)]
    nouns = frame.to_dict("records")
    for noun in nouns:
        noun["partition"] = LETTER_NAMES[noun["first_letter"]]
    return nouns


def tool_by_route(settings: Settings) -> dict[str, str]:
    """The control plane's `tool` name of each route: `lm_studio`, or the remote provider's id."""
    return {"lm_studio": TOOL_LM_STUDIO, "remote": settings.remote_llm_provider}


def build_router(decision: RoutingDecision, lm_studio: LMStudioResource, remote: RemoteLLMResource,
                 settings: Settings, lm_concurrency: int | None, remote_concurrency: int | None,
                 cooldown_s: float) -> FailoverRouter:
    def breaker() -> CircuitBreaker:
        return CircuitBreaker(settings.llm_failover_threshold, cooldown_s)

    lm_route = Route("lm_studio", lm_studio, settings.lm_studio_model,
                     lm_concurrency or settings.lm_studio_max_concurrency, breaker())
    remote_route = Route("remote", remote, settings.remote_llm_model,
                         remote_concurrency or settings.remote_llm_max_concurrency, breaker())
    # The run's concurrency, not the resource's default pool size, decides the calls in flight.
    lm_studio.ensure_pool_size(lm_route.concurrency)
    remote.ensure_pool_size(remote_route.concurrency)
    if decision.backend == "lm_studio":
        # RFC-080's fallback: the remote API, when one is configured.
        return FailoverRouter(lm_route, remote_route if settings.remote_configured else None)
    return FailoverRouter(remote_route, None)
