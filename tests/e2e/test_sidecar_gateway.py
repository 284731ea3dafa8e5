"""Standalone mode end to end: Envoy 1.40 bootstrapped by `mcpgw-sidecar bootstrap` (xDS files + the
Wasm plugin polling the sidecar), the sidecar discovering Python-SDK MCP servers, and Python-SDK MCP
clients talking to the gateway. Covers: a server added while a client is connected (new tools on
every worker within 2 s, `list_changed` on the client's GET stream), an upstream killed and
restarted, the sidecar killed and restarted, a prefix collision, a TLS upstream that requires
a bearer token, and `select_tools` pushing `list_changed` on its own session's GET stream only.

Each test prints the figures it measured (run with `-s` to see them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import harness
from harness import DemoServer
from rpc import Rpc, describe, tool_text
from sidecar_harness import (ListeningClient, Sidecar, SidecarGateway, TlsServer, base_config, envoy_settings,
                             fresh_tool_names, make_ca)

LIST_CHANGED = "notifications/tools/list_changed"
ALPHA_TOOLS = ["alpha_echo", "alpha_add", "alpha_whoami"]
BETA_TOOLS = ["beta_echo", "beta_add", "beta_whoami"]



@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sidecar-gateway")


@pytest.fixture(scope="module")
def upstreams(workdir):
    alpha = DemoServer("alpha", workdir, credential="alpha-secret")
    beta = DemoServer("beta", workdir, json_response=True)
    harness.start_all([alpha, beta])
    yield {"alpha": alpha, "beta": beta}
    alpha.stop()
    beta.stop()


@pytest.fixture(scope="module")
def stack(workdir, upstreams):
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds", **envoy)
    cfg["servers"] = [{"name": "alpha", "url": upstreams["alpha"].url, "credential": {"env": "ALPHA_TOKEN"},
                       "forward_headers": ["X-Tenant"]}]
    sc = Sidecar(workdir, cfg, env={"ALPHA_TOKEN": "alpha-secret", "SECURE_TOKEN": "tls-token"})
    gw = SidecarGateway(workdir, sc)
    try:
        sc.start()
        sc.wait_state("alpha", "serving")
        gw.start()
        wait_tools(gw, lambda names: names == ALPHA_TOOLS)
    except harness.HarnessError as e:
        gw.stop()
        sc.stop()
        pytest.fail(str(e), pytrace=False)
    yield sc, gw
    gw.stop()
    sc.stop()


def wait_tools(gw: SidecarGateway, ok, timeout: float = 10.0) -> list[str]:
    """Poll tools/list through fresh sessions until `ok(names)`."""
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while time.monotonic() < deadline:
        try:
            names = fresh_tool_names(gw.url, timeout=5)
            if ok(names):
                return names
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            names = [repr(e)]
        time.sleep(0.05)
    raise AssertionError(f"tools/list never satisfied the condition; last: {names}")


def wait_get_streams(gw: SidecarGateway, n: int, timeout: float = 10.0) -> None:
    """Until the sidecar's notification-stream cluster has `n` requests open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = gw.envoy.stats("cluster.mcpgw_sidecar_streams.upstream_rq_active").get(
            "cluster.mcpgw_sidecar_streams.upstream_rq_active", 0)
        if active >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the client's GET stream did not reach the sidecar")


