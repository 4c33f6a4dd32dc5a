# Signet's developer interface. CI runs `.ci/run`, which calls these targets.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test lint fmt crds bench demo standalone images e2e e2e-kind cluster-up cluster-down clean

all: build

build:
	$(CARGO) build --workspace --all-targets

## test: unit, integration and standalone end-to-end tests (no Kubernetes needed)
test:
	$(CARGO) test --workspace

## lint: formatting, clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## crds: regenerate the CRD YAML in crds/ from the Rust types
crds:
	$(CARGO) run -q -p signet-policy --bin crdgen -- crds

## bench: criterion benchmarks
bench:
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean
