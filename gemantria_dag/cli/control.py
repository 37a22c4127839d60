"""`pmagent control`: LLM usage logged in the control plane, and the spool of records waiting for it.

Both status commands answer even when the database is off or unreachable: `"db": "off"` with
the reason and the live parts, exit 0, never a traceback. Nothing printed ever holds the DSN's
password (`where` is the redacted DSN; error lines are scrubbed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from gemantria_dag.cli.output import fail_on_settings_error, print_json
from gemantria_dag.control_plane.journal import pending_journals
from gemantria_dag.control_plane.live import live_status
from gemantria_dag.control_plane.spool import Spool
from gemantria_dag.control_plane.store import LocalStore, PostgresStore
from gemantria_dag.control_plane.usage import (
    SpendReport,
    ToolStatus,
    UsageStats,
    parse_window,
    pipeline_status,
    spend_by_model,
    usage_summary,
)
from gemantria_dag.control_plane.writer import ControlPlaneWriter
from gemantria_dag.db.target import resolve_database
from gemantria_dag.settings import Settings

app = typer.Typer(help="The control plane: LLM calls logged in control.agent_run.", no_args_is_help=True)

WINDOW_OPTION = typer.Option("24h", "--window", "-w", help="How far back: 30m, 24h, 7d, 2w.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _window(text: str) -> timedelta:
    try:
        return parse_window(text)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _live(settings: Settings) -> dict[str, Any]:
    try:
        return live_status(settings)
    except Exception as exc:  # noqa: BLE001 - a broken probe must not take the report down
        return {"error": f"{type(exc).__name__}: {exc}"}


@contextmanager
def _database(settings: Settings) -> Iterator[tuple[dict[str, Any], psycopg.Connection | None, ControlPlaneWriter]]:
    """Header fields, an open connection (None when off/unreachable) and a writer for the spool."""
    target = resolve_database(settings)  # probes a configured DSN; starts the embedded server by default
    writer = ControlPlaneWriter(target, Spool(settings.spool_dir))
    header: dict[str, Any] = {
        "configured": target.configured,
        "where": target.display,
        "project_id": settings.gemantria_project_id,
    }
    conn: psycopg.Connection | None = None
    if target.on:
        try:
            conn = writer.connect()
        except psycopg.Error as exc:
            header["reason"] = writer.describe_error(exc)
    else:
        header["reason"] = target.reason
    header["db"] = "on" if conn is not None else "off"
    try:
        yield header, conn, writer
    finally:
        if conn is not None:
            conn.close()


def _off(payload: dict[str, Any], writer: ControlPlaneWriter, exc: psycopg.Error) -> None:
    # The DB dropped between connect and query: answer like an unreachable DB.
    payload.update(db="off", reason=writer.describe_error(exc))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _print_header(console: Console, payload: dict[str, Any]) -> None:
    line = f"control plane: {payload['db']}"
    if payload["where"] != payload["db"]:
        line += f" ({payload['where']})"
    if payload.get("reason"):
        line += f" - {payload['reason']}"
    console.print(line, markup=False)
    if "window" in payload:
        console.print(f"window: {payload['window']}, project {payload['project_id']}", markup=False)


def _spend(conn: psycopg.Connection, settings: Settings, span: timedelta) -> dict[str, Any]:
    return spend_by_model(conn, settings.gemantria_project_id, span).model_dump(mode="json")


def _print_spend(console: Console, raw: dict[str, Any]) -> None:
    """Spend and savings per tool and model, then the total (`all`); USD to the micro-dollar."""
    report = SpendReport.model_validate(raw)
    table = Table(title="LLM spend per tool and model (USD)")
    for column in ("tool", "model", "calls", "tokens", "cost_usd", "saved_usd", "unpriced"):
        table.add_column(column, justify="left" if column in ("tool", "model") else "right")
    rows = [(row.tool or "-", row.model or "-", row) for row in report.by_tool_model]
    for tool, model, row in [*rows, ("all", "", report.total)]:
        table.add_row(
            tool,
            model,
            str(row.calls),
            str(row.total_tokens),
            f"{row.cost_usd:.6f}",
            f"{row.saved_usd:.6f}",
            str(row.unpriced_calls),
        )
    console.print(table)


def _print_kv(console: Console, title: str, values: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in values.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    console.print(table)


@app.command("pipeline-status")
def pipeline_status_command(window: str = WINDOW_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Per tool (lm_studio, each remote): successes, failures, last call and its status; spend per tool and model."""
    span = _window(window)
    with fail_on_settings_error() as settings, _database(settings) as (header, conn, writer):
        payload: dict[str, Any] = {**header, "window": window.strip()}
        if conn is not None:
            expected = ["lm_studio", *([settings.remote_llm_provider] if settings.remote_configured else [])]
            try:
                statuses = pipeline_status(conn, settings.gemantria_project_id, span, expected)
                payload["tools"] = [s.model_dump(mode="json") for s in statuses]
                payload["spend"] = _spend(conn, settings, span)
            except psycopg.Error as exc:
                _off(payload, writer, exc)
        payload["live"] = _live(settings)
    if as_json:
        print_json(payload)
        return
    console = _console()
    _print_header(console, payload)
    if "tools" in payload:
        table = Table(title="LLM calls per tool")
        for column in ("tool", "success", "failure", "last run", "last status"):
            table.add_column(column)
        for status in (ToolStatus.model_validate(s) for s in payload["tools"]):
            last = status.last_run_at.isoformat(timespec="seconds") if status.last_run_at else "-"
            table.add_row(status.tool, str(status.success), str(status.failure), last, status.last_status or "-")
        console.print(table)
    if "spend" in payload:
        _print_spend(console, payload["spend"])
    _print_kv(console, "live", payload["live"])


