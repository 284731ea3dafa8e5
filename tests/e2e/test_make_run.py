"""`make run` end to end: scripts/run.py as a subprocess on free ports (env overrides) and its own run
directory, a real MCP client (Python `mcp`) through the gateway it prints, then SIGINT and every
process it started gone. Also `--config` over a file of our own, a port conflict, and the GitHub
example of docs/standalone.md validated by `mcpgw-sidecar check`.

Needs what `make test` sets up first: target/mcpgw.wasm, Envoy in .venv, and the npm tools
(tools/npm/node_modules, `scripts/setup.sh`); the sidecar is built here (`cargo build`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import anyio
import mcp
import pytest

import harness
import sidecar_harness

RUN_PY = harness.REPO_ROOT / "scripts" / "run.py"
EVERYTHING_JS = (harness.REPO_ROOT / "tools" / "npm" / "node_modules" / "@modelcontextprotocol"
                 / "server-everything" / "dist" / "index.js")
PORT_VARS = ["MCPGW_PORT", "MCPGW_ADMIN_PORT", "MCPGW_SIDECAR_PORT", "MCPGW_ALPHA_PORT", "MCPGW_BETA_PORT",
             "MCPGW_EVERYTHING_PORT"]
READY = re.compile(r"^MCP gateway ready: (\S+)$")
BANNER_END = "Ctrl-C stops everything."
START_TIMEOUT = 180


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    if not EVERYTHING_JS.exists():
        pytest.fail(f"{EVERYTHING_JS} is missing: run scripts/setup.sh (make test and make run do)", pytrace=False)
    if not harness.WASM_PATH.exists():
        pytest.fail(f"{harness.WASM_PATH} is missing: run ./build.sh", pytrace=False)
    sidecar_harness.build_sidecar()


class RunPy:
    """scripts/run.py in the background; its output collected line by line."""

    def __init__(self, run_dir: Path, ports: dict[str, int], args: list[str] = (), env: dict[str, str] | None = None):
        self.lines: list[str] = []
        full_env = {k: v for k, v in os.environ.items() if k not in PORT_VARS}
        full_env.update({k: str(v) for k, v in ports.items()}, MCPGW_RUN_DIR=str(run_dir),
                        MCPGW_SIDECAR=str(sidecar_harness.SIDECAR_BIN), PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen([harness.PYTHON, str(RUN_PY), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=full_env,
                                     cwd=harness.REPO_ROOT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = list(self.lines)
            ready = next((m for m in map(READY.match, lines) if m), None)
            # The banner's last line says how to stop: then all of it has arrived.
            if ready and any(BANNER_END in line for line in lines):
                return ready.group(1)
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"run.py exited with {self.proc.returncode} before it was ready:\n{self.output}")
            time.sleep(0.1)
        pytest.fail(f"run.py not ready after {timeout}s:\n{self.output}")

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of `pid` (pid -> command name), from /proc."""
    parents: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(d.name)] = (int(fields[1]), comm)
    out: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, (ppid, comm) in parents.items():
            if ppid == p and child not in out:
                out[child] = comm
                frontier.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def tcp_listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":  # LISTEN
                out.append(addr)
    return out


def client_flow_alpha(url: str) -> str:
    """One alpha_echo through a fresh session (raw HTTP)."""
    from rpc import Rpc, tool_text

    with Rpc(url) as c:
        c.initialize()
        resp, msg = c.call_tool("alpha_echo", {"text": "still here"})
        assert resp.status_code == 200, resp.text
        return tool_text(msg)


def client_flow(url: str) -> dict:
    async def run() -> dict:
        out: dict = {}
        with anyio.fail_after(60):
            async with mcp.Client(url, mode="legacy") as c:
                out["names"] = [t.name for t in await harness.list_all_tools(c)]
                for tool, args in (("everything_echo", {"message": "via make run"}),
                                   ("alpha_echo", {"text": "via make run"}),
                                   ("beta_add", {"a": 20, "b": 22}),
                                   ("everything_get-sum", {"a": 2, "b": 3})):
                    r = await c.call_tool(tool, args)
                    out[tool] = (r.is_error, r.content[0].text if r.content else None)
        return out

    return anyio.run(run)


