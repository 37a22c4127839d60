"""`pmagent init`: lay out the local state folder and Dagster's instance config."""

from __future__ import annotations

import typer

from gemantria_dag.cli.output import fail_on_settings_error
from gemantria_dag.instance import write_instance_config


def init() -> None:
    """Create the state folder (.gemantria/) and DAGSTER_HOME's dagster.yaml."""
    with fail_on_settings_error() as settings:
        path = write_instance_config(settings)
    typer.echo(f"wrote {path}")
    typer.echo(f"export DAGSTER_HOME={settings.dagster_home}")
