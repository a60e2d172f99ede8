# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Nothing reaches a model hub at run time (see README).
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: setup test demo clean-demo

setup: $(VENV)/.installed

# torch first, from the CPU wheel pinned in pyproject.toml, so nothing resolves to a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/merge-search zoo build studies/zoo --recipe recycle
	$(BIN)/merge-search launch configs/demo.yaml --workers 2
	$(BIN)/merge-search pareto configs/demo.yaml --plot studies/demo/pareto.html
	$(BIN)/merge-search export configs/demo.yaml --knee --out studies/demo/export --force

clean-demo:
	rm -rf studies/demo studies/demo.db
