"""The IO manager of an enrichment asset when a control-plane database is configured: a thin adapter over
`PostgresStore` (gemantria_dag/control_plane/store.py).

`handle_output(EnrichmentBatch)`: a batch whose run journal already made every call durable (`batch.durable`:
written to `control.agent_run` and `gematria.noun_enrichment` as the calls arrived, or spooled) is only
remembered (which outcomes the output holds) and described in metadata; any other batch (a test's, a Pipes
client's) is written now, spooling what the database cannot take. The run log says once when rows were
spooled, why, and how to fix it.

`load_input` returns `list[NounEnrichment]`: the outcomes (new and reused) that the upstream output held, in
its order, read back through the store (the database, else the spool).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from dagster import InputContext, IOManager, MetadataValue, OutputContext

from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from gemantria_dag.control_plane.store import PostgresStore
from resources.io_managers.storage import KeyGroup, ManifestStore, load_outputs, record_output


def session_uuid(run_id: str) -> UUID:
    """`control.agent_run.session_id` is a uuid: Dagster run ids are uuids; anything else maps stably."""
    try:
        return UUID(run_id)
    except ValueError:
        return uuid5(NAMESPACE_URL, f"dagster-run:{run_id}")


def as_batch(obj: object) -> EnrichmentBatch:
    """`obj` as an EnrichmentBatch (a dict from a test or a Pipes client is validated; anything else fails loudly)."""
    if isinstance(obj, EnrichmentBatch):
        return obj
    return EnrichmentBatch.model_validate(obj)


class ControlPlaneIOManager(IOManager):
    """See the module's docstring; `storage` is the instance's control-plane folder (the output manifests)."""

    def __init__(self, store: PostgresStore, storage: Path) -> None:
        self.store = store
        self._manifests = ManifestStore(storage)
        self._warned = False

    def handle_output(self, context: OutputContext, obj: EnrichmentBatch | None) -> None:
        if obj is None:
            return
        batch = as_batch(obj)
        if batch.durable:
            stored = dict(batch.stored or {})
        else:
            self.store.recover()  # older rows (a spool, a dead run's journal) land before this batch's
            report = self.store.save_batch(batch, session_id=session_uuid(context.run_id))
            stored = {
                "records_written": report.records_written,
                "records_already_present": report.records_already_present,
                "outcomes_written": report.enrichments_written,
                "records_spooled": report.records_spooled,
                "outcomes_spooled": report.enrichments_spooled,
                "quarantined": report.quarantined,
                "spool_reason": report.spool_reason,
                "seconds": report.seconds,
            }
        record_output(self._manifests, context, batch)
        if stored.get("records_spooled") or stored.get("outcomes_spooled"):
            self._warn_spooled(context, stored)
        context.add_output_metadata(self._metadata(stored))

    def _warn_spooled(self, context: OutputContext, stored: dict[str, Any]) -> None:
        if self._warned:
            return
        self._warned = True
        context.log.warning(
            f"control plane unreachable ({stored.get('spool_reason')}): {stored.get('records_spooled', 0)} call "
            f"records and {stored.get('outcomes_spooled', 0)} outcomes spooled to {self.store.spool_store.folder}; "
            "nothing is lost. They are written, once, by the next run that reaches the database or by "
            f"`pmagent control flush`. Fix: start the PostgreSQL server at {self.store.writer.target.display} or "
            "correct GEMATRIA_DSN (GEMATRIA_DSN=off skips call logging)."
        )

    def _metadata(self, stored: dict[str, Any]) -> dict[str, object]:
        spooled = bool(stored.get("records_spooled") or stored.get("outcomes_spooled"))
        return {
            "control_plane": MetadataValue.text("spooled" if spooled else "on"),
            "control_plane_db": MetadataValue.text(self.store.writer.target.display),
            "control_plane_records_written": MetadataValue.int(int(stored.get("records_written", 0))),
            "control_plane_records_already_present": MetadataValue.int(int(stored.get("records_already_present", 0))),
            "control_plane_outcomes_written": MetadataValue.int(int(stored.get("outcomes_written", 0))),
            "control_plane_records_spooled": MetadataValue.int(int(stored.get("records_spooled", 0))),
            "control_plane_outcomes_spooled": MetadataValue.int(int(stored.get("outcomes_spooled", 0))),
            "control_plane_quarantined": MetadataValue.int(int(stored.get("quarantined", 0))),
            "control_plane_seconds": MetadataValue.float(round(float(stored.get("seconds", 0.0)), 4)),
            # The journal's cost on the calls' event loop (its group commits run in a thread of their own).
            "control_plane_journal_append_seconds": MetadataValue.float(
                round(float(stored.get("journal_append_seconds", 0.0)), 4)
            ),
            "control_plane_unknown_outcomes": MetadataValue.int(int(stored.get("unknown_outcomes", 0))),
            "control_plane_records_replayed": MetadataValue.int(self.store.last_replay.records_written),
        }

    def load_input(self, context: InputContext) -> list[NounEnrichment]:
        def fetch(group: KeyGroup) -> dict[str, NounEnrichment]:
            return self.store.lookup(group.strong_ids, group.model, group.prompt_version, group.params_hash)

        def hint() -> str:
            problem = self.store.unavailable_reason
            if problem:
                return f"the database could not be read ({problem}) and the spool lacks them"
            return "they are neither in gematria.noun_enrichment nor in the spool"

        return load_outputs(self._manifests, context, fetch, missing_hint=hint)