def wait_all_workers(gw: SidecarGateway, version: str, since_threads: int = 3, timeout: float = 5.0) -> float:
    """Monotonic time at which every plugin VM thread logged `version` as active."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        versions = gw.active_versions()
        if len(versions) >= since_threads and all(v == version for v in versions.values()):
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"not every VM runs {version}: {gw.active_versions()}")


def whoami(client: ListeningClient, tool: str) -> dict:
    text, is_error = client.call_tool(tool)
    assert not is_error, text
    return json.loads(text)


def serving(stack, upstreams, *, beta: bool) -> None:
    """Puts the module's stack into a known state whatever earlier tests left: alpha, and beta iff
    `beta`, configured, serving and listed through the gateway."""
    sc, gw = stack
    for server in upstreams.values():
        if not server.running:
            server.popen = None
            server.start()
    servers = [{"name": "alpha", "url": upstreams["alpha"].url, "credential": {"env": "ALPHA_TOKEN"},
                "forward_headers": ["X-Tenant"]}]
    if beta:
        servers.append({"name": "beta", "url": upstreams["beta"].url})
    sc.edit(lambda c: c.update(servers=servers))
    expected = ALPHA_TOOLS + (BETA_TOOLS if beta else [])
    wait_tools(gw, lambda names: names == expected, timeout=20)
    # One worker listing it is not all of them: each VM adopts the published document on its own
    # tick, so wait until every VM runs the sidecar's current version.
    _, _, doc = sc.document()
    wait_all_workers(gw, doc["version"], timeout=20)


def test_catalog_and_credential_through_the_gateway(stack, upstreams):
    serving(stack, upstreams, beta=False)
    sc, gw = stack
    with ListeningClient(gw.url) as client:
        assert client.tool_names() == ALPHA_TOOLS
        me = whoami(client, "alpha_whoami")
        assert me["server"] == "alpha"
        assert me["headers"]["authorization"] == "Bearer alpha-secret"  # from the sidecar's config
        assert me["headers"]["x-mcp-servername"] == "alpha"
        assert client.call_tool("alpha_add", {"a": 2, "b": 40}) == ("42", False)


def test_only_allowed_headers_reach_the_upstream(stack, upstreams):
    """Standalone: the servers file's `forward_headers` reach the document and the plugin; the
    generated routes, router and clusters keep Envoy's own headers from the upstream."""
    serving(stack, upstreams, beta=False)
    sc, gw = stack
    _, _, doc = sc.document()
    assert next(s for s in doc["servers"] if s["name"] == "alpha")["forward_headers"] == ["x-tenant"]
    sent = {"cookie": "sid=client", "authorization": "Bearer client-token", "proxy-authorization": "Basic eDp5",
            "x-api-key": "client-key", "x-forwarded-for": "203.0.113.7", "forwarded": "for=203.0.113.7",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-tenant": "acme"}
    with Rpc(gw.url) as c:
        c.initialize()
        resp, msg = c.call_tool("alpha_whoami", headers=sent)
        assert resp.status_code == 200, describe(resp)
        h = json.loads(tool_text(msg))["headers"]
        c.delete()
    assert h["authorization"] == "Bearer alpha-secret"
    assert h["x-tenant"] == "acme" and h["traceparent"] == sent["traceparent"]
    for gone in ("cookie", "proxy-authorization", "x-api-key", "x-forwarded-for", "forwarded", "accept-encoding",
                 "x-forwarded-proto", "x-envoy-original-host", "x-envoy-expected-rq-timeout-ms", "x-envoy-internal"):
        assert gone not in h, (gone, h)
    # The plugin's own calls on that upstream session (initialize, notifications/initialized, DELETE).
    sid = h["mcp-session-id"]
    own = [e for e in upstreams["alpha"].requests_log() if e["rpc_method"] != "tools/call" and (
        e["headers"].get("mcp-session-id") == sid or (e["rpc_method"] == "initialize" and e["issued_session_id"] == sid))]
    assert [e["http_method"] for e in own] == ["POST", "POST", "DELETE"], own
    for e in own:
        assert not [n for n in e["headers"] if n.startswith("x-envoy-") or n.startswith("x-forwarded-")], e
        assert "cookie" not in e["headers"] and "x-tenant" not in e["headers"], e


def test_server_added_while_a_client_is_connected(stack, upstreams):
    serving(stack, upstreams, beta=False)
    sc, gw = stack
    with ListeningClient(gw.url) as client:
        assert client.tool_names() == ALPHA_TOOLS
        wait_get_streams(gw, 1)
        edited = time.monotonic()
        sc.edit(lambda c: c["servers"].append({"name": "beta", "url": upstreams["beta"].url}))
        sc.wait_state("beta", "serving", timeout=5)
        _, _, doc = sc.document()
        all_workers = wait_all_workers(gw, doc["version"])
        notified = client.wait_notification(LIST_CHANGED, since=edited, timeout=5)
        # The connected client re-lists on the notification and sees the new server at once.
        assert client.tool_names() == ALPHA_TOOLS + BETA_TOOLS
        assert client.call_tool("beta_echo", {"text": "hi"}) == ("beta: hi", False)
    # Fresh connections land on either worker: every one of them serves the new catalog.
    for _ in range(6):
        assert fresh_tool_names(gw.url) == ALPHA_TOOLS + BETA_TOOLS
    propagation = all_workers - edited
    # Measured, not asserted (timings belong in benchmarks: bench/run.py, docs/sidecar.md).
    print(f"\npropagation (config edit -> new catalog active on every VM): {propagation * 1000:.0f} ms; "
          f"client notified after {(notified - edited) * 1000:.0f} ms")


def test_upstream_killed_then_restarted(stack, upstreams):
    serving(stack, upstreams, beta=True)
    sc, gw = stack
    beta = upstreams["beta"]
    with ListeningClient(gw.url) as client:
        wait_get_streams(gw, 1)
        killed = time.monotonic()
        beta.popen.kill()
        beta.popen.wait()
        wait_tools(gw, lambda names: names == ALPHA_TOOLS, timeout=5)
        gone = time.monotonic() - killed
        client.wait_notification(LIST_CHANGED, since=killed, timeout=5)
        assert client.tool_names() == ALPHA_TOOLS
        sc.wait_log(r"server beta is down, its 3 tools leave the catalog: ")
        restarted = time.monotonic()
        beta.popen = None
        beta.start()
        wait_tools(gw, lambda names: names == ALPHA_TOOLS + BETA_TOOLS, timeout=10)
        back = time.monotonic() - restarted
        client.wait_notification(LIST_CHANGED, since=restarted, timeout=5)
        assert client.call_tool("beta_echo", {"text": "back"}) == ("beta: back", False)
    print(f"\nupstream killed -> tools gone in {gone * 1000:.0f} ms; restarted -> back in {back * 1000:.0f} ms "
          f"(includes the Python server's start-up)")


def test_sidecar_killed_then_restarted(stack, upstreams):
    serving(stack, upstreams, beta=True)
    sc, gw = stack
    sc.popen.kill()
    sc.popen.wait()
    # The gateway keeps serving and routing with the last configuration.
    with ListeningClient(gw.url) as client:
        assert client.tool_names() == ALPHA_TOOLS + BETA_TOOLS
        assert client.call_tool("alpha_echo", {"text": "still"}) == ("alpha: still", False)
        assert client.call_tool("beta_echo", {"text": "still"}) == ("beta: still", False)
    # The configuration changes while the sidecar is down; once back, it catches up.
    sc.edit(lambda c: c["servers"][1].update(prefix="bravo_"))
    restarted = time.monotonic()
    sc.popen = None
    sc.start()
    wait_tools(gw, lambda names: names == ALPHA_TOOLS + ["bravo_echo", "bravo_add", "bravo_whoami"], timeout=15)
    caught_up = time.monotonic() - restarted
    log = gw.envoy.log_path.read_text()
    assert "serving the last good configuration" in log
    print(f"\nsidecar restarted -> gateway caught up in {caught_up * 1000:.0f} ms")
    sc.edit(lambda c: c["servers"][1].update(prefix="beta_"))
    wait_tools(gw, lambda names: names == ALPHA_TOOLS + BETA_TOOLS)


def test_prefix_collision_is_refused_not_shadowed(stack, upstreams):
    serving(stack, upstreams, beta=True)
    sc, gw = stack
    sc.edit(lambda c: c["servers"].append({"name": "copycat", "url": upstreams["beta"].url, "prefix": "alpha_"}))
    try:
        refused = sc.wait_state("copycat", "refused")
        assert 'prefix "alpha_" is already used by server "alpha"' in refused["detail"]
        sc.wait_log(r'server "copycat" refused: prefix "alpha_" is already used by server "alpha"')
        assert fresh_tool_names(gw.url) == ALPHA_TOOLS + BETA_TOOLS
        with ListeningClient(gw.url) as client:
            assert whoami(client, "alpha_whoami")["server"] == "alpha"
    finally:
        sc.edit(lambda c: c["servers"].pop())


def test_tls_upstream_requiring_a_bearer_token(stack, upstreams, workdir):
    serving(stack, upstreams, beta=True)
    sc, gw = stack
    certs = make_ca(workdir / "pki", ["localhost", "127.0.0.1"])
    secure = TlsServer("secure", workdir, certfile=certs["cert"], keyfile=certs["key"], credential="tls-token").start()
    try:
        def add(c: dict) -> None:
            c["servers"].append({"name": "secure", "url": secure.url, "ca_file": str(certs["ca"]),
                                 "credential": {"env": "SECURE_TOKEN"}})
            c["servers"].append({"name": "nocred", "url": secure.url, "ca_file": str(certs["ca"])})

        sc.edit(add)
        sc.wait_state("secure", "serving")
        nocred = sc.wait_state("nocred", "down")
        assert "HTTP 401" in nocred["detail"] and "credential" in nocred["detail"], nocred
        sc.wait_log(r"server nocred is unavailable, retrying with backoff: .*HTTP 401")
        names = wait_tools(gw, lambda n: "secure_whoami" in n)
        assert not [n for n in names if n.startswith("nocred_")]
        with ListeningClient(gw.url) as client:
            me = whoami(client, "secure_whoami")
            assert me["server"] == "secure"
            assert me["headers"]["authorization"] == "Bearer tls-token"
            assert me["headers"]["host"] == f"localhost:{secure.port}"
            try:
                text, is_error = client.call_tool("nocred_echo", {"text": "x"})
                assert is_error, text
            except Exception as e:  # noqa: BLE001 - the SDK raises on a JSON-RPC error
                assert "nocred_echo" in str(e) or "Unknown tool" in str(e), e
    finally:
        sc.edit(lambda c: c.update(servers=c["servers"][:2]))
        secure.stop()


def test_every_worker_serves_once_one_has_answered(workdir, upstreams):
    """Readiness: right after the first good answer of a fresh Envoy with four workers, calls on new
    connections (spread over every worker) all succeed; none gets `no configuration yet`."""
    import concurrent.futures

    import httpx

    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds-ready", **envoy)
    cfg["servers"] = [{"name": "alpha", "url": upstreams["alpha"].url, "credential": {"env": "ALPHA_TOKEN"}}]
    sc = Sidecar(workdir, cfg, env={"ALPHA_TOKEN": "alpha-secret"}, name="sidecar-ready")
    gw = SidecarGateway(workdir, sc, concurrency=4, name="envoy-ready")
    try:
        sc.start()
        sc.wait_state("alpha", "serving")
        gw.start()
        wait_tools(gw, lambda names: names == ALPHA_TOOLS)

        def one(i: int) -> tuple[int, dict]:
            with httpx.Client(timeout=10) as c:  # a new connection each: the listener spreads them
                r = c.post(gw.url, json={"jsonrpc": "2.0", "id": i, "method": "tools/list"},
                           headers={"accept": "application/json, text/event-stream"})
                return r.status_code, r.json()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(64)))
        bad = [(s, m) for s, m in answers if s != 200 or "result" not in m]
        assert not bad, bad[:3]
        assert all(m["id"] == i for i, (_, m) in enumerate(answers))
    finally:
        gw.stop()
        sc.stop()


