//! The engine: one task owning the state. It reacts to configuration loads and discovery
//! events, (re)starts discovery tasks, writes the xDS files, rebuilds the catalog, publishes the
//! document (serialized once per change, shared as `Bytes`) and announces list changes to the
//! clients' notification streams.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::catalog::{self, Extras, Health, ServerReport};
use crate::discovery::{self, Event, Target};
use crate::settings::{ServerSpec, Settings};
use crate::xds;

/// A published document.
#[derive(Debug)]
pub struct Published {
    pub version: String,
    pub hash: String,
    pub body: Bytes,
}

/// Which list changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    pub fn notification(self) -> &'static str {
        match self {
            ListKind::Tools => r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            ListKind::Prompts => {
                r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#
            }
            ListKind::Resources => {
                r#"{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}"#
            }
        }
    }
}

/// What the configuration watcher reports.
#[derive(Debug)]
pub enum ConfigEvent {
    Loaded(Arc<Settings>),
    Rejected(String),
}

/// The status page (`GET /v1/status`).
#[derive(Debug, Default, Serialize)]
pub struct Status {
    pub ready: bool,
    pub version: Option<String>,
    pub hash: Option<String>,
    pub config_file: String,
    /// The last rejected edit, while the file still holds it.
    pub config_error: Option<String>,
    /// Why the current catalog's document was not published (the plugin's own validation
    /// refused it; the last good document stays published), naming the document's field.
    pub document_error: Option<String>,
    pub servers: Vec<ServerReport>,
    pub problems: Vec<String>,
    pub prompts: Vec<NamedItem>,
    pub resources: Vec<NamedItem>,
    pub resource_templates: Vec<NamedItem>,
    pub xds_dir: Option<String>,
    pub xds_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NamedItem {
    pub key: String,
    pub server: String,
}

/// The engine's outputs, read by the HTTP side.
#[derive(Clone)]
pub struct Outputs {
    pub document: watch::Receiver<Option<Arc<Published>>>,
    pub status: watch::Receiver<Arc<Status>>,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub notices: broadcast::Sender<ListKind>,
}

struct Task {
    generation: u64,
    target_key: TargetKey,
    handle: JoinHandle<()>,
}

/// What a discovery task depends on: a change restarts it.
#[derive(Debug, Clone, PartialEq)]
struct TargetKey {
    url: String,
    headers: Vec<mcpgw_core::config::HeaderValue>,
    ca_file: Option<PathBuf>,
    timing: crate::settings::Timing,
}

pub struct Engine {
    settings: Arc<Settings>,
    health: HashMap<String, Health>,
    tasks: HashMap<String, Task>,
    generation: u64,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    /// reqwest clients by CA file (`None`: system roots); shared by the tasks using them.
    http: HashMap<Option<PathBuf>, reqwest::Client>,
    xds: Option<xds::Writer>,
    xds_error: Option<String>,
    config_error: Option<String>,
    /// The hash of the last document the plugin's validation refused, and why.
    rejected: Option<(String, String)>,
    started: Instant,
    ready: bool,
    start_ms: u128,
    counter: u64,
    fingerprints: Option<[String; 3]>,
    extras: Extras,
    problems: Vec<String>,
    document_tx: watch::Sender<Option<Arc<Published>>>,
    status_tx: watch::Sender<Arc<Status>>,
    settings_tx: watch::Sender<Arc<Settings>>,
    notices: broadcast::Sender<ListKind>,
}

impl Engine {
    pub fn new(settings: Arc<Settings>) -> (Self, Outputs) {
        let (events_tx, events_rx) = mpsc::channel(256);
        let (document_tx, document) = watch::channel(None);
        let (status_tx, status) = watch::channel(Arc::new(Status::default()));
        let (settings_tx, settings_rx) = watch::channel(settings.clone());
        let (notices, _) = broadcast::channel(64);
        let outputs = Outputs {
            document,
            status,
            settings: settings_rx,
            notices: notices.clone(),
        };
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let engine = Self {
            xds: settings.envoy.xds_dir.clone().map(xds::Writer::new),
            settings,
            health: HashMap::new(),
            tasks: HashMap::new(),
            generation: 0,
            events_tx,
            events_rx,
            http: HashMap::new(),
            xds_error: None,
            config_error: None,
            rejected: None,
            started: Instant::now(),
            ready: false,
            start_ms,
            counter: 0,
            fingerprints: None,
            extras: Extras::default(),
            problems: Vec::new(),
            document_tx,
            status_tx,
            settings_tx,
            notices,
        };
        (engine, outputs)
    }

