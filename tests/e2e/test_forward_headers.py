"""Only what an upstream needs reaches it: a routed tools/call carries the gateway's default header
allow-list, the server's `forward_headers` and its own credential; the client's cookies, credentials,
API keys, `x-forwarded-*`/`forwarded` and Envoy's internal `x-envoy-*` headers never arrive. Checked on
what the demo upstream recorded, through the session gateway (Envoy + plugin, routes with a host
rewrite)."""

from __future__ import annotations

import json

import pytest

from conftest import FORWARD_HEADERS
from rpc import Rpc, describe, tool_text

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# What a client sends on its tools/call besides the MCP headers Rpc sets itself.
CLIENT_HEADERS = {
    "cookie": "sid=client-cookie",
    "proxy-authorization": "Basic Y2xpZW50OnByb3h5",
    "x-api-key": "client-api-key",
    "authorization": "Bearer client-token",
    "x-forwarded-for": "203.0.113.7",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "https",
    "forwarded": "for=203.0.113.7;proto=https",
    "x-envoy-upstream-rq-timeout-ms": "1",
    "accept-encoding": "gzip",
    "user-agent": "mcpgw-e2e/1",
    "traceparent": TRACEPARENT,
    "tracestate": "vendor=opaque",
    "baggage": "tenant=acme",
    "x-tenant": "acme",
}
# Client values that must never reach an upstream, wherever they might hide.
CLIENT_SECRETS = ["client-cookie", "Y2xpZW50OnByb3h5", "client-api-key", "client-token", "203.0.113.7",
                  "evil.example"]

# Every header name a routed tools/call may carry upstream (the default allow-list as HTTP/1.1 shows
# it: `:authority` arrives as `host`; the gateway's own routing headers; the server's credential).
ROUTED = {"host", "content-type", "content-length", "accept", "user-agent", "mcp-protocol-version",
          "mcp-session-id", "traceparent", "tracestate", "baggage", "x-request-id", "x-mcp-servername",
          "x-mcp-toolname", "x-mcp-method", "x-mcp-annotation-hints", "authorization"}
# The gateway's own calls (initialize, notifications/initialized, DELETE) are built from scratch; those
# made for a client's request (the openings) add its trace context, as far as the server's allow-list
# admits it (docs/observability.md, "Traces"; Envoy adds x-request-id to every client request).
GATEWAY_CALL = {"host", "content-type", "content-length", "accept", "mcp-protocol-version", "mcp-session-id",
                "x-mcp-servername", "authorization"}
TRACE_CONTEXT = {"traceparent", "tracestate", "baggage", "x-request-id"}


def whoami(client: Rpc, server: str, headers: dict[str, str]) -> dict:
    resp, msg = client.call_tool(f"{server}_whoami", headers=headers)
    assert resp.status_code == 200, describe(resp)
    return json.loads(tool_text(msg))


@pytest.mark.parametrize("server", ["alpha", "beta"])
def test_only_allowed_client_headers_reach_the_upstream(session: Rpc, upstreams, server: str):
    up = upstreams[server]
    seen = whoami(session, server, CLIENT_HEADERS)
    h = seen["headers"]
    expected = ROUTED | set(FORWARD_HEADERS[server])
    assert set(h) == expected, (f"unexpected: {sorted(set(h) - expected)}, "
                                f"missing: {sorted(expected - set(h))}")
    # The server's own credential, never the client's; client values of allowed headers kept as sent.
    assert h["authorization"] == f"Bearer {server}-secret", h
    assert h["host"] == up.host, h
    assert h["traceparent"] == TRACEPARENT
    assert h["tracestate"] == "vendor=opaque" and h["baggage"] == "tenant=acme"
    assert h["user-agent"] == "mcpgw-e2e/1"
    assert h["x-mcp-servername"] == server and h["x-mcp-toolname"] == "whoami"
    assert h["mcp-session-id"] != session.session
    # Envoy's own: the route's host rewrite (x-envoy-original-host), the router (timeout), the
    # scheme Envoy needed to pick the route (x-forwarded-proto, removed by the route).
    for envoy_header in ("x-envoy-original-host", "x-envoy-original-path", "x-envoy-expected-rq-timeout-ms",
                         "x-envoy-internal", "x-forwarded-proto"):
        assert envoy_header not in h, envoy_header
    if "x-tenant" in FORWARD_HEADERS[server]:
        assert h["x-tenant"] == "acme"
    for secret in CLIENT_SECRETS:
        assert secret not in json.dumps(h), secret

    # The upstream's own record of the same call agrees, and the gateway's calls that opened the
    # upstream session (initialize, notifications/initialized) carried none of the client's headers
    # but its trace context.
    log = up.requests_log()
    calls = [e for e in log if e["rpc_method"] == "tools/call" and e["headers"].get("traceparent") == TRACEPARENT
             and e["headers"].get("mcp-session-id") == h["mcp-session-id"]]
    assert calls and set(calls[-1]["headers"]) == expected, calls
    sid = h["mcp-session-id"]
    opened = [e for e in log if (e["rpc_method"] == "initialize" and e["issued_session_id"] == sid) or (
        e["rpc_method"] == "notifications/initialized" and e["headers"].get("mcp-session-id") == sid)]
    assert [e["rpc_method"] for e in opened] == ["initialize", "notifications/initialized"], opened
    for e in opened:
        allowed = GATEWAY_CALL | TRACE_CONTEXT
        assert set(e["headers"]) <= allowed, (e["rpc_method"], sorted(set(e["headers"]) - allowed))
        assert e["headers"]["authorization"] == f"Bearer {server}-secret"
        assert e["headers"].get("traceparent") == TRACEPARENT
        assert e["headers"].get("baggage") == "tenant=acme"
        assert not any(n.startswith("x-envoy-") for n in e["headers"]), e["headers"]
        for secret in CLIENT_SECRETS:
            assert secret not in json.dumps(e["headers"]), (e["rpc_method"], secret)


def test_upstream_answers_stay_uncompressed(session: Rpc):
    """The client's Accept-Encoding is not forwarded: SSE and JSON answers arrive readable."""
    for server in ("alpha", "beta"):
        resp, msg = session.call_tool(f"{server}_echo", {"text": "plain"},
                                      headers={"accept-encoding": "gzip, br"})
        assert resp.status_code == 200, describe(resp)
        assert "content-encoding" not in resp.headers, describe(resp)
        assert tool_text(msg) == f"{server}: plain"


def test_gateway_delete_carries_no_client_header(gateway, upstreams):
    with Rpc(gateway.url) as c:
        c.initialize()
        seen = whoami(c, "alpha", {})
        sid = seen["headers"]["mcp-session-id"]
        resp = c.http.delete(c.url, headers=c.headers(CLIENT_HEADERS))
        assert resp.status_code == 200, describe(resp)
    deletes = [e for e in upstreams["alpha"].requests_log()
               if e["http_method"] == "DELETE" and e["headers"].get("mcp-session-id") == sid]
    assert len(deletes) == 1, deletes
    assert set(deletes[0]["headers"]) <= GATEWAY_CALL, sorted(deletes[0]["headers"])
    for secret in CLIENT_SECRETS:
        assert secret not in json.dumps(deletes[0]["headers"]), secret
