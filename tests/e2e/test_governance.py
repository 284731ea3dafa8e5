"""Tool governance with Envoy's own authorization (docs/governance.md).

The plugin sets the policy headers (`x-mcp-method`, `x-mcp-servername`, `x-mcp-toolname`,
`x-mcp-annotation-hints`, ...) on every routed call and strips clients' copies; Envoy's `rbac` filter,
placed AFTER the plugin, allows or denies per tool; the plugin turns rbac's text 403 into a JSON-RPC
error (-32001) carrying the request's id. Real Envoy, real rbac filter, the shared demo upstreams.

Policies of this gateway (DENY rules; everything else is allowed):
  - `no-alpha-add`: tool `add` on server `alpha` (by name);
  - `no-destructive-beta`: any tool on server `beta` whose annotations do not say `destructiveHint: false`
    (by the annotation hints: beta's `echo` is annotated non-destructive in the document, `add` is not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

import harness
from conftest import make_document
from harness import Gateway
from rpc import Rpc, describe, message_of, rpc_error, tool_text

RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "DENY",
            "policies": {
                "no-alpha-add": {
                    "permissions": [{"and_rules": {"rules": [
                        {"header": {"name": "x-mcp-servername", "string_match": {"exact": "alpha"}}},
                        {"header": {"name": "x-mcp-toolname", "string_match": {"exact": "add"}}},
                    ]}}],
                    "principals": [{"any": True}],
                },
                "no-destructive-beta": {
                    "permissions": [{"and_rules": {"rules": [
                        {"header": {"name": "x-mcp-servername", "string_match": {"exact": "beta"}}},
                        {"header": {"name": "x-mcp-method", "string_match": {"exact": "tools/call"}}},
                        {"header": {"name": "x-mcp-annotation-hints",
                                    "string_match": {"contains": "destructive=true"}}},
                    ]}}],
                    "principals": [{"any": True}],
                },
            },
        },
    },
}

ANNOTATIONS = {
    ("alpha", "whoami"): {"readOnlyHint": True, "destructiveHint": False, "openWorldHint": False},
    ("beta", "echo"): {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True},
    ("beta", "whoami"): {"readOnlyHint": True, "destructiveHint": False},
}


def annotated_document(upstreams, catalogs) -> dict[str, Any]:
    doc = make_document(upstreams, catalogs)
    doc["authorization_after_plugin"] = True  # what the sidecar sets when it puts rbac after the plugin
    for server in doc["servers"]:
        for tool in server["tools"]:
            hints = ANNOTATIONS.get((server["name"], tool["name"]))
            if hints:
                tool["annotations"] = hints
    return doc


@pytest.fixture(scope="module")
def governed(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    gw = Gateway(workdir, upstreams=list(upstreams.values()),
                 plugin_config={"document": annotated_document(upstreams, catalogs)},
                 name="envoy-governed", validate=True)
    hcm = gw.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.wasm"
    filters.insert(1, RBAC)
    audit_log(gw)
    harness.started(gw)
    yield gw
    gw.stop()


@pytest.fixture
def client(governed: Gateway) -> Iterator[Rpc]:
    with Rpc(governed.url) as c:
        c.initialize()
        yield c
        c.delete()


def audit_log(gw: Gateway) -> None:
    """The access log of `gw` writes only the plugin's audit line (filter state wasm.mcpgw_audit)."""
    hcm = gw.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["log_format"] = {
        "text_format_source": {"inline_string": "%FILTER_STATE(wasm.mcpgw_audit:PLAIN)%\n"}}


def audit_lines(gw: Gateway, request_id: Any) -> list[dict[str, Any]]:
    """The audit lines of the request `request_id`, once Envoy has flushed them."""
    path = gw.workdir / f"{gw.envoy.name}-access.log"

    def lines() -> list[dict[str, Any]]:
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["id"] == request_id:
                    out.append(entry)
        return out

    return harness.wait_until(lines, timeout=15, what=f"audit line of request {request_id!r}")


def rbac_denied(gw: Gateway) -> int:
    return gw.envoy.stats("http.mcp.rbac.").get("http.mcp.rbac.denied", 0)


def test_rbac_after_the_plugin_denies_one_tool_and_allows_another(governed: Gateway, client: Rpc):
    resp, msg = client.call_tool("alpha_echo", {"text": "hi"})
    assert resp.status_code == 200, describe(resp)
    assert tool_text(msg) == "alpha: hi"

    before = rbac_denied(governed)
    resp = client.post({"jsonrpc": "2.0", "id": "deny-1", "method": "tools/call",
                        "params": {"name": "alpha_add", "arguments": {"a": 1, "b": 2}}})
    assert resp.status_code == 403, describe(resp)
    assert resp.headers["content-type"].startswith("application/json"), describe(resp)
    err = rpc_error(resp)
    assert err["id"] == "deny-1"
    assert err["error"]["code"] == -32001
    assert "tools/call add on server alpha" in err["error"]["message"], err
    assert rbac_denied(governed) == before + 1, "rbac itself refused it"

    # The session is intact: the next allowed call goes through.
    resp, msg = client.call_tool("alpha_echo", {"text": "again"})
    assert resp.status_code == 200 and tool_text(msg) == "alpha: again", describe(resp)


def test_the_denied_tool_never_reaches_its_upstream(governed: Gateway, client: Rpc, upstreams):
    upstreams["alpha"].clear_log()
    resp, _ = client.call_tool("alpha_add", {"a": 1, "b": 2})
    assert resp.status_code == 403, describe(resp)
    calls = [r for r in upstreams["alpha"].requests_log() if r.get("rpc_method") == "tools/call"]
    assert calls == [], calls


