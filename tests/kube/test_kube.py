"""Kubernetes mode end to end: a real kube-apiserver (with the real Gateway API and Istio CRDs and
ours), the sidecar in Kubernetes mode under the least-privilege ClusterRole of
wasmplugin/overlays/kube (RBAC, static token), Envoy with the plugin, and a local TLS MCP server.

The seed guide's YAML (both versions, tests/kube/fixtures/guide-*.yaml) is applied verbatim. The
guide's upstream is https://api.githubcopilot.com/mcp/; here the only difference is the test's own
change to the guide's ServiceEntry: `resolution: STATIC` with one endpoint, 127.0.0.1 and the local
TLS server's port (what a ServiceEntry with endpoints does in Istio), so the same host name leads to
the local server (tests/servers/tls_server.py, certificate for api.githubcopilot.com and 127.0.0.1
from a test CA the sidecar and Envoy trust). In the cluster, Istio routes the HTTPRoute; here the
sidecar's xDS files (clusters and routes by the route's hostname) stand in for it, so a call only
reaches the server if the plugin sends it with the HTTPRoute's hostname as :authority.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

import harness
from harness import HarnessError, free_ports
from kube_harness import KubeApi
from rpc import Rpc, tool_text
from sidecar_harness import Sidecar, SidecarGateway, TlsServer, base_config, envoy_settings, make_ca

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MCP = "mcp.kagenti.com/v1alpha1"
GW_API = "gateway.networking.k8s.io/v1"
ISTIO = "networking.istio.io/v1beta1"
PAT = "ghp_first_test_token"
ROTATED = "ghp_rotated_test_token"


def guide_docs(name: str, pat: str = PAT) -> list[dict[str, Any]]:
    text = (FIXTURES / name).read_text().replace("$GITHUB_PAT", pat)
    return [d for d in yaml.safe_load_all(text) if d]


def gateway(name: str, ns: str, hostname: str) -> dict[str, Any]:
    return {"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": "istio", "listeners": [{
                "name": "mcp", "hostname": hostname, "port": 8080, "protocol": "HTTP",
                "allowedRoutes": {"namespaces": {"from": "All"}}}]}}


def extension(name: str, ns: str, gw: str) -> dict[str, Any]:
    return {"apiVersion": MCP, "kind": "MCPGatewayExtension", "metadata": {"name": name, "namespace": ns},
            "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw}}}


def ready(api: KubeApi, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    obj = api.get(MCP, kind, ns, name)
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return c
    return None


def wait_ready(api: KubeApi, kind: str, ns: str, name: str, status: str, reason: str,
               timeout: float = 60.0) -> dict[str, Any]:
    return harness.wait_until(
        lambda: (c := ready(api, kind, ns, name)) and c["status"] == status and c["reason"] == reason and c,
        timeout=timeout, what=f"{kind} {ns}/{name} Ready={status} ({reason}); last {ready(api, kind, ns, name)}")


def whoami(url: str, tool: str) -> dict[str, Any]:
    with Rpc(url) as rpc:
        rpc.initialize()
        resp, msg = rpc.call_tool(tool)
        assert resp.status_code == 200, resp.text
        return json.loads(tool_text(msg))


def attempt(fn: Any) -> Any:
    """`fn()`, or None while the change is still on its way (refused call, not yet routed)."""
    try:
        return fn()
    except (AssertionError, KeyError, ValueError, httpx.HTTPError, HarnessError):
        return None


def tools(url: str) -> list[str]:
    with Rpc(url) as rpc:
        rpc.initialize()
        resp, msg = rpc.request("tools/list")
        assert resp.status_code == 200, resp.text
        return sorted(t["name"] for t in msg["result"]["tools"])


class KubeSidecar(Sidecar):
    """`mcpgw-sidecar run --config FILE --kube-gateway NS/NAME` with a kubeconfig for the
    gateway's ServiceAccount (RBAC applies) and the test CA as the system roots."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, gateway: str, kubeconfig: Path, ca: Path, name: str):
        super().__init__(workdir, config, name=name,
                         env={"KUBECONFIG": str(kubeconfig), "SSL_CERT_FILE": str(ca)})
        self.argv += ["--kube-gateway", gateway]


