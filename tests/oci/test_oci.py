"""The OCI image Istio pulls and the wasmplugin/ manifests, checked with Istio's own code.

A local registry (Debian docker-registry) on 127.0.0.1; ./build.sh --push publishes the plugin there;
tests/oci/main.go (built once into ~/.cache/mcpgw/, keyed by its sources and the Go version) runs
Istio's pkg/wasm image fetcher and agent cache against it, renders wasmplugin/ with the kustomize
library, validates every document against the Istio and Gateway API CRDs (schema, unknown fields,
CEL) and Istio's webhook validation, and runs the EnvoyFilter's EXTENSION_CONFIG through istiod's
builder and the istio-agent's ECDS rewrite, which pulls the image by digest. No cluster, no Envoy
in a mesh: see docs/istio.md for what that leaves unproven.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WASM = ROOT / "target" / "mcpgw.wasm"
CACHE = Path(os.environ.get("MCPGW_CACHE", Path.home() / ".cache" / "mcpgw"))
SIDECAR = ROOT / "target" / "debug" / "mcpgw-sidecar"


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p.stdout


@pytest.fixture(scope="session")
def go_env():
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def go_tool(src: Path, name: str, go_env) -> Path:
    """Builds the Go program in src once per source and Go version into ~/.cache/mcpgw/NAME-HASH."""
    h = hashlib.sha256()
    for f in ("go.mod", "go.sum", "main.go"):
        h.update((src / f).read_bytes())
    h.update(run(["go", "version"], env=go_env).encode())
    binary = CACHE / f"{name}-{h.hexdigest()[:16]}"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        run(["go", "build", "-trimpath", "-o", str(tmp), "."], cwd=src, env=go_env)
        tmp.rename(binary)
        for old in CACHE.glob(f"{name}-*"):
            if old != binary:
                old.unlink()
    return binary


@pytest.fixture(scope="session")
def oci_check(go_env):
    """tests/oci/main.go (Istio's pkg/wasm, kustomize, apiextensions): the first build takes minutes."""
    return go_tool(HERE, "oci-check", go_env)


@pytest.fixture(scope="session")
def module_dirs(go_env):
    """Where the Go module cache keeps istio.io/istio and sigs.k8s.io/gateway-api (their CRDs)."""
    out = run(["go", "list", "-m", "-f", "{{.Path}} {{.Dir}}", "istio.io/istio", "sigs.k8s.io/gateway-api"], cwd=HERE, env=go_env)
    dirs = dict(line.split(" ", 1) for line in out.splitlines())
    if not all(dirs.values()):
        run(["go", "mod", "download", "istio.io/istio", "sigs.k8s.io/gateway-api"], cwd=HERE, env=go_env)
        out = run(["go", "list", "-m", "-f", "{{.Path}} {{.Dir}}", "istio.io/istio", "sigs.k8s.io/gateway-api"], cwd=HERE, env=go_env)
        dirs = dict(line.split(" ", 1) for line in out.splitlines())
    return {k: Path(v) for k, v in dirs.items()}


@pytest.fixture(scope="session")
def crds(module_dirs):
    istio = module_dirs["istio.io/istio"] / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
    gw = module_dirs["sigs.k8s.io/gateway-api"] / "config" / "crd" / "standard"
    files = [istio, gw / "gateway.networking.k8s.io_httproutes.yaml", gw / "gateway.networking.k8s.io_gateways.yaml"]
    for f in files:
        assert f.exists(), f
    return files


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """Debian's docker-registry (distribution 2.8) on a free loopback port, plain HTTP."""
    binary = shutil.which("docker-registry")
    if not binary:
        pytest.fail("docker-registry not found: scripts/setup.sh --oci installs it")
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    (d / "config.yml").write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {d / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n")
    log = open(d / "log", "w")
    proc = subprocess.Popen([binary, "serve", str(d / "config.yml")], stdout=log, stderr=log)
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"docker-registry did not start: {(d / 'log').read_text()}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="session")
def wasm_bytes():
    assert WASM.exists(), "build the plugin first (make wasm)"
    return WASM.read_bytes()


def push(registry, repo, *extra):
    """./build.sh --no-build --push: the last line of its output is REPO@sha256:DIGEST."""
    out = run([str(ROOT / "build.sh"), "--no-build", "--image", str(ROOT / "target" / "oci-test"), *extra,
               "--push", f"{registry}/{repo}:test"])
    ref = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(registry)}/{repo}@sha256:[0-9a-f]{{64}}", ref), out
    return ref


@pytest.fixture(scope="session")
def compat_ref(registry, wasm_bytes):
    return push(registry, "mcpgw/plugin")


def test_compat_image_is_pulled_by_istio(oci_check, compat_ref):
    out = run([str(oci_check), "pull", "-ref", compat_ref, "-wasm", str(WASM), "-variant", "compat"])
    assert out.startswith("ok:"), out


def test_artifact_image_is_pulled_by_istio(oci_check, registry, wasm_bytes):
    ref = push(registry, "mcpgw/plugin-artifact", "--artifact")
    out = run([str(oci_check), "pull", "-ref", ref, "-wasm", str(WASM), "-variant", "artifact"])
    assert out.startswith("ok:"), out


def test_one_layer_artifact_is_refused_by_istio(oci_check, registry, wasm_bytes):
    out = run([str(oci_check), "reject-one-layer", "-repo", f"{registry}/mcpgw/one-layer", "-wasm", str(WASM)])
    assert "number of layers must be 2 but got 1" in out


def test_image_digest_is_reproducible(tmp_path, wasm_bytes):
    """The same module always packs to the same manifest digests (so a pinned digest survives rebuilds)."""
    outs = []
    for name in ("a", "b"):
        outs.append(run(["python3", str(ROOT / "scripts" / "oci_image.py"), "--wasm", str(WASM),
                         "--out", str(tmp_path / name), "--version", "0.1.0"]))
    assert outs[0] == outs[1]
    assert set(line.split("\t")[0] for line in outs[0].splitlines()) == {"compat", "artifact"}


# ------------------------------------------------------------------------------------------------
# wasmplugin/

INSTALLS = {
    # kustomization dir (relative to wasmplugin/), the config dir it uses, what it must contain
    "default": (".", "config", "EnvoyFilter"),
    "wasmplugin": ("overlays/wasmplugin", "config", "WasmPlugin"),
    "second-gateway": ("overlays/second-gateway", "overlays/second-gateway/config", "EnvoyFilter"),
}


def sidecar_source_fields():
    """The fields of mcpgw_core::config::SidecarSource (deny_unknown_fields), read from the Rust source."""
    src = (ROOT / "core" / "src" / "config.rs").read_text()
    body = re.search(r"pub struct SidecarSource \{(.*?)\n\}", src, re.S).group(1)
    return set(re.findall(r"pub (\w+):", body))


def check_plugin_configuration(text, token, cluster, install=None):
    """`install`: the plugin's `install` key (the WasmPlugin's `wasm_plugin`; none: the default)."""
    conf = json.loads(text)
    assert set(conf) == ({"sidecar"} if install is None else {"sidecar", "install"}), conf
    assert conf.get("install") == install, conf
    sidecar = conf["sidecar"]
    assert set(sidecar) <= sidecar_source_fields(), sidecar
    assert sidecar["token"] == token
    assert sidecar["cluster"] == cluster
    assert sidecar["path"] == "/v1/config"
    for key in ("long_poll_ms", "retry_ms"):
        # serde reads u64: istiod's JSON must keep these integral (no "20000.0", no exponent).
        assert re.search(rf'"{key}":\s*\d+[,}}]', text), text
    assert len(token) >= 32 and re.fullmatch(r"[!-~]+", token)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory, oci_check, compat_ref):
    """Each install rendered from a copy of wasmplugin/ (secrets generated in the copy, never in the
    checkout), with the plugin URL pointing at the image pushed to the local registry."""
    out = {}
    for install, (kdir, cdir, _) in INSTALLS.items():
        work = tmp_path_factory.mktemp(f"wasmplugin-{install}")
        shutil.copytree(ROOT / "wasmplugin", work / "wasmplugin", ignore=shutil.ignore_patterns("secrets"))
        root = work / "wasmplugin"
        run([str(root / "generate-secrets.sh"), str(root / cdir / "secrets")])
        params = root / cdir / "params.env"
        params.write_text(re.sub(r"(?m)^plugin_url=.*$", f"plugin_url=oci://{compat_ref}", params.read_text()))
        text = run([str(oci_check), "kustomize", str(root / kdir)])
        path = work / "rendered.yaml"
        path.write_text(text)
        docs = yaml_docs(oci_check, path)
        token = (root / cdir / "secrets" / "plugin-token").read_text()
        session_key = (root / cdir / "secrets" / "session-key").read_text()
        parameters = dict(line.split("=", 1) for line in params.read_text().splitlines() if line and not line.startswith("#"))
        out[install] = {"path": path, "docs": docs, "token": token, "session_key": session_key, "params": parameters, "root": root, "cdir": cdir}
    return out