def test_client_copies_of_the_policy_headers_cannot_dodge_the_policy(client: Rpc):
    spoof = {"x-mcp-toolname": "echo", "x-mcp-servername": "gamma", "x-mcp-method": "ping",
             "x-mcp-annotation-hints": "readOnly=true,destructive=false,idempotent=true,openWorld=false",
             "x-mcp-promptname": "p", "x-mcp-resourceuri": "file:///etc/passwd"}
    resp, _ = client.call_tool("alpha_add", {"a": 1, "b": 2}, headers=spoof)
    assert resp.status_code == 403, describe(resp)
    resp, _ = client.call_tool("beta_add", {"a": 1, "b": 2}, headers=spoof)
    assert resp.status_code == 403, describe(resp)


def test_annotation_hints_decide_per_tool(client: Rpc):
    # beta: echo is annotated non-destructive (allowed), add has no annotations: MCP's default
    # destructive=true (denied).
    resp, msg = client.call_tool("beta_echo", {"text": "ok"})
    assert resp.status_code == 200 and tool_text(msg) == "beta: ok", describe(resp)
    resp = client.post({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                        "params": {"name": "beta_add", "arguments": {"a": 1, "b": 2}}})
    assert resp.status_code == 403, describe(resp)
    err = rpc_error(resp)
    assert err["id"] == 77 and err["error"]["code"] == -32001
    assert "tools/call add on server beta" in err["error"]["message"]


@pytest.mark.parametrize("server,hints", [
    ("alpha", "readOnly=true,destructive=false,idempotent=false,openWorld=false"),
    ("beta", "readOnly=true,destructive=false,idempotent=false,openWorld=true"),
])
def test_the_upstream_sees_the_gateways_policy_headers(client: Rpc, server: str, hints: str):
    spoof = {"x-mcp-toolname": "nope", "x-mcp-annotation-hints": "forged", "x-mcp-promptname": "p"}
    resp, msg = client.call_tool(f"{server}_whoami", headers=spoof)
    assert resp.status_code == 200, describe(resp)
    h = json.loads(tool_text(msg))["headers"]
    assert h["x-mcp-method"] == "tools/call"
    assert h["x-mcp-servername"] == server
    assert h["x-mcp-toolname"] == "whoami"
    assert h["x-mcp-annotation-hints"] == hints
    assert "x-mcp-promptname" not in h and "x-mcp-resourceuri" not in h


def test_lists_are_answered_by_the_plugin_before_any_policy(client: Rpc):
    # tools/list never reaches rbac (the plugin answers it): a denied tool is still listed, with its
    # annotations (hiding it too is what a capability grant or a virtual server does).
    tools = []
    cursor = None
    while True:
        resp, msg = client.request("tools/list", {"cursor": cursor} if cursor else {})
        assert resp.status_code == 200, describe(resp)
        tools += msg["result"]["tools"]
        cursor = msg["result"].get("nextCursor")
        if not cursor:
            break
    by_name = {t["name"]: t for t in tools}
    assert "alpha_add" in by_name and "beta_add" in by_name
    assert by_name["beta_echo"]["annotations"]["destructiveHint"] is False


# ------------------------------------------------------------------------------------------------
# Signed capability grants: x-mcp-authorized (ES256 JWT, `allowed-capabilities` claim, seed-compatible).

import time  # noqa: E402

import jwt  # noqa: E402  (PyJWT)
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

SIGNER = ec.generate_private_key(ec.SECP256R1())
OTHER_SIGNER = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = SIGNER.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def grant(capabilities: Any, *, key=SIGNER, exp: float | None = None, alg: str = "ES256",
          raw_claim: Any = None) -> str:
    """An x-mcp-authorized token as the seed system's AuthPolicy (Authorino wristband) makes it: the
    claim is a JSON *string*."""
    claims: dict[str, Any] = {"allowed-capabilities": raw_claim if raw_claim is not None
                              else json.dumps(capabilities)}
    claims["exp"] = int(time.time() + 300) if exp is None else int(exp)
    if alg == "HS256":
        return jwt.encode(claims, "shared-secret-of-at-least-32-bytes!!", algorithm="HS256")
    return jwt.encode(claims, key, algorithm=alg)


ALPHA_ECHO_BETA_ADD = {"tools": {"alpha": ["echo", "whoami"], "beta": ["add"]}}


VIRTUAL_SERVERS = [
    {"name": "team-a/readers", "description": "read-only tools",
     "tools": ["alpha_echo", "alpha_whoami", "beta_echo"]},
    {"name": "team-b/adders", "tools": ["beta_add"], "prompts": []},
]


def granted_gateway(workdir: Path, upstreams, catalogs, missing: str, name: str) -> Gateway:
    doc = make_document(upstreams, catalogs)
    doc["grants"] = {"public_key": PUBLIC_PEM, "missing": missing}
    doc["virtual_servers"] = VIRTUAL_SERVERS
    gw = Gateway(workdir, upstreams=list(upstreams.values()), plugin_config={"document": doc},
                 name=name, validate=True)
    harness.started(gw)
    return gw


