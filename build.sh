#!/usr/bin/env bash
# Builds the plugin for wasm32-wasip1 and shrinks it with wasm-opt: target/mcpgw.wasm.
#
#   ./build.sh                         build target/mcpgw.wasm
#   ./build.sh --image DIR             ... and pack it as an OCI image layout in DIR (no Docker):
#                                      DIR:compat   one tar+gzip layer holding plugin.wasm (deploy this)
#                                      DIR:artifact the two-layer Wasm artifact variant
#   ./build.sh --push REF              ... and publish DIR:compat (default DIR target/oci) to REF
#                                      (registry/repository[:tag]) with skopeo; prints REPO@sha256:...
#   --artifact                         push DIR:artifact instead of DIR:compat
#   --no-build                         pack and push target/mcpgw.wasm as it is (no cargo, no wasm-opt)
#
# Both variants are the shapes Istio's image fetcher accepts (docs/istio.md). TLS is verified on
# every push except to a loopback registry (127.0.0.0/8, localhost, [::1]), which is plain HTTP.
# Registry credentials: skopeo's own (`skopeo login REGISTRY`, or REGISTRY_AUTH_FILE).
set -euo pipefail
cd "$(dirname "$0")"

image_dir="" push_ref="" variant=compat build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --image) image_dir="${2:?--image needs a directory}"; shift 2 ;;
    --push) push_ref="${2:?--push needs a reference: registry/repository[:tag]}"; shift 2 ;;
    --artifact) variant=artifact; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see ./build.sh --help)" >&2; exit 2 ;;
  esac
done

if [ -n "$push_ref" ]; then
  ref="${push_ref#docker://}"
  case "$ref" in
    *@*) echo "build.sh: --push takes registry/repository[:tag], not a digest: $ref" >&2; exit 2 ;;
  esac
  registry="${ref%%/*}"
  [ "$registry" != "$ref" ] || {
    echo "build.sh: --push needs registry/repository[:tag], got $ref" >&2; exit 2; }
fi

out=target/mcpgw.wasm
if [ "$build" = 1 ]; then
  cargo build --release --target wasm32-wasip1 -p mcpgw
  raw=target/wasm32-wasip1/release/mcpgw.wasm
  if command -v wasm-opt >/dev/null; then
    wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
      --enable-mutable-globals "$raw" -o "$out"
  else
    echo "build.sh: wasm-opt not found, shipping the unoptimised module" >&2
    cp "$raw" "$out"
  fi
  echo "built $out ($(stat -c %s "$out") bytes)"
elif [ ! -f "$out" ]; then
  echo "build.sh: --no-build but $out does not exist; run ./build.sh first" >&2; exit 1
fi

[ -n "$image_dir" ] || [ -z "$push_ref" ] || image_dir=target/oci
[ -n "$image_dir" ] || exit 0

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
python3 scripts/oci_image.py --wasm "$out" --out "$image_dir" --version "$version" >/dev/null
echo "packed $out as OCI layout $image_dir (tags compat, artifact)"
[ -n "$push_ref" ] || exit 0

command -v skopeo >/dev/null || {
  echo "build.sh: --push needs skopeo (scripts/setup.sh --oci installs it)" >&2; exit 1; }
host="${registry%:*}"; [ "${registry#\[}" = "$registry" ] || host="${registry%]*}]"
tls=()
case "$host" in
  127.*|localhost|'[::1]') tls=(--dest-tls-verify=false) ;;
esac
last="${ref##*/}"
repo="$ref"; [ "${last%:*}" = "$last" ] || repo="${ref%:*}"
digestfile=$(mktemp)
trap 'rm -f "$digestfile"' EXIT
skopeo copy --quiet --preserve-digests "${tls[@]}" --digestfile "$digestfile" \
  "oci:$image_dir:$variant" "docker://$ref" >&2
digest=$(cat "$digestfile")
echo "pushed $variant image to $ref" >&2
echo "$repo@$digest"
