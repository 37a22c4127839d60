"""Turning a routing decision and a partition into work: which nouns, which routes."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gemantria_dag.enrichment.partitions import LETTER_BY_NAME, LETTER_NAMES
from gemantria_dag.names import ENGINE, LM_STUDIO, REMOTE, TOOL_ENGINE, TOOL_LM_STUDIO
from gemantria_dag.routing.circuit_breaker import CircuitBreaker
from gemantria_dag.routing.decision import RoutingDecision
from gemantria_dag.routing.failover import Completer, FailoverRouter, Route
from gemantria_dag.settings import Settings


def nouns_for_partitions(noun_gematria: pd.DataFrame, partitions: list[str]) -> list[dict[str, Any]]:
    """The rows of `noun_gematria` whose first letter is one of `partitions` (letter names), each with its
    `partition` added; raises KeyError for an unknown partition name."""
    letters = {LETTER_BY_NAME[p] for p in partitions}
    frame = noun_gematria[noun_gematria["first_letter"].isin(letters)]
    nouns = frame.to_dict("records")
    for noun in nouns:
        noun["partition"] = LETTER_NAMES[noun["first_letter"]]
    return nouns


def tool_by_route(settings: Settings) -> dict[str, str]:
    """The control plane's `tool` name of each route: `lm_studio`, `embedded_engine`, or the remote provider's id."""
    return {LM_STUDIO: TOOL_LM_STUDIO, REMOTE: settings.remote_llm_provider, ENGINE: TOOL_ENGINE}


def build_router(
    decision: RoutingDecision,
    backends: dict[str, Completer],
    settings: Settings,
    concurrency: dict[str, int | None],
    cooldown_s: float,
) -> FailoverRouter:
    """The run's router: the decision's backend and model first, its fallback (if any) behind it.

    `backends` maps route names to completers; `concurrency` maps them to the run's override (None:
    the backend's `*_MAX_CONCURRENCY` setting). Raises ValueError for a decision with no backend.
    """
    defaults = {
        LM_STUDIO: settings.lm_studio_max_concurrency,
        REMOTE: settings.remote_llm_max_concurrency,
        ENGINE: settings.engine_parallel,
    }
    if decision.backend not in defaults:
        raise ValueError(f"no route to build for backend {decision.backend!r}")

    def route(name: str, model: str | None) -> Route:
        calls = concurrency.get(name) or defaults[name]
        # The run's concurrency, not the resource's default pool size, decides the calls in flight.
        backends[name].ensure_pool_size(calls)
        breaker = CircuitBreaker(settings.llm_failover_threshold, cooldown_s)
        return Route(name, backends[name], model, calls, breaker, server=getattr(backends[name], "server_label", None))

    primary = route(decision.backend, decision.model)
    fallback = route(decision.fallback, decision.fallback_model) if decision.fallback else None
    return FailoverRouter(primary, fallback)
