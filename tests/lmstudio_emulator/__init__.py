"""A faithful LM Studio on loopback: its HTTP API emulated in front of a real llama.cpp engine.

LM Studio cannot run on the test machines, so this server speaks its API (as LM Studio's docs and
issue tracker describe it) and forwards generation to llama.cpp's `llama-server` serving SmolLM2
(LM Studio runs llama.cpp too): answers, token counts and timings stay real, while the catalogue,
loading and LM Studio's quirks are modelled.

    python -m tests.lmstudio_emulator --upstream http://127.0.0.1:8000/v1 --port 1234 [--token T] \
        [--jit-load-seconds S] [--scenario loaded|downloaded|none_loaded|two_loaded|one_other_loaded]

LM Studio routes
- `GET /lmstudio-greeting` -> `{"lmstudio": true}` (never needs the token: LM Studio's CLI and SDK
  probe it before they know one).
- `GET /api/v1/models` (0.4 native, `loaded_instances`, each LLM instance's `config.parallel` =
  `--max-predictions`, as LM Studio 0.4 reports its "Max Concurrent Predictions"), `GET /api/v0/models` and
  `GET /api/v0/models/{key}` (legacy, `state`), `GET /v1/models` (every downloaded model while JIT
  loading is on; only the loaded ones while it is off).
- `POST /api/v1/models/load` `{"model", "config"?}` (takes `jit_load_seconds`, returns
  `model_instance_id`, `config`, `load_time_seconds`; loading a loaded model adds `key:2`) and
  `POST /api/v1/models/unload` `{"instance_id"}`.
- `POST /v1/chat/completions`, `/v1/completions`, and `/api/v0/chat/completions`,
  `/api/v0/completions` (the same plus `stats`, `model_info`, `runtime`; `stats` come from
  llama-server's `timings`, which are dropped from every answer). Streaming (`"stream": true`) is
  forwarded chunk by chunk; `stream_options.include_usage` adds llama-server's final usage chunk.
- Anything else: HTTP 200 `{"error": "Unexpected endpoint or method. (GET /health)"}`.
- With a token set, every route but the greeting answers 401
  `{"error": {"type": "invalid_request", "code": "invalid_api_key", "message": ...}}` without
  `Authorization: Bearer <token>`.

Which model answers (`resolve` in app.py)
1. A loaded model (by key or instance id) answers for itself.
2. JIT on and a downloaded model named: it is loaded just in time (`jit_load_seconds`), then answers;
   with auto-evict (default) models loaded by an earlier JIT load are unloaded first.
3. Exactly one model loaded (and `substitution` on): it answers whatever was named, and the response's
   `model` is the loaded one (a substitution). With JIT on this happens only for names that are not
   downloaded; with JIT off it happens for every name.
4. Nothing loaded and JIT off: 400 (`no_models_status`) `{"error": {"message": "No models loaded. ...",
   "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}`.
5. Otherwise: 404 with code `model_not_found`.
Other errors: crashed model -> 400 `{"error": "The model has crashed without additional information.
(Exit code: null)"}`; `response_format` `json_object` -> 400 `{"error": "'response_format.type' must be
'json_schema' or 'text'"}` (both plain strings, as LM Studio sends them); `json_schema` (and `text`)
is accepted and sent upstream as it came: llama-server takes it as LM Studio does.

Predictions: at most `--max-predictions` (4) at once, the rest queued; llama-server serves them in
parallel (give it as many `--parallel` slots).

Test control (not LM Studio): `GET /__admin/state`, `GET /__admin/stats`, `POST /__admin/scenario`
(`{"scenario"?: name, "loaded"?: [keys], <knob>: value, ...}`: with a scenario it resets to it first,
without one it patches), `POST /__admin/reset`, `POST /__admin/reset-counters`. Knobs: see `Knobs`.
"""

from tests.lmstudio_emulator.app import EmulatorConfig, Knobs, make_app
from tests.lmstudio_emulator.catalogue import (
    DEFAULT_SCENARIO,
    EMBEDDING_MODEL,
    OTHER_MODEL,
    PRIMARY_MODEL,
    SCENARIOS,
    THIRD_MODEL,
)

__all__ = [
    "DEFAULT_SCENARIO",
    "EMBEDDING_MODEL",
    "OTHER_MODEL",
    "PRIMARY_MODEL",
    "SCENARIOS",
    "THIRD_MODEL",
    "EmulatorConfig",
    "Knobs",
    "make_app",
]
