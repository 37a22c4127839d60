"""`pmagent`: the project's operator CLI (health, control plane, local state)."""

from __future__ import annotations

import typer

from gemantria_dag.cli import control as control_cli
from gemantria_dag.cli import db as db_cli
from gemantria_dag.cli import engine as engine_cli
from gemantria_dag.cli import health as health_cli
from gemantria_dag.cli import init as init_cli
from gemantria_dag.cli import report as report_cli

app = typer.Typer(
    name="pmagent",
    help="Gemantria operator CLI: LLM backend health, control-plane usage, local state.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("init")(init_cli.init)
app.command("report")(report_cli.report)
app.add_typer(db_cli.app, name="db")
app.add_typer(control_cli.app, name="control")
app.add_typer(health_cli.app, name="health")
app.add_typer(engine_cli.app, name="engine")

if __name__ == "__main__":
    app()
