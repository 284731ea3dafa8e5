//! Kubernetes mode (`mcpgw-sidecar run --config FILE --kube-gateway NAMESPACE/NAME`, cargo
//! feature `kube`): the servers come from the seed guide's resources instead of the file's
//! `servers:` list.
//!
//! Watches (reflector caches, one per kind): `MCPServerRegistration` and `MCPServer`, `HTTPRoute`,
//! `MCPGatewayExtension`, `MCPVirtualServer` (each becomes the virtual server `<namespace>/<name>`
//! of the document, next to the file's), Istio `ServiceEntry`, `Service` (ExternalName backends)
//! and only the Secrets labelled `mcp.kagenti.com/credential=true` (label selector on the watch). Any change
//! reruns [`model::plan`]; its servers are added to the file's text and loaded with the same
//! [`settings::load_text`] standalone mode uses, so the plugin's own `Catalog::build` validates
//! them (a server it refuses is left out, with its reason on the registration). The engine then
//! discovers and publishes exactly as in standalone mode. Each registration of this gateway gets a
//! `Ready` condition on its status subresource (written only when it changes).
//!
//! One sidecar serves one Gateway (like the rest of the install: its own plugin token and session
//! key), named by `--kube-gateway`; the plugin's configuration names that sidecar's cluster.
//! Several replicas need no leader election: each computes the same servers and conditions from
//! the same objects, and a condition is written only when it differs from what the object has.

pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::engine::{ConfigEvent, Published, Status};
use crate::settings::{self, KeyFile, Settings};
use model::{Kind, ObjectKey, Plan, Planned, Refusal, RegKey, Snapshot};

/// Picks up edits of the configuration file (and anything missed) without an event.
const RESYNC: Duration = Duration::from_secs(2);
/// A burst of events (an `apply` of several objects) makes one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(50);

struct Stores {
    registrations: Vec<(Kind, Store<DynamicObject>, ApiResource)>,
    routes: Store<DynamicObject>,
    service_entries: Store<DynamicObject>,
    services: Store<DynamicObject>,
    extensions: Store<DynamicObject>,
    secrets: Store<DynamicObject>,
    virtual_servers: (Store<DynamicObject>, ApiResource),
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A reflector over every object of `ar` (optionally only those matching `labels`); every event
/// wakes `notify`.
fn watch_kind(
    client: &Client,
    ar: &ApiResource,
    labels: Option<&str>,
    notify: Arc<Notify>,
) -> Store<DynamicObject> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let mut config = watcher::Config::default();
    if let Some(labels) = labels {
        config = config.labels(labels);
    }
    let kind = ar.kind.clone();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut last_error: Option<String> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) && last_error.take().is_some() {
                        tracing::info!("kubernetes: watching {kind} again");
                    }
                    notify.notify_one();
                }
                Err(e) => {
                    let message = error_chain(&e);
                    if last_error.as_deref() != Some(message.as_str()) {
                        let hint = if message.contains("404") {
                            " (is its CustomResourceDefinition installed? wasmplugin/crds/, \
                             Gateway API's, Istio's)"
                        } else {
                            ""
                        };
                        tracing::warn!(
                            "kubernetes: watch of {kind} failed (retrying){hint}: {message}"
                        );
                        last_error = Some(message);
                    }
                }
            }
        }
    });
    reader
}

/// An error and its causes on one line (the client's own message is often just "Connect").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

fn values(store: &Store<DynamicObject>) -> Vec<Value> {
    store
        .state()
        .iter()
        .filter_map(|o| serde_json::to_value(&**o).ok())
        .collect()
}

impl Stores {
    fn new(client: &Client, notify: &Arc<Notify>) -> Self {
        let w =
            |ar: &ApiResource, labels: Option<&str>| watch_kind(client, ar, labels, notify.clone());
        let registrations = [Kind::Registration, Kind::LegacyServer]
            .into_iter()
            .map(|k| {
                let ar = resource(model::GROUP, model::VERSION, k.name(), k.plural());
                (k, w(&ar, None), ar)
            })
            .collect();
        let credential = format!("{}=true", model::CREDENTIAL_LABEL);
        Self {
            registrations,
            routes: w(
                &resource(model::GATEWAY_API_GROUP, "v1", "HTTPRoute", "httproutes"),
                None,
            ),
            service_entries: w(
                &resource(
                    "networking.istio.io",
                    "v1",
                    "ServiceEntry",
                    "serviceentries",
                ),
                None,
            ),
            services: w(&resource("", "v1", "Service", "services"), None),
            extensions: w(
                &resource(
                    model::GROUP,
                    model::VERSION,
                    "MCPGatewayExtension",
                    "mcpgatewayextensions",
                ),
                None,
            ),
            secrets: w(&resource("", "v1", "Secret", "secrets"), Some(&credential)),
            virtual_servers: {
                let ar = resource(
                    model::GROUP,
                    model::VERSION,
                    "MCPVirtualServer",
                    "mcpvirtualservers",
                );
                (w(&ar, None), ar)
            },
        }
    }