@pytest.fixture(scope="module")
def rbac(api: KubeApi) -> None:
    """The overlay's ClusterRole, bound to both gateways' sidecar ServiceAccounts."""
    docs = [d for d in yaml.safe_load_all((ROOT / "wasmplugin/overlays/kube/rbac.yaml").read_text()) if d]
    for d in docs:
        api.apply(d)
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    team_b = json.loads(json.dumps(binding))
    team_b["metadata"]["name"] = "mcpgw-sidecar-kube-team-b"
    team_b["subjects"][0]["namespace"] = "team-b"
    api.apply(team_b)


@pytest.fixture(scope="module")
def pki(workdir: Path) -> dict[str, Path]:
    return make_ca(workdir / "pki", ["api.githubcopilot.com", "127.0.0.1"])


@pytest.fixture(scope="module")
def upstream(workdir: Path, pki: dict[str, Path]) -> Iterator[TlsServer]:
    server = TlsServer("github", workdir, certfile=pki["cert"], keyfile=pki["key"], hostname="127.0.0.1")
    server.start(timeout=30)
    yield server
    server.stop()


def sidecar_stack(api: KubeApi, workdir: Path, pki: dict[str, Path], ns: str, gw: str) -> tuple[KubeSidecar, SidecarGateway]:
    d = workdir / f"gw-{ns}"
    d.mkdir(exist_ok=True)
    (port,) = free_ports(1)
    envoy, _, _ = envoy_settings()
    cfg = base_config(port, d / "xds", **envoy, ca_bundle=str(pki["ca"]))
    kubeconfig = api.kubeconfig(d / "kubeconfig", f"system:serviceaccount:{ns}:mcpgw-sidecar")
    sc = KubeSidecar(d, cfg, gateway=f"{ns}/{gw}", kubeconfig=kubeconfig, ca=pki["ca"], name="sidecar")
    sc.start(timeout=30)
    try:
        sc.wait_log(r"kubernetes: caches ready", timeout=60)
        gateway_proc = SidecarGateway(d, sc).start()
    except BaseException:
        sc.stop()
        raise
    return sc, gateway_proc


@pytest.fixture(scope="module")
def stack(api: KubeApi, kube_sidecar: Path, rbac: None, workdir: Path, pki: dict[str, Path],
          upstream: TlsServer) -> Iterator[dict[str, Any]]:
    if not harness.WASM_PATH.exists():
        raise HarnessError(f"{harness.WASM_PATH} does not exist: build it first (./build.sh)")
    api.apply(gateway("mcp-gateway", "gateway-system", "*.mcp.local"))
    api.apply(extension("mcp-gateway", "gateway-system", "mcp-gateway"))
    sc, gw = sidecar_stack(api, workdir, pki, "gateway-system", "mcp-gateway")
    yield {"sidecar": sc, "gateway": gw, "api": api}
    gw.stop()
    sc.stop()


def point_service_entry_at(api: KubeApi, upstream: TlsServer) -> None:
    """The test's one change to the guide: the external host resolves to the local TLS server."""
    api.merge_patch(ISTIO, "ServiceEntry", "mcp-test", "github-mcp-external", {"spec": {
        "resolution": "STATIC", "endpoints": [{"address": "127.0.0.1", "ports": {"https": upstream.port}}]}})


def apply_guide(api: KubeApi, name: str, pat: str = PAT) -> list[str]:
    """Applies every document of the guide; returns the kinds the server does not serve (no CRD)."""
    missing = []
    for d in guide_docs(name, pat):
        try:
            api.resource(d["apiVersion"], d["kind"])
        except HarnessError:
            missing.append(f"{d['apiVersion']} {d['kind']}")
            continue
        api.apply(d)
    return missing


