"""Helpers for the sidecar's end-to-end tests: the `mcpgw-sidecar` process, its YAML file, Envoy
bootstrapped from it, a throwaway TLS CA, and MCP clients that record notifications.

    sc = Sidecar(workdir, config={...}).start()      # writes <workdir>/sidecar.yaml, waits for /healthz
    sc.document()                                    # GET /v1/config with the plugin token
    sc.edit(lambda c: c["servers"].append({...}))    # rewrite the file (temp + rename)
    gw = SidecarGateway(workdir, sc).start()         # `mcpgw-sidecar bootstrap` -> envoy.json, Envoy
    ...
The binary is target/debug/mcpgw-sidecar (`cargo build -p mcpgw-sidecar`, done once per test run by
`build_sidecar()`); MCPGW_SIDECAR points at another build.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import harness
from harness import HOST, REPO_ROOT, Envoy, HarnessError, Process, free_ports, http_get, to_yaml, wait_http

SIDECAR_BIN = Path(os.environ.get("MCPGW_SIDECAR") or REPO_ROOT / "target" / "debug" / "mcpgw-sidecar")
TLS_SERVER = REPO_ROOT / "tests" / "servers" / "tls_server.py"
DYNAMIC_SERVER = REPO_ROOT / "tests" / "servers" / "dynamic_server.py"

_built = False


def build_sidecar() -> Path:
    """`cargo build -p mcpgw-sidecar` once per process (skipped when MCPGW_SIDECAR is set)."""
    global _built
    if os.environ.get("MCPGW_SIDECAR") or _built:
        return SIDECAR_BIN
    r = subprocess.run(["cargo", "build", "-q", "-p", "mcpgw-sidecar"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise HarnessError(f"cargo build -p mcpgw-sidecar failed:\n{r.stderr[-3000:]}")
    _built = True
    return SIDECAR_BIN


def base_config(port: int, xds_dir: Path | None = None, **envoy: Any) -> dict[str, Any]:
    """A sidecar file with fast discovery timings for tests (no servers yet)."""
    cfg: dict[str, Any] = {
        "listen": f"{HOST}:{port}",
        "session": {"key_file": "session.key"},
        "discovery": {
            "health_interval_ms": 300,
            "request_timeout_ms": 3000,
            "backoff_initial_ms": 200,
            "backoff_max_ms": 1000,
            "startup_grace_ms": 5000,
            "config_poll_ms": 50,
            # Tests that kill a server want it out quickly: two failed checks over 300 ms.
            "failure_threshold": 2,
            "failure_window_ms": 300,
        },
        "notifications": {"keepalive_ms": 1000, "delay_ms": 500},
        "servers": [],
    }
    if xds_dir is not None:
        cfg["envoy"] = {"xds_dir": str(xds_dir), **envoy}
    return cfg


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Sidecar(Process):
    """`mcpgw-sidecar run --config <workdir>/sidecar.yaml`; ready when `/healthz` answers."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, env: dict[str, str] | None = None,
                 name: str = "sidecar"):
        self.workdir = Path(workdir)
        self.config = copy.deepcopy(config)
        self.config_path = self.workdir / f"{name}.yaml"
        self.port = int(str(self.config["listen"]).rsplit(":", 1)[1])
        self.base = f"http://{HOST}:{self.port}"
        build_sidecar()
        super().__init__(name, [SIDECAR_BIN, "run", "--config", self.config_path], self.workdir,
                         env={"MCPGW_LOG": "debug" if os.environ.get("MCPGW_TEST_DEBUG") else "info", **(env or {})},
                         cwd=self.workdir)

    def spawn(self) -> "Sidecar":
        if not self.config_path.exists():
            self.write()
        super().spawn()
        return self

    def wait_ready(self, timeout: float) -> None:
        wait_http(f"{self.base}/healthz", timeout=timeout, proc=self)

    def write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, to_yaml(self.config))

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to the config dict and rewrite the file atomically."""
        change(self.config)
        self.write()

    def status(self) -> dict[str, Any]:
        status, body = http_get(f"{self.base}/v1/status", timeout=5.0)
        if status != 200:
            raise HarnessError(f"sidecar /v1/status -> {status}")
        return json.loads(body)

    def server_state(self, name: str) -> dict[str, Any]:
        for s in self.status()["servers"]:
            if s["name"] == name:
                return s
        raise KeyError(name)

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.server_state(name)
                if last["state"] == state:
                    return last
            except (KeyError, OSError):
                pass
            time.sleep(0.05)
        raise HarnessError(f"server {name} not {state} after {timeout}s (last: {last})\n{self.tail()}")

    @property
    def token_path(self) -> Path | None:
        """The plugin token's file (`plugin_token.file`, default plugin.token next to the config)."""
        spec = self.config.get("plugin_token") or {"file": "plugin.token"}
        if "file" not in spec:
            return None
        path = Path(spec["file"])
        return path if path.is_absolute() else self.config_path.parent / path

    def token(self) -> str:
        """The plugin token the sidecar expects (its file exists once the sidecar or bootstrap ran)."""
        spec = self.config.get("plugin_token") or {}
        if "env" in spec:
            return {**os.environ, **(self.env or {})}[spec["env"]].strip()
        assert self.token_path is not None
        return self.token_path.read_text().strip()

    def auth_headers(self) -> dict[str, str]:
        """What the plugin sends: `authorization: Bearer <plugin token>`."""
        return {"authorization": f"Bearer {self.token()}"}

    def document(self, etag: str | None = None, wait_ms: int = 0, timeout: float = 30.0, *,
                 authorized: bool = True):
        """GET /v1/config as the plugin does (with its token unless `authorized` is false):
        (status, etag, parsed body or None)."""
        import httpx

        headers = {"if-none-match": etag} if etag else {}
        if authorized:
            headers.update(self.auth_headers())
        r = httpx.get(f"{self.base}/v1/config", params={"wait_ms": wait_ms}, headers=headers, timeout=timeout)
        return r.status_code, r.headers.get("etag"), (r.json() if r.status_code == 200 else None)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_text())
            if m:
                return m
            time.sleep(0.05)
        raise HarnessError(f"no log line matching {pattern!r} after {timeout}s\n{self.tail()}")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise HarnessError("no VmRSS")


