"""Model listings as servers send them: LM Studio 0.4 (`/api/v1/models`), legacy LM Studio
(`/api/v0/models`) and OpenAI-compatible servers (`/v1/models`), parsed into one `Listing`. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from gemantria_dag.llm.reply import Lenient
from gemantria_dag.llm.results import ServerKind


class _NativeModel(Lenient):
    """An entry of LM Studio 0.4's `GET /api/v1/models`."""

    key: str
    type: str | None = None
    loaded_instances: list[dict[str, object]] = []


class _NativeListing(Lenient):
    models: list[_NativeModel]


class _LegacyModel(Lenient):
    """An entry of LM Studio's legacy `GET /api/v0/models`."""

    id: str
    type: str | None = None
    state: str


class _LegacyListing(Lenient):
    data: list[_LegacyModel]


class _OpenAIModel(Lenient):
    id: str


class _OpenAIListing(Lenient):
    data: list[_OpenAIModel]


@dataclass(frozen=True, slots=True)
class Listing:
    """A server's models: their ids, which are loaded, and what kind of server said so."""

    models: list[str]
    # None: this server cannot tell which models are loaded.
    loaded: frozenset[str] | None
    kind: ServerKind
    # Predictions each loaded model runs at once, by key and instance id: LM Studio 0.4's
    # `loaded_instances[].config.parallel` ("Max Concurrent Predictions"; 4 for JIT and API loads).
    parallel: dict[str, int] = field(default_factory=dict)


def _instance_parallel(instance: dict[str, object]) -> int | None:
    config = instance.get("config")
    value = config.get("parallel") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_native_listing(content: bytes) -> Listing:
    """LM Studio 0.4's `GET /api/v1/models`; raises pydantic.ValidationError on another shape."""
    body = _NativeListing.model_validate_json(content)
    llms = [m for m in body.models if m.type != "embedding"]
    models = [m.key for m in llms]
    loaded: set[str] = set()
    parallel: dict[str, int] = {}
    for m in llms:
        if m.loaded_instances:
            loaded.add(m.key)
            # A loaded instance can be addressed by its own identifier too.
            loaded.update(str(i["id"]) for i in m.loaded_instances if isinstance(i.get("id"), str))
            for instance in m.loaded_instances:
                slots = _instance_parallel(instance)
                if slots is not None:
                    parallel[m.key] = parallel.get(m.key, 0) + slots  # instances of one key serve it together
                    if isinstance(instance.get("id"), str):
                        parallel[str(instance["id"])] = slots
    return Listing(models=models, loaded=frozenset(loaded), kind="lm_studio", parallel=parallel)


def parse_legacy_listing(content: bytes) -> Listing:
    """LM Studio's legacy `GET /api/v0/models`; raises pydantic.ValidationError on another shape."""
    body = _LegacyListing.model_validate_json(content)
    llms = [m for m in body.data if m.type not in ("embeddings", "embedding")]
    return Listing(
        models=[m.id for m in llms],
        loaded=frozenset(m.id for m in llms if m.state == "loaded"),
        kind="lm_studio_legacy",
    )


def parse_openai_listing(content: bytes) -> Listing:
    """OpenAI's `GET /v1/models` (cannot tell loaded); raises pydantic.ValidationError on another shape."""
    body = _OpenAIListing.model_validate_json(content)
    return Listing(models=[m.id for m in body.data], loaded=None, kind="openai_compatible")