def test_every_wasmplugin_manifest_is_accepted(api: KubeApi, rendered_installs: dict[str, list[dict]]) -> None:
    for install, docs in rendered_installs.items():
        for d in docs:
            api.apply(d, dry_run=True)
    # The server really validates: a misspelled WasmPlugin or EnvoyFilter field is refused.
    wp = next(d for docs in rendered_installs.values() for d in docs if d["kind"] == "WasmPlugin")
    bad = json.loads(json.dumps(wp))
    bad["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    with pytest.raises(HarnessError, match="failStrategy"):
        api.apply(bad, dry_run=True)
    ef = next(d for docs in rendered_installs.values() for d in docs if d["kind"] == "EnvoyFilter")
    bad = json.loads(json.dumps(ef))
    bad["spec"]["configPatches"][0]["applyTo"] = "NOT_A_TARGET"
    with pytest.raises(HarnessError, match="applyTo"):
        api.apply(bad, dry_run=True)


def test_guide_registration_serves_github_tools(stack: dict[str, Any], upstream: TlsServer) -> None:
    api, sc, gw = stack["api"], stack["sidecar"], stack["gateway"]
    missing = apply_guide(api, "guide-mcpserverregistration.yaml")
    # The optional AuthPolicy needs Kuadrant, whose CRDs are not installed here.
    assert missing == ["kuadrant.io/v1 AuthPolicy"], missing
    point_service_entry_at(api, upstream)
    sc.wait_log(r"Discovered 3 tools for server github\b", timeout=60)
    cond = wait_ready(api, "MCPServerRegistration", "mcp-test", "github", "True", "Ready")
    assert "Discovered 3 tools for server github" in cond["message"]
    _, _, doc = sc.document()
    server = next(s for s in doc["servers"] if s["name"] == "github")
    assert server["authority"] == "github.mcp.local"
    harness.wait_until(lambda: {"github_echo", "github_add", "github_whoami"} <= set(attempt(lambda: tools(gw.url)) or []),
                       timeout=30, what="github_ tools through Envoy")
    seen = whoami(gw.url, "github_whoami")
    assert seen["headers"].get("authorization") == f"Bearer {PAT}", seen


def test_rotated_secret_is_used_without_restart(stack: dict[str, Any]) -> None:
    api, sc, gw = stack["api"], stack["sidecar"], stack["gateway"]
    pid = sc.pid
    secret = next(d for d in guide_docs("guide-mcpserverregistration.yaml", ROTATED) if d["kind"] == "Secret")
    api.apply(secret)
    harness.wait_until(
        lambda: (attempt(lambda: whoami(gw.url, "github_whoami")) or {"headers": {}})["headers"].get("authorization") == f"Bearer {ROTATED}",
        timeout=30, what="the rotated credential upstream")
    assert sc.pid == pid and sc.running


def test_hostname_change_moves_the_authority(stack: dict[str, Any]) -> None:
    api, sc, gw = stack["api"], stack["sidecar"], stack["gateway"]
    api.json_patch(GW_API, "HTTPRoute", "mcp-test", "github-mcp-external",
                   [{"op": "replace", "path": "/spec/hostnames/0", "value": "github-two.mcp.local"}])

    def moved() -> bool:
        _, _, doc = sc.document()
        return any(s["name"] == "github" and s["authority"] == "github-two.mcp.local" for s in doc["servers"])
    harness.wait_until(moved, timeout=30, what="the new authority in the document")
    # Envoy's routes (standing in for Istio's) follow: the old virtual host is gone, so a call can
    # only succeed through the new hostname.
    harness.wait_until(lambda: "github-two.mcp.local" in route_domains(sc) and "github.mcp.local" not in route_domains(sc),
                       timeout=30, what=f"the new hostname alone in Envoy's routes ({route_domains(sc)})")
    harness.wait_until(lambda: "authorization" in (attempt(lambda: whoami(gw.url, "github_whoami")) or {"headers": {}})["headers"],
                       timeout=30, what="a call through the new hostname")


def route_domains(sc: Sidecar) -> set[str]:
    rds = json.loads((sc.workdir / "xds" / "rds.json").read_text())
    return {d.split(":")[0] for r in rds["resources"] for vh in r.get("virtual_hosts", []) for d in vh["domains"]}


def test_unlabelled_secret_is_refused_with_a_condition(stack: dict[str, Any]) -> None:
    api = stack["api"]
    api.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain-token", "namespace": "mcp-test"},
               "type": "Opaque", "stringData": {"token": "Bearer nope"}})
    api.apply({"apiVersion": MCP, "kind": "MCPServerRegistration",
               "metadata": {"name": "unlabelled", "namespace": "mcp-test"},
               "spec": {"toolPrefix": "plain_", "targetRef": {"group": "gateway.networking.k8s.io",
                                                              "kind": "HTTPRoute", "name": "github-mcp-external"},
                        "credentialRef": {"name": "plain-token", "key": "token"}}})
    cond = wait_ready(api, "MCPServerRegistration", "mcp-test", "unlabelled", "False", "CredentialRefused")
    assert "not labelled mcp.kagenti.com/credential=true" in cond["message"], cond
    assert "nope" not in json.dumps(cond)
    _, _, doc = stack["sidecar"].document()
    assert [s["name"] for s in doc["servers"]] == ["github"]
    api.delete(MCP, "MCPServerRegistration", "mcp-test", "unlabelled")


