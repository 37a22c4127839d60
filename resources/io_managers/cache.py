"""Which nouns are already done: the enrichment asset asks before calling an LLM.

Two implementations: Postgres (`gematria.noun_enrichment`) when a database is configured,
the SQLite store of DB-off runs otherwise; `factory.enrichment_cache_for` picks one. Both
return every stored outcome, successes and violations (`ok` tells them apart): whether a
violation is tried again is the asset's decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import psycopg

from gemantria_dag.control_plane.records import NounEnrichment, NounInsight
from gemantria_dag.control_plane.spool import Spool
from gemantria_dag.control_plane.writer import ControlPlaneWriter
from gemantria_dag.db.target import DatabaseTarget, resolve_database
from gemantria_dag.settings import Settings
from resources.io_managers.storage import LocalEnrichmentStore

_SELECT = """
SELECT strong_id, model, prompt_version, params_hash, backend, ok, insight_json, violation, record_id, created_at
FROM gematria.noun_enrichment
WHERE model = %s AND prompt_version = %s AND params_hash = %s AND strong_id = ANY(%s)
"""


@runtime_checkable
class EnrichmentCache(Protocol):
    """Outcomes already stored for (model, prompt version, parameters), by Strong's id."""

    @property
    def where(self) -> str: ...

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]: ...


def fetch_outcomes(
    conn: psycopg.Connection,
    strong_ids: Iterable[str],
    model: str,
    prompt_version: str,
    params_hash: str,
) -> dict[str, NounEnrichment]:
    """Rows of `gematria.noun_enrichment` for these nouns under one (model, prompt, params)."""
    found: dict[str, NounEnrichment] = {}
    for sid, m, pv, ph, backend, ok, insight, violation, record_id, created_at in conn.execute(
        _SELECT, (model, prompt_version, params_hash, list(dict.fromkeys(strong_ids)))
    ):
        found[sid] = NounEnrichment(
            strong_id=sid,
            model=m,
            prompt_version=pv,
            params_hash=ph,
            backend=backend,
            ok=ok,
            insight=NounInsight.model_validate(insight) if insight is not None else None,
            violation=violation,
            record_id=record_id,
            created_at=created_at,
        )
    return found


class PostgresEnrichmentCache:
    """Reads `gematria.noun_enrichment`. An unreachable DB means "nothing cached", with the reason kept.

    Its first lookup replays the spool, so outcomes spooled during an outage count as done
    as soon as the database is back.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._writer: ControlPlaneWriter | None = None
        self._replayed = False
        self.unavailable_reason: str | None = None

    @property
    def where(self) -> str:
        return f"postgres:{self._get_writer().target.display}"

    def _get_writer(self) -> ControlPlaneWriter:
        if self._writer is None:
            target: DatabaseTarget = resolve_database(self._settings, check=False)  # no extra probe
            self._writer = ControlPlaneWriter(target, Spool(self._settings.spool_dir))
        return self._writer

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]:
        writer = self._get_writer()
        if not writer.target.on:
            self.unavailable_reason = writer.target.reason
            return {}
        if not self._replayed and writer.spool is not None and writer.spool.pending():
            writer.spool.replay(writer)  # failures leave the files for the IO manager or `pmagent control flush`
        self._replayed = True
        try:
            with writer.connect() as conn:
                return fetch_outcomes(conn, strong_ids, model, prompt_version, params_hash)
        except psycopg.Error as exc:
            self.unavailable_reason = writer.describe_error(exc)
            return {}


class SqliteEnrichmentCache:
    """The DB-off store under the Dagster instance's storage folder."""

    def __init__(self, store: LocalEnrichmentStore) -> None:
        self.store = store

    @property
    def where(self) -> str:
        return f"sqlite:{self.store.path}"

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]:
        return self.store.lookup(strong_ids, model, prompt_version, params_hash)
