#!/usr/bin/env python3
"""Where Envoy's memory goes with the plugin: idle RSS of one Envoy process per variant, started one
after another on the bench's upstreams (`make bench-memory`, about a minute).

Variants, each at --concurrency 1 and 4 (one Wasm VM per worker, plus the main thread's):
  plain          the bench's three listeners, no filter
  floor-1        one listener with the wasm floor (a do-nothing proxy-wasm module)
  floor          three listeners, each with the wasm floor (three plugin configurations, one VM)
  mcpgw-call     one listener with mcpgw, the call group's catalog (2 servers, a few tools)
  mcpgw          three listeners with mcpgw, as `make bench` runs it: call, init (10 servers) and
                 list (20 servers x 100 tools = 2,000 tools) catalogs

RSS is read from /proc once it has been stable for a second after one request per listener.
Prints a table and writes target/bench/memory.json. Reuses bench/run.py's configuration builders, so
the figures are those of the bench's contenders."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py)

VARIANTS = ["plain", "floor-1", "floor", "mcpgw-call", "mcpgw"]


def variant_config(variant: str, tools: dict, key: str, floor_wasm: Path) -> tuple[dict, list[int]]:
    contender = variant.split("-")[0]
    cfg = bench.envoy_config(contender, tools, key, floor_wasm)
    if variant.endswith(("-1", "-call")):
        cfg["static_resources"]["listeners"] = [l for l in cfg["static_resources"]["listeners"]
                                                if l["name"].endswith("_call")]
    ports = [l["address"]["socket_address"]["port_value"] for l in cfg["static_resources"]["listeners"]]
    return cfg, ports


def stable_rss(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = bench.rss_kib(pid)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last


def touch(port: int) -> None:
    body = json.dumps(bench.init_body(1)).encode()
    req = urllib.request.Request(f"http://{bench.HOST}:{port}/mcp", data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except OSError:
        pass  # the plain route's upstream may answer an error: only the work inside Envoy matters


def main() -> int:
    work = bench.ROOT / "target" / "bench"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    args = type("Args", (), {"no_build": True, "smoke": True})()
    floor_wasm = bench.build(args)
    envoy = bench.envoy_binary()
    procs = bench.Procs()
    rows = []
    try:
        for spec, n_tools, latency in bench.ECHO_FLEET:
            p = procs.start([str(bench.ECHO_BIN), "--port", spec, "--tools", str(n_tools), "--latency-ms",
                             str(latency), "--name", f"echo-{spec}"], work / "logs" / f"mem-echo-{spec}.log")
            bench.wait_port(int(spec.split("-")[-1]), p)
        tools = {port: bench.fetch_tools(port) for g in bench.GROUPS.values() for port in g["ports"]}
        key = base64.b64encode(os.urandom(32)).decode()
        for concurrency in (1, 4):
            for variant in VARIANTS:
                cfg, ports = variant_config(variant, tools, key, floor_wasm)
                path = work / f"memory-{variant}.json"
                path.write_text(json.dumps(cfg))
                proc = procs.start([envoy, "-c", str(path), "--concurrency", str(concurrency),
                                    "--disable-hot-restart", "-l", "warning"],
                                   work / "logs" / f"mem-{variant}-{concurrency}.log")
                for port in ports:
                    bench.wait_port(port, proc)
                for port in ports:
                    touch(port)
                rss = stable_rss(proc.pid)
                rows.append({"variant": variant, "concurrency": concurrency, "rss_kib": rss,
                             "config_bytes": path.stat().st_size})
                print(f"{variant:<11} --concurrency {concurrency}: {rss / 1024:6.1f} MiB "
                      f"(config {path.stat().st_size / 1024:,.0f} KiB)", flush=True)
                proc.terminate()
                proc.wait(timeout=20)
    finally:
        procs.stop_all()
    (work / "memory.json").write_text(json.dumps(rows, indent=1))
    by = {(r["variant"], r["concurrency"]): r["rss_kib"] / 1024 for r in rows}
    print("\n| variant | c=1 MiB | c=4 MiB | c=1 vs plain | c=4 vs plain |\n|---|---:|---:|---:|---:|")
    for v in VARIANTS:
        print(f"| {v} | {by[(v, 1)]:.1f} | {by[(v, 4)]:.1f} | {by[(v, 1)] - by[('plain', 1)]:+.1f} | "
              f"{by[(v, 4)] - by[('plain', 4)]:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
