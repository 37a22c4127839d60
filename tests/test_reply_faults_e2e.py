"""Issue 14's cases through the Dagster CLI: what lands in control.agent_run and gematria.noun_enrichment,
and what `dagster asset materialize ... --partition vav` exits with.

Servers that misbehave as users report (fault server on loopback) play LM Studio or the remote API;
the real engine (llama-server, SmolLM2) shows truncation. One database and one Dagster home for the
module, the lexicon materialized once; each case asks for its own model name, so no case reuses
another's stored outcomes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gemantria_dag.settings import SETTINGS_PREFIXES, child_environment
from tests.fixtures.browser import dagster_pg_url, fresh_database
from tests.fixtures.llm import LlamaServer
from tests.fixtures.processes import REPO_ROOT, VENV_BIN
from tests.servers.fault_server import (
    FaultServer,
    Reply,
    chat_completion,
    error_in_200,
    json_reply,
    openai_models,
    server_error,
    trickle,
)

PARTITION = "vav"  # 3 nouns
CHAT = "POST /v1/chat/completions"
FINAL = {"insight": "A hook or peg of the tabernacle.", "themes": ["tabernacle"], "confidence": 0.8}
DRAFT = {"insight": "DRAFT - not the answer", "themes": ["draft"], "confidence": 0.1}


@dataclass
class World:
    env: dict[str, str]
    dsn: str

    def run(self, *args: str, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / args[0]), *args[1:]],
            cwd=REPO_ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def enrich(self, model: str, config: dict[str, Any] | None = None, **env: str) -> subprocess.CompletedProcess:
        """`dagster asset materialize` of partition vav, routed to `backend` by run config (as the sensor does)."""
        run_config = {"ops": {"noun_enrichments": {"config": config or {"backend": "lm_studio"}}}}
        return self.run(
            "dagster",
            "asset",
            "materialize",
            "-m",
            "gemantria_dag.definitions",
            "--select",
            "noun_enrichments",
            "--partition",
            PARTITION,
            "--config-json",
            json.dumps(run_config),
            LM_STUDIO_MODEL=model,
            REMOTE_LLM_MODEL=model,
            **env,
        )

    def calls(self, model: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT args_json, result_json, violations_json, tool FROM control.agent_run "
                "WHERE args_json->>'model' = %s ORDER BY created_at",
                (model,),
            ).fetchall()
        return [{"args": a, "result": r, "violations": v, "tool": t} for a, r, v, t in rows]

    def outcomes(self, model: str) -> list[tuple[str, bool, dict | None, str | None]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(
                "SELECT strong_id, ok, insight_json, violation FROM gematria.noun_enrichment WHERE model = %s",
                (model,),
            ).fetchall()


@pytest.fixture(scope="module")
def world(embedded_pg: tuple[Path, str]) -> Iterator[World]:
    _, admin_uri = embedded_pg
    dsn = fresh_database(admin_uri, "replies")
    state = Path(tempfile.mkdtemp(prefix="gmreply-", dir="/tmp"))
    env = child_environment(without=SETTINGS_PREFIXES)
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        DAGSTER_HOME=str(state / "dagster_home"),
        GEMANTRIA_STATE_DIR=str(state),
        GEMATRIA_DSN=dsn,
        DAGSTER_PG_URL=dagster_pg_url(dsn),
        USE_ENGINE="0",
    )
    w = World(env=env, dsn=dsn)
    try:
        init = w.run("pmagent", "init")
        assert init.returncode == 0, init.stdout + init.stderr
        lexicon = w.run("dagster", "job", "execute", "-m", "gemantria_dag.definitions", "-j", "gematria_job")
        assert lexicon.returncode == 0, (lexicon.stdout + lexicon.stderr)[-3000:]
        yield w
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer().start()
    try:
        yield s
    finally:
        s.stop()


def _serve(server: FaultServer, model: str, *replies: Reply) -> dict[str, str]:
    """The fault server as an OpenAI-compatible LM Studio stand-in serving `model`: its environment."""
    server.script("GET /v1/models", json_reply(openai_models([model])))
    server.script(CHAT, *replies)
    return {"LM_STUDIO_BASE_URL": server.base_url}


def _reply(content: str | None, model: str, **kw: Any) -> Reply:
    return json_reply(chat_completion(content, model=model, **kw))


def _all(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def _out(done: subprocess.CompletedProcess) -> str:
    return _all(done)[-4000:]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("case", "content"),
    [
        ("bare-braces", "<think>The answer needs a { and a } in it.</think>\n" + json.dumps(FINAL)),
        ("draft-inside", f"<think>A first try: {json.dumps(DRAFT)} - no, better:</think>{json.dumps(FINAL)}"),
        ("closing-only", f"Let me think. {json.dumps(DRAFT)}\n</think>\n\n{json.dumps(FINAL)}"),
    ],
)
def test_reasoning_before_the_answer_stores_the_final_answer(
    world: World, server: FaultServer, case: str, content: str
) -> None:
    model = f"reasoner-{case}"
    done = world.enrich(model, **_serve(server, model, _reply(content, model)))
    assert done.returncode == 0, _out(done)
    outcomes = world.outcomes(model)
    assert len(outcomes) == 3 and all(ok for _, ok, _, _ in outcomes), outcomes
    assert {insight["insight"] for _, _, insight, _ in outcomes} == {FINAL["insight"]}  # never the draft
    calls = world.calls(model)
    assert len(calls) == 3 and all(c["result"]["ok"] for c in calls)
    assert not [c for c in calls if c["args"]["purpose"] == "repair"]


@pytest.mark.timeout(300)
def test_reasoning_in_its_own_field_is_never_the_answer(world: World, server: FaultServer) -> None:
    model = "reasoner-field"
    reply = _reply(json.dumps(FINAL), model, reasoning_content=f"Draft: {json.dumps(DRAFT)}")
    done = world.enrich(model, **_serve(server, model, reply))
    assert done.returncode == 0, _out(done)
    assert {i["insight"] for _, _, i, _ in world.outcomes(model)} == {FINAL["insight"]}


@pytest.mark.timeout(300)
def test_a_trickling_body_times_out_at_the_attempts_limit(world: World, server: FaultServer) -> None:
    model = "trickler"
    # The 200 at once, then one byte every 0.5 s: the whole answer would take minutes.
    body = chat_completion(json.dumps(FINAL), model=model)
    started = time.monotonic()
    done = world.enrich(
        model, LM_STUDIO_TIMEOUT_SECONDS="2", **_serve(server, model, trickle(body, byte_interval_s=0.5))
    )
    took = time.monotonic() - started
    calls = world.calls(model)
    assert len(calls) == 3, _out(done)
    for call in calls:
        assert call["result"]["error_code"] == "timeout" and call["result"]["latency_ms"] <= 3000, call
    # No answer for any noun: the run says it failed, and why.
    assert done.returncode == 1 and "no answer for 3 of 3 nouns" in _all(done), _out(done)
    assert "timeout x3" in _all(done)
    assert took < 120
    assert world.outcomes(model) == []  # transient: the next run calls again


@pytest.mark.timeout(300)
def test_a_pooled_connection_closed_by_the_server_is_sent_again(world: World, server: FaultServer) -> None:
    model = "keepalive-dropper"
    server.drop_reused_connections()
    done = world.enrich(model, **_serve(server, model, _reply(json.dumps(FINAL), model)))
    assert done.returncode == 0, _out(done)
    calls = world.calls(model)
    assert len(calls) == 3 and all(c["result"]["ok"] and c["result"]["attempts"] == 1 for c in calls), calls
    assert len(world.outcomes(model)) == 3
    assert server.dropped >= 1  # the fault really happened, and no noun was lost to it


@pytest.mark.timeout(300)
def test_a_model_that_is_loading_is_waited_for(world: World, server: FaultServer) -> None:
    model = "slow-loader"
    env = _serve(server, model, _reply(json.dumps(FINAL), model))
    # Long enough that the run's first calls still find it loading: the CLI takes 5-8 s to start on a busy
    # machine (6 s of loading was over before the calls went out in one CI run).
    server.loading_for(15)
    health = world.run("pmagent", "health", "lm", LM_STUDIO_MODEL=model, **env)
    assert health.returncode == 1 and json.loads(health.stdout)["mode"] == "lm_loading", _out(health)
    done = world.enrich(model, LM_STUDIO_LOAD_TIMEOUT_SECONDS="60", **env)
    assert done.returncode == 0, _out(done)
    calls = world.calls(model)
    assert len(calls) == 3 and all(c["result"]["ok"] for c in calls), calls
    assert any(c["result"]["attempts"] > 1 for c in calls)  # some waited out the load
    assert len(world.outcomes(model)) == 3


@pytest.mark.timeout(300)
def test_an_error_inside_a_200_is_retried_like_its_status(world: World, server: FaultServer) -> None:
    model = "gateway-model"
    _serve(server, model, error_in_200(502), error_in_200(429), _reply(json.dumps(FINAL), model))
    env = {"REMOTE_LLM_BASE_URL": server.base_url, "REMOTE_LLM_API_KEY": "sk-test"}
    done = world.enrich(model, {"backend": "remote", "remote_concurrency": 1}, **env)
    assert done.returncode == 0, _out(done)
    calls = world.calls(model)
    assert len(calls) == 3 and all(c["result"]["ok"] for c in calls), calls
    # One call met a 502 and a 429 inside 200s, then got its answer; the others answered at once.
    assert sorted(c["result"]["attempts"] for c in calls) == [1, 1, 3]
    assert len(world.outcomes(model)) == 3


@pytest.mark.timeout(300)
def test_a_run_whose_calls_all_fail_exits_non_zero_and_says_why(world: World, server: FaultServer) -> None:
    model = "broken-server"
    done = world.enrich(model, **_serve(server, model, server_error()))
    out = _all(done)
    assert done.returncode == 1, _out(done)
    assert "no answer for 3 of 3 nouns" in out and "server_error x3" in out
    assert "enriched 0/3" in out
    calls = world.calls(model)
    assert len(calls) == 3 and {c["result"]["error_code"] for c in calls} == {"server_error"}


@pytest.mark.timeout(300)
def test_truncation_on_the_real_engine_is_recorded_without_a_same_budget_repair(
    world: World, llama_server: LlamaServer
) -> None:
    model = llama_server.model
    done = world.enrich(model, {"backend": "lm_studio", "max_tokens": 16}, LM_STUDIO_BASE_URL=llama_server.base_url)
    assert done.returncode == 0, _out(done)  # answers came: violations, not failures
    calls = world.calls(model)
    assert len(calls) == 3, calls  # one call per noun: no repair with the same 16-token budget
    for call in calls:
        assert call["result"]["error_code"] == "truncated" and call["result"]["finish_reason"] == "length"
        assert call["result"]["completion_tokens"] == 16
        assert any("max_tokens=16" in v.get("message", "") for v in call["violations"]), call
    outcomes = world.outcomes(model)
    assert len(outcomes) == 3 and all(not ok and "max_tokens=16" in (v or "") for _, ok, _, v in outcomes)


@pytest.mark.timeout(120)
def test_a_typo_in_the_settings_is_one_line_in_the_dagster_cli(world: World) -> None:
    done = world.enrich("any", LM_STUDIO_TIMEOUT_SECONDS="abc")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if "LM_STUDIO_TIMEOUT_SECONDS" in ln]
    assert len(lines) == 1 and "'abc'" in lines[0] and "valid number" in lines[0]
