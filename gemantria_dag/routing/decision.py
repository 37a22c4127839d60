"""RFC-080's routing rules, in one pure function."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from gemantria_dag.settings import Settings
from resources.llm.results import HealthResult

Backend = Literal["lm_studio", "remote", "none"]
# RFC-080: LM Studio only when its health check answers in under 5 s.
MAX_HEALTH_LATENCY_MS = 5_000.0


class RoutingDecision(BaseModel):
    backend: Backend
    model: str | None = None
    reasons: list[str] = Field(default_factory=list)
    checked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def same_route(self, other: RoutingDecision | None) -> bool:
        return other is not None and (self.backend, self.model) == (other.backend, other.model)

    def summary(self) -> str:
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
            problems.append(f"model {settings.lm_studio_model!r} is not loaded (fix: lms load {settings.lm_studio_model})")
    if d.latency_ms >= MAX_HEALTH_LATENCY_MS:
        problems.append(f"LM Studio health took {d.latency_ms:.0f} ms (limit {MAX_HEALTH_LATENCY_MS:.0f} ms)")
    return problems


def remote_problems(remote: HealthResult | None, settings: Settings) -> list[str]:
    if not settings.remote_configured:
        return ["remote LLM not configured (set REMOTE_LLM_BASE_URL and REMOTE_LLM_MODEL)"]
    if remote is None:
        return ["remote LLM health not checked"]
    if not (remote.ok and remote.mode == "remote_ready"):
        why = remote.details.error.message if remote.details.error else "not ready"
        return [f"remote LLM health is {remote.mode}: {why}"]
    return []


def select_backend(lm: HealthResult | None, remote: HealthResult | None, settings: Settings) -> RoutingDecision:
    lm_why = lm_studio_problems(lm, settings)
    if not lm_why:
        return RoutingDecision(backend="lm_studio", model=settings.lm_studio_model, reasons=["LM Studio ready"])
    remote_why = remote_problems(remote, settings)
    if not remote_why:
        return RoutingDecision(backend="remote", model=settings.remote_llm_model,
                               reasons=[*lm_why, "remote LLM ready"])
    return RoutingDecision(backend="none", reasons=[*lm_why, *remote_why])
