"""Session-wide fixtures: two demo upstreams and one Envoy+plugin gateway, started once.

alpha: SSE answers, requires `Bearer alpha-secret`, tools echo/add/whoami, prefix `alpha_`; clients'
       `x-tenant` header is forwarded to it (FORWARD_HEADERS).
beta:  JSON answers, requires `Bearer beta-secret`, tools echo/add/whoami/t0001..t0003, prefix `beta_`.
The gateway pages tools/list by PAGE_SIZE (9 tools -> pages of 4, 4, 1) and caps bodies at MAX_BODY.
Logs and generated configs stay in pytest's temp dir (printed in the header) for post-mortems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from harness import DemoServer, Gateway

PAGE_SIZE = 4
MAX_BODY = 64 * 1024
GATEWAY_NAME = "mcpgw-e2e"
GATEWAY_VERSION = "9.9.9-e2e"
PREFIXES = {"alpha": "alpha_", "beta": "beta_"}
# Client headers forwarded besides the gateway's default list, per server.
FORWARD_HEADERS = {"alpha": ["x-tenant"], "beta": []}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcpgw-e2e")


@pytest.fixture(scope="session")
def upstreams(workdir: Path) -> Iterator[dict[str, DemoServer]]:
    servers = {
        "alpha": DemoServer("alpha", workdir, credential="alpha-secret"),
        "beta": DemoServer("beta", workdir, credential="beta-secret", json_response=True, extra_tools=3),
    }
    harness.start_all(servers.values())
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="session")
def catalogs(upstreams: dict[str, DemoServer]) -> dict[str, list[dict[str, Any]]]:
    """Each upstream's tools/list, as the upstream itself returns it (upstream names)."""
    return {name: harness.discover_tools(s.url, s.auth_headers()) for name, s in upstreams.items()}


def make_document(upstreams: dict[str, DemoServer], catalogs: dict[str, list[dict[str, Any]]], *,
                  ttl_seconds: int = 3600, key_id: str = "k1") -> dict[str, Any]:
    return harness.gateway_document(
        [harness.server_entry(s, PREFIXES[name], catalogs[name], forward_headers=FORWARD_HEADERS[name])
         for name, s in upstreams.items()],
        keys=[harness.new_session_key(key_id)],
        ttl_seconds=ttl_seconds,
        limits={"page_size": PAGE_SIZE, "max_body_bytes": MAX_BODY, "upstream_timeout_ms": 5000},
        gateway={"name": GATEWAY_NAME, "version": GATEWAY_VERSION},
    )


@pytest.fixture(scope="session")
def gateway(workdir: Path, upstreams: dict[str, DemoServer], catalogs) -> Iterator[Gateway]:
    gw = Gateway(workdir, upstreams=list(upstreams.values()),
                 plugin_config={"document": make_document(upstreams, catalogs)}, validate=True)
    harness.started(gw)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def expected_tools(catalogs) -> dict[str, dict[str, Any]]:
    """Prefixed name -> the tool definition the gateway should list (upstream's, renamed)."""
    out = {}
    for name, tools in catalogs.items():
        for t in tools:
            out[PREFIXES[name] + t["name"]] = {**t, "name": PREFIXES[name] + t["name"]}
    return out


def pytest_report_header(config: pytest.Config) -> list[str]:
    wasm = harness.WASM_PATH
    state = f"{wasm.stat().st_size} bytes" if wasm.exists() else "MISSING (run ./build.sh)"
    return [f"mcpgw plugin: {wasm} ({state})"]


@pytest.fixture
def rpc(gateway: Gateway):
    """A raw client without a session."""
    from rpc import Rpc

    with Rpc(gateway.url) as client:
        yield client


@pytest.fixture
def session(gateway: Gateway):
    """A raw client with a fresh, initialized gateway session (DELETEd afterwards)."""
    from rpc import Rpc

    with Rpc(gateway.url) as client:
        client.initialize()
        yield client
        client.delete()  # tidy: ends the upstream sessions too (not asserted here)


@pytest.fixture
def steady_gateway(gateway: Gateway) -> Iterator[Gateway]:
    """After the test: no plugin VM was reloaded or created, Envoy answered no 5xx, and the gateway still
    serves a valid call in a fresh session. Hostile-input tests use it (test_errors.py, test_hostile.py)."""
    from rpc import Rpc, tool_text

    before = harness.vm_counters(gateway.envoy, extra=("http.mcp.downstream_rq_5xx",))
    yield gateway
    after = harness.vm_counters(gateway.envoy, extra=("http.mcp.downstream_rq_5xx",))
    assert after == before, f"Envoy's VM/5xx counters moved: {before} -> {after}\n{gateway.envoy.tail()}"
    assert not after["wasm.mcpgw.vm_reload"], after
    with Rpc(gateway.url) as c:
        c.initialize()
        _, msg = c.call_tool("alpha_echo", {"text": "still serving"})
        assert tool_text(msg) == "alpha: still serving"
        c.delete()


@pytest.fixture(scope="session", autouse=True)
def built_plugin() -> Path:
    """Every e2e test needs the plugin: a missing build fails the run with the fix, never skips it."""
    if not harness.WASM_PATH.exists():
        pytest.fail(f"{harness.WASM_PATH} is not built: run ./build.sh (make wasm)", pytrace=False)
    return harness.WASM_PATH
