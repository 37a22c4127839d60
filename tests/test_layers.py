"""Folders are layers: the core (`gemantria_dag/`) below `resources/`, below `assets/`, with
`gemantria_dag/definitions.py` on top. An import that crosses a layer the wrong way fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("gemantria_dag", "resources", "assets")
TOP = "gemantria_dag.definitions"
# What each layer may import of the project (besides itself); the top may import everything.
ALLOWED: dict[str, set[str]] = {
    "gemantria_dag": set(),
    "resources": {"gemantria_dag"},
    "assets": {"gemantria_dag", "resources"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, at any depth (imports inside functions too)."""
    found: list[tuple[int, str]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from pkg import sub` may import a submodule: count `pkg.sub` too.
            found.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
    return found


def violations(module: str, source: str) -> list[str]:
    """Why each import of `module` breaks the layer rule (empty: none does)."""
    layer = module.split(".")[0]
    if layer not in LAYERS:
        return []
    problems: list[str] = []
    for line, name in imported_modules(source, module):
        target = name.split(".")[0]
        if module == TOP or target not in LAYERS or target == layer and name != TOP:
            continue
        if name == TOP or name.startswith(TOP + "."):
            problems.append(f"{module}:{line} imports {name}: only Dagster loads the top")
        elif target not in ALLOWED[layer]:
            problems.append(
                f"{module}:{line} imports {name}: {layer}/ may import only {sorted(ALLOWED[layer]) or 'itself'}"
            )
    return problems


def _project_modules() -> list[tuple[str, str]]:
    return [(_module_name(p), p.read_text()) for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]


def test_every_import_respects_the_layers() -> None:
    modules = _project_modules()
    assert len(modules) > 40
    assert [v for m, s in modules for v in violations(m, s)] == []


def test_only_the_top_imports_assets() -> None:
    importers = {
        m
        for m, s in _project_modules()
        if not m.startswith("assets")
        for _, name in imported_modules(s, m)
        if name.split(".")[0] == "assets"
    }
    assert importers == {TOP}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "gemantria_dag.routing.live",
            "from resources.llm.lm_studio import LMStudioResource\n",
            "resources.llm.lm_studio",
        ),
        ("gemantria_dag.cli.health", "def f():\n    import resources.llm.remote\n", "resources.llm.remote"),
        ("gemantria_dag.enrichment.steps", "from assets import noun_enrichments\n", "assets"),
        ("resources.llm.backend", "from assets.noun_enrichments import noun_enrichments\n", "assets.noun_enrichments"),
        ("resources.build", "from gemantria_dag.definitions import defs\n", "gemantria_dag.definitions"),
        ("assets.enrichment", "import gemantria_dag.definitions\n", "gemantria_dag.definitions"),
    ],
)
def test_the_rule_catches_a_wrong_import(module: str, source: str, expected: str) -> None:
    found = violations(module, source)
    assert found and expected in found[0]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("gemantria_dag.definitions", "import assets.lexicon\nfrom resources.build import build_resources\n"),
        ("resources.build", "from gemantria_dag.settings import Settings\n"),
        (
            "assets.noun_enrichments",
            "from resources.llm.remote import RemoteLLMResource\nfrom gemantria_dag import names\n",
        ),
        ("gemantria_dag.llm.call", "from gemantria_dag.llm.reply import Reply\nimport httpx\n"),
    ],
)
def test_the_rule_allows_downward_imports(module: str, source: str) -> None:
    assert violations(module, source) == []
