# Two commands for a newcomer: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-accuracy corpus-checks clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on this machine 2.13.0 is a CPU wheel on disk; anything else pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,serve,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stlser demo -o runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not corpus" tests

corpus-checks: $(STAMP)
	$(BIN)/python -m pytest -m corpus tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The accuracy goals (network vs eGeMAPS + SVM, LOSO on EmoDB and CASIA): about 45 min.
bench-accuracy: $(STAMP)
	$(BIN)/python benchmarks/bench_accuracy.py --out docs/results/accuracy.md

clean:
	rm -rf $(VENV) runs .pytest_cache
