//! Discovery: one task per enabled server. It connects with rmcp (Streamable HTTP, `initialize`),
//! lists tools (all pages) and the prompts/resources the server declares, reports the result, then
//! follows `notifications/*/list_changed`, refreshes periodically and pings. Any failure reports
//! the server down with the reason, and the task reconnects with exponential backoff (jittered).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use mcpgw_core::config::HeaderValue;
use reqwest::header::{HeaderName, HeaderValue as HttpHeaderValue};
use rmcp::model::{ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientCacheConfig, ClientHandler, ServiceExt};
use serde::Serialize;
use serde_json::value::{to_raw_value, RawValue};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

use crate::catalog::{Item, ServerLists};
use crate::settings::Timing;

/// What a discovery task reports to the engine. `generation` tells a current task from one the
/// engine has since replaced.
#[derive(Debug)]
pub enum Event {
    Up {
        server: String,
        generation: u64,
        lists: Arc<ServerLists>,
    },
    Down {
        server: String,
        generation: u64,
        reason: String,
    },
}

/// Everything a task needs to reach its server.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub headers: Vec<HeaderValue>,
    pub http: reqwest::Client,
    pub timing: Timing,
}

/// Receives the server's notifications; list changes wake the task.
struct Handler {
    changed: mpsc::Sender<()>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.try_send(());
    }
    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.try_send(());
    }
    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.try_send(());
    }
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcpgw-sidecar", env!("CARGO_PKG_VERSION")),
        )
    }
}

type Client = RunningService<RoleClient, Handler>;

/// Runs until aborted.
pub async fn run(target: Target, generation: u64, events: mpsc::Sender<Event>) {
    let timing = target.timing;
    let mut health = Gate::new(timing);
    let mut delay = timing.backoff_initial;
    loop {
        let (changed_tx, changed_rx) = mpsc::channel(4);
        let reason = match connect(&target, changed_tx).await {
            Err(reason) => reason,
            Ok(client) => {
                let (reason, served) = serve(
                    &target,
                    generation,
                    &events,
                    &client,
                    changed_rx,
                    &mut health,
                )
                .await;
                drop(client);
                if served {
                    delay = timing.backoff_initial;
                }
                reason
            }
        };
        crate::metrics::get()
            .discovery_failures
            .get_or_create(&crate::metrics::server(&target.name))
            .inc();
        let wait = match health.failed(Instant::now()) {
            Verdict::Down => {
                let down = Event::Down {
                    server: target.name.clone(),
                    generation,
                    reason: reason.clone(),
                };
                if events.send(down).await.is_err() {
                    return;
                }
                let wait = jitter(delay);
                delay = (delay * 2).min(timing.backoff_max);
                wait
            }
            Verdict::Suspect { failures } => {
                tracing::info!(
                    "server {}: check failed ({failures} in a row), kept in the catalog until \
                     {} failures over {} ms: {reason}",
                    target.name,
                    timing.failure_threshold,
                    timing.failure_window.as_millis()
                );
                timing.failure_retry
            }
        };
        tracing::debug!(
            "server {}: next connection attempt in {} ms",
            target.name,
            wait.as_millis()
        );
        sleep(wait).await;
    }
}

/// A server's health as its checks see it: one failed check (a ping that timed out on a busy
/// machine, a refused connection during a restart) does not take it out of the catalog; only
/// `failure_threshold` consecutive failures spanning at least `failure_window` do.
#[derive(Debug)]
struct Gate {
    threshold: u32,
    window: Duration,
    failures: u32,
    first_failure: Option<Instant>,
    down: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Failing, but not for long enough: keep serving it, check again soon.
    Suspect { failures: u32 },
    /// Failed for long enough (or is already out): report it down.
    Down,
}

impl Gate {
    fn new(timing: Timing) -> Self {
        Self {
            threshold: timing.failure_threshold,
            window: timing.failure_window,
            failures: 0,
            first_failure: None,
            down: false,
        }
    }

