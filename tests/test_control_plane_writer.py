"""ControlPlaneWriter against a real embedded PostgreSQL that already has RFC-080's table."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest
from pydantic import SecretStr

from gemantria_dag.control_plane.records import (
    AgentRunRecord,
    CallArgs,
    CallResult,
    EnrichmentBatch,
    NounEnrichment,
    NounInsight,
)
from gemantria_dag.control_plane.spool import Spool
from gemantria_dag.control_plane.writer import ControlPlaneWriter
from gemantria_dag.db.target import DatabaseTarget, resolve_database
from gemantria_dag.settings import get_settings

# What an existing deployment has: RFC-080's DDL, with its own index names.
EXISTING_DDL = """
CREATE SCHEMA control;
CREATE TABLE control.agent_run (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id bigint NOT NULL,
    session_id uuid NULL,
    tool text NOT NULL,
    args_json jsonb NOT NULL,
    result_json jsonb NOT NULL,
    violations_json jsonb NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_agent_run_project ON control.agent_run (project_id);
CREATE INDEX idx_agent_run_session ON control.agent_run (session_id);
CREATE INDEX idx_agent_run_created ON control.agent_run (created_at);
CREATE INDEX idx_agent_run_tool ON control.agent_run (tool);
INSERT INTO control.agent_run (project_id, tool, args_json, result_json)
VALUES (7, 'search', '{"q": "legacy"}', '{"ok": true}');
"""


def make_record(i: int = 0, *, tool: str = "lm_studio", ok: bool = True, **args: object) -> AgentRunRecord:
    fields: dict[str, object] = dict(
        model="qwen2.5-7b",
        prompt_length=400 + i,
        temperature=0.2,
        max_tokens=256,
        strong_id=f"H{i}",
        routed_backend=tool,
        backend=tool,
        asset_key="noun_enrichments",
        partition="א",
        prompt_version="v1",
    )
    fields.update(args)
    return AgentRunRecord(
        project_id=1,
        tool=tool,
        args=CallArgs(**fields),  # type: ignore[arg-type]
        result=CallResult(
            ok=ok,
            response_length=300 if ok else 0,
            latency_ms=100.0 + i,
            tokens_per_second=42.5,
            prompt_tokens=120,
            completion_tokens=60,
            error_code=None if ok else "timeout",
        ),
        violations=[] if ok else [{"code": "timeout", "message": "read timed out after 30s"}],
    )


def make_outcome(record: AgentRunRecord, *, ok: bool = True, text: str = "a word for a father") -> NounEnrichment:
    return NounEnrichment(
        strong_id=record.args.strong_id or "H0",
        model=record.args.model or "m",
        prompt_version="v1",
        params_hash="p0",
        backend=record.tool,
        ok=ok,
        insight=NounInsight(insight=text, themes=["family"], confidence=0.75) if ok else None,
        violation=None if ok else "timeout",
        record_id=record.id,
        created_at=record.created_at,
    )


def make_batch(n: int, *, start: int = 0, **kwargs: object) -> EnrichmentBatch:
    records = [make_record(i, **kwargs) for i in range(start, start + n)]  # type: ignore[arg-type]
    return EnrichmentBatch(partition="א", records=records, enrichments=[make_outcome(r) for r in records])


def target_for(uri: str) -> DatabaseTarget:
    return DatabaseTarget(configured="dsn", on=True, reason="test", display="test", conninfo=SecretStr(uri))


def table_shape(conn: psycopg.Connection, table: str = "agent_run") -> dict[str, list[tuple]]:
    """Everything about a table's definition that a write must not change."""
    return {
        "columns": conn.execute(
            "SELECT ordinal_position, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'control' AND table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'control' AND tablename = %s"
            " ORDER BY indexname",
            (table,),
        ).fetchall(),
        "constraints": conn.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %s::regclass ORDER BY conname",
            (f"control.{table}",),
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass", (f"control.{table}",)
        ).fetchall(),
    }


@pytest.fixture
def existing_db(control_plane_dsn: str) -> str:
    with psycopg.connect(control_plane_dsn, autocommit=True) as conn:
        conn.execute(EXISTING_DDL)
    return control_plane_dsn


