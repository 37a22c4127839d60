"""Opt-in smoke test against a real LM Studio on your machine: `make smoke-lmstudio`.

Skipped unless GEMANTRIA_SMOKE_LM_STUDIO=1 (CI never sets it). It uses your LM_STUDIO_BASE_URL
(default http://localhost:1234/v1), LM_STUDIO_MODEL (required) and LM_STUDIO_API_TOKEN, read here
before the test session cleans the environment, and checks, without touching your `.gemantria/`:
1. `pmagent health lm` says lm_ready on an LM Studio server with the model loaded;
2. one real completion through the project's client, answered by that model (no substitution);
3. one noun of the vav partition enriched through the Dagster CLI (DB off, a throw-away DAGSTER_HOME).
The docs test runs this same command against the LM Studio emulator, so it cannot rot unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.processes import REPO_ROOT, VENV_BIN, cli_env

# Read at import, before the autouse fixture strips the project's variables from the environment.
ENABLED = os.environ.get("GEMANTRIA_SMOKE_LM_STUDIO") == "1"
USER_LM = {k: v for k, v in os.environ.items() if k.startswith("LM_STUDIO_")}

pytestmark = [
    pytest.mark.lmstudio_smoke,
    pytest.mark.skipif(
        not ENABLED,
        reason="opt-in: GEMANTRIA_SMOKE_LM_STUDIO=1 make smoke-lmstudio "
        "(needs a real LM Studio with LM_STUDIO_MODEL loaded)",
    ),
]


@pytest.fixture
def lm_env() -> dict[str, str]:
    if not USER_LM.get("LM_STUDIO_MODEL"):
        pytest.fail("set LM_STUDIO_MODEL to the key of a model loaded in LM Studio (`lms ps`)", pytrace=False)
    state = Path(tempfile.mkdtemp(prefix="gmsmoke-", dir="/tmp"))
    env = cli_env(
        **USER_LM, GEMATRIA_DSN="off", GEMANTRIA_STATE_DIR=str(state), DAGSTER_HOME=str(state / "dagster_home")
    )
    (state / "dagster_home").mkdir()
    yield env
    shutil.rmtree(state, ignore_errors=True)


def _run(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / args[0]), *args[1:]], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(900)
def test_real_lm_studio(lm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    health = _run(lm_env, "pmagent", "health", "lm", timeout=60)
    result = json.loads(health.stdout)
    details = result["details"]
    assert health.returncode == 0 and result["mode"] == "lm_ready", details["message"]
    assert details["server_kind"] in ("lm_studio", "lm_studio_legacy"), (
        f"{details['base_url']} is not LM Studio ({details['server_kind']}): {details['message']}"
    )
    assert details["model_loaded"] is True, details["message"]

    from gemantria_dag.settings import reset_settings_cache
    from resources.llm.lm_studio import LMStudioResource

    for key, value in USER_LM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GEMATRIA_DSN", "off")
    reset_settings_cache()
    lm = LMStudioResource.from_settings()  # base URL, model, timeouts and token, as the pipeline gets them
    answer = lm.complete("Give the English meaning of the Hebrew noun אב in one word.", max_tokens=16)
    assert answer.ok, answer.error
    assert answer.metadata.model_substituted is False, (answer.metadata.requested_model, answer.metadata.model)
    assert (answer.metadata.completion_tokens or 0) > 0

    lexicon = _run(lm_env, "dagster", "job", "execute", "-m", "gemantria_dag.definitions", "-j", "gematria_job")
    assert lexicon.returncode == 0, (lexicon.stdout + lexicon.stderr)[-3000:]
    config = {"ops": {"noun_enrichments": {"config": {"limit": 1}}}}
    enrich = _run(
        lm_env,
        "dagster",
        "asset",
        "materialize",
        "-m",
        "gemantria_dag.definitions",
        "--select",
        "noun_enrichments",
        "--partition",
        "vav",
        "--config-json",
        json.dumps(config),
    )
    output = enrich.stdout + enrich.stderr
    assert enrich.returncode == 0 and "RUN_SUCCESS" in output, output[-3000:]
    assert "routing (run start): lm_studio" in output