def test_make_run_default_gateway(tmp_path):
    ports = dict(zip(PORT_VARS, harness.free_ports(len(PORT_VARS))))
    run = RunPy(tmp_path, ports)
    try:
        url = run.wait_ready()
        assert url == f"http://127.0.0.1:{ports['MCPGW_PORT']}/mcp"
        children = descendants(run.proc.pid)
        # servers alpha, beta, everything (node), the sidecar and Envoy
        assert len(children) >= 5, children
        assert any("node" in c for c in children.values()), children
        assert any("envoy" in c for c in children.values()), children
        assert any("mcpgw-sidecar" in c for c in children.values()), children

        out = client_flow(url)
        for name in ("alpha_echo", "beta_echo", "everything_echo", "everything_get-sum"):
            assert name in out["names"], out["names"]
        assert out["everything_echo"] == (False, "Echo: via make run"), out
        assert out["alpha_echo"] == (False, "alpha: via make run"), out
        assert out["beta_add"] == (False, "42"), out
        assert out["everything_get-sum"][0] is False and "5" in out["everything_get-sum"][1], out

        # server-everything has no host option: the preload keeps it on loopback only.
        assert tcp_listeners(ports["MCPGW_EVERYTHING_PORT"]) == ["0100007F"], \
            tcp_listeners(ports["MCPGW_EVERYTHING_PORT"])
        # The banner: the endpoint, curl, Inspector, logs; the tokens stay out of it.
        banner = run.output
        assert f"curl -sS {url} " in banner
        assert f"npx @modelcontextprotocol/inspector --cli {url} --method tools/list" in banner
        assert f"Logs: {tmp_path}/*.log" in banner
        assert "/stats/prometheus" in banner and "/metrics (sidecar" in banner
        assert re.search(r"everything\s+13 tools", banner), banner
        assert (tmp_path / "sidecar.yaml").exists() and (tmp_path / "envoy.json").exists()
        # The plugin token: generated once, owner-only, in the plugin configuration of the bootstrap
        # (owner-only too), and the gateway got its catalog with it (above).
        token = (tmp_path / "plugin.token").read_text().strip()
        for secret_file in ("plugin.token", "envoy.json", "session.key"):
            assert (tmp_path / secret_file).stat().st_mode & 0o777 == 0o600, secret_file
        assert f'\\"token\\":\\"{token}\\"' in (tmp_path / "envoy.json").read_text()
        assert token not in banner
        assert re.search(r"Discovered \d+ tools for server everything", (tmp_path / "sidecar.log").read_text())
        for token_var in ("ALPHA_TOKEN", "BETA_TOKEN"):
            assert token_var not in banner

        # An example server dies: the gateway keeps serving the others.
        beta = next(pid for pid in children
                    if "--name beta" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        os.kill(beta, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "server-beta exited" not in run.output:
            time.sleep(0.1)
        assert "server-beta exited" in run.output and "keeps serving" in run.output, run.output
        assert run.proc.poll() is None, "make run must keep running"
        assert client_flow_alpha(url) == "alpha: still here"

        rc = run.interrupt()
        assert rc == 0, run.output
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in children):
            time.sleep(0.1)
        left = {p: c for p, c in children.items() if alive(p)}
        assert not left, f"still running after SIGINT: {left}\n{run.output}"
        assert "stopping ..." in run.output
        for var, port in ports.items():
            assert not tcp_listeners(port), f"{var} port {port} still listening"
    finally:
        run.kill()


def test_make_run_with_config(tmp_path):
    """`make run CONFIG=FILE`: only the sidecar and Envoy, over the user's file; MCPGW_PORT moves the
    listener."""
    listen, admin, sidecar_port = harness.free_ports(3)
    server = harness.DemoServer("solo", tmp_path, credential="solo-secret").start()
    try:
        config = tmp_path / "mine.yaml"
        config.write_text(f"""\
listen: 127.0.0.1:{sidecar_port}
envoy:
  xds_dir: xds
  listen: 127.0.0.1:1          # replaced by MCPGW_PORT
  admin: 127.0.0.1:2           # replaced by MCPGW_ADMIN_PORT
  wasm: {harness.WASM_PATH}
servers:
  - name: solo
    url: {server.url}
    prefix: solo_
    credential: {{env: SOLO_TOKEN}}
""")
        run = RunPy(tmp_path / "run", {"MCPGW_PORT": listen, "MCPGW_ADMIN_PORT": admin},
                    args=["--config", str(config)], env={"SOLO_TOKEN": "solo-secret"})
        try:
            url = run.wait_ready()
            assert url == f"http://127.0.0.1:{listen}/mcp"
            children = descendants(run.proc.pid)
            assert sorted(children.values()) == sorted(["envoy", "mcpgw-sidecar"]), children
            names = sidecar_harness.fresh_tool_names(url)
            assert sorted(names) == ["solo_add", "solo_echo", "solo_whoami"]
            assert (tmp_path / "xds" / "cds.json").exists()  # relative to the user's file
            assert (tmp_path / "plugin.token").exists()  # the default plugin_token, next to the file
            # run.py rewrote the bootstrap's ports; it still holds the token, so still owner-only.
            assert (tmp_path / "run" / "envoy.json").stat().st_mode & 0o777 == 0o600
            assert run.interrupt() == 0, run.output
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(alive(p) for p in children):
                time.sleep(0.1)
            assert not [p for p in children if alive(p)], run.output
        finally:
            run.kill()
    finally:
        server.stop()


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    ports = dict(zip(PORT_VARS, harness.free_ports(len(PORT_VARS))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports["MCPGW_BETA_PORT"]))
        s.listen()
        run = RunPy(tmp_path, ports)
        try:
            rc = run.proc.wait(60)
            run._reader.join(5)
        finally:
            run.kill()
    assert rc == 1, run.output
    assert (f"127.0.0.1:{ports['MCPGW_BETA_PORT']} (demo server beta) is in use; set MCPGW_BETA_PORT"
            in run.output), run.output
    assert "starting" not in run.output  # nothing was started


@pytest.mark.parametrize("pat", [None, "ghp_example"])
def test_github_example_of_the_standalone_guide_is_valid(pat):
    """docs/standalone.md's file (examples/github.yaml) passes `mcpgw-sidecar check`; without the
    variable the server is reported unusable, not the file."""
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_PAT"}
    if pat:
        env["GITHUB_PAT"] = pat
    r = subprocess.run([str(sidecar_harness.SIDECAR_BIN), "check", "--config",
                        str(harness.REPO_ROOT / "examples" / "github.yaml")],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("server github "))
    assert "https://api.githubcopilot.com/mcp/" in line and 'prefix "github_"' in line, r.stdout
    if pat:
        assert "1 header(s)" in line, r.stdout
    else:
        assert "NOT USABLE" in line and "GITHUB_PAT" in line, r.stdout


def test_github_example_bootstrap_validates(tmp_path):
    """The Envoy side of the GitHub example: `mcpgw-sidecar bootstrap` on a copy of the file (paths
    moved into tmp_path), then `envoy --mode validate` on the bootstrap (loads the plugin) and on a
    static equivalent of the xDS files (validate mode skips dynamic resources): the TLS cluster
    for api.githubcopilot.com and the github.mcp.local route. Nothing is sent to GitHub."""
    import json

    text = (harness.REPO_ROOT / "examples" / "github.yaml").read_text()
    text = text.replace("../.run/", f"{tmp_path}/run/").replace("../target/mcpgw.wasm", str(harness.WASM_PATH))
    config = tmp_path / "github.yaml"
    config.write_text(text)
    out = tmp_path / "envoy.json"
    r = subprocess.run([str(sidecar_harness.SIDECAR_BIN), "bootstrap", "--config", str(config), "--out", str(out)],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, GITHUB_PAT="ghp_example"))
    assert r.returncode == 0, r.stderr
    ok, log = harness.envoy_validate(out)
    assert ok, log[-3000:]

    xds = tmp_path / "run" / "xds"
    cds = json.loads((xds / "cds.json").read_text())["resources"]
    assert [c["name"] for c in cds] == ["mcpgw_srv_github"]
    tls = cds[0]["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.githubcopilot.com"
    rds = json.loads((xds / "rds.json").read_text())["resources"][0]
    vhost = next(v for v in rds["virtual_hosts"] if v["domains"] == ["github.mcp.local"])
    assert vhost["routes"][0]["route"]["host_rewrite_literal"] == "api.githubcopilot.com"
    static = tmp_path / "static.json"
    static.write_text(json.dumps(sidecar_harness.static_equivalent(xds, 18000, 8080, 9901)))
    ok, log = harness.envoy_validate(static)
    assert ok, log[-3000:]
