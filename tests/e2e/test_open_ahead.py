"""Upstream sessions opened ahead of the first call (`gateway.open_upstream_sessions:
on_initialize`, docs/architecture.md): the client's `initialize` is answered at once, the
gateway then opens one upstream session per server from the VM's root context, and the first
call finds it cached: no upstream `initialize` on the call's path.

This module starts its own two upstreams (one is stopped and restarted here) and gateway
(two workers: the opening runs on one VM, the call may land on the other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from harness import DemoServer, Gateway
from rpc import Rpc, describe, tool_text

NAMES = ("ahead1", "ahead2")


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, DemoServer]]:
    workdir: Path = tmp_path_factory.mktemp("open-ahead-upstreams")
    started = {name: DemoServer(name, workdir, credential=f"{name}-secret") for name in NAMES}
    harness.start_all(started.values())
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def ahead(tmp_path_factory, servers: dict[str, DemoServer]) -> Iterator[Gateway]:
    document = harness.gateway_document(
        [harness.server_entry(s, f"{name}_", harness.discover_tools(s.url, s.auth_headers()))
         for name, s in servers.items()],
        keys=[harness.new_session_key()],
        limits={"upstream_timeout_ms": 3000},
        gateway={"open_upstream_sessions": "on_initialize"},
    )
    gw = Gateway(tmp_path_factory.mktemp("open-ahead"), upstreams=list(servers.values()),
                 plugin_config={"document": document}, name="open-ahead", concurrency=2)
    harness.started(gw)
    yield gw
    gw.stop()


def opened(server: DemoServer) -> dict[str, Any]:
    """What `server` saw of session openings: initializes, acknowledgements (with the session)."""
    log = server.requests_log()
    return {
        "initialize": sum(1 for r in log if r["rpc_method"] == "initialize"),
        "initialized": sum(1 for r in log if r["rpc_method"] == "notifications/initialized"),
        "sessions": [r["headers"].get("mcp-session-id") for r in log
                     if r["rpc_method"] == "notifications/initialized"],
    }


def test_initialize_opens_every_upstream_session_and_the_first_call_uses_it(
        ahead: Gateway, servers: dict[str, DemoServer]):
    for server in servers.values():
        server.clear_log()
    with Rpc(ahead.url) as client:
        client.initialize()
        # Every server gets its session opened and acknowledged, without any call.
        for server in servers.values():
            harness.wait_until(lambda s=server: opened(s)["initialized"] == 1, timeout=10,
                               what=f"{server.server_name}: an upstream session opened ahead of need")
        for name, server in servers.items():
            resp, msg = client.call_tool(f"{name}_echo", {"text": "first"})
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg).endswith(": first"), msg
            seen = opened(server)
            # The call went on the session opened ahead, and opened none of its own.
            assert seen["initialize"] == 1, seen
            calls = [r["headers"].get("mcp-session-id") for r in server.requests_log()
                     if r["rpc_method"] == "tools/call"]
            assert calls == seen["sessions"], (calls, seen)


def test_an_opening_ahead_that_fails_leaves_the_first_call_to_open_it(
        ahead: Gateway, servers: dict[str, DemoServer]):
    """An upstream that is down at initialize: the client still gets its answer at once, and the
    first call (the upstream back) opens the session itself."""
    up, down = (servers[name] for name in NAMES)
    up.clear_log()
    down.stop()
    try:
        with Rpc(ahead.url) as client:
            assert client.initialize().get("protocolVersion"), "initialize is answered"
            harness.wait_until(lambda: opened(up)["initialized"] == 1, timeout=10,
                               what=f"{up.server_name} opened ahead while {down.server_name} is down")
            down.start()
            down.clear_log()
            resp, msg = client.call_tool(f"{down.server_name}_echo", {"text": "late"})
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg).endswith(": late"), msg
            assert opened(down)["initialize"] == 1
    finally:
        if not down.running:
            down.start()
