"""The embedded PostgreSQL (pgserver wheel) that serves as the default control-plane DB.

pgserver is started with `cleanup_mode=None`: the server outlives the command that
started it (so the next command attaches in ~0.1 s) and has one explicit owner that
stops it (`pmagent db stop`, or the test session). Its URI is a unix socket that can move,
so it is always asked of the running server, never written into a file.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

# Keep the socket inside the data folder: unix socket paths are limited to 107 bytes.
MAX_PGDATA_PATH = 93


class EmbeddedPostgresError(RuntimeError):
    """The embedded server did not start, or did not accept connections in time; the message says why."""


def start_embedded_postgres(pgdata: Path, *, ready_timeout_s: float = 30.0) -> str:
    """Start (or attach to) the embedded server in `pgdata`; return a URI that accepts connections."""
    import pgserver  # heavy import (psutil, platformdirs): only where the server is needed

    pgdata = pgdata.resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    # pgserver caches one server object per folder and process; after a crash that object
    # still points at the dead postmaster, so forget it unless its process is alive.
    cached = pgserver.PostgresServer._instances.get(pgdata)
    if cached is not None and not _alive(cached):
        pgserver.PostgresServer._instances.pop(pgdata, None)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        uri = server.get_uri()
    except Exception as exc:  # pgserver raises CalledProcessError/AssertionError/TimeoutExpired
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-600:] if log.exists() else "(no log)"
        raise EmbeddedPostgresError(
            f"could not start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}: {exc}); "
            f"server log tail: {tail}. Fix: remove the folder to start fresh, or set GEMATRIA_DSN"
        ) from None
    _wait_until_accepting(uri, ready_timeout_s)
    return uri


def _alive(server: object) -> bool:
    try:
        info = server.get_postmaster_info()  # type: ignore[attr-defined]
        return bool(info.is_running())
    except Exception:  # noqa: BLE001 - any doubt means "not alive"
        return False


def _wait_until_accepting(uri: str, timeout_s: float) -> None:
    # pgserver can briefly hand back a dead server's URI after a crash: trust a real connection.
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(uri, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.2)
    raise EmbeddedPostgresError(f"embedded PostgreSQL did not accept connections within {timeout_s:.0f}s: {last}")


def stop_embedded_postgres(pgdata: Path) -> bool:
    """Stop the server in `pgdata` if one runs; True when one was stopped."""
    import pgserver
    from pgserver.utils import PostmasterInfo

    pgdata = pgdata.resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / "PG_VERSION").exists() else None
    if info is None or not info.is_running():
        return False
    user = "pgserver" if _running_as_root() else None
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    return True


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
