"""Observability end to end with the real Envoy (docs/observability.md): known traffic (calls to two
servers, an unknown tool, a tampered session, an upstream restart, an ended session), then the exact
deltas of the plugin's counters on `/stats/prometheus`, the MCP fields of the access-log lines, the
trace context on the gateway's own session openings, the `telemetry: false` switch, and the
sidecar's `/metrics`; both scrapes go through `prometheus_client`'s parsers (a promtool-style lint).
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

import harness
from harness import Gateway
from rpc import Rpc, describe, tool_text
from sidecar_harness import ListeningClient, Sidecar, SidecarGateway, base_config, envoy_settings, write_atomic

Sample = tuple[str, tuple[tuple[str, str], ...]]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def scrape(text: str, parser=parse_prometheus) -> dict[Sample, float]:
    """Every sample of a scrape, keyed by (name, sorted labels): parsing it is the lint."""
    out: dict[Sample, float] = {}
    for family in parser(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def envoy_scrape(gw: Gateway | SidecarGateway) -> dict[Sample, float]:
    status, text = gw.envoy.admin("/stats/prometheus")
    assert status == 200
    return scrape(text)


def delta(before: dict[Sample, float], after: dict[Sample, float], prefix: str = "mcpgw_") -> dict[Sample, float]:
    """Samples under `prefix` that moved (counters only: `_total`)."""
    out = {}
    for key, value in after.items():
        if key[0].startswith(prefix) and key[0].endswith("_total"):
            moved = value - before.get(key, 0.0)
            if moved:
                out[key] = moved
    return out


def req(method: str, outcome: str, code: str = "none") -> Sample:
    return ("mcpgw_requests_total",
            tuple(sorted({"mcp_method": method, "mcp_outcome": outcome, "mcp_error_code": code}.items())))


def per_server(name: str, server: str, **labels: str) -> Sample:
    return (name, tuple(sorted({"mcp_server": server, **labels}.items())))


def tampered(token: str) -> str:
    key, _, payload = token.partition(".")
    flipped = ("B" if payload[10] == "A" else "A")
    return f"{key}.{payload[:10]}{flipped}{payload[11:]}"


def access_lines(path: Path, want: list[str], timeout: float = 15.0) -> list[str]:
    """The access-log lines, once every regex of `want` matches one (Envoy flushes the file every
    few seconds)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        if all(any(re.search(w, line) for line in lines) for w in want):
            return lines
        time.sleep(0.25)
    missing = [w for w in want if not any(re.search(w, line) for line in lines)]
    raise AssertionError(f"access log lacks {missing}; last lines:\n" + "\n".join(lines[-15:]))


