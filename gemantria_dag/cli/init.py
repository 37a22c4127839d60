"""`pmagent init`: lay out the local state folder and Dagster's instance config."""

from __future__ import annotations

import typer

from gemantria_dag.cli.output import fail_on_settings_error
from gemantria_dag.db.target import resolve_database
from gemantria_dag.instance import DAGSTER_SCHEMA, write_instance_config


def init() -> None:
    """Create the state folder (.gemantria/), start the embedded DB if it is the default, write dagster.yaml."""
    with fail_on_settings_error() as settings:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        if settings.db_mode != "off":
            target = resolve_database(settings)
            if target.on:
                with target.connect(autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {DAGSTER_SCHEMA}")
            elif settings.db_mode == "embedded":
                typer.echo(f"error: {target.reason}", err=True)
                raise typer.Exit(1)
            else:
                typer.echo(f"warning: {target.reason}", err=True)
        path, storage = write_instance_config(settings)
    typer.echo(f"wrote {path}: {storage}")
    typer.echo(f"export DAGSTER_HOME={settings.dagster_home}")
