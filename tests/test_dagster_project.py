"""The project as users meet it: the Dagster CLI, the main job, and `dagster dev`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.dagster_dev import DagsterDev
from tests.fixtures.processes import REPO_ROOT, VENV_BIN, cli_env


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_definitions_validate() -> None:
    result = _run([str(VENV_BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], cli_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_main_job_twice_with_embedded_postgres(tmp_path: Path) -> None:
    """The README's main-job command as a newcomer runs it: GEMATRIA_DSN unset (the embedded Postgres
    starts by itself), no LM Studio, no remote (the embedded engine serves); twice, the second time
    with 0 LLM calls."""
    # A short path of its own under /tmp: the embedded server's socket lives in its data folder (<= 93 chars).
    state = Path(tempfile.mkdtemp(prefix="gmst-", dir="/tmp"))
    env = cli_env(GEMANTRIA_STATE_DIR=str(state), USE_ENGINE="1")
    env.pop("GEMATRIA_DSN")
    try:
        init = _run([str(VENV_BIN / "pmagent"), "init"], env)
        assert init.returncode == 0, init.stderr
        env["DAGSTER_HOME"] = str(state / "dagster_home")
        reports = []
        for _ in range(2):
            result = _run(["make", "materialize", f"BIN={VENV_BIN}", "REPORT_FLAGS=--require-rows"], env)
            assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
            assert "RUN_SUCCESS" in result.stdout + result.stderr
            reports.append(result.stdout[result.stdout.rindex("nouns: ") :])
        first, second = reports
        assert "backend: engine" in first and "control.agent_run rows of run" in first, first
        rows = int(first.split("control.agent_run rows of run ")[1].split(": ")[1].split()[0])
        assert rows >= 3, first  # every call of the 3 nouns of vav, in the control plane
        assert ", 0 LLM calls;" in second and "3 outcomes reused" in second, second
        status = _run([str(VENV_BIN / "pmagent"), "db", "status"], env)
        assert '"db": "on"' in status.stdout and '"configured": "embedded"' in status.stdout
        uri = f"postgresql://postgres:@/postgres?host={state / 'pgdata'}"
        with psycopg.connect(uri) as conn:
            (count,) = conn.execute("SELECT count(*) FROM gematria.noun_gematria").fetchone()
        assert count > 3500
        # Runs persist in the state folder's DAGSTER_HOME.
        assert any((state / "dagster_home" / "storage").iterdir())
    finally:
        _run([str(VENV_BIN / "pmagent"), "engine", "stop"], env)
        stop = _run([str(VENV_BIN / "pmagent"), "db", "stop"], env)
        shutil.rmtree(state, ignore_errors=True)
        assert stop.returncode == 0, stop.stderr


@pytest.mark.timeout(300)
def test_dagster_dev_serves_every_asset_job_and_sensor(dagster_dev: DagsterDev) -> None:
    data = dagster_dev.graphql(
        """{ assetNodes { assetKey { path } }
             repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } sensors { name } } } } }"""
    )
    keys = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
    assert {"hebrew_nouns", "noun_gematria"} <= keys
    jobs = {j["name"] for repo in data["repositoriesOrError"]["nodes"] for j in repo["jobs"]}
    assert "gematria_job" in jobs
