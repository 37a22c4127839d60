"""Where the control-plane database is: embedded, a configured DSN, or none (DB-off).

Whether it is on is decided once, by `Settings.db_mode` (from GEMATRIA_DSN); this module finds the
server for that mode. The IO managers, Dagster's instance config and `pmagent` all ask `db_mode`.
"""

from __future__ import annotations

from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel, SecretStr

from gemantria_dag.db.embedded import EmbeddedPostgresError, start_embedded_postgres
from gemantria_dag.settings import Settings

DbMode = Literal["embedded", "dsn", "off"]
OFF_REASON = "GEMATRIA_DSN=off"


class DatabaseTarget(BaseModel):
    """Where the control plane lives. `conninfo` is secret; `display` is safe to print."""

    configured: DbMode
    on: bool
    reason: str
    display: str
    conninfo: SecretStr | None = None

    def connect(self, **kwargs: object) -> psycopg.Connection:
        """A new connection (5 s connect timeout; `kwargs` go to `psycopg.connect`).

        Raises RuntimeError when the control plane is off, psycopg errors when the server cannot be reached.
        """
        if self.conninfo is None:
            raise RuntimeError(f"control plane is off: {self.reason}")
        return psycopg.connect(self.conninfo.get_secret_value(), connect_timeout=5, **kwargs)


def redact_conninfo(conninfo: str) -> str:
    """The DSN without its password, for messages and metadata."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def scrub_error(exc: BaseException, conninfo: str | None) -> str:
    """The first line of a DB error, safe to print: never the DSN's password."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if conninfo:
        try:
            password = conninfo_to_dict(conninfo).get("password")
        except psycopg.ProgrammingError:
            password = None
        if password:
            line = line.replace(str(password), "***")
    return line


def _reachable(conninfo: str) -> str | None:
    """None when a connection succeeds, else the reason (with no password in it)."""
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return scrub_error(exc, conninfo)


def resolve_database(settings: Settings, *, check: bool = True) -> DatabaseTarget:
    """The control plane for `settings.db_mode`: off; the embedded server (started when not running, in
    `settings.embedded_pgdata`); or GEMATRIA_DSN, tried with one connection unless `check` is False.

    Never raises for a server that is down: the target is then `on=False` with the reason (no password in it).
    """
    mode = settings.db_mode
    if mode == "off":
        return DatabaseTarget(configured="off", on=False, reason=OFF_REASON, display="off")
    if mode == "embedded":
        try:
            uri = start_embedded_postgres(settings.embedded_pgdata)
        except EmbeddedPostgresError as exc:
            return DatabaseTarget(configured="embedded", on=False, reason=str(exc), display="embedded (failed)")
        return DatabaseTarget(
            configured="embedded",
            on=True,
            reason=f"embedded PostgreSQL in {settings.embedded_pgdata}",
            display=f"embedded:{settings.embedded_pgdata}",
            conninfo=SecretStr(uri),
        )
    assert settings.gematria_dsn is not None
    dsn = settings.gematria_dsn.get_secret_value()
    display = redact_conninfo(dsn)
    problem = _reachable(dsn) if check else None
    if problem:
        return DatabaseTarget(
            configured="dsn",
            on=False,
            reason=f"GEMATRIA_DSN server unreachable ({problem}); fix the server or the DSN",
            display=display,
        )
    return DatabaseTarget(configured="dsn", on=True, reason="GEMATRIA_DSN", display=display, conninfo=SecretStr(dsn))
