#!/usr/bin/env python3
"""Run a wasm32-wasip1 program (typically a `cargo test` binary) under the PyPI `wasmtime` package.

    CARGO_TARGET_WASM32_WASIP1_RUNNER="$PWD/.venv/bin/python $PWD/scripts/wasi-runner.py" \
        cargo test -p mcpgw-core --target wasm32-wasip1

    python scripts/wasi-runner.py <program.wasm> [args...]

WASI preview 1 with the given args (argv[0] = the .wasm path), inherited stdin/stdout/stderr and
environment, and the current directory preopened both as "." and under its absolute path (cargo runs
tests from the package root; tests may use `env!("CARGO_MANIFEST_DIR")`).
Imports from module `env` named `proxy_*` (the proxy-wasm host ABI) are linked as stubs that trap
with the import's name when called, so code that merely links the SDK can run; any other unknown
import traps the same way. Exit status: the program's `proc_exit` code, 0 if `_start` returns,
134 on a trap (a Rust panic under panic=abort is an `unreachable` trap), 2 on a usage/load error.
Set WASI_RUNNER_NO_CACHE=1 to disable wasmtime's on-disk compilation cache.
"""

from __future__ import annotations

import os
import sys

import wasmtime

TRAP_EXIT = 134


def _stub(module: str, name: str):
    def trap(*_args):
        raise wasmtime.WasmtimeError(f"called host import {module}.{name}, which is not available outside Envoy")

    return trap


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1]

    config = wasmtime.Config()
    if not os.environ.get("WASI_RUNNER_NO_CACHE"):
        try:
            config.cache = True
        except wasmtime.WasmtimeError:
            pass  # no usable cache directory: compile every time
    engine = wasmtime.Engine(config)
    try:
        module = wasmtime.Module.from_file(engine, path)
    except (OSError, wasmtime.WasmtimeError) as e:
        print(f"wasi-runner: cannot load {path}: {e}", file=sys.stderr)
        return 2

    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    for imp in module.imports:
        if imp.module == "env" and imp.name and imp.name.startswith("proxy_") \
                and isinstance(imp.type, wasmtime.FuncType):
            linker.define_func(imp.module, imp.name, imp.type, _stub(imp.module, imp.name))
    linker.define_unknown_imports_as_traps(module)

    wasi = wasmtime.WasiConfig()
    wasi.argv = [path, *argv[2:]]
    wasi.inherit_env()
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    cwd = os.getcwd()
    for host_dir, guest_dir in ((".", "."), (cwd, cwd)):  # relative paths, and CARGO_MANIFEST_DIR-style ones
        try:
            wasi.preopen_dir(host_dir, guest_dir)
        except wasmtime.WasmtimeError:
            pass
    store = wasmtime.Store(engine)
    store.set_wasi(wasi)

    try:
        instance = linker.instantiate(store, module)
        start = instance.exports(store).get("_start")
        if start is None:
            print(f"wasi-runner: {path} exports no _start (not a WASI command)", file=sys.stderr)
            return 2
        start(store)
    except wasmtime.ExitTrap as e:
        return e.code
    except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
        sys.stdout.flush()
        print(f"wasi-runner: {path} trapped: {e}", file=sys.stderr)
        return TRAP_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
