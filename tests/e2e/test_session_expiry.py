"""Session tokens expire after ttl_seconds and only open under the key that sealed them.

Uses a second gateway (own key, ttl 2 s, one worker) over the same upstreams."""

from __future__ import annotations

import time

import pytest

import harness
from conftest import make_document
from rpc import Rpc, describe, tool_text

TTL = 2


@pytest.fixture(scope="module")
def short_gateway(workdir, upstreams, catalogs):
    gw = harness.Gateway(workdir, upstreams=list(upstreams.values()), name="envoy-ttl", concurrency=1,
                         plugin_config={"document": make_document(upstreams, catalogs, ttl_seconds=TTL,
                                                                  key_id="k-other")},
                         validate=True)
    harness.started(gw)
    yield gw
    gw.stop()


def call_status(c: Rpc) -> int:
    resp = c.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "beta_echo", "arguments": {"text": "ttl"}}})
    assert resp.status_code in (200, 404), describe(resp)
    return resp.status_code


def test_token_expires(short_gateway):
    with Rpc(short_gateway.url) as c:
        c.initialize()
        issued = time.monotonic()
        resp, msg = c.call_tool("beta_echo", {"text": "fresh"})
        assert resp.status_code == 200, describe(resp)
        assert tool_text(msg) == "beta: fresh"
        deadline = issued + TTL + 5
        while call_status(c) == 200:
            assert time.monotonic() < deadline, f"token still accepted {TTL + 5}s after issue (ttl {TTL}s)"
            time.sleep(0.25)
        assert time.monotonic() - issued >= TTL - 1, "token rejected well before its ttl"


def test_token_from_another_key_is_404(gateway, short_gateway):
    with Rpc(gateway.url) as main, Rpc(short_gateway.url) as other:
        main.initialize()
        other.initialize()
        for token, url in ((main.session, short_gateway.url), (other.session, gateway.url)):
            with Rpc(url, session=token, version=main.version) as c:
                assert call_status(c) == 404
