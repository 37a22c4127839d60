"""Dagster's own storage on the embedded PostgreSQL: two runs at once, multiprocess executor."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.fixtures.processes import REPO_ROOT, VENV_BIN, cli_env


@pytest.mark.timeout(600)
def test_two_runs_at_once_on_postgres_storage(embedded_pg: tuple[Path, str]) -> None:
    pgdata, uri = embedded_pg
    state = pgdata.parent  # the state folder whose pgdata/ is the session's server
    env = cli_env(GEMANTRIA_STATE_DIR=str(state), DAGSTER_HOME=str(state / "dagster_home"))
    env.pop("GEMATRIA_DSN")  # the default: the embedded server
    init = subprocess.run(
        [str(VENV_BIN / "pmagent"), "init"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr
    config = yaml.safe_load((state / "dagster_home" / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_url"].startswith("postgresql+psycopg2://")

    runs = [
        subprocess.Popen(
            [str(VENV_BIN / "dagster"), "job", "execute", "-m", "gemantria_dag.definitions", "-j", "gematria_job"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=500)[0] for p in runs]
    for proc, out in zip(runs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "RUN_SUCCESS" in out
        assert "Multiprocess executor" in out  # steps ran in their own processes

    with psycopg.connect(uri) as conn:
        statuses = conn.execute("SELECT status FROM dagster.runs WHERE pipeline_name = 'gematria_job'").fetchall()
        steps = conn.execute(
            "SELECT count(*) FROM dagster.event_logs WHERE dagster_event_type = 'STEP_SUCCESS'"
        ).fetchone()[0]
    assert statuses == [("SUCCESS",), ("SUCCESS",)]
    assert steps == 4  # two steps in each of the two runs
