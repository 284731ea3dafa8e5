#!/usr/bin/env python3
"""The conformance fixtures through a gateway that federates several conformance upstreams, each
behind its own prefix. The official suite calls fixed names (`test_simple_text`), so it can only
run against one upstream with an empty prefix; this driver calls the same fixtures through every
prefix with the Python SDK's client (`mcp.Client`, session era) and checks what comes back.

    federation.py URL PREFIX=SERVER_NAME [PREFIX=SERVER_NAME ...] [--json]
    e.g. federation.py http://127.0.0.1:10000/mcp a_=conformance-a b_=conformance-b

SERVER_NAME is the upstream's `--name` (the `server_name` tool returns it, and
`test://watched-resource` carries it), which proves the call reached the right upstream.
Prints one line per check; exit 1 if any failed. `run.py` imports `run_checks`.

Every check has an id `<area>/<what>` (the same for every prefix) listed in `CHECKS`; a check
records `passed`, a one-line `detail`, and never hangs (each has a deadline).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

import anyio
import mcp
from mcp import types
from mcp.shared.exceptions import MCPDeprecationWarning

# ping, logging, sampling, elicitation and subscriptions are deprecated at 2026-07-28; this is 2025-11-25.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

STEP_TIMEOUT = 10.0
UPDATE_WAIT = 1.5  # how long a notification may take to arrive (the SDK delivers it in milliseconds)

TOOL_FIXTURES = [
    "test_simple_text", "test_image_content", "test_audio_content", "test_embedded_resource",
    "test_multiple_content_types", "test_tool_with_logging", "test_tool_with_progress", "test_error_handling",
    "test_sampling", "test_elicitation", "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums",
]
PROMPT_FIXTURES = ["test_simple_prompt", "test_prompt_with_arguments", "test_prompt_with_embedded_resource",
                   "test_prompt_with_image"]

# id -> what it checks (the order of the report)
CHECKS: dict[str, str] = {
    "session/initialize": "initialize through the gateway",
    "session/ping": "ping answers {}",
    "tools/list": "every tool fixture listed under the prefix, with a description and an input schema",
    "tools/routing": "the prefixed server_name reaches the upstream behind that prefix",
    "tools/unprefixed-refused": "the bare name test_simple_text is not routed (error or isError)",
    "tools/simple-text": "the prefixed test_simple_text returns the fixture text",
    "tools/image": "image content (data, image/png)",
    "tools/audio": "audio content (data, audio/wav)",
    "tools/embedded-resource": "embedded resource (uri, mimeType, text)",
    "tools/mixed-content": "text + image + resource",
    "tools/error": "isError: true with the fixture text",
    "tools/logging": "logging/setLevel debug, then >= 3 notifications/message during the call",
    "tools/logging-filtered": "logging/setLevel error, then no info notifications during the call",
    "tools/progress": ">= 3 increasing notifications/progress for the caller's token",
    "tools/sampling": "sampling/createMessage relayed to the client, its answer back in the result",
    "tools/elicitation": "elicitation/create relayed to the client, its answer back in the result",
    "tools/elicitation-sep1034": "elicitation schema keeps every default (SEP-1034)",
    "tools/elicitation-sep1330": "elicitation schema keeps the five enum forms (SEP-1330)",
    "prompts/list": "every prompt fixture listed under the prefix, with a description",
    "prompts/get-simple": "the prefixed test_simple_prompt",
    "prompts/get-with-args": "arguments substituted",
    "prompts/get-embedded-resource": "embedded resource in the messages",
    "prompts/get-with-image": "image in the messages",
    "completion/complete": "completion of arg1 of the prefixed test_prompt_with_arguments",
    "resources/routing": "one listed test://watched-resource names this prefix's upstream (gives its URI head)",
    "resources/list": "the upstream's three static resources listed under that head",
    "resources/read-text": "test://static-text read through its listed URI",
    "resources/read-binary": "test://static-binary read through its listed URI (blob)",
    "resources/templates-read": "the template test://template/{id}/data listed under the head, expanded and read",
    "resources/contents-uri": "resources/read answers carry the URI the client read (static text, binary, template)",
    "resources/subscribe": "resources/subscribe on the watched resource reaches the upstream's session",
    "resources/updated": "the upstream's notifications/resources/updated (sent on its GET stream) reaches the "
                         "client with the URI the client subscribed to",
    "resources/unsubscribe": "resources/unsubscribe reaches the upstream's session",
    "session/close": "no error outside the steps, the session closes cleanly",
}


@dataclass
class Check:
    id: str
    prefix: str
    passed: bool
    detail: str = ""


@dataclass
class Recorder:
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    sampling: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicitations: list[Any] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


class CheckFailed(Exception):
    pass


def expect(cond: Any, detail: str) -> None:
    if not cond:
        raise CheckFailed(detail)


def short(x: Any, n: int = 160) -> str:
    s = x if isinstance(x, str) else repr(x)
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def first_text(result: Any) -> str:
    for c in getattr(result, "content", None) or []:
        if isinstance(c, types.TextContent):
            return c.text
    return ""


SAMPLING_ANSWER = "federated sampling answer"


async def run_prefix(url: str, prefix: str, server_name: str) -> list[Check]:
    rec = Recorder()
    checks: list[Check] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        rec.logs.append(params)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            rec.updated.append(str(message.params.uri))

    async def on_sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        rec.sampling.append(params)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=SAMPLING_ANSWER),
                                         model="federation-driver", stop_reason="endTurn")

    async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
        rec.elicitations.append(params)
        return types.ElicitResult(action="accept", content={"username": "fed-user", "email": "fed@example.com"})

    async def step(check_id: str, body: Callable[[], Awaitable[str | None]]) -> None:
        try:
            with anyio.fail_after(STEP_TIMEOUT):
                detail = await body()
            checks.append(Check(check_id, prefix, True, detail or ""))
        except CheckFailed as e:
            checks.append(Check(check_id, prefix, False, short(str(e))))
        except TimeoutError:
            checks.append(Check(check_id, prefix, False, f"no answer within {STEP_TIMEOUT:.0f} s"))
        except Exception as e:  # noqa: BLE001 - any error is this check's result
            checks.append(Check(check_id, prefix, False, short(f"{type(e).__name__}: {e}")))

    p = prefix

    async def all_steps(client: Any) -> None:
        async def ping() -> str:
            r = await client.send_ping()
            expect(r is not None, "no result")
            return "{}"
        await step("session/ping", ping)

        tools: dict[str, Any] = {}

        async def list_tools() -> str:
            cursor = None
            for _ in range(50):
                page = await client.list_tools(cursor=cursor)
                tools.update({t.name: t for t in page.tools})
                cursor = page.next_cursor
                if cursor is None:
                    break
            missing = [p + n for n in TOOL_FIXTURES if p + n not in tools]
            expect(not missing, f"missing {missing}")
            bad = [n for n in TOOL_FIXTURES if not tools[p + n].description or not tools[p + n].input_schema]
            expect(not bad, f"no description/inputSchema: {bad}")
            return f"{len(tools)} tools listed"
        await step("tools/list", list_tools)

        async def routing() -> str:
            r = await client.call_tool(p + "server_name", {})
            expect(first_text(r) == server_name, f"expected {server_name!r}, got {short(first_text(r))!r}")
            return server_name
        await step("tools/routing", routing)

        async def unprefixed() -> str:
            try:
                r = await client.call_tool("test_simple_text", {})
            except Exception as e:  # noqa: BLE001 - an error is the expected answer
                return short(f"error: {e}", 80)
            expect(r.is_error, f"the bare name was answered: {short(first_text(r))}")
            return short(f"isError: {first_text(r)}", 80)
        if p:
            await step("tools/unprefixed-refused", unprefixed)

        async def simple_text() -> str:
            r = await client.call_tool(p + "test_simple_text", {})
            expect(not r.is_error and first_text(r) == "This is a simple text response for testing.",
                   f"got {short(r.content)}")
            return first_text(r)
        await step("tools/simple-text", simple_text)

        def content_check(tool: str, kind: type, mime: str | None) -> Callable[[], Awaitable[str]]:
            async def body() -> str:
                r = await client.call_tool(p + tool, {})
                found = [c for c in r.content if isinstance(c, kind)]
                expect(not r.is_error and found, f"no {kind.__name__} in {short(r.content)}")
                c = found[0]
                if mime is not None:
                    expect(c.data and c.mime_type == mime, f"{c.mime_type!r}, data {bool(c.data)}")
                return f"{kind.__name__} {getattr(c, 'mime_type', '')}".strip()
            return body
        await step("tools/image", content_check("test_image_content", types.ImageContent, "image/png"))
        await step("tools/audio", content_check("test_audio_content", types.AudioContent, "audio/wav"))

        async def embedded() -> str:
            r = await client.call_tool(p + "test_embedded_resource", {})
            res = [c.resource for c in r.content if isinstance(c, types.EmbeddedResource)]
            expect(res and str(res[0].uri) == "test://embedded-resource" and res[0].mime_type
                   and getattr(res[0], "text", None), f"got {short(r.content)}")
            return str(res[0].uri)
        await step("tools/embedded-resource", embedded)

        async def mixed() -> str:
            r = await client.call_tool(p + "test_multiple_content_types", {})
            kinds = [c.type for c in r.content]
            expect({"text", "image", "resource"} <= set(kinds), f"content types {kinds}")
            return ",".join(kinds)
        await step("tools/mixed-content", mixed)

        async def error() -> str:
            r = await client.call_tool(p + "test_error_handling", {})
            expect(r.is_error and "intentionally returns an error" in first_text(r), f"got {short(r)}")
            return first_text(r)
        await step("tools/error", error)

        async def logging() -> str:
            await client.set_logging_level("debug")
            before = len(rec.logs)
            await client.call_tool(p + "test_tool_with_logging", {})
            # notifications/message travel on the call's own SSE stream, before its result
            got = [m.data for m in rec.logs[before:]]
            expect(len(got) >= 3, f"{len(got)} notifications/message: {got}")
            return f"{len(got)} messages"
        await step("tools/logging", logging)

        async def logging_filtered() -> str:
            await client.set_logging_level("error")
            before = len(rec.logs)
            await client.call_tool(p + "test_tool_with_logging", {})
            got = [m.data for m in rec.logs[before:]]
            await client.set_logging_level("debug")
            expect(not got, f"{len(got)} info messages despite setLevel error: {got}")
            return "none"
        await step("tools/logging-filtered", logging_filtered)

        async def progress() -> str:
            seen: list[float] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                seen.append(value)
            await client.call_tool(p + "test_tool_with_progress", {}, progress_callback=on_progress)
            expect(len(seen) >= 3 and seen == sorted(seen), f"progress values {seen}")
            return f"{seen}"
        await step("tools/progress", progress)

        async def sampling() -> str:
            before = len(rec.sampling)
            r = await client.call_tool(p + "test_sampling", {"prompt": f"prompt via {p}"})
            expect(len(rec.sampling) > before, f"no sampling/createMessage reached the client; result {short(r)}")
            asked = rec.sampling[-1].messages[0].content
            expect(getattr(asked, "text", None) == f"prompt via {p}", f"the client was asked {short(asked)}")
            expect(not r.is_error and SAMPLING_ANSWER in first_text(r), f"result {short(r)}")
            return first_text(r)
        await step("tools/sampling", sampling)

        async def elicitation() -> str:
            before = len(rec.elicitations)
            r = await client.call_tool(p + "test_elicitation", {"message": f"via {p}"})
            expect(len(rec.elicitations) > before, f"no elicitation/create reached the client; result {short(r)}")
            expect(not r.is_error and "fed-user" in first_text(r), f"result {short(r)}")
            return short(first_text(r), 80)
        await step("tools/elicitation", elicitation)

        async def sep1034() -> str:
            before = len(rec.elicitations)
            await client.call_tool(p + "test_elicitation_sep1034_defaults", {})
            expect(len(rec.elicitations) > before, "no elicitation/create reached the client")
            props = rec.elicitations[-1].requested_schema["properties"]
            defaults = {k: v.get("default") for k, v in props.items()}
            expect(defaults == {"name": "John Doe", "age": 30, "score": 95.5, "status": "active", "verified": True},
                   f"defaults {defaults}")
            return "defaults kept"
        await step("tools/elicitation-sep1034", sep1034)

        async def sep1330() -> str:
            before = len(rec.elicitations)
            await client.call_tool(p + "test_elicitation_sep1330_enums", {})
            expect(len(rec.elicitations) > before, "no elicitation/create reached the client")
            props = rec.elicitations[-1].requested_schema["properties"]
            expect(props["titledSingle"].get("oneOf") and props["legacyEnum"].get("enumNames")
                   and props["titledMulti"]["items"].get("anyOf") and props["untitledMulti"]["items"].get("enum"),
                   f"schema {short(props)}")
            return "enum forms kept"
        await step("tools/elicitation-sep1330", sep1330)

        # ------------------------------------------------------------------ prompts
        async def list_prompts() -> str:
            r = await client.list_prompts()
            names = {x.name: x for x in r.prompts}
            missing = [p + n for n in PROMPT_FIXTURES if p + n not in names]
            expect(not missing, f"missing {missing}; listed {sorted(names)}")
            expect(all(names[p + n].description for n in PROMPT_FIXTURES), "a prompt without a description")
            return f"{len(names)} prompts listed"
        await step("prompts/list", list_prompts)

        async def get_simple() -> str:
            r = await client.get_prompt(p + "test_simple_prompt")
            expect(r.messages and r.messages[0].content.text == "This is a simple prompt for testing.",
                   f"got {short(r.messages)}")
            return r.messages[0].content.text
        await step("prompts/get-simple", get_simple)

        async def get_args() -> str:
            r = await client.get_prompt(p + "test_prompt_with_arguments", {"arg1": "fed1", "arg2": "fed2"})
            t = r.messages[0].content.text
            expect("fed1" in t and "fed2" in t, f"got {short(t)}")
            return t
        await step("prompts/get-with-args", get_args)

        async def get_embedded() -> str:
            r = await client.get_prompt(p + "test_prompt_with_embedded_resource", {"resourceUri": "test://fed"})
            res = [m.content for m in r.messages if isinstance(m.content, types.EmbeddedResource)]
            expect(res, f"no embedded resource in {short(r.messages)}")
            return str(res[0].resource.uri)
        await step("prompts/get-embedded-resource", get_embedded)

        async def get_image() -> str:
            r = await client.get_prompt(p + "test_prompt_with_image")
            expect(any(isinstance(m.content, types.ImageContent) and m.content.data for m in r.messages),
                   f"no image in {short(r.messages)}")
            return "image/png"
        await step("prompts/get-with-image", get_image)

        async def complete() -> str:
            r = await client.complete(types.PromptReference(type="ref/prompt", name=p + "test_prompt_with_arguments"),
                                      {"name": "arg1", "value": "pa"})
            expect(set(r.completion.values) == {"paris", "park", "party"}, f"values {r.completion.values}")
            return ",".join(r.completion.values)
        await step("completion/complete", complete)

        # ---------------------------------------------------------------- resources
        # A gateway maps each upstream's URIs (two upstreams have the same ones); the driver does
        # not assume how: every listed URI ending in test://watched-resource is read, the one whose
        # text names this prefix's upstream gives that upstream's head (the mapped URI minus the
        # upstream URI), and its other resources must be listed under the same head.
        head: list[str] = []
        listed: dict[str, str] = {}  # upstream uri -> listed uri

        async def resource_routing() -> str:
            r = await client.list_resources()
            uris = [str(x.uri) for x in r.resources]
            watched = [u for u in uris if u.endswith("test://watched-resource")]
            expect(watched, f"no URI ending in test://watched-resource among {uris}")
            names = {}
            for u in watched:
                rr = await client.read_resource(u)
                names[u] = getattr(rr.contents[0], "text", "")
            mine = [u for u, t in names.items() if f"(server {server_name})" in t]
            expect(len(mine) == 1, f"{len(mine)} of {watched} name {server_name!r}: {names}")
            head.append(mine[0][: -len("test://watched-resource")])
            return mine[0]
        await step("resources/routing", resource_routing)

        async def list_resources() -> str:
            expect(head, "no URI head (resources/routing failed)")
            r = await client.list_resources()
            uris = [str(x.uri) for x in r.resources]
            for want in ("test://static-text", "test://static-binary", "test://watched-resource"):
                expect(head[0] + want in uris, f"{head[0] + want} not among {uris}")
                listed[want] = head[0] + want
            return ", ".join(listed.values())
        await step("resources/list", list_resources)

        async def read_text() -> str:
            expect("test://static-text" in listed, "not listed")
            r = await client.read_resource(listed["test://static-text"])
            c = r.contents[0]
            expect(getattr(c, "text", None) == "This is the content of the static text resource.", f"got {short(c)}")
            return short(c.text, 60)
        await step("resources/read-text", read_text)

        async def read_binary() -> str:
            expect("test://static-binary" in listed, "not listed")
            r = await client.read_resource(listed["test://static-binary"])
            c = r.contents[0]
            expect(getattr(c, "blob", None) and c.mime_type == "image/png", f"got {short(c)}")
            return f"{len(c.blob)} base64 chars"
        await step("resources/read-binary", read_binary)

        async def templates() -> str:
            expect(head, "no URI head (resources/routing failed)")
            r = await client.list_resource_templates()
            want = head[0] + "test://template/{id}/data"
            tpls = [x.uri_template for x in r.resource_templates]
            expect(want in tpls, f"{want} not among {tpls}")
            uri = want.replace("{id}", "123")
            rr = await client.read_resource(uri)
            t = getattr(rr.contents[0], "text", "")
            expect('"id":"123"' in t, f"got {short(rr.contents[0])}")
            listed["template"] = uri
            return uri
        await step("resources/templates-read", templates)

        async def contents_uri() -> str:
            asked = [listed[k] for k in ("test://static-text", "test://static-binary", "template") if k in listed]
            expect(len(asked) == 3, f"only {asked} listed")
            got = {}
            for uri in asked:
                rr = await client.read_resource(uri)
                got[uri] = str(rr.contents[0].uri)
            wrong = {k: v for k, v in got.items() if k != v}
            expect(not wrong, "read -> contents[0].uri: " + ", ".join(f"{k} -> {v}" for k, v in wrong.items()))
            return "3 URIs kept"
        await step("resources/contents-uri", contents_uri)

        async def subscribe() -> str:
            expect("test://watched-resource" in listed, "not listed")
            await client.subscribe_resource(listed["test://watched-resource"])
            r = await client.call_tool(p + "notify_resource_updated", {"uri": "test://watched-resource"})
            expect(first_text(r).startswith("sent"), f"the upstream says: {first_text(r)!r}")
            return first_text(r)
        await step("resources/subscribe", subscribe)

        async def updated() -> str:
            expect("test://watched-resource" in listed, "not listed")
            want = listed["test://watched-resource"]
            with anyio.move_on_after(UPDATE_WAIT):
                while not any(u == want for u in rec.updated):
                    await anyio.sleep(0.02)
            expect(want in rec.updated, f"no notifications/resources/updated for {want} within {UPDATE_WAIT:.1f} s"
                   f" (got {rec.updated})")
            return want
        await step("resources/updated", updated)

        async def unsubscribe() -> str:
            expect("test://watched-resource" in listed, "not listed")
            await client.unsubscribe_resource(listed["test://watched-resource"])
            r = await client.call_tool(p + "notify_resource_updated", {"uri": "test://watched-resource"})
            expect(first_text(r).startswith("not subscribed"), f"the upstream says: {first_text(r)!r}")
            return first_text(r)
        await step("resources/unsubscribe", unsubscribe)

    try:
        # One deadline for the whole session (each step has its own, shorter one).
        with anyio.fail_after(STEP_TIMEOUT * (len(CHECKS) + 2)):
            async with mcp.Client(url, mode="legacy", logging_callback=on_log, sampling_callback=on_sampling,
                                  elicitation_callback=on_elicit, message_handler=on_message,
                                  read_timeout_seconds=STEP_TIMEOUT) as client:
                checks.append(Check("session/initialize", prefix, True, f"protocol {client.protocol_version}"))
                await all_steps(client)
        checks.append(Check("session/close", prefix, True, "no error outside the steps"))
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        if not checks:
            checks.append(Check("session/initialize", prefix, False, short(f"{type(e).__name__}: {e}")))
        else:
            checks.append(Check("session/close", prefix, False, short(f"{type(e).__name__}: {e}")))
    return checks


def run_checks(url: str, upstreams: dict[str, str]) -> list[Check]:
    """Every check for every prefix (prefix -> upstream server name), prefixes one after the other."""
    out: list[Check] = []
    for prefix, name in upstreams.items():
        out += anyio.run(run_prefix, url, prefix, name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("upstreams", nargs="+", metavar="PREFIX=SERVER_NAME")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    upstreams = dict(u.split("=", 1) for u in args.upstreams)
    checks = run_checks(args.url, upstreams)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            print(f"{'PASS' if c.passed else 'FAIL'}  {c.prefix:4} {c.id:32} {c.detail}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
