#!/usr/bin/env python3
"""The MCP 2026-07-28 scenarios of the conformance suite's pre-release line (`0.2.0-alpha`, pinned in
tools/conformance-next/package.json; Node 22 from tools/conformance) against the project's conformance
upstream, directly and through the gateway (Envoy + plugin + sidecar, envoy_filter install), and the
2025-11-25 requirement set of the same suite version through the gateway beside them.

    .venv/bin/python tests/conformance/run_next.py [--out DIR] [--docs]

`--requirements 2026-07-28` runs exactly the scenarios that revision requires, at its wire. The
upstream (tests/servers/conformance_server.py, Python `mcp` 2.3.0) has no fixtures for the
`input-required-result-*` (MRTR) and caching scenarios, so those fail directly too: a scenario counts
against the gateway only when it passes directly and fails through it. Prints the tables; `--docs`
writes docs/conformance-2026.md. Exits 1 when a scenario passes directly but fails through the gateway,
except those in `GATEWAY_DIFFERS` (each with its reason), and 2 when the harness fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "tests" / "conformance"))

import harness  # noqa: E402
import run as base  # noqa: E402
from harness import HarnessError, free_port  # noqa: E402
from sidecar_harness import Sidecar, SidecarGateway, base_config, envoy_settings  # noqa: E402

# Scenarios that pass directly and fail through the gateway by design (the docs say why).
GATEWAY_DIFFERS = {
    # The upstream SDK answers a call of a tool it does not have with an isError result, which the
    # check accepts; the gateway's catalog is an allow-list: an unlisted tool is -32602, never forwarded.
    "input-required-result-ignore-extra-params",
}

NEXT_DIR = REPO / "tools" / "conformance-next"
SUITE = NEXT_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
DOC = REPO / "docs" / "conformance-2026.md"


def pinned() -> str:
    return json.loads((NEXT_DIR / "package.json").read_text())["dependencies"]["@modelcontextprotocol/conformance"]


class NextRun(base.SuiteRun):
    """The pre-release suite, one requirement set."""

    def __init__(self, url: str, out_dir: Path, log: Path, requirements: str):
        super().__init__(url, out_dir, log)
        self.argv = [str(base.NODE), str(SUITE), "server", "--url", url, "-o", str(out_dir),
                     "--requirements", requirements]


def table(rows: dict[str, tuple[dict | None, dict | None]], left: str, right: str) -> list[str]:
    out = [f"| scenario | {left} | {right} | first failed check ({right}, else {left}) |", "|---|---|---|---|"]
    for name, (a, b) in rows.items():
        def cell(r: dict | None) -> str:
            return "-" if r is None else ("pass" if r["passed"] else "FAIL")
        why = base.first_error(b) if b and not b["passed"] else (base.first_error(a) if a and not a["passed"] else "")
        out.append(f"| {name} | {cell(a)} | {cell(b)} | {base.md_escape(why)[:160]} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".run" / "conformance-next")
    ap.add_argument("--docs", action="store_true", help="write docs/conformance-2026.md")
    args = ap.parse_args(argv)
    if not SUITE.exists() or not base.NODE.exists():
        print(f"conformance-next: missing {SUITE} or {base.NODE}: npm ci in tools/conformance-next", file=sys.stderr)
        return 2
    out, logs = base.fresh_out(args.out)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    procs: list[Any] = []
    try:
        single = base.ConformanceServer("conformance", logs)
        envoy, _, _ = envoy_settings()
        cfg = base_config(free_port(), out / "xds", **envoy)
        cfg["servers"] = [{"name": "conformance", "url": single.url, "prefix": ""}]
        sc = Sidecar(logs, cfg)
        gw = SidecarGateway(logs, sc, concurrency=base.CONCURRENCY)
        gw.bootstrap()
        harness.start_all([single, sc, gw.envoy], timeout=60)
        procs += [single, sc, gw.envoy]
        base.wait_adopted(sc, gw, ["conformance"])
        results: dict[str, dict[str, Any]] = {}
        for key, url, req in [("direct-2026", single.url, "2026-07-28"), ("gateway-2026", gw.url, "2026-07-28"),
                              ("direct-2025", single.url, "2025-11-25"), ("gateway-2025", gw.url, "2025-11-25")]:
            print(f"conformance-next: {pinned()} --requirements {req} against {url}", flush=True)
            run = NextRun(url, out / key, logs / f"suite-{key}.log", req).start()
            procs.append(run)
            _, results[key] = run.result()
    except HarnessError as e:
        print(f"conformance-next: harness failure: {e}\n(logs in {logs})", file=sys.stderr)
        return 2
    finally:
        for p in reversed(procs):
            p.stop()
    elapsed = time.monotonic() - t0

    def rows(gen: str) -> dict[str, tuple[dict | None, dict | None]]:
        d, g = results[f"direct-{gen}"], results[f"gateway-{gen}"]
        return {s: (d.get(s), g.get(s)) for s in sorted(set(d) | set(g))}

    def count(key: str) -> str:
        r = results[key]
        return f"{sum(x['passed'] for x in r.values())}/{len(r)}"

    def lost(gen: str) -> list[str]:
        return [s for s, (d, g) in rows(gen).items() if d and d["passed"] and not (g and g["passed"])]

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# MCP conformance, 2026-07-28 (suite pre-release line)",
        "",
        "Generated by `tests/conformance/run_next.py --docs` from a real run; do not edit by hand. The "
        "2025 results of the pinned stable suite: [conformance.md](conformance.md).",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; {elapsed:.0f} s",
        f"- Suite: `@modelcontextprotocol/conformance` {pinned()} (tools/conformance-next), "
        "`--requirements 2026-07-28` and `--requirements 2025-11-25`",
        "- Upstream: `tests/servers/conformance_server.py` (Python `mcp` 2.3.0, session mode, serves both eras); "
        "through the gateway the 2026 requests are bridged onto upstream sessions (docs/mcp2026.md)",
        f"- Gateway: commit `{commit}`, Envoy with the plugin ({base.CONCURRENCY} workers, envoy_filter install), "
        "`mcpgw-sidecar` standalone",
        f"- **2026-07-28: {count('direct-2026')} directly, {count('gateway-2026')} through the gateway**; "
        f"passing directly but failing through the gateway: {', '.join(lost('2026')) or 'none'}",
        f"- **2025-11-25 (same suite): {count('direct-2025')} directly, {count('gateway-2025')} through the gateway**; "
        f"passing directly but failing through the gateway: {', '.join(lost('2025')) or 'none'}",
        "",
        "Scenarios failing directly as well lack fixtures in the project's conformance upstream (MRTR "
        "`input-required-result-*` tools, `test_missing_capability`, `test_streaming_elicitation`, "
        "`test_logging_tool`, the tasks extension, `json_schema_2020_12_tool`, `x-mcp-header` tools) or need "
        "`subscriptions/listen`, which neither the upstream nor the gateway serves yet. "
        "`input-required-result-ignore-extra-params` calls a tool the upstream does not have: directly, the "
        "SDK answers an unknown tool with an `isError` result, which the check accepts; the gateway answers "
        "-32602 (its catalog is an allow-list: a tool it does not list is never forwarded).",
        "",
        "## 2026-07-28",
        "",
        *table(rows("2026"), "direct", "through gateway"),
        "",
        "## 2025-11-25 (same suite version)",
        "",
        *table(rows("2025"), "direct", "through gateway"),
        "",
    ]
    text = "\n".join(lines)
    (out / "conformance-2026.md").write_text(text)
    print(text)
    if args.docs:
        DOC.write_text(text)
    regressions = [s for gen in ("2026", "2025") for s in lost(gen) if s not in GATEWAY_DIFFERS]
    if regressions:
        print(f"conformance-next: passing directly but failing through the gateway: {', '.join(regressions)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
