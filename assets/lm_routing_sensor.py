"""The routing sensor: health checks -> RFC-080 decision -> cursor, tick history and enrichment runs."""

from __future__ import annotations

import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from gemantria_dag.enrichment.pending import gematria_ready, pending_partitions
from gemantria_dag.enrichment.prompt import PROMPT_VERSION
from gemantria_dag.names import (
    BACKEND_TAG,
    ENGINE,
    ENRICHMENT_JOB,
    MODEL_TAG,
    NO_BACKEND,
    NOUN_ENRICHMENTS,
    ROUTING_SENSOR,
)
from gemantria_dag.routing.decision import RoutingDecision
from gemantria_dag.routing.live import decide_now
from gemantria_dag.settings import get_settings
from resources.llm.engine import EmbeddedEngineResource
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource


def _previous(cursor: str | None) -> RoutingDecision | None:
    if not cursor:
        return None
    try:
        return RoutingDecision.model_validate(json.loads(cursor)["decision"])
    except (ValueError, KeyError, TypeError):
        return None  # a cursor from an older version: start afresh


def routing_run_request(decision: RoutingDecision, partition: str) -> RunRequest:
    """A run of `partition` on the decided backend: the decision in its run config and its tags."""
    config = {"backend": decision.backend, "routing_reasons": decision.reasons, "decided_by": ROUTING_SENSOR}
    return RunRequest(
        partition_key=partition,
        run_config={"ops": {NOUN_ENRICHMENTS: {"config": config}}},
        tags={BACKEND_TAG: decision.backend, MODEL_TAG: decision.model or ""},
    )


@sensor(
    name=ROUTING_SENSOR,
    job_name=ENRICHMENT_JOB,
    minimum_interval_seconds=get_settings().llm_routing_interval_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Checks LM Studio and the remote LLM, applies RFC-080's routing rules, and launches "
    "enrichment runs on the chosen backend when there is work.",
)
def lm_routing_sensor(
    context: SensorEvaluationContext,
    lm_studio: LMStudioResource,
    remote: RemoteLLMResource,
    engine: EmbeddedEngineResource,
) -> SensorResult:
    settings = get_settings()
    decision, _, _ = decide_now(lm_studio, remote, settings, engine)
    before = _previous(context.cursor)
    changed = not decision.same_route(before)
    state = {
        "decision": decision.model_dump(mode="json"),
        "changed": changed,
        "previous_backend": before.backend if before else None,
    }
    cursor = json.dumps(state)
    headline = (
        f"routing changed {before.backend if before else 'unset'} -> {decision.summary()}"
        if changed
        else f"routing unchanged: {decision.summary()}"
    )
    context.log.info(headline)

    if decision.backend == NO_BACKEND:
        return SensorResult(skip_reason=f"no LLM backend available, no run launched. {headline}", cursor=cursor)
    if decision.backend == ENGINE and not settings.llm_routing_auto_launch_engine:
        return SensorResult(
            skip_reason="no LM Studio, no remote: embedded engine available, not auto-launched (set "
            f"LLM_ROUTING_AUTO_LAUNCH_ENGINE=1 to let this sensor launch runs on it). {headline}",
            cursor=cursor,
        )
    if not gematria_ready(context.instance):
        return SensorResult(
            skip_reason=f"noun_gematria is not materialized yet (run gematria_job). {headline}", cursor=cursor
        )
    pending = pending_partitions(context.instance, ENRICHMENT_JOB, decision.model, PROMPT_VERSION)
    if not pending:
        return SensorResult(skip_reason=f"no enrichment work pending. {headline}", cursor=cursor)
    batch = pending[: settings.llm_routing_max_runs_per_tick]
    context.log.info(f"launching {len(batch)} of {len(pending)} pending partitions on {decision.backend}")
    return SensorResult(run_requests=[routing_run_request(decision, p) for p in batch], cursor=cursor)
