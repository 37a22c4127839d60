"""The control-plane PostgreSQL as a Dagster resource: embedded by default, a DSN when set, off when not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from gemantria_dag.db.schema import ensure_schema
from gemantria_dag.db.target import DatabaseTarget, resolve_database
from gemantria_dag.settings import get_settings


class ControlPlaneDatabase(ConfigurableResource):
    """Resolves the database lazily, on first use inside a step, so that a DB that is off
    or unreachable never fails resource initialisation (the run goes DB-off instead).

    The DSN stays out of the resource's config on purpose: Dagster shows resource config
    in its UI, and a DSN can hold a password.
    """

    _target: DatabaseTarget | None = PrivateAttr(default=None)
    _schema_ready: bool = PrivateAttr(default=False)

    def target(self) -> DatabaseTarget:
        if self._target is None:
            self._target = resolve_database(get_settings())
        return self._target

    @property
    def on(self) -> bool:
        return self.target().on

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        target = self.target()
        with target.connect() as conn:
            if not self._schema_ready:
                ensure_schema(conn)
                self._schema_ready = True
            yield conn
