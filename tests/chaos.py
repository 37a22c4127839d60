"""Crash and chaos driver for issue 15: a real backfill through the Dagster CLI, against the 200 ms server,
killed (the run's whole process group, SIGKILL) and its PostgreSQL killed at moments a seeded random
generator picks; then run again until it succeeds, and the accounting checked exactly.

Used by tests/test_crash_e2e.py (short versions, in CI) and as a script for the long one:

    python -m tests.chaos --range alef...tav --seed 7 --worker-kills 2 --db-kills 2

What is checked (`Accounting.problems`): every noun of the range ends with one successful outcome; every call
the server answered has a row in control.agent_run, except those whose reply died with a killed worker, which
have a `worker_died` row each (so rows_ok <= answered <= rows_ok + worker_died); no row twice; nouns paid twice
<= the calls in flight at the kills (remote_concurrency per kill).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from gemantria_dag.settings import SETTINGS_PREFIXES, child_environment
from tests.fixtures.processes import REPO_ROOT, VENV_BIN, start_group, stop_group
from tests.fixtures.remote_server import REMOTE_MODEL, start_fixed_latency

MODEL = REMOTE_MODEL


@dataclass
class Server:
    """The fixed-latency stand-in for a remote API, with its answer counts."""

    proc: subprocess.Popen
    base: str

    @classmethod
    def start(cls, log: Path, latency_ms: float = 200.0) -> Server:
        proc, base_url = start_fixed_latency(log, latency_ms)
        return cls(proc, base_url.removesuffix("/v1"))

    def answered(self) -> int:
        with urllib.request.urlopen(f"{self.base}/stats", timeout=5) as resp:
            return int(json.loads(resp.read())["chat"])

    def by_noun(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base}/stats/nouns", timeout=5) as resp:
            return {k: int(v) for k, v in json.loads(resp.read()).items()}

    def stop(self) -> None:
        stop_group(self.proc)


@dataclass
class World:
    """A project as a user has it: a state folder, the control plane (`dsn`, or off), Dagster's storage."""

    state: Path
    env: dict[str, str]
    dsn: str | None
    server: Server
    log: Callable[[str], None] = print

    def command(self, *args: str) -> list[str]:
        return [str(VENV_BIN / args[0]), *args[1:]]

    def run(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def materialize_args(self, partition_range: str, concurrency: int) -> list[str]:
        config = {"ops": {"noun_enrichments": {"config": {"backend": "remote", "remote_concurrency": concurrency}}}}
        return self.command("dagster", "asset", "materialize", "-m", "gemantria_dag.definitions", "--select",
                            "noun_enrichments", "--partition-range", partition_range, "--config-json",
                            json.dumps(config))  # fmt: skip

    def journals(self) -> list[Path]:
        folder = self.state / "journal"
        return sorted(folder.glob("*.journal")) if folder.is_dir() else []


def make_world(dsn: str | None, server: Server, *, dagster_pg_url: str | None = None) -> World:
    """A fresh state folder; `pmagent init` and the lexicon job run once."""
    state = Path(tempfile.mkdtemp(prefix="gmcrash-", dir="/tmp"))
    env = child_environment(without=SETTINGS_PREFIXES)
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        DAGSTER_HOME=str(state / "dagster_home"),
        GEMANTRIA_STATE_DIR=str(state),
        GEMATRIA_DSN=dsn or "off",
        USE_ENGINE="0",
        USE_LM_STUDIO="0",
        REMOTE_LLM_BASE_URL=f"{server.base}/v1",
        REMOTE_LLM_MODEL=MODEL,
        REMOTE_LLM_API_KEY="sk-chaos-test",
    )
    if dagster_pg_url:
        env["DAGSTER_PG_URL"] = dagster_pg_url
    world = World(state=state, env=env, dsn=dsn, server=server)
    for args in (("pmagent", "init"), ("dagster", "job", "execute", "-m", "gemantria_dag.definitions", "-j",
                                       "gematria_job")):  # fmt: skip
        done = world.run(*args)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {(done.stdout + done.stderr)[-3000:]}")
    return world


@dataclass
class Kill:
    """One kill of the plan: what (`worker` or `db`), and after how many more answers of the server (counted from
    the previous kill, or from the start of the run)."""

    what: str
    after_answers: int


