"""Scale-out without sticky sessions: two Envoy processes, each with the plugin and the same
configuration and session key, behind one client that alternates between them on one session.

Sessions are sealed tokens (docs/architecture.md), so either replica opens a token the other
sealed; each replica keeps its own upstream sessions, opened once per (client session, server)
and replica however the calls alternate."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from conftest import make_document
from harness import DemoServer, Gateway
from rpc import Rpc, describe, tool_text

ROUNDS = 20


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, upstreams: dict[str, DemoServer], catalogs) -> Iterator[list[Gateway]]:
    workdir: Path = tmp_path_factory.mktemp("scale-out")
    document = make_document(upstreams, catalogs)  # one document, one key, for both replicas
    gateways = [Gateway(workdir, upstreams=list(upstreams.values()), plugin_config={"document": document},
                        name=f"replica-{i}", concurrency=2) for i in range(2)]
    try:
        for gw in gateways:
            gw.start()
    except harness.HarnessError as e:
        for gw in gateways:
            gw.stop()
        pytest.fail(str(e), pytrace=False)
    yield gateways
    for gw in gateways:
        gw.stop()


def upstream_sessions(server: DemoServer) -> tuple[int, set[Any]]:
    log = server.requests_log()
    inits = sum(1 for r in log if r["rpc_method"] == "initialize")
    used = {r["headers"].get("mcp-session-id") for r in log if r["rpc_method"] == "tools/call"}
    return inits, used


def test_one_session_alternating_between_two_replicas(replicas: list[Gateway], upstreams: dict[str, DemoServer]):
    a, b = replicas
    alpha, beta = upstreams["alpha"], upstreams["beta"]
    alpha.clear_log()
    beta.clear_log()
    with Rpc(a.url) as first:
        first.initialize()
        session, version = first.session, first.version
    for i in range(ROUNDS):
        replica = replicas[i % 2]
        tool = "alpha_echo" if i % 4 < 2 else "beta_echo"
        with Rpc(replica.url, session=session, version=version) as c:
            resp, msg = c.call_tool(tool, {"text": f"round {i}"})
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg).endswith(f": round {i}"), msg
            # The upstream's answer was relayed to this client, with this client's id.
            assert tool_text(msg).startswith("alpha" if tool == "alpha_echo" else "beta"), msg
    for server in (alpha, beta):
        inits, used = upstream_sessions(server)
        # One upstream session per replica (each replica opened its own once), never one per call.
        assert inits == 2, f"{server.server_name}: {inits} upstream initializes for one client session on two replicas"
        assert len(used) == 2, used


def test_a_tampered_token_opens_on_neither(replicas: list[Gateway]):
    """The replicas share a key, not a trust in whatever a client presents."""
    a, _ = replicas
    with Rpc(a.url) as first:
        first.initialize()
        token, version = first.session, first.version
    tampered = token[: len(token) // 2] + ("A" if token[len(token) // 2] != "A" else "B") + token[len(token) // 2 + 1:]
    for replica in replicas:
        with Rpc(replica.url, session=tampered, version=version) as c:
            resp, _ = c.call_tool("alpha_echo", {"text": "x"})
            assert resp.status_code == 404, describe(resp)
        with Rpc(replica.url, session=token, version=version) as c:
            resp, msg = c.call_tool("alpha_echo", {"text": "genuine"})
            assert resp.status_code == 200 and tool_text(msg) == "alpha: genuine", describe(resp)
