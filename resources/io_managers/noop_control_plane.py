"""The IO manager of an enrichment asset when the control plane is off (GEMATRIA_DSN=off).

RFC-080 says: DB off, skip the logging, crash nothing. So the call records are dropped
(nothing touches `control.agent_run`) and the run log says so once, with the reason. The
outcomes are still kept, in a SQLite file under the Dagster instance's storage folder keyed
like `gematria.noun_enrichment`: `load_input` hands them back (as `list[NounEnrichment]`,
in the output's order) and a later run can reuse them through `SqliteEnrichmentCache`.
"""

from __future__ import annotations

from pathlib import Path

from dagster import InputContext, IOManager, MetadataValue, OutputContext

from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from resources.io_managers.control_plane import as_batch
from resources.io_managers.storage import KeyGroup, LocalEnrichmentStore, ManifestStore, load_outputs, record_output


class NoOpControlPlaneIOManager(IOManager):
    def __init__(self, reason: str, storage: Path) -> None:
        self.reason = reason
        self._manifests = ManifestStore(storage)
        self.store = LocalEnrichmentStore(storage)
        self._announced = False

    def handle_output(self, context: OutputContext, obj: EnrichmentBatch | None) -> None:
        if obj is None:
            return
        batch = as_batch(obj)
        if not self._announced:
            self._announced = True
            context.log.warning(  # warning, like the other DB-off notices of this project
                f"control plane is off ({self.reason}): LLM call records are not written to control.agent_run; "
                f"outcomes are kept in {self.store.path}. To log calls, unset GEMATRIA_DSN (embedded PostgreSQL) "
                "or set it to a postgresql:// DSN."
            )
        stored = self.store.upsert(batch.all_enrichments)
        record_output(self._manifests, context, batch)
        context.add_output_metadata(
            {
                "control_plane": MetadataValue.text("off"),
                "control_plane_records_skipped": MetadataValue.int(len(batch.records)),
                "control_plane_outcomes_stored": MetadataValue.int(stored),
                "control_plane_store": MetadataValue.path(str(self.store.path)),
            }
        )

    def load_input(self, context: InputContext) -> list[NounEnrichment]:
        def fetch(group: KeyGroup) -> dict[str, NounEnrichment]:
            return self.store.lookup(group.strong_ids, group.model, group.prompt_version, group.params_hash)

        return load_outputs(
            self._manifests, context, fetch, missing_hint=lambda: f"they are not in {self.store.path} (was it removed?)"
        )
