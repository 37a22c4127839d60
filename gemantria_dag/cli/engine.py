"""`pmagent engine`: the embedded LLM engine (llama.cpp's llama-server on loopback, one GGUF model).

The engine outlives the command that starts it; `pmagent engine stop` stops it.
Exit codes: `status` 0 running, 1 not running (stopped or stale); `start` 0 started or attached,
1 it could not start (one `error: ...` line on stderr); `stop` 0; all: 2 the settings are invalid.
"""

from __future__ import annotations

import typer

from gemantria_dag.cli.output import fail_on_settings_error, print_json
from gemantria_dag.engine.files import EngineFileError
from gemantria_dag.engine.server import EngineStartError, engine_status, start_engine, stop_engine

app = typer.Typer(help="The embedded LLM engine (llama-server).", no_args_is_help=True)


@app.command("status")
def status() -> None:
    """Whether the engine runs, its URL, model, pid, /health answer and files (JSON)."""
    with fail_on_settings_error() as settings:
        result = engine_status(settings)
    print_json(result.model_dump(mode="json"))
    raise typer.Exit(0 if result.state == "running" else 1)


@app.command("start")
def start() -> None:
    """Start the engine, or attach to the one already running; wait until it is healthy."""
    with fail_on_settings_error() as settings:
        try:
            state = start_engine(settings)
        except (EngineFileError, EngineStartError) as exc:
            # One line: the log tail of an EngineStartError is joined with " | ".
            typer.echo("error: " + " | ".join(str(exc).splitlines()), err=True)
            raise typer.Exit(1) from None
    print_json(state.model_dump(mode="json", include={"base_url", "model", "pid", "port", "started_at", "log"}))


@app.command("stop")
def stop() -> None:
    """Stop the engine if it runs (SIGTERM, SIGKILL after 10 s)."""
    with fail_on_settings_error() as settings:
        stopped = stop_engine(settings)
    print_json({"stopped": stopped})
