"""An upstream that lost its sessions (restarted, answers 404) is re-initialized transparently:
the client's next call succeeds, after exactly one retry."""

from __future__ import annotations

import json

from rpc import Rpc, describe, tool_text


def whoami_sid(c: Rpc, server: str) -> str:
    resp, msg = c.call_tool(f"{server}_whoami")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("mcp-session-id") == c.session, describe(resp)
    return json.loads(tool_text(msg))["session_id"]


def test_call_survives_upstream_restart(gateway, upstreams):
    alpha = upstreams["alpha"]
    with Rpc(gateway.url) as c:
        c.initialize()
        old_sid = whoami_sid(c, "alpha")
        beta_sid = whoami_sid(c, "beta")

        alpha.restart()  # same port, sessions gone; its request log starts empty

        resp, msg = c.call_tool("alpha_echo", {"text": "after restart"})
        assert resp.status_code == 200, describe(resp)
        assert tool_text(msg) == "alpha: after restart"
        assert resp.headers.get("mcp-session-id") == c.session, describe(resp)

        posts = [(e["rpc_method"], e["status"], e["headers"].get("mcp-session-id"), e["issued_session_id"])
                 for e in alpha.requests_log() if e["http_method"] == "POST"]
        calls = [p for p in posts if p[0] == "tools/call"]
        assert len(calls) == 2, posts  # the failed one and exactly one retry
        assert calls[0][1:3] == (404, old_sid), posts
        assert calls[1][1] == 200, posts
        new_sid = calls[1][2]
        assert new_sid and new_sid != old_sid, posts
        init = [p for p in posts if p[0] == "initialize" and p[3] == new_sid]
        assert len(init) == 1 and init[0][1] == 200, posts
        assert posts.index(calls[0]) < posts.index(init[0]) < posts.index(calls[1]), posts
        assert any(p[0] == "notifications/initialized" and p[2] == new_sid for p in posts), posts

        # The new upstream session sticks; the other upstream's session was not touched.
        assert whoami_sid(c, "alpha") == new_sid
        assert whoami_sid(c, "beta") == beta_sid


def test_call_to_a_down_upstream_is_a_jsonrpc_error(gateway, upstreams):
    """Envoy's plain-text 503 for an unreachable upstream becomes a JSON-RPC error for that call;
    the client's session keeps working for the other upstream."""
    beta = upstreams["beta"]
    with Rpc(gateway.url) as c:
        c.initialize()
        whoami_sid(c, "beta")  # an upstream session exists, so the call is routed, not initialized
        beta.stop()
        try:
            resp, msg = c.call_tool("beta_echo", {"text": "anyone?"})
            assert resp.status_code == 200, describe(resp)
            assert resp.headers.get("content-type") == "application/json", describe(resp)
            assert msg["id"] is not None and msg["error"]["code"] == -32603, describe(resp)
            assert "beta" in msg["error"]["message"] and "503" in msg["error"]["message"], describe(resp)
            resp, msg = c.call_tool("alpha_echo", {"text": "still here"})
            assert tool_text(msg) == "alpha: still here", describe(resp)
        finally:
            beta.start()
