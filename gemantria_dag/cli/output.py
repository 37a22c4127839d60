"""Shared CLI plumbing: settings errors become one line and exit 2, never a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from gemantria_dag.settings import Settings, SettingsError, get_settings


@contextmanager
def fail_on_settings_error() -> Iterator[Settings]:
    """Yield the settings; on a SettingsError print `error: <message>` to stderr and exit 2 (no traceback)."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    yield settings


def print_json(payload: Any) -> None:
    """Print `payload` as JSON: indented, keys sorted, non-ASCII kept, other values as `str()`."""
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str, ensure_ascii=False))