@pytest.fixture
def writer(control_plane_dsn: str, tmp_path: Path) -> ControlPlaneWriter:
    return ControlPlaneWriter(resolve_database(get_settings()), Spool(tmp_path / "spool"), batch_size=3)


def test_rows_land_unchanged_schema_in_existing_table(existing_db: str, tmp_path: Path) -> None:
    with psycopg.connect(existing_db) as conn:
        before = table_shape(conn)
        legacy = conn.execute("SELECT * FROM control.agent_run").fetchall()
    assert len(before["indexes"]) == 5 and len(legacy) == 1

    writer = ControlPlaneWriter(resolve_database(get_settings()), Spool(tmp_path / "spool"), batch_size=2)
    batch = make_batch(4)
    failed = make_record(99, tool="remote_llm", ok=False, fallback=True)
    batch.records.append(failed)
    batch.enrichments.append(make_outcome(failed, ok=False))
    run_id = uuid4()
    report = writer.write(batch, session_id=run_id)
    assert (report.records_written, report.enrichments_written, report.batches_committed) == (5, 5, 3)
    assert report.records_spooled == 0 and report.seconds > 0

    with psycopg.connect(existing_db) as conn:
        assert table_shape(conn) == before
        assert conn.execute("SELECT * FROM control.agent_run WHERE project_id = 7").fetchall() == legacy
        rows = {
            r[0]: r
            for r in conn.execute(
                "SELECT id, project_id, session_id, tool, args_json, result_json, violations_json, created_at"
                " FROM control.agent_run WHERE project_id = 1"
            )
        }
    assert set(rows) == {r.id for r in batch.records}
    for record in batch.records:
        rid, project, session, tool, args, result, violations, created = rows[record.id]
        assert (project, session, tool) == (1, run_id, record.tool)
        assert args == record.args.model_dump(mode="json")
        assert result == record.result.model_dump(mode="json")
        assert violations == record.violations
        assert created == record.created_at
    assert rows[failed.id][4]["fallback"] is True
    assert rows[failed.id][6] == [{"code": "timeout", "message": "read timed out after 30s"}]


def test_tables_created_when_absent(writer: ControlPlaneWriter, control_plane_dsn: str) -> None:
    writer.write(make_batch(2), session_id=uuid4())
    with psycopg.connect(control_plane_dsn) as conn:
        shape = table_shape(conn)
    assert [c[1] for c in shape["columns"]] == [
        "id",
        "project_id",
        "session_id",
        "tool",
        "args_json",
        "result_json",
        "violations_json",
        "created_at",
    ]
    assert [c[2] for c in shape["columns"]] == [
        "uuid",
        "bigint",
        "uuid",
        "text",
        "jsonb",
        "jsonb",
        "jsonb",
        "timestamp with time zone",
    ]
    assert [c[3] for c in shape["columns"]] == ["NO", "NO", "YES", "NO", "NO", "NO", "NO", "NO"]
    indexed = sorted(d.split("(")[-1].rstrip(")") for _, d in shape["indexes"])
    assert indexed == ["created_at", "id", "project_id", "session_id", "tool"]


