"""Session-era protocol through Envoy + plugin, on the raw wire: initialize, notifications, ping,
the aggregated tools/list, tools/call routing and what the upstream receives, DELETE."""

from __future__ import annotations

import json
import re

import pytest

from conftest import GATEWAY_NAME, GATEWAY_VERSION, PAGE_SIZE
from harness import LATEST_PROTOCOL_VERSION, PROTOCOL_VERSIONS
from rpc import Rpc, describe, message_of, rpc_error, tool_text

SESSION_ID_CHARS = re.compile(r"^[\x21-\x7e]+$")


def list_all(client: Rpc, **kw) -> list[list[dict]]:
    """Every tools/list page, following nextCursor (at most 20 pages)."""
    pages, cursor = [], None
    for _ in range(20):
        resp, msg = client.request("tools/list", {"cursor": cursor} if cursor is not None else {}, **kw)
        assert resp.status_code == 200, describe(resp)
        assert "result" in msg, describe(resp)
        pages.append(msg["result"]["tools"])
        cursor = msg["result"].get("nextCursor")
        if cursor is None:
            return pages
        assert isinstance(cursor, str), msg
    pytest.fail("tools/list did not end within 20 pages")


# ---------------------------------------------------------------------------------- initialize

@pytest.mark.parametrize("version", PROTOCOL_VERSIONS)
def test_initialize_echoes_supported_version(rpc: Rpc, version: str):
    resp, msg = rpc.request("initialize", {"protocolVersion": version, "capabilities": {},
                                           "clientInfo": {"name": "t", "version": "1"}}, id=7, session=False)
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["content-type"].startswith("application/json"), describe(resp)
    assert msg["jsonrpc"] == "2.0" and msg["id"] == 7, msg
    result = msg["result"]
    assert result["protocolVersion"] == version
    assert result["capabilities"]["tools"] == {"listChanged": False}
    assert result["serverInfo"]["name"] == GATEWAY_NAME
    assert result["serverInfo"]["version"] == GATEWAY_VERSION
    sid = resp.headers.get("mcp-session-id")
    assert sid and SESSION_ID_CHARS.match(sid), f"bad Mcp-Session-Id {sid!r}"


@pytest.mark.parametrize("version", ["2024-11-05", "2026-07-28", "1999-01-01"])
def test_initialize_unsupported_version_gets_latest(rpc: Rpc, version: str):
    resp, msg = rpc.request("initialize", {"protocolVersion": version, "capabilities": {},
                                           "clientInfo": {"name": "t", "version": "1"}}, id="init-x", session=False)
    assert resp.status_code == 200, describe(resp)
    assert msg["id"] == "init-x"
    assert msg["result"]["protocolVersion"] == LATEST_PROTOCOL_VERSION
    assert resp.headers.get("mcp-session-id")


def test_sessions_are_distinct(gateway):
    with Rpc(gateway.url) as a, Rpc(gateway.url) as b:
        a.initialize()
        b.initialize()
        assert a.session != b.session


def test_notifications_get_202_without_body(session: Rpc):
    for method, params in [("notifications/initialized", None),
                           ("notifications/cancelled", {"requestId": 12345, "reason": "test"}),
                           ("notifications/roots/list_changed", None)]:
        resp = session.notify(method, params)
        assert resp.status_code == 202, f"{method}: {describe(resp)}"
        assert resp.content == b"", f"{method}: {describe(resp)}"


def test_ping_with_and_without_session(session: Rpc):
    for use_session in (True, False):
        resp, msg = session.request("ping", id=99, session=use_session)
        assert resp.status_code == 200, describe(resp)
        assert msg == {"jsonrpc": "2.0", "id": 99, "result": {}}


# ---------------------------------------------------------------------------------- tools/list

