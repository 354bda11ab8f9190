# The two commands of the contract: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TYPECHECK := build/typecheck

.PHONY: venv test test-fast lint typecheck demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned to the release the CPU wheel on disk provides, so the
# editable install below never pulls a multi-GB CUDA build on a CPU machine.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the package as installed (fmtrade.serve & co. linked under build/typecheck).
typecheck: venv
	$(BIN)/python -m fmtrade.cluster.package --link $(TYPECHECK) > /dev/null
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p fmtrade

test: lint typecheck
	$(BIN)/python -m pytest

# The edit loop: everything but the slow end-to-end tests.
test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow"

demo: venv
	$(BIN)/fmtrade demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
