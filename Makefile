# Two entry points for a fresh machine: `make demo` and `make test`.
# Each one creates .venv and installs the project on first use; no root, Docker or cloud account.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ecliptic demo --out out/demo-montage.mp4

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -n 2 --dist loadgroup -q

# Benchmarks print ratios measured in the same run (see docs/benchmarks.md). moviepy, the
# renderer's comparison point, goes into its own environment so the project's stays as tested.
BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet 'moviepy>=2,<3'
	touch $(BENCH_VENV)/.installed

bench: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python bench/bench_x402.py
	$(BIN)/python bench/bench_beats.py
	$(BIN)/python bench/bench_render.py --moviepy-python $(BENCH_VENV)/bin/python

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(BENCH_VENV) out .pytest_cache .ruff_cache
