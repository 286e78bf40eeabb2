# outbox-pipeline. `make run` and `make test` work on a fresh machine: they create .venv
# from uv.lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= .outbox-data

.PHONY: run test test-unit test-integration lint format protos faults bench bench-scale browser clean

# Installs exactly what uv.lock pins (hashes checked): uv itself comes from the lock too,
# bootstrapped once with pip, then `uv sync` makes the venv match the lock exactly.
# `--locked` fails when pyproject.toml changed without `uv lock` (run `$(BIN)/uv lock`).
$(STAMP): pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || { $(PYTHON) .ci/uv_requirements.py > $(VENV)/uv-requirements.txt \
		&& $(BIN)/python -m pip install --quiet --require-hashes --only-binary=:all: \
			-r $(VENV)/uv-requirements.txt; }
	UV_PYTHON_DOWNLOADS=never $(BIN)/uv sync --quiet --locked --extra dev --python $(BIN)/python
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/outbox dev --data-dir $(DATA_DIR)

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Debian's Chromium for the status page's browser test, installed when missing (as root, as
# CI runs; otherwise it prints what to run and that test fails saying so).
browser:
	bash .ci/install_browser.sh

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP) browser
	$(BIN)/python -m pytest -q tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerate the gRPC stubs (typed, via mypy-protobuf). tests/unit/test_protos.py proves they are current.
protos: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I . \
		--python_out=. --mypy_out=. --grpc_python_out=. --mypy_grpc_out=. \
		protos/auth/v1/auth.proto

# Every fault scenario (kills, history-loss, split-relays, skewed-clocks); one line each.
faults: $(STAMP)
	$(BIN)/python -m faults

bench: $(STAMP)
	$(BIN)/python -m bench.run

# `make bench` plus how cost grows (backlog, document size, concurrency): docs/performance.md.
bench-scale: $(STAMP)
	$(BIN)/python -m bench.run --scale

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
