"""Run the embedded engine: llama.cpp's `llama-server` on a loopback port, serving one GGUF model.

Same design as the embedded Postgres (`gemantria_dag/db/embedded.py`): the server outlives the
command that started it (the next command attaches in milliseconds) and has one explicit owner that
stops it (`pmagent engine stop`, or the test). What runs is recorded in `engine_dir/state.json`
(`EngineState`); an exclusive lock on `engine_dir/lock` makes start and stop one at a time, so two
processes never start two engines in the same state folder.

Errors: `start_engine` raises `EngineFileError` (binary or model missing, from `files.py`) and
`EngineStartError` (the server exited or never became healthy); status, stop and `running_engine`
never raise for a dead server.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ValidationError

from gemantria_dag.engine.files import EngineFileError, find_binary, find_model
from gemantria_dag.engine.process import exit_code, signal_group, spawn_detached
from gemantria_dag.settings import SETTINGS_PREFIXES, Settings, child_environment

HOST = "127.0.0.1"  # loopback only: the engine has no API key
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 5
POLL_SECONDS = 0.1
# llama-server reads LLAMA_ARG_* as defaults for its flags (LLAMA_ARG_API_KEY would lock us out):
# only the command line configures it. The project's own variables (secrets among them) stay here.
CHILD_ENV_DROP = ("LLAMA_ARG_", *SETTINGS_PREFIXES)


class EngineStartError(RuntimeError):
    """The server could not be started; the message names the cause and ends with its log tail."""


class EngineState(BaseModel):
    """A started engine, as recorded in `engine_dir/state.json`.

    `base_url` is the OpenAI-compatible root (`http://127.0.0.1:PORT/v1`); `model` the alias to send
    as `model`; `parallel` the slots (requests decoded at once); `context_length` tokens shared by
    the slots; `started_at` UTC.
    """

    pid: int
    port: int
    base_url: str
    model: str
    model_path: Path
    binary: Path
    parallel: int
    context_length: int
    threads: int
    started_at: datetime
    log: Path

    @property
    def health_url(self) -> str:
        """llama-server's `/health` on the engine's loopback port."""
        return f"http://{HOST}:{self.port}/health"


class EngineStatus(BaseModel):
    """What `pmagent engine status` prints.

    `state`: "running" (the recorded process is alive; `healthy` says whether /health answered
    200 ok, it is false while the model loads), "stale" (a state file whose process is dead) or
    "stopped" (no state file). `health`: the /health JSON body, or the error text. `binary` and
    `model_path`: what the running engine uses, else what a start would use, or the EngineFileError
    message when that file is missing.
    """

    state: Literal["running", "stopped", "stale"]
    healthy: bool
    base_url: str | None = None
    model: str | None = None
    pid: int | None = None
    started_at: datetime | None = None
    health: dict[str, Any] | str | None = None
    binary: str
    model_path: str
    log: Path


# ---- the public API ----


def start_engine(settings: Settings) -> EngineState:
    """Start the engine, or attach to the healthy one already recorded; return its state.

    Blocks up to `settings.engine_start_timeout_seconds` (plus the wait for another process's start
    holding the lock). Raises EngineFileError if the binary or model is missing, EngineStartError if
    the server exits or is not healthy in time (it is then stopped and its state removed).
    """
    with _locked(settings):
        state = read_state(settings)
        if state is not None:
            if _process_alive(state) and _health(state, timeout=2.0)[0]:
                return state
            # Dead, or alive but not healthy with nobody starting it (we hold the lock): replace it.
            _terminate(state)
            _state_path(settings).unlink(missing_ok=True)
        return _spawn_and_wait(settings, find_binary(settings), find_model(settings))


def stop_engine(settings: Settings) -> bool:
    """Stop the recorded engine (SIGTERM to its process group, SIGKILL after 10 s) and forget it.

    True if a live process was stopped; False if none ran (a stale state file is removed too).
    """
    with _locked(settings):
        state = read_state(settings)
        stopped = state is not None and _terminate(state)
        _state_path(settings).unlink(missing_ok=True)
        return stopped


def engine_status(settings: Settings) -> EngineStatus:
    """The engine's state as seen now (never raises for a dead or missing server)."""
    state = read_state(settings)
    log = state.log if state else _log_path(settings)
    if state is None or not _process_alive(state):
        return EngineStatus(
            state="stopped" if state is None else "stale",
            healthy=False,
            pid=state.pid if state else None,
            binary=_describe_file(find_binary, settings),
            model_path=_describe_file(find_model, settings),
            log=log,
        )
    healthy, health = _health(state, timeout=2.0)
    return EngineStatus(
        state="running",
        healthy=healthy,
        base_url=state.base_url,
        model=state.model,
        pid=state.pid,
        started_at=state.started_at,
        health=health,
        binary=str(state.binary),
        model_path=str(state.model_path),
        log=log,
    )


def running_engine(settings: Settings) -> EngineState | None:
    """The live, healthy engine, or None; cheap (state file, pid check, one /health GET of at most 1 s)."""
    state = read_state(settings)
    if state is None or not _process_alive(state):
        return None
    return state if _health(state, timeout=1.0)[0] else None


def read_state(settings: Settings) -> EngineState | None:
    """The recorded engine (alive or not), or None without a readable state file."""
    try:
        return EngineState.model_validate_json(_state_path(settings).read_bytes())
    except (FileNotFoundError, ValidationError):
        # An unreadable file is no record: the next start overwrites it.
        return None


# ---- starting ----


