#!/usr/bin/env python3
"""`make run`: the standalone gateway on 127.0.0.1 (Envoy + the mcpgw plugin + mcpgw-sidecar).

Default: starts three example MCP servers, then the sidecar over examples/run.yaml, then Envoy:

    alpha, beta  tests/servers/demo_server.py, each requiring a bearer token that this script
                 generates and hands the sidecar in ALPHA_TOKEN / BETA_TOKEN
    everything   @modelcontextprotocol/server-everything (npm, tools/npm/), forced onto 127.0.0.1
                 by scripts/force-loopback.cjs, with a minimal environment

`--config FILE` (`make run CONFIG=FILE`): no example servers; the sidecar runs over FILE itself, so
edits to FILE apply live (docs/standalone.md). FILE must set `envoy.xds_dir`.

Steps: `mcpgw-sidecar bootstrap` (Envoy bootstrap + xDS files; it creates the plugin token file when
missing and puts the token into the plugin configuration), every port checked free, servers,
`mcpgw-sidecar run` (wait for /healthz), Envoy, then wait until tools/list through the gateway
returns the sidecar's whole catalog, and print how to connect. Ctrl-C (or SIGTERM/SIGHUP) stops
everything this script started; the children also get SIGTERM if this script dies.

Ports (127.0.0.1), overridable by environment variables:
    MCPGW_PORT 8080 (gateway), MCPGW_ADMIN_PORT 9901 (Envoy admin): default config and --config;
    MCPGW_SIDECAR_PORT 18000, MCPGW_ALPHA_PORT 18081, MCPGW_BETA_PORT 18082,
    MCPGW_EVERYTHING_PORT 18083: default config only (with --config, the file decides).
Other variables: MCPGW_RUN_DIR (default .run: logs, generated files, session key), MCPGW_SIDECAR
(the sidecar binary, default target/debug/mcpgw-sidecar), MCPGW_WASM (the plugin), NODE.

    scripts/run.py                       # run the default gateway
    scripts/run.py --config my.yaml      # run over your own sidecar configuration
    scripts/run.py --write-example FILE  # write the static example bootstrap (the checked-in envoy.yaml)
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "tests" / "servers"))

import harness  # noqa: E402

DEFAULT_CONFIG = REPO / "examples" / "run.yaml"
SIDECAR_BIN = Path(os.environ.get("MCPGW_SIDECAR") or REPO / "target" / "debug" / "mcpgw-sidecar")
NPM_DIR = REPO / "tools" / "npm"
EVERYTHING_JS = NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
FORCE_LOOPBACK = REPO / "scripts" / "force-loopback.cjs"

# (environment variable, default, what): the 127.0.0.1 ports of examples/run.yaml.
PORTS = [
    ("MCPGW_PORT", 8080, "the gateway listener"),
    ("MCPGW_ADMIN_PORT", 9901, "Envoy's admin interface"),
    ("MCPGW_SIDECAR_PORT", 18000, "the sidecar"),
    ("MCPGW_ALPHA_PORT", 18081, "demo server alpha"),
    ("MCPGW_BETA_PORT", 18082, "demo server beta"),
    ("MCPGW_EVERYTHING_PORT", 18083, "server-everything"),
]
DEMO_SERVERS = [("alpha", "MCPGW_ALPHA_PORT", "ALPHA_TOKEN"), ("beta", "MCPGW_BETA_PORT", "BETA_TOKEN")]

START_TIMEOUT = 90.0   # servers, sidecar, Envoy and the first catalog, each

# The checked-in static example (envoy.yaml, `--write-example`): fixed ports, a fixed key that must
# never be used for real.
SERVERS = [("alpha", "alpha_", "alpha-secret"), ("beta", "beta_", "beta-secret")]
EXAMPLE_PORTS = {"alpha": 18081, "beta": 18082}
EXAMPLE_LISTEN, EXAMPLE_ADMIN = 8080, 9901
EXAMPLE_KEY = base64.b64encode(b"example-only-key-do-not-use!!!!!").decode()


class RunError(Exception):
    pass


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# Children: harness processes that also die with this script (PR_SET_PDEATHSIG) and may run with a
# minimal environment.

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


class Orphanless:
    """Mixin for harness.Process: spawn like it (log file, own session) plus PR_SET_PDEATHSIG;
    `clean_env` replaces the inherited environment instead of extending it."""

    clean_env: dict[str, str] | None = None

    def spawn(self):  # type: ignore[override]
        if self.running:
            raise harness.HarnessError(f"{self.name} already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self.clean_env) if self.clean_env is not None else dict(os.environ, **(self.env or {}))
        env.setdefault("PYTHONUNBUFFERED", "1")
        parent = os.getpid()
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, cwd=self.cwd, start_new_session=True,
                                          preexec_fn=lambda: _die_with_parent(parent))
        return self


class DemoServer(Orphanless, harness.DemoServer):
    pass


class Envoy(Orphanless, harness.Envoy):
    pass


class Everything(Orphanless, harness.Process):
    """server-everything over Streamable HTTP (`/mcp`) on 127.0.0.1:`port`. It has no host option,
    so force-loopback.cjs is preloaded; its environment is minimal on purpose (its `get-env` tool
    prints it), and GZIP_ALLOWED_DOMAINS keeps `gzip-file-as-resource` from fetching other hosts."""

    def __init__(self, port: int, log_dir: Path, node: str):
        self.port = port
        super().__init__("server-everything", [node, "-r", FORCE_LOOPBACK, EVERYTHING_JS, "streamableHttp"],
                         log_dir, cwd=NPM_DIR)
        self.clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(log_dir),
                          "PORT": str(port), "GZIP_ALLOWED_DOMAINS": "127.0.0.1"}

    @property
    def url(self) -> str:
        return f"http://{harness.HOST}:{self.port}/mcp"

    def wait_ready(self, timeout: float) -> None:
        harness.wait_tcp(self.port, timeout=timeout, proc=self)


class Sidecar(Orphanless, harness.Process):
    """`mcpgw-sidecar run --config FILE`; ready when /healthz answers. `token`: the plugin token
    (from the generated bootstrap), which /v1/config wants."""

    def __init__(self, config: Path, port: int, log_dir: Path, env: dict[str, str], token: str | None):
        self.port = port
        self.token = token
        super().__init__("sidecar", [SIDECAR_BIN, "run", "--config", config], log_dir, env=env, cwd=log_dir)

    @property
    def base(self) -> str:
        return f"http://{harness.HOST}:{self.port}"

    def wait_ready(self, timeout: float) -> None:
        harness.wait_http(f"{self.base}/healthz", timeout=timeout, proc=self)

    def get_json(self, path: str) -> Any:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else None
        status, body = harness.http_get(self.base + path, timeout=5.0, headers=headers)
        if status != 200:
            raise RunError(f"sidecar GET {path} -> {status}: {body[:200]!r}")
        return json.loads(body)


# --------------------------------------------------------------------------------------------
# Configuration, bootstrap, ports


def port_from_env(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise RunError(f"{var}={raw!r} is not a port number")
    return port


def render_default_config(run_dir: Path, ports: dict[str, int]) -> Path:
    """examples/run.yaml -> <run_dir>/sidecar.yaml with the ports of `ports` (env var -> port) and the
    plugin path of this checkout. Plain text substitution, so the comments stay for whoever edits the
    copy; each default port must occur exactly once."""
    text = DEFAULT_CONFIG.read_text()
    new_port = {str(default): ports[var] for var, default, _ in PORTS}
    pattern = rf"(?<![\d.]){re.escape(harness.HOST)}:(\d+)(?!\d)"
    found = [m.group(1) for m in re.finditer(pattern, text)]
    for default in new_port:
        if found.count(default) != 1:
            raise RunError(f"{DEFAULT_CONFIG}: expected {harness.HOST}:{default} exactly once")
    # One pass, so that a port moved onto another default port is not replaced twice.
    text = re.sub(pattern, lambda m: f"{harness.HOST}:{new_port.get(m.group(1), m.group(1))}", text)
    text, n = re.subn(r"(?m)^(\s+wasm:\s*)\S+", lambda m: m.group(1) + json.dumps(str(harness.WASM_PATH)), text)
    if n != 1:
        raise RunError(f"{DEFAULT_CONFIG}: expected one `wasm:` line")
    out = run_dir / "sidecar.yaml"
    header = (f"# GENERATED by scripts/run.py from {DEFAULT_CONFIG.relative_to(REPO)} (ports, plugin path).\n"
              "# The sidecar watches this copy: edits apply live, and the next `make run` overwrites them.\n")
    write_atomic(out, header + text)
    return out


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Temporary file + rename; `mode` (e.g. 0o600 for a file holding a secret) applies to the result."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def bootstrap(config: Path, out: Path, env: dict[str, str]) -> None:
    r = subprocess.run([str(SIDECAR_BIN), "bootstrap", "--config", str(config), "--out", str(out)],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))
    if r.returncode != 0:
        hint = ""
        if "xds_dir" in r.stderr:
            hint = "\n(run.py needs `envoy: {xds_dir: DIR}` in the file: the sidecar writes Envoy's routes there)"
        raise RunError(f"mcpgw-sidecar bootstrap --config {config} failed:\n{r.stderr.strip()}{hint}")


def bootstrap_token(path: Path) -> str | None:
    """The plugin token in the generated bootstrap's plugin configuration (`sidecar.token`)."""
    doc = json.loads(path.read_text())
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                for http_filter in f.get("typed_config", {}).get("http_filters", []):
                    config = http_filter.get("typed_config", {}).get("config", {})
                    if config.get("root_id") == "mcpgw":
                        plugin = json.loads(config["configuration"]["value"])
                        return plugin.get("sidecar", {}).get("token")
    return None