def test_prefix_conflict_is_reported(stack: dict[str, Any]) -> None:
    api = stack["api"]
    api.apply({"apiVersion": MCP, "kind": "MCPServerRegistration",
               "metadata": {"name": "github-again", "namespace": "mcp-test"},
               "spec": {"toolPrefix": "github_", "targetRef": {"group": "gateway.networking.k8s.io",
                                                               "kind": "HTTPRoute", "name": "github-mcp-external"}}})
    cond = wait_ready(api, "MCPServerRegistration", "mcp-test", "github-again", "False", "PrefixConflict")
    assert "MCPServerRegistration mcp-test/github" in cond["message"], cond
    assert ready(api, "MCPServerRegistration", "mcp-test", "github")["status"] == "True"
    api.delete(MCP, "MCPServerRegistration", "mcp-test", "github-again")


VS = "x-mcp-virtualserver"


def vs_tools(url: str, vs: str) -> list[str]:
    with Rpc(url) as rpc:
        rpc.initialize()
        resp, msg = rpc.request("tools/list", headers={VS: vs})
        assert resp.status_code == 200, resp.text
        return sorted(t["name"] for t in msg["result"]["tools"])


def ensure_github(stack: dict[str, Any], upstream: TlsServer) -> None:
    """The guide's registration (when this test runs alone; otherwise the earlier tests made it)."""
    api = stack["api"]
    if api.get(MCP, "MCPServerRegistration", "mcp-test", "github") is None:
        apply_guide(api, "guide-mcpserverregistration.yaml")
        point_service_entry_at(api, upstream)
    wait_ready(api, "MCPServerRegistration", "mcp-test", "github", "True", "Ready")


def test_virtual_server_resource_curates_the_tools(stack: dict[str, Any], upstream: TlsServer) -> None:
    """An MCPVirtualServer becomes the virtual server <namespace>/<name>: X-Mcp-Virtualserver
    selects it, its Ready condition names what no server offers; deleted, the name is unknown."""
    api, sc, gw = stack["api"], stack["sidecar"], stack["gateway"]
    ensure_github(stack, upstream)
    harness.wait_until(lambda: "github_whoami" in (attempt(lambda: tools(gw.url)) or []), timeout=30,
                       what="github_ tools through Envoy")
    api.apply({"apiVersion": MCP, "kind": "MCPVirtualServer", "metadata": {"name": "readers", "namespace": "mcp-test"},
               "spec": {"description": "Read-only GitHub tools",
                        "tools": ["github_echo", "github_whoami", "github_nope"]}})
    cond = wait_ready(api, "MCPVirtualServer", "mcp-test", "readers", "False", "ToolsNotFound")
    assert "github_nope" in cond["message"] and "github_echo" not in cond["message"], cond
    _, _, doc = sc.document()
    vs = next(v for v in doc["virtual_servers"] if v["name"] == "mcp-test/readers")
    assert vs["description"] == "Read-only GitHub tools"
    harness.wait_until(lambda: attempt(lambda: vs_tools(gw.url, "mcp-test/readers")) == ["github_echo", "github_whoami"],
                       timeout=30, what="the virtual server's tools through Envoy")
    assert {"github_add", "github_echo", "github_whoami"} <= set(tools(gw.url)), "no header: the whole catalog"
    with Rpc(gw.url) as rpc:
        rpc.initialize()
        resp, msg = rpc.call_tool("github_whoami", headers={VS: "mcp-test/readers"})
        assert resp.status_code == 200 and "headers" in json.loads(tool_text(msg)), resp.text
        resp, msg = rpc.call_tool("github_add", {"a": 1, "b": 2}, headers={VS: "mcp-test/readers"})
        assert resp.status_code == 200, resp.text
        assert msg["error"]["code"] == -32602 and "not in virtual server mcp-test/readers" in msg["error"]["message"], msg
    # Fixed: Ready.
    api.merge_patch(MCP, "MCPVirtualServer", "mcp-test", "readers",
                    {"spec": {"tools": ["github_echo", "github_whoami"]}})
    cond = wait_ready(api, "MCPVirtualServer", "mcp-test", "readers", "True", "Ready")
    assert cond["observedGeneration"] == 2, cond
    # Deleted: the name is an unknown virtual server (400), not the whole catalog.
    api.delete(MCP, "MCPVirtualServer", "mcp-test", "readers")

    def refused() -> bool:
        with Rpc(gw.url) as rpc:
            resp, msg = rpc.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                   "clientInfo": {"name": "t", "version": "1"}},
                                    headers={VS: "mcp-test/readers"}, session=False)
            return resp.status_code == 400 and "unknown virtual server" in msg["error"]["message"]
    harness.wait_until(refused, timeout=30, what="the deleted virtual server refused (400)")


