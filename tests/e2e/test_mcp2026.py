"""MCP 2026-07-28 (stateless) through the real Envoy + plugin, in both install modes:

- `envoy_filter`: the session-wide gateway (`allow_on_headers_stop_iteration: true`): the headers wait
  for the body, which is checked against `Mcp-Method`/`Mcp-Name` before anything is routed;
- `wasm_plugin`: a second Envoy without that flag (what a stock Istio WasmPlugin installs): calls are
  routed on `Mcp-Name` in the headers phase, the body follows once checked and spliced; what the
  gateway answers itself (server/discover, lists) goes on to the default route (a hold listener,
  the sidecar in a generated install) while the plugin reads the body, which never leaves the plugin.

The upstreams (`alpha`, `beta`) are Python `mcp` 2.3.0 servers in session mode: every call here is
bridged onto an upstream session the gateway opens for the stateless client (keyed by a MAC of its
credential). Raw wire checks with httpx, and the official Python client in its 2026 and auto modes.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

import harness
from conftest import GATEWAY_NAME, PAGE_SIZE, make_document
from harness import Gateway
from rpc import ACCEPT, describe, message_of

V2026 = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V2026,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t2026", "version": "1"}}


@pytest.fixture(scope="module")
def plugin_gateway(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """Envoy with the filter as a stock Istio WasmPlugin installs it (no allow_on_headers_stop_iteration)."""
    gw = Gateway(workdir, upstreams=list(upstreams.values()), name="envoy-wasmplugin", validate=True,
                 plugin_config={"document": make_document(upstreams, catalogs)}, install="wasm_plugin")
    harness.started(gw)
    yield gw
    gw.stop()


@pytest.fixture(params=["envoy_filter", "wasm_plugin"])
def gw(request, gateway: Gateway) -> Gateway:
    return gateway if request.param == "envoy_filter" else request.getfixturevalue("plugin_gateway")


_ids = iter(range(1, 1_000_000))


def post(url: str, method: str, params: dict[str, Any] | None = None, *, name: str | None = None,
         headers: dict[str, str | None] | None = None, body: Any = None, id: Any = None,
         meta: dict[str, Any] | None = META) -> httpx.Response:
    """A 2026-07-28 request with its routing headers (overridable; None removes one)."""
    params = dict(params or {})
    if meta is not None:
        params["_meta"] = meta
    if body is None:
        body = {"jsonrpc": "2.0", "id": next(_ids) if id is None else id, "method": method, "params": params}
    h: dict[str, str | None] = {"content-type": "application/json", "accept": ACCEPT,
                                "mcp-protocol-version": V2026, "mcp-method": method}
    if name is not None:
        h["mcp-name"] = name
    h.update(headers or {})
    return httpx.post(url, json=body, headers={k: v for k, v in h.items() if v is not None}, timeout=10.0)


def error_of(resp: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert resp.status_code == status, describe(resp)
    msg = message_of(resp)
    assert msg["error"]["code"] == code, msg
    return msg["error"]


def test_discover_is_answered_by_the_gateway(gw: Gateway):
    resp = post(gw.url, "server/discover", id="d1")
    assert resp.status_code == 200, describe(resp)
    assert "mcp-session-id" not in resp.headers, resp.headers
    msg = message_of(resp)
    assert msg["id"] == "d1"
    result = msg["result"]
    assert result["supportedVersions"][0] == V2026
    assert "2025-11-25" in result["supportedVersions"]
    assert result["capabilities"]["tools"] == {"listChanged": False}
    assert result["serverInfo"]["name"] == GATEWAY_NAME
    assert result["resultType"] == "complete"
    assert result["ttlMs"] == 30000 and result["cacheScope"] == "public"


def test_tools_list_is_stateless_paged_and_carries_cache_hints(gw: Gateway, expected_tools):
    names, cursor = [], None
    for _ in range(10):
        resp = post(gw.url, "tools/list", {"cursor": cursor} if cursor is not None else {})
        assert resp.status_code == 200, describe(resp)
        result = message_of(resp)["result"]
        assert result["ttlMs"] == 30000 and result["cacheScope"] == "public", result
        assert len(result["tools"]) <= PAGE_SIZE
        names += [t["name"] for t in result["tools"]]
        cursor = result.get("nextCursor")
        if cursor is None:
            break
    assert sorted(names) == sorted(expected_tools)


@pytest.mark.parametrize("tool,expected", [("alpha_echo", "alpha: hi 2026"), ("beta_echo", "beta: hi 2026")])
def test_tools_call_is_bridged_to_a_session_era_upstream(gw: Gateway, upstreams, tool: str, expected: str):
    server = upstreams[tool.split("_")[0]]
    server.clear_log()
    for _ in range(2):
        resp = post(gw.url, "tools/call", {"name": tool, "arguments": {"text": "hi 2026"}}, name=tool)
        assert resp.status_code == 200, describe(resp)
        assert "mcp-session-id" not in resp.headers, resp.headers
        msg = message_of(resp)
        assert msg["result"]["content"][0]["text"] == expected, msg
        if resp.headers["content-type"].startswith("text/event-stream"):
            assert resp.headers.get("x-accel-buffering") == "no", resp.headers
    calls = [r for r in server.requests_log() if r["rpc_method"] == "tools/call"]
    assert len(calls) == 2, calls
    # One bridged upstream session for both stateless calls, at the session-era version; the
    # 2026 routing headers do not reach a 2025 upstream.
    sessions = {c["headers"].get("mcp-session-id") for c in calls}
    assert len(sessions) == 1 and None not in sessions, calls
    for c in calls:
        assert c["headers"]["mcp-protocol-version"] == "2025-11-25", c
        assert "mcp-name" not in c["headers"] and "mcp-method" not in c["headers"], c
        assert "authorization" in c["headers"]  # the server's credential, set by the gateway


def test_different_credentials_get_different_bridged_sessions(gateway: Gateway, upstreams):
    upstreams["beta"].clear_log()
    for token in ("client-a", "client-b"):
        resp = post(gateway.url, "tools/call", {"name": "beta_echo", "arguments": {"text": "x"}},
                    name="beta_echo", headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 200, describe(resp)
    calls = [r for r in upstreams["beta"].requests_log() if r["rpc_method"] == "tools/call"]
    assert len({c["headers"].get("mcp-session-id") for c in calls}) == 2, calls
    assert all(c["headers"]["authorization"] == "Bearer beta-secret" for c in calls), calls


def test_non_ascii_names_travel_base64_encoded(gw: Gateway):
    resp = post(gw.url, "tools/call", {"name": "alpha_échо", "arguments": {}},
                name="=?base64?" + base64.b64encode("alpha_échо".encode()).decode() + "?=")
    error_of(resp, 400, -32602)  # decoded, matched the body, then: no such tool


@pytest.mark.parametrize("case", ["name", "method", "no-name", "no-method"])
def test_header_body_mismatch_is_32020_and_nothing_reaches_the_upstream(gw: Gateway, upstreams, case: str):
    alpha = upstreams["alpha"]
    alpha.clear_log()
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "alpha_whoami", "arguments": {}, "_meta": META}}
    headers = {"name": {"mcp-name": "alpha_echo"},
               "method": {"mcp-method": "tools/list"},
               "no-name": {"mcp-name": None},
               "no-method": {"mcp-method": None}}[case]
    resp = post(gw.url, "tools/call", name="alpha_whoami", body=body, headers=headers)
    err = error_of(resp, 400, -32020)
    assert "Mcp-" in err["message"], err
    if "wasmplugin" not in gw.config_path.name:
        # The headers could wait: the refusal read the body to answer with the request's id.
        assert message_of(resp)["id"] == 5, resp.text
    time.sleep(0.2)
    # (In the wasm_plugin install the gateway may have opened its bridged upstream session in the
    # headers phase: initialize and notifications/initialized are its own, not the client's request.)
    reached = [r for r in alpha.requests_log()
               if r["rpc_method"] not in (None, "initialize", "notifications/initialized")]
    assert not reached, reached


def test_meta_is_required_and_must_match_the_header(gw: Gateway):
    error_of(post(gw.url, "tools/list", meta=None), 400, -32602)
    error_of(post(gw.url, "tools/list", meta={"io.modelcontextprotocol/protocolVersion": V2026}), 400, -32602)
    error_of(post(gw.url, "tools/list", meta={**META, "io.modelcontextprotocol/protocolVersion": "2025-11-25"}),
             400, -32020)


def test_unsupported_version_is_32022_with_the_supported_list(gw: Gateway):
    resp = post(gw.url, "tools/list", headers={"mcp-protocol-version": "2027-01-01"}, id=77)
    err = error_of(resp, 400, -32022)
    if "wasmplugin" not in gw.config_path.name:
        assert message_of(resp)["id"] == 77  # the headers waited for the body's id
    assert err["data"]["requested"] == "2027-01-01"
    assert err["data"]["supported"][0] == V2026 and "2025-03-26" in err["data"]["supported"], err


def test_unknown_method_is_404_and_unknown_tool_400(gw: Gateway):
    error_of(post(gw.url, "initialize"), 404, -32601)
    error_of(post(gw.url, "tools/call", {"name": "nope", "arguments": {}}, name="nope"), 400, -32602)


def test_get_and_delete_are_405(gw: Gateway):
    for method in ("GET", "DELETE"):
        resp = httpx.request(method, gw.url, headers={"mcp-protocol-version": V2026, "accept": ACCEPT}, timeout=5)
        assert resp.status_code == 405, describe(resp)


def test_wasm_plugin_mode_refuses_2025_posts_at_once(plugin_gateway: Gateway):
    t0 = time.monotonic()
    resp = httpx.post(plugin_gateway.url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                                           "clientInfo": {"name": "t", "version": "1"}}},
                      headers={"accept": ACCEPT}, timeout=10)
    assert time.monotonic() - t0 < 2.0
    err = error_of(resp, 400, -32600)
    assert "2026-07-28" in err["message"], err


def test_wasm_plugin_mode_local_answers_never_leak_a_body(plugin_gateway: Gateway):
    before = plugin_gateway.envoy.stats("http.mcpgw_hold.")
    for _ in range(3):
        assert post(plugin_gateway.url, "server/discover").status_code == 200
    time.sleep(0.3)
    after = plugin_gateway.envoy.stats("http.mcpgw_hold.")
    # The discover requests went on to the hold listener (their headers, when the connection was up
    # before the plugin answered) and none got its body: the hold listener answered nothing.
    held = after.get("http.mcpgw_hold.downstream_rq_total", 0) - before.get("http.mcpgw_hold.downstream_rq_total", 0)
    assert held <= 3, (before, after)
    answered = after.get("http.mcpgw_hold.downstream_rq_5xx", 0) - before.get("http.mcpgw_hold.downstream_rq_5xx", 0)
    assert answered == 0, (before, after)


# -------------------------------------------------------------------- the official Python client

def run_client(url: str, mode: str) -> tuple[str, list[str], str]:
    import mcp

    async def main() -> tuple[str, list[str], str]:
        async with mcp.Client(url, mode=mode) as c:
            names, cursor = [], None
            for _ in range(10):
                page = await c.list_tools(cursor=cursor)
                names += [t.name for t in page.tools]
                cursor = page.next_cursor
                if cursor is None:
                    break
            r = await c.call_tool("beta_echo", {"text": "sdk"})
            return c.protocol_version, names, r.content[0].text

    return asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("mode", [V2026, "auto"])
def test_python_client_2026_mode(gw: Gateway, expected_tools, mode: str):
    version, names, text = run_client(gw.url, mode)
    assert version == V2026
    assert sorted(names) == sorted(expected_tools)
    assert text == "beta: sdk"


def test_python_client_legacy_mode_still_works(gateway: Gateway, expected_tools):
    version, names, text = run_client(gateway.url, "legacy")
    assert version != V2026
    assert sorted(names) == sorted(expected_tools)
    assert text == "beta: sdk"


# -------------------------------------------------------------- the TypeScript SDK (2026 generation)

TS_CLIENT_2026 = harness.REPO_ROOT / "tests" / "clients" / "ts_client_2026.mjs"


@pytest.mark.parametrize("how", ["pin", "auto"])
def test_typescript_client_2026_mode(gw: Gateway, expected_tools, how: str):
    import json
    import subprocess

    r = subprocess.run(["node", str(TS_CLIENT_2026), gw.url, how], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["version"] == V2026, out
    assert sorted(out["names"]) == sorted(expected_tools)
    assert out["text"] == "beta: sdk".replace("sdk", "ts")


# ------------------------------------------------ 2026 upstreams: no upstream session at all

@pytest.fixture(scope="module", params=["envoy_filter", "wasm_plugin"])
def native_gateway(request, workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """The same upstreams recorded as speaking 2026-07-28 (the Python `mcp` 2.3.0 servers serve both eras):
    stateless clients' calls go to them as they are."""
    doc = make_document(upstreams, catalogs)
    for server in doc["servers"]:
        server["protocol_versions"] = [V2026, "2025-11-25"]
    gw = Gateway(workdir, upstreams=list(upstreams.values()), name=f"envoy-native-{request.param}",
                 validate=True, plugin_config={"document": doc}, install=request.param)
    harness.started(gw)
    yield gw
    gw.stop()