def test_a_silent_upstream_fails_the_call_not_the_session(workdir):
    """A server's `idle_timeout_ms`: a call whose upstream stays silent that long gets a JSON-RPC
    error (Envoy's 504 turned into -32603), a call that answers in time works, and the session
    keeps serving. (An upstream that has already started an SSE answer and then falls silent has
    its stream reset instead: the client sees the answer end, never a hang.)"""
    slow = DemoServer("slow", workdir, slow_tool=True, json_response=True)
    slow.start()
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds-slow", **envoy)
    cfg["servers"] = [{"name": "slow", "url": slow.url, "idle_timeout_ms": 700}]
    sc = Sidecar(workdir, cfg, name="sidecar-slow")
    gw = SidecarGateway(workdir, sc, name="envoy-slow")
    try:
        sc.start()
        sc.wait_state("slow", "serving")
        gw.start()
        wait_tools(gw, lambda names: "slow_sleep" in names)
        with Rpc(gw.url) as c:
            c.initialize()
            resp, msg = c.call_tool("slow_sleep", {"seconds": 5})
            assert resp.status_code == 200, describe(resp)
            assert msg["error"]["code"] == -32603 and "504" in msg["error"]["message"], describe(resp)
            resp, msg = c.call_tool("slow_sleep", {"seconds": 0.1})
            assert tool_text(msg) == "slow: slept 0.1", describe(resp)
            resp, msg = c.call_tool("slow_echo", {"text": "after"})
            assert tool_text(msg) == "slow: after", describe(resp)
    finally:
        gw.stop()
        sc.stop()
        slow.stop()


