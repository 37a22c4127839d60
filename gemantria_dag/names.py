"""Names that more than one module shares: define once here, import everywhere else.

A route is where a call goes; the same word names its Dagster resource key, its backend in a
routing decision and its value of the run tag `BACKEND_TAG`. The control plane's `tool` of a
call is the route's tool name: `TOOL_LM_STUDIO`, or the remote provider's id
(`REMOTE_LLM_PROVIDER`, default `remote_llm`).
"""

from __future__ import annotations

from typing import Final, Literal

# Routes (= resource keys = decision backends = BACKEND_TAG values).
LM_STUDIO: Final = "lm_studio"
REMOTE: Final = "remote"
# The embedded engine: llama.cpp's llama-server, started by the project (gemantria_dag/engine/).
ENGINE: Final = "engine"
NO_BACKEND: Final = "none"
Route = Literal["lm_studio", "remote", "engine"]
Backend = Literal["lm_studio", "remote", "engine", "none"]
# Routes served on this machine: their calls cost nothing (cost_usd 0, price_source PRICE_SOURCE_LOCAL) and
# save what the remote model would have charged (saved_usd).
LOCAL_ROUTES: Final = frozenset({LM_STUDIO, ENGINE})
PRICE_SOURCE_LOCAL: Final = "local"

# The control plane's `tool` of a call: LM Studio's, the embedded engine's (never `lm_studio`), or, for
# the remote, its provider id.
TOOL_LM_STUDIO: Final = "lm_studio"
TOOL_ENGINE: Final = "embedded_engine"

# Asset keys, jobs, the sensor.
HEBREW_NOUNS: Final = "hebrew_nouns"
NOUN_GEMATRIA: Final = "noun_gematria"
NOUN_ENRICHMENTS: Final = "noun_enrichments"
GEMATRIA_JOB: Final = "gematria_job"
ENRICHMENT_JOB: Final = "enrichment_job"
ROUTING_SENSOR: Final = "lm_routing_sensor"

# Run tags: the UI shows them; the run queue limits concurrent runs by BACKEND_TAG.
BACKEND_TAG: Final = "gemantria/llm_backend"
MODEL_TAG: Final = "gemantria/llm_model"

# Materialization metadata of noun_enrichments that the routing sensor reads back.
META_MODEL: Final = "model"
META_PROMPT_VERSION: Final = "prompt_version"

# Resource keys other than the routes'.
CONTROL_PLANE_IO_MANAGER: Final = "control_plane_io_manager"
