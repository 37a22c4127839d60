"""Dagster's instance folder (DAGSTER_HOME) inside the project's state folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from gemantria_dag.settings import Settings


def instance_config(settings: Settings) -> dict:
    return {
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
        },
    }


def write_instance_config(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(instance_config(settings), sort_keys=False))
    return path
