"""Bad input gets the contract's HTTP status and JSON-RPC error, and never traps the plugin."""

from __future__ import annotations

import json

import pytest

from conftest import MAX_BODY
from rpc import Rpc, describe, rpc_error, tool_text

ANY_ID = object()  # the error may carry the request's id or null

# (case id, body, expected HTTP status, JSON-RPC code, expected id)
MALFORMED = [
    ("not-json", b"{this is not json", 400, -32700, None),
    ("empty-body", b"", 400, -32700, None),
    ("truncated", b'{"jsonrpc":"2.0","id":1,"method":"ping"', 400, -32700, None),
    ("missing-jsonrpc", {"id": 1, "method": "ping"}, 400, -32600, ANY_ID),
    ("jsonrpc-1.0", {"jsonrpc": "1.0", "id": 1, "method": "ping"}, 400, -32600, ANY_ID),
    ("id-object", {"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, 400, -32600, None),
    ("id-bool", {"jsonrpc": "2.0", "id": True, "method": "ping"}, 400, -32600, None),
    ("method-number", {"jsonrpc": "2.0", "id": 1, "method": 42}, 400, -32600, ANY_ID),
    ("json-string", "\"just a string\"", 400, -32600, None),
    ("batch", [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}],
     400, -32600, None),
    ("empty-batch", [], 400, -32600, None),
]


@pytest.mark.parametrize("body,status,code,expected_id", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_requests(session: Rpc, body, status: int, code: int, expected_id):
    resp = session.post(body)
    assert resp.status_code == status, describe(resp)
    msg = rpc_error(resp)
    assert msg["error"]["code"] == code, describe(resp)
    assert isinstance(msg["error"].get("message"), str), describe(resp)
    if expected_id is ANY_ID:
        assert msg.get("id") in (None, 1), describe(resp)
    else:
        assert "id" in msg and msg["id"] is expected_id, describe(resp)


def test_unknown_method(session: Rpc):
    resp = session.post({"jsonrpc": "2.0", "id": 3, "method": "frobnicate/now", "params": {}})
    assert resp.status_code == 200, describe(resp)
    msg = rpc_error(resp)
    assert msg["error"]["code"] == -32601 and msg["id"] == 3, describe(resp)


@pytest.mark.parametrize("params", [
    {"name": "alpha_nope", "arguments": {}},
    {"name": "gamma_echo", "arguments": {}},
    {"name": "echo", "arguments": {"text": "unprefixed"}},
    {"name": "", "arguments": {}},
    {"arguments": {"text": "no name"}},
    {"name": 17, "arguments": {}},
    None,
], ids=["unknown-tool", "unknown-prefix", "unprefixed", "empty-name", "no-name", "name-number", "no-params"])
def test_bad_tool_name(session: Rpc, params):
    body = {"jsonrpc": "2.0", "id": "bad-tool", "method": "tools/call"}
    if params is not None:
        body["params"] = params
    resp = session.post(body)
    assert resp.status_code == 200, describe(resp)
    msg = rpc_error(resp)
    assert msg["error"]["code"] == -32602 and msg["id"] == "bad-tool", describe(resp)


def test_call_without_session(rpc: Rpc):
    resp = rpc.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "alpha_echo", "arguments": {"text": "x"}}}, session=False)
    assert resp.status_code == 400, describe(resp)
    assert rpc_error(resp)["error"]["code"] == -32600, describe(resp)


def tampered(token: str) -> str:
    """`token` with one character in the middle changed (staying in the token's visible-ASCII alphabet)."""
    i = len(token) // 2
    c = token[i]
    repl = "A" if c != "A" else "B"
    return token[:i] + repl + token[i + 1:]


@pytest.mark.parametrize("kind", ["tampered", "truncated", "garbage", "extended"])
def test_bad_session_token_is_404(session: Rpc, kind: str):
    token = {
        "tampered": tampered(session.session),
        "truncated": session.session[:-4],
        "garbage": "definitely-not-a-session",
        "extended": session.session + "AAAA",
    }[kind]
    assert token != session.session
    resp = session.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "beta_echo", "arguments": {"text": "x"}}},
                        headers={"mcp-session-id": token})
    assert resp.status_code == 404, describe(resp)
    # The genuine token still works.
    _, msg = session.call_tool("beta_echo", {"text": "still fine"})
    assert tool_text(msg) == "beta: still fine"


def test_body_over_limit_is_413(session: Rpc):
    big = "x" * (MAX_BODY + 1024)
    resp = session.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "beta_echo", "arguments": {"text": big}}})
    assert resp.status_code == 413, describe(resp)
    # Just under the limit still goes through.
    text = "y" * (MAX_BODY - 1024)
    resp, msg = session.call_tool("beta_echo", {"text": text})
    assert resp.status_code == 200, describe(resp)
    assert tool_text(msg) == f"beta: {text}"


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
def test_wrong_content_type_is_415(session: Rpc, ctype: str):
    resp = session.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"content-type": ctype})
    assert resp.status_code == 415, describe(resp)


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH"])
def test_other_http_methods_are_405(session: Rpc, method: str):
    headers = session.headers({"accept": "text/event-stream"} if method == "GET" else None)
    resp = session.http.request(method, session.url, headers=headers,
                                content=None if method == "GET" else b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert resp.status_code == 405, describe(resp)


@pytest.mark.parametrize("version", ["2099-01-01", "2024-11-05", "garbage"])
def test_unsupported_protocol_version_header_is_400(session: Rpc, version: str):
    resp = session.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"mcp-protocol-version": version})
    assert resp.status_code == 400, describe(resp)


def test_supported_protocol_version_header_other_than_negotiated_is_accepted(session: Rpc):
    resp = session.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"mcp-protocol-version": "2025-03-26"})
    assert resp.status_code == 200, describe(resp)


def test_other_paths_are_not_mcp(gateway):
    import httpx

    r = httpx.post(gateway.base_url + "/not-mcp", content=b"{}", headers={"content-type": "application/json"},
                   timeout=5)
    assert r.status_code == 404 and r.text == "no route\n", describe(r)


def test_plugin_survived_bad_input(gateway):
    """Nothing above trapped the VM: no reloads, and the gateway still answers."""
    stats = gateway.envoy.stats("wasm.mcpgw.")
    assert "wasm.mcpgw.vm_reload" in stats, stats
    assert stats["wasm.mcpgw.vm_reload"] == 0, stats
    with Rpc(gateway.url) as c:
        c.initialize()
        _, msg = c.call_tool("alpha_echo", {"text": "alive"})
        assert tool_text(msg) == "alpha: alive"
    log = gateway.envoy.log_path.read_text(errors="replace")
    assert "panicked" not in log, gateway.envoy.tail(60)


def test_client_cannot_reach_an_upstream_by_spoofing_routing_headers(gateway, upstreams):
    """Upstream routes match the gateway's own x-mcp-servername; a client's copy is stripped on every
    path, so naming an upstream's internal authority and header gets nowhere."""
    import httpx

    alpha = upstreams["alpha"]
    alpha.clear_log()
    for path in ("/mcp-not", "/other", "/"):
        r = httpx.post(gateway.base_url + path, content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
                       headers={"content-type": "application/json", "host": "alpha.mcp.local",
                                "x-mcp-servername": "alpha", "x-mcp-toolname": "echo"}, timeout=5)
        assert r.status_code == 404, describe(r)
    assert alpha.requests_log() == []
