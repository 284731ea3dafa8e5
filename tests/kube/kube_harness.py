"""A real Kubernetes API server on 127.0.0.1 for the Kubernetes-mode tests: Debian's etcd and
kube-apiserver built from the Go module proxy by scripts/kube.sh (cached in ~/.cache/mcpgw/kube/).

    api = KubeApi(workdir).start()          # etcd + kube-apiserver, waits for /readyz
    api.apply(obj)                          # server-side apply (any kind the server knows)
    api.apply(obj, dry_run=True)            # server-side dry run: validated, not stored
    api.get(api_version, kind, ns, name)    # the object or None
    api.kubeconfig(path, user)              # a kubeconfig for one of the static-token users

Authentication is a static token file (users `admin` in system:masters and one per gateway
sidecar, named like their ServiceAccount so RBAC bindings to the ServiceAccount apply to them);
authorization is RBAC, so the sidecar runs with exactly the ClusterRole of wasmplugin/overlays/kube.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import HOST, HarnessError, Process, free_ports  # noqa: E402

# Gateway sidecars the tests run: ServiceAccount namespace/name -> static token user.
SIDECAR_ACCOUNTS = [("gateway-system", "mcpgw-sidecar"), ("team-b", "mcpgw-sidecar")]


def kube_binaries() -> Path:
    """scripts/kube.sh: builds kube-apiserver once per machine (minutes), installs etcd-server."""
    r = subprocess.run([str(ROOT / "scripts" / "kube.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"scripts/kube.sh failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"openssl {' '.join(args)}: {r.stderr}")


class Etcd(Process):
    def __init__(self, workdir: Path):
        self.client, peer = free_ports(2)
        super().__init__("etcd", [
            "etcd", "--name", "t", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://{HOST}:{self.client}", "--advertise-client-urls", f"http://{HOST}:{self.client}",
            "--listen-peer-urls", f"http://{HOST}:{peer}", "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
            "--initial-cluster", f"t=http://{HOST}:{peer}", "--log-level", "warn",
        ], workdir)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise HarnessError(f"etcd exited\n{self.tail()}")
            try:
                if httpx.get(f"http://{HOST}:{self.client}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise HarnessError(f"etcd not healthy after {timeout}s\n{self.tail()}")


class KubeApi(Process):
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bin_dir = kube_binaries()
        (self.port,) = free_ports(1)
        self.url = f"https://{HOST}:{self.port}"
        self.tokens = {"admin": secrets.token_urlsafe(24)}
        for ns, sa in SIDECAR_ACCOUNTS:
            self.tokens[f"system:serviceaccount:{ns}:{sa}"] = secrets.token_urlsafe(24)
        self.etcd = Etcd(self.workdir)
        self._discovery: dict[str, dict[str, dict[str, Any]]] = {}
        super().__init__("kube-apiserver", [], self.workdir)

    # -- lifecycle ------------------------------------------------------------------------------

    def _files(self) -> None:
        w = self.workdir
        # A throwaway CA and the serving certificate it signs (rustls refuses a CA certificate
        # used as the server's own).
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mcpgw test kube CA",
                "-keyout", "ca.key", "-out", "ca.crt", cwd=w)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "serving.key",
                "-out", "serving.csr", cwd=w)
        (w / "serving.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "serving.ext", "-out", "serving.crt", cwd=w)
        openssl("genrsa", "-out", "sa.key", "2048", cwd=w)
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=w)
        lines = []
        for user, token in self.tokens.items():
            if user == "admin":
                lines.append(f'{token},admin,admin,"system:masters"')
            else:
                ns = user.split(":")[2]
                lines.append(f'{token},{user},{user},"system:serviceaccounts,system:serviceaccounts:{ns}"')
        (w / "tokens.csv").write_text("\n".join(lines) + "\n")
        os.chmod(w / "tokens.csv", 0o600)

    def spawn(self) -> "KubeApi":
        self._files()
        self.etcd.start(timeout=30)
        w = self.workdir
        self.argv = [str(self.bin_dir / "kube-apiserver"),
                     f"--etcd-servers=http://{HOST}:{self.etcd.client}",
                     f"--secure-port={self.port}", f"--bind-address={HOST}", f"--advertise-address={HOST}",
                     f"--tls-cert-file={w / 'serving.crt'}", f"--tls-private-key-file={w / 'serving.key'}",
                     f"--cert-dir={w / 'certs'}",
                     f"--token-auth-file={w / 'tokens.csv'}", "--authorization-mode=RBAC", "--anonymous-auth=false",
                     f"--service-account-key-file={w / 'sa.pub'}", f"--service-account-signing-key-file={w / 'sa.key'}",
                     "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                     "--service-cluster-ip-range=10.96.0.0/24",
                     # No Service endpoints for the API server itself (loopback is refused there).
                     "--endpoint-reconciler-type=none",
                     "--disable-admission-plugins=ServiceAccount"]
        super().spawn()
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise HarnessError(f"kube-apiserver exited ({self.returncode})\n{self.tail(60)}")
            try:
                r = self.client().get("/readyz")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.1)
        raise HarnessError(f"kube-apiserver not ready after {timeout}s: {last}\n{self.tail(60)}")

    def stop(self, timeout: float = 5.0) -> int | None:
        code = super().stop(timeout)
        self.etcd.stop(timeout)
        return code

    # -- HTTP -----------------------------------------------------------------------------------

    def client(self, user: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.workdir / "ca.crt"),
                            headers={"authorization": f"Bearer {self.tokens[user]}"}, timeout=30)

    def kubeconfig(self, path: Path, user: str) -> Path:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.url,
                                                   "certificate-authority": str(self.workdir / "ca.crt")}}],
            "users": [{"name": "u", "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
        }
        path.write_text(json.dumps(cfg))
        os.chmod(path, 0o600)
        return path

    def resource(self, api_version: str, kind: str, refresh: bool = False) -> dict[str, Any]:
        """Discovery: the resource entry (name, namespaced) of `kind` in `api_version`."""
        if refresh or api_version not in self._discovery:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            with self.client() as c:
                r = c.get(base)
            if r.status_code != 200:
                raise HarnessError(f"discovery of {api_version}: {r.status_code} {r.text[:300]}")
            self._discovery[api_version] = {res["kind"]: res for res in r.json()["resources"] if "/" not in res["name"]}
        try:
            return self._discovery[api_version][kind]
        except KeyError:
            if not refresh:
                return self.resource(api_version, kind, refresh=True)
            raise HarnessError(f"the API server does not serve {kind} in {api_version}") from None

    def path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        res = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if res["namespaced"]:
            base += f"/namespaces/{namespace or 'default'}"
        base += f"/{res['name']}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False, user: str = "admin") -> dict[str, Any]:
        """Server-side apply (create or update); raises with the server's message when refused."""
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": "mcpgw-test", "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        with self.client(user) as c:
            r = c.patch(path, params=params, content=json.dumps(obj),
                        headers={"content-type": "application/apply-patch+yaml"})
        if r.status_code not in (200, 201):
            raise HarnessError(f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}: {r.status_code} {r.text[:1500]}")
        return r.json()

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict:
        with self.client() as c:
            r = c.patch(self.path(api_version, kind, namespace, name), content=json.dumps(patch),
                        headers={"content-type": "application/merge-patch+json"})
        if r.status_code != 200:
            raise HarnessError(f"patch {kind} {namespace}/{name}: {r.status_code} {r.text[:800]}")
        return r.json()

    def json_patch(self, api_version: str, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict:
        with self.client() as c:
            r = c.patch(self.path(api_version, kind, namespace, name), content=json.dumps(ops),
                        headers={"content-type": "application/json-patch+json"})
        if r.status_code != 200:
            raise HarnessError(f"json-patch {kind} {namespace}/{name}: {r.status_code} {r.text[:800]}")
        return r.json()

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self.client() as c:
            r = c.get(self.path(api_version, kind, namespace, name))
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise HarnessError(f"get {kind} {namespace}/{name}: {r.status_code} {r.text[:300]}")
        return r.json()

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        with self.client() as c:
            r = c.delete(self.path(api_version, kind, namespace, name))
        if r.status_code not in (200, 202, 404):
            raise HarnessError(f"delete {kind} {namespace}/{name}: {r.status_code} {r.text[:300]}")

    def wait_served(self, api_version: str, kind: str, timeout: float = 60.0) -> None:
        """Until discovery lists `kind` (a CRD just created is established)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.resource(api_version, kind, refresh=True)
                return
            except HarnessError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def install_crds(api: KubeApi, files: list[Path]) -> list[tuple[str, str]]:
    """Applies every CustomResourceDefinition in `files` (multi-document YAML) and waits until each
    kind is served. Returns (apiVersion, kind) of every served version."""
    import yaml

    served = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            api.apply(doc)
            group = doc["spec"]["group"]
            for v in doc["spec"]["versions"]:
                if v.get("served"):
                    served.append((f"{group}/{v['name']}", doc["spec"]["names"]["kind"]))
    for api_version, kind in served:
        api.wait_served(api_version, kind)
    return served
