# The two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/htl-ray demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

# each script prints its ratios as its last lines (docs/benchmarks.md: figures and machine)
BENCHES := training_overhead data_path scorer scaling htl_detection
bench: $(STAMP)
	@for b in $(BENCHES); do echo "=== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check htl_ray tests bench

clean:
	rm -rf $(VENV) mlflow.db mlruns htl_runs data/synthetic