    async fn ready(&self) {
        let mut all: Vec<&Store<DynamicObject>> =
            self.registrations.iter().map(|(_, s, _)| s).collect();
        all.extend([
            &self.routes,
            &self.service_entries,
            &self.services,
            &self.extensions,
            &self.secrets,
            &self.virtual_servers.0,
        ]);
        for store in all {
            let _ = store.wait_until_ready().await;
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            registrations: self
                .registrations
                .iter()
                .flat_map(|(k, s, _)| values(s).into_iter().map(move |v| (*k, v)))
                .collect(),
            routes: values(&self.routes),
            service_entries: values(&self.service_entries),
            services: values(&self.services),
            extensions: values(&self.extensions),
            secrets: values(&self.secrets),
            virtual_servers: values(&self.virtual_servers.0),
        }
    }
}

/// What [`build_settings`] made of a plan.
pub struct Built {
    pub settings: Settings,
    /// Registrations the plugin's validation refused.
    pub refused: BTreeMap<RegKey, Refusal>,
    /// `MCPVirtualServer`s left out (their name is the file's own virtual server's).
    pub refused_virtual: BTreeMap<ObjectKey, Refusal>,
}

/// The file's virtual servers plus the `MCPVirtualServer`s (named `<namespace>/<name>`); one whose
/// name the file already uses is refused.
fn add_virtual_servers(
    doc: &mut serde_json::Map<String, Value>,
    plan: &Plan,
) -> BTreeMap<ObjectKey, Refusal> {
    let mut refused = BTreeMap::new();
    let mut list = doc
        .get("virtual_servers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let file_names: Vec<String> = list
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    for v in &plan.virtual_servers {
        let name = v.key.to_string();
        if file_names.contains(&name) {
            refused.insert(
                v.key.clone(),
                Refusal {
                    reason: "NameConflict",
                    message: format!(
                        "the sidecar's configuration file defines virtual server {name} itself"
                    ),
                },
            );
            continue;
        }
        let mut entry = serde_json::Map::new();
        entry.insert("name".into(), json!(name));
        entry.insert("tools".into(), json!(v.tools));
        if let Some(d) = &v.description {
            entry.insert("description".into(), json!(d));
        }
        if let Some(p) = &v.prompts {
            entry.insert("prompts".into(), json!(p));
        }
        list.push(Value::Object(entry));
    }
    if !list.is_empty() {
        doc.insert("virtual_servers".into(), Value::Array(list));
    }
    refused
}

/// The file's servers plus `plan`'s, validated server by server (the plugin's `Catalog::build`
/// through [`settings::parse`] and [`crate::catalog::check_document`]): a server that makes the
/// document invalid is refused with the reason, the others go on.
pub fn build_settings(
    path: &Path,
    text: &str,
    plan: &Plan,
    key_file: KeyFile,
) -> Result<Built, String> {
    let parsed: Value =
        yaml_serde::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc = match parsed {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        _ => return Err(format!("{}: must be a YAML mapping", path.display())),
    };
    let refused_virtual = add_virtual_servers(&mut doc, plan);
    let base_servers = doc
        .get("servers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut credentials: HashMap<String, String> = HashMap::new();
    let mut accepted: Vec<(Value, &Planned)> = Vec::new();
    let mut refused = BTreeMap::new();
    for (i, p) in plan.servers.iter().enumerate() {
        let server = match &p.credential {
            Some(c) => {
                let var = format!("MCPGW_KUBE_CREDENTIAL_{i}");
                credentials.insert(var.clone(), c.clone());
                // The Secret holds the whole value (`Bearer <PAT>` in the guide): no scheme added.
                json!({
                    "name": p.name, "url": p.url, "prefix": p.prefix, "enabled": p.enabled,
                    "credential": {"env": var, "scheme": ""},
                })
            }
            None => json!({
                "name": p.name, "url": p.url, "prefix": p.prefix, "enabled": p.enabled,
            }),
        };
        let mut candidate: Vec<Value> = base_servers.clone();
        candidate.extend(accepted.iter().map(|(v, _)| v.clone()));
        candidate.push(server.clone());
        doc.insert("servers".into(), Value::Array(candidate));
        let planned: Vec<&Planned> = accepted
            .iter()
            .map(|(_, p)| *p)
            .chain(std::iter::once(p))
            .collect();
        let env = |name: &str| credentials.get(name).cloned();
        let verdict = settings::parse(&Value::Object(doc.clone()).to_string(), &base, &env)
            .and_then(|mut s| {
                apply_authorities(&mut s, &planned);
                crate::catalog::check_document(&s)
            });
        match verdict {
            Ok(()) => accepted.push((server, p)),
            Err(message) => {
                refused.insert(
                    p.reg.clone(),
                    Refusal {
                        reason: "InvalidSpec",
                        message,
                    },
                );
            }
        }
    }
    let mut servers = base_servers;
    servers.extend(accepted.iter().map(|(v, _)| v.clone()));
    doc.insert("servers".into(), Value::Array(servers));
    let env = |name: &str| {
        credentials
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    };
    let mut settings = settings::load_text(path, &Value::Object(doc).to_string(), &env, key_file)?;
    let planned: Vec<&Planned> = accepted.iter().map(|(_, p)| *p).collect();
    apply_authorities(&mut settings, &planned);
    crate::catalog::check_document(&settings)?;
    Ok(Built {
        settings,
        refused,
        refused_virtual,
    })
}

/// The route's hostname is the server's `:authority` (standalone mode: `<name>.<suffix>`), and
/// Istio's outbound cluster of its backend its cluster (standalone: `mcpgw_srv_<name>`, which the
/// xDS files define; with `envoy.xds_dir` set they define this name instead).
fn apply_authorities(settings: &mut Settings, planned: &[&Planned]) {
    for spec in &mut settings.servers {
        if let Some(p) = planned.iter().find(|p| p.name == spec.name) {
            spec.authority = p.authority.clone();
            spec.cluster = p.cluster.clone();
        }
    }
}

/// The `Ready` condition a registration should have.
fn desired(
    rk: &RegKey,
    plan: &Plan,
    refused: &BTreeMap<RegKey, Refusal>,
    status: &Status,
) -> (bool, String, String) {
    if let Some(r) = plan.refused.get(rk).or_else(|| refused.get(rk)) {
        return (false, r.reason.to_string(), r.message.clone());
    }
    let Some(p) = plan.servers.iter().find(|p| &p.reg == rk) else {
        return (false, "Pending".into(), "not reconciled yet".into());
    };
    match status.servers.iter().find(|s| s.name == p.name) {
        Some(report) => match report.state {
            "serving" => {
                let mut message = format!(
                    "Discovered {} tools for server {} (hostname {})",
                    report.tools, p.name, p.authority
                );
                if !report.invalid_tools.is_empty() {
                    // Tool hygiene: served without them; the reasons, as the status page has them.
                    message.push_str(&format!(
                        "; {} invalid tool(s) left out: {}",
                        report.invalid_tools.len(),
                        report.invalid_tools.join("; ")
                    ));
                }
                (true, "Ready".into(), message)
            }
            "refused" if !report.invalid_tools.is_empty() => (
                false,
                "InvalidTools".into(),
                report
                    .detail
                    .clone()
                    .unwrap_or_else(|| report.invalid_tools.join("; ")),
            ),
            "disabled" => (false, "Disabled".into(), "spec.state is Disabled".into()),
            "pending" => (
                false,
                "DiscoveryPending".into(),
                format!("discovering {}", p.url),
            ),
            state => (
                false,
                "DiscoveryFailed".into(),
                format!(
                    "{} {}: {}",
                    p.url,
                    state,
                    report.detail.as_deref().unwrap_or("no detail")
                ),
            ),
        },
        None => (
            false,
            "DiscoveryPending".into(),
            format!("discovering {}", p.url),
        ),
    }
}

/// RFC 3339 (seconds, UTC), as Kubernetes writes times.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes the `Ready` condition of `obj` (kind `ar`) unless it already says the same; errors are
/// logged once per distinct message (keyed by `label`) and retried on the next reconcile.
#[allow(clippy::too_many_arguments)]
async fn write_ready(
    client: &Client,
    ar: &ApiResource,
    obj: &DynamicObject,
    key: &ObjectKey,
    label: String,
    generation: i64,
    (ready, reason, message): (bool, String, String),
    failures: &mut BTreeMap<String, String>,
) {
    let status_text = if ready { "True" } else { "False" };
    let current = obj
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .cloned();
    let field = |c: &Option<Value>, f: &str| {
        c.as_ref()
            .and_then(|c| c.get(f))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let same_status = field(&current, "status").as_deref() == Some(status_text);
    if same_status
        && field(&current, "reason").as_deref() == Some(reason.as_str())
        && field(&current, "message").as_deref() == Some(message.as_str())
        && current
            .as_ref()
            .and_then(|c| c.get("observedGeneration"))
            .and_then(Value::as_i64)
            == Some(generation)
    {
        return;
    }
    let transition = match (same_status, field(&current, "lastTransitionTime")) {
        (true, Some(t)) => t,
        _ => now_rfc3339(),
    };
    let patch = json!({"status": {"conditions": [{
        "type": "Ready",
        "status": status_text,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }]}});
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, ar);
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            failures.remove(&label);
            if ready {
                tracing::info!("{label}: Ready: {message}");
            } else {
                tracing::warn!("{label}: not ready ({reason}): {message}");
            }
        }
        Err(e) => {
            let message = error_chain(&e);
            if failures.get(&label) != Some(&message) {
                tracing::warn!("{label}: status not written: {message}");
                failures.insert(label, message);
            }
        }
    }
}

