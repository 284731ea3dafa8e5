"""Raw MCP-over-HTTP helpers for tests that need exact control of headers and bodies (the `mcp` client
hides both). Responses are parsed whether the server answered application/json or text/event-stream.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import httpx

from harness import LATEST_PROTOCOL_VERSION

ACCEPT = "application/json, text/event-stream"
TIMEOUT = httpx.Timeout(15.0, connect=3.0)
_ids = itertools.count(1)


def sse_messages(text: str) -> list[dict[str, Any]]:
    """JSON payloads of the events in an SSE body (CRLF, LF or CR line ends; empty-data events skipped)."""
    out = []
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data:
                payload = "\n".join(data)
                if payload.strip():
                    out.append(json.loads(payload))
            data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    return out


def message_of(resp: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC response carried by `resp`: the JSON body, or the SSE event holding a result/error."""
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        msgs = [m for m in sse_messages(resp.text) if "result" in m or "error" in m]
        assert msgs, f"no JSON-RPC response in SSE body: {resp.text[:500]!r}"
        return msgs[0]
    assert ctype.startswith("application/json"), (
        f"expected application/json or text/event-stream, got {ctype!r} (HTTP {resp.status_code}): {resp.text[:500]!r}")
    return resp.json()


def describe(resp: httpx.Response) -> str:
    """One-line-ish dump of a response, for assertion messages."""
    hdrs = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "mcp-session-id", "content-length")}
    return f"{resp.request.method} -> HTTP {resp.status_code} {hdrs} {resp.text[:600]!r}"


class Rpc:
    """A raw client for one MCP endpoint. `session` (the `Mcp-Session-Id`) and `version` (sent as
    `MCP-Protocol-Version`) are sent when set; `initialize()` sets both."""

    def __init__(self, url: str, *, session: str | None = None, version: str | None = None):
        self.url = url
        self.session = session
        self.version = version
        self.http = httpx.Client(timeout=TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Rpc":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def headers(self, extra: dict[str, str] | None = None, *, session: bool = True) -> dict[str, str]:
        h = {"content-type": "application/json", "accept": ACCEPT}
        if session and self.session is not None:
            h["mcp-session-id"] = self.session
        if session and self.version is not None:
            h["mcp-protocol-version"] = self.version
        h.update(extra or {})
        return h

    def post(self, body: Any, *, headers: dict[str, str] | None = None, session: bool = True) -> httpx.Response:
        """POST `body` (dict/list -> JSON; str/bytes sent verbatim). `session=False` omits the session headers."""
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(self.url, content=content, headers=self.headers(headers, session=session))

    def request(self, method: str, params: dict[str, Any] | None = None, *, id: Any = None,
                headers: dict[str, str] | None = None, session: bool = True) -> tuple[httpx.Response, dict[str, Any]]:
        """Send a JSON-RPC request; returns (HTTP response, JSON-RPC message)."""
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids) if id is None else id, "method": method}
        if params is not None:
            msg["params"] = params
        resp = self.post(msg, headers=headers, session=session)
        return resp, message_of(resp)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        return self.post(msg)

    def initialize(self, version: str = LATEST_PROTOCOL_VERSION, *, initialized: bool = True) -> dict[str, Any]:
        """initialize (+ notifications/initialized); keeps the session and negotiated version. Returns the result."""
        resp, msg = self.request("initialize", {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "mcpgw-e2e", "version": "0.0.1"},
        }, session=False)
        assert resp.status_code == 200, describe(resp)
        assert "result" in msg, describe(resp)
        self.session = resp.headers.get("mcp-session-id")
        assert self.session, f"initialize answered without Mcp-Session-Id: {describe(resp)}"
        self.version = msg["result"]["protocolVersion"]
        if initialized:
            n = self.notify("notifications/initialized")
            assert n.status_code == 202, describe(n)
        return msg["result"]

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None, **kw: Any) -> tuple[httpx.Response, dict[str, Any]]:
        return self.request("tools/call", {"name": name, "arguments": arguments or {}}, **kw)

    def delete(self) -> httpx.Response:
        return self.http.delete(self.url, headers=self.headers())


def tool_text(msg: dict[str, Any]) -> str:
    """The text of the first content item of a successful tools/call result."""
    assert "result" in msg, f"expected a result, got {msg}"
    assert not msg["result"].get("isError"), f"tool returned an error: {msg}"
    return msg["result"]["content"][0]["text"]


def rpc_error(resp: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC error object of `resp` (which must carry one)."""
    msg = message_of(resp)
    assert msg.get("jsonrpc") == "2.0", f"not a JSON-RPC message: {describe(resp)}"
    assert "error" in msg, f"expected a JSON-RPC error: {describe(resp)}"
    return msg