def test_counters_access_log_and_trace_context(gateway, upstreams):
    alpha = upstreams["alpha"]
    before = envoy_scrape(gateway)
    with Rpc(gateway.url) as c:
        c.initialize()
        alpha.clear_log()
        resp, msg = c.call_tool("alpha_echo", {"text": "one"},
                                headers={"traceparent": TRACEPARENT, "x-request-id": "obs-alpha-1"})
        assert tool_text(msg) == "alpha: one", describe(resp)
        resp, msg = c.call_tool("beta_echo", {"text": "two"}, headers={"x-request-id": "obs-beta-1"})
        assert tool_text(msg) == "beta: two", describe(resp)
        resp, msg = c.call_tool("no_such_tool", headers={"x-request-id": "obs-unknown-1"})
        assert msg["error"]["code"] == -32602, describe(resp)

        # The gateway's own calls for that request (initialize, initialized) carry its trace context.
        opening = [e for e in alpha.requests_log()
                   if e["rpc_method"] in ("initialize", "notifications/initialized")]
        assert len(opening) == 2, opening
        for e in opening:
            assert e["headers"].get("traceparent") == TRACEPARENT, e
            assert e["headers"].get("x-request-id") == "obs-alpha-1", e

        with Rpc(gateway.url, session=tampered(c.session), version=c.version) as t:
            resp, _ = t.request("tools/list", headers={"x-request-id": "obs-tampered-1"})
            assert resp.status_code == 404, describe(resp)

        alpha.restart()
        resp, msg = c.call_tool("alpha_echo", {"text": "three"})
        assert tool_text(msg) == "alpha: three", describe(resp)

        assert c.delete().status_code == 200
        resp, _ = c.request("tools/list")
        assert resp.status_code == 404, describe(resp)

    moved = delta(before, envoy_scrape(gateway))
    assert moved == {
        req("initialize", "answered"): 1,
        req("notifications/initialized", "answered"): 1,
        req("tools/call", "routed"): 3,
        req("tools/call", "error", "-32602"): 1,
        req("tools/list", "error", "-32600"): 2,
        req("DELETE", "answered"): 1,
        per_server("mcpgw_tool_calls_total", "alpha", mcp_tool="echo"): 2,
        per_server("mcpgw_tool_calls_total", "beta", mcp_tool="echo"): 1,
        per_server("mcpgw_upstream_sessions_opened_total", "alpha"): 2,
        per_server("mcpgw_upstream_sessions_opened_total", "beta"): 1,
        per_server("mcpgw_upstream_sessions_reinitialized_total", "alpha"): 1,
        ("mcpgw_session_refusals_total", (("mcp_refusal", "tampered"),)): 1,
        ("mcpgw_session_refusals_total", (("mcp_refusal", "ended"),)): 1,
    }, moved

    lines = access_lines(gateway.workdir / "envoy-access.log", [
        r"mcp_method=tools/call mcp_server=alpha mcp_tool=echo mcp_error=- request_id=obs-alpha-1",
        r"mcp_method=tools/call mcp_server=beta mcp_tool=echo mcp_error=- request_id=obs-beta-1",
        r"mcp_method=tools/call mcp_server=- mcp_tool=- mcp_error=-32602 request_id=obs-unknown-1",
        r"mcp_method=tools/list mcp_server=- mcp_tool=- mcp_error=-32600 request_id=obs-tampered-1",
    ])
    assert any("mcpgw_answered" in line and "mcp_method=initialize" in line for line in lines)


def test_plugin_gauges_and_histogram(gateway):
    with Rpc(gateway.url) as c:
        c.initialize()
        # The plugin times one stream in 16 per VM: 16 more on this connection (one VM) include
        # a timed one.
        for _ in range(16):
            resp, msg = c.request("ping", {})
            assert resp.status_code == 200 and "result" in msg, msg
    # Histograms reach the admin output with Envoy's stats flush (5 s).
    deadline = time.monotonic() + 12
    while True:
        samples = envoy_scrape(gateway)
        count = samples.get(("mcpgw_plugin_time_us_count", ()), 0)
        if count > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert count > 0, "no plugin-time histogram"
    assert samples[("mcpgw_plugin_time_us_sum", ())] > 0
    assert ("mcpgw_config_age_seconds", ()) in samples
    assert ("mcpgw_config_version", ()) in samples


def test_telemetry_off(tmp_path, upstreams, gateway):
    """`telemetry: false`: no plugin metric is defined and no filter state is written (the access log
    still has the routing headers)."""
    config = copy.deepcopy(gateway.plugin_config)
    config["telemetry"] = False
    gw = Gateway(tmp_path, upstreams=list(upstreams.values()), plugin_config=config, name="quiet")
    gw.start()
    try:
        with Rpc(gw.url) as c:
            c.initialize()
            resp, msg = c.call_tool("alpha_echo", {"text": "quiet"}, headers={"x-request-id": "obs-quiet-1"})
            assert tool_text(msg) == "alpha: quiet", describe(resp)
        time.sleep(0.5)
        assert not [k for k in envoy_scrape(gw) if k[0].startswith("mcpgw_")]
        lines = access_lines(tmp_path / "quiet-access.log", [r"request_id=obs-quiet-1"])
        line = next(line for line in lines if "obs-quiet-1" in line)
        assert "mcp_method=- mcp_server=alpha mcp_tool=echo mcp_error=-" in line, line
    finally:
        gw.stop()


# ------------------------------------------------------------------------------------------------
# The sidecar's /metrics, and the generated bootstrap (stats tags, access log) in standalone mode.