    fn failed(&mut self, now: Instant) -> Verdict {
        self.failures = self.failures.saturating_add(1);
        let since = *self.first_failure.get_or_insert(now);
        if self.down
            || (self.failures >= self.threshold && now.duration_since(since) >= self.window)
        {
            self.down = true;
            Verdict::Down
        } else {
            Verdict::Suspect {
                failures: self.failures,
            }
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.first_failure = None;
        self.down = false;
    }
}

/// `initialize` with the configured headers; the client's own response cache is disabled (a
/// refresh must see the server, not a stale copy).
async fn connect(target: &Target, changed: mpsc::Sender<()>) -> Result<Client, String> {
    let mut headers = HashMap::new();
    for h in &target.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| format!("header {:?}: {e}", h.name))?;
        let value =
            HttpHeaderValue::from_str(&h.value).map_err(|e| format!("header {:?}: {e}", h.name))?;
        headers.insert(name, value);
    }
    let config = StreamableHttpClientTransportConfig::with_uri(target.url.as_str())
        .custom_headers(headers)
        .reinit_on_expired_session(false);
    let transport = StreamableHttpClientTransport::with_client(target.http.clone(), config);
    let client = bounded(target.timing.request_timeout, "initialize", async {
        Handler { changed }
            .serve(transport)
            .await
            .map_err(|e| describe(&e))
    })
    .await?;
    client
        .peer()
        .set_response_cache_config(ClientCacheConfig::disabled())
        .await;
    Ok(client)
}

/// Lists, reports, then watches. Returns why the session ended and whether it ever served.
async fn serve(
    target: &Target,
    generation: u64,
    events: &mpsc::Sender<Event>,
    client: &Client,
    mut changed: mpsc::Receiver<()>,
    health: &mut Gate,
) -> (String, bool) {
    let timing = target.timing;
    let mut served = false;
    let mut last: Option<Arc<ServerLists>> = None;
    let mut next_refresh = Instant::now();
    let mut next_ping = Instant::now() + timing.health_interval;
    let mut refresh = true;
    loop {
        if refresh {
            refresh = false;
            let started = Instant::now();
            let listed = list(client, timing.request_timeout).await;
            crate::metrics::get()
                .discovery_seconds
                .get_or_create(&crate::metrics::server(&target.name))
                .observe(started.elapsed().as_secs_f64());
            let lists = match listed {
                Ok(mut lists) => {
                    // What server/discover lists, and the version initialize negotiated.
                    if let Some(versions) = discover_versions(target).await {
                        for v in versions.into_iter().rev() {
                            if !lists.protocol_versions.contains(&v) {
                                lists.protocol_versions.insert(0, v);
                            }
                        }
                    }
                    Arc::new(lists)
                }
                Err(reason) => return (reason, served),
            };
            if last.as_deref() != Some(&*lists) {
                tracing::info!(
                    "Discovered {} tools for server {}{}",
                    lists.tools.len(),
                    target.name,
                    extras_note(&lists)
                );
                last = Some(lists.clone());
            } else {
                tracing::debug!("server {}: lists unchanged", target.name);
            }
            let up = Event::Up {
                server: target.name.clone(),
                generation,
                lists,
            };
            if events.send(up).await.is_err() {
                return ("sidecar shutting down".into(), served);
            }
            health.succeeded();
            served = true;
            next_refresh = Instant::now() + timing.refresh_interval;
        }
        tokio::select! {
            notice = changed.recv() => {
                if notice.is_none() {
                    return ("notification channel closed".into(), served);
                }
                // Coalesce a burst of notifications into one refresh.
                sleep(Duration::from_millis(20)).await;
                while changed.try_recv().is_ok() {}
                tracing::debug!("server {}: list_changed received, refreshing", target.name);
                refresh = true;
            }
            _ = tokio::time::sleep_until(next_refresh) => {
                refresh = true;
            }
            _ = tokio::time::sleep_until(next_ping) => {
                let ping = ClientRequest::PingRequest(PingRequest::default());
                let answer = bounded(timing.request_timeout, "ping", async {
                    client.send_request(ping).await.map_err(|e| describe(&e))
                }).await;
                next_ping = match answer {
                    Ok(_) => {
                        health.succeeded();
                        Instant::now() + timing.health_interval
                    }
                    Err(reason) => match health.failed(Instant::now()) {
                        // Out of the catalog: start over with a new session.
                        Verdict::Down => return (reason, served),
                        Verdict::Suspect { failures } => {
                            tracing::info!(
                                "server {}: ping failed ({failures} in a row), kept in the \
                                 catalog: {reason}",
                                target.name
                            );
                            Instant::now() + timing.failure_retry
                        }
                    },
                };
            }
        }
        if client.is_closed() {
            return ("connection closed".into(), served);
        }
    }
}

