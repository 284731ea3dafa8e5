//! The pure half of Kubernetes mode: from the objects the watches hold (as JSON) to the servers
//! this gateway serves, and a verdict for every registration attached to it.
//!
//! What makes a server (the seed guide's resources, both versions):
//! - an `MCPServerRegistration` (or the older `MCPServer`, same spec) names an `HTTPRoute` in its
//!   `targetRef`; the route's first `hostnames` entry is the `:authority` the plugin sets on the
//!   server's calls (`github.mcp.local`), its first rule's first `backendRef` is the upstream:
//!   `kind: Hostname` (Istio, `networking.istio.io`) names the host, `kind: Service` a Service
//!   (an `ExternalName` Service stands for its `externalName`);
//! - a `ServiceEntry` naming that host gives the protocol of the port (`HTTPS`/`TLS`: https) and,
//!   with `resolution: STATIC`, the address to connect to (its first endpoint);
//! - `credentialRef` names a key of a Secret in the registration's namespace labelled
//!   `mcp.kagenti.com/credential=true`; its value is sent as `authorization` as it is (the guide's
//!   Secret holds `Bearer <PAT>`);
//! - the route must attach (`parentRefs`) to this sidecar's Gateway, and an `MCPGatewayExtension`
//!   must target that Gateway (the older `MCPServer` predates extensions and needs none).
//!
//! Conflicts are settled by age: the older registration keeps a tool prefix or a server name.

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

pub const GROUP: &str = "mcp.kagenti.com";
pub const VERSION: &str = "v1alpha1";
pub const CREDENTIAL_LABEL: &str = "mcp.kagenti.com/credential";
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// A Gateway (or any namespaced object).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The two registration kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Registration,
    LegacyServer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Registration => "MCPServerRegistration",
            Kind::LegacyServer => "MCPServer",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Registration => "mcpserverregistrations",
            Kind::LegacyServer => "mcpservers",
        }
    }
}

/// One registration object: its kind and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegKey {
    pub kind: Kind,
    pub key: ObjectKey,
}

impl std::fmt::Display for RegKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.key)
    }
}

/// Everything the watches hold, as JSON objects (`metadata`, `spec`, ...).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub registrations: Vec<(Kind, Value)>,
    pub routes: Vec<Value>,
    pub service_entries: Vec<Value>,
    pub services: Vec<Value>,
    pub extensions: Vec<Value>,
    /// Only the Secrets carrying the credential label (the watch's label selector).
    pub secrets: Vec<Value>,
    /// `MCPVirtualServer` objects (every namespace; every gateway serves them all).
    pub virtual_servers: Vec<Value>,
}

/// An `MCPVirtualServer`: named `<namespace>/<name>` in the document's `virtual_servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVirtual {
    pub key: ObjectKey,
    pub generation: i64,
    pub description: Option<String>,
    pub tools: Vec<String>,
    /// Absent: every prompt.
    pub prompts: Option<Vec<String>>,
}

/// The virtual servers of the snapshot, oldest first (the file's own virtual servers win a name).
pub fn virtual_servers(snap: &Snapshot) -> Vec<PlannedVirtual> {
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v.and_then(Value::as_array).map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
    };
    let mut out: Vec<(String, PlannedVirtual)> = snap
        .virtual_servers
        .iter()
        .filter_map(|v| {
            let key = key_of(v)?;
            Some((
                s(v, &["metadata", "creationTimestamp"])
                    .unwrap_or("")
                    .to_string(),
                PlannedVirtual {
                    key,
                    generation: v
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    description: s(v, &["spec", "description"]).map(str::to_string),
                    tools: strings(v.pointer("/spec/tools")).unwrap_or_default(),
                    prompts: strings(v.pointer("/spec/prompts")),
                },
            ))
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1.key).cmp(&(&b.0, &b.1.key)));
    out.into_iter().map(|(_, v)| v).collect()
}