def test_notification_streams_cannot_starve_the_configuration_poll(workdir, upstreams):
    """Clients' GET streams go to the sidecar through a cluster of their own, capped by
    the sidecar's `notifications.max_streams` (2 here): one stream more is refused (503) while the
    plugins' configuration poll, on the other cluster, keeps working (a server added is served)."""
    import httpx

    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds-streams", **envoy)
    cfg["notifications"]["max_streams"] = 2
    cfg["servers"] = [{"name": "alpha", "url": upstreams["alpha"].url, "credential": {"env": "ALPHA_TOKEN"}}]
    sc = Sidecar(workdir, cfg, name="sidecar-streams", env={"ALPHA_TOKEN": "alpha-secret"})
    gw = SidecarGateway(workdir, sc, name="envoy-streams")
    clients: list[Rpc] = []
    streams = []
    try:
        sc.start()
        sc.wait_state("alpha", "serving")
        gw.start()
        wait_tools(gw, lambda names: names == ALPHA_TOOLS)

        def open_stream() -> httpx.Response:
            c = Rpc(gw.url)
            clients.append(c)
            c.initialize()
            req = c.http.build_request("GET", c.url, headers=c.headers({"accept": "text/event-stream"}))
            resp = c.http.send(req, stream=True)
            streams.append(resp)
            return resp

        assert [open_stream().status_code for _ in range(2)] == [200, 200]
        wait_get_streams(gw, 2)
        refused = open_stream()
        assert refused.status_code == 503, refused.headers
        assert refused.headers["retry-after"] == "5"
        assert json.loads(refused.read())["error"] == "too_many_streams"
        # The configuration poll is not among the refused: a server added now is served.
        sc.edit(lambda c: c["servers"].append({"name": "beta", "url": upstreams["beta"].url}))
        wait_tools(gw, lambda names: names == ALPHA_TOOLS + BETA_TOOLS)
        _, msg = clients[0].call_tool("beta_echo", {"text": "polled"})
        assert tool_text(msg) == "beta: polled"
        # A stream closed frees its place.
        streams[0].close()
        deadline = time.monotonic() + 10
        while open_stream().status_code != 200:
            assert time.monotonic() < deadline, "no stream place came free after one was closed"
    finally:
        for r in streams:
            r.close()
        for c in clients:
            c.close()
        gw.stop()
        sc.stop()


