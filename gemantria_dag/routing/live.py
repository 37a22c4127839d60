"""Compute the routing decision now, from live health checks (sensor, run start, pmagent)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gemantria_dag.llm.health import HealthCheck
from gemantria_dag.llm.results import HealthResult
from gemantria_dag.names import NO_BACKEND
from gemantria_dag.routing.decision import RoutingDecision, select_backend
from gemantria_dag.settings import Settings


def check_both(lm_studio: HealthCheck, remote: HealthCheck) -> tuple[HealthResult, HealthResult]:
    """Both health checks, in parallel: a hung LM Studio must not add its timeout to the remote's."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        lm = pool.submit(lm_studio.health)
        rm = pool.submit(remote.health)
        return lm.result(), rm.result()


def decide_now(
    lm_studio: HealthCheck, remote: HealthCheck, settings: Settings, engine: HealthCheck | None = None
) -> tuple[RoutingDecision, HealthResult, HealthResult]:
    """(decision, LM Studio's health, the remote's health), checked now; never raises for a backend fault.

    The embedded engine (the last resort) is checked only when neither LM Studio nor the remote can serve.
    """
    lm, rm = check_both(lm_studio, remote)
    decision = select_backend(lm, rm, settings)
    if decision.backend == NO_BACKEND and engine is not None:
        decision = select_backend(lm, rm, settings, engine.health())
    return decision, lm, rm
