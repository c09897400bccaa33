# make setup | demo | test | lint | bench — each builds the environment first when it is missing.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint lock clean bench bench-overhead bench-sweep bench-deploy bench-serve bench-train

setup:
	@bash scripts/setup_env.sh

$(BIN)/trimlab-train:
	@bash scripts/setup_env.sh

demo: $(BIN)/trimlab-train
	$(BIN)/trimlab-train

# Two test processes (pytest-xdist), a test file each at a time, longest first (tests/conftest.py): the suite
# fits its 15 minutes on 2 cores.
test: $(BIN)/trimlab-train
	$(BIN)/ruff check src tests experiments
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

lint: $(BIN)/trimlab-train
	$(BIN)/ruff check src tests experiments
	$(BIN)/ruff format --check src tests experiments

# Benchmarks: figures land in experiments/ (see each folder's README).
bench: bench-overhead bench-sweep

bench-overhead: $(BIN)/trimlab-train
	$(BIN)/python experiments/overhead/bench.py

bench-sweep: $(BIN)/trimlab-train
	$(BIN)/python experiments/overhead/sweep_bench.py

# The deploy targets on MNIST, SST-2 and FSDD models, and the peer row (needs the datasets: TRIMLAB_DATA).
bench-deploy: $(BIN)/trimlab-train
	$(BIN)/python experiments/deploy/bench.py

# A fresh digits run behind trimlab-serve, loaded by trimlab-loadtest (experiments/serving; --all adds MNIST, SST-2).
bench-serve: $(BIN)/trimlab-train
	$(BIN)/python experiments/serving/bench.py

# Time to a stated val accuracy: plain PyTorch loops, trimlab's default, its speedup recipes; 4 tasks, 3 seeds
# (experiments/training; needs the datasets: TRIMLAB_DATA).
bench-train: $(BIN)/trimlab-train
	$(BIN)/python experiments/training/bench.py

# Re-pin every package after changing dependencies in pyproject.toml.
lock: $(BIN)/trimlab-train
	{ head -3 requirements.lock; $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf outputs multirun .pytest_cache
