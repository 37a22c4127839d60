"""Turning a routing decision and a partition into work: which nouns, which routes."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gemantria_dag.enrichment.partitions import LETTER_BY_NAME, LETTER_NAMES
from gemantria_dag.llm.limiter import ConcurrencyLimiter
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


# Where an adaptive limit starts when the server does not say: LM Studio 0.4 runs 4 predictions at once
# (JIT and API loads always get 4); a remote starts at 4 and doubles while latency holds (slow start).
LM_STUDIO_DEFAULT_PARALLEL = 4
REMOTE_INITIAL_CONCURRENCY = 4


def route_limiter(name: str, backend: Completer, settings: Settings, explicit: int | None) -> ConcurrencyLimiter:
    """The calls-in-flight limit of route `name`: `explicit` (run config) fixes it; else adaptive, up to the
    backend's `*_MAX_CONCURRENCY` (the engine: twice its slots), starting at what the server says of its
    slots (`advertised_parallel`: LM Studio's `loaded_instances[].config.parallel`; the engine's ENGINE_PARALLEL),
    else at LM Studio's default 4 or the remote's 4."""
    if explicit:
        return ConcurrencyLimiter(initial=explicit, ceiling=explicit, adaptive=False, source="explicit")
    if name == ENGINE:
        parallel = settings.engine_parallel
        return ConcurrencyLimiter(initial=parallel, ceiling=2 * parallel, source="server")
    ceiling = settings.lm_studio_max_concurrency if name == LM_STUDIO else settings.remote_llm_max_concurrency
    advertised = getattr(backend, "advertised_parallel", None)
    if isinstance(advertised, int) and advertised > 0:
        return ConcurrencyLimiter(initial=advertised, ceiling=ceiling, source="server")
    initial = LM_STUDIO_DEFAULT_PARALLEL if name == LM_STUDIO else REMOTE_INITIAL_CONCURRENCY
    return ConcurrencyLimiter(initial=initial, ceiling=ceiling, source="default", slow_start=name != LM_STUDIO)


def build_router(
    decision: RoutingDecision,
    backends: dict[str, Completer],
    settings: Settings,
    concurrency: dict[str, int | None],
    cooldown_s: float,
) -> FailoverRouter:
    """The run's router: the decision's backend and model first, its fallback (if any) behind it.

    `backends` maps route names to completers; `concurrency` maps them to the run's override (None: an
    adaptive limit, `route_limiter`). Raises ValueError for a decision with no backend.
    """
    if decision.backend not in (LM_STUDIO, REMOTE, ENGINE):
        raise ValueError(f"no route to build for backend {decision.backend!r}")

    def route(name: str, model: str | None) -> Route:
        backend = backends[name]
        limiter = route_limiter(name, backend, settings, concurrency.get(name))
        # The run's ceiling, not the resource's default pool size, decides the connections.
        backend.ensure_pool_size(limiter.ceiling)
        breaker = CircuitBreaker(settings.llm_failover_threshold, cooldown_s)
        server = getattr(backend, "server_label", None)
        return Route(name, backend, model, limiter.ceiling, breaker, server=server, limiter=limiter)

    primary = route(decision.backend, decision.model)
    fallback = route(decision.fallback, decision.fallback_model) if decision.fallback else None
    return FailoverRouter(primary, fallback)