class SidecarGateway:
    """Envoy bootstrapped by `mcpgw-sidecar bootstrap` (xDS files + the Wasm plugin polling the sidecar)."""

    def __init__(self, workdir: Path, sidecar: Sidecar, *, wasm: bool = True, concurrency: int = 2,
                 name: str = "envoy"):
        self.workdir = Path(workdir)
        self.sidecar = sidecar
        envoy = sidecar.config.setdefault("envoy", {})
        self.listen_port = int(str(envoy["listen"]).rsplit(":", 1)[1])
        self.admin_port = int(str(envoy["admin"]).rsplit(":", 1)[1])
        self.wasm = wasm
        self.config_path = self.workdir / f"{name}.json"
        self.envoy = Envoy(self.config_path, self.workdir, admin_port=self.admin_port,
                           listen_port=self.listen_port, concurrency=concurrency, name=name,
                           component_log_level="wasm:info,upstream:info")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.listen_port}/mcp"

    def bootstrap(self) -> Path:
        if not self.sidecar.config_path.exists():
            self.sidecar.write()
        argv = [str(SIDECAR_BIN), "bootstrap", "--config", str(self.sidecar.config_path),
                "--out", str(self.config_path)]
        if not self.wasm:
            argv.append("--no-wasm")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=self.workdir)
        if r.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed:\n{r.stderr}")
        return self.config_path

    def start(self, timeout: float = 60.0) -> "SidecarGateway":
        if self.wasm and not harness.WASM_PATH.exists():
            raise HarnessError(f"{harness.WASM_PATH} does not exist: build it first (./build.sh)")
        self.bootstrap()
        self.envoy.start(timeout)
        return self

    def stop(self) -> None:
        self.envoy.stop()

    def active_versions(self) -> dict[str, str]:
        """Envoy thread id -> the last configuration version the plugin logged as active there."""
        out: dict[str, str] = {}
        for m in re.finditer(r"\]\[(\d+)\]\[info\]\[wasm\].*configuration (\S+) active",
                             self.envoy.log_path.read_text(errors="replace")):
            out[m.group(1)] = m.group(2)
        return out


def envoy_settings(sidecar_port: int | None = None) -> tuple[dict[str, Any], int, int]:
    """`envoy:` section values (listen/admin on fresh ports, the wasm under test)."""
    listen, admin = free_ports(2)
    return ({"listen": f"{HOST}:{listen}", "admin": f"{HOST}:{admin}", "wasm": str(harness.WASM_PATH)},
            listen, admin)


