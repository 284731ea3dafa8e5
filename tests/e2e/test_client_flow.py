"""A real client: the Python `mcp` SDK (legacy/session mode) through the gateway."""

from __future__ import annotations

import anyio
import httpx2
import mcp
from mcp.client.streamable_http import streamable_http_client

from conftest import GATEWAY_NAME
from harness import LATEST_PROTOCOL_VERSION, list_all_tools

TIMEOUT = 30


def test_python_sdk_session_flow(gateway, expected_tools):
    exchanges: list[tuple[str, int, str | None, str | None]] = []  # method, status, sent sid, answered sid

    async def on_response(resp: httpx2.Response) -> None:
        exchanges.append((resp.request.method, resp.status_code,
                          resp.request.headers.get("mcp-session-id"), resp.headers.get("mcp-session-id")))

    async def flow() -> dict:
        out: dict = {}
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(event_hooks={"response": [on_response]}, timeout=10) as http:
                async with mcp.Client(streamable_http_client(gateway.url, http_client=http), mode="legacy") as c:
                    out["version"] = c.protocol_version
                    out["server_name"] = c.server_info.name if c.server_info else None
                    out["names"] = [t.name for t in await list_all_tools(c, max_pages=10)]
                    r = await c.call_tool("alpha_echo", {"text": "via sdk"})
                    out["alpha"] = (r.is_error, r.content[0].text)
                    r = await c.call_tool("beta_echo", {"text": "via sdk"})
                    out["beta"] = (r.is_error, r.content[0].text)
                    r = await c.call_tool("beta_add", {"a": 20, "b": 22})
                    out["add"] = (r.is_error, r.content[0].text)
        return out

    out = anyio.run(flow)
    assert out["version"] == LATEST_PROTOCOL_VERSION
    assert out["server_name"] == GATEWAY_NAME
    assert sorted(out["names"]) == sorted(expected_tools)
    assert out["alpha"] == (False, "alpha: via sdk")
    assert out["beta"] == (False, "beta: via sdk")
    assert out["add"] == (False, "42")

    # Wire: one session id from initialize on, never the upstreams'; the close sent DELETE -> 200.
    init = exchanges[0]
    assert init[0] == "POST" and init[1] == 200 and init[2] is None and init[3], exchanges
    token = init[3]
    for method, status, sent, answered in exchanges[1:]:
        assert sent == token, exchanges
        assert answered in (None, token), exchanges
    deletes = [e for e in exchanges if e[0] == "DELETE"]
    assert deletes and deletes[-1][1] == 200, exchanges
