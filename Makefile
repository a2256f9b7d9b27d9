# Every target sets itself up: a virtualenv in .venv, the pinned packages, and (through Maven)
# the jars of the local stack. Prerequisites: Python 3.11+, Java 17, Maven; `make test` also needs Go
# (kustomize is built from its module) and Debian's package tools (apt-get download, dpkg-deb) for the
# Prometheus of the deployment tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` leaves the cluster tier out (it needs the three-node cluster); `make test-cluster` runs it alone.
TEST_MARKERS ?= not cluster
CLUSTER_PYTEST_ARGS ?=

.PHONY: venv feast-venv tools demo test test-cluster lint bench stack-up stack-down stack-status cluster-down clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Feast 0.67 in its own virtualenv, for the compatibility tests and benchmark anchors (created on first use).
feast-venv: $(STAMP)
	$(BIN)/python -m stack.feastenv

# kustomize (built from its Go module) and Prometheus/promtool (Debian's package, unpacked) for tests/deploy.
tools: $(STAMP)
	$(BIN)/python -m stack.tools

bench: $(STAMP)
	$(BIN)/python -m bench.decode
	$(BIN)/python -m bench.e2e

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) tools
	$(BIN)/python -m pytest -m "$(TEST_MARKERS)" $(PYTEST_ARGS)

# The cluster tier (tests/cluster): starts the three-node cluster if none runs, and stops what it started.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster tests/cluster $(CLUSTER_PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check consumer stack tests bench examples
	$(BIN)/mypy

stack-up: $(STAMP)
	$(BIN)/python -m stack.localstack up

stack-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m stack.localstack down; else $(PYTHON) -m stack.localstack down; fi

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m stack.localstack down --cluster; else $(PYTHON) -m stack.localstack down --cluster; fi

stack-status: $(STAMP)
	$(BIN)/python -m stack.localstack status

clean: stack-down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