def _spawn_and_wait(settings: Settings, binary: Path, model: Path) -> EngineState:
    port = _free_port()
    log = _log_path(settings)
    log_start = log.stat().st_size if log.exists() else 0  # this start's lines begin here
    pid = _spawn(settings, binary, model, port, log)
    state = EngineState(
        pid=pid,
        port=port,
        base_url=f"http://{HOST}:{port}/v1",
        model=settings.engine_model,
        model_path=model,
        binary=binary,
        parallel=settings.engine_parallel,
        context_length=settings.engine_context_length,
        threads=settings.engine_threads,
        started_at=datetime.now(UTC),
        log=log,
    )
    # Recorded before the wait, so a stop can find the process even if this command dies meanwhile.
    _write_state(settings, state)
    problem = _wait_healthy(pid, state, settings.engine_start_timeout_seconds)
    if problem is None:
        return state
    _terminate(state)
    _state_path(settings).unlink(missing_ok=True)
    raise EngineStartError(f"{problem}; log {log}, last lines:\n{_log_tail(log, log_start)}")


ENGINE_REPEAT_PENALTY = 1.1


def engine_command(settings: Settings, binary: Path, model: Path, port: int) -> list[str]:
    """The llama-server command line (argv) for `settings` on `port`."""
    return [
        str(binary),
        "-m",
        str(model),
        "--host",
        HOST,
        "--port",
        str(port),
        "-c",
        str(settings.engine_context_length),
        "--parallel",
        str(settings.engine_parallel),
        "-t",
        str(settings.engine_threads),
        "--no-ui",
        "-a",
        settings.engine_model,
        "--metrics",
        # LM Studio's (and llama-cpp-python's) default sampling; llama-server's own default is 1.0 (off),
        # with which SmolLM2 repeats a Hebrew syllable until max_tokens: 3 of 3 vav nouns cut at 160
        # tokens without it, 1 of 3 with it (measured against this binary, json_schema output).
        "--repeat-penalty",
        str(ENGINE_REPEAT_PENALTY),
    ]


def _spawn(settings: Settings, binary: Path, model: Path, port: int, log: Path) -> int:
    """Start llama-server detached (its own session, output appended to `log`); return its pid."""
    try:
        return spawn_detached(
            binary, engine_command(settings, binary, model, port), child_environment(without=CHILD_ENV_DROP), log
        )
    except OSError as exc:
        raise EngineStartError(f"could not run {binary}: {exc}") from None


def _wait_healthy(pid: int, state: EngineState, timeout_s: float) -> str | None:
    """None once /health answers 200 ok; else why not (the process exited, or the time ran out)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | str | None = "no answer yet"
    while time.monotonic() < deadline:
        code = exit_code(pid)
        if code is not None:
            return f"llama-server exited with code {code} before it was ready (model {state.model_path})"
        healthy, last = _health(state, timeout=1.0)
        if healthy:
            return None
        time.sleep(POLL_SECONDS)
    return f"llama-server was not healthy within {timeout_s:g} s (ENGINE_START_TIMEOUT_SECONDS); last /health: {last}"


# ---- probing and stopping ----


def _health(state: EngineState, *, timeout: float) -> tuple[bool, dict[str, Any] | str]:
    """(healthy, the /health body or the error): healthy is 200 with {"status": "ok"}.

    While the model loads, llama-server answers 503 {"error": {"message": "Loading model", ...}}.
    """
    try:
        # trust_env=False: an HTTP(S)_PROXY of the environment must not see loopback calls.
        response = httpx.get(state.health_url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        return False, f"HTTP {response.status_code}: {response.text[:200]}"
    if not isinstance(body, dict):
        return False, f"HTTP {response.status_code}: {body!r}"[:200]
    return response.status_code == 200 and body.get("status") == "ok", body


def _process_alive(state: EngineState) -> bool:
    """True if the recorded pid runs and (where /proc tells) is the recorded binary, not a reused pid."""
    # Reap it if it is our own exited child (the starter and the stopper are often one process).
    if exit_code(state.pid) is not None:
        return False
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: a reused pid, not ours
    return _is_engine_process(state)


def _is_engine_process(state: EngineState) -> bool:
    proc = Path("/proc") / str(state.pid)
    try:
        status = (proc / "stat").read_text()
        argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except FileNotFoundError:
        return not proc.parent.is_dir()  # no /proc (macOS): trust the pid
    except OSError:
        return False
    # A zombie (state Z, after the field in parentheses) has exited; only its parent can reap it.
    if status.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
        return False
    return argv0 == str(state.binary)


def _terminate(state: EngineState) -> bool:
    """SIGTERM the engine's process group, SIGKILL it after the grace; True if it was alive."""
    if not _process_alive(state):
        return False
    signal_group(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if not _process_alive(state):
            exit_code(state.pid)  # reap it when it is our own child: no zombie left behind
            return True
        time.sleep(POLL_SECONDS)
    signal_group(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _process_alive(state):
        time.sleep(POLL_SECONDS)
    exit_code(state.pid)
    return True


# ---- files ----


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Hold the exclusive engine lock (blocking); the kernel releases it if this process dies."""
    settings.engine_dir.mkdir(parents=True, exist_ok=True)
    with (settings.engine_dir / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _state_path(settings: Settings) -> Path:
    return settings.engine_dir / "state.json"


def _log_path(settings: Settings) -> Path:
    return settings.engine_dir / "llama-server.log"


def _write_state(settings: Settings, state: EngineState) -> None:
    # Write then rename: a reader (status, routing) never sees half a file.
    path = _state_path(settings)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(state.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


def _log_tail(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(the log is empty)"


def _describe_file(find: Any, settings: Settings) -> str:
    try:
        return str(find(settings))
    except EngineFileError as exc:
        return f"missing: {exc}"


def _free_port() -> int:
    # Bind port 0 and release it: a small window remains, in which case the server exits with a
    # bind error that EngineStartError reports.
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