def static_equivalent(xds_dir: Path, sidecar_port: int, listen_port: int, admin_port: int) -> dict[str, Any]:
    """A static bootstrap holding the clusters and routes of the xDS files, so that
    `envoy --mode validate` checks them (validate mode does not load dynamic resources)."""
    cds = json.loads((xds_dir / "cds.json").read_text())
    rds = json.loads((xds_dir / "rds.json").read_text())
    clusters = [{k: v for k, v in c.items() if k != "@type"} for c in cds["resources"]]
    for name in ("mcpgw_sidecar", "mcpgw_sidecar_streams"):  # the bootstrap's static clusters
        clusters.append({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": sidecar_port}}}}]}]},
        })
    route = {k: v for k, v in rds["resources"][0].items() if k != "@type"}
    return {
        "static_resources": {
            "listeners": [{
                "name": "static", "address": {"socket_address": {"address": HOST, "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                                 ".HttpConnectionManager",
                        "stat_prefix": "static", "route_config": route,
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin_port}}},
    }


# --------------------------------------------------------------------------------------------
# Upstreams of our own


class TlsServer(harness.DemoServer):
    """`tests/servers/tls_server.py`: the demo tools over HTTPS with a certificate from `make_ca`.
    `hostname` is what URLs use (`localhost` exercises DNS + SNI; the server listens on 127.0.0.1)."""

    def __init__(self, name: str, log_dir: Path, *, certfile: Path, keyfile: Path, credential: str | None = None,
                 port: int | None = None, hostname: str = "localhost"):
        super().__init__(name, log_dir, port=port, credential=credential)
        self.hostname = hostname
        self.argv = [harness.PYTHON, str(TLS_SERVER), "--name", name, "--port", str(self.port),
                     "--certfile", str(certfile), "--keyfile", str(keyfile)]
        if credential:
            self.argv += [f"--require-bearer={credential}"]

    @property
    def url(self) -> str:
        return f"https://{self.hostname}:{self.port}/mcp"

    def wait_ready(self, timeout: float) -> None:
        harness.wait_tcp(self.port, timeout=timeout, proc=self)


class DynamicServer(harness.DemoServer):
    """`tests/servers/dynamic_server.py`: tool `grow(name)` adds a tool at run time and sends
    `notifications/tools/list_changed` to every session; it also offers a prompt and a resource."""

    def __init__(self, name: str, log_dir: Path, *, port: int | None = None):
        super().__init__(name, log_dir, port=port)
        self.argv = [harness.PYTHON, str(DYNAMIC_SERVER), "--name", name, "--port", str(self.port)]


def make_ca(directory: Path, hostnames: list[str]) -> dict[str, Path]:
    """A throwaway CA and a server certificate for `hostnames` (DNS names or IPs), signed by it.
    Returns paths: ca (PEM), cert, key, and other_ca (an unrelated CA, for negative tests)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def ca_pair(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca_pair("mcpgw test CA")
    _, other_cert = ca_pair("unrelated test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key",
             "other_ca": directory / "other-ca.pem"}
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["other_ca"].write_bytes(other_cert.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return paths


# --------------------------------------------------------------------------------------------
# A real MCP client (Python SDK) kept connected in a background thread


class ListeningClient:
    """An `mcp.Client` (legacy handshake, so it opens the GET notification stream) running in its own
    thread and event loop: records every server notification with its arrival time, and runs
    `list_tools` / `call_tool` on request from the test thread."""

    def __init__(self, url: str, timeout: float = 20.0):
        self.url = url
        self.timeout = timeout
        self.notifications: list[tuple[float, str]] = []
        self._thread: threading.Thread | None = None
        self._loop = None
        self._client = None
        self._ready = threading.Event()
        self._stop = None
        self._error: BaseException | None = None

    def __enter__(self) -> "ListeningClient":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise HarnessError(f"MCP client could not connect to {self.url}: {self._error!r}")
        if self._error:
            raise HarnessError(f"MCP client could not connect to {self.url}: {self._error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        import asyncio

        import mcp

        async def handler(message: Any) -> None:
            method = getattr(message, "method", None) or type(message).__name__
            self.notifications.append((time.monotonic(), str(method)))

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                async with mcp.Client(self.url, mode="legacy", message_handler=handler) as client:
                    self._client = client
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as e:  # noqa: BLE001 - reported to the test thread
                self._error = e
                self._ready.set()

        asyncio.run(main())

    def _call(self, coro_fn: Callable[[Any], Any], timeout: float = 15.0) -> Any:
        import asyncio

        if self._client is None or self._loop is None:
            raise HarnessError(f"MCP client not connected: {self._error!r}")
        fut = asyncio.run_coroutine_threadsafe(coro_fn(self._client), self._loop)
        return fut.result(timeout)

    def tool_names(self) -> list[str]:
        async def run(c: Any) -> list[str]:
            return [t.name for t in await harness.list_all_tools(c)]
        return self._call(run)

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> tuple[str, bool]:
        async def run(c: Any) -> tuple[str, bool]:
            r = await c.call_tool(name, arguments or {})
            text = r.content[0].text if r.content and hasattr(r.content[0], "text") else ""
            return text, bool(r.is_error)
        return self._call(run)

    def wait_notification(self, method: str, since: float, timeout: float = 5.0) -> float:
        """Arrival time of the first `method` notification after `since` (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in list(self.notifications):
                if t >= since and m == method:
                    return t
            time.sleep(0.02)
        raise HarnessError(f"no {method} within {timeout}s; got {self.notifications}")


def fresh_tool_names(url: str, timeout: float = 15.0) -> list[str]:
    """tools/list through a brand-new session and connection (any worker)."""
    import anyio
    import mcp

    async def run() -> list[str]:
        with anyio.fail_after(timeout):
            async with mcp.Client(url, mode="legacy") as c:
                return [t.name for t in await harness.list_all_tools(c)]

    return anyio.run(run)