/// A server of this gateway, ready for the servers document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub reg: RegKey,
    pub name: String,
    pub prefix: String,
    pub enabled: bool,
    pub url: String,
    /// The route's hostname: the plugin's `:authority` for this server.
    pub authority: String,
    /// The `authorization` value (the Secret's value as it is).
    pub credential: Option<String>,
    /// Istio's outbound cluster of the backend (`outbound|443||api.githubcopilot.com`): where the
    /// plugin sends its own requests to the server (upstream `initialize`, `DELETE`) in a mesh.
    pub cluster: String,
}

/// Why a registration of this gateway is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// In age order.
    pub servers: Vec<Planned>,
    /// Registrations of this gateway left out, and why.
    pub refused: BTreeMap<RegKey, Refusal>,
    /// Every registration this gateway owns (served or refused), with its generation.
    pub owned: BTreeMap<RegKey, i64>,
    /// Every `MCPVirtualServer`, oldest first.
    pub virtual_servers: Vec<PlannedVirtual>,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn key_of(v: &Value) -> Option<ObjectKey> {
    Some(ObjectKey {
        namespace: s(v, &["metadata", "namespace"])?.to_string(),
        name: s(v, &["metadata", "name"])?.to_string(),
    })
}

fn find<'a>(list: &'a [Value], key: &ObjectKey) -> Option<&'a Value> {
    list.iter().find(|v| key_of(v).as_ref() == Some(key))
}

fn refuse(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

/// Does the route attach to `gateway`?
fn attaches(route: &Value, route_ns: &str, gateway: &ObjectKey) -> bool {
    let Some(parents) = route.pointer("/spec/parentRefs").and_then(Value::as_array) else {
        return false;
    };
    parents.iter().any(|p| {
        let group = s(p, &["group"]).unwrap_or(GATEWAY_API_GROUP);
        let kind = s(p, &["kind"]).unwrap_or("Gateway");
        let ns = s(p, &["namespace"]).unwrap_or(route_ns);
        group == GATEWAY_API_GROUP
            && kind == "Gateway"
            && ns == gateway.namespace
            && s(p, &["name"]) == Some(gateway.name.as_str())
    })
}

/// Is there an `MCPGatewayExtension` targeting `gateway`?
pub fn extended(extensions: &[Value], gateway: &ObjectKey) -> bool {
    extensions.iter().any(|e| {
        let Some(ext_ns) = s(e, &["metadata", "namespace"]) else {
            return false;
        };
        let t = |f: &str| s(e, &["spec", "targetRef", f]);
        t("kind").unwrap_or("Gateway") == "Gateway"
            && t("group").unwrap_or(GATEWAY_API_GROUP) == GATEWAY_API_GROUP
            && t("namespace").unwrap_or(ext_ns) == gateway.namespace
            && t("name") == Some(gateway.name.as_str())
    })
}

/// Where the route's backend is: `(scheme, host, port)`.
fn backend(
    route: &Value,
    route_ns: &str,
    snap: &Snapshot,
) -> Result<(bool, String, u16, String), Refusal> {
    let route_key = format!(
        "{route_ns}/{}",
        s(route, &["metadata", "name"]).unwrap_or("")
    );
    let backend = route
        .pointer("/spec/rules/0/backendRefs/0")
        .ok_or_else(|| {
            refuse(
                "BackendNotFound",
                format!("HTTPRoute {route_key} has no backendRefs in its first rule"),
            )
        })?;
    let name = s(backend, &["name"]).unwrap_or_default().to_string();
    let port = backend
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    let kind = s(backend, &["kind"]).unwrap_or("Service");
    let (host, port, mut tls) = match kind {
        "Hostname" => {
            let port = port.ok_or_else(|| {
                refuse(
                    "BackendNotFound",
                    format!("HTTPRoute {route_key}: the Hostname backendRef {name} has no port"),
                )
            })?;
            (name, port, port == 443)
        }
        "Service" => {
            let ns = s(backend, &["namespace"]).unwrap_or(route_ns).to_string();
            let key = ObjectKey {
                namespace: ns.clone(),
                name: name.clone(),
            };
            let svc = find(&snap.services, &key).ok_or_else(|| {
                refuse(
                    "BackendNotFound",
                    format!("HTTPRoute {route_key}: Service {key} (its backendRef) not found"),
                )
            })?;
            let port = port.ok_or_else(|| {
                refuse(
                    "BackendNotFound",
                    format!("HTTPRoute {route_key}: the backendRef to Service {key} has no port"),
                )
            })?;
            let app_https = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|p| {
                    p.get("port").and_then(Value::as_u64) == Some(u64::from(port))
                        && matches!(s(p, &["appProtocol"]), Some("https") | Some("HTTPS"))
                });
            let host = match s(svc, &["spec", "type"]) {
                Some("ExternalName") => s(svc, &["spec", "externalName"])
                    .ok_or_else(|| {
                        refuse(
                            "BackendNotFound",
                            format!("Service {key} is ExternalName without externalName"),
                        )
                    })?
                    .to_string(),
                _ => format!("{name}.{ns}.svc.cluster.local"),
            };
            (host, port, app_https || port == 443)
        }
        other => {
            return Err(refuse(
                "BackendNotFound",
                format!(
                    "HTTPRoute {route_key}: backendRef kind {other:?} is not supported \
                     (Service or Istio's Hostname)"
                ),
            ))
        }
    };
    let cluster = format!("outbound|{port}||{host}");
    // A ServiceEntry for the host: the port's protocol, and with STATIC resolution its address.
    let mut connect = (host.clone(), port);
    if let Some(se) = snap.service_entries.iter().find(|se| {
        se.pointer("/spec/hosts")
            .and_then(Value::as_array)
            .is_some_and(|hosts| hosts.iter().any(|h| h.as_str() == Some(host.as_str())))
    }) {
        let se_port = se
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("number").and_then(Value::as_u64) == Some(u64::from(port)));
        if let Some(p) = se_port {
            tls = matches!(s(p, &["protocol"]), Some("HTTPS") | Some("TLS"));
        }
        if s(se, &["spec", "resolution"]) == Some("STATIC") {
            if let Some(ep) = se.pointer("/spec/endpoints/0") {
                let address = s(ep, &["address"]).unwrap_or(&host).to_string();
                let ep_port = se_port
                    .and_then(|p| s(p, &["name"]))
                    .and_then(|pn| ep.pointer(&format!("/ports/{pn}")))
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(port);
                connect = (address, ep_port);
            }
        }
    }
    Ok((tls, connect.0, connect.1, cluster))
}

