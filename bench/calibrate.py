#!/usr/bin/env python3
"""What does one proxy-wasm host call cost? Calibrates the Envoy-side share of the plugin's time.

    .venv/bin/python bench/calibrate.py [--rounds 3] [--duration 4] [--no-build]

One Envoy (`--concurrency 1`, pinned like bench/run.py) with one listener per variant of the wasm floor
(bench/wasm-floor, which adds host calls on request when configured so), plus the buffer filter and the
mcpgw plugin for reference, all in front of the same echo upstream. Each variant runs tools/call at 16
connections in interleaved rounds; the figure is Envoy CPU time per request (median), and the
difference to the plain floor is what those host calls cost. Not part of `make bench`: it writes
target/bench/calibrate.md, which the next `make bench` includes in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark driver: processes, configs, wrk)

VARIANTS = [
    ("floor", ""),
    ("floor + get all request headers", "get_headers=1"),
    ("floor + 10 request header replaces", "set_headers=10"),
    ("floor + get all request headers + 10 replaces", "get_headers=1;set_headers=10"),
    ("floor + get all request headers + 1 whole-map write (them + 10)", "get_headers=1;set_map=10"),
    ("floor + body write-back", "set_body=1"),
    ("floor + clear_route_cache", "clear_route_cache=1"),
    ("floor + 2 response header replaces", "resp_headers=2"),
    ("floor + all of the above", "get_headers=1;set_headers=10;set_body=1;clear_route_cache=1;resp_headers=2"),
    # The telemetry host calls of mcpgw per tools/call (docs/observability.md).
    ("floor + 3 filter-state properties", "properties=3"),
    ("floor + 2 counter increments", "counters=2"),
    ("floor + 1 histogram sample", "histogram=1"),
    ("floor + 10 clock reads", "clock=10"),
    # The session checks of a routed call: the ended-session set and the upstream-session cache.
    ("floor + 2 shared-data reads", "shared=2"),
]
# `--variants` picks some by index (the reference contenders always run).
BASE = 10800


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--variants", default="", help="indexes of VARIANTS to run, e.g. 0,7,8 (default all)")
    args = ap.parse_args()
    chosen = [VARIANTS[int(i)] for i in args.variants.split(",")] if args.variants else VARIANTS

    floor = run.build(args)
    envoy = run.envoy_binary()
    work = run.ROOT / "target" / "bench"
    procs = run.Procs()
    try:
        spec, ntools, _ = run.ECHO_FLEET[0]
        echo = procs.start(["taskset", "-c", run.LOAD_CPU, str(run.ECHO_BIN), "--port", spec,
                            "--tools", str(ntools)], work / "logs" / "calibrate-echo.log")
        run.wait_port(int(spec.split("-")[-1]), echo)
        tools = {p: run.fetch_tools(p) for p in run.GROUPS["call"]["ports"]}
        key = base64.b64encode(os.urandom(32)).decode()

        listeners, names = [], []
        for i, (name, conf) in enumerate(chosen):
            lst = run.listener_for("floor", "call", BASE + i, tools, key, floor)
            lst["name"] = f"variant{i}"
            wasm = lst["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
            wasm["typed_config"]["config"]["configuration"]["value"] = conf
            wasm["typed_config"]["config"]["name"] = f"floor{i}"
            listeners.append(lst)
            names.append((name, "echo"))
        for contender, label, tool in (("buffer", "buffer filter (no wasm)", "echo"),
                                       ("mcpgw", "mcpgw plugin", "s1_echo"),
                                       ("mcpgw_notel", "mcpgw plugin, telemetry: false", "s1_echo")):
            if contender == "mcpgw" and not run.PLUGIN_WASM.exists():
                continue
            lst = run.listener_for(contender, "call", BASE + len(listeners), tools, key, floor)
            lst["name"] = contender
            listeners.append(copy.deepcopy(lst))
            names.append((label, tool))
        clusters = [run.cluster("call_direct", run.GROUPS["call"]["direct"])]
        clusters += [run.cluster(run.upstream_cluster("call", i), p)
                     for i, p in enumerate(run.GROUPS["call"]["ports"])]
        cfg = {"static_resources": {"listeners": listeners, "clusters": clusters},
               "admin": {"address": {"socket_address": {"address": run.HOST, "port_value": BASE + 99}}}}
        path = work / "envoy-calibrate.json"
        path.write_text(json.dumps(cfg, indent=1))
        proc = procs.start(["taskset", "-c", run.ENVOY_CPU, envoy, "-c", str(path), "--concurrency", "1",
                            "--disable-hot-restart", "-l", "warning"], work / "logs" / "envoy-calibrate.log")
        for i in range(len(listeners)):
            run.wait_port(BASE + i, proc)

        class Variant(run.Contender):
            def __init__(self, i: int, tool: str) -> None:
                super().__init__("calibrate")
                self.i, self._tool, self.proc = i, tool, proc

            def port(self, group: str) -> int:
                return BASE + self.i

            def tool(self) -> str:
                return self._tool

        variants = [Variant(i, tool) for i, (_, tool) in enumerate(names)]
        for v in variants:
            v.sessions["call"] = run.open_session(v, "call")
            r = run.run_wrk(v, "call", 16, 1, check=True)
            if r["bad"] or r["errors"]:
                raise SystemExit(f"{names[v.i][0]}: {r['bad']} bad answers: {r['sample']}")
        cpu: dict[int, list[float]] = {v.i: [] for v in variants}
        rps: dict[int, list[float]] = {v.i: [] for v in variants}
        for rnd in range(args.rounds):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for v in order:
                r = run.run_wrk(v, "call", 16, args.duration, check=False)
                cpu[v.i].append(r["cpu_us_per_req"])
                rps[v.i].append(r["rps"])
                run.log(f"r{rnd + 1} {names[v.i][0]:<40} {r['rps']:>8,.0f} req/s  {r['cpu_us_per_req']:.0f} us/req")
    finally:
        procs.stop_all()

    floor_cpu = statistics.median(cpu[0])
    lines = ["| variant (tools/call, 16 connections) | req/s | Envoy CPU/req | vs floor |", "|---|---:|---:|---:|"]
    for i, (name, _) in enumerate(names):
        c = statistics.median(cpu[i])
        lines.append(f"| {name} | {statistics.median(rps[i]):,.0f} | {c:.0f} us | {c - floor_cpu:+.0f} us |")
    table = "\n".join(lines)
    print(table)
    info = run.machine_info(envoy)
    (work / "calibrate.md").write_text(
        f"`bench/calibrate.py` on {info['date']} (commit {info['commit']}, plugin {info['plugin']}), "
        f"{args.rounds} rounds x {args.duration} s, medians:\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
