"""The IO manager of an enrichment asset when a control-plane database is configured.

`handle_output(EnrichmentBatch)`: replays any pending spool first (older records land
before newer ones), then writes the batch's call records to `control.agent_run` and its new
outcomes to `gematria.noun_enrichment`. If the DB is unreachable at start or drops mid-run,
the unwritten batches go to the spool and the run still succeeds: the run log says once
that it spooled, why, and how to fix it.

`load_input` returns `list[NounEnrichment]`: the outcomes (new and reused) that the upstream
output held, in its order, read back from `gematria.noun_enrichment`; outcomes still waiting
in the spool are read from there.
"""

from __future__ import annotations

from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

import psycopg
from dagster import InputContext, IOManager, MetadataValue, OutputContext

from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from gemantria_dag.control_plane.spool import ReplayReport, Spool
from gemantria_dag.control_plane.writer import DEFAULT_BATCH_SIZE, ControlPlaneWriter, WriteReport
from gemantria_dag.db.target import resolve_database
from gemantria_dag.settings import Settings
from resources.io_managers.cache import fetch_outcomes
from resources.io_managers.storage import KeyGroup, ManifestStore, load_outputs, record_output


def session_uuid(run_id: str) -> UUID:
    """`control.agent_run.session_id` is a uuid: Dagster run ids are uuids; anything else maps stably."""
    try:
        return UUID(run_id)
    except ValueError:
        return uuid5(NAMESPACE_URL, f"dagster-run:{run_id}")


def as_batch(obj: object) -> EnrichmentBatch:
    if isinstance(obj, EnrichmentBatch):
        return obj
    return EnrichmentBatch.model_validate(obj)  # a dict from a test or a pipes client; fails loudly otherwise


def _newer(current: NounEnrichment | None, candidate: NounEnrichment) -> bool:
    """The store's rule: newest wins, a success is never replaced by a failure."""
    return current is None or (candidate.created_at > current.created_at and (candidate.ok or not current.ok))


class ControlPlaneIOManager(IOManager):
    def __init__(self, settings: Settings, storage: Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self._settings = settings
        self._manifests = ManifestStore(storage)
        self._spool = Spool(settings.spool_dir)
        self._batch_size = batch_size
        self._writer: ControlPlaneWriter | None = None
        self._warned = False

    def _get_writer(self) -> ControlPlaneWriter:
        # Resolved on first use inside a step, never at resource init: a DB that is down must
        # not fail the run (notes: RESOURCE_INIT_FAILURE). `check=False`: the write is the probe.
        if self._writer is None:
            target = resolve_database(self._settings, check=False)
            self._writer = ControlPlaneWriter(target, self._spool, batch_size=self._batch_size)
        return self._writer

    def handle_output(self, context: OutputContext, obj: EnrichmentBatch | None) -> None:
        if obj is None:
            return
        batch = as_batch(obj)
        writer = self._get_writer()
        replay = ReplayReport()
        if writer.target.on and self._spool.pending():
            replay = self._spool.replay(writer)
            if replay.files_replayed:
                context.log.info(
                    f"control plane: replayed {replay.files_replayed} spool file(s): {replay.records_written} call "
                    f"records written, {replay.records_already_present} already present"
                )
            if replay.error is not None:
                context.log.warning(
                    f"control plane: {replay.files_left} spool file(s) not replayed ({replay.error}); they stay "
                    f"in {self._spool.folder} for the next run or `pmagent control flush`"
                )
        report = writer.write(batch, session_id=session_uuid(context.run_id))
        record_output(self._manifests, context, batch)
        if report.spooled:
            self._warn_spooled(context, report, writer)
        context.add_output_metadata(self._metadata(report, replay, writer))

    def _warn_spooled(self, context: OutputContext, report: WriteReport, writer: ControlPlaneWriter) -> None:
        if self._warned:
            return
        self._warned = True
        context.log.warning(
            f"control plane unreachable ({report.spool_reason}): {report.records_spooled} call records and "
            f"{report.enrichments_spooled} outcomes spooled to {self._spool.folder}; nothing is lost. They are "
            "written, once, by the next run that reaches the database or by `pmagent control flush`. "
            f"Fix: start the PostgreSQL server at {writer.target.display} or correct GEMATRIA_DSN "
            "(GEMATRIA_DSN=off skips call logging)."
        )

    def _metadata(self, report: WriteReport, replay: ReplayReport, writer: ControlPlaneWriter) -> dict[str, object]:
        return {
            "control_plane": MetadataValue.text("spooled" if report.spooled else "on"),
            "control_plane_db": MetadataValue.text(writer.target.display),
            "control_plane_records_written": MetadataValue.int(report.records_written),
            "control_plane_records_already_present": MetadataValue.int(report.records_already_present),
            "control_plane_outcomes_written": MetadataValue.int(report.enrichments_written),
            "control_plane_records_spooled": MetadataValue.int(report.records_spooled),
            "control_plane_outcomes_spooled": MetadataValue.int(report.enrichments_spooled),
            "control_plane_seconds": MetadataValue.float(round(report.seconds, 4)),
            "control_plane_records_replayed": MetadataValue.int(replay.records_written),
        }

    def load_input(self, context: InputContext) -> list[NounEnrichment]:
        writer = self._get_writer()
        conn: psycopg.Connection | None = None
        problem = writer.target.reason if not writer.target.on else None
        if writer.target.on:
            try:
                conn = writer.connect()
            except psycopg.Error as exc:
                problem = writer.describe_error(exc)
        spooled: dict[tuple[str, str, str, str], NounEnrichment] | None = None

        def fetch(group: KeyGroup) -> dict[str, NounEnrichment]:
            nonlocal spooled, conn, problem
            found: dict[str, NounEnrichment] = {}
            if conn is not None:
                try:
                    found = fetch_outcomes(conn, group.strong_ids, group.model, group.prompt_version, group.params_hash)
                except psycopg.Error as exc:  # the DB dropped while reading: the spool may still have them
                    problem = writer.describe_error(exc)
                    conn.close()
                    conn = None
            if len(found) < len(set(group.strong_ids)):
                if spooled is None:  # read the spool once, only when the database lacks something
                    spooled = self._spooled_outcomes()
                for sid in group.strong_ids:
                    if sid not in found:
                        hit = spooled.get((sid, group.model, group.prompt_version, group.params_hash))
                        if hit is not None:
                            found[sid] = hit
            return found

        try:
            return load_outputs(
                self._manifests,
                context,
                fetch,
                missing_hint=lambda: (
                    f"the database could not be read ({problem}) and the spool lacks them"
                    if problem
                    else "they are neither in gematria.noun_enrichment nor in the spool"
                ),
            )
        finally:
            if conn is not None:
                conn.close()

    def _spooled_outcomes(self) -> dict[tuple[str, str, str, str], NounEnrichment]:
        outcomes: dict[tuple[str, str, str, str], NounEnrichment] = {}
        for batch in self._spool.iter_batches():
            for o in batch.enrichments:
                key = (o.strong_id, o.model, o.prompt_version, o.params_hash)
                if _newer(outcomes.get(key), o):
                    outcomes[key] = o
        return outcomes
