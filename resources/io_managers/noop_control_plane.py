"""The IO manager of an enrichment asset when the control plane is off (GEMATRIA_DSN=off): a thin adapter over
`LocalStore` (gemantria_dag/control_plane/store.py).

RFC-080 says: DB off, skip the logging, crash nothing. So the call records are dropped (nothing touches
`control.agent_run`) and the run log says so once, with the reason. The outcomes are kept in the local store
(a SQLite file under the Dagster instance's storage folder, keyed like `gematria.noun_enrichment`): the run's
journal wrote them as they arrived; `load_input` hands them back (as `list[NounEnrichment]`, in the output's
order) and a later run reuses them.
"""

from __future__ import annotations

from pathlib import Path

from dagster import InputContext, IOManager, MetadataValue, OutputContext

from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from gemantria_dag.control_plane.store import LocalStore
from resources.io_managers.control_plane import as_batch
from resources.io_managers.storage import KeyGroup, ManifestStore, load_outputs, record_output


class NoOpControlPlaneIOManager(IOManager):
    """See the module's docstring; `storage` is the instance's control-plane folder (the output manifests)."""

    def __init__(self, reason: str, storage: Path, store: LocalStore) -> None:
        self.reason = reason
        self._manifests = ManifestStore(storage)
        self.store = store
        self._announced = False

    def handle_output(self, context: OutputContext, obj: EnrichmentBatch | None) -> None:
        if obj is None:
            return
        batch = as_batch(obj)
        if not self._announced:
            self._announced = True
            context.log.warning(  # warning, like the other DB-off notices of this project
                f"control plane is off ({self.reason}): LLM call records are not written to control.agent_run; "
                f"outcomes are kept in {self.store.outcomes.path}. To log calls, unset GEMATRIA_DSN (embedded "
                "PostgreSQL) or set it to a postgresql:// DSN."
            )
        if batch.durable:
            stored = int((batch.stored or {}).get("outcomes_written", 0))
        else:
            stored = self.store.save_batch(batch, session_id=None).enrichments_written
        record_output(self._manifests, context, batch)
        context.add_output_metadata(
            {
                "control_plane": MetadataValue.text("off"),
                "control_plane_records_skipped": MetadataValue.int(len(batch.records)),
                "control_plane_outcomes_stored": MetadataValue.int(stored),
                "control_plane_store": MetadataValue.path(str(self.store.outcomes.path)),
            }
        )

    def load_input(self, context: InputContext) -> list[NounEnrichment]:
        def fetch(group: KeyGroup) -> dict[str, NounEnrichment]:
            return self.store.lookup(group.strong_ids, group.model, group.prompt_version, group.params_hash)

        return load_outputs(
            self._manifests,
            context,
            fetch,
            missing_hint=lambda: f"they are not in {self.store.outcomes.path} (was it removed?)",
        )