_STATS_ROWS = (
    "calls",
    "failure_rate",
    "calls_per_hour",
    "latency_ms_p50",
    "latency_ms_p95",
    "prompt_tokens",
    "completion_tokens",
    "fallback_count",
    "substitution_count",
    "cost_usd",
    "saved_usd",
    "unpriced_calls",
    "concurrency_limit",
    "rate_limit_waits",
    "http_429",
)


@app.command("summary")
def summary_command(window: str = WINDOW_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Backend health and routing (live), usage and failure rates, latency, tokens, fallbacks, spend, spool."""
    span = _window(window)
    with fail_on_settings_error() as settings, _database(settings) as (header, conn, writer):
        payload: dict[str, Any] = {**header, "window": window.strip()}
        if conn is not None:
            try:
                summary = usage_summary(conn, settings.gemantria_project_id, span)
                payload["usage"] = summary.total.model_dump(mode="json")
                payload["tools"] = {tool: s.model_dump(mode="json") for tool, s in summary.tools.items()}
                payload["spend"] = _spend(conn, settings, span)
            except psycopg.Error as exc:
                _off(payload, writer, exc)
        payload["live"] = _live(settings)
        spool = writer.spool.summary() if writer.spool is not None else None
        payload["spool"] = (
            {
                "pending_records": spool.records,
                "pending_outcomes": spool.enrichments,
                "pending_files": spool.files,
                "folder": spool.folder,
                # Journals of runs now going or that died (the next run or `flush` replays the dead ones).
                "journals": len(pending_journals(settings.journal_dir)),
            }
            if spool
            else None
        )
        quarantine = writer.quarantine.summary() if writer.quarantine is not None else None
        payload["quarantine"] = quarantine.model_dump() if quarantine is not None else None
    if as_json:
        print_json(payload)
        return
    console = _console()
    _print_header(console, payload)
    if "usage" in payload:
        # One column per tool (rows per metric): stays readable in 80 columns with several tools.
        columns = {tool: UsageStats.model_validate(raw).model_dump() for tool, raw in payload["tools"].items()}
        columns["all"] = UsageStats.model_validate(payload["usage"]).model_dump()
        table = Table(title="LLM usage")
        table.add_column("metric")
        for tool in columns:
            table.add_column(tool, justify="right")
        for field in _STATS_ROWS:
            usd = field.endswith("_usd")  # to the micro-dollar, as in the spend table
            table.add_row(
                field,
                *("-" if c[field] is None else f"{c[field]:.6f}" if usd else f"{c[field]:g}" for c in columns.values()),
            )
        console.print(table)
    if "spend" in payload:
        _print_spend(console, payload["spend"])
    _print_kv(console, "live", payload["live"])
    if payload["spool"] is not None:
        _print_kv(console, "spool (not yet replayed)", payload["spool"])
    if payload["quarantine"] and payload["quarantine"]["rows"]:
        _print_kv(
            console,
            f"quarantine: {payload['quarantine']['rows']} rows the database rejected (never retried)",
            {"folder": payload["quarantine"]["folder"], **payload["quarantine"]["by_reason"]},
        )


@app.command("flush")
def flush_command() -> None:
    """Replay the journals of runs that died and the spool into the database, exactly once; print the counts and
    the rows the database rejected for good (quarantined, with its reasons)."""
    with fail_on_settings_error() as settings:
        target = resolve_database(settings)
        payload: dict[str, Any] = {"configured": target.configured, "where": target.display}
        if target.configured == "off":
            # DB off: a dead run's outcomes still go to the local store, so that the next run reuses them.
            recovery = LocalStore(settings, settings.local_store_dir).recover()
            payload.update(db="off", reason=target.reason, journals=recovery.model_dump())
            print_json(payload)
            raise typer.Exit(0)
        store = PostgresStore(settings, target=target)
        if not target.on:
            pending = store.spool_store.summary()
            payload.update(
                db="off",
                reason=target.reason,
                files_left=pending.files,
                records_left=pending.records,
                journals_left=len(pending_journals(settings.journal_dir)),
            )
            print_json(payload)
            raise typer.Exit(1)  # a configured DB that is down is a failed flush
        recovery = store.recover()
        report = store.last_replay
        quarantine = store.writer.quarantine.summary() if store.writer.quarantine is not None else None
        payload.update(
            db="on" if report.error is None else "off",
            **report.model_dump(),
            journals=recovery.model_dump(),
            quarantine=quarantine.model_dump() if quarantine is not None else None,
        )
        print_json(payload)
        if report.error is not None or recovery.errors:
            raise typer.Exit(1)