fn credential(reg: &Value, ns: &str, snap: &Snapshot) -> Result<Option<String>, Refusal> {
    let Some(name) = s(reg, &["spec", "credentialRef", "name"]) else {
        return Ok(None);
    };
    let key = s(reg, &["spec", "credentialRef", "key"]).unwrap_or("token");
    let secret_key = ObjectKey {
        namespace: ns.into(),
        name: name.into(),
    };
    let secret = find(&snap.secrets, &secret_key).ok_or_else(|| {
        refuse(
            "CredentialRefused",
            format!(
                "Secret {secret_key} is not labelled {CREDENTIAL_LABEL}=true (or does not exist): \
                 the gateway reads only labelled credential Secrets; \
                 kubectl label secret -n {ns} {name} {CREDENTIAL_LABEL}=true"
            ),
        )
    })?;
    // The watch's selector already filters; a Secret relabelled meanwhile is refused too.
    if s(secret, &["metadata", "labels", CREDENTIAL_LABEL]) != Some("true") {
        return Err(refuse(
            "CredentialRefused",
            format!("Secret {secret_key} is not labelled {CREDENTIAL_LABEL}=true"),
        ));
    }
    let encoded = s(secret, &["data", key]).ok_or_else(|| {
        refuse(
            "CredentialRefused",
            format!("Secret {secret_key} has no key {key:?}"),
        )
    })?;
    let bytes = STANDARD.decode(encoded).map_err(|_| {
        refuse(
            "CredentialRefused",
            format!("Secret {secret_key} key {key:?} is not valid base64"),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        refuse(
            "CredentialRefused",
            format!("Secret {secret_key} key {key:?} is not UTF-8"),
        )
    })?;
    let text = text.trim();
    if text.is_empty() || text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(refuse(
            "CredentialRefused",
            format!("Secret {secret_key} key {key:?} is empty or holds control characters"),
        ));
    }
    Ok(Some(text.to_string()))
}