def test_tools_list_aggregates_prefixed_tools_in_pages(session: Rpc, expected_tools):
    pages = list_all(session)
    assert len(pages) == -(-len(expected_tools) // PAGE_SIZE), [[t["name"] for t in p] for p in pages]
    for p in pages[:-1]:
        assert len(p) == PAGE_SIZE
    assert 1 <= len(pages[-1]) <= PAGE_SIZE
    names = [t["name"] for p in pages for t in p]
    assert len(names) == len(set(names)), f"duplicates in {names}"
    assert set(names) == set(expected_tools)
    assert {"alpha_echo", "beta_echo", "beta_t0003"} <= set(names)
    for t in (t for p in pages for t in p):
        assert t == expected_tools[t["name"]], f"definition of {t['name']} differs from the upstream's"


def test_tools_list_order_is_stable_and_works_without_session(session: Rpc, rpc: Rpc):
    with_session = [t["name"] for p in list_all(session) for t in p]
    without = [t["name"] for p in list_all(rpc, session=False) for t in p]
    assert with_session == without


@pytest.mark.parametrize("cursor", ["garbage!!", "99999", "eyJvZmZzZXQiOjk5OTl9"])
def test_tools_list_bad_cursor(session: Rpc, cursor: str):
    resp = session.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"cursor": cursor}})
    assert resp.status_code == 200, describe(resp)
    msg = rpc_error(resp)
    assert msg["error"]["code"] == -32602, describe(resp)
    assert msg["id"] == 5


# ---------------------------------------------------------------------------------- tools/call

def test_call_routes_by_prefix_sse_upstream(session: Rpc):
    resp, msg = session.call_tool("alpha_echo", {"text": "hello"}, id="a-1")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["content-type"].startswith("text/event-stream"), describe(resp)
    assert msg["id"] == "a-1"
    assert tool_text(msg) == "alpha: hello"
    assert resp.headers.get("mcp-session-id") == session.session, describe(resp)


def test_call_routes_by_prefix_json_upstream(session: Rpc):
    resp, msg = session.call_tool("beta_echo", {"text": "hello"}, id=41)
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["content-type"].startswith("application/json"), describe(resp)
    assert msg["id"] == 41
    assert tool_text(msg) == "beta: hello"
    assert resp.headers.get("mcp-session-id") == session.session, describe(resp)


def test_call_other_tools(session: Rpc):
    _, msg = session.call_tool("alpha_add", {"a": 2, "b": 40})
    assert tool_text(msg) == "42"
    _, msg = session.call_tool("beta_t0002")
    assert tool_text(msg) == "beta: t0002"


def whoami(client: Rpc, server: str, headers: dict | None = None) -> dict:
    resp, msg = client.call_tool(f"{server}_whoami", headers=headers)
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("mcp-session-id") == client.session, describe(resp)
    return json.loads(tool_text(msg))


@pytest.mark.parametrize("server", ["alpha", "beta"])
def test_upstream_receives_routing_headers_and_credential(session: Rpc, upstreams, server: str):
    up = upstreams[server]
    seen = whoami(session, server, headers={
        "authorization": "Bearer client-token",
        "x-mcp-servername": "evil",
        "x-mcp-toolname": "evil",
        "x-mcp-method": "evil",
    })
    h = seen["headers"]
    assert seen["server"] == server
    assert h.get("x-mcp-servername") == server, h
    assert h.get("x-mcp-toolname") == "whoami", h
    assert h.get("x-mcp-method") == "tools/call", h
    assert h.get("authorization") == f"Bearer {server}-secret", h
    assert h.get("host") == up.host, h
    assert h.get("mcp-protocol-version") in PROTOCOL_VERSIONS, h
    upstream_sid = h.get("mcp-session-id")
    assert upstream_sid and upstream_sid != session.session, h
    assert "client-token" not in json.dumps(h)

    # The upstream session was opened by the gateway itself: initialize (with the credential, not the
    # client's) answered with that id, then notifications/initialized on it.
    log = up.requests_log()
    inits = [e for e in log if e["rpc_method"] == "initialize" and e["issued_session_id"] == upstream_sid]
    assert len(inits) == 1, [(e["rpc_method"], e["status"], e["issued_session_id"]) for e in log]
    assert inits[0]["status"] == 200
    assert inits[0]["headers"].get("authorization") == f"Bearer {server}-secret", inits[0]["headers"]
    assert inits[0]["headers"].get("host") == up.host, inits[0]["headers"]
    notes = [e for e in log if e["rpc_method"] == "notifications/initialized"
             and e["headers"].get("mcp-session-id") == upstream_sid]
    assert notes and notes[0]["status"] == 202, notes
    assert log.index(notes[0]) > log.index(inits[0])


