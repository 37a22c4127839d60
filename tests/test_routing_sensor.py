"""lm_routing_sensor with Dagster's sensor test helpers, against real servers on loopback."""

from __future__ import annotations

import json
import time

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from assets.lm_routing_sensor import lm_routing_sensor
from gemantria_dag.names import BACKEND_TAG
from gemantria_dag.settings import get_settings, reset_settings_cache
from resources.build import build_resources
from tests.fixtures.enrichment import enrich, metadata
from tests.fixtures.llm import LlamaServer
from tests.fixtures.remote_server import FakeRemote
from tests.servers.fault_server import FaultServer, hang

# Every probe LM Studio's health may try: a server that accepts them all and never answers.
PROBES = ("GET /health", "GET /lmstudio-greeting", "GET /api/v1/models", "GET /api/v0/models", "GET /v1/models")


def tick(instance: DagsterInstance, cursor: str | None = None) -> SensorResult:
    reset_settings_cache()
    resources = build_resources(get_settings())
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={k: resources[k] for k in ("lm_studio", "remote", "engine")}
    ) as context:
        result = lm_routing_sensor(context)
    assert isinstance(result, SensorResult)
    return result


def decision(result: SensorResult) -> dict:
    return json.loads(result.cursor or "{}")["decision"]


def test_lm_studio_up_launches_runs_tagged_lm_studio_whose_config_runs(
    lexicon_instance: DagsterInstance, lm_env: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = tick(lexicon_instance)
    assert decision(result)["backend"] == "lm_studio"
    requests = result.run_requests or []
    assert 1 <= len(requests) <= get_settings().llm_routing_max_runs_per_tick
    for request in requests:
        assert request.tags[BACKEND_TAG] == "lm_studio"
        config = request.run_config["ops"]["noun_enrichments"]["config"]
        assert config["backend"] == "lm_studio" and config["decided_by"] == "lm_routing_sensor"
    # The sensor's run config is valid for the job: run it (on the 3-noun partition, few tokens).
    config = dict(
        requests[0].run_config["ops"]["noun_enrichments"]["config"], max_tokens=48, progress_interval_seconds=1
    )
    run = enrich(lexicon_instance, "vav", run_config={"ops": {"noun_enrichments": {"config": config}}})
    assert metadata(run)["routed_backend"] == "lm_studio"


def test_lm_studio_down_routes_runs_to_remote(
    lexicon_instance: DagsterInstance, lm_down: None, remote_env: FakeRemote
) -> None:
    result = tick(lexicon_instance)
    assert decision(result)["backend"] == "remote"
    assert result.run_requests and all(r.tags[BACKEND_TAG] == "remote" for r in result.run_requests)


def test_both_down_launches_nothing_and_says_why(lexicon_instance: DagsterInstance, lm_down: None) -> None:
    result = tick(lexicon_instance)
    assert not result.run_requests
    assert result.skip_reason is not None
    reason = result.skip_reason.skip_message
    assert "no LLM backend available" in reason and "lm_off" in reason and "remote LLM not configured" in reason


def test_decision_changes_are_visible_in_the_tick(
    lexicon_instance: DagsterInstance, lm_env: LlamaServer, remote_env: FakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tick(lexicon_instance)
    assert decision(first)["backend"] == "lm_studio"
    monkeypatch.setenv("LM_STUDIO_BASE_URL", "http://127.0.0.1:9/v1")  # LM Studio goes away
    second = tick(lexicon_instance, cursor=first.cursor)
    state = json.loads(second.cursor or "{}")
    assert state["decision"]["backend"] == "remote"
    assert state["changed"] is True and state["previous_backend"] == "lm_studio"
    monkeypatch.setenv("LM_STUDIO_BASE_URL", lm_env.base_url)  # and comes back
    third = tick(lexicon_instance, cursor=second.cursor)
    assert json.loads(third.cursor or "{}")["previous_backend"] == "remote"
    assert decision(third)["backend"] == "lm_studio"
    unchanged = tick(lexicon_instance, cursor=third.cursor)
    assert json.loads(unchanged.cursor or "{}")["changed"] is False


def test_no_gematria_yet_skips_with_the_fix(lm_env: LlamaServer) -> None:
    with DagsterInstance.ephemeral() as empty:
        result = tick(empty)
    assert not result.run_requests and result.skip_reason is not None
    assert "gematria_job" in result.skip_reason.skip_message


@pytest.mark.timeout(120)
def test_hung_lm_studio_cannot_stall_a_tick(
    lexicon_instance: DagsterInstance,
    remote_env: FakeRemote,
    fault_server: FaultServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for probe in PROBES:
        fault_server.script(probe, hang())
    monkeypatch.setenv("LM_STUDIO_BASE_URL", fault_server.base_url)
    monkeypatch.setenv("LM_STUDIO_MODEL", "smollm2-135m")
    started = time.monotonic()
    result = tick(lexicon_instance)
    elapsed = time.monotonic() - started
    # A functional bound, not a speed figure: half of Dagster's 60 s sensor limit.
    assert elapsed < 30, elapsed
    assert decision(result)["backend"] == "remote"
    assert any("timeout" in r.lower() or "timed out" in r.lower() for r in decision(result)["reasons"])


def test_embedded_engine_is_the_last_resort_and_not_auto_launched(
    lexicon_instance: DagsterInstance, lm_down: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USE_ENGINE", "1")
    result = tick(lexicon_instance)
    assert decision(result)["backend"] == "engine"
    assert any("last resort" in r for r in decision(result)["reasons"])
    assert not result.run_requests and result.skip_reason is not None
    assert "embedded engine available, not auto-launched" in result.skip_reason.skip_message
    # Asked to, the sensor launches runs on it, tagged with it.
    monkeypatch.setenv("LLM_ROUTING_AUTO_LAUNCH_ENGINE", "1")
    launched = tick(lexicon_instance)
    assert launched.run_requests and all(r.tags[BACKEND_TAG] == "engine" for r in launched.run_requests)
