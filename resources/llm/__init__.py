"""LLM backends as Dagster resources: `LMStudioResource` and `RemoteLLMResource`, one result type
(`gemantria_dag.llm.results`), one call loop (`backend.py`) over shared connection pools (`pools.py`)."""
