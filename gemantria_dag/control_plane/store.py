"""The one storage seam: where call records and outcomes go, chosen once from `Settings.db_mode`.

`open_store` returns
- `PostgresStore` (the embedded server or GEMATRIA_DSN): records to `control.agent_run`, outcomes to
  `gematria.noun_enrichment`, with the spool for what cannot be written now (replayed exactly once), the
  quarantine for rows the database rejects for good, and the runs' journals (`journal.py`);
- `LocalStore` (GEMATRIA_DSN=off): RFC-080's "DB off: skip the logging": records are dropped, outcomes
  kept in a SQLite file so that a later run reuses them and a downstream asset can load them.

Everything else goes through it: the IO managers (resources/io_managers/) are thin adapters, the
asset's "already done?" look-ups (`lookup`) and its journal (`journal`) use the same object, and
`pmagent control flush` calls `recover`. Neither store raises for a database that is down: writes
answer with the reason and the caller keeps the rows (journal, spool).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol
from uuid import UUID

import psycopg
from psycopg import sql

from gemantria_dag.control_plane.journal import Journal, JournalHeader, RecoveryReport, recover
from gemantria_dag.control_plane.local_store import LocalEnrichmentStore
from gemantria_dag.control_plane.outcome_rule import newer
from gemantria_dag.control_plane.records import AgentRunRecord, EnrichmentBatch, NounEnrichment, NounInsight
from gemantria_dag.control_plane.spool import PendingBatch, ReplayReport, Spool
from gemantria_dag.control_plane.writer import ControlPlaneWriter, WriteReport
from gemantria_dag.db.target import OFF_REASON, DatabaseTarget, resolve_database
from gemantria_dag.settings import Settings

# PostgreSQL's B-tree index rows hold at most 2,704 bytes (about a third of an 8 kB page); the primary key of
# gematria.noun_enrichment indexes (strong_id, model, prompt_version, params_hash). Keep well under it.
MAX_KEY_BYTES = 2_000


class StoreRejects(ValueError):
    """The database would reject every row of the run (the message names the value and the fix)."""


class OutcomeStore(Protocol):
    """What the pipeline needs of storage; see the module's docstring."""

    @property
    def where(self) -> str:
        """Where rows go, safe to print (no password)."""
        ...

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]:
        """The stored outcome of each of `strong_ids` under (model, prompt version, params hash)."""
        ...

    def write(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment]) -> str | None:
        """Write both in one transaction; None when written, else why not (nothing written)."""
        ...

    def spool(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment], reason: str) -> str:
        """Keep both durably until `write` can take them; return where. Raises OSError."""
        ...

    def recover(self) -> RecoveryReport:
        """Replay the journals of dead runs (and the spool, where there is one); also kept as `last_recovery`."""
        ...

    @property
    def last_recovery(self) -> RecoveryReport:
        """What the last `recover` did (its `dead_runs` are for steps.reap_dead_runs)."""
        ...

    def save_batch(self, batch: EnrichmentBatch, *, session_id: UUID | None) -> WriteReport:
        """Write a whole batch that no journal wrote (spooling what cannot be written now)."""
        ...

    def preflight(self, project_id: int, tools: Iterable[str], keys: Iterable[str]) -> None:
        """Raise StoreRejects when the database would reject every row of a run with these values."""
        ...

    def journal(self, header: JournalHeader) -> Journal:
        """A new journal for this run process, committing into this store."""
        ...