def test_unreachable_server_is_reported_as_discovery_failed(stack: dict[str, Any]) -> None:
    api = stack["api"]
    (closed,) = free_ports(1)
    api.apply({"apiVersion": ISTIO, "kind": "ServiceEntry", "metadata": {"name": "dead", "namespace": "mcp-test"},
               "spec": {"hosts": ["dead.example.test"], "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
                        "location": "MESH_EXTERNAL", "resolution": "STATIC",
                        "endpoints": [{"address": "127.0.0.1", "ports": {"https": closed}}]}})
    api.apply({"apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "dead", "namespace": "mcp-test"},
               "spec": {"parentRefs": [{"name": "mcp-gateway", "namespace": "gateway-system"}],
                        "hostnames": ["dead.mcp.local"],
                        "rules": [{"backendRefs": [{"group": "networking.istio.io", "kind": "Hostname",
                                                    "name": "dead.example.test", "port": 443}]}]}})
    api.apply({"apiVersion": MCP, "kind": "MCPServerRegistration", "metadata": {"name": "dead", "namespace": "mcp-test"},
               "spec": {"toolPrefix": "dead_", "targetRef": {"name": "dead"}}})
    cond = wait_ready(api, "MCPServerRegistration", "mcp-test", "dead", "False", "DiscoveryFailed")
    assert f"127.0.0.1:{closed}" in cond["message"], cond
    assert ready(api, "MCPServerRegistration", "mcp-test", "github")["status"] == "True"
    api.delete(MCP, "MCPServerRegistration", "mcp-test", "dead")


def test_the_sidecar_has_least_privilege(api: KubeApi, stack: dict[str, Any]) -> None:
    """The sidecar's own identity (ServiceAccount user, RBAC of overlays/kube) lists what it
    watches and nothing more: no get of a Secret, no ConfigMaps, no writes but status."""
    user = "system:serviceaccount:gateway-system:mcpgw-sidecar"
    with api.client(user) as c:
        assert c.get("/api/v1/secrets", params={"labelSelector": "mcp.kagenti.com/credential=true"}).status_code == 200
        assert c.get("/api/v1/namespaces/mcp-test/secrets/github-token").status_code == 403
        assert c.get("/api/v1/configmaps").status_code == 403
        assert c.delete(api.path(MCP, "MCPServerRegistration", "mcp-test", "github")).status_code == 403
        r = c.patch(api.path(MCP, "MCPServerRegistration", "mcp-test", "github"), content=json.dumps({"spec": {"toolPrefix": "x_"}}),
                    headers={"content-type": "application/merge-patch+json"})
        assert r.status_code == 403, r.text
        assert c.get(api.path(MCP, "MCPVirtualServer", "mcp-test", "")).status_code == 200
        assert c.delete(api.path(MCP, "MCPVirtualServer", "mcp-test", "any")).status_code == 403


