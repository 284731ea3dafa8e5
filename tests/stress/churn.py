#!/usr/bin/env python3
"""Stress under configuration churn: keep-alive load through the gateway while its configuration
changes and servers flap, across fresh Envoy starts. Every answer is checked.

One sidecar over three upstreams on 127.0.0.1:

    load    bench/echo-server (fast Rust MCP server, no session state): `load_echo`
    everything  @modelcontextprotocol/server-everything (Node, tracks sessions, answers in SSE):
            `everything_echo`, the tool of the original report
    beta    tests/servers/demo_server.py: killed and restarted at random moments (health flaps)
    gamma   bench/echo-server: disabled and re-enabled in the servers file at random moments

Rounds alternate the target between `load_echo` and `everything_echo`. Each round starts a fresh Envoy (`--concurrency` workers, bootstrapped by `mcpgw-sidecar bootstrap`),
opens one client session, waits until every worker serves the configuration, then runs
`wrk -cN` with bench/wrk/mcp.lua in `check` mode (HTTP 200, a JSON-RPC result, no error) for the
round's duration while a churn thread edits the servers file and kills/restarts `beta`. A round
passes when wrk saw no bad answer, no socket error and no timeout, Envoy counted no 4xx/5xx
answer, and no wasm VM was reloaded.

    tests/stress/churn.py --minutes 30                 # the soak (make soak)
    tests/stress/churn.py --rounds 2 --seconds 10      # the short mode (make test runs it via pytest)

Prints one line per round and a summary; exits 1 when any round failed. `--json FILE` writes the
per-round figures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "scripts"))

import harness  # noqa: E402
from harness import HOST, DemoServer, HarnessError, Process, free_port, free_ports  # noqa: E402
from sidecar_harness import Sidecar, SidecarGateway, base_config  # noqa: E402
import run as make_run  # noqa: E402  (scripts/run.py: server-everything as `make run` starts it)

# Servers the churn never touches: they must never leave the catalog.
STEADY_SERVERS = ("load", "everything")
TARGETS = ("load_echo", "everything_echo")

ECHO_BIN = REPO / "target" / "release" / "mcpgw-bench-echo"
WRK_SCRIPT = REPO / "bench" / "wrk" / "mcp.lua"


class EchoServer(Process):
    """bench/echo-server on one port: a fast MCP upstream."""

    def __init__(self, name: str, log_dir: Path, *, latency_ms: int = 0):
        self.port = free_port()
        argv = [str(ECHO_BIN), "--port", str(self.port), "--name", name, "--tools", "3"]
        if latency_ms:
            argv += ["--latency-ms", str(latency_ms)]
        super().__init__(f"echo-{name}", argv, log_dir)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/mcp"

    def wait_ready(self, timeout: float) -> None:
        harness.wait_tcp(self.port, timeout=timeout, proc=self)


def build() -> None:
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "mcpgw-bench-echo"], cwd=REPO, check=True)
    if not harness.WASM_PATH.exists():
        raise HarnessError(f"{harness.WASM_PATH} is missing: run ./build.sh first")


@dataclass
class Round:
    index: int
    target: str
    concurrency: int
    connections: int
    seconds: float
    requests: int = 0
    bad: int = 0
    socket_errors: int = 0
    timeouts: int = 0
    envoy_4xx: int = 0
    envoy_5xx: int = 0
    vm_reloads: int = 0
    config_versions: int = 0
    envoy_rss_kib: int = 0
    sidecar_rss_kib: int = 0
    load_flaps: int = 0
    churn_actions: list[str] = field(default_factory=list)
    sample: str = ""
    # Access-log lines of non-2xx answers, counted by (status, response code details).
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.bad or self.socket_errors or self.timeouts or self.envoy_4xx or self.envoy_5xx
                    or self.vm_reloads or self.load_flaps or self.requests == 0)


class Churn(threading.Thread):
    """Edits the servers file and kills/restarts `beta` at random moments until stopped."""

    def __init__(self, sidecar: Sidecar, beta: DemoServer, rng: random.Random):
        super().__init__(daemon=True)
        self.sidecar, self.beta, self.rng = sidecar, beta, rng
        self.stop_event = threading.Event()
        self.actions: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(0.1, 1.5)):
                self.act()
        except BaseException as e:  # reported by the round
            self.error = e

    def act(self) -> None:
        choice = self.rng.random()
        if choice < 0.4:
            enabled = self.toggle("gamma")
            self.actions.append(f"gamma {'on' if enabled else 'off'}")
        elif choice < 0.7:
            if self.beta.running:
                self.beta.stop(timeout=5)
                self.actions.append("beta killed")
            else:
                self.beta.start(timeout=30)
                self.actions.append("beta restarted")
        else:
            # Two versions in quick succession, like a flap of an unrelated server.
            self.toggle("gamma")
            time.sleep(self.rng.uniform(0.0, 0.3))
            self.toggle("gamma")
            self.actions.append("gamma flap")

    def toggle(self, name: str) -> bool:
        state = {}

        def change(cfg: dict) -> None:
            for s in cfg["servers"]:
                if s["name"] == name:
                    s["enabled"] = not s.get("enabled", True)
                    state["enabled"] = s["enabled"]

        self.sidecar.edit(change)
        return state["enabled"]

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
        if not self.beta.running:
            self.beta.start(timeout=30)
        self.sidecar.edit(lambda cfg: [s.update(enabled=True) for s in cfg["servers"]])


def initialize(url: str) -> str:
    import httpx

    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "churn", "version": "1"}}},
        headers={"accept": "application/json, text/event-stream"}, timeout=10)
    r.raise_for_status()
    return r.headers["mcp-session-id"]


def wait_every_worker_serves(gw: SidecarGateway, concurrency: int, timeout: float = 30.0) -> None:
    """The plugin logs `configuration V active` once per VM; `concurrency` workers + the main thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(gw.active_versions()) >= concurrency + 1:
            return
        time.sleep(0.05)
    raise HarnessError(f"not every worker has a configuration after {timeout}s: {gw.active_versions()}")