    pub async fn run(mut self, mut config: mpsc::Receiver<ConfigEvent>) {
        self.reconcile_tasks();
        self.write_xds();
        self.rebuild();
        loop {
            let grace_end = self.started + self.settings.discovery.startup_grace;
            let retire = self.xds.as_ref().and_then(|w| w.next_expiry());
            tokio::select! {
                event = config.recv() => match event {
                    Some(ConfigEvent::Loaded(settings)) => {
                        crate::metrics::get().config_reloads.inc();
                        self.apply_settings(settings)
                    }
                    Some(ConfigEvent::Rejected(message)) => {
                        crate::metrics::get().config_rejections.inc();
                        self.config_error = Some(message)
                    }
                    None => return,
                },
                Some(event) = self.events_rx.recv() => {
                    self.apply_event(event);
                    // Take everything already queued before rebuilding once.
                    while let Ok(event) = self.events_rx.try_recv() {
                        self.apply_event(event);
                    }
                }
                _ = sleep_until(grace_end), if !self.ready => {}
                _ = sleep_until(retire.map_or_else(Instant::now, Instant::from_std)), if retire.is_some() => {
                    self.write_xds();
                }
            }
            self.rebuild();
        }
    }

    fn apply_settings(&mut self, settings: Arc<Settings>) {
        self.config_error = None;
        if settings.listen != self.settings.listen {
            tracing::warn!(
                "listen changed to {}; restart the sidecar to apply it (still on {})",
                settings.listen,
                self.settings.listen
            );
        }
        if settings.plugin_token != self.settings.plugin_token {
            tracing::warn!(
                "plugin_token changed; restart the sidecar, and Envoy with a new bootstrap, to \
                 apply it (the sidecar still expects the token it started with)"
            );
        }
        if settings.envoy.xds_dir != self.settings.envoy.xds_dir {
            self.xds = settings.envoy.xds_dir.clone().map(xds::Writer::new);
        }
        tracing::info!(
            "configuration {} applied ({} servers)",
            settings.source.display(),
            settings.servers.len()
        );
        self.settings = settings.clone();
        let _ = self.settings_tx.send(settings);
        self.reconcile_tasks();
        self.write_xds();
    }

    fn apply_event(&mut self, event: Event) {
        let (server, generation, health) = match event {
            Event::Up {
                server,
                generation,
                lists,
            } => (server, generation, Health::Up(lists)),
            Event::Down {
                server,
                generation,
                reason,
            } => (server, generation, Health::Down(reason)),
        };
        if self.tasks.get(&server).map(|t| t.generation) != Some(generation) {
            return; // from a task that has been replaced
        }
        let metrics = crate::metrics::get();
        let label = crate::metrics::server(&server);
        let (up, tools) = match &health {
            Health::Up(lists) => (1, lists.tools.len()),
            _ => (0, 0),
        };
        metrics.server_up.get_or_create(&label).set(up);
        metrics
            .server_tools
            .get_or_create(&label)
            .set(i64::try_from(tools).unwrap_or(i64::MAX));
        let previous = self.health.insert(server.clone(), health.clone());
        match (&previous, &health) {
            (Some(Health::Up(lists)), Health::Down(reason)) => tracing::warn!(
                "server {server} is down, its {} tools leave the catalog: {reason}",
                lists.tools.len()
            ),
            (Some(Health::Down(old)), Health::Down(reason)) if old == reason => {
                tracing::debug!("server {server} still down: {reason}")
            }
            (_, Health::Down(reason)) => {
                tracing::warn!("server {server} is unavailable, retrying with backoff: {reason}")
            }
            (Some(Health::Down(_)), Health::Up(lists)) => tracing::info!(
                "server {server} is available, its {} tools join the catalog",
                lists.tools.len()
            ),
            _ => {}
        }
    }

