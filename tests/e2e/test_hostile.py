"""The hostile-input suite: requests a careless or malicious client sends, each answered with the exact
HTTP status and JSON-RPC error of the contract (docs/security.md), after which the gateway still serves
a valid call and no plugin VM was reloaded or created (Envoy's own counters).

test_errors.py covers malformed JSON-RPC, bad names, bad session tokens, sizes, content types, HTTP
methods, protocol-version headers, ambiguous keys, nesting depth and Origin; test_batches.py the
2025-03-26 batches. This file adds ids of every type and size, encodings, header abuse, session reuse
after DELETE, name tricks, spoofed internal headers and protocol-version abuse in `initialize`; every
case here and there runs under the same steady-state check (conftest.py, `steady_gateway`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import httpx
import pytest

from conftest import MAX_BODY
from rpc import Rpc, describe, message_of, rpc_error, tool_text

pytestmark = pytest.mark.usefixtures("steady_gateway")

ECHO = {"name": "alpha_echo", "arguments": {"text": "x"}}


def call(id_: str = "1", params: str = '{"name":"alpha_echo","arguments":{"text":"x"}}',
         method: str = "tools/call") -> bytes:
    return f'{{"jsonrpc":"2.0","id":{id_},"method":"{method}","params":{params}}}'.encode()


@dataclass(frozen=True)
class Case:
    """`send(session)` returns the gateway's answer; it must be `status` with a JSON-RPC error `code`
    (None: no body is read, e.g. 404 for a session) carrying `rid` (the request's id, echoed)."""

    name: str
    send: Callable[[Rpc], httpx.Response]
    status: int
    code: int | None
    rid: Any = None
    message: str | None = None  # a fragment the error message must contain


def raw(body: bytes, headers: dict[str, str] | None = None) -> Callable[[Rpc], httpx.Response]:
    return lambda s: s.post(body, headers=headers)


def with_headers(headers: dict[str, str] | list[tuple[str, str]], body: bytes = call()) -> Callable[[Rpc], httpx.Response]:
    def send(s: Rpc) -> httpx.Response:
        base = s.headers()
        if isinstance(headers, dict):
            merged: Any = {**base, **headers}
        else:  # repeated header lines
            names = {k for k, _ in headers}
            merged = [(k, v) for k, v in base.items() if k not in names] + headers
        return s.http.post(s.url, content=body, headers=merged)
    return send


def after_delete(body: bytes = call()) -> Callable[[Rpc], httpx.Response]:
    def send(s: Rpc) -> httpx.Response:
        with Rpc(s.url) as other:
            other.initialize()
            assert other.delete().status_code in (200, 204)
            return other.post(body)
    return send


def deleted_twice(s: Rpc) -> httpx.Response:
    with Rpc(s.url) as other:
        other.initialize()
        assert other.delete().status_code in (200, 204)
        return other.delete()


def initialize(params: str) -> Callable[[Rpc], httpx.Response]:
    body = f'{{"jsonrpc":"2.0","id":"init","method":"initialize","params":{params}}}'.encode()
    return lambda s: s.post(body, session=False)


INIT_OK = '"capabilities":{},"clientInfo":{"name":"h","version":"1"}'

CASES = [
    # --- ids of every type and size -------------------------------------------------------------
    Case("id-null", raw(call("null")), 400, -32600, None),
    Case("id-float", raw(call("1.5")), 400, -32600, None),
    Case("id-exponent", raw(call("1e3")), 400, -32600, None),
    Case("id-array", raw(call("[1]")), 400, -32600, None),
    Case("id-huge-integer", raw(call("1" * 40)), 400, -32600, None),
    Case("id-string-over-limit", raw(call('"' + "i" * (MAX_BODY + 1) + '"')), 413, -32600, None),
    Case("id-duplicated", raw(b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{}}'), 400, -32600,
         None, 'duplicate key "id"'),
    # --- encodings ----------------------------------------------------------------------------------
    Case("utf8-bom", raw(b"\xef\xbb\xbf" + call()), 400, -32700, None),
    Case("utf16-body", raw(call().decode().encode("utf-16")), 400, -32700, None),
    Case("invalid-utf8-in-string", raw(call().replace(b'"x"', b'"\xff\xfe"')), 400, -32700, None),
    Case("nul-byte", raw(call().replace(b'"x"', b'"\x00"')), 400, -32700, None),
    Case("trailing-garbage", raw(call() + b"xyz"), 400, -32700, None),
    Case("two-messages", raw(call() + call("2")), 400, -32700, None),
    Case("lone-surrogate-in-name", raw(call(params='{"name":"alpha_echo\\ud800","arguments":{}}')), 200, -32602,
         1, "params.name must be a string"),
    Case("charset-utf16", with_headers({"content-type": "application/json; charset=utf-16"}), 415, -32600),
    Case("content-encoding-gzip", with_headers({"content-encoding": "gzip"}), 415, -32600),
    # --- header abuse -------------------------------------------------------------------------------
    Case("accept-html-only", with_headers({"accept": "text/html"}), 406, -32600),
    Case("accept-json-only", with_headers({"accept": "application/json"}), 406, -32600),
    Case("session-header-twice", with_headers([("mcp-session-id", "a"), ("mcp-session-id", "b")]), 400, -32600,
         None, "header mcp-session-id must appear once"),
    Case("session-header-8k", with_headers({"mcp-session-id": "s" * 8192}), 404, None),
    Case("session-header-empty", with_headers({"mcp-session-id": ""}), 404, None),
    Case("version-header-twice", with_headers([("mcp-protocol-version", "2025-06-18"),
                                               ("mcp-protocol-version", "2025-03-26")]), 400, -32600,
         None, "header mcp-protocol-version must appear once"),
    Case("content-type-twice", with_headers([("content-type", "application/json"), ("content-type", "text/plain")]),
         415, -32600, None, "Content-Type must be application/json"),  # one joined value reaches the gateway
    # -32022 (MCP 2026-07-28), with data.supported naming the versions the gateway speaks, and the id.
    Case("version-header-padded", with_headers({"mcp-protocol-version": "2025-06-18 ,x"}), 400, -32022, 1),
    # --- sessions -----------------------------------------------------------------------------------
    Case("reuse-after-delete", after_delete(), 404, None),
    Case("list-after-delete", after_delete(call("3", "{}", "tools/list")), 404, None),
    Case("delete-twice", deleted_twice, 404, None),
    # --- name tricks --------------------------------------------------------------------------------
    Case("name-prefix-only", raw(call(params='{"name":"alpha_","arguments":{}}')), 200, -32602, 1),
    Case("name-nul-suffix", raw(call(params='{"name":"alpha_echo\\u0000","arguments":{}}')), 200, -32602, 1),
    Case("name-homoglyph", raw(call(params='{"name":"alpha_ech\\u043e","arguments":{}}')), 200, -32602, 1),
    Case("name-leading-space", raw(call(params='{"name":" alpha_echo","arguments":{}}')), 200, -32602, 1),
    Case("name-upper-case", raw(call(params='{"name":"ALPHA_ECHO","arguments":{}}')), 200, -32602, 1),
    Case("name-path-traversal", raw(call(params='{"name":"alpha_../beta_echo","arguments":{}}')), 200, -32602, 1),
    Case("name-object", raw(call(params='{"name":{"alpha":"echo"},"arguments":{}}')), 200, -32602, 1),
    Case("prompt-unknown", raw(call(params='{"name":"alpha_nope"}', method="prompts/get")), 200, -32602, 1),
    Case("resource-foreign-uri", raw(call(params='{"uri":"file:///etc/passwd"}', method="resources/read")), 200,
         -32002, 1, "Resource not found"),
    Case("cursor-forged", raw(call(params='{"cursor":"' + "c" * 4096 + '"}', method="tools/list")), 200, -32602, 1),
    # --- protocol-version abuse in initialize ---------------------------------------------------------
    Case("init-version-number", initialize(f'{{"protocolVersion":20250618,{INIT_OK}}}'), 200, -32602, "init"),
    Case("init-no-version", initialize(f"{{{INIT_OK}}}"), 200, -32602, "init"),
    Case("init-no-params", lambda s: s.post(b'{"jsonrpc":"2.0","id":"init","method":"initialize"}', session=False),
         200, -32602, "init"),
    Case("init-as-notification", lambda s: s.post(
        f'{{"jsonrpc":"2.0","method":"initialize","params":{{"protocolVersion":"2025-06-18",{INIT_OK}}}}}'.encode(),
        session=False), 202, None),  # a notification is never answered, whatever its method
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(session: Rpc, upstreams, case: Case):
    for server in upstreams.values():
        server.clear_log()
    resp = case.send(session)
    assert resp.status_code == case.status, describe(resp)
    if case.code is not None:
        msg = rpc_error(resp)
        assert msg["error"]["code"] == case.code, describe(resp)
        assert isinstance(msg["error"].get("message"), str) and msg["error"]["message"], describe(resp)
        assert "id" in msg and msg["id"] == case.rid, describe(resp)
        if case.message:
            assert case.message in msg["error"]["message"], describe(resp)
    calls = [r for s in upstreams.values() for r in s.requests_log() if r.get("rpc_method") == "tools/call"]
    assert calls == [], f"a refused request reached an upstream: {calls}"


# Accepted although unusual: the controls, so the refusals above are about the hostile part only.
ACCEPTED = [
    ("id-zero", "0", 0),
    ("id-negative", "-7", -7),
    ("id-empty-string", '""', ""),
    ("id-escaped-string", '"a\\"b\\u00e9\\n"', 'a"b\u00e9\n'),
    ("id-long-string", '"' + "L" * 8192 + '"', "L" * 8192),
    ("id-max-safe-integer", "9007199254740991", 9007199254740991),
    ("id-min-safe-integer", "-9007199254740991", -9007199254740991),
]


@pytest.mark.parametrize("id_,expected", [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_unusual_ids_are_echoed_exactly(session: Rpc, id_: str, expected: Any):
    resp = session.post(call(id_))
    assert resp.status_code == 200, describe(resp)
    msg = message_of(resp)
    assert msg["id"] == expected and type(msg["id"]) is type(expected), describe(resp)
    assert tool_text(msg) == "alpha: x"


def test_spoofed_internal_headers_are_ignored(session: Rpc, upstreams):
    """A client naming another server, tool or authority in the gateway's own headers is routed by its
    body alone, and none of those headers reaches the upstream as the client wrote it."""
    beta = upstreams["beta"]
    alpha = upstreams["alpha"]
    alpha.clear_log()
    beta.clear_log()
    spoof = {"x-mcp-servername": "alpha", "x-mcp-toolname": "whoami", "x-envoy-original-path": "/admin",
             "x-forwarded-host": "alpha.mcp.local", "x-mcpgw-session": "forged", "authorization": "Bearer alpha-secret"}
    resp, msg = session.call_tool("beta_echo", {"text": "spoof"}, headers=spoof)
    assert resp.status_code == 200 and tool_text(msg) == "beta: spoof", describe(resp)
    assert not [r for r in alpha.requests_log() if r.get("rpc_method") == "tools/call"]
    (seen,) = [r for r in beta.requests_log() if r.get("rpc_method") == "tools/call"]
    headers = seen["headers"]
    assert headers.get("x-mcp-servername") != "alpha" and headers.get("x-mcp-toolname") != "whoami", headers
    for name in ("x-envoy-original-path", "x-forwarded-host", "x-mcpgw-session"):
        assert name not in headers, headers
    assert headers.get("authorization") == "Bearer beta-secret", "the server's own credential, not the client's"


def test_initialize_within_a_session_starts_another(session: Rpc):
    """An `initialize` carrying a session id opens a new session; the old one stays valid."""
    resp = session.post(f'{{"jsonrpc":"2.0","id":"init","method":"initialize","params":{{"protocolVersion":'
                        f'"2025-06-18",{INIT_OK}}}}}'.encode())
    assert resp.status_code == 200 and "result" in message_of(resp), describe(resp)
    assert resp.headers["mcp-session-id"] not in ("", session.session)
    _, msg = session.call_tool("alpha_echo", {"text": "old"})
    assert tool_text(msg) == "alpha: old"


def test_initialize_with_unknown_version_gets_the_latest(rpc: Rpc):
    """Version negotiation, not an error: the gateway answers with the newest revision it speaks."""
    resp = rpc.post(f'{{"jsonrpc":"2.0","id":"init","method":"initialize","params":{{"protocolVersion":'
                    f'"1999-01-01",{INIT_OK}}}}}'.encode(), session=False)
    assert resp.status_code == 200, describe(resp)
    from rpc import LATEST_PROTOCOL_VERSION

    assert message_of(resp)["result"]["protocolVersion"] == LATEST_PROTOCOL_VERSION, describe(resp)
