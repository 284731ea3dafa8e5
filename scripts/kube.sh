#!/usr/bin/env bash
# Builds the real Kubernetes API server the kube tests run (tests/kube), idempotently:
#   kube-apiserver from the Go module proxy: a scratch module requiring k8s.io/kubernetes $KUBE_VERSION,
#     with every staging replace of that version's go.mod (`k8s.io/<m> => ./staging/src/k8s.io/<m>`)
#     pointed at the published k8s.io/<m> v0.<minor>.<patch>; `go build -trimpath -ldflags='-s -w'`.
#   etcd: Debian's etcd-server (apt-get, only when missing).
# Binaries are cached under ~/.cache/mcpgw/kube/<version>/ (MCPGW_CACHE overrides ~/.cache/mcpgw), so
# only the first run on a machine pays the build (build time recorded in build-seconds).
# Prints the cache folder on stdout. Usage: scripts/kube.sh [--print-dir]
set -euo pipefail
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
CACHE=${MCPGW_CACHE:-$HOME/.cache/mcpgw}/kube/$KUBE_VERSION
if [ "${1:-}" = "--print-dir" ]; then echo "$CACHE"; exit 0; fi

if ! command -v etcd >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # policy-rc.d 101: the package must not start a system-wide etcd; the tests start their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server || { $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
    $SUDO rm -f /usr/sbin/policy-rc.d
  else
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server
  fi
fi

command -v go >/dev/null || { echo "kube.sh: Go >= 1.26 is needed to build kube-apiserver (not found)" >&2; exit 1; }
if [ ! -x "$CACHE/kube-apiserver" ]; then
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  staging=v0.${KUBE_VERSION#v1.}
  start=$(date +%s)
  curl -fsS "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$KUBE_VERSION.mod" -o "$work/kubernetes.mod"
  {
    echo "module mcpgw.local/kube-apiserver"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$work/kubernetes.mod"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Only staging modules k8s.io/kubernetes requires (the sample-* ones are replaced but never
    # required, and not published).
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$work/kubernetes.mod"); do
      if grep -Eq "^\s*$m v" "$work/kubernetes.mod"; then echo "	$m => $m $staging"; fi
    done
    echo ")"
  } > "$work/go.mod"
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  (cd "$work" && go mod tidy >&2 && \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2)
  mv "$work/kube-apiserver" "$CACHE/kube-apiserver"
  echo $(( $(date +%s) - start )) > "$CACHE/build-seconds"
  echo "kube.sh: built kube-apiserver $KUBE_VERSION in $(cat "$CACHE/build-seconds") s into $CACHE" >&2
fi
"$CACHE/kube-apiserver" --version >&2
echo "$CACHE"