fn extras_note(lists: &ServerLists) -> String {
    if lists.prompts.is_empty() && lists.resources.is_empty() && lists.resource_templates.is_empty()
    {
        return String::new();
    }
    format!(
        " ({} prompts, {} resources, {} resource templates)",
        lists.prompts.len(),
        lists.resources.len(),
        lists.resource_templates.len()
    )
}

/// The revisions a server lists in its MCP 2026-07-28 `server/discover` answer; `None` when it
/// does not answer one (a session-era server: its negotiated version stands alone).
async fn discover_versions(target: &Target) -> Option<Vec<String>> {
    const V2026: &str = "2026-07-28";
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "server/discover",
        "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": V2026,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "mcpgw-sidecar", "version": env!("CARGO_PKG_VERSION")},
        }},
    });
    let mut request = target
        .http
        .post(target.url.as_str())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", V2026)
        .header("mcp-method", "server/discover")
        .timeout(target.timing.request_timeout)
        .body(body.to_string());
    for h in &target.headers {
        request = request.header(h.name.as_str(), h.value.as_str());
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    // JSON, or the SSE event carrying the result.
    let messages = std::iter::once(text.as_str()).chain(
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim),
    );
    messages
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .find_map(|m| {
            let versions = m.get("result")?.get("supportedVersions")?.as_array()?;
            let versions: Vec<String> = versions
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            (!versions.is_empty()).then_some(versions)
        })
}

/// One full pass: every page of every list the server declared.
async fn list(client: &Client, limit: Duration) -> Result<ServerLists, String> {
    let caps = client
        .peer_info()
        .map(|info| info.capabilities.clone())
        .unwrap_or_default();
    let server_info = client.peer_info().and_then(|info| {
        info.server_info
            .as_ref()
            .map(|i| format!("{} {}", i.name, i.version))
    });
    let negotiated = client
        .peer_info()
        .map(|info| info.protocol_version.to_string());
    let mut lists = ServerLists {
        server_info,
        capabilities: serde_json::to_string(&caps).ok(),
        protocol_versions: negotiated.into_iter().collect(),
        ..ServerLists::default()
    };
    if caps.tools.is_some() {
        let tools = bounded(limit, "tools/list", async {
            client.list_all_tools().await.map_err(|e| describe(&e))
        })
        .await?;
        lists.tools = items(&tools, |t| t.name.to_string())?;
    }
    if caps.prompts.is_some() {
        let prompts = bounded(limit, "prompts/list", async {
            client.list_all_prompts().await.map_err(|e| describe(&e))
        })
        .await?;
        lists.prompts = items(&prompts, |p| p.name.clone())?;
    }
    if caps.resources.is_some() {
        let resources = bounded(limit, "resources/list", async {
            client.list_all_resources().await.map_err(|e| describe(&e))
        })
        .await?;
        lists.resources = items(&resources, |r| r.uri.clone())?;
        let templates = bounded(limit, "resources/templates/list", async {
            client
                .list_all_resource_templates()
                .await
                .map_err(|e| describe(&e))
        })
        .await?;
        lists.resource_templates = items(&templates, |t| t.uri_template.clone())?;
    }
    Ok(lists)
}

fn items<T: Serialize>(list: &[T], key: impl Fn(&T) -> String) -> Result<Vec<Item>, String> {
    list.iter()
        .map(|x| {
            let json: Box<RawValue> = to_raw_value(x).map_err(|e| e.to_string())?;
            Ok(Item::new(key(x), json))
        })
        .collect()
}

async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match timeout(limit, fut).await {
        Ok(result) => result.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {} ms", limit.as_millis())),
    }
}

