# `make test` and `make demo` do all set-up on a fresh machine: a .venv with zsk and its dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zsk-installed
# torch and torchvision from the registry's default builds (CUDA-enabled wheels that also run on CPU);
# torchvision must match torch. `--isolated` makes pip ignore machine-wide find-links that may hold a
# CPU-only torch build, which torchvision's default (CUDA) wheel cannot load its operators against.
TORCH_PINS := torch==2.13.0 torchvision==0.28.0

.PHONY: install test demo lint perf clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip --isolated install --quiet $(TORCH_PINS)
	$(BIN)/python -c "import torchvision.ops"  # fails early if torch and torchvision do not match
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

demo: $(STAMP)
	$(BIN)/zsk demo

perf: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python tools/perf.py all --out perf.jsonl

lint: $(STAMP)
	$(BIN)/ruff check zsk tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
