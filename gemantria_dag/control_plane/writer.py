"""Persist an EnrichmentBatch: call records to `control.agent_run`, outcomes to `gematria.noun_enrichment`.

Rows go in batches, one transaction each: COPY into a temporary staging table, then
`INSERT ... SELECT ... ON CONFLICT`. COPY is the fast path (no per-row round trip), and
values only ever travel as data, never inside SQL text. Each record carries its own uuid,
so a batch that is retried, or replayed from the spool after an unknown commit outcome,
lands exactly once. When the connection fails, every batch not known to be committed goes
to the spool: nothing is lost.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

import psycopg
from pydantic import BaseModel

from gemantria_dag.control_plane.outcome_rule import newer_sql
from gemantria_dag.control_plane.quarantine import Quarantine, QuarantinedRow, QuarantineTable
from gemantria_dag.control_plane.records import AgentRunRecord, EnrichmentBatch, NounEnrichment
from gemantria_dag.control_plane.spool import PendingBatch, Spool
from gemantria_dag.db.errors import error_kind
from gemantria_dag.db.schema import AgentRunShape, ensure_schema, inspect_agent_run
from gemantria_dag.db.target import DatabaseTarget, scrub_error

DEFAULT_BATCH_SIZE = 2_000

# Staging tables live as long as their connection (made by `connect`) and are emptied by each commit: the
# journal's group commit writes a few dozen rows every 250 ms, and creating and dropping two tables per
# transaction doubled its statements and wrote the system catalogs every time.
_STAGE_RUNS = """
CREATE TEMP TABLE IF NOT EXISTS _agent_run_stage (
    id uuid, project_id bigint, session_id uuid, tool text,
    args_json jsonb, result_json jsonb, violations_json jsonb, created_at timestamptz
) ON COMMIT DELETE ROWS
"""
_COPY_RUNS = (
    "COPY _agent_run_stage (id, project_id, session_id, tool, args_json, result_json, violations_json, created_at)"
    " FROM STDIN"
)
_INSERT_RUNS = """
INSERT INTO control.agent_run (id, project_id, session_id, tool, args_json, result_json, violations_json, created_at)
SELECT id, project_id, session_id, tool, args_json, result_json, violations_json, created_at FROM _agent_run_stage
ON CONFLICT (id) DO NOTHING
"""
# Models seen, as asked for and as substituted by the server; ordered so that two concurrent
# writers lock catalog rows in the same order (no deadlock).
_UPSERT_CATALOG = """
INSERT INTO gematria.tool_catalog AS c (backend, model_id, first_seen, last_seen)
SELECT tool, model_id, min(created_at), max(created_at) FROM (
    SELECT tool, args_json->>'model' AS model_id, created_at FROM _agent_run_stage
    UNION ALL
    SELECT tool, result_json->>'substituted_model', created_at FROM _agent_run_stage
) seen
WHERE model_id IS NOT NULL
GROUP BY tool, model_id
ORDER BY tool, model_id
ON CONFLICT (backend, model_id) DO UPDATE
SET first_seen = LEAST(c.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(c.last_seen, EXCLUDED.last_seen)
"""
_STAGE_OUTCOMES = """
CREATE TEMP TABLE IF NOT EXISTS _noun_enrichment_stage (
    strong_id text, model text, prompt_version text, params_hash text, backend text,
    ok boolean, insight_json jsonb, violation text, record_id uuid, created_at timestamptz
) ON COMMIT DELETE ROWS
"""
_COPY_OUTCOMES = (
    "COPY _noun_enrichment_stage (strong_id, model, prompt_version, params_hash, backend, ok, insight_json,"
    " violation, record_id, created_at) FROM STDIN"
)
# The outcome rule (outcome_rule.py). DISTINCT ON: one row per key per batch.
_UPSERT_OUTCOMES = """
INSERT INTO gematria.noun_enrichment AS e
    (strong_id, model, prompt_version, params_hash, backend, ok, insight_json, violation, record_id, created_at)
SELECT DISTINCT ON (strong_id, model, prompt_version, params_hash)
    strong_id, model, prompt_version, params_hash, backend, ok, insight_json, violation, record_id, created_at
FROM _noun_enrichment_stage
ORDER BY strong_id, model, prompt_version, params_hash, created_at DESC
ON CONFLICT (strong_id, model, prompt_version, params_hash) DO UPDATE
SET backend = EXCLUDED.backend, ok = EXCLUDED.ok, insight_json = EXCLUDED.insight_json,
    violation = EXCLUDED.violation, record_id = EXCLUDED.record_id, created_at = EXCLUDED.created_at
WHERE """ + newer_sql("e")


class BatchCounts(BaseModel):
    """Rows one `persist()` transaction wrote; `records_already_present`: ids already in `control.agent_run`."""

    records_written: int = 0
    records_already_present: int = 0
    enrichments_written: int = 0
    quarantined: int = 0


class WriteReport(BaseModel):
    """What one `write()` did; `seconds` is the logging overhead the asset reports."""

    records_written: int = 0
    records_already_present: int = 0
    enrichments_written: int = 0
    quarantined: int = 0
    records_spooled: int = 0
    enrichments_spooled: int = 0
    batches_committed: int = 0
    batches_spooled: int = 0
    seconds: float = 0.0
    spool_reason: str | None = None

    @property
    def spooled(self) -> bool:
        """True when at least one batch went to the spool instead of the database."""
        return self.batches_spooled > 0


# PostgreSQL text and jsonb cannot hold NUL (an LLM answer can): store U+FFFD instead of failing
# the whole batch. In JSON a NUL is the escape \u0000, unless that backslash is itself escaped.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _json(value: str) -> str:
    return _JSON_NUL.sub(r"\1\\ufffd", value) if "\\u0000" in value else value


def _run_row(record: AgentRunRecord, session_id: UUID | None, *, session_ids: bool = True) -> tuple[object, ...]:
    """The row for `record`; `session_ids` False: `session_id` null (it references another table)."""
    violations = json.dumps(record.violations, default=str, ensure_ascii=False) if record.violations else "[]"
    return (
        record.id,
        record.project_id,
        (record.session_id if record.session_id is not None else session_id) if session_ids else None,
        _text(record.tool),
        _json(record.args.model_dump_json()),
        _json(record.result.model_dump_json()),
        _json(violations),
        record.created_at,
    )


def _outcome_row(outcome: NounEnrichment) -> tuple[object, ...]:
    return (
        _text(outcome.strong_id),
        _text(outcome.model),
        _text(outcome.prompt_version),
        _text(outcome.params_hash),
        _text(outcome.backend),
        outcome.ok,
        _json(outcome.insight.model_dump_json()) if outcome.insight is not None else None,
        _text(outcome.violation),
        outcome.record_id,
        outcome.created_at,
    )


@dataclass(frozen=True)
class _Chunk:
    records: Sequence[AgentRunRecord]
    enrichments: Sequence[NounEnrichment]


def _chunks(batch: EnrichmentBatch, size: int) -> list[_Chunk]:
    """Slices of `size` records and `size` outcomes, paired up: one transaction each."""
    records, outcomes = batch.records, batch.enrichments
    count = max(-(-len(records) // size), -(-len(outcomes) // size))
    return [_Chunk(records[i * size : (i + 1) * size], outcomes[i * size : (i + 1) * size]) for i in range(count)]


class ControlPlaneWriter:
    """Writes to the database of `target`, spooling into `spool` whatever it cannot commit."""

    def __init__(
        self,
        target: DatabaseTarget,
        spool: Spool | None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        after_commit: Callable[[int], None] | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.target = target
        self.spool = spool
        # Beside the spool (Settings.quarantine_dir): rows the database rejects for a reason of their own.
        self.quarantine = (
            quarantine
            if quarantine is not None
            else (Quarantine(spool.folder.with_name("quarantine")) if spool is not None else None)
        )
        self.shape: AgentRunShape | None = None
        self.batch_size = batch_size
        # Called with the batch index after each commit: progress, and the seam the kill test uses.
        self._after_commit = after_commit
        self._schema_ready = False

    def connect(self) -> psycopg.Connection:
        """A connection (autocommit: each batch opens its own transaction) with the tables in place."""
        conn = self.target.connect(autocommit=True)
        if not self._schema_ready:
            try:
                ensure_schema(conn)
                self.shape = inspect_agent_run(conn)
            except BaseException:
                conn.close()
                raise
            self._schema_ready = True
        try:
            conn.execute(_STAGE_RUNS)
            conn.execute(_STAGE_OUTCOMES)
        except BaseException:
            conn.close()
            raise
        return conn

    def describe_error(self, exc: BaseException) -> str:
        """One line about `exc`, safe to log: never the DSN's password."""
        conninfo = self.target.conninfo.get_secret_value() if self.target.conninfo is not None else None
        return f"{type(exc).__name__}: {scrub_error(exc, conninfo)}"

    def persist(
        self,
        conn: psycopg.Connection,
        records: Sequence[AgentRunRecord],
        enrichments: Sequence[NounEnrichment],
        *,
        session_id: UUID | None = None,
    ) -> BatchCounts:
        """Write one batch in one transaction; raises psycopg errors (the transaction then rolled back).

        `session_id` fills records that have none (the Dagster run id), unless the table's `session_id`
        references another table (then it stays null: the run id is in `args_json`). When PostgreSQL rejects
        the batch for a row-level reason (`gemantria_dag.db.errors`), the batch is split until the rows at fault
        are found: the others are written, those are quarantined (`BatchCounts.quarantined`). Transient and
        schema-level errors are raised.
        """
        try:
            with conn.transaction():
                return self._write_rows(conn, records, enrichments, session_id)
        except psycopg.Error as exc:
            if error_kind(exc) != "row":
                raise
        counts = BatchCounts()
        with conn.transaction():
            self._isolate(conn, "control.agent_run", list(records), session_id, counts)
            self._isolate(conn, "gematria.noun_enrichment", list(enrichments), session_id, counts)
        return counts

    def _isolate(
        self,
        conn: psycopg.Connection,
        table: QuarantineTable,
        rows: list[AgentRunRecord] | list[NounEnrichment],
        session_id: UUID | None,
        counts: BatchCounts,
    ) -> None:
        """Write `rows` in a savepoint; on a row-level error split them in halves, down to the single rows
        at fault, which are quarantined: about 2 log2(n) statements for each bad row among n."""
        if not rows:
            return
        try:
            with conn.transaction():  # a savepoint inside persist's transaction
                if table == "control.agent_run":
                    done = self._write_rows(conn, rows, [], session_id, clear=True)  # type: ignore[arg-type]
                else:
                    done = self._write_rows(conn, [], rows, session_id, clear=True)  # type: ignore[arg-type]
            counts.records_written += done.records_written
            counts.records_already_present += done.records_already_present
            counts.enrichments_written += done.enrichments_written
            return
        except psycopg.Error as exc:
            if error_kind(exc) != "row":
                raise
            if len(rows) == 1:
                self._quarantine(table, rows[0], exc, session_id)
                counts.quarantined += 1
                return
        half = len(rows) // 2
        self._isolate(conn, table, rows[:half], session_id, counts)  # type: ignore[arg-type]
        self._isolate(conn, table, rows[half:], session_id, counts)  # type: ignore[arg-type]

    def _quarantine(
        self, table: QuarantineTable, row: AgentRunRecord | NounEnrichment, exc: psycopg.Error, session_id: UUID | None
    ) -> None:
        if self.quarantine is None:
            raise RuntimeError(f"PostgreSQL rejected a row of {table} and no quarantine is configured: {exc}")
        if isinstance(row, AgentRunRecord):
            key = str(row.id)
            if row.session_id is None and session_id is not None:
                row = row.model_copy(update={"session_id": session_id})
        else:
            key = f"{row.strong_id}|{row.model}|{row.prompt_version}|{row.params_hash}"
        self.quarantine.add(
            QuarantinedRow(
                table=table,
                key=key,
                reason=self.describe_error(exc),
                sqlstate=exc.sqlstate,
                row_json=row.model_dump_json(),
            )
        )

    def _write_rows(
        self,
        conn: psycopg.Connection,
        records: Sequence[AgentRunRecord],
        enrichments: Sequence[NounEnrichment],
        session_id: UUID | None,
        *,
        clear: bool = False,
    ) -> BatchCounts:
        """COPY into the staging tables, then insert; in the caller's transaction (or savepoint). `clear`: empty the
        staging tables after use (a savepoint's rows stay there until the whole transaction commits)."""
        counts = BatchCounts()
        session_ids = self.shape is None or self.shape.session_id_is_ours
        with conn.cursor() as cur:
            if records:
                with cur.copy(_COPY_RUNS) as copy:
                    for record in records:
                        copy.write_row(_run_row(record, session_id, session_ids=session_ids))
                cur.execute(_INSERT_RUNS)
                counts.records_written = cur.rowcount
                counts.records_already_present = len(records) - cur.rowcount
                cur.execute(_UPSERT_CATALOG)
                if clear:
                    cur.execute("DELETE FROM _agent_run_stage")
            if enrichments:
                with cur.copy(_COPY_OUTCOMES) as copy:
                    for outcome in enrichments:
                        copy.write_row(_outcome_row(outcome))
                cur.execute(_UPSERT_OUTCOMES)
                counts.enrichments_written = cur.rowcount
                if clear:
                    cur.execute("DELETE FROM _noun_enrichment_stage")
        return counts

    def write(self, batch: EnrichmentBatch, *, session_id: UUID | None = None) -> WriteReport:
        """Persist `batch.records` and `batch.enrichments` (not `reused`: those are already stored).

        Records without a session id get `session_id` (the Dagster run id). Connection errors
        send the uncommitted batches to the spool; any other database error spools them too,
        then is raised, because retrying it would fail the same way.
        """
        started = time.perf_counter()
        chunks = _chunks(batch, self.batch_size)
        report = WriteReport()
        if not chunks:
            return report
        committed = 0
        try:
            if not self.target.on:
                self._spool_rest(chunks, 0, session_id, f"control plane unavailable: {self.target.reason}", report)
                return report
            try:
                conn = self.connect()
            except psycopg.Error as exc:
                self._spool_rest(chunks, 0, session_id, self.describe_error(exc), report)
                return report
            with conn:
                for index, chunk in enumerate(chunks):
                    counts = self.persist(conn, chunk.records, chunk.enrichments, session_id=session_id)
                    committed = index + 1
                    report.batches_committed += 1
                    report.records_written += counts.records_written
                    report.records_already_present += counts.records_already_present
                    report.enrichments_written += counts.enrichments_written
                    report.quarantined += counts.quarantined
                    if self._after_commit is not None:
                        self._after_commit(index)
        except psycopg.Error as exc:
            # The batch in flight may or may not have committed: spool it too, its ids make the replay safe.
            self._spool_rest(chunks, committed, session_id, self.describe_error(exc), report)
            if error_kind(exc) != "transient":
                raise  # the database must be changed (a table, a privilege): written again, it fails the same way
        finally:
            report.seconds = time.perf_counter() - started
        return report

    def _spool_rest(
        self, chunks: list[_Chunk], start: int, session_id: UUID | None, reason: str, report: WriteReport
    ) -> None:
        if self.spool is None:
            raise RuntimeError(f"control-plane write failed and no spool is configured: {reason}")
        for chunk in chunks[start:]:
            # The spool keeps complete records: fill the session id now, replay has no run context.
            records = [
                r if r.session_id is not None else r.model_copy(update={"session_id": session_id})
                for r in chunk.records
            ]
            self.spool.append(PendingBatch(reason=reason, records=records, enrichments=list(chunk.enrichments)))
            report.batches_spooled += 1
            report.records_spooled += len(records)
            report.enrichments_spooled += len(chunk.enrichments)
        report.spool_reason = reason
