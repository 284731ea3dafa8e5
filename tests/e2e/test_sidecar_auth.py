"""Who may talk to the sidecar (docs/security.md), end to end: real Envoy 1.40 bootstrapped by
`mcpgw-sidecar bootstrap`, the Wasm plugin, the sidecar and a Python-SDK MCP server requiring a
credential.

- `GET /v1/config` (every upstream credential, the session keys) needs the plugin token: a direct
  request without it, or with a wrong one, gets 401 and no secret; the plugin, which has the token
  in its configuration, still gets its document.
- `GET /mcp` on the sidecar (the notification stream) is served only to requests the plugin
  vouched for: direct requests get 401, even with a valid client session; through the gateway a
  client with a valid session gets the stream, whatever `authorization` it sends itself.
- `/v1/status` and `/healthz` stay open and hold no secret.
- A plugin configured with a wrong token is refused, and says so in Envoy's log."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import httpx
import pytest

import harness
from harness import HOST, DemoServer, Envoy
from sidecar_harness import ListeningClient, Sidecar, SidecarGateway, base_config, envoy_settings, fresh_tool_names

ALPHA_TOOLS = ["alpha_echo", "alpha_add", "alpha_whoami"]
ALPHA_SECRET = "alpha-secret-for-the-auth-test"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}



@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sidecar-auth")


@pytest.fixture(scope="module")
def alpha(workdir):
    s = DemoServer("alpha", workdir, credential=ALPHA_SECRET).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stack(workdir, alpha):
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds", **envoy)
    cfg["servers"] = [{"name": "alpha", "url": alpha.url, "credential": {"env": "ALPHA_TOKEN"}}]
    sc = Sidecar(workdir, cfg, env={"ALPHA_TOKEN": ALPHA_SECRET})
    gw = SidecarGateway(workdir, sc)
    try:
        # Envoy first: `bootstrap` creates the token file, which the sidecar then uses.
        gw.bootstrap()
        sc.start()
        sc.wait_state("alpha", "serving")
        gw.start()
        wait_tools(gw.url, ALPHA_TOOLS)
    except harness.HarnessError as e:
        gw.stop()
        sc.stop()
        pytest.fail(str(e), pytrace=False)
    yield sc, gw
    gw.stop()
    sc.stop()


def wait_tools(url: str, want: list[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while time.monotonic() < deadline:
        try:
            names = fresh_tool_names(url, timeout=5)
            if names == want:
                return
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            names = [repr(e)]
        time.sleep(0.05)
    raise AssertionError(f"tools/list never listed {want}; last: {names}")


def secrets_of(sc: Sidecar) -> list[str]:
    """What must never leave the sidecar unauthenticated: the token, the session key, the credential."""
    return [sc.token(), (sc.workdir / "session.key").read_text().strip(), ALPHA_SECRET]


def assert_refused(r: httpx.Response, sc: Sidecar) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "unauthorized"
    for secret in secrets_of(sc):
        assert secret not in r.text and secret not in str(r.headers)


def initialize(url: str) -> str:
    r = httpx.post(url, json=INIT, headers=MCP_HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


def test_the_token_file_and_the_bootstrap_are_private(stack):
    sc, gw = stack
    token = sc.token()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert stat.S_IMODE(sc.token_path.stat().st_mode) == 0o600
    # The bootstrap carries the token in the plugin configuration: owner-only too.
    assert stat.S_IMODE(gw.config_path.stat().st_mode) == 0o600
    boot = json.loads(gw.config_path.read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    plugin = json.loads(hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"])
    assert plugin["sidecar"]["token"] == token
    # Envoy's admin interface (whose /config_dump shows it) listens on loopback only.
    assert boot["admin"]["address"]["socket_address"]["address"] == HOST


def test_the_document_needs_the_plugin_token(stack):
    sc, _ = stack
    url = f"{sc.base}/v1/config"
    assert_refused(httpx.get(url, timeout=5), sc)
    assert_refused(httpx.get(url, headers={"authorization": "Bearer not-the-token"}, timeout=5), sc)
    assert_refused(httpx.get(url, headers={"authorization": f"Basic {sc.token()}"}, timeout=5), sc)
    # The wait is not held for a refused caller: answered within a read timeout far shorter than
    # the wait it asked for (a held one would raise httpx.ReadTimeout).
    assert_refused(httpx.get(url, params={"wait_ms": 120000}, timeout=30), sc)
    status, _, doc = sc.document(authorized=False)
    assert (status, doc) == (401, None)
    # With it: the document and its secrets, as the plugin gets them.
    status, _, doc = sc.document()
    assert status == 200
    assert doc["servers"][0]["headers"] == [{"name": "authorization", "value": f"Bearer {ALPHA_SECRET}"}]


def test_status_and_health_stay_open_without_secrets(stack):
    sc, _ = stack
    r = httpx.get(f"{sc.base}/v1/status", timeout=5)
    assert r.status_code == 200 and r.json()["ready"] is True
    for secret in secrets_of(sc):
        assert secret not in r.text
    assert httpx.get(f"{sc.base}/healthz", timeout=5).status_code == 200


def test_the_gateway_still_gets_its_configuration(stack):
    sc, gw = stack
    assert fresh_tool_names(gw.url) == ALPHA_TOOLS
    with ListeningClient(gw.url) as client:
        text, is_error = client.call_tool("alpha_whoami")
        assert not is_error, text
        assert json.loads(text)["headers"]["authorization"] == f"Bearer {ALPHA_SECRET}"
    log = gw.envoy.log_path.read_text(errors="replace")
    assert "refused the plugin's token" not in log


def test_the_stream_is_refused_when_reached_directly(stack):
    sc, gw = stack
    session = initialize(gw.url)  # a valid client session is not enough on the sidecar's port
    for headers in ({}, {"mcp-session-id": session}, {"authorization": "Bearer a-client-credential"}):
        r = httpx.get(f"{sc.base}/mcp", headers={"accept": "text/event-stream", **headers}, timeout=5)
        assert_refused(r, sc)


def test_the_stream_through_the_gateway_needs_a_valid_session(stack):
    sc, gw = stack
    session = initialize(gw.url)
    headers = {"accept": "text/event-stream", "mcp-protocol-version": "2025-11-25",
               # The client's own credential is dropped; the plugin's token replaces it.
               "authorization": "Bearer a-client-credential"}
    with httpx.stream("GET", gw.url, headers={**headers, "mcp-session-id": session},
                      timeout=httpx.Timeout(10, read=10)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        first = next(r.iter_lines())
        assert first.startswith(":"), first  # the sidecar's keep-alive comment (every 1 s here)
    # No session, or a forged one: the plugin answers, nothing reaches the sidecar.
    r = httpx.get(gw.url, headers=headers, timeout=5)
    assert r.status_code == 400, r.text
    r = httpx.get(gw.url, headers={**headers, "mcp-session-id": "k1.forged"}, timeout=5)
    assert r.status_code == 404, r.text


def test_a_plugin_with_a_wrong_token_is_refused(stack, workdir):
    """The same bootstrap with another token: the sidecar refuses the plugin's polls, the plugin
    logs why and, having no configuration, answers MCP requests 503."""
    sc, gw = stack
    listen, admin = harness.free_ports(2)
    boot = json.loads(gw.config_path.read_text())
    boot["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = boot["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen
    wasm = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
    plugin = json.loads(wasm["configuration"]["value"])
    plugin["sidecar"]["token"] = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    wasm["configuration"]["value"] = json.dumps(plugin)
    path = workdir / "envoy-wrong-token.json"
    path.write_text(json.dumps(boot))
    wrong = Envoy(path, workdir, admin_port=admin, listen_port=listen, name="envoy-wrong-token",
                  component_log_level="wasm:info")
    try:
        wrong.start(60)
        deadline = time.monotonic() + 15
        while "refused the plugin's token" not in wrong.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, wrong.tail()
            time.sleep(0.05)
        r = httpx.post(f"http://{HOST}:{listen}/mcp", json=INIT, headers=MCP_HEADERS, timeout=5)
        assert r.status_code == 503, r.text
        assert "no configuration yet" in r.text
    finally:
        wrong.stop()