@pytest.mark.parametrize("tool,expected", [("alpha_echo", "alpha: native"), ("beta_echo", "beta: native")])
def test_2026_upstreams_are_called_statelessly(native_gateway: Gateway, upstreams, tool: str, expected: str):
    server = upstreams[tool.split("_")[0]]
    server.clear_log()
    resp = post(native_gateway.url, "tools/call", {"name": tool, "arguments": {"text": "native"}}, name=tool)
    assert resp.status_code == 200, describe(resp)
    assert message_of(resp)["result"]["content"][0]["text"] == expected
    log = server.requests_log()
    assert [r["rpc_method"] for r in log] == ["tools/call"], log  # no initialize: no session
    h = log[0]["headers"]
    assert "mcp-session-id" not in h, h
    assert h["mcp-protocol-version"] == V2026 and h["mcp-method"] == "tools/call", h
    assert h["mcp-name"] == "echo", h  # the upstream's own name, in the header as in the body


def test_python_client_through_2026_upstreams(native_gateway: Gateway, expected_tools):
    version, names, text = run_client(native_gateway.url, V2026)
    assert (version, text) == (V2026, "beta: sdk")
    assert sorted(names) == sorted(expected_tools)


# ------------------------------------- the sidecar's wasm_plugin install, generated end to end

