"""The control-plane DB dies in the middle of an enrichment run: nothing lost, nothing doubled."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance

from gemantria_dag.control_plane.records import EnrichmentBatch
from gemantria_dag.control_plane.spool import Spool
from gemantria_dag.settings import get_settings, reset_settings_cache
from tests.fixtures.enrichment import enrich, metadata
from tests.fixtures.remote_server import FakeRemote
from tests.test_spool import _kill_postmaster, _start_server, dedicated_pg  # noqa: F401 - a fixture

PARTITION = "tet"  # 43 nouns


@pytest.mark.timeout(300)
def test_db_killed_mid_run_spools_then_next_run_replays_exactly_once(
    lexicon_instance: DagsterInstance,
    lm_down: None,
    remote_env: FakeRemote,
    dedicated_pg: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = _start_server(dedicated_pg)
    monkeypatch.setenv("GEMATRIA_DSN", uri)
    reset_settings_cache()
    calls_before = remote_env.chat_calls()

    def kill_once_calls_flow() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and remote_env.chat_calls() < calls_before + 5:
            time.sleep(0.01)
        _kill_postmaster(dedicated_pg)

    killer = threading.Thread(target=kill_once_calls_flow, daemon=True)
    killer.start()
    # One call at a time so the run is still calling when the DB dies.
    first = enrich(lexicon_instance, PARTITION, {"remote_concurrency": 1})
    killer.join(timeout=70)
    assert first.success  # the outage cost no result: the run finished and said where the records went
    batch: EnrichmentBatch = first.output_for_node("noun_enrichments")
    assert len(batch.records) == 43 and len(batch.enrichments) == 43
    spool = Spool(get_settings().spool_dir)
    assert spool.summary().records == 43
    assert remote_env.chat_calls() - calls_before == 43

    uri = _start_server(dedicated_pg)  # the DB is back (crash recovery)
    monkeypatch.setenv("GEMATRIA_DSN", uri)
    second = enrich(lexicon_instance, PARTITION, {"remote_concurrency": 1})
    # The next run that reaches the DB replays the spool first, so it finds every outcome: no new call.
    assert metadata(second)["calls_made"] == 0 and metadata(second)["cache_hits"] == 43
    assert spool.pending() == []
    with psycopg.connect(uri) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM control.agent_run")]
        (outcomes,) = conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone()
    assert sorted(ids) == sorted(r.id for r in batch.records)  # every call record, exactly once
    assert outcomes == 43
