"""`pmagent control` run as a real subprocess against the embedded PostgreSQL, checked field by field."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from gemantria_dag.control_plane.records import AgentRunRecord, EnrichmentBatch
from gemantria_dag.control_plane.spool import PendingBatch, Spool
from gemantria_dag.control_plane.writer import ControlPlaneWriter
from gemantria_dag.db.target import resolve_database
from gemantria_dag.settings import get_settings
from tests.fixtures.processes import VENV_BIN, cli_env, free_port
from tests.test_control_plane_writer import make_batch, make_record

PASSWORD = "Cl1Secr3tPassw0rd"
# 120 prompt + 60 completion tokens (make_record) at gpt-4o-mini's $0.15 / $0.60 per million tokens.
CALL_USD = (120 * 0.15 + 60 * 0.6) / 1e6
# Nothing listens on the discard port: LM Studio answers lm_off, quickly, on any machine.
NO_LM_STUDIO = "http://127.0.0.1:9/v1"


def assert_live_off(live: dict[str, Any]) -> None:
    """The live part with no LLM backend up: both off, the routing decision `none` naming both."""
    assert live["lm_studio"]["mode"] == "lm_off" and live["lm_studio"]["ok"] is False
    assert live["remote"]["mode"] == "remote_off"
    assert live["routing"]["backend"] == "none"
    assert any("LM" in r for r in live["routing"]["reasons"]) and any("remote" in r for r in live["routing"]["reasons"])


def pmagent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    env.setdefault("LM_STUDIO_BASE_URL", NO_LM_STUDIO)
    return subprocess.run(
        [str(VENV_BIN / "pmagent"), "control", *args], env=cli_env(**env), capture_output=True, text=True, timeout=120
    )


def as_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def _record(
    i: int, minutes_ago: float, *, latency: float, tool: str = "lm_studio", ok: bool = True, **args: object
) -> AgentRunRecord:
    record = make_record(i, tool=tool, ok=ok, **args)
    record.result.latency_ms = latency
    record.created_at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return record


@pytest.fixture
def seeded(control_plane_dsn: str) -> dict[str, AgentRunRecord]:
    records = {
        "lm_ok_1": _record(1, 120, latency=100),
        "lm_failed": _record(2, 90, latency=1000, ok=False),
        "lm_ok_2": _record(3, 20, latency=200),
        "lm_ok_last": _record(4, 10, latency=300),
        "remote_fallback": _record(5, 50, latency=400, tool="remote_llm", fallback=True),
        "remote_substituted": _record(6, 5, latency=600, tool="remote_llm"),
        "lm_old_failure": _record(7, 3 * 24 * 60, latency=50, ok=False),  # outside 24h, inside 7d
    }
    records["remote_substituted"].result.substituted_model = "gpt-4o-mini-2024-07-18"
    # Prices: local calls cost 0 and save the remote's price (a failed one has no usage to price); the
    # remote's fallback call is priced, its substituted call is unpriced (cost_usd null).
    for key in ("lm_ok_1", "lm_ok_2", "lm_ok_last", "lm_failed"):
        result = records[key].result
        result.cost_usd, result.price_source = 0.0, "local"
        result.saved_usd = None if key == "lm_failed" else CALL_USD
    for key in ("remote_fallback", "remote_substituted"):
        records[key].args.model = "gpt-4o-mini"
    fallback = records["remote_fallback"].result
    fallback.cost_usd, fallback.price_source = CALL_USD, "genai-prices"
    # Capacity (issue 17): LM Studio's limit settled at 4 (one call made at 5, one row from before issue 17
    # has none); the remote's calls waited for a rate-limit reset, one after a 429.
    for key, limit in (("lm_ok_1", 4), ("lm_failed", 5), ("lm_ok_2", 4)):
        records[key].result.concurrency_limit = limit
    for key in ("remote_fallback", "remote_substituted"):
        records[key].result.concurrency_limit = 16
        records[key].result.rate_limit_wait_ms = 250.0
    records["remote_substituted"].result.rate_limited = 1
    other_project = _record(9, 1, latency=7)
    other_project.project_id = 2
    writer = ControlPlaneWriter(resolve_database(get_settings()), Spool(get_settings().spool_dir))
    writer.write(EnrichmentBatch(records=[*records.values(), other_project]), session_id=uuid4())
    with psycopg.connect(control_plane_dsn) as conn:  # a row another agent tool wrote: not an LLM call
        conn.execute(
            "INSERT INTO control.agent_run (project_id, tool, args_json, result_json)"
            ' VALUES (1, \'search\', \'{"q": "אב"}\', \'{"ok": false, "latency_ms": 5}\')'
        )
    # Three records waiting in the spool (the DB was down when they were made).
    pending = make_batch(3, start=50)
    Spool(get_settings().spool_dir).append(PendingBatch(reason="test", records=pending.records))
    return records


def test_pipeline_status_json(seeded: dict[str, AgentRunRecord]) -> None:
    out = as_json(pmagent("pipeline-status", "--json"))
    assert (out["db"], out["configured"], out["window"], out["project_id"]) == ("on", "dsn", "24h", 1)
    assert_live_off(out["live"])
    assert [t["tool"] for t in out["tools"]] == ["lm_studio", "remote_llm"]
    lm, remote = out["tools"]
    assert (lm["success"], lm["failure"], lm["last_status"]) == (3, 1, "ok")
    assert datetime.fromisoformat(lm["last_run_at"]) == seeded["lm_ok_last"].created_at
    assert (remote["success"], remote["failure"], remote["last_status"]) == (2, 0, "ok")
    assert datetime.fromisoformat(remote["last_run_at"]) == seeded["remote_substituted"].created_at
    assert out["spend"] == SPEND_24H

    week = as_json(pmagent("pipeline-status", "--json", "--window", "7d"))
    assert (week["tools"][0]["success"], week["tools"][0]["failure"]) == (3, 2)
    recent = as_json(pmagent("pipeline-status", "--json", "--window", "30m"))
    assert [(t["tool"], t["success"], t["failure"]) for t in recent["tools"]] == [
        ("lm_studio", 2, 0),
        ("remote_llm", 1, 0),
    ]


SPEND_24H = {
    "total": {
        "tool": None,
        "model": None,
        "calls": 6,
        "total_tokens": 1080,
        "cost_usd": round(CALL_USD, 9),
        "saved_usd": round(3 * CALL_USD, 9),
        "unpriced_calls": 1,
    },
    "by_tool_model": [
        {
            "tool": "lm_studio",
            "model": "qwen2.5-7b",
            "calls": 4,
            "total_tokens": 720,
            "cost_usd": 0.0,
            "saved_usd": round(3 * CALL_USD, 9),
            "unpriced_calls": 0,
        },
        {
            "tool": "remote_llm",
            "model": "gpt-4o-mini",
            "calls": 2,
            "total_tokens": 360,
            "cost_usd": round(CALL_USD, 9),
            "saved_usd": 0.0,
            "unpriced_calls": 1,
        },
    ],
}


def test_pipeline_status_lists_lm_studio_and_the_configured_remote_even_without_calls(control_plane_dsn: str) -> None:
    out = as_json(
        pmagent(
            "pipeline-status",
            "--json",
            REMOTE_LLM_BASE_URL="http://127.0.0.1:9/v1",
            REMOTE_LLM_MODEL="m",
            REMOTE_LLM_PROVIDER="openrouter",
        )
    )
    assert out["tools"] == [
        {"tool": "lm_studio", "success": 0, "failure": 0, "last_run_at": None, "last_status": None},
        {"tool": "openrouter", "success": 0, "failure": 0, "last_run_at": None, "last_status": None},
    ]
    empty = {"calls": 0, "total_tokens": 0, "cost_usd": 0.0, "saved_usd": 0.0, "unpriced_calls": 0}
    assert out["spend"] == {"total": {"tool": None, "model": None, **empty}, "by_tool_model": []}


def test_pipeline_status_table(seeded: dict[str, AgentRunRecord]) -> None:
    done = pmagent("pipeline-status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("control plane: on")
    lm_row = next(line for line in lines if "lm_studio" in line and "│" in line)
    assert [cell.strip() for cell in lm_row.strip("│").split("│")][:3] == ["lm_studio", "3", "1"]
    assert "remote_llm" in done.stdout and "search" not in done.stdout
    assert _spend_rows(done.stdout) == SPEND_TABLE_24H


def _spend_rows(stdout: str) -> list[list[str]]:
    """The body rows of the spend table (tool, model, calls, tokens, cost_usd, saved_usd, unpriced)."""
    table = stdout[stdout.index("LLM spend per tool and model (USD)") :]
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in table.splitlines() if "│" in line]
    return [r for r in rows if len(r) == 7 and r[0] != "tool"]


SPEND_TABLE_24H = [
    ["lm_studio", "qwen2.5-7b", "4", "720", "0.000000", f"{3 * CALL_USD:.6f}", "0"],
    ["remote_llm", "gpt-4o-mini", "2", "360", f"{CALL_USD:.6f}", "0.000000", "1"],
    ["all", "", "6", "1080", f"{CALL_USD:.6f}", f"{3 * CALL_USD:.6f}", "1"],
]


def test_summary_json(seeded: dict[str, AgentRunRecord]) -> None:
    out = as_json(pmagent("summary", "--json"))
    assert (out["db"], out["window"]) == ("on", "24h")
    assert_live_off(out["live"])
    usage = out["usage"]
    # Latencies in the window: 100, 200, 300, 1000 (lm_studio), 400, 600 (remote); percentile_cont interpolates.
    assert usage == {
        "calls": 6,
        "ok": 5,
        "failed": 1,
        "failure_rate": round(1 / 6, 4),
        "calls_per_hour": 0.25,
        "share": None,
        "latency_ms_p50": 350.0,
        "latency_ms_p95": 900.0,
        "prompt_tokens": 720,
        "completion_tokens": 360,
        "total_tokens": 1080,
        "fallback_count": 1,
        "substitution_count": 1,
        "cost_usd": round(CALL_USD, 9),
        "saved_usd": round(3 * CALL_USD, 9),
        "unpriced_calls": 1,
        "concurrency_limit": 4,
        "rate_limit_waits": 2,
        "http_429": 1,
    }
    lm, remote = out["tools"]["lm_studio"], out["tools"]["remote_llm"]
    assert (lm["concurrency_limit"], lm["rate_limit_waits"], lm["http_429"]) == (4, 0, 0)
    assert (remote["concurrency_limit"], remote["rate_limit_waits"], remote["http_429"]) == (16, 2, 1)
    assert (lm["calls"], lm["failed"], lm["failure_rate"], lm["share"]) == (4, 1, 0.25, round(4 / 6, 4))
    assert (lm["latency_ms_p50"], lm["latency_ms_p95"]) == (250.0, 895.0)
    assert (lm["fallback_count"], lm["substitution_count"]) == (0, 0)
    assert (remote["calls"], remote["failed"], remote["fallback_count"], remote["substitution_count"]) == (2, 0, 1, 1)
    assert (remote["latency_ms_p50"], remote["latency_ms_p95"]) == (500.0, 590.0)
    assert (lm["cost_usd"], lm["saved_usd"], lm["unpriced_calls"]) == (0.0, round(3 * CALL_USD, 9), 0)
    assert (remote["cost_usd"], remote["saved_usd"], remote["unpriced_calls"]) == (round(CALL_USD, 9), 0.0, 1)
    assert set(out["tools"]) == {"lm_studio", "remote_llm"}
    assert out["spend"] == SPEND_24H
    assert (out["spool"]["pending_records"], out["spool"]["pending_files"]) == (3, 1)


def test_summary_table(seeded: dict[str, AgentRunRecord]) -> None:
    done = pmagent("summary")
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│" if "│" in line else "┃")]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    assert rows["metric"] == ["lm_studio", "remote_llm", "all"]
    assert rows["calls"] == ["4", "2", "6"]
    assert rows["failure_rate"] == ["0.25", "0", "0.1667"]
    assert rows["latency_ms_p50"] == ["250", "500", "350"]
    assert rows["latency_ms_p95"] == ["895", "590", "900"]
    assert rows["fallback_count"] == ["0", "1", "1"] and rows["substitution_count"] == ["0", "1", "1"]
    assert rows["cost_usd"] == ["0.000000", f"{CALL_USD:.6f}", f"{CALL_USD:.6f}"]
    assert rows["saved_usd"] == [f"{3 * CALL_USD:.6f}", "0.000000", f"{3 * CALL_USD:.6f}"]
    assert rows["unpriced_calls"] == ["0", "1", "1"]
    assert _spend_rows(done.stdout) == SPEND_TABLE_24H
    assert "pending_records" in done.stdout


def test_flush_replays_once(seeded: dict[str, AgentRunRecord], control_plane_dsn: str) -> None:
    first = as_json(pmagent("flush"))
    assert (first["db"], first["files_replayed"], first["records_written"], first["files_left"]) == ("on", 1, 3, 0)
    again = as_json(pmagent("flush"))
    assert (again["files_replayed"], again["records_written"]) == (0, 0)
    with psycopg.connect(control_plane_dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM control.agent_run").fetchone() == (12, 12)


def test_db_off_answers_with_live_parts() -> None:
    for command in ("pipeline-status", "summary"):
        out = as_json(pmagent(command, "--json"))
        assert (out["db"], out["reason"]) == ("off", "GEMATRIA_DSN=off")
        assert_live_off(out["live"])
        assert "tools" not in out and "usage" not in out
        table = pmagent(command)
        assert table.returncode == 0 and "control plane: off" in table.stdout and "Traceback" not in table.stderr
    flushed = as_json(pmagent("flush"))
    assert flushed["db"] == "off"


def test_unreachable_db_answers_with_the_reason_and_never_the_password() -> None:
    dsn = f"postgresql://gemantria:{PASSWORD}@127.0.0.1:{free_port()}/control"
    for command in ("pipeline-status", "summary"):
        done = pmagent(command, "--json", GEMATRIA_DSN=dsn)
        out = as_json(done)
        assert (out["db"], out["configured"]) == ("off", "dsn")
        assert_live_off(out["live"])
        assert "unreachable" in out["reason"] and "Connection refused" in out["reason"]
        assert "password=***" in out["where"]
        table = pmagent(command, GEMATRIA_DSN=dsn)
        assert table.returncode == 0
        for text in (done.stdout, done.stderr, table.stdout, table.stderr):
            assert PASSWORD not in text and "Traceback" not in text
    flushed = pmagent("flush", GEMATRIA_DSN=dsn)
    assert flushed.returncode == 1 and json.loads(flushed.stdout)["db"] == "off"
    assert PASSWORD not in flushed.stdout + flushed.stderr and "Traceback" not in flushed.stderr


def test_password_in_a_working_dsn_is_never_printed(seeded: dict[str, AgentRunRecord], control_plane_dsn: str) -> None:
    # The embedded server trusts local connections, so the password is accepted and ignored.
    dsn = control_plane_dsn.replace("postgres:@", f"postgres:{PASSWORD}@", 1)
    outputs = [
        pmagent(*args, GEMATRIA_DSN=dsn)
        for args in (
            ("pipeline-status", "--json"),
            ("pipeline-status",),
            ("summary", "--json"),
            ("summary",),
            ("flush",),
        )
    ]
    for done in outputs:
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
    assert json.loads(outputs[0].stdout)["db"] == "on"
    assert "password=***" in json.loads(outputs[2].stdout)["where"]


def test_bad_window_is_one_line_and_exit_2() -> None:
    done = pmagent("summary", "--window", "5x")
    assert done.returncode == 2
    assert "invalid window '5x'" in done.stderr and "Traceback" not in done.stderr