def sidecar_scrape(sc: Sidecar) -> dict[Sample, float]:
    r = httpx.get(f"{sc.base}/metrics", timeout=5)  # no token: /metrics holds no secret
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert sc.token() not in r.text
    return scrape(r.text, parse_openmetrics)


def wait_for(what: str, check, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: never true")


def test_sidecar_metrics_and_generated_bootstrap(tmp_path):
    alpha = harness.DemoServer("alpha", tmp_path, credential="alpha-secret")
    alpha.start()
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), tmp_path / "xds", **envoy)
    cfg["servers"] = [{"name": "alpha", "url": alpha.url, "credential": {"env": "ALPHA_TOKEN"}}]
    sc = Sidecar(tmp_path, cfg, env={"ALPHA_TOKEN": "alpha-secret"})
    gw = SidecarGateway(tmp_path, sc)
    try:
        sc.start()
        sc.wait_state("alpha", "serving")
        gw.start()
        up = ("mcpgw_sidecar_server_up", (("server", "alpha"),))
        tools = ("mcpgw_sidecar_server_tools", (("server", "alpha"),))
        m = sidecar_scrape(sc)
        assert m[up] == 1 and m[tools] == 3, m
        assert m[("mcpgw_sidecar_catalog_publishes_total", ())] >= 1
        assert m[("mcpgw_sidecar_discovery_duration_seconds_count", (("server", "alpha"),))] >= 1
        # The plugin's poller waits on the sidecar; the plugin runs the sidecar's catalog version.
        wait_for("a plugin poller", lambda: sidecar_scrape(sc)[("mcpgw_sidecar_plugin_pollers", ())] >= 1)
        version = sidecar_scrape(sc)[("mcpgw_sidecar_catalog_version", ())]
        wait_for("the plugin on the sidecar's version",
                 lambda: envoy_scrape(gw).get(("mcpgw_config_version", ())) == version)

        with Rpc(gw.url) as c:
            c.initialize()
            resp, msg = c.call_tool("alpha_echo", {"text": "x"}, headers={"x-request-id": "obs-standalone-1"})
            assert tool_text(msg) == "alpha: x", describe(resp)
        # The generated bootstrap's stats tags: labels, not names.
        assert envoy_scrape(gw)[per_server("mcpgw_tool_calls_total", "alpha", mcp_tool="echo")] == 1
        # Its access log (Envoy's stdout) carries the MCP fields.
        access_lines(gw.envoy.log_path, [
            r"mcp_method=tools/call mcp_server=alpha mcp_tool=echo mcp_error=- request_id=obs-standalone-1"])

        # A client's notification stream: counted while open, let through by the plugin (GET, routed).
        streams = ("mcpgw_sidecar_notification_streams", ())
        before = envoy_scrape(gw)
        with ListeningClient(gw.url):
            wait_for("an open stream", lambda: sidecar_scrape(sc)[streams] == 1)
        wait_for("the stream closed", lambda: sidecar_scrape(sc)[streams] == 0)
        assert delta(before, envoy_scrape(gw)).get(req("GET", "routed")) == 1

        # A configuration edit applied, a broken one rejected.
        before = sidecar_scrape(sc)
        sc.edit(lambda c: c["notifications"].update({"keepalive_ms": 1500}))
        wait_for("a reload", lambda: sidecar_scrape(sc)[("mcpgw_sidecar_config_reloads_total", ())]
                 == before[("mcpgw_sidecar_config_reloads_total", ())] + 1)
        write_atomic(sc.config_path, sc.config_path.read_text() + "\nnot: [valid\n")
        wait_for("a rejection", lambda: sidecar_scrape(sc)[("mcpgw_sidecar_config_rejections_total", ())]
                 == before[("mcpgw_sidecar_config_rejections_total", ())] + 1)
        sc.write()

        # The server goes down: up 0, no tools, failures counted.
        alpha.stop()
        wait_for("alpha down", lambda: sidecar_scrape(sc)[up] == 0, timeout=30)
        m = sidecar_scrape(sc)
        assert m[tools] == 0
        assert m[("mcpgw_sidecar_discovery_failures_total", (("server", "alpha"),))] >= 1
    finally:
        gw.stop()
        sc.stop()
        alpha.stop()
