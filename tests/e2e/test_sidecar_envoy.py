"""The Envoy side of standalone mode, without the plugin: the bootstrap `mcpgw-sidecar bootstrap`
writes and the CDS/RDS files the sidecar keeps up to date. Real Envoy 1.40 routes a server's
authority to it (http and https with SNI + certificate verification against a CA made here), picks up
a server added to the sidecar's file without a restart, and sends `GET /mcp` to the sidecar."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

import harness
from harness import HOST, DemoServer, envoy_validate, free_ports, to_yaml
from sidecar_harness import (Sidecar, SidecarGateway, TlsServer, base_config, envoy_settings, make_ca,
                             static_equivalent)

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sidecar-envoy")


@pytest.fixture(scope="module")
def certs(workdir):
    return make_ca(workdir / "pki", ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def upstreams(workdir, certs):
    alpha = DemoServer("alpha", workdir)
    beta = DemoServer("beta", workdir)
    secure = TlsServer("secure", workdir, certfile=certs["cert"], keyfile=certs["key"], credential="tls-token")
    harness.start_all([alpha, beta, secure])
    yield {"alpha": alpha, "beta": beta, "secure": secure}
    for s in (alpha, beta, secure):
        s.stop()


@pytest.fixture(scope="module")
def stack(workdir, upstreams, certs):
    """Sidecar (alpha, secure, wrongca) + Envoy without the Wasm filter."""
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds", **envoy)
    cfg["servers"] = [
        {"name": "alpha", "url": upstreams["alpha"].url},
        {"name": "secure", "url": upstreams["secure"].url, "ca_file": str(certs["ca"]),
         "credential": {"env": "SECURE_TOKEN"}},
        # Same server, but trusting an unrelated CA: certificate verification must fail.
        {"name": "wrongca", "url": upstreams["secure"].url, "ca_file": str(certs["other_ca"]),
         "credential": {"env": "SECURE_TOKEN"}},
    ]
    sc = Sidecar(workdir, cfg, env={"SECURE_TOKEN": "tls-token"})
    gw = SidecarGateway(workdir, sc, wasm=False)
    try:
        gw.bootstrap()  # Envoy first: it starts from the files the bootstrap command writes
        gw.envoy.start(60)
        sc.start()
    except harness.HarnessError as e:
        gw.stop()
        sc.stop()
        pytest.fail(str(e), pytrace=False)
    yield sc, gw
    gw.stop()
    sc.stop()


def routed(gw: SidecarGateway, server: str, *, name_header: bool = True, headers: dict | None = None,
           timeout: float = 5.0) -> httpx.Response:
    """POST initialize to Envoy as the plugin would route it: `:authority` and `x-mcp-servername`."""
    h = {**MCP_HEADERS, "host": f"{server}.mcp.local", **(headers or {})}
    if name_header:
        h["x-mcp-servername"] = server
    return httpx.post(gw.url, json=INIT, headers=h, timeout=timeout)


def wait_status(fn, want: int, timeout: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = fn()
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_generated_configuration_validates(workdir, stack):
    sc, gw = stack
    ok, out = envoy_validate(gw.config_path)
    assert ok, out[-2000:]
    with_wasm = SidecarGateway(workdir, sc, wasm=True, name="envoy-wasm")
    if harness.WASM_PATH.exists():
        with_wasm.bootstrap()
        ok, out = envoy_validate(with_wasm.config_path)
        assert ok, out[-2000:]
        filt = json.loads(with_wasm.config_path.read_text())["static_resources"]["listeners"][0][
            "filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
        assert filt["allow_on_headers_stop_iteration"] is True and filt["failure_policy"] == "FAIL_RELOAD"
        assert json.loads(filt["configuration"]["value"])["sidecar"]["cluster"] == "mcpgw_sidecar"
    # Validate mode ignores dynamic resources: check the xDS files' clusters and routes statically.
    listen, admin = free_ports(2)
    static = workdir / "xds-static.yaml"
    static.write_text(to_yaml(static_equivalent(workdir / "xds", sc.port, listen, admin)))
    ok, out = envoy_validate(static)
    assert ok, out[-2000:]
    cds = json.loads((workdir / "xds" / "cds.json").read_text())
    kinds = {c["name"]: c["type"] for c in cds["resources"]}
    assert kinds == {"mcpgw_srv_alpha": "STATIC", "mcpgw_srv_secure": "LOGICAL_DNS", "mcpgw_srv_wrongca": "LOGICAL_DNS"}
    tls = next(c for c in cds["resources"] if c["name"] == "mcpgw_srv_secure")["transport_socket"]["typed_config"]
    assert tls["sni"] == "localhost"


def test_routes_by_authority_with_host_rewrite(stack, upstreams):
    sc, gw = stack
    alpha = upstreams["alpha"]
    alpha.clear_log()
    r = wait_status(lambda: routed(gw, "alpha"), 200)
    assert r.status_code == 200, r.text
    assert r.headers.get("mcp-session-id")
    (entry,) = [e for e in alpha.requests_log() if e["rpc_method"] == "initialize"]
    assert entry["headers"]["host"] == alpha.host  # host_rewrite_literal
    # Envoy's own headers stay in Envoy: the host rewrite's x-envoy-original-host (router
    # suppress_envoy_headers), x-forwarded-proto (needed to pick the route, removed by it).
    for envoy_header in ("x-envoy-original-host", "x-envoy-expected-rq-timeout-ms", "x-forwarded-proto"):
        assert envoy_header not in entry["headers"], entry["headers"]
    # Only requests the plugin routed (x-mcp-servername set) reach a server's virtual host.
    assert routed(gw, "alpha", name_header=False).status_code == 404
    assert routed(gw, "nosuch").status_code == 404
    # The default virtual host: GET /mcp goes to the sidecar's notification stream, the rest is 404.
    # Without the plugin nobody vouches for the client: the sidecar wants the plugin's token, which
    # this test sends itself (the plugin sets it after checking the client's session).
    r = httpx.get(gw.url, headers={"accept": "text/event-stream"}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    with httpx.stream("GET", gw.url, headers={"accept": "text/event-stream", **sc.auth_headers()},
                      timeout=10) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        first = next(s.iter_lines())
        assert first.startswith(":"), first  # a keep-alive comment
    assert httpx.get(f"http://{HOST}:{gw.listen_port}/other", timeout=5).status_code == 404
    assert httpx.post(gw.url, json=INIT, headers=MCP_HEADERS, timeout=5).status_code == 404


def test_tls_upstream_with_sni_verification_and_credential(stack, upstreams):
    sc, gw = stack
    sc.wait_state("secure", "serving")
    # Discovery (the sidecar, rustls) used the configured CA and credential.
    _, _, doc = sc.document()
    secure = next(s for s in doc["servers"] if s["name"] == "secure")
    assert secure["host"] == f"localhost:{upstreams['secure'].port}"
    assert secure["headers"] == [{"name": "authorization", "value": "Bearer tls-token"}]
    assert sorted(t["name"] for t in secure["tools"]) == ["add", "echo", "whoami"]
    wrong = sc.wait_state("wrongca", "down")
    assert "certificate" in wrong["detail"].lower() or "UnknownIssuer" in wrong["detail"], wrong
    # Envoy: TLS with SNI `localhost`, verified against the test CA; the credential is the
    # plugin's to inject, so here the test sends it (and sees 401 without it).
    auth = {"authorization": "Bearer tls-token"}
    r = wait_status(lambda: routed(gw, "secure", headers=auth), 200)
    assert r.status_code == 200, r.text
    assert routed(gw, "secure").status_code == 401
    # An unrelated CA: Envoy refuses the server's certificate (503, no response from upstream).
    r = routed(gw, "wrongca", headers=auth)
    assert r.status_code == 503, r.text
    stats = gw.envoy.stats("cluster.mcpgw_srv_wrongca.ssl.")
    assert stats.get("cluster.mcpgw_srv_wrongca.ssl.fail_verify_error", 0) > 0, stats


def test_server_added_and_removed_without_restart(stack, upstreams):
    sc, gw = stack
    beta = upstreams["beta"]
    assert routed(gw, "beta").status_code == 404
    edited = time.monotonic()
    sc.edit(lambda c: c["servers"].append({"name": "beta", "url": beta.url}))
    r = wait_status(lambda: routed(gw, "beta"), 200, timeout=10)
    took = time.monotonic() - edited
    assert r.status_code == 200, r.text
    print(f"\nconfig edit -> Envoy routes the new authority: {took * 1000:.0f} ms")
    assert "mcpgw_srv_beta" in gw.envoy.admin("/clusters")[1]
    # Removed: the virtual host goes at once, the cluster after a grace period.
    sc.edit(lambda c: c["servers"].pop())
    r = wait_status(lambda: routed(gw, "beta"), 404, timeout=10)
    assert r.status_code == 404
    deadline = time.monotonic() + 20
    while "mcpgw_srv_beta" in gw.envoy.admin("/clusters")[1]:
        assert time.monotonic() < deadline, "retired cluster not removed"
        time.sleep(0.2)
