"""Issue 15's goals through the Dagster CLI: a backfill killed with SIGKILL, then run again, loses no answer and
pays again only for the calls in flight; PostgreSQL killed under a run; a chaos run (tests/chaos.py drives all).

Against the fixed 200 ms server at 16 calls in flight, on the partitions gimel...tet (691 nouns, about 9 s of
calls a run), so that CI stays short; `python -m tests.chaos` runs the long version (all 3,754 nouns).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import Server, World, account, drive, make_world, nouns_of, plan_kills
from tests.fixtures.browser import dagster_pg_url, fresh_database
from tests.fixtures.processes import start_group
from tests.test_spool import _kill_postmaster, _start_server, dedicated_pg  # noqa: F401 - a fixture

RANGE = "gimel...tet"
C = 16


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own: its answer counts are the test's."""
    s = Server.start(tmp_path / "server.log", latency_ms=200)
    try:
        yield s
    finally:
        s.stop()


def _cleanup(world: World) -> None:
    shutil.rmtree(world.state, ignore_errors=True)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("db", ["postgres", "off"])
def test_killed_backfill_resumes_without_losing_or_repaying(
    db: str, server: Server, embedded_pg: tuple[Path, str]
) -> None:
    dsn = fresh_database(embedded_pg[1], "crash") if db == "postgres" else None
    world = make_world(dsn, server, dagster_pg_url=dagster_pg_url(dsn) if dsn else None)
    try:
        nouns = nouns_of(world, RANGE)
        assert len(nouns) == 691
        start = server.answered()
        outcome = drive(world, RANGE, plan_kills(seed=15, worker_kills=1, db_kills=0, nouns=len(nouns)), concurrency=C)
        assert outcome.runs == 2 and outcome.exit_codes[0] == -9 and outcome.exit_codes[1] == 0
        assert world.journals() == []  # the dead run's journal was replayed by the next run, then removed
        figures = account(world, nouns)
        print(f"{db}: kills {outcome.kills}, {figures}")
        assert figures.problems(in_flight_bound=C) == [], figures
        answered_now = server.answered()
        # The answers made durable before the kill were reused: the second run called only for the rest.
        assert answered_now - start <= len(nouns) + C
        # A third run calls nothing: every outcome is stored.
        third = drive(world, RANGE, [], concurrency=C)
        assert third.exit_codes == [0] and server.answered() == answered_now
    finally:
        _cleanup(world)


@pytest.mark.timeout(600)
def test_postgres_down_until_after_the_run_loses_no_answer(server: Server, dedicated_pg: Path) -> None:
    """The control plane's server also holds Dagster's runs: killed a few calls in and started again only after the
    CLI returned, the run fails, and every answered call is in its journal; `pmagent control flush` writes each
    once."""
    uri = _start_server(dedicated_pg)
    world = make_world(uri, server, dagster_pg_url=dagster_pg_url(uri))
    try:
        start = server.answered()
        proc = start_group(world.materialize_args("tet...tet", 2), env=world.env, log=world.state / "run.log")
        deadline = time.monotonic() + 120
        while server.answered() < start + 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        _kill_postmaster(dedicated_pg)
        killed_at = time.monotonic()
        assert proc.wait(timeout=300) != 0  # Dagster cannot write its events: the run fails
        print(f"the run exited {proc.returncode}, {time.monotonic() - killed_at:.1f} s after the kill")
        answered = server.answered() - start
        assert answered >= 10
        journals = world.journals()
        spooled = list((world.state / "spool").glob("*.jsonl"))
        assert journals or spooled  # every answer is on disk
        world.env["GEMATRIA_DSN"] = _start_server(dedicated_pg)
        flush = world.run("pmagent", "control", "flush")
        assert flush.returncode == 0, flush.stdout + flush.stderr
        world.dsn = world.env["GEMATRIA_DSN"]
        figures = account(world, nouns_of(world, "tet...tet"))
        print(f"journals {len(journals)}, spool files {len(spooled)}; {figures}")
        assert figures.rows_distinct == figures.rows
        assert figures.rows_ok is not None and figures.rows_worker_died is not None
        assert figures.rows_ok <= figures.answered <= figures.rows_ok + figures.rows_worker_died
        assert figures.rows_worker_died <= 2
    finally:
        _cleanup(world)


@pytest.mark.timeout(900)
def test_chaos_two_worker_kills_and_two_postgres_kills(server: Server, dedicated_pg: Path) -> None:
    """The short chaos run (the long one: `python -m tests.chaos`): with a fixed seed, the run worker is killed
    twice and the embedded PostgreSQL (the control plane and Dagster's storage) twice, at moments of the backfill
    the seed picks, PostgreSQL coming back 0.5-2 s later; the test runs the backfill again after each worker kill.
    Afterwards the accounting holds exactly."""
    uri = _start_server(dedicated_pg)
    world = make_world(uri, server, dagster_pg_url=dagster_pg_url(uri))
    try:
        nouns = nouns_of(world, RANGE)
        kills = plan_kills(seed=7, worker_kills=2, db_kills=2, nouns=len(nouns))
        outcome = drive(
            world,
            RANGE,
            kills,
            concurrency=C,
            kill_db=lambda: _kill_postmaster(dedicated_pg),
            start_db=lambda: _start_server(dedicated_pg),
        )
        flush = world.run("pmagent", "control", "flush")  # anything a run left in the spool
        assert flush.returncode == 0, flush.stdout + flush.stderr
        figures = account(world, nouns)
        print(f"chaos: kills {outcome.kills}, exits {outcome.exit_codes}; {figures}")
        assert [k for k, _ in outcome.kills] == [k.what for k in kills]
        assert figures.problems(in_flight_bound=C * len(kills)) == [], figures
    finally:
        _cleanup(world)