def wrk(url: str, session: str, tool: str, connections: int, seconds: float) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(WRK_SCRIPT), url, "--", "call", session, tool, "check"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120).stdout
    m = re.search(r"^MCPBENCH (\{.*\})$", out, re.M)
    if not m:
        raise HarnessError(f"wrk printed no MCPBENCH line:\n{out}")
    return json.loads(m.group(1))


def counters(gw: SidecarGateway) -> dict[str, int]:
    stats = gw.envoy.stats()
    get = lambda suffix: sum(v for k, v in stats.items() if k.endswith(suffix))  # noqa: E731
    return {
        "4xx": stats.get("http.mcpgw.downstream_rq_4xx", 0),
        "5xx": stats.get("http.mcpgw.downstream_rq_5xx", 0),
        "reloads": get("vm_reload_success") + get("vm_reload_failure"),
    }


def rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flaps(sidecar: Sidecar, servers: tuple[str, ...]) -> int:
    """How often a server that the churn never touches left the catalog."""
    text = sidecar.log_text()
    return sum(len(re.findall(rf"server {name} is down", text)) for name in servers)


def error_details(gw: SidecarGateway) -> dict[str, int]:
    """`status details` -> count, from the access log (the bootstrap logs errors only here)."""
    out: dict[str, int] = {}
    for m in re.finditer(r'" (\d{3}) \S+ (\S+) ', gw.envoy.log_path.read_text(errors="replace")):
        if not m.group(1).startswith("2"):
            key = f"{m.group(1)} {m.group(2)}"
            out[key] = out.get(key, 0) + 1
    return out


def one_round(index: int, workdir: Path, sidecar: Sidecar, beta: DemoServer, target: str,
              concurrency: int, connections: int, seconds: float, rng: random.Random) -> Round:
    result = Round(index, target, concurrency, connections, seconds)
    listen, admin = free_ports(2)
    sidecar.edit(lambda cfg: cfg["envoy"].update(listen=f"{HOST}:{listen}", admin=f"{HOST}:{admin}"))
    gw = SidecarGateway(workdir, sidecar, concurrency=concurrency, name=f"envoy-{index}")
    gw.start()
    try:
        wait_every_worker_serves(gw, concurrency)
        session = initialize(gw.url)
        before = counters(gw)
        versions_before = len(re.findall(r"configuration \S+ active", gw.envoy.log_path.read_text()))
        flaps_before = flaps(sidecar, STEADY_SERVERS)
        churn = Churn(sidecar, beta, rng)
        churn.start()
        try:
            report = wrk(gw.url, session, target, connections, seconds)
        finally:
            churn.finish()
        result.load_flaps = flaps(sidecar, STEADY_SERVERS) - flaps_before
        result.envoy_rss_kib = rss_kib(gw.envoy.pid)
        result.sidecar_rss_kib = rss_kib(sidecar.pid)
        if churn.error:
            raise churn.error
        after = counters(gw)
        result.requests = report["requests"]
        result.bad = report["bad"]
        result.socket_errors = report["connect"] + report["read"] + report["write"]
        result.timeouts = report["timeout"]
        result.sample = report["sample"]
        result.envoy_4xx = after["4xx"] - before["4xx"]
        result.envoy_5xx = after["5xx"] - before["5xx"]
        result.vm_reloads = after["reloads"] - before["reloads"]
        result.config_versions = (len(re.findall(r"configuration \S+ active", gw.envoy.log_path.read_text()))
                                  - versions_before)
        result.churn_actions = churn.actions
        result.errors = error_details(gw)
    finally:
        gw.stop()
    return result


