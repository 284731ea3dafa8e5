#!/usr/bin/env python3
"""Packs a Wasm module as an OCI image layout that Istio's image fetcher accepts (no Docker).

    oci_image.py --wasm target/mcpgw.wasm --out DIR [--version 0.1.0]

writes DIR as an OCI image layout (https://github.com/opencontainers/image-spec, layout 1.0.0)
holding two images of the same module, named by `org.opencontainers.image.ref.name`:

  compat    the "compat" variant Istio accepts (istio pkg/wasm/imagefetcher.go,
            extractOCIStandardImage): OCI manifest and config media types, ONE layer
            `application/vnd.oci.image.layer.v1.tar+gzip` whose tar holds `plugin.wasm`.
            The shape any OCI registry and tool handles; the one to deploy.
  artifact  the two-layer "oci" variant (extractOCIArtifactImage): config
            `application/vnd.module.wasm.config.v1+json`, layers
            `application/vnd.module.wasm.config.v1+json` + `application/vnd.module.wasm.content.layer.v1+wasm`
            (the raw module). Istio wants exactly two layers: the one-layer artifact that
            `oras push` makes is refused ("number of layers must be 2 but got 1").

Everything is deterministic (tar and gzip times 0, sorted JSON keys, no creation dates), so the same
module always gives the same manifest digests: a WasmPlugin pinned by digest stays valid across
rebuilds of an unchanged plugin. Standard library only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
PLUGIN_FILE = "plugin.wasm"


class Layout:
    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)

    def blob(self, data: bytes, media_type: str, annotations=None) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.root, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        desc = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if annotations:
            desc["annotations"] = annotations
        return desc


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_gz(name: str, data: bytes) -> tuple[bytes, bytes]:
    """Returns (gzip-compressed tar, uncompressed tar) holding one regular file, root-owned, time 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(tar_bytes)
    return packed.getvalue(), tar_bytes


def build(wasm: bytes, out: str, version: str, title: str, abi: str, root_id: str) -> dict:
    layout = Layout(out)
    annotations = {"org.opencontainers.image.title": title}
    if version:
        annotations["org.opencontainers.image.version"] = version
    manifests = []

    # compat: one tar+gzip layer holding plugin.wasm, a plain OCI image config.
    layer_gz, layer_tar = tar_gz(PLUGIN_FILE, wasm)
    layer = layout.blob(layer_gz, OCI_LAYER_TAR_GZIP)
    config = layout.blob(canonical({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }), OCI_CONFIG)
    manifest = layout.blob(canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [layer],
        "annotations": annotations,
    }), OCI_MANIFEST, {"org.opencontainers.image.ref.name": "compat"})
    manifests.append(manifest)

    # artifact: the Wasm artifact spec's runtime config as config and first layer, the raw module second.
    # (solo-io's module.wasm.config.Runtime: informational, Istio reads only the media types.)
    runtime = canonical({"type": "envoy_proxy", "abiVersions": [abi], "config": {"rootIds": [root_id]}})
    wasm_config = layout.blob(runtime, WASM_CONFIG)
    content = layout.blob(wasm, WASM_CONTENT, {"org.opencontainers.image.title": PLUGIN_FILE})
    manifest = layout.blob(canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": wasm_config,
        "layers": [wasm_config, content],
        "annotations": annotations,
    }), OCI_MANIFEST, {"org.opencontainers.image.ref.name": "artifact"})
    manifests.append(manifest)

    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in manifests}


def proxy_abi(wasm: bytes) -> str:
    """The proxy-wasm ABI the module exports (`proxy_abi_version_0_2_1`), for the artifact's runtime config."""
    found = re.search(rb"proxy_abi_version_[0-9_]+", wasm)
    return found.group().decode() if found else "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", required=True, help="the module to pack")
    ap.add_argument("--out", required=True, help="OCI layout directory (replaced if it is one, or empty)")
    ap.add_argument("--version", default="", help="org.opencontainers.image.version annotation")
    ap.add_argument("--title", default="mcpgw", help="org.opencontainers.image.title annotation")
    ap.add_argument("--root-id", default="mcpgw", help="the plugin's root id (artifact runtime config)")
    args = ap.parse_args()

    with open(args.wasm, "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        print(f"oci_image: {args.wasm} is not a Wasm module", file=sys.stderr)
        return 1
    out = os.path.abspath(args.out)
    if os.path.exists(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "oci-layout")):
        print(f"oci_image: {out} exists and is not an OCI layout; refusing to replace it", file=sys.stderr)
        return 1
    # Build beside the target and swap it in, so a failed run leaves the old layout intact and
    # no stale blob of an earlier build stays behind.
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".oci-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        digests = build(wasm, tmp, args.version, args.title, proxy_abi(wasm), args.root_id)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for tag, digest in digests.items():
        print(f"{tag}\t{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