def yaml_docs(oci_check, path):
    return json.loads(run([str(oci_check), "tojson", str(path)]))


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("install", INSTALLS)
def test_manifests_are_wired(oci_check, rendered, install, compat_ref):
    r = rendered[install]
    docs, params, token = r["docs"], r["params"], r["token"]
    text = r["path"].read_text()
    assert "PARAM-" not in text, "a PARAM-* placeholder was not replaced"
    assert not [d for d in docs if d["metadata"]["name"] in ("mcpgw-params", "mcpgw-plugin-token")], \
        "the local-only ConfigMaps must not reach the cluster"
    kinds = sorted(d["kind"] for d in docs)
    expected_plugin = INSTALLS[install][2]
    # The WasmPlugin install adds the route that holds the headers of requests the plugin answers.
    routes = ["HTTPRoute"] * (2 if expected_plugin == "WasmPlugin" else 1)
    assert kinds == sorted(["ConfigMap", "Secret", "ServiceAccount", "Service", "Deployment", "NetworkPolicy",
                            expected_plugin, *routes]), kinds
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    ns = namespaces.pop()

    (secret,) = by_kind(docs, "Secret")
    assert base64.b64decode(secret["data"]["plugin-token"]).decode() == token
    assert base64.b64decode(secret["data"]["session-key"]).decode() == r["session_key"]
    assert len(base64.b64decode(r["session_key"])) == 32
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == params["sidecar_image"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]  # hashed name followed
    (cm,) = by_kind(docs, "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]

    (svc,) = by_kind(docs, "Service")
    port = svc["spec"]["ports"][0]["port"]
    cluster = f"outbound|{port}||{svc['metadata']['name']}.{ns}.svc.cluster.local"
    assert params["sidecar_cluster"] == cluster, "params.env sidecar_cluster must name this Service's Istio cluster"

    gateway = params["gateway_name"]
    (np,) = by_kind(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"] == {"matchLabels": svc["spec"]["selector"]}
    assert np["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": gateway}}}],
                                      "ports": [{"protocol": "TCP", "port": port}]}]
    routes = {d["metadata"]["name"]: d for d in by_kind(docs, "HTTPRoute")}
    for route in routes.values():
        assert route["spec"]["parentRefs"][0]["name"] == gateway
        assert route["spec"]["hostnames"] == [params["mcp_hostname"]]
        assert all(rule["backendRefs"] == [{"name": svc["metadata"]["name"], "port": port}]
                   for rule in route["spec"]["rules"]), route
    mcp = {"type": "Exact", "value": "/mcp"}
    # Only the notification streams the plugin vouched for lead to the sidecar ...
    assert [rule["matches"] for rule in routes["mcpgw-notifications"]["spec"]["rules"]] == [
        [{"path": mcp, "method": "GET"}],
        [{"path": mcp, "method": "POST", "headers": [{"name": "x-mcpgw-listen", "type": "Exact", "value": "1"}]}]]
    # ... and, with a WasmPlugin, the held headers of what the plugin answers itself.
    if expected_plugin == "WasmPlugin":
        assert [rule["matches"] for rule in routes["mcpgw-hold"]["spec"]["rules"]] == [[{"path": mcp, "method": "POST"}]]

    conf_file = r["path"].with_name("sidecar.yaml")
    conf_file.write_text(cm["data"]["sidecar.yaml"])
    (sidecar_conf,) = yaml_docs(oci_check, conf_file)
    assert sidecar_conf["listen"].endswith(f":{svc['spec']['ports'][0]['port']}")
    assert sidecar_conf["plugin_token"]["file"].startswith("/var/run/mcpgw/secrets/")

    for ef in by_kind(docs, "EnvoyFilter"):
        assert ef["spec"]["workloadSelector"]["labels"] == {"gateway.networking.k8s.io/gateway-name": gateway}
        (ext,) = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
        config = ext["patch"]["value"]["typed_config"]["config"]
        assert config["vm_config"]["code"]["remote"]["http_uri"]["uri"] == f"oci://{compat_ref}"
        check_plugin_configuration(config["configuration"]["value"], token, cluster)
    for wp in by_kind(docs, "WasmPlugin"):
        assert wp["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}]
        assert wp["spec"]["url"] == f"oci://{compat_ref}"
        assert wp["spec"]["pluginConfig"]["sidecar"]["token"] == token
        assert wp["spec"]["pluginConfig"]["sidecar"]["cluster"] == cluster


def test_two_gateways_share_nothing(rendered):
    a, b = rendered["default"], rendered["second-gateway"]
    assert a["token"] != b["token"] and a["session_key"] != b["session_key"]
    ns = lambda r: r["docs"][0]["metadata"]["namespace"]
    assert ns(a) != ns(b)
    assert a["params"]["gateway_name"] != b["params"]["gateway_name"]


@pytest.mark.parametrize("install", INSTALLS)
def test_manifests_pass_crd_schemas_and_istio_validation(oci_check, rendered, crds, install):
    args = [str(oci_check), "validate", "-f", str(rendered[install]["path"])]
    for f in crds:
        args += ["-crd", str(f)]
    out = run(args)
    lines = out.splitlines()
    assert len(lines) == len(rendered[install]["docs"]), out
    assert all(line.startswith("ok: ") for line in lines), out


def test_validation_catches_mistakes(oci_check, rendered, crds, tmp_path):
    """The checks above would see a mistake: a misspelt field of a CRD kind, a value outside an
    enum, a misspelt field of a built-in kind, and a rule the CRD's CEL enforces."""
    text = rendered["default"]["path"].read_text()
    bad = tmp_path / "bad.yaml"
    for old, new, expect in [
        ("  workloadSelector:", "  workloadSelektor:", "unknown fields (the API server would drop them): spec.workloadSelektor"),
        ("operation: INSERT_BEFORE", "operation: INSERT_BEFOR", 'Unsupported value: "INSERT_BEFOR"'),
        ("readinessProbe:", "readinesProbe:", 'unknown field "readinesProbe"'),
        ("- name: mcpgw-sidecar\n      port: 18000", "- name: mcpgw-sidecar\n      kind: Service", "Must have port for Service reference"),
    ]:
        assert old in text, old
        bad.write_text(text.replace(old, new, 1))
        args = [str(oci_check), "validate", "-f", str(bad)]
        for f in crds:
            args += ["-crd", str(f)]
        p = subprocess.run(args, capture_output=True, text=True)
        assert p.returncode != 0 and expect in p.stderr, (old, p.stdout, p.stderr)


def envoy_validates_the_converted_filter(ef: dict, sidecar_cluster: str, tmp_path: Path) -> None:
    """The filter exactly as the agent hands it to Envoy, in a listener before the router, passes
    `envoy --mode validate` (which loads the module and hands it its configuration). The agent's
    local file lived in oci-check's temporary cache; its bytes are target/mcpgw.wasm (checked above)."""
    converted = json.loads(json.dumps(ef["converted_filter"]).replace(json.dumps(ef["local_file"]), json.dumps(str(WASM))))
    config = converted["config"]  # protojson: lowerCamelCase field names, which Envoy also reads
    assert config["vmConfig"]["code"]["local"]["filename"] == str(WASM), config
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "gateway",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": sidecar_cluster}}]}]},
           "http_filters": [{"name": ef["http_filter_name"], "typed_config": converted},
                            {"name": "envoy.filters.http.router",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    bootstrap = {
        "static_resources": {
            "listeners": [{"name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [{"name": sidecar_cluster, "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": sidecar_cluster, "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]}}]}}
    path = tmp_path / f"envoyfilter-{ef['name']}.json"
    path.write_text(json.dumps(bootstrap))
    envoy = ROOT / ".venv" / "bin" / "envoy"
    p = subprocess.run([str(envoy), "--mode", "validate", "-c", str(path), "-l", "warning", "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.parametrize("install", INSTALLS)
def test_istio_turns_the_manifests_into_the_filter_the_plugin_needs(oci_check, rendered, install, wasm_bytes, tmp_path):
    """EnvoyFilter: istiod's patch builder + the agent's ECDS rewrite (which pulls the image from the
    local registry by digest) yield a local module equal to target/mcpgw.wasm with
    allow_on_headers_stop_iteration and FAIL_RELOAD. WasmPlugin: istiod's JSON of pluginConfig is what
    the plugin parses."""
    r = rendered[install]
    facts = json.loads(run([str(oci_check), "ecds", "-f", str(r["path"])]))
    params = r["params"]
    for ef in facts["envoy_filters"] or []:
        assert ef["local_file_sha256"] == hashlib.sha256(wasm_bytes).hexdigest()
        assert ef["allow_on_headers_stop_iteration"] is True
        assert ef["failure_policy"] == "FAIL_RELOAD"
        assert ef["root_id"] == "mcpgw" and ef["vm_id"] == "mcpgw"
        assert ef["http_filter_name"] == ef["extension_name"]
        assert ef["http_filter_type_urls"] == ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
        assert ef["http_filter_insert_before_router"] is True
        check_plugin_configuration(ef["configuration"], r["token"], params["sidecar_cluster"])
        envoy_validates_the_converted_filter(ef, params["sidecar_cluster"], tmp_path)
    for wp in facts["wasm_plugins"] or []:
        check_plugin_configuration(wp["configuration"], r["token"], params["sidecar_cluster"], "wasm_plugin")
    assert (facts["envoy_filters"] or facts["wasm_plugins"])


@pytest.mark.parametrize("install", ["default", "second-gateway"])
def test_sidecar_accepts_its_configmap(rendered, install, tmp_path):
    """The servers file in the ConfigMap is one the sidecar accepts (`mcpgw-sidecar check`), with its
    mounted paths moved under a temporary directory holding the generated secrets."""
    if not SIDECAR.exists():
        pytest.fail("target/debug/mcpgw-sidecar not built (make sidecar)")
    r = rendered[install]
    (cm,) = by_kind(r["docs"], "ConfigMap")
    mount = tmp_path / "run"
    (mount / "secrets").mkdir(parents=True)
    (mount / "secrets" / "plugin-token").write_text(r["token"])
    (mount / "secrets" / "session-key").write_text(r["session_key"])
    conf = tmp_path / "sidecar.yaml"
    conf.write_text(cm["data"]["sidecar.yaml"].replace("/var/run/mcpgw/", f"{mount}/"))
    out = run([str(SIDECAR), "check", "--config", str(conf)])
    assert out.strip(), out


# ------------------------------------------------------------------------------------------------
# Containerfile (the sidecar image). No image is built here: no container engine, and the base
# images' registries are out of reach. BuildKit's own Dockerfile parser and linter check it.

def test_containerfile_parses_and_lints_clean(go_env):
    tool = go_tool(ROOT / "tests" / "containerfile", "containerfile-check", go_env)
    out = run([str(tool), str(ROOT / "Containerfile")])
    assert out.startswith("ok: 2 stages"), out


def test_containerfile_matches_the_deployment(oci_check, rendered):
    text = (ROOT / "Containerfile").read_text()
    (deploy,) = by_kind(rendered["default"]["docs"], "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (svc,) = by_kind(rendered["default"]["docs"], "Service")
    assert "cargo build --release --locked -p mcpgw-sidecar" in text
    assert re.search(r'(?m)^CMD \["run", "--config", "/etc/mcpgw/sidecar.yaml"\]$', text)
    assert pod["containers"][0]["args"] == ["run", "--config", "/etc/mcpgw/sidecar.yaml"]
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} >= {"/etc/mcpgw"}
    assert re.search(rf'(?m)^EXPOSE {svc["spec"]["ports"][0]["port"]}$', text)
    user = pod["securityContext"]["runAsUser"]
    assert re.search(rf"(?m)^USER {user}:{pod['securityContext']['runAsGroup']}$", text)
    ignored = (ROOT / ".containerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored
    assert os.readlink(ROOT / ".dockerignore") == ".containerignore"
