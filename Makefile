# The two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint bench quality-control reproduce reproduce-round2 \
	reproduce-round2-transfer clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/htl-ray demo

# two pytest-xdist workers, each with its own Ray session cluster; a module stays on one worker,
# and modules are handed out in collection order (tests/conftest.py puts the longest first;
# xdist's default reorders them by their number of tests)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

# each script prints its ratios as its last lines (docs/benchmarks.md: figures and machine)
BENCHES := training_overhead data_path scorer scaling htl_detection predict gpu_throughput
bench: $(STAMP)
	@for b in $(BENCHES); do echo "=== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

# The reproduction protocol on the real ISIC 2018 data at 128x128 (hours on CPUs; resumable:
# run it again to continue, finished runs are skipped). docs/results.md is regenerated.
ISIC ?= ../shared/data/isic2018-task1-256
SEEDS ?= 3
PROTOCOL := experiments/reproduce/supervised.yaml experiments/reproduce/weak.yaml \
	experiments/reproduce/semi.yaml
data/isic128/manifest.json: | $(STAMP)
	@test -d $(ISIC) || { echo "error: ISIC 2018 data not found at $(ISIC); run 'make reproduce ISIC=/path/to/isic2018-task1'"; exit 1; }
	$(BIN)/htl-ray data ingest --layout isic $(ISIC) --out data/isic128 --size 128
# finished runs are also written to (and first imported from) ARCHIVE: commit it, and a later
# sitting on another machine continues where this one stopped
ARCHIVE ?= experiments/reproduce/archive
reproduce: $(STAMP) data/isic128/manifest.json
	$(BIN)/htl-ray reproduce $(PROTOCOL) --seeds $(SEEDS) --results docs/results.md \
		--archive $(ARCHIVE)

# Round 2 (docs/results.md, "Round 2"): TTA-ranked attention, down-weighting and
# per-group effects, 6 seeds in the weak setting (3 in the supervised one: its sweep.seeds);
# round one's runs of the same configuration are copied from its archive, not trained again
ROUND2 := experiments/reproduce/round2/weak.yaml experiments/reproduce/round2/supervised.yaml
reproduce-round2: $(STAMP) data/isic128/manifest.json
	$(BIN)/htl-ray reproduce $(ROUND2) --seeds 6 --block round2 --results docs/results.md \
		--archive experiments/reproduce/round2/archive

# Round 2, question 4 (docs/results.md): trained without the ISIC archive's MSK-4 collection,
# scored on it as an external test-only dataset; 3 seeds, configurations fixed to round 2's
HELD_OUT := 'lesion_id=MSK4_*'
data/isic-core128/manifest.json: | $(STAMP)
	@test -d $(ISIC) || { echo "error: ISIC 2018 data not found at $(ISIC); run 'make reproduce-round2-transfer ISIC=/path/to/isic2018-task1'"; exit 1; }
	$(BIN)/htl-ray data ingest --layout isic $(ISIC) --out data/isic-core128 --size 128 --drop $(HELD_OUT)
data/isic-msk4-128/manifest.json: | $(STAMP)
	@test -d $(ISIC) || { echo "error: ISIC 2018 data not found at $(ISIC); run 'make reproduce-round2-transfer ISIC=/path/to/isic2018-task1'"; exit 1; }
	$(BIN)/htl-ray data ingest --layout isic $(ISIC) --out data/isic-msk4-128 --size 128 --keep $(HELD_OUT) --all-test
reproduce-round2-transfer: $(STAMP) data/isic-core128/manifest.json data/isic-msk4-128/manifest.json
	$(BIN)/htl-ray reproduce experiments/reproduce/round2/transfer.yaml --seeds 3 \
		--block round2-transfer --external data/isic-msk4-128 --results docs/results.md \
		--archive experiments/reproduce/round2/archive

# docs/quality_control.md: which label-free risk predicts failed segmentations (real ISIC data;
# about 15 minutes on 2 cores, resumable)
quality-control: $(STAMP)
	$(BIN)/python bench/failure_detection.py

# the documentation site (docs/ + the reference generated from the code) into site/; a
# warning fails the build (tests/test_docs.py builds it too)
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check htl_ray tests bench

clean:
	rm -rf $(VENV) mlflow.db mlruns htl_runs data/synthetic sweeps site