class PostgresStore:
    """The control plane in PostgreSQL (see the module's docstring). Thread-safe: a journal's group commit
    writes from its own thread while the asset reads."""

    def __init__(
        self, settings: Settings, *, target: DatabaseTarget | None = None, batch_size: int | None = None
    ) -> None:
        self._settings = settings
        self._target = target
        self.spool_store = Spool(settings.spool_dir)
        self._batch_size = batch_size
        self._writer: ControlPlaneWriter | None = None
        self._write_lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._recovered = False
        self.unavailable_reason: str | None = None
        self.last_replay = ReplayReport()
        self.last_recovery = RecoveryReport()

    @property
    def writer(self) -> ControlPlaneWriter:
        """The writer, made on first use: resolving the target may start the embedded server (never at import)."""
        if self._writer is None:
            target = self._target or resolve_database(self._settings, check=False)  # the first write is the probe
            kwargs = {"batch_size": self._batch_size} if self._batch_size else {}
            self._writer = ControlPlaneWriter(target, self.spool_store, **kwargs)  # type: ignore[arg-type]
        return self._writer

    @property
    def where(self) -> str:
        """As `OutcomeStore.where`."""
        return f"control.agent_run on {self.writer.target.display}"

    def write(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment]) -> str | None:
        """As `OutcomeStore.write`."""
        writer = self.writer
        if not writer.target.on:
            return f"control plane unavailable: {writer.target.reason}"
        with self._write_lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = writer.connect()
                writer.persist(self._conn, records, outcomes)
                return None
            except psycopg.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                return writer.describe_error(exc)

    def spool(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment], reason: str) -> str:
        """As `OutcomeStore.spool`."""
        self.spool_store.append(PendingBatch(reason=reason, records=list(records), enrichments=list(outcomes)))
        return str(self.spool_store.folder)

    def recover(self) -> RecoveryReport:
        """As `OutcomeStore.recover`."""
        self.last_recovery = recover(self._settings.journal_dir, self)
        if self.writer.target.on and self.spool_store.pending():
            self.last_replay = self.spool_store.replay(self.writer)
        return self.last_recovery

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]:
        """Outcomes in `gematria.noun_enrichment`, and those still waiting in the spool (the outcome rule picks
        between them). The first look-up recovers dead runs' journals and replays the spool."""
        if not self._recovered:
            self._recovered = True
            self.recover()
        ids = list(dict.fromkeys(strong_ids))
        found: dict[str, NounEnrichment] = {}
        writer = self.writer
        if writer.target.on:
            try:
                with writer.connect() as conn:
                    found = fetch_outcomes(conn, ids, model, prompt_version, params_hash)
            except psycopg.Error as exc:
                self.unavailable_reason = writer.describe_error(exc)
        else:
            self.unavailable_reason = writer.target.reason
        if len(found) < len(ids):
            wanted = set(ids)
            for batch in self.spool_store.iter_batches():
                for o in batch.enrichments:
                    if (
                        o.strong_id in wanted
                        and (o.model, o.prompt_version, o.params_hash) == (model, prompt_version, params_hash)
                        and newer(found.get(o.strong_id), o)
                    ):
                        found[o.strong_id] = o
        return found

    def save_batch(self, batch: EnrichmentBatch, *, session_id: UUID | None) -> WriteReport:
        """As `OutcomeStore.save_batch`."""
        return self.writer.write(batch, session_id=session_id)

    def preflight(self, project_id: int, tools: Iterable[str], keys: Iterable[str]) -> None:
        """Check, before any call is paid for, the values every row of the run carries against what the database
        accepts: required columns this project cannot fill, the project id where `project_id` references a table,
        `varchar(n)` limits, and the index limit of the outcome key. A database that is down is not checked."""
        for key in keys:
            if len(key.encode()) > MAX_KEY_BYTES:
                raise StoreRejects(
                    f"the outcome key {key[:60]!r}... is {len(key.encode())} bytes: PostgreSQL cannot index more than "
                    f"about 2,704 bytes in gematria.noun_enrichment's primary key; use a shorter model name or "
                    f"prompt_version (at most {MAX_KEY_BYTES} bytes together)"
                )
        writer = self.writer
        if not writer.target.on:
            return
        try:
            with writer.connect() as conn:
                shape = writer.shape
                assert shape is not None
                if shape.unfillable:
                    raise StoreRejects(
                        f"control.agent_run has required column(s) {', '.join(shape.unfillable)} without a default, "
                        "which RFC-080's records do not fill: every insert would fail. Give them a default or allow "
                        "null"
                    )
                limit = shape.max_length.get("tool")
                for tool in tools:
                    if limit is not None and len(tool) > limit:
                        raise StoreRejects(
                            f"the tool name {tool!r} is {len(tool)} characters and control.agent_run.tool holds at "
                            f"most {limit}: set a shorter REMOTE_LLM_PROVIDER"
                        )
                ref = shape.references.get("project_id")
                if ref is not None:
                    table, column = ref[: ref.index("(")], ref[ref.index("(") + 1 : -1]
                    exists = conn.execute(
                        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} = %s)").format(
                            sql.SQL(table), sql.Identifier(column)
                        ),
                        (project_id,),
                    ).fetchone()
                    if not (exists and exists[0]):
                        raise StoreRejects(
                            f"GEMANTRIA_PROJECT_ID={project_id} is not in {ref}, which control.agent_run.project_id "
                            "references: every insert would fail. Set GEMANTRIA_PROJECT_ID to an existing id"
                        )
        except psycopg.Error as exc:
            self.unavailable_reason = writer.describe_error(exc)  # down: the journal and the spool keep the rows

    def journal(self, header: JournalHeader) -> Journal:
        """As `OutcomeStore.journal`."""
        return Journal(self._settings.journal_dir, header, self)

    def close(self) -> None:
        """Close the write connection."""
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None


