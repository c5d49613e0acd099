# Front door of the project. Every target creates .venv and installs the package first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY ?= true

# Where pip is capped to the torch wheels that lie on local disk (this workplace's machines), pin
# them so pip never downloads a multi-GB CUDA build. Elsewhere pip resolves torch from pyproject.toml.
ifneq ($(wildcard /etc/xdg/pip/constraints.txt),)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: install sweep train test test-fast ui compare-losses bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_PINS),$(BIN)/python -m pip install --quiet $(TORCH_PINS))
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

sweep: install
	$(BIN)/python -m imbalance_sweep.sweep $(ARGS)

train: install
	$(BIN)/python -m imbalance_sweep.train $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

ui: install
	mkdir -p mlruns
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

gpu-check: install
	bash scripts/gpu_check.sh

bench: install
	$(BIN)/python benchmarks/bench_workers.py

compare-losses: install
	$(BIN)/python -m imbalance_sweep.compare --output docs/loss_comparison_table.md

clean:
	rm -rf outputs multirun .pytest_cache
