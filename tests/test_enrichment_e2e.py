"""noun_enrichments end to end: the real SmolLM2 engine as LM Studio, real Postgres, real sockets."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance

from tests.chaos import Server
from tests.fixtures.enrichment import enrich, metadata
from tests.fixtures.llm import LlamaServer
from tests.fixtures.remote_server import FakeRemote

VAV = "vav"  # 3 nouns: a real partition that a small model enriches in seconds


def _rows(dsn: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.timeout(300)
def test_real_smollm2_partition_then_rematerialize_makes_zero_calls(
    lexicon_instance: DagsterInstance, lm_env: LlamaServer, control_plane_dsn: str
) -> None:
    first = enrich(lexicon_instance, VAV, {"max_tokens": 160})
    meta = metadata(first)
    assert meta["routed_backend"] == "lm_studio" and meta["nouns_in_scope"] == 3
    assert meta["calls_made"] >= 3 and meta["cache_hits"] == 0
    assert meta["nouns_enriched"] + meta["violations"] == 3  # an insight or a recorded violation, none dropped
    assert meta["completion_tokens"] > 0 and meta["latency_p50_ms"] > 0

    runs = _rows(control_plane_dsn, "SELECT tool, args_json, result_json, violations_json FROM control.agent_run")
    assert len(runs) == meta["calls_made"]
    for tool, args, result, violations in runs:
        assert tool == "lm_studio"
        assert args["routed_backend"] == "lm_studio" and args["fallback"] is False
        assert args["run_id"] == first.run_id and args["partition"] == VAV and args["asset_key"] == "noun_enrichments"
        assert args["model"] == lm_env.model and args["strong_id"].startswith("H")
        # Every call was answered: whole, or cut by max_tokens (`truncated`, its tokens still counted).
        assert result["completion_tokens"] > 0
        assert result["ok"] is True and result["tokens_per_second"] > 0 or result["error_code"] == "truncated"
        assert isinstance(violations, list)
    outcomes = _rows(control_plane_dsn, "SELECT strong_id, ok, insight_json, violation FROM gematria.noun_enrichment")
    assert len(outcomes) == 3
    for _, ok, insight, violation in outcomes:
        assert (insight is not None and 0 <= insight["confidence"] <= 1) if ok else bool(violation)

    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    assert set(checks) == {"coverage", "failure_rate", "confidence_in_range", "no_empty_insight", "failed_nouns"}
    assert checks["coverage"].passed and checks["confidence_in_range"].passed and checks["no_empty_insight"].passed

    second = enrich(lexicon_instance, VAV, {"max_tokens": 160})
    again = metadata(second)
    assert again["calls_made"] == 0 and again["cache_hits"] == 3
    assert len(_rows(control_plane_dsn, "SELECT id FROM control.agent_run")) == len(runs)

    # A new prompt version re-enriches.
    third = enrich(lexicon_instance, VAV, {"max_tokens": 160, "prompt_version": "noun-insight-test"})
    assert metadata(third)["calls_made"] >= 3


def test_lm_studio_down_routes_to_remote(
    lexicon_instance: DagsterInstance, lm_down: None, remote_env: FakeRemote, control_plane_dsn: str
) -> None:
    result = enrich(lexicon_instance, VAV)
    meta = metadata(result)
    assert meta["routed_backend"] == "remote"
    assert any("lm_off" in r for r in meta["routing_reasons"])
    assert meta["nouns_enriched"] == 3 and meta["backend_mix"] == {"remote": 3}
    tools = _rows(control_plane_dsn, "SELECT DISTINCT tool, args_json->>'routed_backend' FROM control.agent_run")
    assert tools == [("remote_llm", "remote")]
    # No setting: the remote's limit is adaptive, from its default start (issue 17), and recorded with each call.
    capacity = meta["concurrency"]["remote"]
    assert (capacity["adaptive"], capacity["initial"], capacity["initial_source"]) == (True, 4, "default")
    assert meta["concurrency_limit_remote"] == capacity["settled"]
    limits = _rows(control_plane_dsn, "SELECT DISTINCT (result_json->>'concurrency_limit')::int FROM control.agent_run")
    assert limits == [(4,)]


@pytest.mark.parametrize(
    ("env", "reason"),
    [({"USE_LM_STUDIO": "0"}, "USE_LM_STUDIO=0"), ({"LM_STUDIO_MODEL": "not-a-model"}, "not among")],
    ids=["use_lm_studio_0", "model_missing"],
)
def test_ineligible_lm_studio_routes_to_remote(
    lexicon_instance: DagsterInstance,
    lm_env: LlamaServer,
    remote_env: FakeRemote,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    reason: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    meta = metadata(enrich(lexicon_instance, VAV))
    assert meta["routed_backend"] == "remote"
    assert any(reason in r for r in meta["routing_reasons"])


def test_both_down_fails_with_both_reasons_and_no_calls(lexicon_instance: DagsterInstance, lm_down: None) -> None:
    result = enrich(lexicon_instance, VAV, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.event_specific_data.error.message) + str(failure.event_specific_data.user_failure_data)
    assert "no LLM backend available" in text
    assert "lm_off" in text and "remote LLM not configured" in text


def test_64_calls_in_flight_each_recorded_exactly_once(
    lexicon_instance: DagsterInstance,
    lm_down: None,
    control_plane_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10's load, through Dagster: 700 nouns (mem) at 64 in flight on a fixed-latency server of its own
    (200 ms, as in the benchmark: the session's 20 ms server answers before a busy client has 64 out), JSON
    validation and control-plane logging on. The server saw 64 at once; every call it answered is one row of
    control.agent_run, and every noun has exactly one call and one outcome. The run's concurrency (64) is
    above the resource's default pool (16): the pool follows the run."""
    server = Server.start(tmp_path / "server.log", latency_ms=200)
    monkeypatch.setenv("REMOTE_LLM_BASE_URL", f"{server.base}/v1")
    monkeypatch.setenv("REMOTE_LLM_MODEL", "remote-model")
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "sk-test-64")
    try:
        result = enrich(lexicon_instance, "mem", {"remote_concurrency": 64})
        meta = metadata(result)
        served = server.answered()
        with urllib.request.urlopen(f"{server.base}/stats", timeout=5) as resp:
            peak = json.loads(resp.read())["max_in_flight"]
    finally:
        server.stop()
    assert peak == 64
    assert meta["nouns_in_scope"] == 700 and meta["nouns_enriched"] == 700 and meta["repairs"] == 0
    assert served == meta["calls_made"] == 700
    # An explicit setting: the limit was fixed, and the metadata and every record say so (issue 17).
    assert meta["concurrency"]["remote"]["adaptive"] is False and meta["concurrency_limit_remote"] == 64
    assert (meta["rate_limit_waits"], meta["http_429"]) == (0, 0)
    rows = _rows(
        control_plane_dsn,
        "SELECT count(*), count(DISTINCT id), count(DISTINCT args_json->>'strong_id') "
        "FROM control.agent_run WHERE args_json->>'run_id' = %s",
        result.run_id,
    )
    assert rows == [(700, 700, 700)]
    outcomes = _rows(
        control_plane_dsn,
        "SELECT count(*) FROM gematria.noun_enrichment o JOIN control.agent_run r "
        "ON r.id = o.record_id WHERE r.args_json->>'run_id' = %s",
        result.run_id,
    )
    assert outcomes == [(700,)]


@pytest.mark.timeout(300)
def test_no_lm_studio_no_remote_runs_on_the_embedded_engine(
    lexicon_instance: DagsterInstance, lm_down: None, control_plane_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemantria_dag.engine.server import stop_engine
    from gemantria_dag.settings import get_settings, reset_settings_cache

    monkeypatch.setenv("USE_ENGINE", "1")
    reset_settings_cache()
    try:
        run = enrich(lexicon_instance, VAV, {"max_tokens": 64})
        meta = metadata(run)
        assert meta["routed_backend"] == "engine" and meta["model"] == get_settings().engine_model
        assert meta["nouns_enriched"] + meta["violations"] + meta["nouns_failed"] == 3
        runs = _rows(
            control_plane_dsn,
            "SELECT tool, args_json FROM control.agent_run WHERE args_json->>'run_id' = %s",
            run.run_id,
        )
        assert len(runs) == meta["calls_made"] >= 3
        for tool, args in runs:
            # Its own tool name, never lm_studio, and the server that answered.
            assert tool == "embedded_engine" and args["backend"] == "engine"
            assert args["server"].startswith("llama-server at http://127.0.0.1:")
    finally:
        stop_engine(get_settings())
