"""Which enrichment partitions have work to do for the current model and prompt version."""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from gemantria_dag.enrichment.partitions import letter_partitions

ENRICHMENTS = AssetKey("noun_enrichments")
GEMATRIA = AssetKey("noun_gematria")
ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def gematria_ready(instance: DagsterInstance) -> bool:
    return instance.get_latest_materialization_event(GEMATRIA) is not None


def partitions_in_flight(instance: DagsterInstance, job_name: str) -> set[str]:
    runs = instance.get_runs(RunsFilter(job_name=job_name, statuses=ACTIVE))
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


def partition_is_current(instance: DagsterInstance, partition: str, model: str | None, prompt_version: str) -> bool:
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=ENRICHMENTS, asset_partitions=[partition]), limit=1)
    if not result.records:
        return False
    meta = result.records[0].asset_materialization.metadata  # type: ignore[union-attr]
    done_model = meta.get("model")
    done_prompt = meta.get("prompt_version")
    return (getattr(done_model, "value", None) == (model or "")
            and getattr(done_prompt, "value", None) == prompt_version)


def pending_partitions(instance: DagsterInstance, job_name: str, model: str | None, prompt_version: str) -> list[str]:
    busy = partitions_in_flight(instance, job_name)
    return [p for p in letter_partitions.get_partition_keys()
            if p not in busy and not partition_is_current(instance, p, model, prompt_version)]
