"""`pmagent health`: is LM Studio / the remote LLM ready? JSON by default, a table with --pretty.

Exit codes: 0 ready, 1 not ready (off or error), 2 the settings themselves are invalid.
This imports the probes, not the Dagster resources, so that a check stays well under 2 s.
"""

from __future__ import annotations

import typer

from gemantria_dag.cli.output import fail_on_settings_error, print_json
from gemantria_dag.llm.health import LMStudioHealthCheck, RemoteHealthCheck
from gemantria_dag.llm.results import HealthResult

app = typer.Typer(
    help="Health of the LLM backends (at most one 24-token structured-output check per server and model).",
    no_args_is_help=True,
)

PRETTY = typer.Option(False, "--pretty", help="A readable table instead of JSON.")


def _emit(result: HealthResult, pretty: bool) -> None:
    if not pretty:
        print_json(result.to_json_dict())
    else:
        _print_table(result)
    raise typer.Exit(0 if result.ok else 1)


_KINDS = {
    "lm_studio": "lm_studio (LM Studio 0.4, /api/v1)",
    "lm_studio_legacy": "lm_studio_legacy (LM Studio, legacy /api/v0)",
    "openai_compatible": "openai_compatible (not LM Studio)",
}


def _print_table(result: HealthResult) -> None:
    from rich.console import Console
    from rich.table import Table

    d = result.details
    style = "green" if result.ok else ("yellow" if result.mode.endswith("_off") else "red")
    table = Table(title=f"[{style}]{result.mode}[/{style}]", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    models = ", ".join(d.available_models[:20]) + (
        f" (+{len(d.available_models) - 20} more)" if len(d.available_models) > 20 else ""
    )
    # A model's state is only shown when a listing answered (not when, say, the token was refused).
    listed = bool(d.model) and (bool(d.available_models) or d.model_present is not None)
    probes = "\n".join(
        f"{s.endpoint} -> {s.status if s.status is not None else 'no answer'}: {s.outcome}" for s in d.probes
    )
    rows: list[tuple[str, object]] = [
        ("ok", result.ok),
        ("base URL", d.base_url),
        ("provider", d.provider),
        ("model", d.model),
        ("server kind", _KINDS.get(d.server_kind or "", d.server_kind)),
        ("identified by", d.identified_by),
        ("available models", models or None),
        ("loaded models", None if d.loaded_models is None else (", ".join(d.loaded_models) or "none")),
        ("model present", _tri(d.model_present, listed)),
        ("model loaded", _tri(d.model_loaded, listed and d.server_kind)),
        ("probe", d.probe),
        ("probes", probes or None),
        ("latency", f"{d.latency_ms:.0f} ms"),
        ("error", d.error.code.value if d.error else None),
        ("fix", d.error.fix if d.error else None),
        ("summary", d.message),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, str(value))
    Console(soft_wrap=False).print(table)


def _tri(value: bool | None, relevant: object) -> str | None:
    """yes / no, or "unknown" where the server cannot tell; nothing when the row does not apply."""
    if not relevant:
        return None
    return "unknown (the server cannot tell)" if value is None else ("yes" if value else "no")


@app.command("lm")
def lm(pretty: bool = PRETTY) -> None:
    """LM Studio: lm_ready | lm_off | error, with the server kind, the probes asked and the fix."""
    with fail_on_settings_error() as settings:
        result = LMStudioHealthCheck.from_settings(settings).health()
    _emit(result, pretty)


@app.command("remote")
def remote(pretty: bool = PRETTY) -> None:
    """The remote OpenAI-compatible API: remote_ready | remote_off | error."""
    with fail_on_settings_error() as settings:
        result = RemoteHealthCheck.from_settings(settings).health()
    _emit(result, pretty)