def _socket_address(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["address"]["socket_address"]


def bootstrap_ports(path: Path, listen: int | None, admin: int | None) -> tuple[int, int, int]:
    """(listener, admin, sidecar) ports of the generated bootstrap, after overriding the listener and
    admin ports (they are only in the bootstrap; the sidecar itself does not use them)."""
    doc = json.loads(path.read_text())
    listener = _socket_address(doc["static_resources"]["listeners"][0])
    admin_addr = _socket_address(doc["admin"])
    if listen is not None:
        listener["port_value"] = listen
    if admin is not None:
        admin_addr["port_value"] = admin
    sidecar = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "mcpgw_sidecar")
    sidecar_addr = _socket_address(sidecar["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"])
    for what, addr in (("gateway listener", listener), ("admin", admin_addr), ("sidecar", sidecar_addr)):
        if addr["address"] not in ("127.0.0.1", "localhost"):
            print(f"run: note: the {what} address is {addr['address']}, not 127.0.0.1", file=sys.stderr)
    if listen is not None or admin is not None:
        write_atomic(path, json.dumps(doc, indent=2) + "\n", mode=0o600)  # it holds the plugin token
    return listener["port_value"], admin_addr["port_value"], sidecar_addr["port_value"]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((harness.HOST, port))
            return True
        except OSError:
            return False