@pytest.fixture(scope="module")
def strict(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """Grants with `missing: nothing`."""
    gw = granted_gateway(workdir, upstreams, catalogs, "nothing", "envoy-grants-strict")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def lenient(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """Grants with `missing: all`."""
    gw = granted_gateway(workdir, upstreams, catalogs, "all", "envoy-grants-lenient")
    yield gw
    gw.stop()


def session_on(gw: Gateway) -> Rpc:
    c = Rpc(gw.url)
    c.initialize()
    return c


def listed_tools(client: Rpc, headers: dict[str, str] | None = None) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        resp, msg = client.request("tools/list", {"cursor": cursor} if cursor else {}, headers=headers)
        assert resp.status_code == 200, describe(resp)
        names += [t["name"] for t in msg["result"]["tools"]]
        cursor = msg["result"].get("nextCursor")
        if not cursor:
            return names


def test_a_grant_narrows_the_list_and_refuses_calls_outside_it(strict: Gateway):
    token = {"x-mcp-authorized": grant(ALPHA_ECHO_BETA_ADD)}
    with session_on(strict) as c:
        assert sorted(listed_tools(c, token)) == ["alpha_echo", "alpha_whoami", "beta_add"]
        resp, msg = c.call_tool("alpha_echo", {"text": "in"}, headers=token)
        assert resp.status_code == 200 and tool_text(msg) == "alpha: in", describe(resp)
        resp, msg = c.call_tool("beta_add", {"a": 2, "b": 3}, headers=token)
        assert resp.status_code == 200 and tool_text(msg) == "5", describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": "g-1", "method": "tools/call",
                       "params": {"name": "alpha_add", "arguments": {"a": 1, "b": 1}}}, headers=token)
        assert resp.status_code == 403, describe(resp)
        err = rpc_error(resp)
        assert err["id"] == "g-1" and err["error"]["code"] == -32001
        assert "tool add on server alpha" in err["error"]["message"], err


def granted_gateway_of(install: str, request) -> Gateway:
    return request.getfixturevalue("strict" if install == "envoy_filter" else "strict_wasmplugin")