class LocalStore:
    """The DB-off store (GEMATRIA_DSN=off): outcomes in SQLite under `folder`, records skipped."""

    unavailable_reason = OFF_REASON

    def __init__(self, settings: Settings, folder: Path) -> None:
        self._settings = settings
        self.outcomes = LocalEnrichmentStore(folder)
        self._recovered = False
        self.records_skipped = 0
        self.last_recovery = RecoveryReport()

    @property
    def where(self) -> str:
        """As `OutcomeStore.where`."""
        return f"{self.outcomes.path} (call records not logged: {OFF_REASON})"

    def write(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment]) -> str | None:
        """As `OutcomeStore.write`."""
        self.records_skipped += len(records)
        try:
            self.outcomes.upsert(outcomes)
        except sqlite3.Error as exc:
            return f"{type(exc).__name__}: {exc} ({self.outcomes.path})"
        return None

    def spool(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment], reason: str) -> str:
        """As `OutcomeStore.spool`."""
        try:
            self.outcomes.upsert(outcomes)
        except sqlite3.Error as exc:
            raise OSError(f"the local store {self.outcomes.path} cannot be written: {exc}") from exc
        return str(self.outcomes.path)

    def recover(self) -> RecoveryReport:
        """As `OutcomeStore.recover`."""
        self.last_recovery = recover(self._settings.journal_dir, self)
        return self.last_recovery

    def lookup(
        self, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
    ) -> dict[str, NounEnrichment]:
        """As `OutcomeStore.lookup`."""
        if not self._recovered:
            self._recovered = True
            self.recover()
        return self.outcomes.lookup(strong_ids, model, prompt_version, params_hash)

    def save_batch(self, batch: EnrichmentBatch, *, session_id: UUID | None) -> WriteReport:
        """As `OutcomeStore.save_batch`."""
        stored = self.outcomes.upsert(batch.all_enrichments)
        return WriteReport(enrichments_written=stored)

    def preflight(self, project_id: int, tools: Iterable[str], keys: Iterable[str]) -> None:
        """As `OutcomeStore.preflight`."""
        return None

    def journal(self, header: JournalHeader) -> Journal:
        """As `OutcomeStore.journal`."""
        return Journal(self._settings.journal_dir, header, self)


def open_store(settings: Settings, local_folder: Path) -> PostgresStore | LocalStore:
    """The store for `settings.db_mode` (the one decision); `local_folder` holds the DB-off store. No network."""
    if settings.db_mode == "off":
        return LocalStore(settings, local_folder)
    return PostgresStore(settings)


_SELECT = """
SELECT strong_id, model, prompt_version, params_hash, backend, ok, insight_json, violation, record_id, created_at
FROM gematria.noun_enrichment
WHERE model = %s AND prompt_version = %s AND params_hash = %s AND strong_id = ANY(%s)
"""


def fetch_outcomes(
    conn: psycopg.Connection, strong_ids: Iterable[str], model: str, prompt_version: str, params_hash: str
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
