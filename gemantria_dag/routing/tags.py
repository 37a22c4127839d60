"""Run tags that carry the routing decision (the UI shows them; the run queue limits by them)."""

BACKEND_TAG = "gemantria/llm_backend"
MODEL_TAG = "gemantria/llm_model"