    /// Starts, restarts and stops discovery tasks to match the settings.
    fn reconcile_tasks(&mut self) {
        let settings = self.settings.clone();
        let mut wanted: HashMap<&str, (&ServerSpec, TargetKey)> = HashMap::new();
        for spec in settings.servers.iter().filter(|s| s.enabled) {
            if let Ok(headers) = &spec.headers {
                let key = TargetKey {
                    url: spec.url.clone(),
                    headers: headers.clone(),
                    ca_file: spec.ca_file.clone(),
                    timing: settings.discovery,
                };
                wanted.insert(spec.name.as_str(), (spec, key));
            }
        }
        let stale: Vec<String> = self
            .tasks
            .iter()
            .filter(|(name, task)| {
                wanted.get(name.as_str()).map(|(_, key)| key) != Some(&task.target_key)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(task) = self.tasks.remove(&name) {
                task.handle.abort();
            }
            self.health.remove(&name);
            crate::metrics::get().forget_server(&name);
        }
        for (name, (spec, key)) in wanted {
            if self.tasks.contains_key(name) {
                continue;
            }
            let http = match self.http_client(spec.ca_file.as_ref()) {
                Ok(client) => client,
                Err(reason) => {
                    tracing::error!("server {name}: {reason}");
                    self.health.insert(name.to_string(), Health::Down(reason));
                    continue;
                }
            };
            self.generation += 1;
            let target = Target {
                name: name.to_string(),
                url: spec.url.clone(),
                headers: key.headers.clone(),
                http,
                timing: key.timing,
            };
            tracing::info!("server {name}: discovering {}", spec.url);
            let handle = tokio::spawn(discovery::run(
                target,
                self.generation,
                self.events_tx.clone(),
            ));
            self.health.insert(name.to_string(), Health::Pending);
            crate::metrics::get()
                .server_up
                .get_or_create(&crate::metrics::server(name))
                .set(0);
            self.tasks.insert(
                name.to_string(),
                Task {
                    generation: self.generation,
                    target_key: key,
                    handle,
                },
            );
        }
        // Drop clients nobody uses any more (a CA file left the configuration).
        let cas: Vec<Option<PathBuf>> =
            settings.servers.iter().map(|s| s.ca_file.clone()).collect();
        self.http.retain(|ca, _| ca.is_none() || cas.contains(ca));
    }

    fn http_client(&mut self, ca_file: Option<&PathBuf>) -> Result<reqwest::Client, String> {
        let key = ca_file.cloned();
        if let Some(client) = self.http.get(&key) {
            return Ok(client.clone());
        }
        let client = http_client(ca_file, self.settings.discovery.request_timeout)?;
        self.http.insert(key, client.clone());
        Ok(client)
    }

    fn write_xds(&mut self) {
        let Some(writer) = self.xds.as_mut() else {
            return;
        };
        match writer.write(&self.settings, Instant::now().into_std()) {
            Ok(true) => {
                tracing::info!("wrote Envoy xDS files in {}", writer.dir().display());
                self.xds_error = None;
            }
            Ok(false) => self.xds_error = None,
            Err(e) => {
                tracing::error!("cannot write Envoy xDS files: {e}");
                self.xds_error = Some(e);
            }
        }
    }

    /// Rebuilds the catalog; publishes the document when its content changed.
    fn rebuild(&mut self) {
        if !self.ready {
            let settled = self.health.values().all(|h| !matches!(h, Health::Pending));
            let elapsed = self.started.elapsed() >= self.settings.discovery.startup_grace;
            if settled || elapsed {
                self.ready = true;
                if !settled {
                    tracing::warn!(
                        "startup grace over with servers still pending; publishing what is known"
                    );
                }
            }
        }
        let built = catalog::build(&self.settings, &self.health);
        for line in &built.problems {
            if !self.problems.contains(line) {
                tracing::warn!("{line}");
            }
        }
        self.problems.clone_from(&built.problems);
        let fingerprints = [
            built.tools_fingerprint.clone(),
            built.prompts_fingerprint.clone(),
            built.resources_fingerprint.clone(),
        ];
        // Clients hear of list changes only once the document carrying them is published.
        if self.ready && self.publish(built.document, &built.hash) {
            if let Some(old) = &self.fingerprints {
                for (i, kind) in [ListKind::Tools, ListKind::Prompts, ListKind::Resources]
                    .into_iter()
                    .enumerate()
                {
                    if old.get(i) != fingerprints.get(i) {
                        self.announce(kind);
                    }
                }
            }
            self.fingerprints = Some(fingerprints);
        }
        self.extras = built.extras;
        let status = self.status(built.reports, built.problems);
        let _ = self.status_tx.send(Arc::new(status));
    }

    /// Tells the clients' streams, after a delay that lets every plugin VM adopt the document
    /// first (the plugin's poller fetches it at once; the other VMs pick it up on their next
    /// tick), so a client re-listing on the notification sees the new list.
    fn announce(&self, kind: ListKind) {
        let delay = self.settings.notify_delay;
        let notices = self.notices.clone();
        tracing::debug!(
            "{kind:?} list changed; notifying clients in {} ms",
            delay.as_millis()
        );
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = notices.send(kind);
        });
    }

