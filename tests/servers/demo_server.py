#!/usr/bin/env python3
"""A small real MCP server (Python `mcp` 2.3.0, streamable HTTP, stateful sessions) used as an
upstream behind the gateway in `make run` and the end-to-end tests.

    demo_server.py --name alpha --port 18081 [--json] [--extra-tools N] [--require-bearer TOKEN]
                   [--initialize-delay-ms MS]

Serves MCP on http://127.0.0.1:PORT/mcp. Tools:
  echo(text)   -> "<NAME>: <text>"
  add(a, b)    -> a + b
  whoami()     -> JSON text {"server", "session_id", "headers"} of the HTTP request that carried
                  the call (header names lower-cased), i.e. what the gateway forwarded
  t0001..tNNNN (with --extra-tools N) -> "<NAME>: tNNNN"

Besides /mcp, `GET /_log` returns the JSON list of the last requests that reached /mcp
(`http_method`, `rpc_method`, `headers`, `status`, `issued_session_id`), `DELETE /_log` clears it, and `GET /_health`
answers 200. `--require-bearer TOKEN` makes /mcp answer 401 unless `Authorization: Bearer TOKEN`.
`--initialize-delay-ms MS` holds every `initialize` that long before answering (a slow upstream).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

LOG_MAX = 200


def joined(items: Any) -> dict[str, str]:
    """Header (name, value) pairs -> {lower-case name: value}; repeated headers joined with ", "
    so a duplicate (e.g. a client's header not removed by the gateway) stays visible."""
    out: dict[str, str] = {}
    for k, v in items:
        k = k.lower()
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def build(name: str, extra_tools: int, slow: bool = False) -> MCPServer:
    server = MCPServer(name, version="0.1.0", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back, prefixed with the server's name."""
        return f"{name}: {text}"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Return the HTTP request headers this server received for this call, as JSON."""
        lowered = joined((ctx.headers or {}).items())
        return json.dumps(
            {"server": name, "session_id": lowered.get("mcp-session-id"), "headers": lowered},
            sort_keys=True,
        )

    if slow:
        @server.tool()
        async def sleep(seconds: float) -> str:
            """Answer after `seconds` of silence (for timeout tests)."""
            await anyio.sleep(seconds)
            return f"{name}: slept {seconds}"

    for i in range(1, extra_tools + 1):
        tool_name = f"t{i:04d}"

        def make(tn: str):
            def extra() -> str:
                return f"{name}: {tn}"

            return extra

        server.add_tool(make(tool_name), name=tool_name, description=f"Extra tool {tool_name}.")

    return server


class Recorder:
    """ASGI middleware: records requests to /mcp, optionally enforces a bearer token."""

    def __init__(self, app: Any, mcp_path: str, bearer: str | None, initialize_delay_ms: int = 0):
        self.app = app
        self.mcp_path = mcp_path
        self.bearer = bearer
        self.initialize_delay_ms = initialize_delay_ms
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_MAX)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/_log":
            if scope["method"] == "DELETE":
                self.log.clear()
                await PlainTextResponse("cleared")(scope, receive, send)
            else:
                await JSONResponse(list(self.log))(scope, receive, send)
            return
        if path == "/_health":
            await PlainTextResponse("ok")(scope, receive, send)
            return
        if path.rstrip("/") != self.mcp_path:
            await self.app(scope, receive, send)
            return

        headers = joined((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        # Read the whole body so it can be recorded, then replay it to the app.
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        rpc_method = None
        try:
            parsed = json.loads(body) if body else None
            if isinstance(parsed, dict):
                rpc_method = parsed.get("method")
        except ValueError:
            pass
        entry: dict[str, Any] = {
            "http_method": scope["method"],
            "rpc_method": rpc_method,
            "headers": headers,
            "status": None,
            "issued_session_id": None,
        }
        self.log.append(entry)

        if self.bearer is not None and headers.get("authorization") != f"Bearer {self.bearer}":
            entry["status"] = 401
            await PlainTextResponse(
                "unauthorized", status_code=401, headers={"www-authenticate": "Bearer"}
            )(scope, receive, send)
            return

        if rpc_method == "initialize" and self.initialize_delay_ms:
            await asyncio.sleep(self.initialize_delay_ms / 1000)

        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def record_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k.decode("latin-1").lower() == "mcp-session-id":
                        entry["issued_session_id"] = v.decode("latin-1")
            await send(message)

        await self.app(scope, replay, record_send)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--json", action="store_true", help="answer requests with application/json, not SSE")
    p.add_argument("--extra-tools", type=int, default=0, metavar="N", help="also register tools t0001..tN")
    p.add_argument("--require-bearer", metavar="TOKEN", help="answer 401 without 'Authorization: Bearer TOKEN'")
    p.add_argument("--slow-tool", action="store_true", help="also register `sleep(seconds)`")
    p.add_argument("--initialize-delay-ms", type=int, default=0, metavar="MS",
                   help="hold every initialize this long before answering")
    args = p.parse_args(argv)

    server = build(args.name, args.extra_tools, args.slow_tool)
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=args.json,
        stateless_http=False,
        host=args.host,
    )
    wrapped = Recorder(app, "/mcp", args.require_bearer, args.initialize_delay_ms)
    config = uvicorn.Config(wrapped, host=args.host, port=args.port, log_level="warning", lifespan="on")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
