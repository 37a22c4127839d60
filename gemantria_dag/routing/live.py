"""Compute the routing decision now, from live health checks (sensor, run start, pmagent)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gemantria_dag.cost.daily import daily_remote_budget
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
    With REMOTE_LLM_DAILY_BUDGET_USD set, today's remote spend is read from the control plane.
    """
    lm, rm = check_both(lm_studio, remote)
    daily = daily_remote_budget(settings)  # reads control.agent_run only when a daily budget is set
    spent = daily.spent_usd if daily is not None else None
    decision = select_backend(lm, rm, settings, remote_spent_today_usd=spent)
    if decision.backend == NO_BACKEND and engine is not None:
        decision = select_backend(lm, rm, settings, engine.health(), remote_spent_today_usd=spent)
    return decision, lm, rm
