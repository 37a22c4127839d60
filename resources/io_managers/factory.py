"""The control-plane IO manager and the store it adapts, both picked by the one decision `open_store` makes
(`gemantria_dag/control_plane/store.py`, from `Settings.db_mode`).

GEMATRIA_DSN=off -> `NoOpControlPlaneIOManager` over the local store (skip call logging, keep outcomes).
Anything else (embedded default or a DSN) -> `ControlPlaneIOManager` over the PostgreSQL store. Nothing
here touches the network at resource init: a database that is down never fails a run.
"""

from __future__ import annotations

from dagster import ConfigurableIOManagerFactory, DagsterInstance, InitResourceContext, IOManager
from pydantic import Field

from gemantria_dag.control_plane.store import LocalStore, PostgresStore, open_store
from gemantria_dag.control_plane.writer import DEFAULT_BATCH_SIZE
from gemantria_dag.db.target import OFF_REASON
from gemantria_dag.settings import Settings, get_settings
from resources.io_managers.control_plane import ControlPlaneIOManager
from resources.io_managers.noop_control_plane import NoOpControlPlaneIOManager
from resources.io_managers.storage import storage_root


def store_for(settings: Settings, instance: DagsterInstance | None) -> PostgresStore | LocalStore:
    """The run's store: pass `context.instance` (the DB-off store lives under the instance's storage folder)."""
    return open_store(settings, storage_root(settings, instance))


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
        store = open_store(settings, storage)
        if isinstance(store, LocalStore):
            return NoOpControlPlaneIOManager(OFF_REASON, storage, store)
        store = PostgresStore(settings, batch_size=self.batch_size)
        return ControlPlaneIOManager(store, storage)