@pytest.fixture(scope="module")
def strict_wasmplugin(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """The strict grants gateway installed as a stock Istio WasmPlugin: 2026 calls routed on
    their headers."""
    doc = make_document(upstreams, catalogs)
    doc["grants"] = {"public_key": PUBLIC_PEM, "missing": "nothing"}
    doc["virtual_servers"] = VIRTUAL_SERVERS
    gw = Gateway(workdir, upstreams=list(upstreams.values()), plugin_config={"document": doc},
                 name="envoy-grants-wasmplugin", validate=True, install="wasm_plugin")
    harness.started(gw)
    yield gw
    gw.stop()


def post_2026(url: str, method: str, params: dict[str, Any], *, name: str | None = None,
              headers: dict[str, str] | None = None, id: Any = 1):
    """An MCP 2026-07-28 request: no session, routing headers, the revision in `_meta`."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "gov2026", "version": "1"}}
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
         "mcp-protocol-version": "2026-07-28", "mcp-method": method, **(headers or {})}
    if name is not None:
        h["mcp-name"] = name
    body = {"jsonrpc": "2.0", "id": id, "method": method, "params": {**params, "_meta": meta}}
    return httpx.post(url, json=body, headers=h, timeout=10.0)


@pytest.mark.parametrize("install", ["envoy_filter", "wasm_plugin"])
def test_stateless_2026_requests_are_held_to_the_grant(install: str, request):
    """A 2026-07-28 client (no session) sees and calls only what its grant allows, whether the call
    is routed on its body or, as a stock WasmPlugin must, on its headers; a narrowed list is
    marked private to that caller."""
    gw = granted_gateway_of(install, request)
    token = {"x-mcp-authorized": grant(ALPHA_ECHO_BETA_ADD)}
    resp = post_2026(gw.url, "tools/list", {}, headers=token)
    assert resp.status_code == 200, describe(resp)
    result = message_of(resp)["result"]
    assert sorted(t["name"] for t in result["tools"]) == ["alpha_echo", "alpha_whoami", "beta_add"]
    assert result["cacheScope"] == "private", result
    resp = post_2026(gw.url, "tools/call", {"name": "alpha_echo", "arguments": {"text": "in"}},
                     name="alpha_echo", headers=token)
    assert resp.status_code == 200 and tool_text(message_of(resp)) == "alpha: in", describe(resp)
    resp = post_2026(gw.url, "tools/call", {"name": "alpha_add", "arguments": {"a": 1, "b": 1}},
                     name="alpha_add", headers=token, id="g26")
    assert resp.status_code == 403, describe(resp)
    err = rpc_error(resp)
    assert err["error"]["code"] == -32001 and "tool add on server alpha" in err["error"]["message"], err
    # No grant, `missing: nothing`: an empty list, and the call refused.
    resp = post_2026(gw.url, "tools/list", {})
    assert resp.status_code == 200 and message_of(resp)["result"]["tools"] == [], describe(resp)
    resp = post_2026(gw.url, "tools/call", {"name": "alpha_echo", "arguments": {"text": "x"}}, name="alpha_echo")
    assert resp.status_code == 403, describe(resp)


def test_the_grant_header_never_reaches_an_upstream(strict: Gateway):
    token = {"x-mcp-authorized": grant(ALPHA_ECHO_BETA_ADD)}
    with session_on(strict) as c:
        resp, msg = c.call_tool("alpha_whoami", headers=token)
        assert resp.status_code == 200, describe(resp)
        seen = json.loads(tool_text(msg))["headers"]
        assert "x-mcp-authorized" not in seen, seen
        assert token["x-mcp-authorized"] not in json.dumps(seen)


def test_missing_header_means_nothing_when_so_configured(strict: Gateway):
    with session_on(strict) as c:
        assert listed_tools(c) == []
        resp, _ = c.call_tool("alpha_echo", {"text": "x"})
        assert resp.status_code == 403, describe(resp)
        assert rpc_error(resp)["error"]["code"] == -32001


def test_missing_header_means_all_when_so_configured(lenient: Gateway, expected_tools):
    with session_on(lenient) as c:
        assert sorted(listed_tools(c)) == sorted(expected_tools)
        # The header still narrows; a kind the claim does not name follows `missing` (all here).
        token = {"x-mcp-authorized": grant({"prompts": {}})}
        assert sorted(listed_tools(c, token)) == sorted(expected_tools)
        token = {"x-mcp-authorized": grant({"tools": {"beta": ["echo"]}})}
        assert listed_tools(c, token) == ["beta_echo"]


@pytest.mark.parametrize("case,status,code,check", [
    ("bad-signature", 401, -32001, "signature"),
    ("expired", 401, -32001, "expired"),
    ("claim-not-json", 400, -32600, "allowed-capabilities"),
    ("claim-wrong-shape", 400, -32600, "allowed-capabilities"),
    ("claim-missing", 400, -32600, "allowed-capabilities"),
    ("hs256", 400, -32600, "ES256"),
    ("garbage", 400, -32600, "malformed"),
])
def test_a_bad_grant_is_a_specific_error_not_an_empty_list(strict: Gateway, case, status, code, check):
    token = {
        "bad-signature": lambda: grant(ALPHA_ECHO_BETA_ADD, key=OTHER_SIGNER),
        "expired": lambda: grant(ALPHA_ECHO_BETA_ADD, exp=time.time() - 60),
        "claim-not-json": lambda: grant(None, raw_claim="{tools:"),
        "claim-wrong-shape": lambda: grant(None, raw_claim=json.dumps({"tools": ["echo"]})),
        "claim-missing": lambda: jwt.encode({"exp": int(time.time()) + 60}, SIGNER, algorithm="ES256"),
        "hs256": lambda: grant(ALPHA_ECHO_BETA_ADD, alg="HS256"),
        "garbage": lambda: "not-a-jwt",
    }[case]()
    with session_on(strict) as c:
        for method, params in [("tools/list", {}), ("tools/call", {"name": "alpha_echo", "arguments": {"text": "x"}})]:
            resp = c.post({"jsonrpc": "2.0", "id": 41, "method": method, "params": params},
                          headers={"x-mcp-authorized": token})
            assert resp.status_code == status, describe(resp)
            err = rpc_error(resp)
            assert err["id"] == 41 and err["error"]["code"] == code, err
            assert check in err["error"]["message"], err


def test_a_repeated_grant_header_is_refused(strict: Gateway):
    with session_on(strict) as c:
        headers = list(c.headers().items()) + [("x-mcp-authorized", grant(ALPHA_ECHO_BETA_ADD))] * 2
        resp = c.http.post(c.url, content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                           headers=headers)
        assert resp.status_code == 400, describe(resp)
        assert "x-mcp-authorized" in rpc_error(resp)["error"]["message"]


# ------------------------------------------------------------------------------------------------
# Virtual servers: X-Mcp-Virtualserver: <ns>/<name>, or the path <mcp_path>/<ns>/<name>.

VS = "x-mcp-virtualserver"


def test_a_virtual_server_by_header_lists_and_admits_only_its_tools(lenient: Gateway, expected_tools):
    with session_on(lenient) as c:
        h = {VS: "team-a/readers"}
        assert sorted(listed_tools(c, h)) == ["alpha_echo", "alpha_whoami", "beta_echo"]
        assert sorted(listed_tools(c)) == sorted(expected_tools), "no header: the whole catalog"
        resp, msg = c.call_tool("beta_echo", {"text": "vs"}, headers=h)
        assert resp.status_code == 200 and tool_text(msg) == "beta: vs", describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "beta_add", "arguments": {"a": 1, "b": 2}}}, headers=h)
        assert resp.status_code == 200, describe(resp)
        err = rpc_error(resp)
        assert err["id"] == 9 and err["error"]["code"] == -32602
        assert "not in virtual server team-a/readers" in err["error"]["message"], err


def test_a_virtual_server_by_path(lenient: Gateway):
    with Rpc(f"{lenient.url}/team-b/adders") as c:
        c.initialize()
        assert listed_tools(c) == ["beta_add"]
        resp, msg = c.call_tool("beta_add", {"a": 20, "b": 22})
        assert resp.status_code == 200 and tool_text(msg) == "42", describe(resp)
        resp, _ = c.call_tool("alpha_echo", {"text": "x"})
        assert rpc_error(resp)["error"]["code"] == -32602
        # prompts: [] -> no prompt at all on this virtual server.
        resp, msg = c.request("prompts/list")
        assert resp.status_code == 200 and msg["result"]["prompts"] == [], describe(resp)
        # The same name by header too is fine; another one is a conflict.
        resp, _ = c.request("tools/list", headers={VS: "team-b/adders"})
        assert resp.status_code == 200, describe(resp)
        resp, _ = c.request("tools/list", headers={VS: "team-a/readers"})
        assert resp.status_code == 400 and rpc_error(resp)["error"]["code"] == -32600, describe(resp)


@pytest.mark.parametrize("how", ["header", "path"])
def test_an_unknown_virtual_server_is_an_error_not_the_full_catalog(lenient: Gateway, how: str):
    url = lenient.url + ("/nope/missing" if how == "path" else "")
    headers = {VS: "nope/missing"} if how == "header" else None
    with Rpc(url) as c:
        resp, msg = c.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                             "clientInfo": {"name": "t", "version": "1"}},
                              headers=headers, session=False)
        assert resp.status_code == 400, describe(resp)
        assert msg["error"]["code"] == -32600 and "unknown virtual server" in msg["error"]["message"]


def test_the_virtual_server_header_never_reaches_an_upstream(lenient: Gateway):
    with session_on(lenient) as c:
        resp, msg = c.call_tool("alpha_whoami", headers={VS: "team-a/readers"})
        assert resp.status_code == 200, describe(resp)
        assert VS not in json.loads(tool_text(msg))["headers"]


def test_a_grant_and_a_virtual_server_intersect(lenient: Gateway):
    with session_on(lenient) as c:
        h = {VS: "team-a/readers", "x-mcp-authorized": grant({"tools": {"alpha": ["echo", "add"]}})}
        assert listed_tools(c, h) == ["alpha_echo"]
        resp, _ = c.call_tool("alpha_add", {"a": 1, "b": 1}, headers=h)
        assert rpc_error(resp)["error"]["code"] == -32602, "outside the virtual server first"
        resp, _ = c.call_tool("beta_echo", {"text": "x"}, headers=h)
        assert resp.status_code == 403 and rpc_error(resp)["error"]["code"] == -32001


# ------------------------------------------------------------------------------------------------
# Verified identity: Envoy's jwt_authn (before the plugin) verifies the bearer token; the plugin reads the
# verified claims from its dynamic metadata, answers 401 + WWW-Authenticate without them, and serves the
# RFC 9728 protected-resource metadata.

import base64  # noqa: E402

ISSUER = "https://idp.test"
IDP_KEY = ec.generate_private_key(ec.SECP256R1())


def b64url_int(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


def idp_jwks() -> str:
    nums = IDP_KEY.public_key().public_numbers()
    return json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1", "use": "sig",
                                 "x": b64url_int(nums.x), "y": b64url_int(nums.y)}]})


def access_token(sub: str = "alice", *, key=IDP_KEY, exp: float | None = None, aud: str = "mcp") -> str:
    claims = {"iss": ISSUER, "sub": sub, "aud": aud,
              "exp": int(time.time() + 300 if exp is None else exp)}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


JWT_AUTHN = {
    "name": "envoy.filters.http.jwt_authn",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"idp": {
            "issuer": ISSUER,
            "audiences": ["mcp"],
            "local_jwks": {"inline_string": None},  # filled in by the fixture
            "payload_in_metadata": "jwt_payload",
            "forward": False,
        }},
        # Verify whatever is there, decide nothing: the plugin decides (and answers in JSON-RPC).
        "rules": [{"match": {"prefix": "/"}, "requires": {"allow_missing_or_failed": {}}}],
    },
}


@pytest.fixture(scope="module")
def authn(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    doc = make_document(upstreams, catalogs)
    doc["oauth"] = {"resource": "https://mcp.example.test/mcp", "authorization_servers": [ISSUER],
                    "scopes_supported": ["mcp:tools"]}
    gw = Gateway(workdir, upstreams=list(upstreams.values()), plugin_config={"document": doc},
                 name="envoy-authn", validate=True)
    filt = json.loads(json.dumps(JWT_AUTHN))
    filt["typed_config"]["providers"]["idp"]["local_jwks"]["inline_string"] = idp_jwks()
    hcm = gw.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, filt)
    audit_log(gw)
    harness.started(gw)
    yield gw
    gw.stop()


METADATA_URL = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"


@pytest.mark.parametrize("case", ["none", "other-key", "expired", "wrong-audience"])
def test_no_verified_token_gets_401_with_the_metadata_url(authn: Gateway, case: str):
    token = {"none": None, "other-key": access_token(key=SIGNER), "expired": access_token(exp=time.time() - 600),
             "wrong-audience": access_token(aud="other")}[case]
    headers = {"authorization": f"Bearer {token}"} if token else None
    with Rpc(authn.url) as c:
        resp = c.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "t", "version": "1"}}}, headers=headers, session=False)
        assert resp.status_code == 401, describe(resp)
        assert resp.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA_URL}"'
        err = rpc_error(resp)
        assert err["id"] == 1 and err["error"]["code"] == -32001


def test_a_verified_token_is_served_and_never_forwarded(authn: Gateway):
    bearer = {"authorization": f"Bearer {access_token('alice')}"}
    with Rpc(authn.url) as c:
        resp, msg = c.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                             "clientInfo": {"name": "t", "version": "1"}},
                              headers=bearer, session=False)
        assert resp.status_code == 200, describe(resp)
        c.session = resp.headers["mcp-session-id"]
        resp, msg = c.call_tool("alpha_whoami", headers=bearer)
        assert resp.status_code == 200, describe(resp)
        seen = json.loads(tool_text(msg))["headers"]
        assert seen["authorization"] == "Bearer alpha-secret", "the server's own credential, not the client's"
        # Every request needs the token, not only the first.
        resp, _ = c.call_tool("alpha_echo", {"text": "x"})
        assert resp.status_code == 401, describe(resp)


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource",
                                  "/.well-known/oauth-protected-resource/mcp"])
def test_protected_resource_metadata_is_served(authn: Gateway, path: str):
    status, body = harness.http_get(f"{authn.base_url}{path}")
    assert status == 200, body
    doc = json.loads(body)
    assert doc == {"resource": "https://mcp.example.test/mcp", "authorization_servers": [ISSUER],
                   "bearer_methods_supported": ["header"], "scopes_supported": ["mcp:tools"]}


# ------------------------------------------------------------------------------------------------
# Audit: one structured line per routed call, through Envoy's access log (%FILTER_STATE(wasm.mcpgw_audit)%).

def test_audit_lines_record_allowed_and_denied_calls(governed: Gateway, client: Rpc):
    resp, _ = client.request("tools/call", {"name": "alpha_echo", "arguments": {"text": "a"}}, id="audit-ok")
    assert resp.status_code == 200, describe(resp)
    resp, _ = client.request("tools/call", {"name": "alpha_add", "arguments": {"a": 1, "b": 2}}, id="audit-no")
    assert resp.status_code == 403, describe(resp)
    resp, _ = client.request("tools/call", {"name": "alpha_nope", "arguments": {}}, id="audit-unknown")
    [ok] = audit_lines(governed, "audit-ok")
    assert ok == {"sub": None, "method": "tools/call", "server": "alpha", "name": "alpha_echo", "status": 200,
                  "code": None, "id": "audit-ok", "session": ok["session"]}
    assert len(ok["session"]) == 16 and client.session not in json.dumps(ok)
    [denied] = audit_lines(governed, "audit-no")
    assert (denied["server"], denied["name"], denied["status"], denied["code"]) == ("alpha", "alpha_add", 403, -32001)
    assert denied["session"] == ok["session"]
    [unknown] = audit_lines(governed, "audit-unknown")
    assert (unknown["server"], unknown["status"], unknown["code"]) == (None, 200, -32602)


def test_audit_lines_carry_the_verified_subject(authn: Gateway):
    bearer = {"authorization": f"Bearer {access_token('bob')}"}
    with Rpc(authn.url) as c:
        resp, _ = c.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                           "clientInfo": {"name": "t", "version": "1"}},
                            headers=bearer, session=False)
        c.session = resp.headers["mcp-session-id"]
        resp, _ = c.request("tools/call", {"name": "beta_echo", "arguments": {"text": "b"}}, id=4242,
                            headers=bearer)
        assert resp.status_code == 200, describe(resp)
    [line] = audit_lines(authn, 4242)
    assert line["sub"] == "bob" and line["server"] == "beta" and line["status"] == 200


# ------------------------------------------------------------------------------------------------
# Curated tools: hide, rename, describe, pin arguments (removed from the schema, injected into calls).

OVERRIDES = [
    {"server": "alpha", "tool": "add", "hidden": True},
    {"server": "beta", "tool": "echo", "name": "shout", "description": "Echo, curated."},
    {"server": "alpha", "tool": "echo", "pin": {"text": "pinned!"}},
]


@pytest.fixture(scope="module")
def curated(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    doc = make_document(upstreams, catalogs)
    doc["tool_overrides"] = OVERRIDES
    doc["validate_arguments"] = True
    gw = Gateway(workdir, upstreams=list(upstreams.values()), plugin_config={"document": doc},
                 name="envoy-curated", validate=True)
    harness.started(gw)
    yield gw
    gw.stop()


def all_tools(client: Rpc) -> dict[str, dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor = None
    while True:
        resp, msg = client.request("tools/list", {"cursor": cursor} if cursor else {})
        assert resp.status_code == 200, describe(resp)
        tools += msg["result"]["tools"]
        cursor = msg["result"].get("nextCursor")
        if not cursor:
            return {t["name"]: t for t in tools}


def test_curated_list(curated: Gateway, catalogs):
    with session_on(curated) as c:
        tools = all_tools(c)
        assert "alpha_add" not in tools, "hidden"
        assert "beta_echo" not in tools and tools["shout"]["description"] == "Echo, curated."
        schema = tools["alpha_echo"]["inputSchema"]
        assert "text" not in schema.get("properties", {}) and "text" not in schema.get("required", [])
        assert "alpha_whoami" in tools and "beta_add" in tools


def test_curated_calls(curated: Gateway, upstreams):
    with session_on(curated) as c:
        resp, _ = c.call_tool("alpha_add", {"a": 1, "b": 2})
        err = rpc_error(resp)["error"]
        assert err["code"] == -32602 and "Unknown tool" in err["message"], "hidden tools cannot be called"
        resp, msg = c.call_tool("shout", {"text": "hi"})
        assert resp.status_code == 200 and tool_text(msg) == "beta: hi", describe(resp)
        resp, _ = c.call_tool("beta_echo", {"text": "hi"})
        assert rpc_error(resp)["error"]["code"] == -32602, "the old name is gone"
        # The pinned argument wins over the client's, and is there when the client sends none.
        resp, msg = c.call_tool("alpha_echo", {"text": "evil"})
        assert resp.status_code == 200 and tool_text(msg) == "alpha: pinned!", describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "alpha_echo"}})
        assert resp.status_code == 200 and tool_text(rpc_error_free(resp)) == "alpha: pinned!", describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                       "params": {"name": "alpha_echo", "arguments": [1]}})
        assert rpc_error(resp)["error"]["code"] == -32602


def rpc_error_free(resp) -> dict[str, Any]:
    from rpc import message_of
    return message_of(resp)


@pytest.mark.parametrize("tool,arguments,message", [
    ("beta_add", {"a": "one", "b": 2}, "arguments.a: expected integer, got string"),
    ("beta_add", {"a": 1}, "arguments.b: is required"),
    ("beta_add", {"a": 1.5, "b": 2}, "arguments.a: expected integer, got number"),
    ("shout", {"text": 5}, "arguments.text: expected string, got number"),
])
def test_arguments_are_validated_against_the_advertised_schema(curated: Gateway, upstreams, tool, arguments,
                                                                message):
    upstreams["beta"].clear_log()
    with session_on(curated) as c:
        resp = c.post({"jsonrpc": "2.0", "id": "v", "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}})
        assert resp.status_code == 200, describe(resp)
        err = rpc_error(resp)
        assert err["id"] == "v" and err["error"]["code"] == -32602
        assert message in err["error"]["message"], err
        # Valid arguments pass (and pinned ones need none).
        resp, msg = c.call_tool("beta_add", {"a": 1, "b": 2})
        assert resp.status_code == 200 and tool_text(msg) == "3", describe(resp)
    assert not [r for r in upstreams["beta"].requests_log()
                if r.get("rpc_method") == "tools/call" and r.get("status") not in (200, 202)]


def test_a_batch_is_held_to_the_grant_and_the_virtual_server(lenient: Gateway):
    with Rpc(lenient.url) as c:
        c.initialize("2025-03-26")
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "alpha_echo", "arguments": {"text": "in"}}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
             "params": {"name": "alpha_add", "arguments": {"a": 1, "b": 2}}},
            {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
             "params": {"name": "beta_add", "arguments": {"a": 1, "b": 2}}},
        ]
        resp = c.post(batch, headers={"x-mcp-authorized": grant({"tools": {"alpha": ["echo", "add"]}})})
        assert resp.status_code == 200, describe(resp)
        a = {m["id"]: m for m in resp.json()}
        assert [t["name"] for t in a[1]["result"]["tools"]] == ["alpha_echo", "alpha_add"]
        assert tool_text(a[2]) == "alpha: in"
        assert tool_text(a[3]) == "3"
        assert a[4]["error"]["code"] == -32001, a[4]
        resp = c.post(batch, headers={VS: "team-a/readers"})
        a = {m["id"]: m for m in resp.json()}
        assert tool_text(a[2]) == "alpha: in"
        assert a[3]["error"]["code"] == -32602 and a[4]["error"]["code"] == -32602
        resp = c.post(batch, headers={"x-mcp-authorized": "garbage"})
        assert resp.status_code == 400 and rpc_error(resp)["error"]["code"] == -32600, describe(resp)
        c.delete()


# ------------------------------------------------------------------------------------------------
# Standalone mode end to end: the sidecar's settings carry the governance sections, its bootstrap
# generator puts rbac after the plugin (envoy.http_filters_after_plugin).

@pytest.fixture(scope="module")
def sidecar_stack(workdir: Path, upstreams):
    from sidecar_harness import Sidecar, SidecarGateway, base_config, build_sidecar, envoy_settings

    build_sidecar()
    envoy, _, _ = envoy_settings()
    cfg = base_config(harness.free_port(), workdir / "xds-gov", **envoy)
    cfg["envoy"]["http_filters_after_plugin"] = [RBAC]
    cfg["servers"] = [{"name": "alpha", "url": upstreams["alpha"].url, "credential": {"env": "ALPHA_TOKEN"}}]
    cfg["tool_overrides"] = [{"server": "alpha", "tool": "whoami", "hidden": True}]
    cfg["virtual_servers"] = [{"name": "ns/only-echo", "tools": ["alpha_echo"]}]
    sc = Sidecar(workdir, cfg, env={"ALPHA_TOKEN": "alpha-secret"})
    gw = SidecarGateway(workdir, sc, wasm=True, name="envoy-gov-sidecar")
    try:
        gw.bootstrap()
        gw.envoy.start(60)
        sc.start()
        sc.wait_state("alpha", "serving")
    except harness.HarnessError as e:
        gw.stop()
        sc.stop()
        pytest.fail(str(e), pytrace=False)
    yield sc, gw
    gw.stop()
    sc.stop()


def test_standalone_mode_governance_end_to_end(sidecar_stack):
    sc, gw = sidecar_stack
    filters = json.loads(gw.config_path.read_text())["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"][0]["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.wasm", "envoy.filters.http.rbac",
                                           "envoy.filters.http.router"]

    def listed() -> list[str] | None:
        with Rpc(gw.url) as c:
            try:
                c.initialize()
            except AssertionError:
                return None
            names = listed_tools(c)
            return names if "alpha_echo" in names else None

    names = harness.wait_until(listed, timeout=30, what="the plugin serving the sidecar's catalog")
    assert "alpha_whoami" not in names and "alpha_add" in names, names
    with Rpc(gw.url) as c:
        c.initialize()
        assert listed_tools(c, {VS: "ns/only-echo"}) == ["alpha_echo"]
        resp, msg = c.call_tool("alpha_echo", {"text": "sc"})
        assert resp.status_code == 200 and tool_text(msg) == "alpha: sc", describe(resp)
        resp = c.post({"jsonrpc": "2.0", "id": "sc-deny", "method": "tools/call",
                       "params": {"name": "alpha_add", "arguments": {"a": 1, "b": 2}}})
        assert resp.status_code == 403, describe(resp)
        err = rpc_error(resp)
        assert err["id"] == "sc-deny" and err["error"]["code"] == -32001


# ------------------------------------------------------------------------------------------------
# Policy headers on prompts/get and resources/read (a server with a prompt and a resource).

RBAC_PROMPTS = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"no-greeting": {
            "permissions": [{"and_rules": {"rules": [
                {"header": {"name": "x-mcp-method", "string_match": {"exact": "prompts/get"}}},
                {"header": {"name": "x-mcp-promptname", "string_match": {"exact": "greeting"}}},
            ]}}],
            "principals": [{"any": True}],
        }}},
    },
}


@pytest.fixture(scope="module")
def prompt_stack(workdir: Path):
    from sidecar_harness import DynamicServer

    dyn = DynamicServer("dyn", workdir)
    harness.start_all([dyn])
    entry = harness.server_entry(dyn, "dyn_", harness.discover_tools(dyn.url))
    entry["prompts"] = [{"name": "greeting", "arguments": [{"name": "who", "required": True}]}]
    entry["resources"] = [{"uri": "demo://info", "name": "info"}]
    entry["capabilities"] = {"prompts": {}, "resources": {}, "tools": {}}
    doc = harness.gateway_document([entry], keys=[harness.new_session_key()])
    gw = Gateway(workdir, upstreams=[dyn], plugin_config={"document": doc}, name="envoy-prompts", validate=True)
    hcm = gw.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(1, RBAC_PROMPTS)
    try:
        gw.start()
    except harness.HarnessError as e:
        dyn.stop()
        pytest.fail(str(e), pytrace=False)
    yield gw, dyn
    gw.stop()
    dyn.stop()


def test_policy_headers_on_prompts_and_resources(prompt_stack):
    gw, dyn = prompt_stack
    with session_on(gw) as c:
        resp = c.post({"jsonrpc": "2.0", "id": "pg", "method": "prompts/get",
                       "params": {"name": "dyn_greeting", "arguments": {"who": "x"}}},
                      headers={"x-mcp-promptname": "other"})
        assert resp.status_code == 403, describe(resp)
        err = rpc_error(resp)
        assert err["id"] == "pg" and err["error"]["code"] == -32001
        assert "prompts/get greeting on server dyn" in err["error"]["message"], err
        dyn.clear_log()
        resp, msg = c.request("resources/read", {"uri": "mcpgw://dyn/demo://info"},
                              headers={"x-mcp-resourceuri": "file:///etc/passwd"})
        assert resp.status_code == 200 and "result" in msg, describe(resp)
        [read] = [r for r in dyn.requests_log() if r.get("rpc_method") == "resources/read"]
        h = read["headers"]
        assert h["x-mcp-method"] == "resources/read" and h["x-mcp-servername"] == "dyn"
        assert h["x-mcp-resourceuri"] == "demo://info", "the upstream URI, never the client's copy"
        assert "x-mcp-toolname" not in h and "x-mcp-promptname" not in h



def test_calls_cannot_dodge_the_filter_inside_a_batch(governed: Gateway):
    """A batch's calls go upstream through the plugin's own calls, past rbac: with an authorization
    filter after the plugin they are refused (the rest of the batch is answered)."""
    with Rpc(governed.url) as c:
        c.initialize("2025-03-26")
        resp = c.post([{"jsonrpc": "2.0", "id": 1, "method": "ping"},
                       {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "alpha_add", "arguments": {"a": 1, "b": 2}}}])
        assert resp.status_code == 200, describe(resp)
        a = {m["id"]: m for m in resp.json()}
        assert a[1]["result"] == {}
        assert a[2]["error"]["code"] == -32600 and "must be sent alone" in a[2]["error"]["message"], a[2]
        resp, _ = c.call_tool("alpha_add", {"a": 1, "b": 2})
        assert resp.status_code == 403, "alone, rbac decides"
        c.delete()


# --- Tool discovery for large catalogs: discover_tools / select_tools (docs/governance.md) ---

@pytest.fixture(scope="module")
def discovering(workdir: Path, upstreams, catalogs) -> Iterator[Gateway]:
    """`limits.meta_tools_above: 2` (the demo catalog has more), with the virtual servers."""
    doc = make_document(upstreams, catalogs)
    doc["limits"]["meta_tools_above"] = 2
    doc["tool_categories"] = [{"name": "echoes", "description": "Echo tools", "tools": ["alpha_echo", "beta_echo"]}]
    doc["virtual_servers"] = VIRTUAL_SERVERS
    gw = Gateway(workdir, upstreams=list(upstreams.values()), plugin_config={"document": doc},
                 name="envoy-discovery", validate=True)
    harness.started(gw)
    yield gw
    gw.stop()


META = ["discover_tools", "select_tools"]


def structured(resp) -> dict[str, Any]:
    msg = message_of(resp)
    assert "result" in msg, msg
    return msg["result"]["structuredContent"]


def test_discovery_lists_meta_tools_then_scopes_one_session(discovering: Gateway, expected_tools, upstreams):
    with session_on(discovering) as c, session_on(discovering) as other:
        assert listed_tools(c) == META

        resp, _ = c.call_tool("discover_tools")
        servers = {s["name"]: s["tools"] for s in structured(resp)["servers"]}
        assert sum(servers.values()) == len(expected_tools) and set(servers) == {"alpha", "beta"}
        assert structured(resp)["categories"] == [{"name": "echoes", "description": "Echo tools", "tools": 2}]
        resp, _ = c.call_tool("discover_tools", {"category": "echoes"})
        assert [t["name"] for t in structured(resp)["tools"]] == ["alpha_echo", "beta_echo"]
        resp, _ = c.call_tool("discover_tools", {"server": "alpha"})
        tools = {t["name"]: t["description"] for t in structured(resp)["tools"]}
        assert set(tools) == {n for n in expected_tools if n.startswith("alpha_")}
        assert all("\n" not in d for d in tools.values())

        # All or nothing: one unknown name, and nothing is selected.
        resp, _ = c.call_tool("select_tools", {"tools": ["alpha_echo", "nope_tool"]})
        err = rpc_error(resp)["error"]
        assert err["code"] == -32602 and "nope_tool" in err["message"], err
        assert listed_tools(c) == META

        resp, _ = c.call_tool("select_tools", {"tools": ["alpha_echo", "beta_add"]})
        assert structured(resp)["selected"] == ["alpha_echo", "beta_add"]
        assert listed_tools(c) == META + ["alpha_echo", "beta_add"]
        resp, msg = c.call_tool("alpha_echo", {"text": "in scope"})
        assert resp.status_code == 200 and tool_text(msg) == "alpha: in scope", describe(resp)
        upstreams["alpha"].clear_log()
        resp, _ = c.call_tool("alpha_add", {"a": 1, "b": 2})
        err = rpc_error(resp)["error"]
        assert err["code"] == -32602 and "select_tools" in err["message"], err
        calls = [r for r in upstreams["alpha"].requests_log() if r.get("rpc_method") == "tools/call"]
        assert calls == [], "a call outside the selection never reaches its upstream"

        # The other session is untouched: the meta-tools, and every tool callable.
        assert listed_tools(other) == META
        resp, msg = other.call_tool("alpha_add", {"a": 1, "b": 2})
        assert resp.status_code == 200, describe(resp)


def test_a_selection_is_held_to_the_virtual_server(discovering: Gateway):
    vs = {"x-mcp-virtualserver": "team-a/readers"}
    with session_on(discovering) as c:
        resp, _ = c.call_tool("discover_tools", {"server": "beta"}, headers=vs)
        assert [t["name"] for t in structured(resp)["tools"]] == ["beta_echo"]
        resp, _ = c.call_tool("select_tools", {"tools": ["beta_echo", "beta_add"]}, headers=vs)
        err = rpc_error(resp)["error"]
        assert err["code"] == -32602 and "beta_add" in err["message"] and "beta_echo" not in err["message"]