def sidecar_stack(workdir: Path, upstreams, install: str, tag: str):
    """mcpgw-sidecar with `envoy.install: INSTALL`: its bootstrap, its xDS, its discovery (which records
    each upstream's revisions), beta behind it."""
    from sidecar_harness import Sidecar, SidecarGateway, base_config, envoy_settings

    d = workdir / f"sidecar-{install}-{tag}"
    d.mkdir(exist_ok=True)
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), d / "xds", **envoy, install=install)
    cfg["servers"] = [{"name": "beta", "url": upstreams["beta"].url,
                       "credential": {"env": "BETA_TOKEN"}, "prefix": "beta_"}]
    sc = Sidecar(d, cfg, env={"BETA_TOKEN": "beta-secret", "ALPHA_TOKEN": "alpha-secret"})
    gw = SidecarGateway(d, sc)
    try:
        sc.start()
        sc.wait_state("beta", "serving")
        gw.start()
    except harness.HarnessError as e:
        gw.stop()
        sc.stop()
        pytest.fail(str(e), pytrace=False)
    return sc, gw


@pytest.fixture(scope="module", params=["envoy_filter", "wasm_plugin"])
def sidecar_any(request, workdir: Path, upstreams):
    sc, gw = sidecar_stack(workdir, upstreams, request.param, "listen")
    yield sc, gw
    gw.stop()
    sc.stop()


