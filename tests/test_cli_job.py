"""The enrichment job through the Dagster CLI, the way CI and cron run it, then checked with pmagent.

Real parts only: `pmagent init` writes DAGSTER_HOME (Dagster's storage on Postgres), `dagster job
execute` materializes the lexicon, `dagster asset materialize` enriches one partition against the
real SmolLM2 llama.cpp server playing LM Studio, and the control plane is a fresh database on the
session's embedded PostgreSQL. `pmagent control pipeline-status` and `summary` then read the rows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.browser import fresh_database, pmagent_init, project_env
from tests.fixtures.llm import LlamaServer
from tests.fixtures.processes import REPO_ROOT, VENV_BIN

PARTITION = "vav"  # 3 nouns


@dataclass
class CliProject:
    env: dict[str, str]
    dsn: str

    def run(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / args[0]), *args[1:]],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def cli_project(llama_server: LlamaServer, embedded_pg: tuple[Path, str]) -> Iterator[CliProject]:
    _, admin_uri = embedded_pg
    dsn = fresh_database(admin_uri, "cli")
    state = Path(tempfile.mkdtemp(prefix="gmcli-", dir="/tmp"))
    env = project_env(llama_server, dsn, state)
    try:
        pmagent_init(env)
        yield CliProject(env=env, dsn=dsn)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _run_id(output: str) -> str:
    found = re.search(r" - ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) - .*RUN_SUCCESS", output)
    assert found, output[-3000:]
    return found.group(1)


@pytest.mark.timeout(420)
def test_enrichment_job_from_the_cli_then_pipeline_status(cli_project: CliProject) -> None:
    lexicon = cli_project.run("dagster", "job", "execute", "-m", "gemantria_dag.definitions", "-j", "gematria_job")
    assert lexicon.returncode == 0, (lexicon.stdout + lexicon.stderr)[-3000:]

    config = {"ops": {"noun_enrichments": {"config": {"max_tokens": 160}}}}
    enrich = cli_project.run(
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
        json.dumps(config),
    )
    output = enrich.stdout + enrich.stderr
    assert enrich.returncode == 0, output[-3000:]
    run_id = _run_id(output)
    assert "routing (run start): lm_studio" in output

    with psycopg.connect(cli_project.dsn) as conn:
        calls = conn.execute(
            "SELECT tool, args_json->>'partition', (result_json->>'ok')::boolean "
            "FROM control.agent_run WHERE args_json->>'run_id' = %s",
            (run_id,),
        ).fetchall()
        outcomes = conn.execute("SELECT count(*) FROM gematria.noun_enrichment").fetchone()[0]
        # Dagster's own run storage is the same Postgres (schema dagster), as `pmagent init` set it up.
        (status,) = conn.execute("SELECT status FROM dagster.runs WHERE run_id = %s", (run_id,)).fetchone()
    assert len(calls) >= 3 and {(tool, part) for tool, part, _ in calls} == {("lm_studio", PARTITION)}
    assert outcomes == 3 and status == "SUCCESS"

    status_out = cli_project.run("pmagent", "control", "pipeline-status", "--json", timeout=60)
    assert status_out.returncode == 0, status_out.stderr
    payload = json.loads(status_out.stdout)
    assert payload["db"] == "on" and payload["configured"] == "dsn"
    tools = {t["tool"]: t for t in payload["tools"]}
    lm = tools["lm_studio"]
    assert lm["success"] + lm["failure"] == len(calls)
    assert lm["success"] == sum(ok for *_, ok in calls) and lm["last_run_at"] and lm["last_status"] in ("ok", "failed")
    assert payload["live"]["lm_studio"]["mode"] == "lm_ready"

    summary = cli_project.run("pmagent", "control", "summary", "--json", timeout=60)
    assert summary.returncode == 0, summary.stderr
    usage = json.loads(summary.stdout)["usage"]
    assert usage["calls"] == len(calls) and usage["completion_tokens"] > 0 and usage["latency_ms_p50"] > 0