fn find_object(store: &Store<DynamicObject>, key: &ObjectKey) -> Option<Arc<DynamicObject>> {
    store.state().into_iter().find(|o| {
        o.metadata.name.as_deref() == Some(key.name.as_str())
            && o.metadata.namespace.as_deref() == Some(key.namespace.as_str())
    })
}

/// The names each `MCPVirtualServer` lists that the published catalog does not offer (the
/// plugin's own `Catalog` of the published document decides).
fn missing_names(
    body: &[u8],
    virtuals: &[model::PlannedVirtual],
) -> Option<BTreeMap<ObjectKey, Vec<String>>> {
    let catalog = serde_json::from_slice(body)
        .map_err(|e| e.to_string())
        .and_then(mcpgw_core::Catalog::build)
        .ok()?;
    Some(
        virtuals
            .iter()
            .map(|v| {
                let mut missing: Vec<String> = v
                    .tools
                    .iter()
                    .filter(|t| catalog.route(t).is_none())
                    .map(|t| format!("tool {t}"))
                    .collect();
                missing.extend(
                    v.prompts
                        .iter()
                        .flatten()
                        .filter(|p| catalog.prompt_route(p).is_none())
                        .map(|p| format!("prompt {p}")),
                );
                (v.key.clone(), missing)
            })
            .collect(),
    )
}

