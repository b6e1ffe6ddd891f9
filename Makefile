# The two commands a newcomer runs: `make demo` and `make test`.
# Both create or refresh .venv (Python 3.11) and install everything the project needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.consortium-installed

.PHONY: demo test install lint typecheck unit bench clean test-container

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml scripts/install-llama-cpp.sh
	bash scripts/install-llama-cpp.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,transformers]'
	bash scripts/install-llama-cpp.sh $(BIN)/python
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/consortium demo

lint: install
	$(BIN)/ruff check consortium tests benchmarks
	$(BIN)/ruff format --check consortium tests benchmarks
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy --strict consortium

unit: install
	bash scripts/install-chromium.sh
	bash scripts/install-postgres.sh
	$(BIN)/python -m pytest -q

test: lint typecheck unit

# The node's container image and compose file (deploy/container/, deploy/README.md): not
# part of `make test`. Installs podman, podman-compose and mmdebstrap (apt) if missing,
# makes the Debian base image once, builds the image (reusing the host's llama-cpp-python
# wheel), runs three organizations and a collector from compose.yaml and asks across them.
test-container: install
	bash deploy/container/build.sh
	CONSORTIUM_TEST_CONTAINER=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy/test_container.py

bench: install
	$(BIN)/python benchmarks/node_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
