"""The settings module is the only code that reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("gemantria_dag", "assets", "resources", "benchmarks")
ALLOWED = {ROOT / "gemantria_dag" / "settings.py"}


def _environment_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    hits: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "putenv", "environb"}:
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            names = {a.name for a in node.names} & {"environ", "getenv", "environb"}
            hits.extend(f"{path.relative_to(ROOT)}:{node.lineno} from os import {n}" for n in names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "EnvVar":
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno} EnvVar(...)")
    return hits


def test_only_settings_reads_the_environment() -> None:
    files = [p for folder in CODE_FOLDERS for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 5
    offenders = [hit for p in files if p not in ALLOWED for hit in _environment_reads(p)]
    assert offenders == []


def test_the_check_catches_a_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = os.environ.get('X')\nfrom os import getenv\n")
    bad.rename(ROOT / "resources" / "_probe_env_read.py")
    try:
        hits = _environment_reads(ROOT / "resources" / "_probe_env_read.py")
    finally:
        (ROOT / "resources" / "_probe_env_read.py").unlink()
    assert len(hits) == 2
