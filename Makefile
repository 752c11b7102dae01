# kvgate: `make up` runs the main job, `make test` runs every gate CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ENGINE ?= vllm
# Where `make vllm` puts the engine's own virtual environment (kept apart from kvgate's).
export KVGATE_VLLM_VENV ?= $(CURDIR)/.venv-vllm

.PHONY: install lint typecheck unit test up image clean help browser

help:
	@echo "make up            install what is needed, then kvgate up (real vLLM replicas of SmolLM2 on CPU)"
	@echo "make up ENGINE=sim the same cluster with simulated replicas"
	@echo "make test          ruff, mypy and pytest (includes the real-vLLM tier)"
	@echo "make vllm          create the vLLM engine environment ($(KVGATE_VLLM_VENV))"
	@echo "make model         prepare SmolLM2-135M-Instruct for vLLM (kvgate model prepare)"
	@echo "make image         build localhost/kvgate:<version> (deploy/image/build.sh; not part of make test)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	@# xds-protos (extproc) ships an older copy of opentelemetry/proto/*_pb2.py; whichever pip
	@# unpacks last wins, and the OTLP exporter (tracing) needs opentelemetry-proto's own
	$(BIN)/pip install -q --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q -m "not vllm"

include mk/vllm.mk

# tests/e2e/test_dashboard_browser.py drives a headless Chromium; it fails (never skips)
# without one, so install Debian's package when we can (root with apt-get), else say how.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	else echo "make: no Chromium: install it (sudo apt-get install -y chromium) or tests/e2e/test_dashboard_browser.py fails"; fi

# --durations: the slowest tests, so the CI log shows where make test's 15 minutes go.
# timeout: pytest-timeout bounds each test, not the interpreter's exit; a thread left running
# (once, a gRPC server a failed start never stopped) must fail the gate, not hold CI for hours
test: install lint typecheck vllm model browser
	timeout --kill-after=30 1500 $(BIN)/pytest -q --durations=15

up: install
ifeq ($(ENGINE),sim)
	$(BIN)/kvgate up --engine sim
else
	$(MAKE) vllm model
	$(BIN)/kvgate up --engine $(ENGINE)
endif

# Minutes (a Debian root filesystem and every wheel): kept out of `make test`, whose
# tests/k8s/test_image.py runs the image only when it exists.
image: install
	PYTHON=$(CURDIR)/$(BIN)/python deploy/image/build.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
