# Ekko's developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help install lint unit e2e test crds chart-crds tools cluster-up cluster-down demo bench clean

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install ekko with its dev tools

lint: install ## Ruff, ruff format, mypy --strict and the import-layer contracts
	$(BIN)/ruff check ekko tests e2e bench
	$(BIN)/ruff format --check ekko tests e2e bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install ## Unit tests (no cluster, fast)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

tools: install ## Build/install the control plane binaries (cached in ~/.cache/ekko) and Debian's Prometheus
	$(BIN)/python -m e2e.cluster build
	bash e2e/install-prometheus.sh

prometheus3: install ## Prometheus 3 with Kubernetes discovery, from its Go module (real-node tests; cached; long the first time)
	$(BIN)/python -m e2e.cluster build prometheus

e2e: tools prometheus3 ## End-to-end tests against the local control plane (starts it and, as root, the real node)
	$(BIN)/python -m pytest e2e -m e2e --real-node $(PYTEST_ARGS)

test: lint unit bench-updates e2e ## Everything CI runs: lint, unit tests, the quick update-plane bench, e2e tests

crds: install ## Regenerate crds/ from the api types (and the Helm chart's copies)
	$(BIN)/python -m ekko.api.crdgen crds
	$(BIN)/python -m ekko.api.docgen docs/api.md
	$(MAKE) chart-crds

chart-crds: ## Copy crds/ and the Grafana dashboard into the Helm chart
	rm -f charts/ekko/files/crds/*.yaml
	cp crds/*.yaml charts/ekko/files/crds/
	cp docs/dashboards/ekko.json charts/ekko/files/dashboards/ekko.json

cluster-up: tools ## Start the local control plane; prints the KUBECONFIG to export
	$(BIN)/python -m e2e.cluster up

cluster-down: install ## Stop the local control plane
	$(BIN)/python -m e2e.cluster down

demo: tools ## The operator on the local control plane: placement and a rollout
	$(BIN)/python -m e2e.demo

bench: install ## Placement benchmark (quick sizes); see docs/benchmarks.md for the full runs
	$(BIN)/python -m bench.placement --quick

clean: ## Remove the venv and caches kept in the repository (not ~/.cache/ekko)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

bench-updates: install ## Update data-plane benchmark, quick sim (CI runs it)
	$(BIN)/python -m bench.updates --mode sim --quick --json $(or $(JSON),/tmp/ekko-bench-updates.json)

.PHONY: cluster-up-real image e2e-real prometheus3
cluster-up-real: tools ## The local control plane plus a real node (containerd, kubelet; root)
	$(BIN)/python -m e2e.cluster up --real-node

image: install ## The Ekko image without Docker (mmdebstrap + umoci; cached in ~/.cache/ekko/images)
	$(BIN)/python -m e2e.image build

e2e-real: tools prometheus3 image ## E2E tests on the real node (brings it up; leaves the cluster running)
	$(BIN)/python -m e2e.cluster up --real-node
	$(BIN)/python -m pytest e2e/test_realnode.py -m e2e --real-node $(PYTEST_ARGS)
