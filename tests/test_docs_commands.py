"""Every command in the runbooks runs here, so the docs cannot drift from what the project does.

The runbooks (docs/runbooks/*.md) mark each fenced block with an HTML comment on the line before it:

    <!-- doc-test: CASE [exit=N] -->      a ```bash block run here, in document order, in CASE
    <!-- doc-expect -->                   a ```text block: lines the preceding command must print
    <!-- doc-message: NAME -->            a ```text block: a message the client prints, reproduced here
    <!-- doc-test: lm-studio-only -->     `lms ...` commands: only a real LM Studio has them
                                          (`make smoke-lmstudio` is the opt-in check on such a machine)
    <!-- doc-test: covered-by=PATH -->    a long-running command (`make dev`) that the test at PATH runs

An unmarked ```bash block fails the test. The commands run in bash (`set -euo pipefail`) from the
repository, with the virtualenv first on PATH and a hermetic environment: a throw-away
GEMANTRIA_STATE_DIR (its own embedded PostgreSQL, stopped at the end) and DAGSTER_HOME, and the
addresses in the docs mapped to local stand-ins:
- `http://localhost:1234` (LM Studio): the LM Studio emulator (tests/lmstudio_emulator) in front of
  the real SmolLM2 llama.cpp server; the CASE sets the emulator's scenario (or, for `stopped`, a
  closed port, and for `plain-server`, the llama.cpp server itself);
- `https://api.openai.com/v1` and `gpt-4o-mini` (the remote API): the llama.cpp server and its model;
- `localhost:5432` (a PostgreSQL that is down): a closed loopback port;
- `$PWD/.gemantria`: the throw-away state folder.
Expected lines match in order, each as a part of one output line (whitespace runs count as one
space); `...` alone skips, `…` inside a line matches anything. Output is mapped back to the docs'
addresses before matching.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.llm import LlamaServer
from tests.fixtures.processes import REPO_ROOT, VENV_BIN, cli_env, free_port, start_group, stop_group, wait_until

DOCS = sorted((REPO_ROOT / "docs" / "runbooks").glob("*.md"))
DOC_MODEL = "qwen2.5-7b-instruct"  # the model key the runbooks use
OTHER_MODEL = "meta-llama-3.1-8b-instruct"
DOC_TOKEN = "lm-studio-api-token"
MARKER = re.compile(r"^<!--\s*doc-(test|expect|message):?\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
# The environment the runbooks' configuration section sets up; the commands may add to it.
READER_ENV = {
    "LM_STUDIO_BASE_URL": "http://localhost:1234/v1",
    "LM_STUDIO_MODEL": DOC_MODEL,
    "LLM_ROUTING_INTERVAL_SECONDS": "5",
}
PROJECT_PREFIXES = (
    "LM_STUDIO_",
    "REMOTE_LLM_",
    "USE_LM_STUDIO",
    "GEMATRIA_",
    "GEMANTRIA_",
    "BIBLE_DB",
    "LLM_",
    "DAGSTER_",
)


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    body: str
    kind: str | None = None  # test | expect | message
    args: str = ""
    expect: Block | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def options(self) -> dict[str, str]:
        return dict(part.split("=", 1) for part in self.args.split()[1:] if "=" in part)

    @property
    def case(self) -> str:
        return self.args.split()[0] if self.args.split() else ""


def parse(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence or not fence.group(1):
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        block = Block(doc=path.name, line=start + 1, lang=fence.group(1), body="\n".join(lines[start + 1 : j]))
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k].strip()) if k >= 0 else None
        if marker:
            block.kind, block.args = marker.group(1), marker.group(2)
        blocks.append(block)
        i = j + 1
    # Attach each doc-expect block to the command block before it.
    for before, after in zip(blocks, blocks[1:], strict=False):
        if after.kind == "expect" and before.kind == "test":
            before.expect = after
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in parse(doc)]
RUN_BLOCKS = [
    b
    for b in ALL_BLOCKS
    if b.lang == "bash"
    and b.kind == "test"
    and b.case not in ("lm-studio-only",)
    and not b.case.startswith("covered-by=")
]
MESSAGE_BLOCKS = [b for b in ALL_BLOCKS if b.kind == "message"]


# ---------------------------------------------------------------- matching


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def missing_lines(expected: str, output: str) -> list[str]:
    """Expected lines not found, in order, in the output (empty: all found)."""
    out = [_norm(line) for line in output.splitlines()]
    pos = 0
    missing: list[str] = []
    for raw in expected.splitlines():
        want = _norm(raw)
        if not want or want == "...":
            continue
        pattern = re.compile(".*".join(re.escape(part.strip()) for part in want.split("…")))
        for idx in range(pos, len(out)):
            if pattern.search(out[idx]):
                pos = idx + 1
                break
        else:
            missing.append(raw)
    return missing


# ---------------------------------------------------------------- the static rules


def test_the_runbooks_exist_and_have_commands() -> None:
    names = {d.name for d in DOCS}
    assert {"LM_STUDIO_SETUP.md", "TROUBLESHOOTING.md"} <= names, names
    assert len(RUN_BLOCKS) >= 15 and len(MESSAGE_BLOCKS) >= 4


def test_every_bash_block_is_marked_and_every_marker_is_known() -> None:
    problems = []
    for block in ALL_BLOCKS:
        if block.lang in ("bash", "sh", "shell", "console") and block.kind != "test":
            problems.append(f"{block.id}: a ```{block.lang} block without <!-- doc-test: CASE -->")
        if block.kind == "test" and block.lang != "bash":
            problems.append(f"{block.id}: doc-test marks a ```{block.lang} block (only bash runs)")
        if (
            block.kind == "test"
            and block.case not in CASES
            and block.case != "lm-studio-only"
            and not block.case.startswith("covered-by=")
        ):
            problems.append(f"{block.id}: unknown case {block.case!r} (known: {sorted(CASES)})")
        if block.kind == "expect" and not any(b.expect is block for b in ALL_BLOCKS):
            problems.append(f"{block.id}: doc-expect does not follow a doc-test block")
        if block.kind == "message" and block.args not in MESSAGES:
            problems.append(f"{block.id}: unknown message {block.args!r} (known: {sorted(MESSAGES)})")
    assert not problems, "\n".join(problems)


def test_lm_studio_only_blocks_hold_only_lms_commands() -> None:
    for block in (b for b in ALL_BLOCKS if b.case == "lm-studio-only"):
        for line in block.body.splitlines():
            words = shlex.split(line, comments=True)
            assert not words or Path(words[0]).name == "lms", f"{block.id}: {line!r} is not an `lms` command"


def test_covered_commands_name_a_test_that_runs_them() -> None:
    for block in (b for b in ALL_BLOCKS if b.case.startswith("covered-by=")):
        target = REPO_ROOT / block.case.removeprefix("covered-by=")
        assert target.is_file(), f"{block.id}: {target} does not exist"
        # `make dev` = `dagster dev -w workspace.yaml`, which the named fixture starts.
        assert block.body.strip() == "make dev" and '"dev", "-w", "workspace.yaml"' in target.read_text(), block.id
        assert "dagster dev -w workspace.yaml" in (REPO_ROOT / "Makefile").read_text()


def test_dotenv_examples_name_real_settings() -> None:
    from gemantria_dag.settings import Settings

    known = {name.upper() for name in Settings.model_fields}
    for block in (b for b in ALL_BLOCKS if b.lang == "dotenv"):
        for line in block.body.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert line.split("=", 1)[0].strip() in known, f"{block.id}: {line!r} is not a setting"


# ---------------------------------------------------------------- the stand-ins


@dataclass
class DocsWorld:
    emulator_root: str
    admin: str
    llama: LlamaServer
    state: Path
    closed_port: int
    base_env: dict[str, str] = field(default_factory=dict)

    def scenario(self, **body: Any) -> None:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{self.admin}/scenario",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def addresses(self, lm_root: str) -> list[tuple[str, str]]:
        llama_root = self.llama.base_url.removesuffix("/v1")
        return [
            ("http://localhost:1234", lm_root),
            ("https://api.openai.com/v1", self.llama.base_url),
            ("gpt-4o-mini", self.llama.model),
            ("localhost:5432", f"localhost:{self.closed_port}"),
            ("$PWD/.gemantria", str(self.state)),
            ("http://localhost:8080", llama_root),
        ]


def _greets(root: str) -> bool:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{root}/lmstudio-greeting", timeout=2) as response:
        return json.load(response).get("lmstudio") is True


@pytest.fixture(scope="module")
def docs_world(llama_server: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsWorld]:
    port = free_port()
    log = tmp_path_factory.mktemp("docs-emulator") / "emulator.log"
    proc = start_group(
        [
            sys.executable,
            "-m",
            "tests.lmstudio_emulator",
            "--upstream",
            llama_server.base_url,
            "--upstream-model",
            llama_server.model,
            "--port",
            str(port),
            "--model",
            DOC_MODEL,
            "--scenario",
            "loaded",
            "--jit-load-seconds",
            "1",
        ],
        env=cli_env(),
        log=log,
    )
    root = f"http://127.0.0.1:{port}"
    state = Path(tempfile.mkdtemp(prefix="gmdoc-", dir="/tmp"))
    env = {k: v for k, v in cli_env().items() if not k.startswith(PROJECT_PREFIXES)}
    env.update(GEMANTRIA_STATE_DIR=str(state), DAGSTER_HOME=str(state / "dagster_home"), TERM="dumb", COLUMNS="100")
    world = DocsWorld(
        emulator_root=root,
        admin=f"{root}/__admin",
        llama=llama_server,
        state=state,
        closed_port=free_port(),
        base_env=env,
    )
    try:
        wait_until(lambda: _greets(root), timeout_s=30, what="LM Studio emulator", proc=proc, log=log)
        yield world
    finally:
        subprocess.run(
            [str(VENV_BIN / "pmagent"), "db", "stop"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60
        )
        stop_group(proc, grace_s=5)
        shutil.rmtree(state, ignore_errors=True)


def _lm_root(world: DocsWorld, case: str) -> str:
    if case == "stopped":
        return f"http://127.0.0.1:{world.closed_port}"
    return world.emulator_root


# What the emulator plays for each case (LM Studio's state on the reader's machine).
CASES: dict[str, dict[str, Any] | None] = {
    "ready": {"scenario": "loaded"},
    "downloaded": {"scenario": "downloaded"},
    "other-loaded": {"scenario": "downloaded", "loaded": [OTHER_MODEL]},
    "nothing-loaded": {"scenario": "none_loaded"},
    "token": {"scenario": "loaded", "token": DOC_TOKEN},
    "stopped": None,
    "smoke": {"scenario": "loaded"},
}


def _run_block(world: DocsWorld, block: Block) -> tuple[int, str]:
    setup = CASES[block.case]
    if setup is not None:
        world.scenario(**setup)
    lm_root = _lm_root(world, block.case)
    script = block.body
    env = dict(world.base_env)
    for key, value in READER_ENV.items():
        env[key] = value
    pairs = world.addresses(lm_root)
    for doc_text, local in pairs:
        script = script.replace(doc_text, local)
        env = {k: v.replace(doc_text, local) for k, v in env.items()}
    if block.case == "token":
        env["DOC_TOKEN"] = DOC_TOKEN
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    output = done.stdout
    # Back to the docs' names: LM Studio's address always (the reader's environment has it), the
    # other stand-ins when this block names them.
    for doc_text, local in pairs:
        if doc_text == "http://localhost:1234" or doc_text in block.body:
            output = output.replace(local, doc_text)
    if "localhost:5432" in block.body:  # libpq prints host and port apart
        output = output.replace(str(world.closed_port), "5432")
    output = output.replace(str(world.state), "$PWD/.gemantria")
    return done.returncode, output


@pytest.mark.timeout(900)
def test_runbook_commands(docs_world: DocsWorld) -> None:
    """Every doc-test block, in document order (later blocks build on earlier ones, as a reader's do)."""
    failures: list[str] = []
    show = os.environ.get("DOCS_TEST_SHOW") == "1"
    for block in RUN_BLOCKS:
        code, output = _run_block(docs_world, block)
        want = int(block.options.get("exit", "0"))
        if show:
            print(f"\n===== {block.id} [{block.case}] exit={code}\n$ {block.body}\n{output}")
        if code != want:
            failures.append(
                f"{block.id} [{block.case}]: exit {code}, the docs say {want}\n$ {block.body}\n{output[-2500:]}"
            )
            continue
        if block.expect is not None:
            missing = missing_lines(block.expect.body, output)
            if missing:
                failures.append(
                    f"{block.id} [{block.case}]: the output lacks the lines the docs show at "
                    f"{block.expect.id}:\n  " + "\n  ".join(missing) + f"\n--- output:\n{output[-2500:]}"
                )
    assert not failures, "\n\n".join(failures)


# ---------------------------------------------------------------- messages printed during a run


def _message_timeout(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.lm_studio import LMStudioResource

    world.scenario(scenario="loaded", upstream_delay_seconds=3)
    lm = LMStudioResource(
        base_url=f"{world.emulator_root}/v1", model=DOC_MODEL, timeout_seconds=1, load_timeout_seconds=1
    )
    result = lm.complete("Define אב.", max_tokens=8)
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


def _message_rate_limited(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.remote import RemoteLLMResource
    from tests.servers.fault_server import FaultServer, rate_limited

    server = FaultServer().start()
    try:
        server.script("POST /v1/chat/completions", rate_limited(retry_after=0))
        with caplog.at_level(logging.WARNING):
            result = RemoteLLMResource(base_url=server.base_url, model="gpt-4o-mini", api_key="sk-doc").complete(
                "Define אב.", max_tokens=8
            )
    finally:
        server.stop()
    assert result.error is not None, result
    return "\n".join([r.getMessage() for r in caplog.records] + [f"{result.error.code.value}: {result.error.message}"])


def _message_truncated(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.lm_studio import LMStudioResource

    world.scenario(scenario="loaded", cut_stream_after_chunks=2)
    result = LMStudioResource(base_url=f"{world.emulator_root}/v1", model=DOC_MODEL).complete(
        "Define אב.", max_tokens=32, stream=True
    )
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


def _message_crashed(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.lm_studio import LMStudioResource

    world.scenario(scenario="loaded", crashed=True)
    result = LMStudioResource(base_url=f"{world.emulator_root}/v1", model=DOC_MODEL).complete(
        "Define אב.", max_tokens=8
    )
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


def _message_nothing_loaded(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.lm_studio import LMStudioResource

    world.scenario(scenario="none_loaded")
    result = LMStudioResource(base_url=f"{world.emulator_root}/v1", model=DOC_MODEL).complete(
        "Define אב.", max_tokens=8
    )
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


def _message_substituted(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.lm_studio import LMStudioResource

    world.scenario(scenario="none_loaded", loaded=[OTHER_MODEL])
    with caplog.at_level(logging.WARNING):
        result = LMStudioResource(base_url=f"{world.emulator_root}/v1", model=DOC_MODEL).complete(
            "Define אב.", max_tokens=8
        )
    assert result.ok and result.metadata.model_substituted, result
    return "\n".join(r.getMessage() for r in caplog.records)


def _message_max_tokens(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from gemantria_dag.enrichment.prompt import response_format
    from resources.llm.lm_studio import LMStudioResource

    world.scenario(scenario="loaded")
    result = LMStudioResource(base_url=f"{world.emulator_root}/v1", model=DOC_MODEL).complete(
        "Describe the Hebrew noun אב at length.", max_tokens=16, response_format=response_format()
    )
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


def _message_model_loading(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.lm_studio import LMStudioResource
    from tests.servers.fault_server import FaultServer

    server = FaultServer().start().loading_for(60)
    try:
        result = LMStudioResource(base_url=server.base_url, model=DOC_MODEL, load_timeout_seconds=1.5).complete(
            "Define אב.", max_tokens=8
        )
    finally:
        server.stop()
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


def _message_error_in_200(world: DocsWorld, caplog: pytest.LogCaptureFixture) -> str:
    from resources.llm.remote import RemoteLLMResource
    from tests.servers.fault_server import FaultServer, error_in_200

    server = FaultServer().start()
    try:
        server.script("POST /v1/chat/completions", error_in_200(429))
        result = RemoteLLMResource(
            base_url=server.base_url, model="gpt-4o-mini", max_attempts=1, backoff_base_seconds=0
        ).complete("Define אב.", max_tokens=8)
    finally:
        server.stop()
    assert result.error is not None, result
    return f"{result.error.code.value}: {result.error.message}"


MESSAGES = {
    "max_tokens": _message_max_tokens,
    "model_loading": _message_model_loading,
    "error_in_200": _message_error_in_200,
    "timeout": _message_timeout,
    "rate_limited": _message_rate_limited,
    "truncated": _message_truncated,
    "crashed": _message_crashed,
    "nothing_loaded": _message_nothing_loaded,
    "substituted": _message_substituted,
}


@pytest.mark.parametrize("block", MESSAGE_BLOCKS, ids=[b.id for b in MESSAGE_BLOCKS])
def test_documented_message(block: Block, docs_world: DocsWorld, caplog: pytest.LogCaptureFixture) -> None:
    try:
        printed = MESSAGES[block.args](docs_world, caplog)
    finally:
        docs_world.scenario(scenario="loaded")
    printed = printed.replace(docs_world.emulator_root, "http://localhost:1234")
    missing = missing_lines(block.body, printed)
    assert not missing, f"{block.id}: the project prints\n{printed}\nbut the docs show\n{block.body}"
