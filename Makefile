# Two commands for a newcomer: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test slow-checks lint bench bench-accuracy pretrained corpus-checks clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on this machine 2.13.0 is a CPU wheel on disk; anything else pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,serve,cluster,opensmile,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stlser demo -o runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not corpus and not slow" tests

# Longer checks CI runs after the suite (e.g. the torch front end's ONNX export at three lengths).
slow-checks: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not corpus" tests

corpus-checks: $(STAMP)
	$(BIN)/python -m pytest -m corpus tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Speed only (features, training step, inference, scaling, service) → docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# Accuracy only: default recognizer, paper network (0/5 STL) and eGeMAPS + SVM on EmoDB, CASIA
# and nEMO, seeds 0-2 → docs/results/accuracy.md. Runs archived in results/accuracy_runs are
# read, not trained; missing runs are trained (resumable, runs/accuracy; needs the corpora;
# several hours on 2 cores for the network systems). ACCURACY_ARGS=--only-finished trains
# nothing: the table from the archive alone.
ACCURACY_ARGS ?=
bench-accuracy: $(STAMP)
	$(BIN)/python -m benchmarks.bench_accuracy --archive results/accuracy_runs \
		--rows-from results/accuracy_nemo_network.md \
		--out docs/results/accuracy.md $(ACCURACY_ARGS)

# The general model shipped in the package (src/stlser/models/base.{pt,onnx}) from every corpus
# under ../shared/corpora, plus its leave-one-corpus-out scores (runs/pretrained/loco.md).
pretrained: $(STAMP)
	$(BIN)/stlser pretrain --config configs/pretrain.yaml -o runs/pretrained --loco
	mkdir -p src/stlser/models
	cp runs/pretrained/model.pt src/stlser/models/base.pt
	cp runs/pretrained/model.onnx src/stlser/models/base.onnx
	sha256sum src/stlser/models/base.pt src/stlser/models/base.onnx

clean:
	rm -rf $(VENV) runs .pytest_cache
