"""The control-plane IO manager, picked by the DB mode (`Settings.db_mode`, the one decision).

GEMATRIA_DSN=off -> `NoOpControlPlaneIOManager` (skip call logging, keep outcomes locally).
Anything else (embedded default or a DSN) -> `ControlPlaneIOManager`, which spools when the
database is unreachable at start or drops mid-run. The decision reads the settings only:
no network at resource init, so a database that is down never fails a run.
`enrichment_cache_for` applies the same rule for the asset's "already done?" lookups, and
`persist_batch` for a batch that must be saved outside an IO manager.
"""

from __future__ import annotations

from dagster import ConfigurableIOManagerFactory, DagsterInstance, InitResourceContext, IOManager
from pydantic import Field

from gemantria_dag.control_plane.records import EnrichmentBatch
from gemantria_dag.control_plane.spool import Spool
from gemantria_dag.control_plane.writer import DEFAULT_BATCH_SIZE, ControlPlaneWriter
from gemantria_dag.db.target import OFF_REASON, resolve_database
from gemantria_dag.settings import Settings, get_settings
from resources.io_managers.cache import EnrichmentCache, PostgresEnrichmentCache, SqliteEnrichmentCache
from resources.io_managers.control_plane import ControlPlaneIOManager, session_uuid
from resources.io_managers.noop_control_plane import NoOpControlPlaneIOManager
from resources.io_managers.storage import LocalEnrichmentStore, storage_root


class ControlPlaneIOManagerFactory(ConfigurableIOManagerFactory):
    """No DSN in the config on purpose: Dagster shows resource config in its UI."""

    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=100_000,
        description="Rows per transaction when writing to the control plane.",
    )

    def create_io_manager(self, context: InitResourceContext) -> IOManager:
        settings = get_settings()
        storage = storage_root(settings, context.instance)
        if settings.db_mode == "off":
            return NoOpControlPlaneIOManager(OFF_REASON, storage)
        return ControlPlaneIOManager(settings, storage, batch_size=self.batch_size)


def enrichment_cache_for(settings: Settings, instance: DagsterInstance | None) -> EnrichmentCache:
    """The cache matching the IO manager above: pass `context.instance` from the asset."""
    if settings.db_mode == "off":
        return SqliteEnrichmentCache(LocalEnrichmentStore(storage_root(settings, instance)))
    return PostgresEnrichmentCache(settings)


def persist_batch(batch: EnrichmentBatch, settings: Settings, instance: DagsterInstance | None, *, run_id: str) -> str:
    """Save `batch` the way the IO manager would; return where it went (safe to print).

    For an asset about to raise: Dagster hands a failed attempt's value to no IO manager, so the
    calls it already made would be lost otherwise.
    """
    if settings.db_mode == "off":
        store = LocalEnrichmentStore(storage_root(settings, instance))
        store.upsert(batch.all_enrichments)
        return f"{store.path} (call records not logged: {OFF_REASON})"
    spool = Spool(settings.spool_dir)
    writer = ControlPlaneWriter(resolve_database(settings, check=False), spool)
    report = writer.write(batch, session_id=session_uuid(run_id))
    if report.spooled:
        return f"the spool {spool.folder}, {report.records_spooled} records ({report.spool_reason})"
    return f"control.agent_run on {writer.target.display}"
