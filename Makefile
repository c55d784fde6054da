# `make test` and `make demo` do all set-up on a fresh machine: a .venv with zsk and its dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zsk-installed
# torch and torchvision from the registry's default builds; torchvision must match torch.
TORCH_PINS := torch==2.13.0 torchvision==0.28.0

.PHONY: install test demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

demo: $(STAMP)
	$(BIN)/zsk demo

lint: $(STAMP)
	$(BIN)/ruff check zsk tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
