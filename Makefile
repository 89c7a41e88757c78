# drifting-platform: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install everything the project needs when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv test test-fast demo clean

venv: $(STAMP)

# reinstall when the dependency list changes
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

# the quick subset: everything but the end-to-end runs
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# the main job: the paper's anti-symmetry ablation on digits (Ray Tune + MLflow), one seed
# per row, ~12 min on 2 cores (the local preset's three seeds: drop --seeds 1, ~40 min)
demo: venv
	$(BIN)/python experiments/ablate_antisymmetry.py --preset local --seeds 1

clean:
	rm -rf runs .pytest_cache
