#!/usr/bin/env python3
"""An MCP server (Python `mcp`, streamable HTTP) whose tool list changes at run time, for the
sidecar's discovery tests.

    dynamic_server.py --name dyn --port 18090

Tools: `echo(text)`, `grow(name)`: registers a new tool `name` (answers "<NAME>: grown <name>") and
sends `notifications/tools/list_changed` to every session that has listed tools, `shrink(name)`:
removes it (same notification). Also a prompt `greeting(who)` and a resource `demo://info`.
Like demo_server.py it serves `GET /_health` and `GET /_log`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_server  # noqa: E402


class Dynamic(MCPServer):
    """Remembers every session that listed tools, to tell it when the list changes."""

    def __init__(self, name: str):
        super().__init__(name, version="0.1.0", log_level="WARNING")
        self.sessions: list[Any] = []

    async def _handle_list_tools(self, ctx, params):  # type: ignore[no-untyped-def]
        if all(s is not ctx.session for s in self.sessions):
            self.sessions.append(ctx.session)
        return await super()._handle_list_tools(ctx, params)

    async def announce(self) -> int:
        told = 0
        for session in list(self.sessions):
            try:
                await session.send_tool_list_changed()
                told += 1
            except Exception:  # noqa: BLE001 - a closed session: forget it
                self.sessions.remove(session)
        return told


def build(name: str) -> Dynamic:
    server = Dynamic(name)

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back, prefixed with the server's name."""
        return f"{name}: {text}"

    @server.tool()
    async def grow(tool: str) -> str:
        """Register a new tool and announce the change to every session."""
        def grown() -> str:
            return f"{name}: grown {tool}"

        server.add_tool(grown, name=tool, description=f"Grown at run time: {tool}.")
        told = await server.announce()
        return f"added {tool}, told {told} sessions"

    @server.tool()
    async def shrink(tool: str) -> str:
        """Remove a tool added by grow and announce the change."""
        server.remove_tool(tool)
        told = await server.announce()
        return f"removed {tool}, told {told} sessions"

    @server.prompt()
    def greeting(who: str) -> str:
        """A greeting prompt."""
        return f"Say hello to {who}."

    @server.resource("demo://info")
    def info() -> str:
        """Static information."""
        return f"server {name}"

    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    server = build(args.name)
    app = server.streamable_http_app(streamable_http_path="/mcp", json_response=False, stateless_http=False,
                                     host=args.host)
    wrapped = demo_server.Recorder(app, "/mcp", None)
    uvicorn.Server(uvicorn.Config(wrapped, host=args.host, port=args.port, log_level="warning",
                                  lifespan="on")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
