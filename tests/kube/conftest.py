"""Session fixtures of the Kubernetes-mode tests: a real kube-apiserver + etcd on 127.0.0.1 with the
real Gateway API and Istio CRDs (from their Go modules, located like tests/oci does) and ours, the
sidecar built with the `kube` feature, Envoy + the plugin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUBE_SIDECAR = ROOT / "target" / "debug" / "mcpgw-sidecar-kube"
# The sidecar harness reads MCPGW_SIDECAR at import: the kube build (built by `kube_sidecar`).
os.environ["MCPGW_SIDECAR"] = str(KUBE_SIDECAR)
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HarnessError  # noqa: E402
from kube_harness import KubeApi, install_crds  # noqa: E402

OCI = ROOT / "tests" / "oci"


@pytest.fixture(scope="session")
def kube_sidecar() -> Path:
    """`cargo build -p mcpgw-sidecar --features kube`, copied aside so the default build (other
    tests) and this one do not overwrite each other."""
    r = subprocess.run(["cargo", "build", "-q", "-p", "mcpgw-sidecar", "--features", "kube"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"cargo build --features kube failed:\n{r.stderr[-3000:]}")
    tmp = KUBE_SIDECAR.with_suffix(".tmp")
    shutil.copy2(ROOT / "target" / "debug" / "mcpgw-sidecar", tmp)
    os.replace(tmp, KUBE_SIDECAR)
    return KUBE_SIDECAR


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def module_dir(module: str) -> Path:
    """Where the Go module cache keeps `module` at the version tests/oci/go.mod pins."""
    def where() -> str:
        r = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", module], cwd=OCI, env=go_env(),
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    d = where()
    if not d:
        r = subprocess.run(["go", "mod", "download", module], cwd=OCI, env=go_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise HarnessError(f"go mod download {module}: {r.stderr}")
        d = where()
    if not d:
        raise HarnessError(f"Go module {module} not found")
    return Path(d)


def crd_files() -> dict[str, list[Path]]:
    istio = module_dir("istio.io/istio") / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
    gw = module_dir("sigs.k8s.io/gateway-api") / "config" / "crd" / "standard"
    files = {
        "gateway-api": sorted(gw.glob("gateway.networking.k8s.io_*.yaml")),
        "istio": [istio],
        "mcp": [ROOT / "wasmplugin" / "crds" / "mcp.kagenti.com.yaml"],
    }
    for group in files.values():
        for f in group:
            if not f.exists():
                raise HarnessError(f"missing CRD file {f}")
    return files


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcpgw-kube")


@pytest.fixture(scope="session")
def api(workdir: Path) -> Iterator[KubeApi]:
    """kube-apiserver + etcd, the real Gateway API, Istio and mcp.kagenti.com CRDs installed."""
    server = KubeApi(workdir / "kube")
    server.start(timeout=180)
    try:
        server.installed = {name: install_crds(server, files) for name, files in crd_files().items()}
        for ns in ("gateway-system", "mcp-test", "team-b", "mcp-system"):
            server.namespace(ns)
        yield server
    finally:
        server.stop()


# Every install in wasmplugin/ (kustomization dir, its config dir).
INSTALLS = {
    "default": (".", "config"),
    "wasmplugin": ("overlays/wasmplugin", "config"),
    "second-gateway": ("overlays/second-gateway", "overlays/second-gateway/config"),
    "kube": ("overlays/kube", "overlays/kube/config"),
}


@pytest.fixture(scope="session")
def rendered_installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Each install rendered by the kustomize library (tests/oci's checker, built once into
    ~/.cache/mcpgw) from a copy of wasmplugin/ with generated secrets."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("oci_checks", OCI / "test_oci.py")
    assert spec and spec.loader
    oci = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oci)
    checker = oci.go_tool(OCI, "oci-check", go_env())
    out = {}
    for install, (kdir, cdir) in INSTALLS.items():
        work = tmp_path_factory.mktemp(f"render-{install}")
        shutil.copytree(ROOT / "wasmplugin", work / "wasmplugin", ignore=shutil.ignore_patterns("secrets"))
        root = work / "wasmplugin"
        subprocess.run([str(root / "generate-secrets.sh"), str(root / cdir / "secrets")], check=True,
                       capture_output=True)
        text = oci.run([str(checker), "kustomize", str(root / kdir)])
        (work / "rendered.yaml").write_text(text)
        out[install] = json.loads(oci.run([str(checker), "tojson", str(work / "rendered.yaml")]))
    return out
