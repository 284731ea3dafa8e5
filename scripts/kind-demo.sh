#!/usr/bin/env bash
# The seed guide ("Connecting to External MCP Servers") with this gateway on a kind cluster, for
# users who have Docker (or Podman) and network access. NOT RUN on the project's machines (no
# container engine there): tests/kube runs the same resources against a real kube-apiserver instead.
#
#   GITHUB_PAT=ghp_... scripts/kind-demo.sh            # create, install, apply the guide, check
#   scripts/kind-demo.sh --delete                      # delete the cluster
#
# Needs: kind, kubectl (>= 1.27), istioctl, docker or podman, cargo, python3. Images are loaded into
# kind directly (no registry) except the plugin, which the istio-agent pulls by digest from a local
# registry container (kind-registry:5000, the kind docs' local-registry recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-mcpgw}
REG_NAME=kind-registry
REG_PORT=${REG_PORT:-5001}
ENGINE=${ENGINE:-docker}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.3.0}

if [ "${1:-}" = "--delete" ]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi
: "${GITHUB_PAT:?set GITHUB_PAT to a GitHub token with read:user (step 0 of the guide)}"
for tool in kind kubectl istioctl "$ENGINE" cargo; do
  command -v "$tool" >/dev/null || { echo "kind-demo: $tool is needed" >&2; exit 1; }
done

# 1. A registry on localhost:$REG_PORT reachable from the cluster as kind-registry:5000.
if [ "$($ENGINE inspect -f '{{.State.Running}}' $REG_NAME 2>/dev/null || true)" != true ]; then
  $ENGINE run -d --restart=always -p "127.0.0.1:$REG_PORT:5000" --network bridge --name $REG_NAME registry:2
fi
if ! kind get clusters | grep -qx "$CLUSTER"; then
  cat <<EOF | kind create cluster --name "$CLUSTER" --config=-
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."kind-registry:5000"]
    endpoint = ["http://$REG_NAME:5000"]
nodes:
- role: control-plane
  extraPortMappings:
  - {containerPort: 30080, hostPort: 8001, listenAddress: 127.0.0.1}
EOF
  $ENGINE network connect kind $REG_NAME 2>/dev/null || true
fi

# 2. Istio (gateway API mode) and the Gateway API CRDs; the guide's Gateway with a *.mcp.local
#    listener, exposed on 127.0.0.1:8001 (the guide's curl URL).
kubectl apply -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
istioctl install -y --set profile=minimal
kubectl create namespace gateway-system --dry-run=client -o yaml | kubectl apply -f -
kubectl create namespace mcp-test --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mcp-gateway, namespace: gateway-system}
spec:
  gatewayClassName: istio
  listeners:
  - {name: mcp, hostname: "mcp.127-0-0-1.sslip.io", port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: servers, hostname: "*.mcp.local", port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
EOF
kubectl -n gateway-system wait --for=condition=Programmed gateway/mcp-gateway --timeout=180s
kubectl -n gateway-system patch service mcp-gateway-istio --type merge \
  -p '{"spec":{"type":"NodePort","ports":[{"name":"http","port":8080,"nodePort":30080}]}}' || true

# 3. The plugin image (by digest) and the sidecar image (with Kubernetes mode).
ref=$(./build.sh --push "localhost:$REG_PORT/mcpgw/plugin:demo" | tail -1)
plugin_url="oci://kind-registry:5000/${ref#localhost:$REG_PORT/}"
$ENGINE build -f Containerfile --build-arg CARGO_FEATURES=kube -t mcpgw/sidecar:demo .
kind load docker-image mcpgw/sidecar:demo --name "$CLUSTER"

# 4. The install: Kubernetes mode overlay (CRDs, RBAC, sidecar with --kube-gateway, EnvoyFilter).
wasmplugin/generate-secrets.sh wasmplugin/overlays/kube/config/secrets
params=wasmplugin/overlays/kube/config/params.env
sed -i.bak -e "s#^plugin_url=.*#plugin_url=$plugin_url#" -e "s#^sidecar_image=.*#sidecar_image=mcpgw/sidecar:demo#" "$params"
kubectl apply -f wasmplugin/crds/
kubectl apply -k wasmplugin/overlays/kube
kubectl apply -f - <<EOF
apiVersion: mcp.kagenti.com/v1alpha1
kind: MCPGatewayExtension
metadata: {name: mcp-gateway, namespace: gateway-system}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: mcp-gateway}
EOF
kubectl -n gateway-system rollout status deploy/mcpgw-sidecar --timeout=180s

# 5. The guide's YAML, verbatim (the newer version), with your PAT.
sed "s/\$GITHUB_PAT/$GITHUB_PAT/" tests/kube/fixtures/guide-mcpserverregistration.yaml \
  | python3 -c 'import sys,yaml; [print("---\n"+yaml.safe_dump(d)) for d in yaml.safe_load_all(sys.stdin) if d and d["kind"]!="AuthPolicy"]' \
  | kubectl apply -f -

# 6. The guide's checks.
echo "Waiting for GitHub tools to be discovered..."
until kubectl logs -n gateway-system deploy/mcpgw-sidecar | grep "Discovered.*tools.*github"; do sleep 5; done
kubectl get mcpsrs -n mcp-test
curl -sS -X POST http://mcp.127-0-0-1.sslip.io:8001/mcp -H "Content-Type: application/json" \
  -H "Accept: application/json, text/event-stream" \
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}' \
  -D /tmp/mcpgw-demo.headers -o /dev/null
session=$(awk 'tolower($1)=="mcp-session-id:"{print $2}' /tmp/mcpgw-demo.headers | tr -d '\r')
curl -sS -X POST http://mcp.127-0-0-1.sslip.io:8001/mcp -H "Content-Type: application/json" \
  -H "Accept: application/json, text/event-stream" -H "Mcp-Session-Id: $session" -H "MCP-Protocol-Version: 2025-06-18" \
  -d '{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}' | grep -o '"github_[a-z_]*"' | sort -u | head
echo "Next: npx @modelcontextprotocol/inspector, Streamable HTTP, http://mcp.127-0-0-1.sslip.io:8001/mcp, run github_get_me"
