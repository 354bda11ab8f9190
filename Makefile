# The two commands of the contract: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TYPECHECK := build/typecheck

.PHONY: venv test test-fast lint typecheck demo clean gpu-check gpu-check-smoke

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

# The GPU check (bench/gpu_check.py, docs/BENCHMARKS.md): run unchanged on a GPU box with python3,
# torch (CUDA), transformers, peft, pandas and pyarrow, no Ray and no network. It installs the wheels
# scripts/gpu_wheels.sh left in .whl/ (chronos-forecasting, timesfm; fmtrade itself runs from the tree
# via PYTHONPATH, without its heavy dependencies); a family whose library is missing is reported and
# skipped. Every step has a timeout: the check ends within ~8 minutes whatever happens.
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/fmtrade-gpu-site
WHL_DIR ?= .whl
GPU_CHECK_ARGS ?= --out build/gpu-check
gpu-check:
	@if ls $(WHL_DIR)/*.whl > /dev/null 2>&1; then \
	  timeout 120 $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	    --target $(GPU_SITE) $(WHL_DIR)/*.whl || echo "gpu-check: installing $(WHL_DIR) failed: families needing it are skipped"; \
	else echo "gpu-check: no $(WHL_DIR)/ (run scripts/gpu_wheels.sh where pip works): families needing it are skipped"; fi
	PYTHONPATH=$(CURDIR):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
	  timeout -k 10 480 $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# The same code paths on CPU at the zoo's tiny size (what CI runs; tests/test_gpu_check.py).
gpu-check-smoke: venv
	timeout -k 10 600 $(BIN)/python bench/gpu_check.py --smoke --out build/gpu-check-smoke

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
