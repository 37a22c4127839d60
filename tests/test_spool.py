"""The spool: durable files, exactly-once replay, replayer locking, and the mid-run SIGKILL of PostgreSQL."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from gemantria_dag.control_plane.records import EnrichmentBatch
from gemantria_dag.control_plane.spool import PendingBatch, Spool
from gemantria_dag.control_plane.writer import ControlPlaneWriter
from gemantria_dag.db.embedded import stop_embedded_postgres
from gemantria_dag.db.target import resolve_database
from gemantria_dag.settings import get_settings
from tests.fixtures.processes import VENV_BIN, cli_env
from tests.test_control_plane_writer import make_batch, target_for


def _writer(folder: Path, *, batch_size: int = 2_000) -> ControlPlaneWriter:
    return ControlPlaneWriter(resolve_database(get_settings()), Spool(folder), batch_size=batch_size)


def _spool_batches(spool: Spool, sizes: list[int]) -> list[EnrichmentBatch]:
    batches = []
    start = 0
    for size in sizes:
        batch = make_batch(size, start=start)
        start += size
        spool.append(PendingBatch(reason="test", records=batch.records, enrichments=batch.enrichments))
        batches.append(batch)
    return batches


def _counts(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        total, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM control.agent_run").fetchone()
        (outcomes,) = conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone()
    return total, distinct, outcomes


def test_append_is_one_durable_line_per_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.pending() == [] and spool.summary().records == 0
    batch = make_batch(3)
    path = spool.append(PendingBatch(reason="down", records=batch.records, enrichments=batch.enrichments[:2]))
    assert spool.pending() == [path]
    assert path.read_text().count("\n") == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    again = spool.read(path)
    assert again.records == batch.records and again.enrichments == batch.enrichments[:2]
    summary = spool.summary()
    assert (summary.files, summary.records, summary.enrichments) == (1, 3, 2)


def test_replay_exactly_once(control_plane_dsn: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = _writer(spool_dir)
    spool = Spool(spool_dir)
    batches = _spool_batches(spool, [5, 7, 3])
    # A batch whose commit happened although the writer never heard back: it is also spooled.
    writer.write(batches[1], session_id=uuid4())
    report = spool.replay(writer)
    assert (report.files_replayed, report.files_left, report.error) == (3, 0, None)
    assert (report.records_written, report.records_already_present) == (8, 7)
    assert spool.pending() == []
    assert _counts(control_plane_dsn) == (15, 15, 15)
    assert spool.replay(writer).files_replayed == 0
    assert _counts(control_plane_dsn) == (15, 15, 15)


def test_concurrent_replayers_do_not_double_insert(control_plane_dsn: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    _spool_batches(Spool(spool_dir), [20] * 30)
    reports = []
    barrier = threading.Barrier(3)

    def replay() -> None:
        barrier.wait()
        reports.append(Spool(spool_dir).replay(_writer(spool_dir)))

    threads = [threading.Thread(target=replay) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(r.files_replayed for r in reports) == 30
    # Files were split between replayers, never written twice (the lock, not ON CONFLICT, kept them apart).
    assert sum(r.records_written for r in reports) == 600
    assert sum(r.records_already_present for r in reports) == 0
    assert _counts(control_plane_dsn) == (600, 600, 600)


def test_a_locked_file_is_left_to_its_holder(control_plane_dsn: str, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    _spool_batches(spool, [2, 2])
    held = spool.pending()[0]
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = spool.replay(_writer(spool.folder))
        assert (report.files_replayed, report.files_busy, report.files_left) == (1, 1, 1)
    finally:
        os.close(fd)
    assert spool.replay(_writer(spool.folder)).files_replayed == 1
    assert _counts(control_plane_dsn) == (4, 4, 4)


def test_unreadable_file_is_set_aside(control_plane_dsn: str, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    _spool_batches(spool, [2])
    bad = spool.folder / "20200101T000000000000Z-000000000000-r1-e0.jsonl"
    bad.write_text('{"records": [truncated')
    report = spool.replay(_writer(spool.folder))
    assert (report.files_replayed, report.files_rejected, report.files_left) == (1, 1, 0)
    assert (spool.folder / (bad.name + ".rejected")).exists()


def test_replay_with_database_down_keeps_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    _spool_batches(spool, [2, 2])
    writer = ControlPlaneWriter(target_for("postgresql://u:NotShown9@127.0.0.1:1/x"), spool)
    report = spool.replay(writer)
    assert (report.files_replayed, report.files_left) == (0, 2)
    assert report.error and "NotShown9" not in report.error


# ---- the mid-run kill: a dedicated server, never the session one ----

_START = (
    "import sys; from pathlib import Path; from gemantria_dag.db.embedded import start_embedded_postgres; "
    "print(start_embedded_postgres(Path(sys.argv[1])))"
)


def _start_server(pgdata: Path) -> str:
    # In a fresh process: pgserver caches a server per data folder inside a process, and would hand
    # this process the dead server's handle after the kill.
    done = subprocess.run([sys.executable, "-c", _START, str(pgdata)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def _kill_postmaster(pgdata: Path) -> None:
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    # A zombie still counts as running for pgserver and for postgres' own lock-file check. Init
    # reaps it (about 2 s in this container); if it never does, the process is dead all the same,
    # so clear its stale lock file the way an operator would after a crash.
    deadline = time.monotonic() + 15
    while (state := _state(pid)) is not None:
        if state != "Z":
            assert time.monotonic() < deadline, f"postmaster {pid} survived SIGKILL (state {state})"
        elif time.monotonic() >= deadline:
            (pgdata / "postmaster.pid").unlink()
            return
        time.sleep(0.05)


@pytest.fixture
def dedicated_pg() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="gmk-", dir="/tmp"))  # short: the socket lives in the data folder
    pgdata = root / "pgdata"
    try:
        yield pgdata
    finally:
        try:
            stop_embedded_postgres(pgdata)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_postgres_killed_mid_run_loses_nothing_and_duplicates_nothing(dedicated_pg: Path) -> None:
    uri = _start_server(dedicated_pg)
    spool = Spool(get_settings().spool_dir)  # the project's spool, so that `pmagent control flush` finds it
    run_id = uuid4()
    killed_after: list[int] = []

    def kill_after_third_commit(index: int) -> None:
        if index == 2 and not killed_after:
            _kill_postmaster(dedicated_pg)
            killed_after.append(index)

    writer = ControlPlaneWriter(target_for(uri), spool, batch_size=100, after_commit=kill_after_third_commit)
    before = make_batch(250, start=0)  # written while the server is up (3 transactions)
    during = make_batch(1_000, start=250)  # the server dies after its 3rd transaction
    after = make_batch(400, start=1_250)  # the server is down for the whole write
    first = ControlPlaneWriter(target_for(uri), spool, batch_size=100).write(before, session_id=run_id)
    second = writer.write(during, session_id=run_id)
    third = writer.write(after, session_id=run_id)

    assert killed_after == [2]
    assert (first.records_written, first.records_spooled) == (250, 0)
    assert (second.batches_committed, second.records_written, second.records_spooled) == (3, 300, 700)
    assert (third.records_written, third.records_spooled, third.enrichments_spooled) == (0, 400, 400)
    assert second.spool_reason and third.spool_reason
    assert spool.summary().records == 1_100
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=2).close()

    # A batch whose commit happened although the writer never heard back is spooled too: simulate one.
    spool.append(
        PendingBatch(
            reason="unknown commit outcome", records=during.records[200:300], enrichments=during.enrichments[200:300]
        )
    )

    uri = _start_server(dedicated_pg)  # crash recovery; committed rows survive
    flush = subprocess.run(
        [str(VENV_BIN / "pmagent"), "control", "flush"],
        env=cli_env(GEMATRIA_DSN=uri),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert flush.returncode == 0, flush.stderr
    replay = json.loads(flush.stdout)
    assert (replay["error"], replay["files_left"], replay["files_replayed"]) == (None, 0, 7 + 4 + 1)
    assert (replay["records_written"], replay["records_already_present"]) == (1_100, 100)
    assert spool.pending() == []

    expected = {r.id for b in (before, during, after) for r in b.records}
    with psycopg.connect(uri) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM control.agent_run")]
        sessions = conn.execute("SELECT DISTINCT session_id FROM control.agent_run").fetchall()
        (outcomes,) = conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone()
    assert len(ids) == len(expected) == 1_650 and set(ids) == expected  # every record, exactly once
    assert sessions == [(run_id,)]
    assert outcomes == 1_650
    # A second flush finds nothing to do and changes nothing.
    assert spool.replay(ControlPlaneWriter(target_for(uri), spool)).files_replayed == 0


def test_a_poison_batch_never_blocks_later_ones(control_plane_dsn: str) -> None:
    """A spooled batch with a row the database rejects for good: `pmagent control flush` writes the good rows
    of it and of every later batch, quarantines the bad row with the database's reason, and says so."""
    spool = Spool(get_settings().spool_dir)
    poisoned = make_batch(4)
    poisoned.records[2].project_id = 2**70  # out of bigint range (SQLSTATE 22003): it will never fit
    later = make_batch(3, start=10)
    spool.append(PendingBatch(reason="test", records=poisoned.records, enrichments=poisoned.enrichments))
    spool.append(PendingBatch(reason="test", records=later.records, enrichments=later.enrichments))

    def pmagent(*args: str) -> dict:
        done = subprocess.run(
            [str(VENV_BIN / "pmagent"), "control", *args], env=cli_env(), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    flushed = pmagent("flush")
    assert (flushed["files_replayed"], flushed["files_left"], flushed["records_written"]) == (2, 0, 6)
    assert flushed["quarantined"] == 1 and flushed["quarantine"]["rows"] == 1
    (reason,) = flushed["quarantine"]["by_reason"]
    assert "NumericValueOutOfRange" in reason
    with psycopg.connect(control_plane_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM control.agent_run").fetchone() == (6,)
        assert conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone() == (7,)
    summary = pmagent("summary", "--json")
    assert summary["quarantine"]["rows"] == 1 and summary["spool"]["pending_files"] == 0
