"""Enrichment runs against LM Studio's behaviour (the emulator in front of the real SmolLM2 engine)."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest
from dagster import DagsterInstance

from tests.fixtures.enrichment import enrich, metadata
from tests.fixtures.lmstudio import LMStudioEmulator
from tests.fixtures.processes import VENV_BIN, cli_env

VAV = "vav"  # 3 nouns
# Routed to LM Studio by an earlier decision (the sensor's), as when the model unloads between
# the sensor's tick and the run: the run must cope with what LM Studio does then.
# 160 tokens: enough for SmolLM2 to close its JSON most of the time (a cut answer is `truncated`).
ON_LM_STUDIO = {"backend": "lm_studio", "routing_reasons": ["test"], "max_tokens": 160, "lm_studio_concurrency": 1}


@pytest.mark.timeout(300)
def test_just_in_time_load_does_not_fail_the_first_call(
    lexicon_instance: DagsterInstance,
    lmstudio_env: LMStudioEmulator,
    control_plane_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The load takes longer than a call may: only the separate load budget saves the first call.
    lmstudio_env.scenario("downloaded", jit_load_seconds=7.0)
    monkeypatch.setenv("LM_STUDIO_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("LM_STUDIO_LOAD_TIMEOUT_SECONDS", "20")
    result = enrich(lexicon_instance, VAV, ON_LM_STUDIO)
    assert result.success and metadata(result)["nouns_in_scope"] == 3
    assert lmstudio_env.stats()["jit_loads"] >= 1
    with psycopg.connect(control_plane_dsn) as conn:
        rows = conn.execute(
            "SELECT tool, coalesce(result_json->>'error_code', 'answered'), (result_json->>'latency_ms')::float "
            "FROM control.agent_run ORDER BY created_at"
        ).fetchall()
    tool, outcome, latency_ms = rows[0]
    # The first call waited out the whole load (longer than a call may take) and was answered (a 135M
    # model may still run out of max_tokens: `truncated` is an answer; a timeout would not be).
    assert tool == "lm_studio" and outcome in ("answered", "truncated") and latency_ms > 5_000


@pytest.mark.timeout(300)
def test_substituted_model_is_recorded_and_counted(
    lexicon_instance: DagsterInstance,
    lmstudio_env: LMStudioEmulator,
    control_plane_dsn: str,
) -> None:
    # Only another model is loaded: LM Studio answers with it whatever the request names.
    lmstudio_env.scenario("one_other_loaded")
    result = enrich(lexicon_instance, VAV, ON_LM_STUDIO)
    assert metadata(result)["substitutions"] >= 3
    with psycopg.connect(control_plane_dsn) as conn:
        rows = conn.execute("SELECT args_json, result_json, violations_json FROM control.agent_run").fetchall()
    assert rows
    for args, result_json, violations in rows:
        assert args["model"] == lmstudio_env.model
        assert result_json["substituted_model"] == lmstudio_env.other_model
        assert {
            "code": "model_substituted",
            "requested": lmstudio_env.model,
            "served": lmstudio_env.other_model,
        } in violations
    summary = subprocess.run(
        [str(VENV_BIN / "pmagent"), "control", "summary", "--json"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert summary.returncode == 0, summary.stderr
    usage = json.loads(summary.stdout)["usage"]
    assert usage["substitution_count"] == len(rows)
