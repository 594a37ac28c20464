# Two entry points (see README.md): `make run` (the benchmark) and `make test` (the test suite).
# Each creates .venv on first use and installs the pinned dependencies (constraints.txt).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
SNAKEMAKE_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test bench lint dry-run mlflow-ui clean-results

$(BIN)/kdseg-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cluster]'
	touch $@

run: $(BIN)/kdseg-installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --printshellcmds \
	  --show-failed-logs $(SNAKEMAKE_ARGS)

test: $(BIN)/kdseg-installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# The performance benchmark (docs/performance.md): every stage against a same-process reference.
bench: $(BIN)/kdseg-installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m kdseg bench --out results/benchmarks \
	  $(BENCH_ARGS)

lint: $(BIN)/kdseg-installed
	$(BIN)/ruff check src tests
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

dry-run: $(BIN)/kdseg-installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -n --cores $(CORES) $(SNAKEMAKE_ARGS)

mlflow-ui: $(BIN)/kdseg-installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --port 5000
