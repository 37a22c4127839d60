"""A deployment's own control plane (issue 15): RFC-080's `control.agent_run` among related tables, with a
foreign key from `session_id` to `control.capability_session`. A run writes its rows, changes nothing in the
`control` schema (`pg_dump -s -n control` before and after), quarantines nothing; a project id the deployment
does not know stops the run before any call is paid for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance

from gemantria_dag.control_plane.quarantine import Quarantine
from gemantria_dag.settings import get_settings, reset_settings_cache
from tests.fixtures.enrichment import enrich, metadata
from tests.fixtures.remote_server import FakeRemote

PARTITION = "vav"  # 3 nouns
PG_BIN = Path(psycopg.__file__).parents[1] / "pgserver" / "pginstall" / "bin"

LEGACY_DDL = """
CREATE SCHEMA control;
CREATE TABLE control.project (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO control.project VALUES (1, 'gemantria');
CREATE TABLE control.capability_session (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id bigint NOT NULL REFERENCES control.project (id),
    started_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE control.agent_run (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id bigint NOT NULL REFERENCES control.project (id),
    session_id uuid NULL REFERENCES control.capability_session (id),
    tool text NOT NULL,
    args_json jsonb NOT NULL,
    result_json jsonb NOT NULL,
    violations_json jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_agent_run_session ON control.agent_run (session_id);
"""


def _schema_dump(dsn: str) -> str:
    done = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--schema-only", "--schema=control", "--no-owner", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def legacy_dsn(control_plane_dsn: str) -> str:
    with psycopg.connect(control_plane_dsn, autocommit=True) as conn:
        conn.execute(LEGACY_DDL)
    return control_plane_dsn


@pytest.mark.timeout(300)
def test_run_writes_rows_and_leaves_the_control_schema_as_it_was(
    lexicon_instance: DagsterInstance, lm_down: None, remote_env: FakeRemote, legacy_dsn: str
) -> None:
    before = _schema_dump(legacy_dsn)
    assert "capability_session" in before and "agent_run_session_id_fkey" in before
    result = enrich(lexicon_instance, PARTITION, {"backend": "remote"})
    assert result.success
    assert metadata(result)["calls_made"] == 3
    assert _schema_dump(legacy_dsn) == before  # no new table, no altered column, no new index in control
    with psycopg.connect(legacy_dsn) as conn:
        rows = conn.execute("SELECT session_id, args_json->>'run_id' FROM control.agent_run").fetchall()
        (outcomes,) = conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone()
    assert len(rows) == 3 and outcomes == 3
    assert {r[0] for r in rows} == {None}  # session_id references another table: null
    assert {r[1] for r in rows} == {result.run_id}  # the Dagster run id stays in args_json
    assert Quarantine(get_settings().quarantine_dir).rows() == []


@pytest.mark.timeout(300)
def test_unknown_project_id_fails_before_any_call(
    lexicon_instance: DagsterInstance,
    lm_down: None,
    remote_env: FakeRemote,
    legacy_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMANTRIA_PROJECT_ID", "99")
    reset_settings_cache()
    calls = remote_env.chat_calls()
    result = enrich(lexicon_instance, PARTITION, {"backend": "remote"}, raise_on_error=False)
    assert not result.success
    assert remote_env.chat_calls() == calls  # nothing paid for
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
    assert "GEMANTRIA_PROJECT_ID=99" in message and "control.project(id)" in message
