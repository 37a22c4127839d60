"""Per-call failover with real servers: the local engine dies in the middle of a run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance

from gemantria_dag.control_plane.records import EnrichmentBatch
from gemantria_dag.routing.failover import OUTAGE_CODES
from gemantria_dag.settings import reset_settings_cache
from tests.fixtures.enrichment import enrich
from tests.fixtures.llm import start_llama_server
from tests.fixtures.processes import stop_group
from tests.fixtures.remote_server import FakeRemote

PARTITION = "tet"  # 43 nouns
KILL_AFTER_CALLS = 3
# Completions the engine serves besides the run's calls: health's one structured-output check at run start.
HEALTH_COMPLETIONS = 1


class DoomedEngine:
    """A dedicated llama.cpp server that a watcher kills once it has answered N chat completions."""

    def __init__(self, log_dir: Path) -> None:
        self.proc, self.server = start_llama_server(log_dir)
        self.log = log_dir / "server.log"
        self.killed_at_calls: int | None = None
        self._watch = threading.Thread(target=self._kill_after, daemon=True)

    def _answered(self) -> int:
        # llama-server logs no access lines; it logs one "stop processing" line per finished completion.
        return self.log.read_text(errors="replace").count("stop processing")

    def _kill_after(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self._answered() < KILL_AFTER_CALLS + HEALTH_COMPLETIONS:
            time.sleep(0.05)
        self.killed_at_calls = self._answered()
        stop_group(self.proc, grace_s=0.1)

    def arm(self) -> None:
        self._watch.start()

    def close(self) -> None:
        self._watch.join(timeout=250)
        stop_group(self.proc, grace_s=0.1)


@pytest.fixture
def doomed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DoomedEngine]:
    engine = DoomedEngine(tmp_path)
    monkeypatch.setenv("LM_STUDIO_BASE_URL", engine.server.base_url)
    monkeypatch.setenv("LM_STUDIO_MODEL", engine.server.model)
    reset_settings_cache()
    try:
        yield engine
    finally:
        engine.close()


CONFIG = {"lm_studio_concurrency": 1, "max_tokens": 160, "circuit_cooldown_seconds": 600}


@pytest.mark.timeout(300)
def test_local_engine_killed_mid_run_completes_on_remote(
    lexicon_instance: DagsterInstance, doomed: DoomedEngine, remote_env: FakeRemote
) -> None:
    doomed.arm()
    result = enrich(lexicon_instance, PARTITION, CONFIG)
    assert result.success
    assert doomed.killed_at_calls is not None and doomed.killed_at_calls >= KILL_AFTER_CALLS
    batch: EnrichmentBatch = result.output_for_node("noun_enrichments")
    records = batch.records

    # Answered by the engine before the kill (an answer cut by max_tokens is still an answer).
    local_ok = [
        r for r in records if r.args.backend == "lm_studio" and (r.result.ok or r.result.error_code == "truncated")
    ]
    outages = [r for r in records if r.args.backend == "lm_studio" and r.result.error_code in OUTAGE_CODES]
    fallbacks = [r for r in records if r.args.backend == "remote"]
    assert len(local_ok) >= KILL_AFTER_CALLS
    # The breaker opens after LLM_FAILOVER_THRESHOLD (3) consecutive outages; after that no call tries LM Studio.
    assert len(outages) == 3
    assert fallbacks and all(r.args.fallback and r.tool == "remote_llm" for r in fallbacks)
    assert all(r.args.routed_backend == "lm_studio" for r in records)
    # Each outage was retried on the remote for the same noun, so no noun was lost to it.
    for outage in outages:
        assert any(f.args.strong_id == outage.args.strong_id for f in fallbacks)
    assert len(batch.enrichments) == 43
    # The switch is in order: every local success happened before the first outage, none after.
    first_outage = min(r.created_at for r in outages)
    assert all(r.created_at < first_outage for r in local_ok)


@pytest.mark.timeout(300)
def test_every_backend_down_fails_clearly_and_keeps_what_was_done(
    lexicon_instance: DagsterInstance, doomed: DoomedEngine, control_plane_dsn: str
) -> None:
    doomed.arm()
    result = enrich(lexicon_instance, PARTITION, CONFIG, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert "every LLM backend is down" in message and "lm_studio (smollm2-135m)" in message
    assert "connection_refused" in message or "timeout" in message
    with psycopg.connect(control_plane_dsn) as conn:
        ok_rows = conn.execute(
            "SELECT count(*) FROM control.agent_run "
            "WHERE coalesce(result_json->>'error_code', 'truncated') = 'truncated'"
        ).fetchone()[0]
        failed = conn.execute(
            "SELECT count(*) FROM control.agent_run "
            "WHERE result_json->>'error_code' IN ('connection_refused', 'timeout')"
        ).fetchone()[0]
        outcomes = conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone()[0]
    # What was obtained before the outage is kept: the answered calls, their outcomes and the failed calls.
    assert ok_rows >= KILL_AFTER_CALLS and failed >= 3 and outcomes >= 1