def test_exactly_once_when_a_batch_is_retried(writer: ControlPlaneWriter, control_plane_dsn: str) -> None:
    batch = make_batch(10)
    first = writer.write(batch, session_id=uuid4())
    again = writer.write(batch, session_id=uuid4())
    assert (first.records_written, first.records_already_present) == (10, 0)
    assert (again.records_written, again.records_already_present, again.enrichments_written) == (0, 10, 0)
    # A retry that overlaps: half old, half new.
    mixed = EnrichmentBatch(records=[*batch.records[5:], *make_batch(5, start=10).records])
    third = writer.write(mixed, session_id=uuid4())
    assert (third.records_written, third.records_already_present) == (5, 5)
    with psycopg.connect(control_plane_dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM control.agent_run").fetchone() == (15, 15)
        assert conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone() == (10,)


def test_injection_attempts_are_stored_as_data(writer: ControlPlaneWriter, control_plane_dsn: str) -> None:
    nasty_id = "H1'); DROP TABLE control.agent_run; --"
    nasty_model = 'qwen"; DELETE FROM gematria.noun_enrichment; --'
    nasty_text = "$$; DROP SCHEMA control CASCADE; $$ \\. \t tab \n newline \\N \\ backslash \x00 nul"
    record = make_record(1, strong_id=nasty_id, model=nasty_model)
    record.violations = [{"prompt": "'; TRUNCATE control.agent_run; --", "raw": nasty_text}]
    outcome = make_outcome(record, text=nasty_text)
    outcome.violation = nasty_text
    report = writer.write(EnrichmentBatch(records=[record], enrichments=[outcome]), session_id=uuid4())
    assert (report.records_written, report.enrichments_written) == (1, 1)
    clean = nasty_text.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL: kept visible as U+FFFD
    with psycopg.connect(control_plane_dsn) as conn:
        args, violations = conn.execute(
            "SELECT args_json, violations_json FROM control.agent_run WHERE id = %s", (record.id,)
        ).fetchone()
        stored = conn.execute(
            "SELECT strong_id, model, insight_json->>'insight', violation FROM gematria.noun_enrichment"
        ).fetchone()
        catalog = conn.execute("SELECT backend, model_id FROM gematria.tool_catalog").fetchall()
    assert args["strong_id"] == nasty_id and args["model"] == nasty_model
    assert violations == [{"prompt": "'; TRUNCATE control.agent_run; --", "raw": clean}]
    assert stored == (nasty_id, nasty_model, clean, clean)
    assert catalog == [("lm_studio", nasty_model)]


def test_tool_catalog_tracks_first_and_last_seen(writer: ControlPlaneWriter, control_plane_dsn: str) -> None:
    old = make_record(1)
    old.created_at = datetime.now(UTC) - timedelta(days=3)
    substituted = make_record(2, tool="remote_llm", model="gpt-4o-mini")
    substituted.result.substituted_model = "gpt-4o-mini-2024-07-18"
    writer.write(EnrichmentBatch(records=[old, substituted]), session_id=uuid4())
    newer = make_record(3)
    writer.write(EnrichmentBatch(records=[newer]), session_id=uuid4())
    with psycopg.connect(control_plane_dsn) as conn:
        rows = {
            (b, m): (f, last)
            for b, m, f, last in conn.execute(
                "SELECT backend, model_id, first_seen, last_seen FROM gematria.tool_catalog"
            )
        }
    assert set(rows) == {
        ("lm_studio", "qwen2.5-7b"),
        ("remote_llm", "gpt-4o-mini"),
        ("remote_llm", "gpt-4o-mini-2024-07-18"),
    }
    assert rows[("lm_studio", "qwen2.5-7b")] == (old.created_at, newer.created_at)


def test_outcome_upsert_newest_wins_and_success_is_kept(writer: ControlPlaneWriter, control_plane_dsn: str) -> None:
    record = make_record(1)
    first = make_outcome(record, text="first")
    later = first.model_copy(
        update={
            "insight": NounInsight(insight="later", confidence=0.9),
            "created_at": first.created_at + timedelta(seconds=5),
        }
    )
    failure = first.model_copy(
        update={
            "ok": False,
            "insight": None,
            "violation": "bad json",
            "created_at": first.created_at + timedelta(seconds=9),
        }
    )

    def stored() -> tuple:
        with psycopg.connect(control_plane_dsn) as conn:
            return conn.execute("SELECT ok, insight_json->>'insight' FROM gematria.noun_enrichment").fetchone()

    writer.write(EnrichmentBatch(enrichments=[first]))
    writer.write(EnrichmentBatch(enrichments=[later]))
    assert stored() == (True, "later")
    writer.write(EnrichmentBatch(enrichments=[first]))  # a stale replay changes nothing
    assert stored() == (True, "later")
    writer.write(EnrichmentBatch(enrichments=[failure]))  # a later failure does not erase a success
    assert stored() == (True, "later")
    # Two outcomes for one key in one batch: the newest is kept, no "cannot affect row a second time".
    key2 = make_outcome(make_record(2), text="old")
    writer.write(
        EnrichmentBatch(
            enrichments=[
                key2.model_copy(
                    update={
                        "insight": NounInsight(insight="new", confidence=0.5),
                        "created_at": key2.created_at + timedelta(1),
                    }
                ),
                key2,
            ]
        )
    )
    with psycopg.connect(control_plane_dsn) as conn:
        assert conn.execute(
            "SELECT insight_json->>'insight' FROM gematria.noun_enrichment WHERE strong_id = 'H2'"
        ).fetchone() == ("new",)


def test_unreachable_database_spools_everything(tmp_path: Path) -> None:
    target = target_for("postgresql://writer:Pw0nly4Test@127.0.0.1:1/nowhere")
    spool = Spool(tmp_path / "spool")
    report = ControlPlaneWriter(target, spool, batch_size=4).write(make_batch(10), session_id=uuid4())
    assert (report.records_written, report.records_spooled, report.enrichments_spooled) == (0, 10, 10)
    assert report.batches_spooled == 3 and spool.summary().records == 10
    assert report.spool_reason and "Connection refused" in report.spool_reason
    assert "Pw0nly4Test" not in report.spool_reason
    assert all(r.session_id is not None for b in spool.iter_batches() for r in b.records)


def test_a_row_the_database_rejects_is_quarantined_and_the_others_written(
    writer: ControlPlaneWriter, control_plane_dsn: str
) -> None:
    batch = make_batch(9)  # three transactions of three
    batch.records[4].project_id = 2**70  # out of bigint range: a row-level error (SQLSTATE 22003)
    report = writer.write(batch, session_id=uuid4())
    assert (report.records_written, report.quarantined, report.spooled) == (8, 1, False)
    assert report.enrichments_written == 9  # the rejected record's outcome is a row of another table: written
    assert writer.quarantine is not None
    (row,) = writer.quarantine.rows()
    assert row.table == "control.agent_run" and row.key == str(batch.records[4].id) and row.sqlstate == "22003"
    assert "NumericValueOutOfRange" in row.reason
    assert writer.quarantine.summary().rows == 1
    with psycopg.connect(control_plane_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM control.agent_run").fetchone() == (8,)
    # The same batch again (a replay): the rejected row is filed once, the others are already present.
    again = writer.write(batch, session_id=uuid4())
    assert (again.records_already_present, again.quarantined) == (8, 1) and len(writer.quarantine.rows()) == 1


def test_schema_error_spools_the_rest_and_raises_then_replays_once_fixed(
    writer: ControlPlaneWriter, control_plane_dsn: str
) -> None:
    writer.connect().close()
    with psycopg.connect(control_plane_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE control.agent_run RENAME COLUMN violations_json TO violations")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        writer.write(make_batch(6), session_id=uuid4())
    # Kept, not quarantined: every row fails until an operator fixes the table.
    assert writer.spool is not None and writer.spool.summary().records == 6
    assert writer.quarantine is not None and writer.quarantine.rows() == []
    with psycopg.connect(control_plane_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE control.agent_run RENAME COLUMN violations TO violations_json")
    replay = writer.spool.replay(writer)
    assert (replay.records_written, replay.files_left) == (6, 0)


def test_session_id_kept_when_the_record_has_one(writer: ControlPlaneWriter, control_plane_dsn: str) -> None:
    own = make_record(1)
    own.session_id = UUID(int=42)
    writer.write(EnrichmentBatch(records=[own, make_record(2)]), session_id=UUID(int=7))
    with psycopg.connect(control_plane_dsn) as conn:
        sessions = dict(conn.execute("SELECT args_json->>'strong_id', session_id FROM control.agent_run").fetchall())
    assert sessions == {"H1": UUID(int=42), "H2": UUID(int=7)}


def test_throughput(control_plane_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = ControlPlaneWriter(resolve_database(get_settings()), Spool(tmp_path / "spool"))
    batch = make_batch(20_000)
    writer.connect().close()  # schema creation is not part of the steady-state rate
    started = time.perf_counter()
    report = writer.write(batch, session_id=uuid4())
    elapsed = time.perf_counter() - started
    rows = report.records_written + report.enrichments_written
    assert rows == 40_000
    with capsys.disabled():
        print(
            f"\ncontrol-plane writer: {rows / elapsed:,.0f} rows/s ({report.records_written} records + "
            f"{report.enrichments_written} outcomes in {elapsed:.2f}s)"
        )
    assert rows / elapsed > 10_000  # a loose floor: this machine measures ~70k rows/s
