#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (docs/fuzzing.md) one after another, each for a fixed time,
# and prints executions and crashes per target. Installs what it needs, idempotently: the nightly
# toolchain (rustup) and cargo-fuzz.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS each (default 600)
#   scripts/fuzz.sh jsonrpc sse     those targets only
#
# FUZZ_SECONDS   seconds per target (default 600)
# FUZZ_NICE      niceness of the fuzzing processes (default 0; 19 on a shared machine)
# FUZZ_ARGS      extra libFuzzer flags (e.g. "-max_len=65536")
# FUZZ_SANITIZER cargo-fuzz sanitizer (default none; address, leak, memory, thread)
#
# Each target grows its own working corpus in fuzz/work/<target>/ (gitignored, kept between runs)
# from the committed seeds in fuzz/corpus/<target>/; a crash is saved in fuzz/artifacts/<target>/.
# Exits 1 when any target crashed, after running them all.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-600}
NICENESS=${FUZZ_NICE:-0}
ALL_TARGETS=(jsonrpc sse session config cursor origin relay)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"

cd fuzz
# No sanitizer by default: the core has no unsafe code, and AddressSanitizer costs executions
# (docs/fuzzing.md). Release with debug assertions and overflow checks (cargo-fuzz's default),
# so an arithmetic overflow panics.
SANITIZER=${FUZZ_SANITIZER:-none}
nice -n "$NICENESS" cargo +nightly fuzz build --sanitizer "$SANITIZER"
mkdir -p work
status=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target" "artifacts/$target"
  log="work/$target.log"
  echo "fuzz: $target for ${SECONDS_EACH}s (log fuzz/$log)"
  started=$SECONDS
  set +e
  nice -n "$NICENESS" cargo +nightly fuzz run --sanitizer "$SANITIZER" "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$((SECONDS - started))
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ -z "$execs" ]; then
    execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  fi
  execs=${execs:-0}
  rate=$((execs / (elapsed > 0 ? elapsed : 1)))
  crash=$(grep -o "Test unit written to [^ ]*" "$log" | tail -1 | sed 's/Test unit written to //' || true)
  if [ "$rc" -ne 0 ] || [ -n "$crash" ]; then
    status=1
    grep -m1 -A3 -E "panicked at|ERROR: libFuzzer" "$log" | sed 's/^/    /' || true
    summary+=("$(printf '%-8s %12s execs in %5ss  %8s/s  CRASH %s' "$target" "$execs" "$elapsed" "$rate" \
      "fuzz/${crash:-$log}")")
  else
    summary+=("$(printf '%-8s %12s execs in %5ss  %8s/s  0 crashes' "$target" "$execs" "$elapsed" "$rate")")
  fi
done

echo "fuzz: ${SECONDS_EACH}s per target"
printf '  %s\n' "${summary[@]}"
if [ "$status" -ne 0 ]; then
  echo "fuzz: reproduce with: cd fuzz && cargo +nightly fuzz run --sanitizer $SANITIZER <target> <artifact>" >&2
fi
exit "$status"
