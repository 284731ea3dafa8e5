#!/usr/bin/env python3
"""The upstream the official MCP conformance suite (`@modelcontextprotocol/conformance` 0.1.16,
server scenarios) expects: its `test_*` fixtures, written with the Python `mcp` SDK (2.3.0,
streamable HTTP, stateful sessions, SSE answers). Used by `tests/conformance/run.py`, directly and
behind the gateway.

    conformance_server.py --port 18090 [--host 127.0.0.1] [--name conformance]

Serves MCP on http://HOST:PORT/mcp and `GET /_health` (200) for readiness.

Tools: test_simple_text, test_image_content, test_audio_content, test_embedded_resource,
test_multiple_content_types, test_tool_with_logging, test_tool_with_progress, test_error_handling,
test_sampling(prompt), test_elicitation(message), test_elicitation_sep1034_defaults,
test_elicitation_sep1330_enums. Not suite fixtures: server_name (returns --name, to tell upstreams
apart behind a gateway) and notify_resource_updated(uri) (notifications/resources/updated on the
session's GET stream, if the session subscribed to uri).
Resources: test://static-text, test://static-binary, test://watched-resource (subscribe /
unsubscribe; its text names the server), template test://template/{id}/data.
Prompts: test_simple_prompt, test_prompt_with_arguments(arg1, arg2), test_prompt_with_embedded_resource
(resourceUri), test_prompt_with_image. Completion (`completion/complete`) on the arguments of
test_prompt_with_arguments and on the template's `id`. `logging/setLevel` filters the
`notifications/message` of the session that set it. DNS-rebinding protection: the SDK's loopback
defaults (a non-loopback Host -> 421, Origin -> 403).

The expected shapes are the "Server Implementation Requirements" of the suite's scenarios.
"""

from __future__ import annotations

import argparse
import base64
import io
import struct
import sys
import warnings
import wave
import zlib
from typing import Any

import anyio
import uvicorn
from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.responses import PlainTextResponse

# logging, sampling and elicitation are deprecated at 2026-07-28; the suite speaks 2025-11-25.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    idat = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)  # 10 ms
    return buf.getvalue()


PNG = _png_1x1_red()
PNG_B64 = base64.b64encode(PNG).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()

# Per MCP session (Mcp-Session-Id): the level set by logging/setLevel, the subscribed URIs.
_log_levels: dict[str | None, str] = {}
_subscriptions: dict[str | None, set[str]] = {}


def _session_key(request: Any) -> str | None:
    headers = getattr(request, "headers", None)
    return headers.get("mcp-session-id") if headers is not None else None


def text(s: str) -> types.TextContent:
    return types.TextContent(type="text", text=s)


