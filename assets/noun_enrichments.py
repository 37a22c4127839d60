"""LLM-written insights for each noun, routed by health, every call recorded."""

import asyncio
from typing import Literal

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from gemantria_dag.enrichment.partitions import LETTER_NAMES, letter_partitions
from gemantria_dag.enrichment.plan import build_router, nouns_for_partitions, tool_by_route
from gemantria_dag.enrichment.prompt import PROMPT_VERSION, params_hash, response_format
from gemantria_dag.enrichment.runner import AllBackendsDown, EnrichmentRunner, RunInfo
from gemantria_dag.enrichment.stats import check_verdicts, run_stats
from gemantria_dag.routing.decision import RoutingDecision
from gemantria_dag.routing.live import decide_now
from gemantria_dag.routing.tags import BACKEND_TAG
from gemantria_dag.settings import get_settings
from resources.io_managers.factory import enrichment_cache_for, persist_batch
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource

CHECKS = ("coverage", "failure_rate", "confidence_in_range", "no_empty_insight")


class EnrichmentConfig(Config):
    backend: Literal["auto", "lm_studio", "remote"] = Field(
        "auto", description="The routing decision; 'auto' decides at run start from live health (RFC-080 rules).")
    routing_reasons: list[str] = Field(default_factory=list, description="Why the sensor chose this backend.")
    decided_by: str = Field("run start", description="Who made the routing decision.")
    prompt_version: str = PROMPT_VERSION
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=16, le=8192)
    lm_studio_concurrency: int | None = Field(None, ge=1, le=64, description="Default: LM_STUDIO_MAX_CONCURRENCY.")
    remote_concurrency: int | None = Field(None, ge=1, le=1024, description="Default: REMOTE_LLM_MAX_CONCURRENCY.")
    limit: int | None = Field(None, ge=1, description="Enrich at most this many nouns per run (a quick look).")
    retry_violations: bool = Field(False, description="Call again for nouns whose stored outcome is a violation.")
    max_failure_rate: float = Field(0.5, ge=0.0, le=1.0)
    progress_interval_seconds: float = Field(5.0, gt=0)
    ramp_up_seconds: float = Field(0.2, ge=0, le=60, description=(
        "Spread the first calls over this many seconds, so that the calls in flight do not go out and come "
        "back in lockstep bursts."))
    circuit_cooldown_seconds: float = Field(30.0, ge=0)


@asset(
    group_name="enrichment",
    partitions_def=letter_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="control_plane_io_manager",
    pool="llm_enrichment",
    kinds={"openai", "postgres"},
    description="Each noun's theological/lexical insight (JSON: insight, themes, confidence) from the routed LLM.",
    check_specs=[AssetCheckSpec(name, asset="noun_enrichments") for name in CHECKS],
)
def noun_enrichments(
    context: AssetExecutionContext,
    config: EnrichmentConfig,
    noun_gematria: pd.DataFrame,
    lm_studio: LMStudioResource,
    remote_llm: RemoteLLMResource,
):  # no annotation: with check_specs Dagster would type the output as Nothing
    settings = get_settings()
    if config.backend == "auto":
        decision, _, _ = decide_now(lm_studio, remote_llm, settings)
    else:
        model = settings.lm_studio_model if config.backend == "lm_studio" else settings.remote_llm_model
        decision = RoutingDecision(backend=config.backend, model=model, reasons=config.routing_reasons)
    context.log.info("routing (%s): %s", config.decided_by, decision.summary())
    if BACKEND_TAG not in context.run.tags:
        # Runs launched by hand decide here; tag them too, so the UI shows every run's backend.
        context.instance.add_run_tags(context.run_id, {BACKEND_TAG: decision.backend})
    if decision.backend == "none":
        raise Failure(description=f"no LLM backend available: {'; '.join(decision.reasons)}",
                      metadata={"reasons": MetadataValue.json(decision.reasons)})

    partitions = context.partition_keys
    nouns = nouns_for_partitions(noun_gematria, partitions)
    in_scope = len(nouns)
    if config.limit is not None:
        nouns = nouns[: config.limit]
    p_hash = params_hash(temperature=config.temperature, max_tokens=config.max_tokens)
    router = build_router(decision, lm_studio, remote_llm, settings, config.lm_studio_concurrency,
                          config.remote_concurrency, config.circuit_cooldown_seconds)
    cache = enrichment_cache_for(settings, context.instance)
    cached = cache.lookup([n["strong_id"] for n in nouns], router.primary.model or "", config.prompt_version, p_hash)
    if config.retry_violations:
        cached = {k: v for k, v in cached.items() if v.ok}
    todo = [n for n in nouns if n["strong_id"] not in cached]
    context.log.info("%d nouns in %s: %d already enriched for (%s, %s), %d to call",
                     len(nouns), ",".join(partitions), len(cached), router.primary.model, config.prompt_version, len(todo))

    info = RunInfo(
        project_id=settings.gemantria_project_id, run_id=context.run_id, asset_key="noun_enrichments",
        routed_backend=decision.backend, prompt_version=config.prompt_version, params_hash=p_hash,
        temperature=config.temperature, max_tokens=config.max_tokens, response_format=response_format(),
        tool_by_route=tool_by_route(settings),
    )
    runner = EnrichmentRunner(router, info, context.log.info, config.progress_interval_seconds,
                              config.ramp_up_seconds)

    async def go() -> None:
        # Returns nothing: asyncio.run would build a repr of a large result on some signal set-ups.
        try:
            await runner.run(todo)
        finally:
            await asyncio.gather(lm_studio.aclose(), remote_llm.aclose())

    try:
        asyncio.run(go())
        batch = runner.batch
    except AllBackendsDown as exc:
        where = persist_batch(runner.batch, settings, context.instance, run_id=context.run_id)
        raise Failure(
            description=f"{exc} ({len(runner.batch.records)} calls and {len(runner.batch.enrichments)} outcomes "
                        f"made before the outage were saved to {where})",
            metadata=run_stats(runner.batch, failed_nouns=len(runner.failed_nouns)),
        ) from None

    batch.partition = ",".join(partitions)
    batch.reused = list(cached.values())
    stats = run_stats(batch, failed_nouns=len(runner.failed_nouns))
    verdicts = check_verdicts(batch, nouns_in_scope=in_scope, failed_nouns=len(runner.failed_nouns),
                              max_failure_rate=config.max_failure_rate)
    severity = {"coverage": AssetCheckSeverity.WARN}
    return MaterializeResult(
        value=batch,
        metadata={
            **{k: v for k, v in stats.items() if v is not None and k != "backend_mix"},
            "backend_mix": MetadataValue.json(stats["backend_mix"]),
            "routed_backend": decision.backend,
            "routing_reasons": MetadataValue.json(decision.reasons),
            "model": router.primary.model or "",
            "prompt_version": config.prompt_version,
            "nouns_in_scope": in_scope,
            "letters": ", ".join(f"{p} ({k})" for k, p in LETTER_NAMES.items() if p in partitions),
        },
        check_results=[
            AssetCheckResult(check_name=name, passed=passed, metadata=meta,
                             severity=severity.get(name, AssetCheckSeverity.ERROR))
            for name, (passed, meta) in verdicts.items()
        ],
    )
