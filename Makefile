# Signet's developer interface. CI runs `.ci/run`, which calls these targets.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: e2e-kind all build test test-setup lint fmt crds bench bench-compare bench-cluster fuzz demo standalone images e2e cluster-up cluster-down clean

all: build

build:
	$(CARGO) build --workspace --all-targets

## test: unit, integration and standalone end-to-end tests (no Kubernetes
## needed). The end-to-end tests run the real binaries, so build them first.
test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## test-setup: what the tests use from outside Rust (as root): Docker and
## Podman for the attestor tests, py-spiffe, spire-agent (go-spiffe),
## spire-server and a go-spiffe mTLS workload for interop and federation,
## csi-sanity for signet-csi.
test-setup:
	bash node-agent/tests/setup-docker.sh
	bash node-agent/tests/setup-podman.sh
	bash e2e/tools/install-interop.sh
	bash csi-driver/tests/setup-csi-sanity.sh
	bash e2e/cluster/build-tools.sh helm

## lint: formatting, clippy with warnings as errors, no import loops
## between the files of a crate
lint:
	$(CARGO) fmt --all -- --check
	python3 scripts/check-import-cycles.py node-agent/src operator/src policy/src csi-driver/src identity/src cli/src
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## crds: regenerate the CRD YAML in crds/ from the Rust types
crds:
	$(CARGO) run -q -p signet-policy --bin crdgen -- crds
	$(CARGO) run -q -p signet-policy --bin crdgen -- --readme README.md
	cp crds/signet.dev_*.yaml charts/signet/crds/

## bench: criterion benchmarks (policy, identity, agent, issuer, cold issuance)
bench:
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench --workspace

## bench-compare: Signet next to SPIRE 1.13.3 on this machine with the same
## go-spiffe client: cached FetchX509SVID/FetchJWTSVID throughput and
## latency, identity-created-to-SVID time, agent memory with 100 and 1,000
## workloads (as root, after `make test-setup`; a few minutes). Results and
## method: docs/benchmarks.md
bench-compare:
	$(CARGO) build --release --workspace --bins
	SIGNET_BENCH_COMPARE=1 $(CARGO) bench -p signet-e2e --bench bench_compare

## fuzz: every fuzz target for FUZZ_CASES inputs (default 10^6; `make test`
## runs a short pass)
FUZZ_CASES ?= 1000000
fuzz:
	$(CARGO) run -q -p signet-fuzz -- --cases $(FUZZ_CASES)

## demo: operator + agent in a temp dir, SVIDs fetched, mTLS between two processes
demo:
	bash scripts/demo.sh

## standalone: the same stack in the foreground until Ctrl-C
standalone:
	bash scripts/demo.sh standalone

## images: OCI images of the binaries, imported into the local containerd
images:
	bash e2e/images/build-all.sh

## cluster-up / cluster-down: a real single-node Kubernetes on this machine
## bench-cluster: the benchmarks that need the local cluster (make
## cluster-up, e2e/images/build-all.sh): operator memory with 10,000 pods
## (SIGNET_BENCH_PODS=100000 for 100,000),
## binding to SVID-ready with 100 pods created at once
bench-cluster:
	$(CARGO) build --release --workspace --bins
	. /var/lib/signet-e2e/env && SIGNET_E2E_CLUSTER=1 $(CARGO) bench -p signet-e2e --bench operator_memory
	. /var/lib/signet-e2e/env && SIGNET_E2E_CLUSTER=1 $(CARGO) bench -p signet-e2e --bench pod_bind_ready

cluster-up:
	bash e2e/cluster/up.sh

cluster-down:
	bash e2e/cluster/down.sh

## e2e: the cluster suite (brings the local cluster up when KUBECONFIG is
## unset): smoke checks, the agent as a DaemonSet attesting real pods, and
## signet-csi registering with the real kubelet.
e2e:
	@if [ -z "$${KUBECONFIG:-}" ]; then bash e2e/cluster/up.sh; fi
	bash e2e/cluster/smoke.sh
	bash e2e/images/build-all.sh signet-operator signet-agent signet-csi signet-mtls-example
	$(CARGO) build --workspace --bins
	. /var/lib/signet-e2e/env && SIGNET_E2E_CLUSTER=1 $(CARGO) test -p signet-e2e --test cluster_operator -- --nocapture
	. /var/lib/signet-e2e/env && SIGNET_E2E_CLUSTER=1 $(CARGO) test -p signet-e2e --test cluster_helm -- --nocapture
	. /var/lib/signet-e2e/env && SIGNET_E2E_CLUSTER=1 $(CARGO) test -p signet-e2e --test cluster_agent -- --nocapture
	. /var/lib/signet-e2e/env && SIGNET_E2E_CLUSTER=1 $(CARGO) test -p signet-csi --test kubelet_registration -- --nocapture

## e2e-kind: the same suite on a kind cluster (needs Docker and kind; not run in CI here)
e2e-kind:
	bash e2e/kind/run.sh

clean:
	$(CARGO) clean