/// The `Ready` condition an `MCPVirtualServer` should have: the names it lists that the
/// published catalog does not offer make it `ToolsNotFound` (it still shows the others).
fn desired_virtual(
    v: &model::PlannedVirtual,
    refused: &BTreeMap<ObjectKey, Refusal>,
    missing: Option<&BTreeMap<ObjectKey, Vec<String>>>,
) -> (bool, String, String) {
    if let Some(r) = refused.get(&v.key) {
        return (false, r.reason.to_string(), r.message.clone());
    }
    let Some(missing) = missing.and_then(|m| m.get(&v.key)) else {
        return (
            false,
            "Pending".into(),
            "not in a published configuration document yet".into(),
        );
    };
    if missing.is_empty() {
        (
            true,
            "Ready".into(),
            format!(
                "Serving virtual server {} ({} tools); select it with X-Mcp-Virtualserver: {}",
                v.key,
                v.tools.len(),
                v.key
            ),
        )
    } else {
        (
            false,
            "ToolsNotFound".into(),
            format!(
                "no server of the gateway offers {} (the virtual server shows the others)",
                missing.join(", ")
            ),
        )
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_statuses(
    client: &Client,
    stores: &Stores,
    plan: &Plan,
    refused: &BTreeMap<RegKey, Refusal>,
    refused_virtual: &BTreeMap<ObjectKey, Refusal>,
    missing: Option<&BTreeMap<ObjectKey, Vec<String>>>,
    status: &Status,
    failures: &mut BTreeMap<String, String>,
) {
    for (rk, generation) in &plan.owned {
        let Some((_, store, ar)) = stores.registrations.iter().find(|(k, _, _)| *k == rk.kind)
        else {
            continue;
        };
        let Some(obj) = find_object(store, &rk.key) else {
            continue;
        };
        let verdict = desired(rk, plan, refused, status);
        write_ready(
            client,
            ar,
            &obj,
            &rk.key,
            rk.to_string(),
            *generation,
            verdict,
            failures,
        )
        .await;
    }
    let (store, ar) = &stores.virtual_servers;
    for v in &plan.virtual_servers {
        let Some(obj) = find_object(store, &v.key) else {
            continue;
        };
        let verdict = desired_virtual(v, refused_virtual, missing);
        write_ready(
            client,
            ar,
            &obj,
            &v.key,
            format!("MCPVirtualServer {}", v.key),
            v.generation,
            verdict,
            failures,
        )
        .await;
    }
}

/// Runs Kubernetes mode until the engine goes away: reconciles on every watch event, on every
/// change of the engine's status (discovery results become conditions) and every [`RESYNC`].
pub async fn run(
    config: PathBuf,
    gateway: ObjectKey,
    client: Client,
    events: mpsc::Sender<ConfigEvent>,
    mut status: watch::Receiver<Arc<Status>>,
    document: watch::Receiver<Option<Arc<Published>>>,
) {
    let notify = Arc::new(Notify::new());
    let stores = Stores::new(&client, &notify);
    tracing::info!(
        "kubernetes: serving the MCP servers of Gateway {gateway}; waiting for the caches"
    );
    stores.ready().await;
    tracing::info!("kubernetes: caches ready");
    let mut current: Option<Arc<Settings>> = None;
    let mut last_error: Option<String> = None;
    let mut last_refusals: BTreeMap<RegKey, Refusal> = BTreeMap::new();
    let mut status_failures: BTreeMap<String, String> = BTreeMap::new();
    // The plugin's view of the published document (which names a virtual server may list).
    let mut missing: Option<(String, BTreeMap<ObjectKey, Vec<String>>)> = None;
    loop {
        let plan = model::plan(&stores.snapshot(), &gateway);
        let built = std::fs::read_to_string(&config)
            .map_err(|e| format!("{}: {e}", config.display()))
            .and_then(|text| build_settings(&config, &text, &plan, KeyFile::Create));
        let mut refused = BTreeMap::new();
        let mut refused_virtual = BTreeMap::new();
        match built {
            Ok(Built {
                settings,
                refused: extra,
                refused_virtual: extra_virtual,
            }) => {
                refused = extra;
                refused_virtual = extra_virtual;
                last_error = None;
                if current.as_deref() != Some(&settings) {
                    let settings = Arc::new(settings);
                    current = Some(settings.clone());
                    if events.send(ConfigEvent::Loaded(settings)).await.is_err() {
                        return;
                    }
                }
            }
            Err(message) => {
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        "configuration rejected, the last good configuration stays in force: {message}"
                    );
                    last_error = Some(message.clone());
                    if events.send(ConfigEvent::Rejected(message)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut all = plan.refused.clone();
        all.extend(refused.clone());
        if all != last_refusals {
            for (rk, r) in &all {
                if last_refusals.get(rk) != Some(r) {
                    tracing::warn!("{rk} not served ({}): {}", r.reason, r.message);
                }
            }
            last_refusals = all;
        }
        let published = document.borrow().clone();
        if let Some(p) = published {
            let stamp = format!("{} {:?}", p.hash, plan.virtual_servers);
            if missing.as_ref().map(|(s, _)| s) != Some(&stamp) {
                missing = missing_names(&p.body, &plan.virtual_servers).map(|m| (stamp, m));
            }
        }
        let snapshot = status.borrow_and_update().clone();
        write_statuses(
            &client,
            &stores,
            &plan,
            &refused,
            &refused_virtual,
            missing.as_ref().map(|(_, m)| m),
            &snapshot,
            &mut status_failures,
        )
        .await;
        tokio::select! {
            _ = notify.notified() => {}
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn virtual_servers_join_the_files_and_the_file_keeps_its_names() {
        let dir = std::env::temp_dir().join(format!("mcpgw-k8s-vs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.yaml");
        let text = "plugin_token: {file: plugin.token}\nsession: {key_file: session.key}\n\
                    virtual_servers: [{name: team-a/readers, tools: [a_echo]}]\n";
        let virtual_server = |ns: &str, name: &str| model::PlannedVirtual {
            key: ObjectKey {
                namespace: ns.into(),
                name: name.into(),
            },
            generation: 1,
            description: Some("d".into()),
            tools: vec!["github_echo".into()],
            prompts: None,
        };
        let plan = Plan {
            virtual_servers: vec![
                virtual_server("team-a", "readers"),
                virtual_server("mcp-test", "readers"),
            ],
            ..Plan::default()
        };
        let built = build_settings(&path, text, &plan, KeyFile::Create).unwrap();
        let names: Vec<&str> = built
            .settings
            .virtual_servers
            .0
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["team-a/readers", "mcp-test/readers"]);
        assert_eq!(built.settings.virtual_servers.0[0].tools, ["a_echo"]);
        assert_eq!(
            built.settings.virtual_servers.0[1].description.as_deref(),
            Some("d")
        );
        let refused: Vec<String> = built
            .refused_virtual
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(refused, ["team-a/readers"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hygiene_reasons_reach_the_registration_condition() {
        let rk = RegKey {
            kind: Kind::Registration,
            key: ObjectKey {
                namespace: "ns".into(),
                name: "github".into(),
            },
        };
        let plan = Plan {
            servers: vec![Planned {
                reg: rk.clone(),
                name: "github".into(),
                prefix: "github_".into(),
                enabled: true,
                url: "https://api.example.test:443/mcp".into(),
                authority: "github.mcp.local".into(),
                credential: None,
                cluster: "outbound|443||api.example.test".into(),
            }],
            ..Plan::default()
        };
        let report = |state: &'static str, detail: Option<&str>| crate::catalog::ServerReport {
            name: "github".into(),
            state,
            detail: detail.map(str::to_string),
            prefix: "github_".into(),
            tools: 2,
            prompts: 0,
            resources: 0,
            server_info: None,
            invalid_tools: vec!["tool \"bad name\": invalid name".into()],
        };
        let status = |r| Status {
            servers: vec![r],
            ..Status::default()
        };
        let none = BTreeMap::new();
        let (ready, reason, message) = desired(&rk, &plan, &none, &status(report("serving", None)));
        assert!(ready);
        assert_eq!(reason, "Ready");
        assert!(
            message.contains("1 invalid tool(s) left out: tool \"bad name\""),
            "{message}"
        );
        let (ready, reason, message) = desired(
            &rk,
            &plan,
            &none,
            &status(report(
                "refused",
                Some("server \"github\" refused: 1 invalid tool(s)"),
            )),
        );
        assert!(!ready);
        assert_eq!(reason, "InvalidTools");
        assert!(message.contains("refused: 1 invalid tool(s)"), "{message}");
    }

    #[test]
    fn servers_join_the_file_and_the_plugin_validates_each() {
        let dir = std::env::temp_dir().join(format!("mcpgw-k8s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.yaml");
        let text = "plugin_token: {file: plugin.token}\nsession: {key_file: session.key}\n";
        let reg = |name: &str| RegKey {
            kind: Kind::Registration,
            key: ObjectKey {
                namespace: "ns".into(),
                name: name.into(),
            },
        };
        let planned = |name: &str, prefix: &str| Planned {
            reg: reg(name),
            name: name.into(),
            prefix: prefix.into(),
            enabled: true,
            url: "https://127.0.0.1:8443/mcp".into(),
            authority: format!("{name}.example.test"),
            credential: Some("Bearer s3cret".into()),
            cluster: format!("outbound|443||{name}.example.test"),
        };
        let plan = Plan {
            servers: vec![planned("github", "github_"), planned("bad", "has space")],
            ..Plan::default()
        };
        let Built {
            settings, refused, ..
        } = build_settings(&path, text, &plan, KeyFile::Create).unwrap();
        assert_eq!(settings.servers.len(), 1);
        let s = &settings.servers[0];
        assert_eq!(s.authority, "github.example.test");
        let headers = s.headers.as_ref().unwrap();
        assert!(headers
            .iter()
            .any(|h| h.name == "authorization" && h.value == "Bearer s3cret"));
        assert_eq!(refused.get(&reg("bad")).unwrap().reason, "InvalidSpec");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
