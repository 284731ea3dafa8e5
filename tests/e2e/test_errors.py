"""Bad input gets the contract's HTTP status and JSON-RPC error, and never traps the plugin."""

from __future__ import annotations

import json

import pytest

from conftest import MAX_BODY
from rpc import Rpc, describe, message_of, rpc_error, tool_text

pytestmark = pytest.mark.usefixtures("steady_gateway")

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
    # Batches exist only in MCP 2025-03-26 (test_batches.py); this session negotiated the latest.
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


# One meaning per request (docs/architecture.md): bodies an upstream parser could read differently
# from the gateway are refused before routing. Sent as raw text: duplicates and escapes must survive.
def _call(params: str, id_: str = "1", extra: str = "") -> str:
    return f'{{"jsonrpc":"2.0","id":{id_},"method":"tools/call"{extra},"params":{params}}}'


def _nested(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def _ambiguous(key: str, member: str, where: str = " in params") -> str:
    return f'Invalid Request: key "{key}"{where} is ambiguous (an upstream may read it as "{member}")'


DEPTH_ERROR = "Invalid Request: JSON nesting deeper than 64"

# (case id, raw body, JSON-RPC id expected in the error, exact error message)
AMBIGUOUS = [
    ("params-case-duplicate", _call('{"name":"alpha_echo","Name":"beta_echo","arguments":{"text":"x"}}'),
     1, _ambiguous("Name", "name")),
    ("params-upper-alone", _call('{"NAME":"beta_echo","arguments":{"text":"x"}}'), 1, _ambiguous("NAME", "name")),
    ("params-escaped-duplicate", _call('{"name":"alpha_echo","n\\u0061me":"beta_echo","arguments":{"text":"x"}}'),
     1, 'Invalid Request: duplicate key "name" in params'),
    ("params-arguments-case", _call('{"name":"alpha_echo","arguments":{"text":"x"},"Arguments":{"text":"y"}}'),
     1, _ambiguous("Arguments", "arguments")),
    ("params-kelvin", _call('{"name":"alpha_echo","arguments":{"text":"x"},"tas\\u212a":{}}'),
     1, _ambiguous("tas\u212a", "task")),
    ("top-method-case", _call('{"name":"alpha_echo","arguments":{"text":"x"}}', extra=',"METHOD":"ping"'),
     1, _ambiguous("METHOD", "method", "")),
    ("top-method-alone", '{"jsonrpc":"2.0","id":"m","Method":"tools/call","params":{"name":"alpha_echo"}}',
     "m", _ambiguous("Method", "method", "")),
    ("top-params-long-s", _call('{"name":"alpha_echo","arguments":{"text":"x"}}',
                                extra=',"param\\u017f":{"name":"beta_echo","arguments":{"text":"y"}}'),
     1, _ambiguous("param\u017f", "params", "")),
    ("top-id-case", _call('{"name":"alpha_echo","arguments":{"text":"x"}}', extra=',"ID":2'),
     None, _ambiguous("ID", "id", "")),
    ("top-jsonrpc-case", _call('{"name":"alpha_echo","arguments":{"text":"x"}}', extra=',"JsonRpc":"1.0"'),
     1, _ambiguous("JsonRpc", "jsonrpc", "")),
    ("deep-arguments", _call(f'{{"name":"alpha_echo","arguments":{{"text":"x","deep":{_nested(20000)}}}}}'),
     1, DEPTH_ERROR),
    ("deep-meta", _call(f'{{"name":"beta_echo","arguments":{{"text":"x"}},"_meta":{{"x":{_nested(20000)}}}}}'),
     1, DEPTH_ERROR),
    # 65 levels: message, params, _meta, then 62 arrays.
    ("depth-65", _call(f'{{"name":"beta_echo","arguments":{{"text":"x"}},"_meta":{{"x":{_nested(62)}}}}}'),
     1, DEPTH_ERROR),
]


@pytest.mark.parametrize("body,expected_id,message", [a[1:] for a in AMBIGUOUS], ids=[a[0] for a in AMBIGUOUS])
def test_ambiguous_requests_are_refused_and_never_forwarded(session: Rpc, upstreams, body: str, expected_id,
                                                             message: str):
    for upstream in upstreams.values():
        upstream.clear_log()
    resp = session.post(body.encode())
    assert resp.status_code == 400, describe(resp)
    msg = rpc_error(resp)
    assert msg["error"]["code"] == -32600, describe(resp)
    assert msg["error"]["message"] == message, describe(resp)
    assert "id" in msg and msg["id"] == expected_id, describe(resp)
    for name, upstream in upstreams.items():
        assert upstream.requests_log() == [], f"{name} received {upstream.requests_log()}"


def test_unambiguous_requests_still_go_through(session: Rpc, upstreams):
    """The controls: exactly 64 levels, escaped spellings of a single key, and look-alike keys inside
    arguments (the upstream's to read) all reach the upstream, which the request log shows."""
    alpha = upstreams["alpha"]
    alpha.clear_log()
    bodies = [
        _call(f'{{"name":"alpha_echo","arguments":{{"text":"deep"}},"_meta":{{"x":{_nested(61)}}}}}', "11"),
        '{"j\\u0073onrpc":"2.0","\\u0069d":12,"method":"tools/c\\u0061ll",'
        '"params":{"n\\u0061me":"alpha_echo","arguments":{"text":"escaped"}}}',
    ]
    for body in bodies:
        resp = session.post(body.encode())
        assert resp.status_code == 200, describe(resp)
        assert tool_text(message_of(resp)).startswith("alpha: "), describe(resp)
    calls = [r for r in alpha.requests_log() if r.get("rpc_method") == "tools/call"]
    assert len(calls) == len(bodies), alpha.requests_log()


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost.evil.example", "null",
                                    "http://127.0.0.1.nip.io:8080"])
def test_foreign_origin_is_refused_on_every_method(session: Rpc, upstreams, origin: str):
    """DNS rebinding: a browser page of another origin gets 403, and nothing reaches an upstream."""
    for server in upstreams.values():
        server.clear_log()
    resp, msg = session.call_tool("alpha_echo", {"text": "hi"}, headers={"origin": origin})
    assert resp.status_code == 403, describe(resp)
    assert msg["error"]["code"] == -32600 and "Origin" in msg["error"]["message"], describe(resp)
    # Refused in the headers phase, like 406/415: the body (and its id) is never read.
    resp = session.http.delete(session.url, headers=session.headers({"origin": origin}))
    assert resp.status_code == 403, describe(resp)
    assert all(not s.requests_log() for s in upstreams.values())
    resp, msg = session.request("ping")
    assert resp.status_code == 200 and "result" in msg, "the session still works from its own origin"


@pytest.mark.parametrize("origin", ["http://localhost:6274", "http://127.0.0.1:8080", "http://[::1]:3000"])
def test_loopback_origin_is_served(session: Rpc, origin: str):
    resp, msg = session.call_tool("alpha_echo", {"text": "from a local page"}, headers={"origin": origin})
    assert resp.status_code == 200 and tool_text(msg) == "alpha: from a local page", describe(resp)
