"""Upstream sessions under concurrency: one opening per (client session, server), however many
first calls arrive at once and on whichever worker; a call whose opener goes away; the opening
rate cap; upstream sessions pushed out of the cache are closed.

Besides the session-wide gateway, this module starts its own: three upstreams, `slow` holding
every initialize 600 ms (so concurrent first calls really overlap an opening), a 4-slot session
cache (one set: the fifth pair evicts) and at most 2 openings per client session and second."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

import harness
from harness import DemoServer, Gateway
from rpc import Rpc, describe, message_of, tool_text

CALLS = 16
SLOW_INITIALIZE_MS = 600


def concurrent_calls(url: str, session: str, version: str, tool: str, n: int = CALLS) -> list:
    """`n` tools/call of `tool` in session `session`, released together, each on its own
    connection (so Envoy spreads them over its workers). Returns (HTTP response, message) pairs."""
    barrier = threading.Barrier(n)

    def one(i: int):
        with Rpc(url, session=session, version=version) as c:
            c.http.get(url.rsplit("/", 1)[0] + "/not-mcp")  # open the connection first
            barrier.wait()
            return c.call_tool(tool, {"text": f"call {i}"}, headers={"connection": "close"})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def upstream_opens(server: DemoServer) -> tuple[int, set, int]:
    """Initializes the upstream received, the upstream sessions its tools/call used, and the
    pings (a call woken by another stream's opening returns to its own stream with one:
    docs/architecture.md, "One opening per upstream session")."""
    log = server.requests_log()
    inits = [r for r in log if r["rpc_method"] == "initialize"]
    used = {r["headers"].get("mcp-session-id") for r in log if r["rpc_method"] == "tools/call"}
    pings = [r for r in log if r["rpc_method"] == "ping"]
    return len(inits), used, len(pings)


def test_concurrent_first_calls_open_one_upstream_session(gateway, upstreams):
    """On the session-wide gateway (fast upstreams)."""
    alpha = upstreams["alpha"]
    with Rpc(gateway.url) as c:
        c.initialize()
        alpha.clear_log()
        results = concurrent_calls(gateway.url, c.session, c.version, "alpha_echo")
        for i, (resp, msg) in enumerate(results):
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg) == f"alpha: call {i}"
        inits, used, pings = upstream_opens(alpha)
        print(f"{CALLS} concurrent first calls: {inits} upstream initialize(s), {len(used)} session(s) "
              f"used, {pings} woken by another stream's opening")
        assert inits == 1, f"{inits} upstream sessions opened for one client session"
        assert len(used) == 1, used
        c.delete()


# ---------------------------------------------------------------------------- dedicated gateway

@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, DemoServer]]:
    workdir = tmp_path_factory.mktemp("upstream-sessions")
    servers = {
        "slow": DemoServer("slow", workdir, credential="slow-secret", initialize_delay_ms=SLOW_INITIALIZE_MS),
        "fast": DemoServer("fast", workdir, json_response=True),
        "third": DemoServer("third", workdir, json_response=True),
    }
    harness.start_all(servers.values())
    servers["workdir"] = workdir  # type: ignore[assignment]
    yield servers
    for name, s in servers.items():
        if name != "workdir":
            s.stop()


@pytest.fixture(scope="module")
def small(servers) -> Iterator[Gateway]:
    upstreams = [servers[n] for n in ("slow", "fast", "third")]
    doc = harness.gateway_document(
        [harness.server_entry(s, f"{s.server_name}_", harness.discover_tools(s.url, s.auth_headers()))
         for s in upstreams],
        keys=[harness.new_session_key()],
        limits={"upstream_session_slots": 4, "max_session_opens_per_second": 2,
                "upstream_timeout_ms": 5000},
    )
    gw = Gateway(servers["workdir"], upstreams=upstreams, plugin_config={"document": doc}, name="envoy-small")
    gw.start()
    yield gw
    gw.stop()


def session(gw: Gateway) -> Rpc:
    c = Rpc(gw.url)
    c.initialize()
    return c


def test_first_calls_during_a_slow_opening_all_wait_for_it(small, servers):
    slow = servers["slow"]
    with session(small) as c:
        slow.clear_log()
        results = concurrent_calls(small.url, c.session, c.version, "slow_echo")
        for i, (resp, msg) in enumerate(results):
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg) == f"slow: call {i}"
        inits, used, pings = upstream_opens(slow)
        print(f"{CALLS} concurrent first calls, {SLOW_INITIALIZE_MS} ms initialize: {inits} initialize(s), "
              f"{len(used)} session(s) used, {pings} woken")
        assert inits == 1
        assert len(used) == 1
        assert pings == CALLS - 1, "every other call waited for the one opening"


def test_calls_waiting_on_an_opener_that_goes_away_still_succeed(small, servers):
    """The first call's client disconnects during the upstream initialize: a waiting call takes
    the opening over."""
    slow = servers["slow"]
    with session(small) as c:
        slow.clear_log()
        gone = threading.Event()

        def opener():
            with httpx.Client(timeout=httpx.Timeout(0.2)) as http:
                try:
                    http.post(small.url, headers=c.headers({"connection": "close"}),
                              json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                    "params": {"name": "slow_echo", "arguments": {"text": "x"}}})
                except httpx.TimeoutException:
                    pass
            gone.set()

        t = threading.Thread(target=opener)
        t.start()
        # The waiters arrive while the opener's initialize is held upstream.
        harness.wait_until(lambda: any(r["rpc_method"] == "initialize" for r in slow.requests_log()),
                           what="the opener's initialize")
        results = concurrent_calls(small.url, c.session, c.version, "slow_echo", n=4)
        t.join()
        assert gone.is_set()
        for i, (resp, msg) in enumerate(results):
            assert resp.status_code == 200, describe(resp)
            assert tool_text(msg) == f"slow: call {i}"
        inits, used, pings = upstream_opens(slow)
        print(f"opener gone mid-initialize: {inits} initialize(s), {len(used)} session(s) used, {pings} woken")
        assert inits <= 2, f"{inits} openings: the abandoned one and at most one takeover"
        assert len(used) == 1


def test_session_openings_are_capped_per_second(small, servers):
    """Three first calls to three servers at once: a third opening in the same second is refused
    with 429 and Retry-After; the session stays usable. (A burst that straddles a second boundary
    is within the cap: each burst uses a new session, until one lands in one second.)"""
    tools = ["slow_echo", "fast_echo", "third_echo"]
    for _ in range(10):
        c = session(small)
        barrier = threading.Barrier(len(tools))

        def call(tool: str):
            with Rpc(small.url, session=c.session, version=c.version) as r:
                barrier.wait()
                return r.call_tool(tool, {"text": "rate"})

        with ThreadPoolExecutor(len(tools)) as pool:
            results = list(pool.map(call, tools))
        refused = [resp for resp, _ in results if resp.status_code == 429]
        assert len(refused) <= 1, [describe(r) for r, _ in results]
        assert all(resp.status_code in (200, 429) for resp, _ in results), [describe(r) for r, _ in results]
        if refused:
            break
        c.delete()
        c.close()
    else:
        pytest.fail("no burst of three openings was refused")
    with c:
        resp = refused[0]
        assert resp.headers.get("retry-after") == "1", describe(resp)
        error = message_of(resp)["error"]
        assert error["code"] == -32603 and "at most 2 a second" in error["message"], describe(resp)
        # Later, the refused server opens (the budget is per second).
        refused_tool = next(t for t, (resp, _) in zip(tools, results) if resp.status_code == 429)

        def later():
            resp, msg = c.call_tool(refused_tool, {"text": "later"})
            assert resp.status_code in (200, 429), describe(resp)
            return msg if resp.status_code == 200 else None

        msg = harness.wait_until(later, timeout=5, what="the opening cap to lift")
        assert tool_text(msg).endswith(": later")
        c.delete()


def test_an_upstream_session_pushed_out_of_the_cache_is_closed(small, servers):
    """Four cache slots in one set: sessions beyond four evict the oldest, whose upstream
    session gets a DELETE."""
    fast = servers["fast"]
    fast.clear_log()
    clients = [session(small) for _ in range(6)]
    try:
        for c in clients:
            resp, msg = c.call_tool("fast_echo", {"text": "fill"})
            assert resp.status_code == 200, describe(resp)
        log = fast.requests_log()
        issued = [r["issued_session_id"] for r in log if r["rpc_method"] == "initialize"]
        assert len(issued) == 6
        def deleted() -> set:
            return {r["headers"].get("mcp-session-id") for r in fast.requests_log()
                    if r["http_method"] == "DELETE"}

        # The DELETE is fire-and-forget: wait for it to arrive.
        harness.wait_until(lambda: set(issued[:2]) <= deleted(), what="the evicted sessions' DELETE")
        assert not deleted() & set(issued[2:]), "only evicted sessions are closed"
    finally:
        for c in clients:
            c.delete()
            c.close()