@dataclass
class Outcome:
    """What the driver did: runs started, their exit codes, kills done (with the answers at each)."""

    runs: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    kills: list[tuple[str, int]] = field(default_factory=list)


def plan_kills(seed: int, worker_kills: int, db_kills: int, nouns: int) -> list[Kill]:
    """Kills spread over the first 80% of the work, in random order and at random moments (seeded)."""
    rng = random.Random(seed)
    kinds = ["worker"] * worker_kills + ["db"] * db_kills
    rng.shuffle(kinds)
    span = max(40, int(nouns * 0.8) // max(1, len(kinds)))
    return [Kill(kind, rng.randint(span // 3, span)) for kind in kinds]


def drive(
    world: World,
    partition_range: str,
    kills: list[Kill],
    *,
    concurrency: int = 16,
    kill_db: Callable[[], None] | None = None,
    start_db: Callable[[], None] | None = None,
    max_runs: int = 8,
) -> Outcome:
    """Run the backfill, killing as planned; after a kill run it again, until one run exits 0."""
    outcome = Outcome()
    pending = list(kills)
    while outcome.runs < max_runs:
        outcome.runs += 1
        log = world.state / f"run-{outcome.runs}.log"
        proc = start_group(world.materialize_args(partition_range, concurrency), env=world.env, log=log)
        mark = world.server.answered()
        while proc.poll() is None:
            if pending and world.server.answered() - mark >= pending[0].after_answers:
                kill = pending.pop(0)
                if kill.what == "worker":
                    os.killpg(
                        proc.pid, signal.SIGKILL
                    )  # the run and its step process, as the OOM killer or a lost node
                else:
                    assert kill_db is not None and start_db is not None
                    kill_db()
                    time.sleep(random.Random(kill.after_answers).uniform(0.5, 2.0))
                    start_db()
                mark = world.server.answered()
                outcome.kills.append((kill.what, mark))
                world.log(f"run {outcome.runs}: killed the {kill.what} at {outcome.kills[-1][1]} answers")
            time.sleep(0.05)
        outcome.exit_codes.append(proc.returncode)
        world.log(f"run {outcome.runs} exited {proc.returncode}")
        if proc.returncode == 0 and not pending:
            return outcome
        if proc.returncode != 0 and not outcome.kills:
            raise RuntimeError(f"run {outcome.runs} failed with no kill: {log.read_text(errors='replace')[-4000:]}")
        stop_group(proc, grace_s=1)
    raise RuntimeError(f"no run succeeded in {max_runs}: {outcome}")


@dataclass
class Accounting:
    """The figures the checks compare (see the module's docstring)."""

    nouns: int
    nouns_ok: int
    answered: int
    nouns_paid_twice: int
    rows_ok: int | None = None
    rows_worker_died: int | None = None
    rows_distinct: int | None = None
    rows: int | None = None

    def problems(self, in_flight_bound: int) -> list[str]:
        """Every broken promise, in words; empty when the accounting holds."""
        found = []
        if self.nouns_ok != self.nouns:
            found.append(f"{self.nouns - self.nouns_ok} of {self.nouns} nouns have no successful outcome")
        if self.nouns_paid_twice > in_flight_bound:
            found.append(f"{self.nouns_paid_twice} nouns paid twice > {in_flight_bound} in flight at the kills")
        if self.rows is not None:
            assert self.rows_ok is not None and self.rows_worker_died is not None
            if self.rows_distinct != self.rows:
                found.append(f"{self.rows - (self.rows_distinct or 0)} rows written twice")
            if not self.rows_ok <= self.answered <= self.rows_ok + self.rows_worker_died:
                found.append(
                    f"answered {self.answered} calls but {self.rows_ok} rows ok + {self.rows_worker_died} worker_died"
                )
            if self.rows_worker_died > in_flight_bound:
                found.append(f"{self.rows_worker_died} worker_died rows > {in_flight_bound} in flight at the kills")
        return found


def account(world: World, nouns: list[str]) -> Accounting:
    """Count what the server answered and what the stores hold, for `nouns` (their Strong's ids)."""
    by_noun = world.server.by_noun()
    wanted = set(nouns)
    figures = Accounting(
        nouns=len(wanted),
        nouns_ok=0,
        answered=sum(by_noun.values()),
        nouns_paid_twice=sum(1 for sid, n in by_noun.items() if sid in wanted and n > 1),
    )
    if world.dsn is None:  # DB off: the outcomes are in the local store (records are not logged)
        store = world.state / "dagster_home" / "storage" / "control_plane" / "noun_enrichment.sqlite"
        with sqlite3.connect(store) as conn:
            ok = {sid for (sid,) in conn.execute("SELECT strong_id FROM noun_enrichment WHERE ok")}
        figures.nouns_ok = len(ok & wanted)
        return figures
    with psycopg.connect(world.dsn) as conn:
        figures.rows, figures.rows_distinct = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM control.agent_run"
        ).fetchone()  # type: ignore[misc]  # noqa: E501
        (figures.rows_ok,) = conn.execute(
            "SELECT count(*) FROM control.agent_run WHERE (result_json->>'ok')::bool"
        ).fetchone()  # type: ignore[misc]  # noqa: E501
        (figures.rows_worker_died,) = conn.execute(
            "SELECT count(*) FROM control.agent_run WHERE result_json->>'error_code' = 'worker_died'"
        ).fetchone()  # type: ignore[misc]  # noqa: E501
        (figures.nouns_ok,) = conn.execute(
            "SELECT count(*) FROM gematria.noun_enrichment WHERE ok AND strong_id = ANY(%s)", (list(wanted),)
        ).fetchone()  # type: ignore[misc]  # noqa: E501
    return figures


def nouns_of(world: World, partition_range: str) -> list[str]:
    """The Strong's ids of the nouns in `partition_range` (first..last, in the partitions' order)."""
    code = (
        "import json, sys\n"
        "from resources.build import build_resources\n"
        "from gemantria_dag.settings import get_settings\n"
        "from gemantria_dag.enrichment.partitions import LETTER_NAMES\n"
        "from gemantria_dag.lexicon.gematria import first_letter\n"
        "first, last = sys.argv[1].split('...')\n"
        "names = list(LETTER_NAMES.values())\n"
        "span = set(names[names.index(first): names.index(last) + 1])\n"
        "db = build_resources(get_settings())['bible_db']\n"
        "print(json.dumps([n.strong_id for n in db.common_nouns() if LETTER_NAMES.get(first_letter(n.consonantal)) in span]))\n"  # noqa: E501
    )
    done = subprocess.run([sys.executable, "-c", code, partition_range], cwd=REPO_ROOT, env=world.env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description="Issue 15's chaos run (the long version).")
    parser.add_argument("--range", default="alef...tav")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker-kills", type=int, default=2)
    parser.add_argument("--db-kills", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    from gemantria_dag.db.embedded import start_embedded_postgres, stop_embedded_postgres
    from tests.test_spool import _kill_postmaster, _start_server

    root = Path(tempfile.mkdtemp(prefix="gmchaos-", dir="/tmp"))
    pgdata = root / "pgdata"
    uri = start_embedded_postgres(pgdata)
    server = Server.start(root / "server.log")
    try:
        dagster_url = uri.replace("postgresql://", "postgresql+psycopg2://", 1) + "&options=-csearch_path%3Ddagster"
        world = make_world(uri, server, dagster_pg_url=dagster_url)
        nouns = nouns_of(world, args.range)
        kills = plan_kills(args.seed, args.worker_kills, args.db_kills, len(nouns))
        started = time.monotonic()
        outcome = drive(world, args.range, kills, concurrency=args.concurrency,
                        kill_db=lambda: _kill_postmaster(pgdata), start_db=lambda: _start_server(pgdata))  # fmt: skip
        flush = world.run("pmagent", "control", "flush")
        figures = account(world, nouns)
        problems = figures.problems(args.concurrency * (args.worker_kills + args.db_kills))
        print(json.dumps({"seconds": round(time.monotonic() - started, 1), "outcome": outcome.__dict__,
                          "accounting": figures.__dict__, "flush_exit": flush.returncode, "problems": problems},
                         indent=2))  # fmt: skip
        sys.exit(1 if problems else 0)
    finally:
        server.stop()
        stop_embedded_postgres(pgdata)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()


__all__ = ["Accounting", "Kill", "Server", "World", "account", "drive", "make_world", "nouns_of", "plan_kills"]