def run(*, rounds: int | None, minutes: float | None, seconds: float, concurrencies: list[int],
        connections: list[int], seed: int, workdir: Path, targets: tuple[str, ...] = TARGETS,
        discovery: dict | None = None, log=print) -> list[Round]:
    """`discovery`: overrides of the sidecar's discovery settings (request_timeout_ms,
    failure_threshold, failure_window_ms)."""
    discovery = {"request_timeout_ms": 2000, "failure_threshold": 3, "failure_window_ms": 3000,
                 **(discovery or {})}
    build()
    rng = random.Random(seed)
    load = EchoServer("load", workdir)
    gamma = EchoServer("gamma", workdir, latency_ms=1)
    beta = DemoServer("beta", workdir)
    node = make_run.preflight(True)
    everything = make_run.Everything(free_port(), workdir, node)
    upstreams = [load, gamma, beta, everything]
    harness.start_all(upstreams)
    cfg = base_config(free_port(), workdir / "xds")
    cfg["discovery"].update(health_interval_ms=300, **discovery)
    cfg["servers"] = [
        {"name": "load", "url": load.url, "prefix": "load_"},
        {"name": "beta", "url": beta.url, "prefix": "beta_"},
        {"name": "gamma", "url": gamma.url, "prefix": "gamma_"},
        {"name": "everything", "url": everything.url, "prefix": "everything_"},
    ]
    # Only errors and local replies: a failed round then shows who answered and why.
    cfg["envoy"].update(wasm=str(harness.WASM_PATH), access_log="errors")
    sidecar = Sidecar(workdir, cfg)
    results: list[Round] = []
    try:
        sidecar.start()
        sidecar.wait_state("load", "serving", timeout=30)
        deadline = time.monotonic() + minutes * 60 if minutes else None
        i = 0
        while (rounds is None or i < rounds) and (deadline is None or time.monotonic() < deadline):
            r = one_round(i, workdir, sidecar, beta, targets[i % len(targets)],
                          concurrencies[i % len(concurrencies)], connections[i % len(connections)],
                          seconds, rng)
            results.append(r)
            log(f"round {i}: {'ok  ' if r.ok else 'FAIL'} {r.target} workers={r.concurrency} conns={r.connections} "
                f"requests={r.requests} bad={r.bad} socket_errors={r.socket_errors} timeouts={r.timeouts} "
                f"envoy_4xx={r.envoy_4xx} envoy_5xx={r.envoy_5xx} vm_reloads={r.vm_reloads} "
                f"config_versions={r.config_versions} churn={len(r.churn_actions)} flaps={r.load_flaps} "
                f"envoy_rss={r.envoy_rss_kib // 1024}MiB sidecar_rss={r.sidecar_rss_kib // 1024}MiB"
                + (f" sample={r.sample!r}" if r.sample else "")
                + (f" errors={r.errors}" if r.errors else ""))
            i += 1
    finally:
        sidecar.stop()
        for p in upstreams:
            p.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, help="run rounds until this much time has passed")
    ap.add_argument("--rounds", type=int, help="number of rounds (default: 3 unless --minutes)")
    ap.add_argument("--seconds", type=float, default=60, help="load per round (default 60)")
    ap.add_argument("--concurrency", default="2,3", help="Envoy workers, cycled per round")
    ap.add_argument("--connections", default="16,32", help="wrk connections, cycled per round")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--json", type=Path, help="write the per-round figures here")
    ap.add_argument("--target", choices=TARGETS, help="only this tool (default: alternate)")
    ap.add_argument("--ping-timeout-ms", type=int, default=2000,
                    help="the sidecar's request_timeout_ms (small values model a saturated machine)")
    ap.add_argument("--failure-threshold", type=int, default=3)
    ap.add_argument("--failure-window-ms", type=int, default=3000)
    args = ap.parse_args()
    rounds = args.rounds if args.rounds or args.minutes else 3
    workdir = Path(tempfile.mkdtemp(prefix="mcpgw-churn-"))
    print(f"churn: seed {args.seed}, logs in {workdir}")
    results = run(rounds=rounds, minutes=args.minutes, seconds=args.seconds,
                  concurrencies=[int(x) for x in args.concurrency.split(",")],
                  connections=[int(x) for x in args.connections.split(",")], seed=args.seed, workdir=workdir,
                  targets=(args.target,) if args.target else TARGETS,
                  discovery={"request_timeout_ms": args.ping_timeout_ms,
                             "failure_threshold": args.failure_threshold,
                             "failure_window_ms": args.failure_window_ms})
    failed = [r for r in results if not r.ok]
    total = sum(r.requests for r in results)
    print(f"churn: {len(results)} rounds, {total} calls, "
          f"{sum(r.load_flaps for r in results)} flaps of steady servers, "
          f"{sum(r.config_versions for r in results)} configuration versions adopted, "
          f"{sum(len(r.churn_actions) for r in results)} churn actions, {len(failed)} failed rounds")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"ok": r.ok} for r in results], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