def test_two_extensions_give_two_configurations(api: KubeApi, stack: dict[str, Any], workdir: Path,
                                                pki: dict[str, Path], upstream: TlsServer) -> None:
    api.apply(gateway("team-b-gateway", "team-b", "*.team-b.local"))
    api.apply(extension("team-b-gateway", "team-b", "team-b-gateway"))
    route = next(d for d in guide_docs("guide-mcpserverregistration.yaml") if d["kind"] == "HTTPRoute")
    route["metadata"] = {"name": "tools-b", "namespace": "team-b"}
    route["spec"]["parentRefs"] = [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                    "name": "team-b-gateway", "namespace": "team-b"}]
    route["spec"]["hostnames"] = ["tools.team-b.local"]
    api.apply(route)
    api.apply({"apiVersion": MCP, "kind": "MCPServerRegistration", "metadata": {"name": "tools", "namespace": "team-b"},
               "spec": {"toolPrefix": "teamb_", "targetRef": {"group": "gateway.networking.k8s.io",
                                                              "kind": "HTTPRoute", "name": "tools-b"}}})
    sc_b, gw_b = sidecar_stack(api, workdir, pki, "team-b", "team-b-gateway")
    try:
        wait_ready(api, "MCPServerRegistration", "team-b", "tools", "True", "Ready")
        _, _, doc_b = sc_b.document()
        _, _, doc_a = stack["sidecar"].document()
        assert [(s["name"], s["authority"]) for s in doc_b["servers"]] == [("tools", "tools.team-b.local")]
        assert [s["name"] for s in doc_a["servers"]] == ["github"]
        harness.wait_until(lambda: "teamb_whoami" in (attempt(lambda: tools(gw_b.url)) or []), timeout=30, what="teamb_ tools on gateway B")
        assert not any(t.startswith("github_") for t in tools(gw_b.url))
        assert not any(t.startswith("teamb_") for t in tools(stack["gateway"].url))
        # No credential on team B's registration: none is sent. (Envoy B may load the server's
        # cluster from the xDS files a moment after the plugin lists its tools.)
        seen = harness.wait_until(lambda: attempt(lambda: whoami(gw_b.url, "teamb_whoami")), timeout=30,
                                  what="teamb_whoami through gateway B")
        assert "authorization" not in seen["headers"]
    finally:
        gw_b.stop()
        sc_b.stop()


def test_deleted_registration_takes_its_tools_away(stack: dict[str, Any]) -> None:
    api, gw = stack["api"], stack["gateway"]
    api.delete(MCP, "MCPServerRegistration", "mcp-test", "github")
    harness.wait_until(lambda: (t := attempt(lambda: tools(gw.url))) is not None and not any(n.startswith("github_") for n in t),
                       timeout=30, what="github_ tools gone")


def test_older_guide_mcpserver_serves_github_tools(stack: dict[str, Any], upstream: TlsServer) -> None:
    api, sc, gw = stack["api"], stack["sidecar"], stack["gateway"]
    patch = json.loads((FIXTURES / "guide-mcpserver-gateway-patch.json").read_text())
    api.json_patch(GW_API, "Gateway", "gateway-system", "mcp-gateway", patch)
    assert apply_guide(api, "guide-mcpserver.yaml") == []
    point_service_entry_at(api, upstream)
    cond = wait_ready(api, "MCPServer", "mcp-test", "github", "True", "Ready")
    assert "Discovered 3 tools for server github" in cond["message"]
    _, _, doc = sc.document()
    server = next(s for s in doc["servers"] if s["name"] == "github")
    # The older guide's route matches the external hostname itself, via an ExternalName Service.
    assert server["authority"] == "api.githubcopilot.com"
    harness.wait_until(lambda: "github_whoami" in (attempt(lambda: tools(gw.url)) or []), timeout=30, what="github_ tools (MCPServer)")
    assert whoami(gw.url, "github_whoami")["headers"].get("authorization") == f"Bearer {PAT}"
    api.delete(MCP, "MCPServer", "mcp-test", "github")
    harness.wait_until(lambda: (t := attempt(lambda: tools(gw.url))) is not None and "github_whoami" not in t, timeout=30, what="MCPServer deleted")
