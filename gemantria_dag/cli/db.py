"""`pmagent db`: the control-plane database (start/stop the embedded server, show which DB is used)."""

from __future__ import annotations

import typer

from gemantria_dag.cli.output import fail_on_settings_error, print_json
from gemantria_dag.db.embedded import stop_embedded_postgres
from gemantria_dag.db.schema import ensure_schema
from gemantria_dag.db.target import resolve_database

app = typer.Typer(help="The control-plane database.", no_args_is_help=True)


@app.command("status")
def status() -> None:
    """Which database the project uses (starting the embedded one if it is the default)."""
    with fail_on_settings_error() as settings:
        target = resolve_database(settings)
    print_json(
        {
            "configured": target.configured,
            "db": "on" if target.on else "off",
            "where": target.display,
            "reason": target.reason,
        }
    )


@app.command("start")
def start() -> None:
    """Start the embedded PostgreSQL (or check the configured one) and create missing tables."""
    with fail_on_settings_error() as settings:
        target = resolve_database(settings)
    if not target.on:
        typer.echo(f"error: control-plane DB is off: {target.reason}", err=True)
        raise typer.Exit(1)
    with target.connect() as conn:
        created = ensure_schema(conn)
    print_json({"db": "on", "where": target.display, "tables_created": created})


@app.command("stop")
def stop() -> None:
    """Stop the embedded PostgreSQL server if it runs."""
    with fail_on_settings_error() as settings:
        stopped = stop_embedded_postgres(settings.embedded_pgdata)
    typer.echo("stopped" if stopped else "not running")
