#!/usr/bin/env bash
# Builds the plugin for wasm32-wasip1 and shrinks it with wasm-opt: target/mcpgw.wasm.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --target wasm32-wasip1 -p mcpgw
raw=target/wasm32-wasip1/release/mcpgw.wasm
out=target/mcpgw.wasm
if command -v wasm-opt >/dev/null; then
  wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals "$raw" -o "$out"
else
  echo "build.sh: wasm-opt not found, shipping the unoptimised module" >&2
  cp "$raw" "$out"
fi
echo "built $out ($(stat -c %s "$out") bytes)"