    /// Publishes the document unless it is the published one already; false when it was not
    /// published (the plugin's validation refused it, or it could not be serialized).
    fn publish(&mut self, mut document: mcpgw_core::config::GatewayConfig, hash: &str) -> bool {
        let current = self.document_tx.borrow().clone();
        if current.as_ref().map(|p| p.hash.as_str()) == Some(hash) {
            self.rejected = None;
            return true;
        }
        if self.rejected.as_ref().map(|(h, _)| h.as_str()) == Some(hash) {
            return false;
        }
        // The plugin validates every document it adopts and refuses a bad one: run the same
        // validation here, so a document the plugin would refuse is never published and the
        // reason shows here (log, /v1/status) rather than only in Envoy's log.
        if let Err(e) = crate::catalog::validate(document.clone()) {
            tracing::error!("configuration not published, the last good one stays in force: {e}");
            self.rejected = Some((hash.to_string(), e));
            return false;
        }
        self.rejected = None;
        self.counter += 1;
        document.version = format!("{}.{}", self.start_ms, self.counter);
        let metrics = crate::metrics::get();
        metrics
            .catalog_version
            .set(i64::try_from(self.counter).unwrap_or(i64::MAX));
        metrics.catalog_publishes.inc();
        let body = match serde_json::to_vec(&document) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::error!("cannot serialize the configuration document: {e}");
                return false;
            }
        };
        let tools: usize = document.servers.iter().map(|s| s.tools.len()).sum();
        tracing::info!(
            "published configuration {} ({} servers, {tools} tools, hash {})",
            document.version,
            document.servers.len(),
            hash.get(..12).unwrap_or(hash)
        );
        let _ = self.document_tx.send(Some(Arc::new(Published {
            version: document.version,
            hash: hash.to_string(),
            body,
        })));
        true
    }

    fn status(&self, servers: Vec<ServerReport>, problems: Vec<String>) -> Status {
        let published = self.document_tx.borrow().clone();
        let named = |map: &std::collections::BTreeMap<String, (String, Arc<str>)>| {
            map.iter()
                .map(|(key, (server, _))| NamedItem {
                    key: key.clone(),
                    server: server.clone(),
                })
                .collect()
        };
        Status {
            ready: self.ready,
            version: published.as_ref().map(|p| p.version.clone()),
            hash: published.as_ref().map(|p| p.hash.clone()),
            config_file: self.settings.source.display().to_string(),
            config_error: self.config_error.clone(),
            document_error: self.rejected.as_ref().map(|(_, e)| e.clone()),
            servers,
            problems,
            prompts: named(&self.extras.prompts),
            resources: named(&self.extras.resources),
            resource_templates: named(&self.extras.resource_templates),
            xds_dir: self.xds.as_ref().map(|w| w.dir().display().to_string()),
            xds_error: self.xds_error.clone(),
        }
    }
}

/// A reqwest client that trusts `ca_file` alone (or the system roots).
pub fn http_client(
    ca_file: Option<&PathBuf>,
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(2);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate", path.display()));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| format!("HTTP client: {}", discovery::describe(&e)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::value::RawValue;

    use super::*;
    use crate::catalog::{Item, ServerLists};

    fn up(resources: &[&str]) -> Health {
        Health::Up(Arc::new(ServerLists {
            tools: vec![Item::new(
                "echo",
                RawValue::from_string(r#"{"name":"echo"}"#.into()).unwrap(),
            )],
            resources: resources
                .iter()
                .map(|r| Item::new(*r, RawValue::from_string((*r).to_string()).unwrap()))
                .collect(),
            ..ServerLists::default()
        }))
    }

    #[test]
    fn a_document_the_plugin_would_refuse_is_not_published() {
        let text = "servers:\n  - {name: alpha, url: 'http://127.0.0.1:1/mcp'}\n";
        let mut settings =
            crate::settings::parse(text, Path::new("/tmp"), &|_| Some("t".repeat(40))).unwrap();
        settings.session_keys.0[0].secret = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into();
        let (mut engine, outputs) = Engine::new(Arc::new(settings));
        engine.ready = true;
        engine.health.insert("alpha".into(), up(&[]));
        engine.rebuild();
        let good = outputs.document.borrow().clone().expect("published");
        assert!(outputs.status.borrow().document_error.is_none());

        // A resource without a URI: the plugin's catalog refuses the whole document.
        engine
            .health
            .insert("alpha".into(), up(&[r#"{"name":"no uri"}"#]));
        engine.rebuild();
        let still = outputs.document.borrow().clone().unwrap();
        assert_eq!(still.version, good.version, "the last good document stays");
        let error = outputs.status.borrow().document_error.clone().unwrap();
        assert!(
            error.contains("servers[0].resources[0]: needs uri or uriTemplate"),
            "{error}"
        );
        assert!(error.starts_with("the plugin would refuse the configuration document: "));

        engine.health.insert("alpha".into(), up(&[]));
        engine.rebuild();
        assert!(outputs.status.borrow().document_error.is_none());
        assert_eq!(outputs.document.borrow().clone().unwrap().hash, good.hash);
    }
}
