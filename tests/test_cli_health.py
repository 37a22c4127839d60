"""`pmagent health lm|remote`: JSON (or a table), exit 0 ready / 1 not / 2 bad settings.

The timed checks run the CLI as a real subprocess (interpreter start-up included), since that is
what an operator or a sensor waits for.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gemantria_dag.cli.main import app
from gemantria_dag.settings import reset_settings_cache
from tests.fixtures.llm import LlamaServer
from tests.fixtures.processes import VENV_BIN, cli_env
from tests.servers.fault_server import FaultServer, hang, json_reply, openai_models, unauthorized

KEY = "sk-test-SECRET-4242"


def pmagent(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    # cwd: a folder without a developer's .env, so only the given environment counts.
    proc = subprocess.run(
        [str(VENV_BIN / "pmagent"), *args], cwd=tmp_path, env=cli_env(**env), capture_output=True, text=True, timeout=60
    )
    return proc, time.monotonic() - started


def run_inline(monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    return CliRunner().invoke(app, list(args))


def test_lm_off_answers_fast(tmp_path: Path, closed_port: int) -> None:
    proc, seconds = pmagent(
        tmp_path,
        "health",
        "lm",
        LM_STUDIO_BASE_URL=f"http://127.0.0.1:{closed_port}/v1",
        LM_STUDIO_MODEL="smollm2-135m",
    )
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "lm_off" and out["ok"] is False
    assert out["details"]["error"]["code"] == "connection_refused"
    assert seconds < 2.0, f"pmagent health lm took {seconds:.2f} s with nothing listening"


def test_hung_server_cannot_stall_the_check(tmp_path: Path, fault_server: FaultServer) -> None:
    for route in ("GET /api/v1/models", "GET /api/v0/models", "GET /v1/models"):
        fault_server.script(route, hang())
    proc, seconds = pmagent(tmp_path, "health", "lm", LM_STUDIO_BASE_URL=fault_server.base_url)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "error" and out["details"]["error"]["code"] == "timeout"
    assert seconds < 6.0, f"pmagent health lm took {seconds:.2f} s against a server that never answers"


def test_lm_ready_against_the_real_engine(tmp_path: Path, llama_server: LlamaServer) -> None:
    proc, _ = pmagent(
        tmp_path, "health", "lm", LM_STUDIO_BASE_URL=llama_server.base_url, LM_STUDIO_MODEL=llama_server.model
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["mode"] == "lm_ready"
    assert out["details"]["model_present"] is True and out["details"]["available_models"] == [llama_server.model]


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    proc, _ = pmagent(tmp_path, "health", "lm", LM_STUDIO_BASE_URL="localhost:1234")
    assert proc.returncode == 2
    assert "LM_STUDIO_BASE_URL" in proc.stderr and "Traceback" not in proc.stderr


def test_pretty_table(monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v0={"qwen2.5-7b-instruct": "not-loaded"})
    result = run_inline(
        monkeypatch,
        "health",
        "lm",
        "--pretty",
        LM_STUDIO_BASE_URL=fault_server.base_url,
        LM_STUDIO_MODEL="qwen2.5-7b-instruct",
    )
    assert result.exit_code == 1
    for text in ("error", "model_not_loaded", "lms load qwen2.5-7b-instruct", "lm_studio_legacy", "/api/v0/models"):
        assert text in result.output
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.output)


def test_use_lm_studio_0_is_said_beside_the_servers_health(
    monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer
) -> None:
    fault_server.as_lm_studio(v0={"qwen2.5-7b-instruct": "loaded"})
    env = {"LM_STUDIO_BASE_URL": fault_server.base_url, "LM_STUDIO_MODEL": "qwen2.5-7b-instruct"}
    ready = json.loads(run_inline(monkeypatch, "health", "lm", **env).output)
    assert ready["mode"] == "lm_ready" and "USE_LM_STUDIO" not in (ready["details"]["message"] or "")
    result = run_inline(monkeypatch, "health", "lm", USE_LM_STUDIO="0", **env)
    out = json.loads(result.output)
    assert result.exit_code == 0 and out["mode"] == "lm_ready"  # the server is fine ...
    assert "USE_LM_STUDIO=0: routing sends no calls to LM Studio" in out["details"]["message"]  # ... routing skips it


def test_remote_off_when_unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inline(monkeypatch, "health", "remote")
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["mode"] == "remote_off" and "REMOTE_LLM_BASE_URL" in out["details"]["message"]


def test_remote_ready_and_the_key_stays_hidden(tmp_path: Path, llama_server: LlamaServer) -> None:
    proc, _ = pmagent(
        tmp_path,
        "health",
        "remote",
        "--pretty",
        REMOTE_LLM_BASE_URL=llama_server.base_url,
        REMOTE_LLM_MODEL=llama_server.model,
        REMOTE_LLM_API_KEY=KEY,
        REMOTE_LLM_PROVIDER="vllm",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "remote_ready" in proc.stdout and "vllm" in proc.stdout
    assert KEY not in proc.stdout + proc.stderr


def test_remote_refused_key_is_not_echoed(tmp_path: Path, fault_server: FaultServer) -> None:
    fault_server.script("GET /v1/models", unauthorized(echo_key=KEY))
    env = {"REMOTE_LLM_BASE_URL": fault_server.base_url, "REMOTE_LLM_MODEL": "gpt-4o-mini", "REMOTE_LLM_API_KEY": KEY}
    for args in (("health", "remote"), ("health", "remote", "--pretty")):
        proc, _ = pmagent(tmp_path, *args, **env)
        assert proc.returncode == 1
        assert "unauthorized" in proc.stdout
        assert KEY not in proc.stdout + proc.stderr
    assert fault_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_remote_model_listed(monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer) -> None:
    fault_server.script("GET /v1/models", json_reply(openai_models(["gpt-4o-mini"])))
    result = run_inline(
        monkeypatch,
        "health",
        "remote",
        REMOTE_LLM_BASE_URL=fault_server.base_url,
        REMOTE_LLM_MODEL="gpt-4o-mini",
        REMOTE_LLM_API_KEY=KEY,
    )
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert out["mode"] == "remote_ready" and out["details"]["provider"] == "remote_llm"
