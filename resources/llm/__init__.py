"""LLM backends as Dagster resources: LM Studio and remote OpenAI-compatible APIs.

The resource classes are imported lazily so that `resources.llm.results` and
`resources.llm.probe` (used by the CLI's health commands) load without importing Dagster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resources.llm.results import (
    CompletionMetadata,
    CompletionResult,
    ErrorCode,
    HealthDetails,
    HealthResult,
    LLMError,
    ProbeStep,
)

if TYPE_CHECKING:
    from resources.llm.base import LLMBackend
    from resources.llm.lm_studio import LMStudioResource
    from resources.llm.remote import RemoteLLMResource

__all__ = [
    "CompletionMetadata",
    "CompletionResult",
    "ErrorCode",
    "HealthDetails",
    "HealthResult",
    "LLMBackend",
    "LLMError",
    "LMStudioResource",
    "ProbeStep",
    "RemoteLLMResource",
]

_LAZY = {
    "LLMBackend": "resources.llm.base",
    "LMStudioResource": "resources.llm.lm_studio",
    "RemoteLLMResource": "resources.llm.remote",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
