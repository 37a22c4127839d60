"""What runs cost, end to end: noun_enrichments on the fixed-latency remote (60 prompt + 30 completion
tokens a call) and on the real SmolLM2 engine as LM Studio, a real Postgres, `pmagent control` as a
subprocess. Every remote call carries its cost, the summary's spend is the rows' sum, local calls carry
what they saved, an unknown model is unpriced (named once in the run log), and a budget stops a run,
which a re-run finishes without paying any call twice."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from dagster import DagsterInstance, FloatMetadataValue, IntMetadataValue

from tests.fixtures.enrichment import enrich, metadata
from tests.fixtures.llm import LlamaServer
from tests.fixtures.remote_server import FakeRemote
from tests.test_cli_control import as_json, pmagent

VAV, TET = "vav", "tet"  # 3 and 43 nouns
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens
PER_CALL = (60 * 1.0 + 30 * 2.0) / 1e6  # the fixed-latency server reports 60 + 30 tokens a call
UNPRICED_LOG = "no price for the remote model"


def _rows(dsn: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def _price(monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    monkeypatch.setenv("LLM_PRICES", json.dumps({model: PRICE}))


def _logs(instance: DagsterInstance, run_id: str, text: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if text in (e.user_message or "")]


def _failure_text(result: Any) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.event_specific_data.error.message) + str(failure.event_specific_data.user_failure_data)


def test_every_remote_call_is_priced_and_the_summary_spend_is_the_rows_sum(
    lexicon_instance: DagsterInstance,
    lm_down: None,
    remote_env: FakeRemote,
    control_plane_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _price(monkeypatch, remote_env.model)
    result = enrich(lexicon_instance, VAV)
    event = result.asset_materializations_for_node("noun_enrichments")[0]
    # Typed, so that the UI plots them across materializations.
    assert isinstance(event.metadata["cost_usd"], FloatMetadataValue)
    assert isinstance(event.metadata["saved_usd"], FloatMetadataValue)
    assert isinstance(event.metadata["unpriced_calls"], IntMetadataValue)
    assert isinstance(event.metadata["total_tokens"], IntMetadataValue)
    meta = metadata(result)
    assert meta["calls_made"] == 3 and meta["cost_usd"] == pytest.approx(3 * PER_CALL)
    assert (meta["saved_usd"], meta["unpriced_calls"], meta["total_tokens"]) == (0.0, 0, 270)
    assert _logs(lexicon_instance, result.run_id, UNPRICED_LOG) == []

    rows = _rows(control_plane_dsn, "SELECT tool, args_json->>'model', result_json FROM control.agent_run")
    assert len(rows) == 3
    for tool, model, res in rows:
        assert (tool, model, res["price_source"]) == ("remote_llm", remote_env.model, "settings")
        assert res["saved_usd"] is None
        assert res["cost_usd"] == pytest.approx(PER_CALL)
    [(sql_sum,)] = _rows(control_plane_dsn, "SELECT sum((result_json->>'cost_usd')::float8) FROM control.agent_run")

    summary = as_json(pmagent("summary", "--json"))
    assert summary["usage"]["cost_usd"] == pytest.approx(sql_sum, abs=1e-9)
    assert (summary["usage"]["saved_usd"], summary["usage"]["unpriced_calls"]) == (0.0, 0)
    assert summary["tools"]["remote_llm"]["cost_usd"] == pytest.approx(sql_sum, abs=1e-9)
    assert summary["spend"]["by_tool_model"] == [
        {
            "tool": "remote_llm",
            "model": remote_env.model,
            "calls": 3,
            "total_tokens": 270,
            "cost_usd": pytest.approx(sql_sum, abs=1e-9),
            "saved_usd": 0.0,
            "unpriced_calls": 0,
        }
    ]
    assert summary["spend"]["total"]["cost_usd"] == pytest.approx(sql_sum, abs=1e-9)
    status = as_json(pmagent("pipeline-status", "--json"))
    assert status["spend"] == summary["spend"]

    # Materialized again: no call, and the series goes on at 0 (typed as before).
    again = enrich(lexicon_instance, VAV)
    assert (metadata(again)["calls_made"], metadata(again)["cost_usd"], metadata(again)["total_tokens"]) == (0, 0.0, 0)
    assert isinstance(
        again.asset_materializations_for_node("noun_enrichments")[0].metadata["cost_usd"], FloatMetadataValue
    )

    table = pmagent("summary")
    assert table.returncode == 0, table.stderr
    spend_line = next(line for line in table.stdout.splitlines() if remote_env.model in line)
    cells = [c.strip() for c in spend_line.strip("│ ").split("│")]
    assert cells == ["remote_llm", remote_env.model, "3", "270", f"{sql_sum:.6f}", "0.000000", "0"]
    assert "LLM spend per tool and model (USD)" in pmagent("pipeline-status").stdout


def test_an_unknown_remote_model_is_unpriced_and_named_once(
    lexicon_instance: DagsterInstance, lm_down: None, remote_env: FakeRemote, control_plane_dsn: str
) -> None:
    result = enrich(lexicon_instance, VAV)
    meta = metadata(result)
    assert (meta["cost_usd"], meta["unpriced_calls"], meta["total_tokens"]) == (0.0, 3, 270)
    costs = _rows(
        control_plane_dsn, "SELECT result_json->'cost_usd', result_json->'price_source' FROM control.agent_run"
    )
    assert costs == [(None, None)] * 3  # JSON null: no guessed number
    [warning] = _logs(lexicon_instance, result.run_id, UNPRICED_LOG)
    assert f"{UNPRICED_LOG} '{remote_env.model}'" in warning and "set LLM_PRICES=" in warning
    assert as_json(pmagent("summary", "--json"))["usage"]["unpriced_calls"] == 3

    # A USD budget cannot be kept without a price: the run fails before any call.
    calls = remote_env.chat_calls()
    refused = enrich(lexicon_instance, TET, {"max_cost_usd": 1.0}, raise_on_error=False)
    assert not refused.success and remote_env.chat_calls() == calls
    assert "max_cost_usd=1.0 cannot be kept: no price for the remote model" in _failure_text(refused)


def test_a_budget_stops_the_run_and_a_rerun_finishes_without_paying_twice(
    lexicon_instance: DagsterInstance,
    lm_down: None,
    remote_env: FakeRemote,
    control_plane_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _price(monkeypatch, remote_env.model)
    budget = 21.5 * PER_CALL  # about half of tet's 43 nouns
    config = {"max_tokens": 64, "max_cost_usd": budget}
    calls_before = remote_env.chat_calls()
    first = enrich(lexicon_instance, TET, config, raise_on_error=False)
    assert not first.success
    made = remote_env.chat_calls() - calls_before
    runs = _rows(
        control_plane_dsn,
        "SELECT count(*), count(DISTINCT args_json->>'strong_id'), sum((result_json->>'cost_usd')::float8) "
        "FROM control.agent_run WHERE args_json->>'run_id' = %s",
        first.run_id,
    )
    [(recorded, nouns_called, spent)] = runs
    # Every call made is recorded and priced; the spend is within the budget and most of it was used
    # (the run stops when the next call's worst case, ~2.7 calls' real cost here, no longer fits).
    assert recorded == made == nouns_called and 15 <= made <= 21
    assert spent == pytest.approx(made * PER_CALL) and spent <= budget
    text = _failure_text(first)
    spend = f"spent ${spent:.6f} and {made * 90:,} tokens in {made} calls"
    assert f"budget max_cost_usd=${budget:.6f} reached: {spend}" in text
    assert f"{43 - made} of 43 nouns are left without an outcome" in text
    assert "were saved to control.agent_run" in text
    [(outcomes,)] = _rows(control_plane_dsn, "SELECT count(*) FROM gematria.noun_enrichment")
    assert outcomes == made

    second = enrich(lexicon_instance, TET, {**config, "max_cost_usd": 1.0})
    meta = metadata(second)
    assert (meta["calls_made"], meta["cache_hits"]) == (43 - made, made)
    assert meta["cost_usd"] == pytest.approx((43 - made) * PER_CALL)
    assert remote_env.chat_calls() - calls_before == 43
    [(rows, nouns, total)] = _rows(
        control_plane_dsn,
        "SELECT count(*), count(DISTINCT args_json->>'strong_id'), sum((result_json->>'cost_usd')::float8) "
        "FROM control.agent_run",
    )
    assert (rows, nouns) == (43, 43) and total == pytest.approx(43 * PER_CALL)  # no call paid twice


@pytest.mark.timeout(300)
def test_local_calls_cost_nothing_and_save_the_remote_price(
    lexicon_instance: DagsterInstance,
    lm_env: LlamaServer,
    remote_env: FakeRemote,
    control_plane_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _price(monkeypatch, remote_env.model)
    meta = metadata(enrich(lexicon_instance, VAV, {"max_tokens": 64, "max_total_tokens": 100_000}))
    assert meta["routed_backend"] == "lm_studio" and meta["cost_usd"] == 0.0 and meta["unpriced_calls"] == 0
    rows = _rows(
        control_plane_dsn,
        "SELECT tool, result_json FROM control.agent_run WHERE tool = 'lm_studio'",
    )
    assert len(rows) >= 3
    for _, res in rows:
        assert (res["cost_usd"], res["price_source"]) == (0.0, "local")
        expected = (res["prompt_tokens"] * PRICE["input"] + res["completion_tokens"] * PRICE["output"]) / 1e6
        assert res["saved_usd"] == pytest.approx(expected) and res["saved_usd"] > 0
    assert meta["saved_usd"] == pytest.approx(sum(r["saved_usd"] for _, r in rows))
    summary = as_json(pmagent("summary", "--json"))
    assert summary["tools"]["lm_studio"]["saved_usd"] == pytest.approx(meta["saved_usd"], abs=1e-9)
    assert summary["tools"]["lm_studio"]["cost_usd"] == 0.0