/// The servers of `gateway` and the verdicts on its registrations.
pub fn plan(snap: &Snapshot, gateway: &ObjectKey) -> Plan {
    let mut plan = Plan::default();
    let has_extension = extended(&snap.extensions, gateway);
    // Oldest first: the older registration keeps a name or a prefix.
    let mut regs: Vec<(&str, Kind, &Value)> = snap
        .registrations
        .iter()
        .map(|(k, v)| {
            (
                s(v, &["metadata", "creationTimestamp"]).unwrap_or(""),
                *k,
                v,
            )
        })
        .collect();
    regs.sort_by(|a, b| (a.0, a.1, key_of(a.2)).cmp(&(b.0, b.1, key_of(b.2))));
    let mut names: BTreeMap<String, RegKey> = BTreeMap::new();
    let mut prefixes: BTreeMap<String, RegKey> = BTreeMap::new();
    let mut authorities: BTreeSet<String> = BTreeSet::new();
    let mut clusters: BTreeMap<String, RegKey> = BTreeMap::new();
    for (_, kind, reg) in regs {
        let Some(key) = key_of(reg) else { continue };
        let rk = RegKey { kind, key };
        let ns = rk.key.namespace.as_str();
        let generation = reg
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        // The route first: it decides which gateway the registration belongs to.
        let t = |f: &str| s(reg, &["spec", "targetRef", f]);
        let route_ns = t("namespace").unwrap_or(ns).to_string();
        let route_key = ObjectKey {
            namespace: route_ns.clone(),
            name: t("name").unwrap_or_default().to_string(),
        };
        let route = find(&snap.routes, &route_key);
        match route {
            Some(r) if !attaches(r, &route_ns, gateway) => continue,
            None => {
                // Nobody can tell which gateway it belongs to; every sidecar says why.
                plan.owned.insert(rk.clone(), generation);
                let message = if t("kind").unwrap_or("HTTPRoute") != "HTTPRoute"
                    || t("group").unwrap_or(GATEWAY_API_GROUP) != GATEWAY_API_GROUP
                {
                    "spec.targetRef must name a gateway.networking.k8s.io HTTPRoute".to_string()
                } else {
                    format!("HTTPRoute {route_key} (spec.targetRef) not found")
                };
                plan.refused.insert(rk, refuse("RouteNotFound", message));
                continue;
            }
            Some(_) => {}
        }
        let Some(route) = route else { continue };
        plan.owned.insert(rk.clone(), generation);
        if kind == Kind::Registration && !has_extension {
            plan.refused.insert(
                rk,
                refuse(
                    "NoGatewayExtension",
                    format!("no MCPGatewayExtension targets Gateway {gateway}"),
                ),
            );
            continue;
        }
        let credential = match credential(reg, ns, snap) {
            Ok(c) => c,
            Err(r) => {
                plan.refused.insert(rk, r);
                continue;
            }
        };
        let name = rk.key.name.clone();
        if let Some(owner) = names.get(&name.to_ascii_lowercase()) {
            plan.refused.insert(
                rk.clone(),
                refuse(
                    "NameConflict",
                    format!("server name {name:?} is already used by {owner}"),
                ),
            );
            continue;
        }
        let prefix = s(reg, &["spec", "toolPrefix"])
            .or_else(|| s(reg, &["spec", "prefix"]))
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name}_"));
        if let Some(owner) = prefixes.get(&prefix) {
            plan.refused.insert(
                rk.clone(),
                refuse(
                    "PrefixConflict",
                    format!("toolPrefix {prefix:?} is already used by {owner}"),
                ),
            );
            continue;
        }
        let Some(authority) = route
            .pointer("/spec/hostnames/0")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
        else {
            plan.refused.insert(
                rk,
                refuse(
                    "RouteNotFound",
                    format!(
                        "HTTPRoute {route_key} has no hostnames: the plugin routes by hostname"
                    ),
                ),
            );
            continue;
        };
        if authorities.contains(&authority) {
            plan.refused.insert(
                rk,
                refuse(
                    "HostnameConflict",
                    format!("hostname {authority} (HTTPRoute {route_key}) already routes another server"),
                ),
            );
            continue;
        }
        let (tls, host, port, cluster) = match backend(route, &route_ns, snap) {
            Ok(b) => b,
            Err(r) => {
                plan.refused.insert(rk, r);
                continue;
            }
        };
        if let Some(owner) = clusters.get(&cluster) {
            plan.refused.insert(
                rk.clone(),
                refuse(
                    "BackendConflict",
                    format!("backend {cluster} is already the server of {owner}"),
                ),
            );
            continue;
        }
        let path = s(reg, &["spec", "path"]).unwrap_or("/mcp");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let scheme = if tls { "https" } else { "http" };
        names.insert(name.to_ascii_lowercase(), rk.clone());
        prefixes.insert(prefix.clone(), rk.clone());
        authorities.insert(authority.clone());
        clusters.insert(cluster.clone(), rk.clone());
        plan.servers.push(Planned {
            enabled: s(reg, &["spec", "state"]) != Some("Disabled"),
            url: format!("{scheme}://{host}:{port}{path}"),
            reg: rk,
            name,
            prefix,
            authority,
            credential,
            cluster,
        });
    }
    plan.virtual_servers = virtual_servers(snap);
    plan
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gw() -> ObjectKey {
        ObjectKey::parse("gateway-system/mcp-gateway").unwrap()
    }

    fn route(name: &str, host: &str, gateway: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "mcp-test"}, "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway, "namespace": "gateway-system"}],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": "api.githubcopilot.com", "kind": "Hostname", "group": "networking.istio.io", "port": 443}]}]}})
    }

    fn reg(name: &str, prefix: &str, route: &str, created: &str) -> (Kind, Value) {
        (
            Kind::Registration,
            json!({"metadata": {"name": name, "namespace": "mcp-test", "generation": 1, "creationTimestamp": created},
               "spec": {"toolPrefix": prefix, "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route},
                        "credentialRef": {"name": "github-token", "key": "token"}}}),
        )
    }

    fn secret(labelled: bool, value: &str) -> Value {
        let labels = if labelled {
            json!({CREDENTIAL_LABEL: "true"})
        } else {
            json!({})
        };
        json!({"metadata": {"name": "github-token", "namespace": "mcp-test", "labels": labels},
               "data": {"token": STANDARD.encode(value)}})
    }

    fn extension() -> Value {
        json!({"metadata": {"name": "ext", "namespace": "gateway-system"},
               "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mcp-gateway"}}})
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            registrations: vec![reg(
                "github",
                "github_",
                "github-mcp-external",
                "2026-01-01T00:00:00Z",
            )],
            routes: vec![route(
                "github-mcp-external",
                "github.mcp.local",
                "mcp-gateway",
            )],
            service_entries: vec![
                json!({"metadata": {"name": "se", "namespace": "mcp-test"}, "spec": {
                "hosts": ["api.githubcopilot.com"], "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
                "resolution": "DNS"}}),
            ],
            services: vec![],
            extensions: vec![extension()],
            secrets: vec![secret(true, "Bearer ghp_x")],
            virtual_servers: vec![],
        }
    }

    #[test]
    fn the_seed_guide_makes_one_server() {
        let plan = plan(&snapshot(), &gw());
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        let s = &plan.servers[0];
        assert_eq!(s.name, "github");
        assert_eq!(s.prefix, "github_");
        assert_eq!(s.authority, "github.mcp.local");
        assert_eq!(s.url, "https://api.githubcopilot.com:443/mcp");
        assert_eq!(s.credential.as_deref(), Some("Bearer ghp_x"));
        assert_eq!(s.cluster, "outbound|443||api.githubcopilot.com");
    }

    #[test]
    fn a_static_service_entry_gives_the_address() {
        let mut snap = snapshot();
        snap.service_entries[0]["spec"]["resolution"] = json!("STATIC");
        snap.service_entries[0]["spec"]["endpoints"] =
            json!([{"address": "127.0.0.1", "ports": {"https": 18443}}]);
        let plan = plan(&snap, &gw());
        assert_eq!(plan.servers[0].url, "https://127.0.0.1:18443/mcp");
    }

    #[test]
    fn an_external_name_service_stands_for_its_host() {
        let mut snap = snapshot();
        snap.routes[0]["spec"]["rules"][0]["backendRefs"] = json!([{"group": "", "kind": "Service", "name": "api-githubcopilot-com", "namespace": "mcp-test", "port": 443}]);
        snap.services.push(
            json!({"metadata": {"name": "api-githubcopilot-com", "namespace": "mcp-test"},
            "spec": {"type": "ExternalName", "externalName": "api.githubcopilot.com",
                     "ports": [{"name": "https", "port": 443, "appProtocol": "https"}]}}),
        );
        assert_eq!(
            plan(&snap, &gw()).servers[0].url,
            "https://api.githubcopilot.com:443/mcp"
        );
    }

    #[test]
    fn an_unlabelled_secret_is_refused_with_the_reason() {
        let mut snap = snapshot();
        snap.secrets = vec![];
        let plan = plan(&snap, &gw());
        assert!(plan.servers.is_empty());
        let r = plan.refused.values().next().unwrap();
        assert_eq!(r.reason, "CredentialRefused");
        assert!(
            r.message
                .contains("not labelled mcp.kagenti.com/credential=true"),
            "{}",
            r.message
        );
        snap.secrets = vec![secret(false, "Bearer x")];
        assert_eq!(
            super::plan(&snap, &gw())
                .refused
                .values()
                .next()
                .unwrap()
                .reason,
            "CredentialRefused"
        );
    }

    #[test]
    fn the_older_registration_keeps_its_prefix() {
        let mut snap = snapshot();
        snap.registrations.push(reg(
            "github2",
            "github_",
            "github-mcp-external",
            "2026-02-01T00:00:00Z",
        ));
        let plan = plan(&snap, &gw());
        assert_eq!(plan.servers.len(), 1);
        assert_eq!(plan.servers[0].name, "github");
        let (k, r) = plan.refused.iter().next().unwrap();
        assert_eq!(k.key.name, "github2");
        assert_eq!(r.reason, "PrefixConflict");
    }

    #[test]
    fn other_gateways_registrations_are_not_ours() {
        let mut snap = snapshot();
        snap.routes[0] = route("github-mcp-external", "github.mcp.local", "team-b-gateway");
        let plan = plan(&snap, &gw());
        assert!(plan.servers.is_empty() && plan.refused.is_empty() && plan.owned.is_empty());
    }

    #[test]
    fn a_registration_needs_an_extension_on_the_gateway() {
        let mut snap = snapshot();
        snap.extensions.clear();
        let plan = plan(&snap, &gw());
        assert_eq!(
            plan.refused.values().next().unwrap().reason,
            "NoGatewayExtension"
        );
        // The older MCPServer predates extensions.
        snap.registrations[0].0 = Kind::LegacyServer;
        assert_eq!(super::plan(&snap, &gw()).servers.len(), 1);
    }

    #[test]
    fn virtual_servers_are_named_namespace_slash_name() {
        let mut snap = snapshot();
        snap.virtual_servers.push(
            json!({"metadata": {"name": "readers", "namespace": "team-a", "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"description": "read only", "tools": ["github_get_me"]}}),
        );
        let v = virtual_servers(&snap);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key.to_string(), "team-a/readers");
        assert_eq!(v[0].generation, 2);
        assert_eq!(v[0].tools, vec!["github_get_me".to_string()]);
        assert_eq!(v[0].prompts, None);
        assert_eq!(v[0].description.as_deref(), Some("read only"));
    }

    #[test]
    fn a_missing_route_is_reported() {
        let mut snap = snapshot();
        snap.routes.clear();
        let plan = plan(&snap, &gw());
        assert_eq!(
            plan.refused.values().next().unwrap().reason,
            "RouteNotFound"
        );
    }
}
