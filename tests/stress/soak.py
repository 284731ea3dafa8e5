#!/usr/bin/env python3
"""Soak: mixed MCP traffic against `make run`'s gateway for a fixed time, with Envoy's and the
sidecar's memory sampled throughout (docs/stress.md, "Soak").

    .venv/bin/python tests/stress/soak.py --minutes 10 --svg docs/soak.svg --json target/soak/soak.json
    .venv/bin/python tests/stress/soak.py --seconds 20          # the short mode of `make test`

It starts scripts/run.py (Envoy + plugin + sidecar + the three example servers) on free ports, then
`--clients` threads each loop over whole client lifetimes: initialize + initialized, tools/list (every
page), prompts/list, resources/list, ping, tool calls on all three servers, then DELETE. Every answer
is checked (status, JSON-RPC result, the tool's text). A sampler reads both processes' RSS from /proc
every `--sample` seconds. The report: calls and errors, p50/p99 latency per tenth of the run (drift:
last tenth's p99 over the second's), RSS first/last/max per process and its growth from the second
tenth to the last, and an SVG plot of RSS and p99 over time. Exit 1 on any error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from rpc import ACCEPT, message_of  # noqa: E402

READY = re.compile(r"^MCP gateway ready: (\S+)$")
PID = re.compile(r"^\s+(sidecar|envoy): \S+ \(pid (\d+)")
BANNER_END = "Ctrl-C stops everything."
PORT_VARS = ("MCPGW_PORT", "MCPGW_ADMIN_PORT", "MCPGW_SIDECAR_PORT", "MCPGW_ALPHA_PORT", "MCPGW_BETA_PORT",
             "MCPGW_EVERYTHING_PORT")
CALLS = [  # (tool, arguments, expected text)
    ("alpha_echo", {"text": "soak"}, "alpha: soak"),
    ("beta_add", {"a": 2, "b": 3}, "5"),
    ("everything_echo", {"message": "soak"}, "Echo: soak"),
]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Gateway:
    """scripts/run.py in the background, ready when its banner is complete."""

    def __init__(self, run_dir: Path):
        env = {k: v for k, v in os.environ.items() if k not in PORT_VARS}
        env.update({k: str(p) for k, p in zip(PORT_VARS, free_ports(len(PORT_VARS)))},
                   MCPGW_RUN_DIR=str(run_dir), PYTHONUNBUFFERED="1")
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "run.py")], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
                                     cwd=REPO, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 300) -> tuple[str, dict[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = list(self.lines)
            url = next((m.group(1) for m in map(READY.match, lines) if m), None)
            if url and any(BANNER_END in line for line in lines):
                pids = {m.group(1): int(m.group(2)) for m in map(PID.match, lines) if m}
                return url, pids
            if self.proc.poll() is not None:
                raise SystemExit("soak: run.py exited before it was ready:\n" + "\n".join(lines))
            time.sleep(0.1)
        raise SystemExit("soak: run.py not ready:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Client:
    """One MCP client lifetime after another, every answer checked; latencies and errors recorded."""

    def __init__(self, url: str, ops: list, errors: list, lock: threading.Lock):
        self.url, self.ops, self.errors, self.lock = url, ops, errors, lock
        self.http = httpx.Client(timeout=30)
        self.ids = itertools.count(1)
        self.session: str | None = None

    def post(self, what: str, body: dict[str, Any] | None, expect=None) -> None:
        headers = {"content-type": "application/json", "accept": ACCEPT}
        if self.session:
            headers.update({"mcp-session-id": self.session, "mcp-protocol-version": "2025-06-18"})
        t0 = time.monotonic()
        try:
            if body is None:
                resp = self.http.delete(self.url, headers=headers)
                ok = resp.status_code in (200, 204)
            else:
                resp = self.http.post(self.url, json=body, headers=headers)
                if "id" not in body:
                    ok = resp.status_code == 202
                else:
                    msg = message_of(resp)
                    ok = resp.status_code == 200 and "result" in msg and (expect is None or expect(msg["result"]))
                    if ok and body["method"] == "initialize":
                        self.session = resp.headers.get("mcp-session-id")
            detail = "" if ok else f"HTTP {resp.status_code}: {resp.text[:200]}"
        except Exception as e:  # noqa: BLE001 - every failure counts
            ok, detail = False, repr(e)
        t1 = time.monotonic()
        with self.lock:
            self.ops.append((t0, t1 - t0, what))
            if not ok:
                self.errors.append((t0, what, detail))

    def request(self, method: str, params: dict[str, Any] | None = None, expect=None) -> None:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if params is not None:
            body["params"] = params
        self.post(method, body, expect)

    def lifetime(self, calls_per_session: int) -> None:
        self.session = None
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "soak", "version": "1"}})
        self.post("notifications/initialized", {"jsonrpc": "2.0", "method": "notifications/initialized"})
        cursor = None
        while True:
            page: dict[str, Any] = {}
            self.request("tools/list", {"cursor": cursor} if cursor else {},
                         expect=lambda r: page.update(r) or isinstance(r.get("tools"), list))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        self.request("prompts/list", {}, expect=lambda r: isinstance(r.get("prompts"), list))
        self.request("resources/list", {}, expect=lambda r: isinstance(r.get("resources"), list))
        self.request("ping")
        for i in range(calls_per_session):
            tool, args, text = CALLS[i % len(CALLS)]
            self.request("tools/call", {"name": tool, "arguments": args},
                         expect=lambda r, text=text: not r.get("isError") and r["content"][0]["text"] == text)
        self.post("DELETE", None)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def svg(samples: list[tuple[float, int, int]], windows: list[dict[str, Any]], duration: float) -> str:
    w, h, pad = 760, 300, 50
    top_mib = max([1] + [max(e, s) / 1024 for _, e, s in samples]) * 1.15
    top_ms = max([0.1] + [win["p99_ms"] for win in windows]) * 1.15

    def x(t: float) -> float:
        return pad + (w - 2 * pad) * (t / max(duration, 1e-9))

    def y(v: float, top: float) -> float:
        return h - pad - (h - 2 * pad) * (v / top)

    def line(points: list[tuple[float, float]], color: str) -> str:
        return (f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>',
           f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">seconds (0 to {duration:.0f})</text>',
           f'<text x="10" y="20">RSS MiB (max axis {top_mib:.0f})</text>',
           f'<text x="{w - 10}" y="20" text-anchor="end">p99 ms per tenth (max axis {top_ms:.1f})</text>',
           line([(x(t), y(e / 1024, top_mib)) for t, e, _ in samples], "#1f77b4"),
           line([(x(t), y(s / 1024, top_mib)) for t, _, s in samples], "#2ca02c"),
           line([(x(win["mid_s"]), y(win["p99_ms"], top_ms)) for win in windows], "#d62728"),
           f'<text x="{pad + 5}" y="{pad - 10}" fill="#1f77b4">envoy RSS</text>',
           f'<text x="{pad + 90}" y="{pad - 10}" fill="#2ca02c">sidecar RSS</text>',
           f'<text x="{pad + 190}" y="{pad - 10}" fill="#d62728">p99 latency</text>',
           "</svg>"]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--calls-per-session", type=int, default=30)
    ap.add_argument("--sample", type=float, default=2.0, help="RSS sampling period, seconds")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--svg", type=Path)
    ap.add_argument("--run-dir", type=Path, default=REPO / "target" / "soak" / "run")
    args = ap.parse_args()
    duration = args.minutes * 60 + args.seconds or 600.0

    args.run_dir.mkdir(parents=True, exist_ok=True)
    gw = Gateway(args.run_dir)
    ops: list[tuple[float, float, str]] = []
    errors: list[tuple[float, str, str]] = []
    samples: list[tuple[float, int, int]] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        url, pids = gw.wait_ready()
        if set(pids) != {"envoy", "sidecar"}:
            raise SystemExit(f"soak: no envoy/sidecar pid in run.py's output: {pids}")
        start = time.monotonic()

        def sampler() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - start, rss_kib(pids["envoy"]), rss_kib(pids["sidecar"])))
                stop.wait(args.sample)

        def worker() -> None:
            client = Client(url, ops, errors, lock)
            while not stop.is_set():
                client.lifetime(args.calls_per_session)

        threads = [threading.Thread(target=sampler)] + [threading.Thread(target=worker) for _ in range(args.clients)]
        for t in threads:
            t.start()
        print(f"soak: {args.clients} clients against {url} for {duration:.0f} s", flush=True)
        stop.wait(duration)
        stop.set()
        for t in threads:
            t.join(60)
        samples.append((time.monotonic() - start, rss_kib(pids["envoy"]), rss_kib(pids["sidecar"])))
    finally:
        stop.set()
        gw.stop()

    elapsed = samples[-1][0] if samples else duration
    windows = []
    for i in range(10):
        lo, hi = elapsed * i / 10, elapsed * (i + 1) / 10
        lat = [d * 1000 for t0, d, _ in ops if lo <= t0 - start < hi]
        windows.append({"from_s": round(lo, 1), "mid_s": (lo + hi) / 2, "requests": len(lat),
                        "p50_ms": round(percentile(lat, 0.5), 2), "p99_ms": round(percentile(lat, 0.99), 2)})

    def mean_rss(i: int, col: int) -> float:
        lo, hi = elapsed * i / 10, elapsed * (i + 1) / 10
        vals = [s[col] for s in samples if lo <= s[0] < hi] or [samples[-1][col]]
        return sum(vals) / len(vals) / 1024

    memory = {}
    for col, name in ((1, "envoy"), (2, "sidecar")):
        memory[name] = {"first_mib": round(samples[0][col] / 1024, 1), "last_mib": round(samples[-1][col] / 1024, 1),
                        "max_mib": round(max(s[col] for s in samples) / 1024, 1),
                        "growth_mib": round(mean_rss(9, col) - mean_rss(1, col), 1)}
    drift = windows[-1]["p99_ms"] / windows[1]["p99_ms"] if windows[1]["p99_ms"] else 0.0
    report = {"seconds": round(elapsed, 1), "clients": args.clients, "requests": len(ops), "errors": len(errors),
              "rps": round(len(ops) / max(elapsed, 1e-9)), "p99_drift": round(drift, 2), "memory": memory,
              "windows": windows, "first_errors": [{"at_s": round(t - start, 2), "what": w, "detail": d}
                                                   for t, w, d in errors[:10]]}
    print(f"soak: {report['requests']} requests in {elapsed:.0f} s ({report['rps']}/s), {len(errors)} errors; "
          f"p99 {windows[1]['p99_ms']} ms (2nd tenth) -> {windows[-1]['p99_ms']} ms (last), drift {drift:.2f}x")
    for name, m in memory.items():
        print(f"soak: {name} RSS {m['first_mib']} -> {m['last_mib']} MiB (max {m['max_mib']}), "
              f"growth from the 2nd tenth to the last {m['growth_mib']:+} MiB")
    for e in report["first_errors"]:
        print(f"soak: error at {e['at_s']} s in {e['what']}: {e['detail']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report, "samples": samples}, indent=1) + "\n")
    if args.svg:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(svg(samples, windows, elapsed))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
