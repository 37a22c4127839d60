"""RFC-080's routing rules, in one pure function, and the decision every run carries.

The decision names the backend, the model and the fallback a run uses: nothing downstream
decides a model again (`gemantria_dag.enrichment.plan.build_router` reads them from here).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from gemantria_dag.llm.results import HealthResult
from gemantria_dag.names import ENGINE, LM_STUDIO, NO_BACKEND, REMOTE, Backend, Route
from gemantria_dag.settings import Settings

# RFC-080: LM Studio only when its health check answers in under 5 s.
MAX_HEALTH_LATENCY_MS = 5_000.0


class RoutingDecision(BaseModel):
    """Where a run's calls go: `backend` with `model`, and `fallback` (with `fallback_model`) for the calls
    the backend cannot serve; `reasons` say which rule chose it. JSON-serializable (the sensor's cursor)."""

    backend: Backend
    model: str | None = None
    fallback: Route | None = None
    fallback_model: str | None = None
    reasons: list[str] = Field(default_factory=list)
    checked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def same_route(self, other: RoutingDecision | None) -> bool:
        """Whether `other` sends calls to the same backend and model."""
        return other is not None and (self.backend, self.model) == (other.backend, other.model)

    def summary(self) -> str:
        """One line: `backend (model): reason; reason`."""
        target = f"{self.backend}" + (f" ({self.model})" if self.model else "")
        return f"{target}: " + "; ".join(self.reasons)


def lm_studio_problems(lm: HealthResult | None, settings: Settings) -> list[str]:
    """Why LM Studio is not eligible (empty when it is)."""
    if not settings.use_lm_studio:
        return ["LM Studio disabled by USE_LM_STUDIO=0"]
    if not settings.lm_studio_model:
        return ["LM_STUDIO_MODEL is not set"]
    if lm is None:
        return ["LM Studio health not checked"]
    problems: list[str] = []
    d = lm.details
    if not (lm.ok and lm.mode == "lm_ready"):
        why = d.error.message if d.error else "not ready"
        problems.append(f"LM Studio health is {lm.mode}: {why}")
    else:
        if d.model_present is False or (d.available_models and settings.lm_studio_model not in d.available_models):
            problems.append(f"model {settings.lm_studio_model!r} is not among the server's models")
        if d.model_loaded is False:
            problems.append(
                f"model {settings.lm_studio_model!r} is not loaded (fix: lms load {settings.lm_studio_model})"
            )
    if d.latency_ms >= MAX_HEALTH_LATENCY_MS:
        problems.append(f"LM Studio health took {d.latency_ms:.0f} ms (limit {MAX_HEALTH_LATENCY_MS:.0f} ms)")
    return problems


def remote_problems(
    remote: HealthResult | None, settings: Settings, remote_spent_today_usd: float | None = None
) -> list[str]:
    """Why the remote API is not eligible (empty when it is). `remote_spent_today_usd`: what the remote
    cost today (None: unknown or not asked), against REMOTE_LLM_DAILY_BUDGET_USD."""
    if not settings.remote_configured:
        return ["remote LLM not configured (set REMOTE_LLM_BASE_URL and REMOTE_LLM_MODEL)"]
    budget = settings.remote_llm_daily_budget_usd
    if budget is not None and remote_spent_today_usd is not None and remote_spent_today_usd >= budget:
        return [
            f"daily remote budget spent: ${remote_spent_today_usd:.4f} of ${budget:.4f} today "
            "(REMOTE_LLM_DAILY_BUDGET_USD; the remote is skipped until tomorrow, UTC)"
        ]
    if remote is None:
        return ["remote LLM health not checked"]
    if not (remote.ok and remote.mode == "remote_ready"):
        why = remote.details.error.message if remote.details.error else "not ready"
        return [f"remote LLM health is {remote.mode}: {why}"]
    return []


def select_backend(
    lm: HealthResult | None,
    remote: HealthResult | None,
    settings: Settings,
    engine: HealthResult | None = None,
    remote_spent_today_usd: float | None = None,
) -> RoutingDecision:
    """RFC-080's rule: LM Studio when eligible, else the remote when configured and healthy, else the
    embedded engine when it can serve (the last resort), else none.

    `lm` / `remote` / `engine` are the backends' health results (None: not checked). A model that is
    still loading (`lm_loading`) gets the run only when the remote cannot take it. LM Studio is eligible
    when `USE_LM_STUDIO` is on, `LM_STUDIO_MODEL` is set, health is `lm_ready` in under 5 s
    (`MAX_HEALTH_LATENCY_MS`, RFC-080) and the model is listed and loaded where the server tells.
    Pure: no I/O, never raises; the reasons name every rule that failed.
    """
    lm_why = lm_studio_problems(lm, settings)
    if not lm_why:
        return forced_decision(LM_STUDIO, settings, ["LM Studio ready"])
    remote_why = remote_problems(remote, settings, remote_spent_today_usd)
    if not remote_why:
        return forced_decision(REMOTE, settings, [*lm_why, "remote LLM ready"])
    if lm is not None and lm.mode == "lm_loading" and settings.use_lm_studio and settings.lm_studio_model:
        # Nothing else can serve: a model that is loading will answer soon, and calls wait for it.
        wait = f"LM Studio is loading its model: calls wait up to {settings.lm_studio_load_timeout_seconds:g} s"
        return forced_decision(LM_STUDIO, settings, [*lm_why, *remote_why, wait])
    if engine is None:  # not checked: only the RFC's two backends count
        return RoutingDecision(backend=NO_BACKEND, reasons=[*lm_why, *remote_why])
    engine_why = engine_problems(engine)
    if not engine_why:
        last = "the embedded engine is the last resort: " + (engine.details.message or "available")
        return forced_decision(ENGINE, settings, [*lm_why, *remote_why, last])
    return RoutingDecision(backend=NO_BACKEND, reasons=[*lm_why, *remote_why, *engine_why])


def engine_problems(engine: HealthResult) -> list[str]:
    """Why the embedded engine is not eligible (empty when it is)."""
    if not (engine.ok and engine.mode == "engine_ready"):
        return [engine.details.message or f"embedded engine health is {engine.mode}"]
    return []


def forced_decision(backend: Route, settings: Settings, reasons: list[str]) -> RoutingDecision:
    """The decision for `backend`, chosen by a rule or by the caller: its model from the settings, and
    RFC-080's fallback (LM Studio falls back to the remote when one is configured; the remote to nothing)."""
    if backend == LM_STUDIO:
        fallback = REMOTE if settings.remote_configured else None
        return RoutingDecision(
            backend=LM_STUDIO,
            model=settings.lm_studio_model,
            fallback=fallback,
            fallback_model=settings.remote_llm_model if fallback else None,
            reasons=reasons,
        )
    if backend == ENGINE:
        return RoutingDecision(backend=ENGINE, model=settings.engine_model, reasons=reasons)
    return RoutingDecision(backend=REMOTE, model=settings.remote_llm_model, reasons=reasons)