def build(name: str) -> MCPServer:
    server = MCPServer(name, version="0.1.16", log_level="WARNING")
    low = server._lowlevel_server  # logging/setLevel and resources/(un)subscribe have no MCPServer decorator

    # ---------------------------------------------------------------- tools

    @server.tool()
    def server_name() -> str:
        """Returns this server's --name (not a suite fixture: tells federated upstreams apart)."""
        return name

    @server.tool()
    def test_simple_text() -> str:
        """Returns a simple text response."""
        return "This is a simple text response for testing."

    @server.tool()
    def test_image_content() -> list[types.ContentBlock]:
        """Returns a 1x1 red PNG image."""
        return [types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")]

    @server.tool()
    def test_audio_content() -> list[types.ContentBlock]:
        """Returns a short silent WAV clip."""
        return [types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")]

    @server.tool()
    def test_embedded_resource() -> list[types.ContentBlock]:
        """Returns an embedded text resource."""
        return [types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain",
            text="This is an embedded resource content."))]

    @server.tool()
    def test_multiple_content_types() -> list[types.ContentBlock]:
        """Returns text, image and resource content together."""
        return [
            text("Multiple content types test:"),
            types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
            types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri="test://mixed-content-resource", mime_type="application/json",
                text='{"test":"data","value":123}')),
        ]

    async def log(ctx: Context, level: str, message: str) -> None:
        current = _log_levels.get(_session_key(ctx.request_context.request), "debug")
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(current):
            return
        await ctx.session.send_log_message(level=level, data=message, logger="conformance",
                                           related_request_id=ctx.request_id)

    @server.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Sends three info log notifications while it runs."""
        await log(ctx, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await log(ctx, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await log(ctx, "info", "Tool execution completed")
        return "Tool with logging executed successfully"

    @server.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50 and 100 of 100 (to the caller's progress token)."""
        await ctx.report_progress(0, 100)
        await anyio.sleep(0.05)
        await ctx.report_progress(50, 100)
        await anyio.sleep(0.05)
        await ctx.report_progress(100, 100)
        return "Tool with progress executed successfully"

    @server.tool()
    def test_error_handling() -> types.CallToolResult:
        """Always fails (isError: true)."""
        return types.CallToolResult(is_error=True,
                                    content=[text("This tool intentionally returns an error for testing")])

    @server.tool()
    async def test_sampling(prompt: str, ctx: Context) -> types.CallToolResult:
        """Asks the client's LLM (sampling/createMessage) and returns its answer."""
        if not ctx.session.check_client_capability(types.ClientCapabilities(sampling=types.SamplingCapability())):
            return types.CallToolResult(is_error=True, content=[text("the client does not support sampling")])
        result = await ctx.session.create_message(
            messages=[types.SamplingMessage(role="user", content=text(prompt))],
            max_tokens=100, related_request_id=ctx.request_id)
        content = result.content
        answer = content.text if isinstance(content, types.TextContent) else str(content)
        return types.CallToolResult(content=[text(f"LLM response: {answer}")])

    async def elicit(ctx: Context, message: str, schema: dict[str, Any]) -> types.ElicitResult | None:
        if not ctx.session.check_client_capability(
                types.ClientCapabilities(elicitation=types.ElicitationCapability())):
            return None
        return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)

    no_elicitation = types.CallToolResult(is_error=True, content=[text("the client does not support elicitation")])

    @server.tool()
    async def test_elicitation(message: str, ctx: Context) -> types.CallToolResult:
        """Asks the user (elicitation/create) for a username and an email."""
        r = await elicit(ctx, message, {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        })
        if r is None:
            return no_elicitation
        return types.CallToolResult(content=[text(f"User response: action={r.action}, content={r.content}")])

    @server.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> types.CallToolResult:
        """Elicitation whose schema has a default for every primitive type (SEP-1034)."""
        r = await elicit(ctx, "Please review and update the form fields with defaults", {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {"type": "string", "description": "User status",
                           "enum": ["active", "inactive", "pending"], "default": "active"},
                "verified": {"type": "boolean", "description": "Verification status", "default": True},
            },
            "required": [],
        })
        if r is None:
            return no_elicitation
        return types.CallToolResult(content=[text(f"Elicitation completed: action={r.action}, content={r.content}")])

    @server.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> types.CallToolResult:
        """Elicitation with the five enum schema forms (SEP-1330)."""
        r = await elicit(ctx, "Please select options from the enum fields", {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "description": "Untitled single-select",
                                   "enum": ["option1", "option2", "option3"]},
                "titledSingle": {"type": "string", "description": "Titled single-select", "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"}]},
                "legacyEnum": {"type": "string", "description": "Legacy titled enum",
                               "enum": ["opt1", "opt2", "opt3"],
                               "enumNames": ["Option One", "Option Two", "Option Three"]},
                "untitledMulti": {"type": "array", "description": "Untitled multi-select",
                                  "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                "titledMulti": {"type": "array", "description": "Titled multi-select", "items": {"anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"}]}},
            },
            "required": [],
        })
        if r is None:
            return no_elicitation
        return types.CallToolResult(content=[text(f"Elicitation completed: action={r.action}, content={r.content}")])

    # ------------------------------------------------------------ resources

    @server.resource("test://static-text", name="static-text", mime_type="text/plain",
                     description="A static text resource")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", name="static-binary", mime_type="image/png",
                     description="A static binary resource (1x1 PNG)")
    def static_binary() -> bytes:
        return PNG

    @server.resource("test://watched-resource", name="watched-resource", mime_type="text/plain",
                     description="A resource clients may subscribe to")
    def watched_resource() -> str:
        return f"Watched resource content (server {name})."

    @server.resource("test://template/{id}/data", name="template-data", mime_type="application/json",
                     description="Data for an id (resource template)")
    def template_data(id: str) -> str:  # noqa: A002 - the template's parameter name
        return f'{{"id":"{id}","templateTest":true,"data":"Data for ID: {id}"}}'

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        _subscriptions.setdefault(_session_key(ctx.request), set()).add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        _subscriptions.get(_session_key(ctx.request), set()).discard(str(params.uri))
        return types.EmptyResult()

    @server.tool()
    async def notify_resource_updated(uri: str, ctx: Context) -> str:
        """Sends notifications/resources/updated for `uri` on the session's standalone (GET) stream,
        as a server does when a resource changes, if this session subscribed to it (not a suite
        fixture)."""
        if uri not in _subscriptions.get(_session_key(ctx.request_context.request), set()):
            return f"not subscribed to {uri}"
        await ctx.session.send_resource_updated(uri)
        return f"sent notifications/resources/updated for {uri}"

    low.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)

    # -------------------------------------------------------------- prompts

    @server.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A simple prompt without arguments."""
        return [UserMessage("This is a simple prompt for testing.")]

    @server.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with two required arguments."""
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @server.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 - wire name
        """A prompt embedding the resource given by URI."""
        return [
            UserMessage(types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."))),
            UserMessage("Please process the embedded resource above."),
        ]

    @server.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt with image content."""
        return [
            UserMessage(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    # ----------------------------------------------------- completion, logging

    completions = {"arg1": ["paris", "park", "party", "test", "testing"], "arg2": ["world", "work", "word"],
                   "id": ["1", "12", "123"]}

    @server.completion()
    async def complete(ref: Any, argument: types.CompletionArgument, context: Any) -> types.Completion:
        values = [v for v in completions.get(argument.name, []) if v.startswith(argument.value or "")]
        return types.Completion(values=values, total=len(values), has_more=False)

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        _log_levels[_session_key(ctx.request)] = params.level
        return types.EmptyResult()

    low.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return server


class Health:
    """ASGI wrapper: `GET /_health` -> 200, everything else to the MCP app."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/_health":
            await PlainTextResponse("ok")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="mcp-conformance-test-server")
    args = p.parse_args(argv)

    app = build(args.name).streamable_http_app(streamable_http_path="/mcp", json_response=False,
                                               stateless_http=False, host=args.host)
    config = uvicorn.Config(Health(app), host=args.host, port=args.port, log_level="warning", lifespan="on")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
