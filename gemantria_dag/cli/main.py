"""`pmagent`: the project's operator CLI (health, control plane, local state)."""

from __future__ import annotations

import typer

from gemantria_dag.cli import db as db_cli
from gemantria_dag.cli import init as init_cli

app = typer.Typer(
    name="pmagent",
    help="Gemantria operator CLI: LLM backend health, control-plane usage, local state.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("init")(init_cli.init)
app.add_typer(db_cli.app, name="db")

if __name__ == "__main__":
    app()
