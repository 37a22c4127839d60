"""The run journal: a process SIGKILLed in the middle of its calls loses none it was answered.

Each case starts a real process that journals calls into a real store and kills itself with SIGKILL
(as the OOM killer would), then recovers its journal from this process and checks what landed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from gemantria_dag.control_plane.journal import JournalHeader, pending_journals
from gemantria_dag.control_plane.records import new_record_id
from gemantria_dag.control_plane.store import LocalStore, PostgresStore, open_store
from gemantria_dag.settings import get_settings
from tests.fixtures.processes import REPO_ROOT, cli_env
from tests.test_control_plane_writer import make_outcome, make_record

HEADER = JournalHeader(
    project_id=1,
    run_id="0b8a4a52-3f0e-4b8e-9d7c-2f4f7a3c9e11",
    asset_key="noun_enrichments",
    routed_backend="remote",
    tool="remote_llm",
    model="remote-model",
    prompt_version="v1",
    temperature=0.2,
    max_tokens=256,
)

# The child: 5 requests answered (records and outcomes), 2 in flight, then SIGKILL (after a pause when asked,
# so that group commits have run; at once otherwise, so that the answers are only in the journal).
_CHILD = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from gemantria_dag.control_plane.journal import JournalHeader
from gemantria_dag.control_plane.records import new_record_id
from gemantria_dag.control_plane.store import open_store
from gemantria_dag.settings import get_settings
from tests.test_control_plane_writer import make_outcome, make_record
header = JournalHeader.model_validate_json({header!r})
store = open_store(get_settings(), Path({local!r}))
journal = store.journal(header)
for i in range(5):
    rid = new_record_id()
    journal.intent(rid, f"H{{i}}", "alef", "enrich", 100 + i)
    record = make_record(i)
    journal.done(rid, [record])
    journal.outcome(make_outcome(record))
for i in (5, 6):
    journal.intent(new_record_id(), f"H{{i}}", "alef", "enrich", 100 + i)
time.sleep({pause})
print(journal.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _die_mid_run(local: Path, pause: float) -> Path:
    code = _CHILD.format(root=str(REPO_ROOT), header=HEADER.model_dump_json(), local=str(local), pause=pause)
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.exists()  # a dead process's journal stays behind
    return path


@pytest.mark.parametrize("pause", [0.0, 0.6], ids=["killed-at-once", "after-group-commits"])
def test_killed_process_loses_no_answer_and_records_calls_in_flight(
    control_plane_dsn: str, tmp_path: Path, pause: float
) -> None:
    journal = _die_mid_run(tmp_path, pause)
    store = open_store(get_settings(), tmp_path)
    assert isinstance(store, PostgresStore)
    report = store.recover()
    assert (report.journals, report.records, report.outcomes, report.unknown_outcomes) == (1, 7, 5, 2)
    assert not journal.exists() and pending_journals(get_settings().journal_dir) == []
    with psycopg.connect(control_plane_dsn) as conn:
        rows = conn.execute(
            "SELECT args_json->>'strong_id', result_json->>'error_code', violations_json FROM control.agent_run"
        ).fetchall()
        outcomes = conn.execute("SELECT strong_id FROM gematria.noun_enrichment ORDER BY 1").fetchall()
    assert sorted(r[0] for r in rows) == [f"H{i}" for i in range(7)]  # one row per call: none lost, none doubled
    died = sorted(r[0] for r in rows if r[1] == "worker_died")
    assert died == ["H5", "H6"]
    assert all(r[2][0]["code"] == "worker_died" and "may have answered" in r[2][0]["message"] for r in rows if r[1])
    assert [o[0] for o in outcomes] == [f"H{i}" for i in range(5)]
    # Nothing is left to recover, and a second recovery changes nothing.
    assert store.recover().journals == 0


def test_killed_process_journal_waits_while_the_database_is_down_then_lands_once(
    control_plane_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemantria_dag.settings import reset_settings_cache
    from tests.fixtures.processes import free_port

    good = control_plane_dsn
    monkeypatch.setenv("GEMATRIA_DSN", f"postgresql://u:pw@127.0.0.1:{free_port()}/db")
    reset_settings_cache()
    _die_mid_run(tmp_path, 0.3)  # its group commits failed: the database was down all along
    down = open_store(get_settings(), tmp_path)
    report = down.recover()
    assert report.journals == 1 and report.spooled == 12  # 7 records + 5 outcomes, to the spool
    assert down.lookup(["H0", "H4", "H6"], "qwen2.5-7b", "v1", "p0").keys() == {"H0", "H4"}  # from the spool
    monkeypatch.setenv("GEMATRIA_DSN", good)
    reset_settings_cache()
    store = open_store(get_settings(), tmp_path)
    store.recover()
    with psycopg.connect(good) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM control.agent_run").fetchone() == (7, 7)
        assert conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone() == (5,)


def test_db_off_killed_process_outcomes_reused(tmp_path: Path) -> None:
    assert get_settings().db_mode == "off"
    _die_mid_run(tmp_path, 0.0)
    store = open_store(get_settings(), tmp_path)
    assert isinstance(store, LocalStore)
    found = store.lookup([f"H{i}" for i in range(7)], "qwen2.5-7b", "v1", "p0")  # recovers first
    assert sorted(found) == [f"H{i}" for i in range(5)]
    assert pending_journals(get_settings().journal_dir) == []


def test_clean_close_spools_what_the_store_cannot_take_and_records_open_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemantria_dag.settings import reset_settings_cache
    from tests.fixtures.processes import free_port

    monkeypatch.setenv("GEMATRIA_DSN", f"postgresql://u:pw@127.0.0.1:{free_port()}/db")
    reset_settings_cache()
    store = open_store(get_settings(), tmp_path)
    journal = store.journal(HEADER)
    rid = new_record_id()
    journal.intent(rid, "H1", "alef", "enrich", 10)
    record = make_record(1)
    journal.done(rid, [record])
    journal.outcome(make_outcome(record))
    journal.intent(new_record_id(), "H2", "alef", "enrich", 10)  # cancelled in flight
    report = journal.close()
    assert report.durable and (report.records_spooled, report.outcomes_spooled, report.unknown_outcomes) == (2, 1, 1)
    assert report.spool_reason and "pw" not in report.spool_reason.replace("pw@", "")
    assert not journal.path.exists()
    lines = [json.loads(p.read_text()) for p in Path(get_settings().spool_dir).glob("*.jsonl")]
    codes = sorted(str(r["result"]["error_code"]) for batch in lines for r in batch["records"])
    assert codes == ["None", "worker_died"]


def test_a_live_journal_is_never_recovered(tmp_path: Path) -> None:
    store = open_store(get_settings(), tmp_path)
    journal = store.journal(HEADER)
    try:
        report = store.recover()
        assert (report.journals, report.journals_busy) == (0, 1)
        assert journal.path.exists()
    finally:
        journal.close()
    assert not os.path.exists(journal.path)