def test_upstream_session_reused_within_a_client_session(session: Rpc):
    first = whoami(session, "alpha")["session_id"]
    second = whoami(session, "alpha")["session_id"]
    assert first == second


def test_upstream_sessions_not_shared_between_client_sessions(gateway):
    with Rpc(gateway.url) as a, Rpc(gateway.url) as b:
        a.initialize()
        b.initialize()
        assert whoami(a, "alpha")["session_id"] != whoami(b, "alpha")["session_id"]
        assert whoami(a, "beta")["session_id"] != whoami(b, "beta")["session_id"]


def test_concurrent_sessions(gateway):
    """Sessions in parallel (spread over both Envoy workers): every call answered correctly, each
    client session keeps one upstream session per upstream, no two client sessions share one."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(i: int) -> tuple[set, set]:
        with Rpc(gateway.url) as c:
            c.initialize()
            alpha, beta = set(), set()
            for j in range(4):
                server = "alpha" if (i + j) % 2 else "beta"
                resp, msg = c.call_tool(f"{server}_echo", {"text": f"{i}-{j}"})
                assert resp.status_code == 200, describe(resp)
                assert tool_text(msg) == f"{server}: {i}-{j}"
                (alpha if server == "alpha" else beta).add(whoami(c, server)["session_id"])
            c.delete()
            return alpha, beta

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    for alpha, beta in results:
        assert len(alpha) == 1 and len(beta) == 1, results
    assert len({next(iter(a)) for a, _ in results}) == len(results)
    assert len({next(iter(b)) for _, b in results}) == len(results)


@pytest.mark.parametrize("version", PROTOCOL_VERSIONS)
def test_call_under_each_protocol_version(gateway, version: str):
    with Rpc(gateway.url) as c:
        c.initialize(version)
        assert c.version == version
        resp, msg = c.call_tool("beta_echo", {"text": version})
        assert resp.status_code == 200, describe(resp)
        assert tool_text(msg) == f"beta: {version}"


# ---------------------------------------------------------------------------------- DELETE

def test_delete_ends_the_session(gateway):
    with Rpc(gateway.url) as c:
        c.initialize()
        resp, msg = c.call_tool("alpha_echo", {"text": "before"})
        assert tool_text(msg) == "alpha: before"
        resp = c.delete()
        assert resp.status_code == 200, describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "alpha_echo", "arguments": {"text": "after"}}})
        assert resp.status_code == 404, describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": "beta_echo", "arguments": {"text": "after"}}})
        assert resp.status_code == 404, describe(resp)
        # A new session works.
        c.initialize()
        _, msg = c.call_tool("alpha_echo", {"text": "again"})
        assert tool_text(msg) == "alpha: again"


def test_ended_sessions_stay_ended_on_every_connection(gateway):
    """Sessions ended concurrently on both workers are all refused afterwards, on either worker."""
    from concurrent.futures import ThreadPoolExecutor

    # `connection: close`: a new connection per request, which Envoy hands to either worker.
    close = {"connection": "close"}

    def cycle(_: int) -> str:
        with Rpc(gateway.url) as c:
            resp, msg = c.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                 "clientInfo": {"name": "e2e", "version": "0"}},
                                  headers=close, session=False)
            c.session = resp.headers["mcp-session-id"]
            resp = c.http.delete(c.url, headers=c.headers(close))
            assert resp.status_code == 200, describe(resp)
            return c.session

    with ThreadPoolExecutor(8) as pool:
        ended = list(pool.map(cycle, range(100)))
    assert len(set(ended)) == 100
    with Rpc(gateway.url) as c:
        for token in ended:
            resp = c.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                          headers={**close, "mcp-session-id": token})
            assert resp.status_code == 404, describe(resp)


def test_json_content_type_with_charset_is_accepted(session: Rpc):
    resp, msg = session.call_tool("beta_echo", {"text": "cs"},
                                  headers={"content-type": "application/json; charset=utf-8"})
    assert resp.status_code == 200, describe(resp)
    assert tool_text(msg) == "beta: cs"
    assert message_of(resp)["id"] == msg["id"]
