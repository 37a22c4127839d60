"""The emulated LM Studio's model catalogue (downloaded models) and its scenarios (which are loaded).

Every model here is only a name and a description: generation for any of them is done by the one
upstream model (the real SmolLM2 llama.cpp server). The payload shapes come from LM Studio's docs:
`GET /api/v1/models` (0.4 native), `GET /api/v0/models` (legacy) and `GET /v1/models`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

PRIMARY_MODEL = "smollm2-135m-instruct"
OTHER_MODEL = "qwen2.5-7b-instruct"
THIRD_MODEL = "meta-llama-3.1-8b-instruct"
EMBEDDING_MODEL = "text-embedding-nomic-embed-text-v1.5"


@dataclass(frozen=True)
class ModelSpec:
    key: str
    type: str  # "llm" | "embedding"
    publisher: str
    display_name: str
    architecture: str | None
    quantization: str
    bits_per_weight: float
    size_bytes: int
    params_string: str | None
    max_context_length: int
    loaded_context_length: int
    format: str = "gguf"
    vision: bool = False
    trained_for_tool_use: bool = False

    @property
    def is_llm(self) -> bool:
        return self.type == "llm"

    # -- the three listings ------------------------------------------------------------------
    def v1_native(self, instances: list[tuple[str, int | None]], parallel: int | None = None) -> dict[str, Any]:
        """One entry of `GET /api/v1/models` (LM Studio 0.4); `parallel`: each LLM instance's prediction slots."""
        entry: dict[str, Any] = {
            "type": self.type,
            "publisher": self.publisher,
            "key": self.key,
            "display_name": self.display_name,
        }
        if self.is_llm:
            entry["architecture"] = self.architecture
        entry.update(
            {
                "quantization": {"name": self.quantization, "bits_per_weight": self.bits_per_weight},
                "size_bytes": self.size_bytes,
                "params_string": self.params_string,
                "loaded_instances": [
                    {"id": iid, "config": self.instance_config(ctx, parallel)} for iid, ctx in instances
                ],
                "max_context_length": self.max_context_length,
                "format": self.format,
            }
        )
        if self.is_llm:
            entry["capabilities"] = {"vision": self.vision, "trained_for_tool_use": self.trained_for_tool_use}
            entry["description"] = None
        return entry

    def v0_legacy(self, loaded: bool) -> dict[str, Any]:
        """One entry of `GET /api/v0/models` (LM Studio 0.3.6+, legacy in 0.4)."""
        entry: dict[str, Any] = {
            "id": self.key,
            "object": "model",
            "type": "vlm" if self.vision else ("llm" if self.is_llm else "embeddings"),
            "publisher": self.publisher,
            "arch": self.architecture or "nomic-bert",
            "compatibility_type": self.format,
            "quantization": self.quantization,
            "state": "loaded" if loaded else "not-loaded",
            "max_context_length": self.max_context_length,
        }
        if loaded:
            entry["loaded_context_length"] = self.loaded_context_length
        if self.trained_for_tool_use:
            entry["capabilities"] = ["tool_use"]
        return entry

    def instance_config(self, context_length: int | None = None, parallel: int | None = None) -> dict[str, Any]:
        """A loaded instance's `config`; LLMs carry `parallel` (LM Studio 0.4's "Max Concurrent Predictions",
        4 for JIT and API loads) when given."""
        config: dict[str, Any] = {"context_length": context_length or self.loaded_context_length}
        if self.is_llm:
            config.update({"eval_batch_size": 512, "flash_attention": False, "offload_kv_cache_to_gpu": True})
            if parallel is not None:
                config["parallel"] = parallel
        return config

    def model_info(self) -> dict[str, Any]:
        """The `model_info` object of `/api/v0/chat/completions`."""
        return {
            "arch": self.architecture,
            "quant": self.quantization,
            "format": self.format,
            "context_length": self.loaded_context_length,
        }


def default_catalogue(primary_key: str = PRIMARY_MODEL) -> dict[str, ModelSpec]:
    """The downloaded models. The primary one is the model the project is configured with."""
    models = [
        ModelSpec(
            key=PRIMARY_MODEL,
            type="llm",
            publisher="lmstudio-community",
            display_name="SmolLM2 135M Instruct",
            architecture="llama",
            quantization="Q4_1",
            bits_per_weight=4,
            size_bytes=98_362_432,
            params_string="135M",
            max_context_length=8192,
            loaded_context_length=2048,
        ),
        ModelSpec(
            key=OTHER_MODEL,
            type="llm",
            publisher="lmstudio-community",
            display_name="Qwen2.5 7B Instruct",
            architecture="qwen2",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=4_683_073_952,
            params_string="7B",
            max_context_length=32768,
            loaded_context_length=4096,
            trained_for_tool_use=True,
        ),
        ModelSpec(
            key=THIRD_MODEL,
            type="llm",
            publisher="lmstudio-community",
            display_name="Meta Llama 3.1 8B Instruct",
            architecture="llama",
            quantization="Q4_K_M",
            bits_per_weight=4,
            size_bytes=4_920_739_232,
            params_string="8B",
            max_context_length=131072,
            loaded_context_length=4096,
            trained_for_tool_use=True,
        ),
        # LM Studio ships this one with every install, so it is in every real listing.
        ModelSpec(
            key=EMBEDDING_MODEL,
            type="embedding",
            publisher="gaianet",
            display_name="Nomic Embed Text v1.5",
            architecture=None,
            quantization="F16",
            bits_per_weight=16,
            size_bytes=274_290_560,
            params_string=None,
            max_context_length=2048,
            loaded_context_length=2048,
        ),
    ]
    if primary_key != PRIMARY_MODEL:
        models[0] = replace(models[0], key=primary_key)
    return {m.key: m for m in models}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    loaded: tuple[str, ...]  # "primary" / "other" stand for the primary and the other model
    jit: bool


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("loaded", "the configured model is loaded (the only one); JIT loading on", ("primary",), True),
        Scenario(
            "downloaded",
            "the configured model is downloaded but nothing is loaded; JIT loading on (the first completion loads it)",
            (),
            True,
        ),
        Scenario(
            "none_loaded", "nothing is loaded and JIT loading is off: completions answer 'No models loaded'", (), False
        ),
        Scenario(
            "two_loaded",
            "the configured model and another are loaded; requests are honoured by name",
            ("primary", "other"),
            True,
        ),
        Scenario(
            "one_other_loaded",
            "only another model is loaded and JIT loading is off: a request for the "
            "configured model is answered by the loaded one (substitution)",
            ("other",),
            False,
        ),
    ]
}
DEFAULT_SCENARIO = "loaded"
