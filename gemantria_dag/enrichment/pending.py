"""Which enrichment partitions have work to do for the current model and prompt version."""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from gemantria_dag.enrichment.partitions import letter_partitions
from gemantria_dag.names import META_MODEL, META_PROMPT_VERSION, NOUN_ENRICHMENTS, NOUN_GEMATRIA

ENRICHMENTS = AssetKey(NOUN_ENRICHMENTS)
GEMATRIA = AssetKey(NOUN_GEMATRIA)
ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def gematria_ready(instance: DagsterInstance) -> bool:
    """Whether noun_gematria has been materialized at least once."""
    return instance.get_latest_materialization_event(GEMATRIA) is not None


def partitions_in_flight(instance: DagsterInstance, job_name: str) -> set[str]:
    """Partition keys of `job_name` runs queued, starting or running."""
    runs = instance.get_runs(RunsFilter(job_name=job_name, statuses=ACTIVE))
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


def partition_is_current(instance: DagsterInstance, partition: str, model: str | None, prompt_version: str) -> bool:
    """Whether the latest materialization of `partition` used this model and prompt version."""
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=ENRICHMENTS, asset_partitions=[partition]), limit=1
    )
    if not result.records:
        return False
    meta = result.records[0].asset_materialization.metadata  # type: ignore[union-attr]
    done_model = meta.get(META_MODEL)
    done_prompt = meta.get(META_PROMPT_VERSION)
    return getattr(done_model, "value", None) == (model or "") and getattr(done_prompt, "value", None) == prompt_version


def pending_partitions(instance: DagsterInstance, job_name: str, model: str | None, prompt_version: str) -> list[str]:
    """Partitions neither in flight nor current for (model, prompt_version), in partition order."""
    busy = partitions_in_flight(instance, job_name)
    return [
        p
        for p in letter_partitions.get_partition_keys()
        if p not in busy and not partition_is_current(instance, p, model, prompt_version)
    ]
