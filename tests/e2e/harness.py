"""End-to-end harness: upstream MCP servers, the plugin configuration document, an Envoy bootstrap,
and Envoy itself, all on 127.0.0.1. No pytest in here: `scripts/run.py` and the sidecar tests import
it too.

Typical use:

    workdir = Path(tempfile.mkdtemp())
    alpha = DemoServer("alpha", workdir, credential="alpha-secret").start()
    doc = gateway_document([server_entry(alpha, "alpha_", discover_tools(alpha.url, alpha.auth_headers()))],
                           keys=[new_session_key()])
    gw = Gateway(workdir, upstreams=[alpha], plugin_config={"document": doc}).start()
    ...  # talk to gw.url ("http://127.0.0.1:<port>/mcp")
    gw.stop(); alpha.stop()

Every wait has a deadline; every process logs to `<workdir>/<name>.log` and a failed start raises
HarnessError with the tail of that log.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
ENVOY_BIN = str(VENV_BIN / "envoy") if (VENV_BIN / "envoy").exists() else "envoy"
# The plugin under test; MCPGW_WASM points the harness at another build.
WASM_PATH = Path(os.environ.get("MCPGW_WASM") or REPO_ROOT / "target" / "mcpgw.wasm").resolve()
DEMO_SERVER = REPO_ROOT / "tests" / "servers" / "demo_server.py"
HOST = "127.0.0.1"

# Protocol revisions of the session era, newest first (mirrors core::config::SUPPORTED_PROTOCOL_VERSIONS).
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
LATEST_PROTOCOL_VERSION = PROTOCOL_VERSIONS[0]


class HarnessError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Ports and waits


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (all sockets held open until every port is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _check_alive(proc: "Process | None") -> None:
    if proc is not None and not proc.running:
        raise HarnessError(f"{proc.name} exited with code {proc.returncode}\n{proc.tail()}")


def wait_tcp(port: int, host: str = HOST, timeout: float = 10.0, proc: "Process | None" = None) -> None:
    """Wait until `host:port` accepts a TCP connection (raises HarnessError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(proc)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise HarnessError(f"{host}:{port} not accepting connections after {timeout}s"
                               + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(0.05)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls `predicate` until it returns something truthy (returned), or raises HarnessError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.02)


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET `url`; returns (status, body); HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, timeout: float = 10.0, proc: "Process | None" = None,
              ok: Callable[[int, bytes], bool] = lambda status, _body: status == 200) -> tuple[int, bytes]:
    """Poll `url` until `ok(status, body)`; returns the last (status, body)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        _check_alive(proc)
        try:
            status, body = http_get(url, timeout=1.0)
            if ok(status, body):
                return status, body
            last = (status, body[:200])
        except (OSError, urllib.error.URLError) as e:
            last = e
        if time.monotonic() > deadline:
            raise HarnessError(f"{url} not ready after {timeout}s (last: {last!r})"
                               + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Processes


class Process:
    """A child process whose stdout+stderr go to `<log_dir>/<name>.log` (appended across restarts)."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def spawn(self) -> "Process":
        """Start without waiting for readiness (see `start`)."""
        if self.running:
            raise HarnessError(f"{self.name} already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        log.flush()
        env = dict(os.environ, **(self.env or {}))
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, cwd=self.cwd, start_new_session=True)
        finally:
            log.close()
        return self

    def wait_ready(self, timeout: float) -> None:
        """Subclasses wait for their readiness signal."""

    def start(self, timeout: float = 20.0) -> "Process":
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s. Returns the exit code (None if never started)."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
            except ProcessLookupError:
                pass
        return p.returncode

    def restart(self, timeout: float = 20.0) -> "Process":
        self.stop()
        self.popen = None
        return self.start(timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- last lines of {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DemoServer(Process):
    """`tests/servers/demo_server.py` on 127.0.0.1:`port` (a free one by default).

    `credential`: a bearer token the server requires (it answers 401 without it); put the same value in
    the gateway's server entry (`server_entry` does) so the gateway injects it.
    """

    def __init__(self, name: str, log_dir: Path, *, port: int | None = None, json_response: bool = False,
                 extra_tools: int = 0, credential: str | None = None, slow_tool: bool = False,
                 initialize_delay_ms: int = 0):
        self.server_name = name
        self.port = port or free_port()
        self.credential = credential
        argv = [PYTHON, DEMO_SERVER, "--name", name, "--port", str(self.port)]
        if json_response:
            argv.append("--json")
        if extra_tools:
            argv += ["--extra-tools", str(extra_tools)]
        if credential:
            argv += [f"--require-bearer={credential}"]
        if slow_tool:
            argv.append("--slow-tool")
        if initialize_delay_ms:
            argv += ["--initialize-delay-ms", str(initialize_delay_ms)]
        super().__init__(f"server-{name}", argv, log_dir)

    @property
    def host(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}/mcp"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"} if self.credential else {}

    def wait_ready(self, timeout: float) -> None:
        wait_http(f"http://{self.host}/_health", timeout=timeout, proc=self)

    def requests_log(self) -> list[dict[str, Any]]:
        """What reached /mcp, oldest first: `http_method`, `rpc_method`, `headers` (lower-case names),
        `status`, `issued_session_id` (the Mcp-Session-Id the server answered with, if any)."""
        status, body = http_get(f"http://{self.host}/_log", timeout=5.0)
        if status != 200:
            raise HarnessError(f"{self.name}: GET /_log -> {status}")
        return json.loads(body)

    def clear_log(self) -> None:
        req = urllib.request.Request(f"http://{self.host}/_log", method="DELETE")
        with urllib.request.urlopen(req, timeout=5.0):
            pass


def start_all(procs: Iterable[Process], timeout: float = 30.0) -> None:
    """Spawn every process first, then wait for each (parallel start-up). Stops them all on failure."""
    procs = list(procs)
    try:
        for p in procs:
            p.spawn()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait_ready(max(1.0, deadline - time.monotonic()))
    except BaseException:
        for p in procs:
            p.stop()
        raise


# --------------------------------------------------------------------------------------------
# Tool discovery and the configuration document


async def list_all_tools(client: Any, max_pages: int = 100) -> list[Any]:
    """Every tool an `mcp.Client` session lists, following `nextCursor` (at most `max_pages` pages,
    so a server that keeps returning cursors fails the caller instead of hanging it)."""
    tools: list[Any] = []
    cursor = None
    for _ in range(max_pages):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise HarnessError(f"tools/list still had a nextCursor after {max_pages} pages")


def discover_tools(url: str, headers: dict[str, str] | None = None, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every tool of the MCP server at `url` (following cursors), as JSON objects in wire form."""
    import anyio
    import httpx2
    import mcp
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            async with httpx2.AsyncClient(headers=headers or {}, timeout=timeout) as http:
                async with mcp.Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
                    return [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                            for t in await list_all_tools(c)]

    return anyio.run(run)


def new_session_key(key_id: str = "k1") -> dict[str, str]:
    """A fresh session-sealing key: `{"id", "secret"}` (secret = base64 of 32 random bytes)."""
    return {"id": key_id, "secret": base64.b64encode(secrets.token_bytes(32)).decode()}


def server_entry(server: DemoServer, prefix: str, tools: list[dict[str, Any]], *,
                 headers: list[dict[str, str]] | None = None, path: str = "/mcp",
                 forward_headers: Sequence[str] = ()) -> dict[str, Any]:
    """A `ServerConfig` for `server` as routed by `envoy_bootstrap`: authority `<name>.mcp.local`, cluster
    `<name>`, host `127.0.0.1:<port>`. `headers` default to the server's credential, if any;
    `forward_headers`: client headers forwarded besides the gateway's default list."""
    if headers is None:
        headers = [{"name": "authorization", "value": f"Bearer {server.credential}"}] if server.credential else []
    entry = {
        "name": server.server_name,
        "prefix": prefix,
        "authority": authority_of(server.server_name),
        "path": path,
        "cluster": server.server_name,
        "host": server.host,
        "headers": headers,
        "tools": tools,
    }
    if forward_headers:
        entry["forward_headers"] = list(forward_headers)
    return entry


def authority_of(name: str) -> str:
    return f"{name}.mcp.local"


def gateway_document(servers: list[dict[str, Any]], keys: list[dict[str, str]], *, version: str = "static-1",
                     ttl_seconds: int = 3600, limits: dict[str, Any] | None = None,
                     gateway: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `GatewayConfig` (core/src/config.rs). `limits`/`gateway` hold only the fields to override."""
    doc: dict[str, Any] = {
        "version": version,
        "session": {"keys": keys, "ttl_seconds": ttl_seconds},
        "servers": servers,
    }
    if gateway:
        doc["gateway"] = dict(gateway)
    if limits:
        doc["limits"] = dict(limits)
    return doc


# --------------------------------------------------------------------------------------------
# Envoy bootstrap


# Envoy tag extraction for the plugin's metrics (mirrors sidecar/src/xds.rs STATS_TAGS).
STATS_TAGS = [
    ("mcp_method", r"^(?:wasmcustom\.)?mcpgw\.(method\.([^.]+)\.)"),
    ("mcp_outcome", r"^(?:wasmcustom\.)?mcpgw\.method\.[^.]+\.(outcome\.([^.]+)\.)"),
    ("mcp_error_code", r"^(?:wasmcustom\.)?mcpgw\.method\.[^.]+\.outcome\.[^.]+\.(code\.([^.]+)\.)"),
    ("mcp_server", r"^(?:wasmcustom\.)?mcpgw\.(server\.([^.]+)\.)"),
    ("mcp_tool", r"^(?:wasmcustom\.)?mcpgw\.server\.[^.]+\.(tool\.([^.]+)\.)"),
    ("mcp_refusal", r"^(?:wasmcustom\.)?mcpgw\.(reason\.([^.]+)\.)"),
]

# The MCP part of an access-log line (mirrors sidecar/src/xds.rs MCP_LOG_FIELDS).
MCP_LOG_FIELDS = ("mcp_method=%FILTER_STATE(wasm.mcpgw_method:PLAIN)% "
                  "mcp_server=%REQ(X-MCP-SERVERNAME)% mcp_tool=%REQ(X-MCP-TOOLNAME)% "
                  "mcp_error=%FILTER_STATE(wasm.mcpgw_error_code:PLAIN)%")

ACCESS_LOG_FORMAT = ("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
                     "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% "
                     "%DURATION%ms %UPSTREAM_CLUSTER% " + MCP_LOG_FIELDS + " request_id=%REQ(X-REQUEST-ID)%\n")


def envoy_bootstrap(*, listen_port: int, admin_port: int, upstreams: Sequence[tuple[str, int]],
                    plugin_config: dict[str, Any], wasm_path: Path | str = WASM_PATH,
                    extra_clusters: Sequence[tuple[str, int]] = (), access_log: Path | str | None = None,
                    stream_idle_timeout: str = "300s", pretty_config: bool = False,
                    install: str = "envoy_filter", hold_port: int | None = None) -> dict[str, Any]:
    """The bootstrap the plugin expects, as a dict (render with `to_yaml`). A relative `wasm_path` is
    resolved by Envoy against its working directory.

    `upstreams`: (name, port) of each MCP server: a virtual host `<name>.mcp.local` routing `/` to
    cluster `<name>` with the Host rewritten to `127.0.0.1:<port>`. Anything else hits the default
    virtual host: 404. `extra_clusters`: (name, port) clusters without routes (e.g. the sidecar).

    `install="wasm_plugin"`: the filter as a stock Istio WasmPlugin installs it (no
    `allow_on_headers_stop_iteration`; the plugin is told `"install": "wasm_plugin"`), and the POSTs the
    plugin answers itself go on to a hold listener on `hold_port` (cluster `mcpgw_hold`: a buffer filter
    waits for a body that never comes, since the plugin answers first; docs/mcp2026.md).
    """
    wasm_plugin = install == "wasm_plugin"
    if wasm_plugin:
        if hold_port is None:
            raise HarnessError("install=wasm_plugin needs a hold_port")
        plugin_config = {**plugin_config, "install": "wasm_plugin"}
    vhosts = [
        {
            "name": name,
            "domains": [authority_of(name)],
            "routes": [{
                # Only requests the plugin routed carry x-mcp-servername (it strips clients' own).
                "match": {"prefix": "/", "headers": [
                    {"name": "x-mcp-servername", "string_match": {"exact": name}}]},
                "route": {"cluster": name, "host_rewrite_literal": f"{HOST}:{port}", "timeout": "0s"},
                # Envoy needs x-forwarded-proto to pick a route (the plugin leaves it); once the
                # route is chosen, it is not the upstream's business.
                "request_headers_to_remove": ["x-forwarded-proto"],
            }],
        }
        for name, port in upstreams
    ]
    default_routes: list[dict[str, Any]] = []
    if wasm_plugin:
        default_routes.append({"match": {"path": "/mcp", "headers": [
            {"name": ":method", "string_match": {"exact": "POST"}}]},
            "route": {"cluster": "mcpgw_hold", "timeout": "30s"}})
    default_routes.append({"match": {"prefix": "/"},
                           "direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}})
    vhosts.append({"name": "default", "domains": ["*"], "routes": default_routes})
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "mcp",
        "stream_idle_timeout": stream_idle_timeout,
        "route_config": {"name": "mcp", "virtual_hosts": vhosts},
        "http_filters": [
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "mcpgw",
                        "root_id": "mcpgw",
                        **({} if wasm_plugin else {"allow_on_headers_stop_iteration": True}),
                        "failure_policy": "FAIL_RELOAD",
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": json.dumps(plugin_config, indent=2) if pretty_config
                            else json.dumps(plugin_config, separators=(",", ":")),
                        },
                        "vm_config": {
                            "vm_id": "mcpgw",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": str(wasm_path)}},
                        },
                    },
                },
            },
            {
                "name": "envoy.filters.http.router",
                # No x-envoy-* request headers upstream: x-envoy-original-host (the host rewrite adds
                # it after route-level request_headers_to_remove), x-envoy-expected-rq-timeout-ms, ...
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                                 "suppress_envoy_headers": True},
            },
        ],
    }
    if access_log:
        hcm["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }]
    clusters = [
        {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": HOST, "port_value": port}}}}]}],
            },
        }
        for name, port in [*upstreams, *extra_clusters]
    ]
    for cluster in clusters[:len(upstreams)]:
        cluster["typed_extension_protocol_options"] = upstream_http_options()
    listeners = [{
        "name": "mcp",
        "address": {"socket_address": {"address": HOST, "port_value": listen_port}},
        "per_connection_buffer_limit_bytes": 4194304,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    }]
    if wasm_plugin:
        listeners.append(hold_listener(hold_port))
        clusters.append({
            "name": "mcpgw_hold", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "mcpgw_hold", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": HOST, "port_value": hold_port}}}}]}]},
        })
    return {
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        },
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin_port}}},
        "stats_config": {"stats_tags": [{"tag_name": n, "regex": r} for n, r in STATS_TAGS]},
    }


def hold_listener(port: int) -> dict[str, Any]:
    """The hold listener of the wasm_plugin install: a buffer filter waits for the whole body, which the
    plugin never lets through (it answers the client and the held request is reset). Should a body ever
    arrive (the plugin missing from the chain), the answer is a JSON-RPC error, not a hang."""
    error = '{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"the MCP gateway plugin did not answer this request"}}'
    return {
        "name": "mcpgw_hold",
        "address": {"socket_address": {"address": HOST, "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "mcpgw_hold",
                "route_config": {"name": "hold", "virtual_hosts": [{"name": "hold", "domains": ["*"], "routes": [{
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 503, "body": {"inline_string": error}},
                    "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
                }]}]},
                "http_filters": [
                    {"name": "envoy.filters.http.buffer", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                        "max_request_bytes": 4194304}},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    }


# Headers Envoy's async client adds to the plugin's own calls (initialize, DELETE, replays); an upstream
# filter on each server cluster removes them (mirrors sidecar/src/xds.rs ASYNC_CLIENT_HEADERS).
ASYNC_CLIENT_HEADERS = ("x-envoy-internal", "x-envoy-expected-rq-timeout-ms")


def upstream_http_options() -> dict[str, Any]:
    """A server cluster's `typed_extension_protocol_options`: HTTP/1.1 (as without options) through an
    upstream `header_mutation` filter that removes ASYNC_CLIENT_HEADERS."""
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [
            {"name": "envoy.filters.http.header_mutation", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove": h} for h in ASYNC_CLIENT_HEADERS]}}},
            {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}},
        ],
    }}


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts/lists/scalars. Strings are JSON-quoted (which YAML reads verbatim),
    multi-line ones become literal blocks (`|-`)."""

    def scalar(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return json.dumps(v)
        if isinstance(v, str):
            return json.dumps(v)
        raise TypeError(f"cannot render {type(v).__name__} as YAML")

    def key(k: str) -> str:
        return k if _PLAIN_KEY.match(k) else json.dumps(k)

    pad = "  " * indent
    out: list[str] = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{key(k)}:\n{to_yaml(v, indent + 1)}")
            elif isinstance(v, str) and "\n" in v and "\r" not in v and not v.endswith("\n") \
                    and not v.startswith((" ", "\n")):
                block = "".join(f"{pad}  {line}\n" if line else "\n" for line in v.split("\n"))
                out.append(f"{pad}{key(k)}: |-\n{block}")
            else:
                out.append(f"{pad}{key(k)}: {scalar(v) if not isinstance(v, (dict, list)) else ('{}' if isinstance(v, dict) else '[]')}\n")
        return "".join(out)
    if isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 1)
                # Put the first line of the nested block right after the dash.
                out.append(f"{pad}- {inner.lstrip(' ')}")
            else:
                out.append(f"{pad}- {scalar(v) if not isinstance(v, (dict, list)) else ('{}' if isinstance(v, dict) else '[]')}\n")
        return "".join(out)
    return pad + scalar(obj) + "\n"


def envoy_validate(config_path: Path | str, timeout: float = 120.0) -> tuple[bool, str]:
    """`envoy --mode validate -c FILE`: (ok, combined output)."""
    try:
        r = subprocess.run([ENVOY_BIN, "--mode", "validate", "-c", str(config_path), "-l", "warning",
                            "--disable-hot-restart"],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as e:
        return False, f"envoy --mode validate timed out after {timeout}s: {e.output!r}"
    return r.returncode == 0, r.stdout + r.stderr


_base_ids = itertools.count(1)


def _unique_base_id() -> int:
    return (os.getpid() % 100_000) * 16 + next(_base_ids) % 16


class Envoy(Process):
    """Envoy running `config_path`; ready when the admin `/ready` says LIVE and `listen_port` accepts."""

    def __init__(self, config_path: Path | str, log_dir: Path, *, admin_port: int, listen_port: int,
                 concurrency: int = 2, log_level: str = "warning", component_log_level: str = "wasm:info",
                 name: str = "envoy"):
        self.config_path = Path(config_path)
        self.admin_port = admin_port
        self.listen_port = listen_port
        argv = [ENVOY_BIN, "-c", str(self.config_path), "--concurrency", str(concurrency),
                "--disable-hot-restart", "--base-id", str(_unique_base_id()), "-l", log_level]
        if component_log_level:
            argv += ["--component-log-level", component_log_level]
        super().__init__(name, argv, log_dir, cwd=REPO_ROOT)

    def wait_ready(self, timeout: float) -> None:
        wait_http(f"http://{HOST}:{self.admin_port}/ready", timeout=timeout, proc=self)
        wait_tcp(self.listen_port, timeout=timeout, proc=self)

    def admin(self, path: str) -> tuple[int, str]:
        status, body = http_get(f"http://{HOST}:{self.admin_port}{path}", timeout=5.0)
        return status, body.decode(errors="replace")

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from `/stats` whose names start with `prefix`."""
        _, text = self.admin("/stats")
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


# Envoy counters that move when a plugin VM is reloaded or created (`FAIL_RELOAD`, a trap), read by the
# steady-state checks of the e2e tests: bad input must never cost a VM.
VM_COUNTERS = ("wasm.mcpgw.vm_reload", "wasm.mcpgw.vm_reload_success", "wasm.mcpgw.vm_reload_failure",
               "wasm.envoy.wasm.runtime.v8.created")


def vm_counters(envoy: "Envoy", extra: Sequence[str] = ()) -> dict[str, int]:
    """`VM_COUNTERS` (+ `extra`) from Envoy's stats; every one must exist, or a check on them would be vacuous."""
    stats = envoy.stats()
    names = (*VM_COUNTERS, *extra)
    missing = [k for k in names if k not in stats]
    if missing:
        raise HarnessError(f"no {missing} in Envoy's stats: the no-reload check would be vacuous")
    return {k: stats[k] for k in names}


def started(gw: "Gateway") -> "Gateway":
    """Starts `gw` for a fixture: a gateway that does not start fails the test with Envoy's own
    words, without a traceback."""
    try:
        gw.start()
    except HarnessError as e:
        import pytest

        pytest.fail(str(e), pytrace=False)
    return gw


class Gateway:
    """Envoy + the plugin in front of `upstreams`, on fresh ports unless given.

    Writes `<workdir>/<name>.yaml`; `validate=True` runs `envoy --mode validate` on it first.
    `routes` overrides the (name, port) virtual hosts taken from `upstreams`; `extra_clusters` adds
    route-less clusters (a sidecar). `self.bootstrap` is a plain dict: adjust it before `start()`
    (e.g. add `bootstrap_extensions`). Logs: `<workdir>/<name>.log`, `<workdir>/<name>-access.log`.
    """

    def __init__(self, workdir: Path, *, upstreams: Sequence[DemoServer] = (), plugin_config: dict[str, Any],
                 listen_port: int | None = None, admin_port: int | None = None, concurrency: int = 2,
                 wasm_path: Path | str = WASM_PATH, extra_clusters: Sequence[tuple[str, int]] = (),
                 name: str = "envoy", validate: bool = False, routes: Sequence[tuple[str, int]] | None = None,
                 install: str = "envoy_filter"):
        self.workdir = Path(workdir)
        lp, ap, hp = free_ports(3)
        self.listen_port = listen_port or lp
        self.admin_port = admin_port or ap
        self.wasm_path = Path(wasm_path)
        self.plugin_config = plugin_config
        self.validate = validate
        self.bootstrap = envoy_bootstrap(
            listen_port=self.listen_port, admin_port=self.admin_port,
            upstreams=list(routes) if routes is not None else [(u.server_name, u.port) for u in upstreams],
            plugin_config=plugin_config, wasm_path=self.wasm_path.resolve(), extra_clusters=extra_clusters,
            access_log=self.workdir / f"{name}-access.log", install=install, hold_port=hp)
        self.config_path = self.workdir / f"{name}.yaml"
        self.envoy = Envoy(self.config_path, self.workdir, admin_port=self.admin_port,
                           listen_port=self.listen_port, concurrency=concurrency, name=name)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.listen_port}"

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"{self.base_url}/mcp"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_yaml(self.bootstrap))
        return self.config_path

    def start(self, timeout: float = 60.0) -> "Gateway":
        if not self.wasm_path.exists():
            raise HarnessError(f"{self.wasm_path} does not exist: build it first (./build.sh or make wasm)")
        self.write_config()
        if self.validate:
            ok, out = envoy_validate(self.config_path)
            if not ok:
                raise HarnessError(f"envoy --mode validate failed for {self.config_path}:\n{out[-3000:]}")
        self.envoy.start(timeout)
        return self

    def stop(self) -> None:
        self.envoy.stop()

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
