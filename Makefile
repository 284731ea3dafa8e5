# Two commands do everything: `make run` and `make test`. The rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
WASM_RAW := target/wasm32-wasip1/release/mcpgw.wasm
WASM := target/mcpgw.wasm

.PHONY: help setup build wasm sidecar oci-test kube-test test test-unit test-wasm test-e2e conformance bench bench-memory bench-smoke soak churn fuzz fuzz-smoke lint fmt run clean

help:
	@echo "make run    build and start Envoy + plugin + sidecar + example MCP servers on 127.0.0.1"
	@echo "           (make run CONFIG=servers.yaml: the same gateway over your own servers)"
	@echo "make test   everything CI runs: lint, unit tests (native and wasm32-wasip1), end-to-end, MCP conformance,"
	@echo "           OCI image + Istio manifests, Kubernetes mode on a real API server, bench smoke, fuzz smoke"
	@echo "make fuzz   every fuzz target for FUZZ_SECONDS each (default 600; docs/fuzzing.md)"
	@echo "make bench  side-by-side benchmarks (~20 min), rewrites docs/benchmarks.md (BENCH_ARGS=--gate: exit 1 on an unmet target)"
	@echo "make soak   10 minutes of mixed MCP traffic against make run's gateway: errors, p99 drift, RSS plot (SOAK_MINUTES=)"
	@echo "make churn  30 minutes of keep-alive load under configuration churn and health flaps (CHURN_MINUTES=)"

setup:
	@scripts/setup.sh

wasm: setup
	./build.sh

sidecar: setup
	cargo build -p mcpgw-sidecar

build: wasm sidecar

lint: setup
	cargo fmt --all --check
	cargo fmt --manifest-path fuzz/Cargo.toml --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p mcpgw-sidecar --features kube --all-targets -- -D warnings
	cargo clippy -p mcpgw -p mcpgw-core --target wasm32-wasip1 --all-targets -- -D warnings
	cargo clippy -p mcpgw --target wasm32-wasip1 --features fault-injection -- -D warnings

test-unit: setup
	cargo test --workspace
	cargo test -p mcpgw-sidecar --features kube

test-wasm: setup
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(CURDIR)/$(VENV)/bin/python $(CURDIR)/scripts/wasi-runner.py" \
		cargo test -p mcpgw-core --target wasm32-wasip1

test-e2e: wasm sidecar
	$(VENV)/bin/python -m pytest -q tests/e2e

# The official MCP conformance suite directly against tests/servers/conformance_server.py and through
# the gateway (tests/conformance/run.py; expected failures: tests/conformance/expected-failures.yml),
# then its 0.2.0-alpha pre-release's 2026-07-28 and 2025-11-25 requirement sets (run_next.py).
conformance: wasm sidecar
	$(VENV)/bin/python tests/conformance/run.py
	$(VENV)/bin/python tests/conformance/run_next.py

# The Wasm OCI image and wasmplugin/ checked with Istio's own code (tests/oci): build.sh pushes to a
# registry on 127.0.0.1, Istio's image fetcher pulls it back, the manifests are rendered, validated
# against the Istio and Gateway API CRDs and turned into the Envoy filter by istiod's and the
# istio-agent's code. The Go checker is built once into ~/.cache/mcpgw (first run: minutes).
oci-test: wasm sidecar
	@scripts/setup.sh --oci
	$(VENV)/bin/python -m pytest -q tests/oci

# Kubernetes mode against a real kube-apiserver + etcd on 127.0.0.1 (tests/kube): the seed guide's
# YAML applied verbatim, the sidecar (built with --features kube) under its least-privilege RBAC,
# Envoy and the plugin; every wasmplugin/ install dry-run applied with the Istio and Gateway API
# CRDs. kube-apiserver is built from the Go module proxy once per machine (scripts/kube.sh).
kube-test: wasm
	@scripts/setup.sh --oci
	@scripts/setup.sh --kube
	$(VENV)/bin/python -m pytest -q tests/kube

bench: wasm
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# Idle Envoy RSS per variant (plain, wasm floor, mcpgw with small and large catalogs) at 1 and 4
# workers: where the plugin's memory goes (docs/architecture.md, "Memory").
bench-memory: wasm
	$(VENV)/bin/python bench/memory.py

bench-smoke: wasm
	$(VENV)/bin/python bench/run.py --smoke

# Mixed traffic against `make run`'s gateway (tests/stress/soak.py): writes docs/soak.svg (RSS and
# p99 over time) and target/soak/soak.json; fails on any error. Short mode in `make test`.
SOAK_MINUTES ?= 10
soak: wasm sidecar
	$(VENV)/bin/python tests/stress/soak.py --minutes $(SOAK_MINUTES) --json target/soak/soak.json --svg docs/soak.svg

# Keep-alive load under configuration churn and health flaps (tests/stress/churn.py).
CHURN_MINUTES ?= 30
churn: wasm sidecar
	$(VENV)/bin/python tests/stress/churn.py --minutes $(CHURN_MINUTES) --seconds 45 --json target/churn.json

# The fuzz targets (fuzz/, nightly + cargo-fuzz, installed by scripts/fuzz.sh): a few seconds each
# in `make test`, FUZZ_SECONDS each (default 10 minutes) in `make fuzz`.
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 5

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

fuzz-smoke:
	FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) scripts/fuzz.sh

test: lint test-unit test-wasm test-e2e conformance oci-test kube-test bench-smoke fuzz-smoke

run: wasm sidecar
	$(VENV)/bin/python scripts/run.py $(if $(CONFIG),--config $(CONFIG))

fmt:
	cargo fmt --all
	cargo fmt --manifest-path fuzz/Cargo.toml

clean:
	cargo clean
	rm -rf fuzz/target
