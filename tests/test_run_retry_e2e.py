"""Issue 15 under `dagster dev` (webserver, daemon, code server) with the `dagster.yaml` that `pmagent init`
writes: an enrichment run whose processes are SIGKILLed (its step process and its run worker, as the OOM
killer or a lost node would) is marked failed and launched again by Dagster's run retries, and the retry
resumes: it calls only for the nouns whose answer never arrived, and every answer has its row."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from gemantria_dag.names import ROUTING_SENSOR
from tests.chaos import Server, account, make_world, nouns_of
from tests.fixtures.browser import dagster_pg_url, fresh_database
from tests.fixtures.processes import free_port, start_group, stop_group, wait_until

PARTITION = "het"  # 262 nouns: about 13 s of calls at 4 in flight against the 200 ms server
C = 4


@pytest.mark.timeout(600)
def test_killed_run_is_retried_by_the_daemon_and_resumes(
    embedded_pg: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server.start(tmp_path / "server.log", latency_ms=200)
    dsn = fresh_database(embedded_pg[1], "retry")
    world = make_world(dsn, server, dagster_pg_url=dagster_pg_url(dsn))
    # The routing sensor would launch enrichment runs of its own (it does when there is work): off for this test.
    stop = world.run("dagster", "sensor", "stop", ROUTING_SENSOR, "-w", "workspace.yaml")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    port = free_port()
    dev = start_group(
        [str(Path(world.command("dagster")[0])), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env=world.env,
        log=tmp_path / "dagster-dev.log",
    )
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200,
            timeout_s=180,
            what="dagster dev",
            proc=dev,
            log=tmp_path / "dagster-dev.log",
        )
        config = {"ops": {"noun_enrichments": {"config": {"backend": "remote", "remote_concurrency": C}}}}
        launch = world.run(
            "dagster", "job", "launch", "-w", "workspace.yaml", "-j", "enrichment_job",
            "--tags", json.dumps({"dagster/partition": PARTITION}), "--config-json", json.dumps(config),
        )  # fmt: skip
        assert launch.returncode == 0, launch.stdout + launch.stderr

        # The step process journals as it calls: its header names it and its parent (the run worker).
        deadline = time.monotonic() + 180
        while not world.journals() or server.answered() < 40:
            assert time.monotonic() < deadline, (tmp_path / "dagster-dev.log").read_text()[-4000:]
            time.sleep(0.1)
        header = json.loads(world.journals()[0].read_text().splitlines()[0])
        for pid in (header["pid"], header["parent_pid"]):
            os.kill(pid, signal.SIGKILL)
        killed_run = header["run_id"]
        answered_at_kill = server.answered()

        monkeypatch.setenv("DAGSTER_PG_URL", world.env["DAGSTER_PG_URL"])  # dagster.yaml names it
        instance = DagsterInstance.from_config(world.env["DAGSTER_HOME"])
        retry = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": killed_run}))
            if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                retry = runs[0]
                break
            time.sleep(1)
        assert retry is not None, (tmp_path / "dagster-dev.log").read_text()[-4000:]
        assert retry.status == DagsterRunStatus.SUCCESS
        killed = instance.get_run_by_id(killed_run)
        assert killed is not None and killed.status == DagsterRunStatus.FAILURE

        figures = account(world, nouns_of(world, f"{PARTITION}...{PARTITION}"))
        print(f"killed at {answered_at_kill} answers; retry {retry.run_id}; {figures}")
        assert figures.problems(in_flight_bound=C) == [], figures
        assert server.answered() <= 262 + C  # the retry resumed: it did not call for the answered nouns again
    finally:
        stop_group(dev)
        server.stop()
