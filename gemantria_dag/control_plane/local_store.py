"""The outcome store of DB-off runs (GEMATRIA_DSN=off): a SQLite file keyed like `gematria.noun_enrichment`.

It lives under the Dagster instance's storage folder (`resources/io_managers/storage.storage_root`), so a
downstream asset can load a run's outcomes and a later run can reuse them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from gemantria_dag.control_plane.outcome_rule import newer_sql
from gemantria_dag.control_plane.records import NounEnrichment

STORE_FILE = "noun_enrichment.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS noun_enrichment (
    strong_id TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    ok INTEGER NOT NULL,
    created_at REAL NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (strong_id, model, prompt_version, params_hash)
)
"""
# The outcome rule (outcome_rule.py), as in PostgreSQL.
_UPSERT = """
INSERT INTO noun_enrichment (strong_id, model, prompt_version, params_hash, ok, created_at, payload)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (strong_id, model, prompt_version, params_hash) DO UPDATE
SET ok = excluded.ok, created_at = excluded.created_at, payload = excluded.payload
WHERE """ + newer_sql("noun_enrichment")
_SQLITE_MAX_PARAMS = 900  # under SQLite's oldest default limit of 999 bound parameters


class LocalEnrichmentStore:
    """Outcomes in a SQLite file; safe for concurrent step processes (WAL, busy timeout)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STORE_FILE

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            with conn:  # one transaction
                yield conn

    def upsert(self, outcomes: Sequence[NounEnrichment]) -> int:
        """Store `outcomes` under the outcome rule, in one transaction; return the rows changed."""
        rows = [
            (
                o.strong_id,
                o.model,
                o.prompt_version,
                o.params_hash,
                int(o.ok),
                o.created_at.timestamp(),
                o.model_dump_json(),
            )
            for o in outcomes
        ]
        with self._connect() as conn:
            before = conn.total_changes
            conn.executemany(_UPSERT, rows)
            return conn.total_changes - before

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]:
        """The stored outcome of each of `strong_ids` under (model, prompt version, params hash)."""
        ids = list(dict.fromkeys(strong_ids))
        found: dict[str, NounEnrichment] = {}
        if not ids or not self.path.exists():
            return found
        with self._connect() as conn:
            for start in range(0, len(ids), _SQLITE_MAX_PARAMS):
                part = ids[start : start + _SQLITE_MAX_PARAMS]
                marks = ",".join("?" * len(part))  # placeholders only; the values stay bound parameters
                sql = (
                    "SELECT payload FROM noun_enrichment WHERE model = ? AND prompt_version = ? AND params_hash = ?"
                    f" AND strong_id IN ({marks})"
                )
                for (payload,) in conn.execute(sql, (model, prompt_version, params_hash, *part)):
                    outcome = NounEnrichment.model_validate_json(payload)
                    found[outcome.strong_id] = outcome
        return found
