"""Dagster's instance folder (DAGSTER_HOME) inside the project's state folder.

Dagster's run, event-log and schedule storage go to the control-plane PostgreSQL too
(schema `dagster`), through dagster-postgres:
- embedded server: its unix-socket folder is the data folder (kept under 93 characters so the
  socket never moves), so the URL can be written into dagster.yaml; it holds no password.
- GEMATRIA_DSN: the URL can hold a password, so dagster.yaml names an environment variable,
  DAGSTER_PG_URL, that the operator sets (`postgresql+psycopg2://user:pw@host:5432/db`).
- DB off: Dagster's default SQLite storage in DAGSTER_HOME.
dagster-postgres needs the `postgresql+psycopg2://` scheme: a bare `postgresql://` selects
psycopg 3 under SQLAlchemy 2.1, which dagster-postgres does not support.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gemantria_dag.db.embedded import MAX_PGDATA_PATH
from gemantria_dag.names import BACKEND_TAG, ENGINE, LM_STUDIO, REMOTE
from gemantria_dag.settings import Settings

DAGSTER_SCHEMA = "dagster"
# Retries of a failed run (a tag `dagster/max_retries` on a run or job overrides it; 0 turns them off).
RUN_MAX_RETRIES = 2
# A run still starting (or cancelling) after this long is marked failed by the daemon's run monitoring.
RUN_START_TIMEOUT_SECONDS = 180
DAGSTER_PG_URL_VAR = "DAGSTER_PG_URL"


def storage_config(settings: Settings) -> tuple[dict[str, Any] | None, str]:
    """dagster.yaml's `storage` block (None = SQLite) and a sentence saying why."""
    mode = settings.db_mode
    if mode == "off":
        return None, "GEMATRIA_DSN=off: Dagster keeps its runs in SQLite under DAGSTER_HOME"
    if mode == "dsn":
        return (
            {"postgres": {"postgres_url": {"env": DAGSTER_PG_URL_VAR}}},
            f"GEMATRIA_DSN is set: Dagster storage on Postgres from ${DAGSTER_PG_URL_VAR}",
        )
    pgdata = settings.embedded_pgdata
    if len(str(pgdata)) > MAX_PGDATA_PATH:
        return None, (
            f"the embedded server's folder {pgdata} is too long for a stable socket path: "
            "Dagster keeps its runs in SQLite (use a shorter GEMANTRIA_STATE_DIR to share Postgres)"
        )
    url = f"postgresql+psycopg2://postgres@/postgres?host={pgdata}&options=-csearch_path%3D{DAGSTER_SCHEMA}"
    return {"postgres": {"postgres_url": url}}, f"Dagster storage on the embedded PostgreSQL (schema {DAGSTER_SCHEMA})"


def instance_config(settings: Settings) -> dict[str, Any]:
    """dagster.yaml's contents: no telemetry; at most 4 runs at once, of them 1 on LM Studio, 3 on the remote
    and 1 on the embedded engine (by the run tag `BACKEND_TAG`); run monitoring and run retries (a failed or
    killed run is launched again, twice at most); `storage_config`'s storage unless that is SQLite."""
    config: dict[str, Any] = {
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        # The queued run coordinator (dagster dev's default) enforces these across runs:
        # LM Studio answers one request at a time, so one enrichment run on it at once.
        "concurrency": {
            "runs": {
                "max_concurrent_runs": 4,
                "tag_concurrency_limits": [
                    {"key": BACKEND_TAG, "value": LM_STUDIO, "limit": 1},
                    {"key": BACKEND_TAG, "value": REMOTE, "limit": 3},
                    # The embedded engine's slots are shared by the runs on it, as LM Studio's are.
                    {"key": BACKEND_TAG, "value": ENGINE, "limit": 1},
                ],
            },
            "pools": {"default_limit": 2},
        },
        # A run whose worker dies (SIGKILL, the OOM killer, a lost node) must not stay "started" forever nor wait
        # for an operator: the code server that launched it sees its process gone and marks it failed; the
        # daemon's run monitoring fails runs stuck starting or cancelling; run retries then launch it again (from
        # the failure), and the new run resumes: every answer the dead one received is in its journal
        # (gemantria_dag/control_plane/journal.py), so it calls only for the rest. Asset failures (every backend
        # down, the blocking failed_nouns check) are retried too: the retry calls only for the nouns left.
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": RUN_START_TIMEOUT_SECONDS,
            "cancel_timeout_seconds": RUN_START_TIMEOUT_SECONDS,
            "poll_interval_seconds": 30,
            # Pool slots of a run that ended without freeing them (its worker died) are freed after this long.
            "free_slots_after_run_end_seconds": 30,
        },
        "run_retries": {"enabled": True, "max_retries": RUN_MAX_RETRIES},
    }
    storage, _ = storage_config(settings)
    if storage is not None:
        config["storage"] = storage
    return config


def write_instance_config(settings: Settings) -> tuple[Path, str]:
    """Write `instance_config` to `settings.dagster_home`/dagster.yaml; return its path and why that storage."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(instance_config(settings), sort_keys=False))
    return path, storage_config(settings)[1]
