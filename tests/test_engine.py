"""The embedded engine: the real llama-server binary serving the real SmolLM2-135M GGUF (~1 s to start).

Each test has its own state folder (so its own engine) and stops whatever it started.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gemantria_dag.cli.main import app
from gemantria_dag.engine.files import EngineFileError
from gemantria_dag.engine.server import (
    EngineStartError,
    EngineState,
    engine_status,
    read_state,
    running_engine,
    start_engine,
    stop_engine,
)
from gemantria_dag.settings import Settings, get_settings, reset_settings_cache


@pytest.fixture
def engine_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("GEMANTRIA_STATE_DIR", str(tmp_path / "state"))
    reset_settings_cache()
    settings = get_settings()
    try:
        yield settings
    finally:
        stop_engine(settings)
        reset_settings_cache()


def pmagent(monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    return CliRunner().invoke(app, ["engine", *args])


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_serve_attach_stop(engine_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    started = pmagent(monkeypatch, "start")
    assert started.exit_code == 0, started.stderr
    engine = json.loads(started.stdout)
    assert engine["base_url"] == f"http://127.0.0.1:{engine['port']}/v1"
    assert engine["model"] == "smollm2-135m-instruct"
    argv = Path(f"/proc/{engine['pid']}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"

    status = pmagent(monkeypatch, "status")
    assert status.exit_code == 0, status.stdout
    shown = json.loads(status.stdout)
    assert (shown["state"], shown["healthy"], shown["health"], shown["pid"]) == (
        "running",
        True,
        {"status": "ok"},
        engine["pid"],
    )

    reply = httpx.post(
        f"{engine['base_url']}/chat/completions",
        json={"model": engine["model"], "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
        timeout=30,
        trust_env=False,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 8

    again = pmagent(monkeypatch, "start")
    assert again.exit_code == 0 and json.loads(again.stdout)["pid"] == engine["pid"]
    assert running_engine(engine_settings) == read_state(engine_settings)

    stopped = pmagent(monkeypatch, "stop")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout) == {"stopped": True}
    assert pid_gone(engine["pid"])
    after = pmagent(monkeypatch, "status")
    assert after.exit_code == 1 and json.loads(after.stdout)["state"] == "stopped"
    assert running_engine(engine_settings) is None
    assert json.loads(pmagent(monkeypatch, "stop").stdout) == {"stopped": False}


def test_missing_binary_is_one_line_exit_1(engine_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    result = pmagent(monkeypatch, "start", ENGINE_BINARY="/nonexistent")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ENGINE_BINARY=/nonexistent "), result.stderr
    assert result.stdout == ""
    status = pmagent(monkeypatch, "status")
    assert status.exit_code == 1 and json.loads(status.stdout)["binary"].startswith("missing: ENGINE_BINARY=")


def test_bad_model_files_are_clear_errors(engine_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_MODEL_PATH", "/nonexistent.gguf")
    reset_settings_cache()
    with pytest.raises(EngineFileError, match=r"^ENGINE_MODEL_PATH=/nonexistent\.gguf is not a file"):
        start_engine(get_settings())

    # A file that is no GGUF: the server starts, fails to load it and exits; the error says so.
    garbage = engine_settings.state_dir.parent / "garbage.gguf"
    garbage.write_bytes(b"not a gguf model\n" * 64)
    monkeypatch.setenv("ENGINE_MODEL_PATH", str(garbage))
    reset_settings_cache()
    with pytest.raises(EngineStartError, match=r"llama-server exited with code \d+ before it was ready") as caught:
        start_engine(get_settings())
    assert "last lines:" in str(caught.value)
    assert read_state(engine_settings) is None  # nothing recorded, nothing left running

    result = pmagent(monkeypatch, "start")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr


def test_stale_state_is_reported_and_replaced(engine_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    engine_settings.engine_dir.mkdir(parents=True)
    stale = EngineState(
        pid=dead.pid,
        port=9,
        base_url="http://127.0.0.1:9/v1",
        model="smollm2-135m-instruct",
        model_path=Path("/gone.gguf"),
        binary=Path("/gone/llama-server"),
        parallel=1,
        context_length=512,
        threads=1,
        started_at=datetime.now(UTC),
        log=engine_settings.engine_dir / "llama-server.log",
    )
    (engine_settings.engine_dir / "state.json").write_text(stale.model_dump_json())

    status = engine_status(engine_settings)
    assert (status.state, status.pid, status.healthy) == ("stale", dead.pid, False)
    assert running_engine(engine_settings) is None

    engine = start_engine(engine_settings)
    assert engine.pid != dead.pid and read_state(engine_settings) == engine
    assert engine_status(engine_settings).state == "running"


def test_invalid_setting_exits_2(engine_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    result = pmagent(monkeypatch, "status", ENGINE_PARALLEL="0")
    assert result.exit_code == 2 and result.stderr.startswith("error: Invalid configuration: ENGINE_PARALLEL=")