/// The error and its root cause on one line, with a hint for credential problems.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let top = strip_type_names(&error.to_string());
    let mut root = None;
    let mut current = error.source();
    while let Some(e) = current {
        root = Some(e.to_string());
        current = e.source();
    }
    // rmcp keeps the transport's cause out of `source()`; its Debug form still has it.
    let root = root.or_else(|| debug_cause(&format!("{error:?}")));
    let mut line = match root {
        Some(root) if !top.contains(&root) => format!("{top}: {root}"),
        _ => top,
    };
    let lower = line.to_ascii_lowercase();
    if lower.contains("401") || lower.contains("unauthorized") || lower.contains("auth required") {
        line.push_str(
            " (HTTP 401: the server wants a credential; check this server's `credential` in the \
             sidecar configuration)",
        );
    } else if lower.contains("403") || lower.contains("forbidden") {
        line.push_str(" (HTTP 403: the server refused the configured credential)");
    }
    line
}

/// The innermost cause visible in a Debug rendering: an OS error message, a TLS verdict.
fn debug_cause(debug: &str) -> Option<String> {
    if let Some(at) = debug.rfind("message: \"") {
        let rest = debug.get(at + "message: \"".len()..)?;
        return rest.split('"').next().map(str::to_owned);
    }
    for marker in ["InvalidCertificate(", "AlertReceived(", "InvalidMessage("] {
        if let Some(at) = debug.find(marker) {
            let rest = debug.get(at..)?;
            let end = rest.find(')').map_or(rest.len(), |i| i + 1);
            return rest.get(..end).map(|s| format!("TLS: {s}"));
        }
    }
    None
}

/// rmcp puts Rust type names in its messages (`Transport [rmcp::transport::...<...>] error`).
fn strip_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.replace("  ", " ")
}

/// `d` +/- 20 %.
pub(crate) fn jitter(d: Duration) -> Duration {
    let random = RandomState::new().build_hasher().finish();
    let permille = 800 + (random % 401);
    d * u32::try_from(permille).unwrap_or(1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn describe_joins_sources_and_explains_401() {
        let e = E(
            "send initialize",
            Some(Box::new(E("HTTP status 401 Unauthorized", None))),
        );
        let line = describe(&e);
        assert!(
            line.starts_with("send initialize: HTTP status 401 Unauthorized"),
            "{line}"
        );
        assert!(line.contains("credential"), "{line}");
        let e = E(
            "connect: connection refused",
            Some(Box::new(E("connection refused", None))),
        );
        assert_eq!(describe(&e), "connect: connection refused");
    }

    fn timing(threshold: u32, window_ms: u64) -> Timing {
        let ms = Duration::from_millis;
        Timing {
            refresh_interval: ms(1000),
            health_interval: ms(1000),
            request_timeout: ms(1000),
            backoff_initial: ms(100),
            backoff_max: ms(1000),
            startup_grace: ms(0),
            failure_threshold: threshold,
            failure_window: ms(window_ms),
            failure_retry: ms(100),
        }
    }

    #[test]
    fn a_server_goes_down_only_after_enough_failures_over_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut gate = Gate::new(timing(3, 1000));
        assert_eq!(gate.failed(at(0)), Verdict::Suspect { failures: 1 });
        assert_eq!(gate.failed(at(100)), Verdict::Suspect { failures: 2 });
        // Enough failures, not for long enough.
        assert_eq!(gate.failed(at(200)), Verdict::Suspect { failures: 3 });
        assert_eq!(gate.failed(at(1000)), Verdict::Down);
        assert_eq!(gate.failed(at(1100)), Verdict::Down, "stays down");
        gate.succeeded();
        assert_eq!(gate.failed(at(5000)), Verdict::Suspect { failures: 1 });
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut gate = Gate::new(timing(2, 500));
        assert_eq!(gate.failed(at(0)), Verdict::Suspect { failures: 1 });
        gate.succeeded();
        assert_eq!(gate.failed(at(600)), Verdict::Suspect { failures: 1 });
        assert_eq!(gate.failed(at(1200)), Verdict::Down);
    }

    #[test]
    fn a_threshold_of_one_and_no_window_is_the_old_behaviour() {
        let mut gate = Gate::new(timing(1, 0));
        assert_eq!(gate.failed(Instant::now()), Verdict::Down);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(800) && j <= Duration::from_millis(1200));
        }
    }
}
