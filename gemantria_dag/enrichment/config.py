"""The run-level knobs of `noun_enrichments` (Dagster run config, e.g. `--config-json`)."""

from __future__ import annotations

from typing import Literal

from dagster import Config
from pydantic import Field

from gemantria_dag.enrichment.prompt import PROMPT_VERSION


class EnrichmentConfig(Config):
    """Every field has a default that routes sanely on its own (runs launched by hand get them)."""

    backend: Literal["auto", "lm_studio", "remote", "engine"] = Field(
        "auto", description="The routing decision; 'auto' decides at run start from live health (RFC-080 rules)."
    )
    routing_reasons: list[str] = Field(default_factory=list, description="Why the sensor chose this backend.")
    decided_by: str = Field("run start", description="Who made the routing decision.")
    prompt_version: str = PROMPT_VERSION
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=16, le=8192)
    lm_studio_concurrency: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "Exactly this many calls in flight to LM Studio, no adapting. Default: an adaptive limit that starts at "
            "the loaded model's `parallel` slots and finds the capacity, up to LM_STUDIO_MAX_CONCURRENCY."
        ),
    )
    remote_concurrency: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "Exactly this many calls in flight to the remote, no adapting. Default: an adaptive limit up to "
            "REMOTE_LLM_MAX_CONCURRENCY, paced by the remote's rate-limit headers either way."
        ),
    )
    limit: int | None = Field(None, ge=1, description="Enrich at most this many nouns per run (a quick look).")
    retry_violations: bool = Field(False, description="Call again for nouns whose stored outcome is a violation.")
    max_failure_rate: float = Field(0.5, ge=0.0, le=1.0)
    progress_interval_seconds: float = Field(5.0, gt=0)
    ramp_up_seconds: float = Field(
        0.2,
        ge=0,
        le=60,
        description=(
            "Spread the first calls over this many seconds, so that the calls in flight do not go out and come "
            "back in lockstep bursts."
        ),
    )
    circuit_cooldown_seconds: float = Field(30.0, ge=0)
    max_cost_usd: float | None = Field(
        None,
        ge=0,
        description=(
            "Spend at most this many USD on this run's calls (priced as in `pmagent control summary`). Before each "
            "call, its worst case (estimated prompt tokens + max_tokens, at the route's price) must fit in what is "
            "left; else the run stops sending calls, saves what it made and fails, and a re-run continues. Needs a "
            "price for the remote model (LLM_PRICES or genai-prices)."
        ),
    )
    max_total_tokens: int | None = Field(
        None,
        ge=0,
        description="At most this many tokens (prompt + completion, all backends) in this run; kept like max_cost_usd.",
    )
