"""JSON-RPC batches through Envoy + plugin: served on a 2025-03-26 session (the one revision that
has them), each element answered in order; refused with 400 / -32600 on later revisions."""

from __future__ import annotations

import pytest

from rpc import Rpc, describe, rpc_error, tool_text


def test_a_2025_03_26_batch_is_answered_in_order(gateway):
    with Rpc(gateway.url) as c:
        c.initialize("2025-03-26")
        assert c.version == "2025-03-26"
        batch = [
            {"jsonrpc": "2.0", "id": "p", "method": "ping"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "alpha_echo", "arguments": {"text": "one"}}},
            {"jsonrpc": "2.0", "method": "notifications/progress",
             "params": {"progressToken": "t", "progress": 1}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
             "params": {"name": "beta_echo", "arguments": {"text": "two"}}},
        ]
        # Twice: the first batch opens both upstream sessions, the second uses the cached ones.
        for _ in range(2):
            resp = c.post(batch)
            assert resp.status_code == 200, describe(resp)
            assert resp.headers["content-type"].startswith("application/json"), describe(resp)
            assert resp.headers.get("mcp-session-id") == c.session, describe(resp)
            answers = resp.json()
            assert isinstance(answers, list) and [a["id"] for a in answers] == ["p", 2, 3], answers
            assert answers[0]["result"] == {}
            assert tool_text(answers[1]) == "alpha: one"
            assert tool_text(answers[2]) == "beta: two"
        # The sessions the batch opened serve single calls too.
        resp, msg = c.call_tool("beta_echo", {"text": "single"})
        assert resp.status_code == 200 and tool_text(msg) == "beta: single", describe(resp)
        assert c.delete().status_code == 200


def test_a_batch_of_notifications_is_accepted(gateway):
    with Rpc(gateway.url) as c:
        c.initialize("2025-03-26")
        resp = c.post([{"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": "t", "progress": 1}}])
        assert resp.status_code == 202 and not resp.content, describe(resp)
        c.delete()


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_a_batch_is_refused_after_2025_03_26(gateway, version: str):
    with Rpc(gateway.url) as c:
        c.initialize(version)
        resp = c.post([{"jsonrpc": "2.0", "id": 1, "method": "ping"},
                       {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "alpha_echo", "arguments": {"text": "x"}}}])
        assert resp.status_code == 400, describe(resp)
        msg = rpc_error(resp)
        assert msg["error"]["code"] == -32600 and msg["id"] is None, describe(resp)
        c.delete()


def test_a_batch_without_session_or_elements_is_refused(gateway):
    with Rpc(gateway.url) as c:
        init = [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
                 "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                            "clientInfo": {"name": "t", "version": "1"}}}]
        resp = c.post(init)
        assert resp.status_code == 400 and "mcp-session-id" not in resp.headers, describe(resp)
        assert rpc_error(resp)["error"]["code"] == -32600
        c.initialize("2025-03-26")
        for body in ([], [{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(65)]):
            resp = c.post(body)
            assert resp.status_code == 400, describe(resp)
            assert rpc_error(resp)["error"]["code"] == -32600
        c.delete()