@pytest.fixture(scope="module")
def sidecar_wasm_plugin(workdir: Path, upstreams):
    sc, gw = sidecar_stack(workdir, upstreams, "wasm_plugin", "install")
    yield sc, gw
    gw.stop()
    sc.stop()


def test_subscriptions_listen_streams_the_catalog_changes(sidecar_any, upstreams):
    import json

    sc, gw = sidecar_any
    deadline = time.monotonic() + 15  # the plugin adopts the sidecar's first document
    while post(gw.url, "server/discover").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    body = {"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": True}, "_meta": META}}
    headers = {"content-type": "application/json", "accept": ACCEPT, "mcp-protocol-version": V2026,
               "mcp-method": "subscriptions/listen"}
    events: list[dict] = []
    with httpx.stream("POST", gw.url, json=body, headers=headers, timeout=httpx.Timeout(20.0)) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                break
        # A catalog change (alpha added) reaches the listener, tagged with its subscription.
        sc.edit(lambda c: c["servers"].append({"name": "alpha", "url": upstreams["alpha"].url,
                                               "credential": {"env": "ALPHA_TOKEN"}, "prefix": "alpha_"}))
        for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                break
    sc.edit(lambda c: c.update(servers=[s for s in c["servers"] if s["name"] != "alpha"]))
    assert events[0]["method"] == "notifications/subscriptions/acknowledged", events
    assert events[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1"
    assert events[1]["method"] == "notifications/tools/list_changed", events
    assert events[1]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1"


def test_sidecar_records_revisions_and_serves_the_wasm_plugin_install(sidecar_wasm_plugin, upstreams):
    sc, gw = sidecar_wasm_plugin
    bootstrap = gw.config_path.read_text()
    assert "mcpgw.wasm" in bootstrap and "allow_on_headers_stop_iteration" not in bootstrap
    status, _, doc = sc.document()
    assert status == 200, status
    versions = doc["servers"][0]["protocol_versions"]
    assert V2026 in versions and "2025-11-25" in versions, versions
    # Discover (held on the sidecar's POST route while the plugin reads the body) and a native call.
    deadline = time.monotonic() + 15
    while True:
        resp = post(gw.url, "server/discover")
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 200, describe(resp)
    assert message_of(resp)["result"]["supportedVersions"][0] == V2026
    upstreams["beta"].clear_log()
    resp = post(gw.url, "tools/call", {"name": "beta_echo", "arguments": {"text": "sc"}}, name="beta_echo")
    assert resp.status_code == 200, describe(resp)
    assert message_of(resp)["result"]["content"][0]["text"] == "beta: sc"
    # (Other sidecars' health pings and discovery may reach beta meanwhile: only the call matters.)
    calls = [r for r in upstreams["beta"].requests_log() if r["rpc_method"] == "tools/call"]
    assert len(calls) == 1 and "mcp-session-id" not in calls[0]["headers"], calls
    # A 2025 client: refused at once, with the reason.
    resp = httpx.post(gw.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"accept": ACCEPT},
                      timeout=10)
    error_of(resp, 400, -32600)
    # Should a body ever reach the sidecar's held route (no plugin in the chain): an error, not a hang.
    error_of(httpx.post(f"{sc.base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=5),
             503, -32603)


# ------------------------------------------------- 2025 clients and an upstream that speaks only 2026

@pytest.fixture(scope="module")
def modern_only_gateway(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """alpha recorded as speaking only 2026-07-28: session clients' calls are translated for it."""
    doc = make_document(upstreams, catalogs)
    for server in doc["servers"]:
        if server["name"] == "alpha":
            server["protocol_versions"] = [V2026]
    gw = Gateway(workdir, upstreams=list(upstreams.values()), name="envoy-modern-only", validate=True,
                 plugin_config={"document": doc})
    harness.started(gw)
    yield gw
    gw.stop()


def test_2025_client_calls_a_2026_only_upstream(modern_only_gateway: Gateway, upstreams):
    from rpc import Rpc, tool_text

    alpha = upstreams["alpha"]
    alpha.clear_log()
    with Rpc(modern_only_gateway.url) as c:
        c.initialize("2025-11-25")
        for text in ("one", "two"):
            resp, msg = c.call_tool("alpha_echo", {"text": text})
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg) == f"alpha: {text}"
            assert resp.headers.get("mcp-session-id") == c.session  # the client's own session
        c.delete()
    log = alpha.requests_log()
    assert [r["rpc_method"] for r in log] == ["tools/call", "tools/call"], log  # never initialized
    for r in log:
        h = r["headers"]
        assert "mcp-session-id" not in h and h["mcp-protocol-version"] == V2026, h
        assert h["mcp-method"] == "tools/call" and h["mcp-name"] == "echo", h