def check_ports(wanted: list[tuple[int, str, str]]) -> None:
    """`wanted`: (port, what, how to change it). Fails on a duplicate or a port in use."""
    seen: dict[int, str] = {}
    problems = []
    for port, what, how in wanted:
        if port in seen:
            problems.append(f"  port {port} is configured twice: {seen[port]} and {what}")
        elif not port_free(port):
            problems.append(f"  {harness.HOST}:{port} ({what}) is in use; {how}")
        seen.setdefault(port, what)
    if problems:
        raise RunError("ports not available:\n" + "\n".join(problems))


# --------------------------------------------------------------------------------------------
# Talking MCP to the gateway (stdlib only: this is what a curl user sees)


def rpc(url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read().decode()
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            for line in text.splitlines():
                if line.startswith("data:") and line[5:].strip():
                    msg = json.loads(line[5:])
                    if "result" in msg or "error" in msg:
                        return msg
            raise RunError(f"no JSON-RPC answer in {text[:200]!r}")
        return json.loads(text)


def gateway_tools(url: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor = None
    for i in range(1000):
        params = {"cursor": cursor} if cursor else {}
        msg = rpc(url, {"jsonrpc": "2.0", "id": i + 1, "method": "tools/list", "params": params})
        if "error" in msg:
            raise RunError(f"tools/list: {msg['error']}")
        tools += msg["result"].get("tools", [])
        cursor = msg["result"].get("nextCursor")
        if not cursor:
            break
    return tools


def document_tools(doc: dict[str, Any]) -> set[str]:
    return {s.get("prefix", "") + t["name"] for s in doc.get("servers", []) for t in s.get("tools", [])}


def wait_catalog(sidecar: Sidecar, url: str, require_serving: list[str], procs: list[harness.Process],
                 timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Wait until the sidecar has published its first catalog (and every server of `require_serving`
    serves), then until tools/list through the gateway lists exactly that catalog. Returns the tools
    listed, the sidecar's status and its document."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        for p in procs:
            if not p.running:
                raise RunError(f"{p.name} exited with code {p.returncode}\n{p.tail()}")
        try:
            status = sidecar.get_json("/v1/status")
            states = {s["name"]: s for s in status["servers"]}
            waiting = [n for n in require_serving if states.get(n, {}).get("state") != "serving"]
            if status["ready"] and not waiting:
                doc = sidecar.get_json("/v1/config?wait_ms=0")
                expected = document_tools(doc)
                tools = gateway_tools(url)
                if {t["name"] for t in tools} == expected:
                    return tools, status, doc
                last = f"the gateway lists {len(tools)} tools, the sidecar's catalog has {len(expected)}"
            else:
                last = {n: (states.get(n, {}).get("state"), states.get(n, {}).get("detail")) for n in states}
        except (OSError, urllib.error.URLError, ValueError, KeyError, RunError) as e:
            last = e
        if time.monotonic() > deadline:
            raise RunError(f"the gateway did not serve the catalog within {timeout:.0f}s (last: {last})\n"
                           f"{sidecar.tail(20)}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# The banner


def pick_call(tools: list[dict[str, Any]], preferred: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    names = {t["name"] for t in tools}
    for name, args in preferred:
        if name in names:
            return name, args
    for t in tools:  # a tool without required arguments
        if not t.get("inputSchema", {}).get("required"):
            return t["name"], {}
    return tools[0]["name"], {}


def banner(url: str, admin_port: int, sidecar: Sidecar, config: Path, status: dict[str, Any],
           doc: dict[str, Any], tools: list[dict[str, Any]], run_dir: Path, default: bool) -> str:
    h = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'"
    init = ('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            '"capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}')
    calls = [pick_call(tools, [("everything_echo", {"message": "hi"})]),
             pick_call(tools, [("alpha_echo", {"text": "hi"})])] if tools else []
    calls = list(dict.fromkeys((n, json.dumps(a, separators=(",", ":"))) for n, a in calls))

    lines = [f"MCP gateway ready: {url}", ""]
    by_server = {s["name"]: [s.get("prefix", "") + t["name"] for t in s.get("tools", [])]
                 for s in doc.get("servers", [])}
    width = max([len(s["name"]) for s in status["servers"]] or [0])
    for s in status["servers"]:
        names = by_server.get(s["name"], [])
        shown = ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")
        state = f"{s['tools']} tools: {shown}" if s["state"] == "serving" else f"{s['state']}: {s.get('detail', '')}"
        lines.append(f"  {s['name']:<{width}}  {state}")
    lines.append(f"  ({len(tools)} tools in all)")
    call_lines = []
    for i, (name, args) in enumerate(calls):
        body = ('{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%s,"arguments":%s}}'
                % (3 + i, json.dumps(name), args))
        call_lines.append(f"curl -sS {url} {h} -H \"Mcp-Session-Id: $SID\" -H 'MCP-Protocol-Version: 2025-11-25' "
                          f"-d {shlex.quote(body)}")
    inspector_calls = []
    if calls:
        first_name, first_args = calls[0][0], json.loads(calls[0][1])
        tool_args = " ".join(shlex.quote(f"{k}={v}") for k, v in first_args.items())
        inspector_calls.append(f"npx @modelcontextprotocol/inspector --cli {url} --method tools/call "
                               f"--tool-name {shlex.quote(first_name)}"
                               + (f" --tool-arg {tool_args}" if tool_args else ""))
    else:
        call_lines.append("# (no tools yet: see the servers' states above; the sidecar keeps retrying)")
    edit = (f"Servers: {config} (the sidecar watches it: edits apply live"
            + (", and the next `make run` rewrites it)" if default else ")"))
    lines += [
        "",
        "# list tools (no session needed):",
        f"curl -sS {url} {h} -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}}'",
        "",
        "# initialize, keep the session id, call tools:",
        f"SID=$(curl -sS -D- -o /dev/null {url} {h} -d {shlex.quote(init)} | tr -d '\\r' "
        "| awk -F': ' 'tolower($1)==\"mcp-session-id\"{print $2}')",
        *call_lines,
        "",
        "# MCP Inspector CLI (needs Node >= 22.19):",
        f"npx @modelcontextprotocol/inspector --cli {url} --method tools/list",
        *inspector_calls,
        "",
        edit,
        f"Sidecar status: {sidecar.base}/v1/status   Envoy admin: http://{harness.HOST}:{admin_port}/",
        f"Metrics: http://{harness.HOST}:{admin_port}/stats/prometheus (Envoy + plugin: mcpgw_*)   "
        f"{sidecar.base}/metrics (sidecar: mcpgw_sidecar_*)   docs/observability.md",
        f"Logs: {run_dir}/*.log   Ctrl-C stops everything.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Run


def run_dir_path() -> Path:
    raw = os.environ.get("MCPGW_RUN_DIR")
    return Path(raw).resolve() if raw else REPO / ".run"


def preflight(default: bool) -> str | None:
    """Everything that must exist before starting; returns the node binary (default config)."""
    missing = []
    if not harness.WASM_PATH.exists():
        missing.append(f"{harness.WASM_PATH} (build it with ./build.sh)")
    if not SIDECAR_BIN.exists():
        missing.append(f"{SIDECAR_BIN} (build it with cargo build -p mcpgw-sidecar)")
    if not Path(harness.ENVOY_BIN).exists() and not shutil.which(harness.ENVOY_BIN):
        missing.append(f"{harness.ENVOY_BIN} (scripts/setup.sh installs it)")
    node = None
    if default:
        node = os.environ.get("NODE") or shutil.which("node")
        if not node:
            missing.append("node (Node.js >= 20, for server-everything)")
        if not EVERYTHING_JS.exists():
            missing.append(f"{EVERYTHING_JS.relative_to(REPO)} (scripts/setup.sh installs it with npm)")
    if missing:
        raise RunError("missing (`make run` builds and installs all of these):\n  " + "\n  ".join(missing))
    return node


def run(config_arg: str | None) -> int:
    default = config_arg is None
    run_dir = run_dir_path()
    procs: list[harness.Process] = []
    # SIGTERM and SIGHUP behave like Ctrl-C, so that everything is stopped either way; SIGINT is set
    # too, as a shell starting us in the background (`make run &`) leaves it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        node = preflight(default)
        run_dir.mkdir(parents=True, exist_ok=True)
        sidecar_env: dict[str, str] = {}
        listen_override = admin_override = None
        if default:
            ports = {var: port_from_env(var, dflt) for var, dflt, _ in PORTS}
            config = render_default_config(run_dir, ports)
            for name, _, token_var in DEMO_SERVERS:
                sidecar_env[token_var] = secrets.token_urlsafe(24)
        else:
            config = Path(config_arg).resolve()
            if not config.is_file():
                raise RunError(f"{config_arg}: no such file")
            if config == DEFAULT_CONFIG:
                raise RunError(f"{config_arg} is the default configuration: run without --config/CONFIG")
            if os.environ.get("MCPGW_PORT"):
                listen_override = port_from_env("MCPGW_PORT", 0)
            if os.environ.get("MCPGW_ADMIN_PORT"):
                admin_override = port_from_env("MCPGW_ADMIN_PORT", 0)
        envoy_json = run_dir / "envoy.json"
        bootstrap(config, envoy_json, sidecar_env)
        listen, admin, sidecar_port = bootstrap_ports(envoy_json, listen_override, admin_override)

        if default:
            check_ports([(ports[var], what, f"set {var} to another port") for var, _, what in PORTS])
        else:
            check_ports([(listen, "the gateway listener", "set MCPGW_PORT to another port"),
                         (admin, "Envoy's admin interface", "set MCPGW_ADMIN_PORT to another port"),
                         (sidecar_port, "the sidecar", f"change `listen` in {config}")])

        require_serving: list[str] = []
        if default:
            print("starting example MCP servers ...", flush=True)
            servers: list[harness.Process] = [
                DemoServer(name, run_dir, port=ports[port_var], credential=sidecar_env[token_var])
                for name, port_var, token_var in DEMO_SERVERS]
            servers.append(Everything(ports["MCPGW_EVERYTHING_PORT"], run_dir, node))
            procs += servers
            harness.start_all(servers, timeout=START_TIMEOUT)
            for s in servers:
                print(f"  {s.name.removeprefix('server-')}: {s.url} (pid {s.pid})", flush=True)
            require_serving = [s.name.removeprefix("server-") for s in servers]

        sidecar = Sidecar(config, sidecar_port, run_dir, sidecar_env, bootstrap_token(envoy_json))
        print(f"starting mcpgw-sidecar --config {config} ...", flush=True)
        procs.append(sidecar)
        sidecar.start(START_TIMEOUT)
        print(f"  sidecar: {sidecar.base} (pid {sidecar.pid})", flush=True)

        envoy = Envoy(envoy_json, run_dir, admin_port=admin, listen_port=listen, concurrency=2)
        print(f"starting envoy -c {envoy_json} ...", flush=True)
        procs.append(envoy)
        envoy.start(START_TIMEOUT)
        print(f"  envoy: http://{harness.HOST}:{listen} (pid {envoy.pid}, admin http://{harness.HOST}:{admin})",
              flush=True)

        url = f"http://{harness.HOST}:{listen}/mcp"
        print("waiting for the catalog ...", flush=True)
        tools, status, doc = wait_catalog(sidecar, url, require_serving, procs, START_TIMEOUT)
        print("\n" + banner(url, admin, sidecar, config, status, doc, tools, run_dir, default), flush=True)

        # The gateway itself (sidecar, Envoy) must live; an example server may die (or be
        # killed to watch the health-aware catalog at work): the gateway keeps serving the others.
        reported: set[str] = set()
        while True:
            for p in procs:
                if p.running:
                    reported.discard(p.name)
                    continue
                if p in (sidecar, envoy):
                    raise RunError(f"{p.name} exited with code {p.returncode}\n{p.tail()}")
                if p.name not in reported:
                    reported.add(p.name)
                    print(f"run: {p.name} exited with code {p.returncode}; the gateway keeps serving "
                          f"the other servers (its tools leave the catalog)", file=sys.stderr, flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except (RunError, harness.HarnessError) as e:
        print(f"run: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for p in reversed(procs):  # Envoy first, the servers last
            p.stop()
        if procs:
            print("stopped: " + ", ".join(f"{p.name} (pid {p.pid}, exit {p.returncode})" for p in procs), flush=True)


# --------------------------------------------------------------------------------------------
# The static example (envoy.yaml)


def example_tools(name: str) -> list[dict]:
    """The demo server's catalog, listed in-process (what its tools/list returns on the wire)."""
    import anyio

    import demo_server

    server = demo_server.build(name, 0)
    tools = anyio.run(server.list_tools)
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


EXAMPLE_HOLD = 8081  # the wasm_plugin example's hold listener


def example_yaml(install: str = "envoy_filter") -> str:
    entries = []
    for name, prefix, cred in SERVERS:
        entries.append({
            "name": name, "prefix": prefix, "authority": harness.authority_of(name), "path": "/mcp",
            "cluster": name, "host": f"127.0.0.1:{EXAMPLE_PORTS[name]}",
            "headers": [{"name": "authorization", "value": f"Bearer {cred}"}],
            "tools": example_tools(name),
        })
    doc = harness.gateway_document(entries, keys=[{"id": "example", "secret": EXAMPLE_KEY}], version="example")
    bootstrap_doc = harness.envoy_bootstrap(
        listen_port=EXAMPLE_LISTEN, admin_port=EXAMPLE_ADMIN,
        upstreams=[(name, EXAMPLE_PORTS[name]) for name, _, _ in SERVERS],
        plugin_config={"document": doc}, wasm_path="target/mcpgw.wasm", pretty_config=True,
        install=install, hold_port=EXAMPLE_HOLD, access_log="/dev/stdout")
    servers = "\n".join(
        f"#   .venv/bin/python tests/servers/demo_server.py --name {n} --port {EXAMPLE_PORTS[n]} --require-bearer={c} &"
        for n, _, c in SERVERS)
    header = f"""\
# Static example: Envoy + the mcpgw plugin in front of two demo MCP servers, all on 127.0.0.1.
{"# GENERATED by `scripts/run.py --write-example envoy.yaml`; edit the generator, not this file."
  if install == "envoy_filter" else
  "# The filter as a stock Istio WasmPlugin installs it: no allow_on_headers_stop_iteration; MCP 2026-07-28"
  + chr(10) + "# requests only, routed on Mcp-Method/Mcp-Name (docs/mcp2026.md)."
  + chr(10) + "# GENERATED by `scripts/run.py --write-example envoy-wasmplugin.yaml --install wasm_plugin`;"
  + " edit the generator."}
# The session key below is public: for local experiments only. `make run` generates a real one.
# The bearer tokens alpha-secret and beta-secret are the demo servers' credentials: demo-only.
# Keep the admin interface on 127.0.0.1: its /config_dump shows all of it (docs/security.md).
# Run from the repository root (the .wasm path is relative), after ./build.sh:
{servers}
#   .venv/bin/envoy -c {"envoy.yaml" if install == "envoy_filter" else "envoy-wasmplugin.yaml"} --concurrency 2 --disable-hot-restart --component-log-level wasm:info
# MCP endpoint: http://127.0.0.1:{EXAMPLE_LISTEN}/mcp
# Metrics: http://127.0.0.1:{EXAMPLE_ADMIN}/stats/prometheus (mcpgw_*; docs/observability.md); the access
# log on stdout carries each request's MCP method, server, tool and JSON-RPC error code.
"""
    return header + harness.to_yaml(bootstrap_doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="run over this sidecar configuration (no example servers)")
    p.add_argument("--write-example", metavar="FILE", help="write the static example bootstrap and exit")
    p.add_argument("--install", choices=["envoy_filter", "wasm_plugin"], default="envoy_filter",
                   help="with --write-example: how the filter is installed (docs/mcp2026.md)")
    args = p.parse_args(argv)
    if args.write_example:
        Path(args.write_example).write_text(example_yaml(args.install))
        return 0
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