def test_a_selection_notifies_its_own_sessions_stream_only(workdir, upstreams):
    """`select_tools` (the meta-tools, `limits.meta_tools_above: 2`) changes that session's
    tools/list: its GET stream gets `notifications/tools/list_changed` (the plugin's
    `POST /v1/streams/notify` to the sidecar); another session's stream does not."""
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds-notify", **envoy)
    cfg.setdefault("limits", {})["meta_tools_above"] = 2
    cfg["servers"] = [{"name": "alpha", "url": upstreams["alpha"].url, "credential": {"env": "ALPHA_TOKEN"}}]
    sc = Sidecar(workdir, cfg, name="sidecar-notify", env={"ALPHA_TOKEN": "alpha-secret"})
    gw = SidecarGateway(workdir, sc, name="envoy-notify")
    meta = ["discover_tools", "select_tools"]
    try:
        sc.start()
        sc.wait_state("alpha", "serving")
        gw.start()
        wait_tools(gw, lambda names: names == meta)
        with ListeningClient(gw.url) as a, ListeningClient(gw.url) as b:
            assert a.tool_names() == meta and b.tool_names() == meta
            wait_get_streams(gw, 2)
            selected = time.monotonic()
            text, is_error = a.call_tool("select_tools", {"tools": ["alpha_echo"]})
            assert not is_error, text
            assert json.loads(text)["toolsListChanged"] is True
            notified = a.wait_notification(LIST_CHANGED, since=selected, timeout=5)
            assert a.tool_names() == meta + ["alpha_echo"]
            time.sleep(1.0)
            assert [m for t, m in b.notifications if t >= selected and m == LIST_CHANGED] == []
            assert b.tool_names() == meta
            print(f"\nselect_tools -> list_changed on the session's stream after "
                  f"{(notified - selected) * 1000:.0f} ms")
    finally:
        gw.stop()
        sc.stop()
