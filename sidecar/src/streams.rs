//! Upstream GET streams merged into the clients' notification streams.
//!
//! The plugin registers every upstream session it opens for a client session (`POST /v1/streams`,
//! [`Registry::register`]); a client's notification stream (`GET <mcp_path>`, vouched for by the
//! plugin with `x-mcpgw-session`) gets a follower ([`follow`]) that opens `GET <server url>` on
//! each registered upstream session, reads its SSE, rewrites each message with the core's own
//! [`mcpgw_core::relay::rewrite`] (server requests get `mcpgw:<server>:<id>` ids, mapped
//! `resources/updated` URIs) and passes it on, merged with the `list_changed` notifications.
//!
//! The same follower takes notices meant for its session alone ([`Registry::notify`], the
//! plugin's `POST /v1/streams/notify` after a `select_tools`).
//!
//! Bounds: registrations in total and per client session (the oldest is evicted), each expiring
//! with the session TTL; one follower per client session (a newer stream of the same session takes
//! over); upstream GET streams in total (a semaphore).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mcpgw_core::config::HeaderValue;
use mcpgw_core::relay;
use mcpgw_core::sse::Parser;
use serde::Deserialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::settings::{Settings, Timing};

/// Names the client session on a vouched notification stream (set by the plugin alone).
pub const SESSION_HEADER: &str = "x-mcpgw-session";

/// Longest registration body.
pub const MAX_BODY_BYTES: usize = 4096;

/// Longest field of a registration (they travel as header values).
const MAX_FIELD_BYTES: usize = 512;

/// Events waiting for a slow client, per stream.
const CHANNEL_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Registrations kept in total.
    pub registrations: usize,
    /// Registrations kept per client session (servers it uses).
    pub per_session: usize,
    /// Upstream GET streams open at once.
    pub upstream_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            registrations: 10_000,
            per_session: 64,
            upstream_streams: 1_000,
        }
    }
}

/// The body of `POST /v1/streams`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub session: String,
    pub server: String,
    pub upstream_session: String,
    pub protocol_version: String,
}

impl Registration {
    /// Every field fits in a header value; only the protocol version may be empty.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value, may_be_empty) in [
            ("session", &self.session, false),
            ("server", &self.server, false),
            ("upstream_session", &self.upstream_session, false),
            ("protocol_version", &self.protocol_version, true),
        ] {
            if value.is_empty() && !may_be_empty {
                return Err(format!("{name}: must not be empty"));
            }
            if value.len() > MAX_FIELD_BYTES {
                return Err(format!("{name}: longer than {MAX_FIELD_BYTES} bytes"));
            }
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("{name}: must be printable ASCII without spaces"));
            }
        }
        Ok(())
    }
}

/// An upstream session to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub server: String,
    pub session: String,
    pub protocol_version: String,
}

#[derive(Debug)]
struct Entry {
    upstream: Upstream,
    seq: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct SessionState {
    /// Oldest first.
    entries: Vec<Entry>,
    /// The stream following this session: its id, and what wakes it.
    follower: Option<(u64, watch::Sender<()>)>,
    /// Where that stream takes messages for this session alone ([`Registry::notify`]).
    outbox: Option<mpsc::Sender<String>>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, SessionState>,
    total: usize,
    seq: u64,
}

/// Client session -> (server -> upstream session).
pub struct Registry {
    inner: Mutex<Inner>,
    limits: Limits,
    streams: Arc<Semaphore>,
    clients: Mutex<HashMap<Option<PathBuf>, reqwest::Client>>,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Mutex::default(),
            limits,
            streams: Arc::new(Semaphore::new(limits.upstream_streams)),
            clients: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records (or replaces) the session's upstream session on `server`, valid for `ttl`.
    pub fn register(&self, registration: Registration, ttl: Duration, now: Instant) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let Registration {
            session,
            server,
            upstream_session,
            protocol_version,
        } = registration;
        let state = inner.sessions.entry(session).or_default();
        let before = state.entries.len();
        state
            .entries
            .retain(|e| e.expires > now && e.upstream.server != server);
        state.entries.push(Entry {
            upstream: Upstream {
                server,
                session: upstream_session,
                protocol_version,
            },
            seq,
            expires: now + ttl,
        });
        if state.entries.len() > self.limits.per_session {
            state.entries.remove(0);
        }
        let after = state.entries.len();
        if let Some((_, wake)) = &state.follower {
            wake.send_replace(());
        }
        inner.total = inner.total + after - before;
        if inner.total > self.limits.registrations {
            Self::prune(&mut inner, now, self.limits.registrations);
        }
    }

    /// Forgets a client session that ended (the plugin's `DELETE /v1/streams`): its registrations
    /// go, and its follower, if any, stops following upstream streams.
    pub fn forget(&self, session: &str) {
        let mut inner = self.lock();
        let Some(state) = inner.sessions.get_mut(session) else {
            return;
        };
        let dropped = state.entries.len();
        state.entries.clear();
        if let Some((_, wake)) = &state.follower {
            wake.send_replace(());
        }
        if state.follower.is_none() {
            inner.sessions.remove(session);
        }
        inner.total -= dropped;
    }

    /// Drops expired entries, then the oldest ones until `cap` are left.
    fn prune(inner: &mut Inner, now: Instant, cap: usize) {
        for state in inner.sessions.values_mut() {
            let before = state.entries.len();
            state.entries.retain(|e| e.expires > now);
            if state.entries.len() != before {
                if let Some((_, wake)) = &state.follower {
                    wake.send_replace(());
                }
            }
        }
        inner.total = inner.sessions.values().map(|s| s.entries.len()).sum();
        while inner.total > cap {
            let oldest = inner
                .sessions
                .iter_mut()
                .filter_map(|(_, s)| {
                    let seq = s.entries.first()?.seq;
                    Some((seq, s))
                })
                .min_by_key(|(seq, _)| *seq);
            let Some((_, state)) = oldest else {
                break;
            };
            state.entries.remove(0);
            if let Some((_, wake)) = &state.follower {
                wake.send_replace(());
            }
            inner.total -= 1;
        }
        inner
            .sessions
            .retain(|_, s| !s.entries.is_empty() || s.follower.is_some());
    }

    /// Makes the caller the session's follower (a previous one is told to stop): its id, and a
    /// receiver that changes with the session's registrations and fails when superseded.
    fn follow(&self, session: &str, outbox: mpsc::Sender<String>) -> (u64, watch::Receiver<()>) {
        let mut inner = self.lock();
        inner.seq += 1;
        let id = inner.seq;
        let (wake, rx) = watch::channel(());
        let state = inner.sessions.entry(session.to_owned()).or_default();
        state.follower = Some((id, wake));
        state.outbox = Some(outbox);
        (id, rx)
    }

    /// Sends `message` on the notification stream of this client session alone (its newest,
    /// the one following it), if one is open: whether it was queued. A full queue (a client
    /// that does not read) drops it.
    pub fn notify(&self, session: &str, message: &str) -> bool {
        let inner = self.lock();
        let Some(outbox) = inner.sessions.get(session).and_then(|s| s.outbox.as_ref()) else {
            return false;
        };
        outbox.try_send(message.to_owned()).is_ok()
    }

    fn release(&self, session: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(state) = inner.sessions.get_mut(session) {
            if state.follower.as_ref().is_some_and(|(f, _)| *f == id) {
                state.follower = None;
                state.outbox = None;
            }
            if state.entries.is_empty() && state.follower.is_none() {
                inner.sessions.remove(session);
            }
        }
    }

    /// The session's live registrations, and when the next one expires.
    pub fn snapshot(&self, session: &str, now: Instant) -> (Vec<Upstream>, Option<Instant>) {
        let inner = self.lock();
        let Some(state) = inner.sessions.get(session) else {
            return (Vec::new(), None);
        };
        let live = state.entries.iter().filter(|e| e.expires > now);
        let next = live.clone().map(|e| e.expires).min();
        (live.map(|e| e.upstream.clone()).collect(), next)
    }

    /// Registrations kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().total
    }

    fn http_client(
        &self,
        ca_file: Option<&PathBuf>,
        timing: &Timing,
    ) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&ca_file.cloned()) {
            return Ok(client.clone());
        }
        let client = crate::engine::http_client(ca_file, timing.request_timeout)?;
        clients.insert(ca_file.cloned(), client.clone());
        Ok(client)
    }
}

/// How to reach a server's GET stream (from the current settings).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    server: String,
    url: String,
    headers: Vec<HeaderValue>,
    ca_file: Option<PathBuf>,
    /// The server's URIs are mapped (it has a prefix).
    mapped: bool,
}

impl Target {
    fn of(settings: &Settings, server: &str) -> Option<Self> {
        let spec = settings
            .servers
            .iter()
            .find(|s| s.enabled && s.name == server)?;
        Some(Self {
            server: spec.name.clone(),
            url: spec.url.clone(),
            headers: spec.headers.clone().ok()?,
            ca_file: spec.ca_file.clone(),
            mapped: !spec.prefix.is_empty(),
        })
    }
}

/// Aborts its task when dropped.
struct Running {
    upstream: Upstream,
    target: Target,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following `session`'s upstream GET streams for one client stream: the messages (one
/// per event, rewritten for the client) come out of the returned receiver, and everything stops
/// when it is dropped.
pub fn follow(
    registry: Arc<Registry>,
    settings: watch::Receiver<Arc<Settings>>,
    session: String,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(run_follower(registry, settings, session, tx));
    rx
}

async fn run_follower(
    registry: Arc<Registry>,
    mut settings: watch::Receiver<Arc<Settings>>,
    session: String,
    tx: mpsc::Sender<String>,
) {
    let (id, mut wake) = registry.follow(&session, tx.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let (wanted, next_expiry) = registry.snapshot(&session, Instant::now());
        let current = settings.borrow_and_update().clone();
        let mut targets: HashMap<String, (Upstream, Target)> = HashMap::new();
        for upstream in wanted {
            if let Some(target) = Target::of(&current, &upstream.server) {
                targets.insert(upstream.server.clone(), (upstream, target));
            }
        }
        running.retain(|server, r| {
            targets
                .get(server)
                .is_some_and(|(u, t)| *u == r.upstream && *t == r.target)
        });
        for (server, (upstream, target)) in targets {
            if running.contains_key(&server) {
                continue;
            }
            let Ok(permit) = Arc::clone(&registry.streams).try_acquire_owned() else {
                tracing::warn!(
                    "not following server {server}'s GET stream: {} upstream streams open",
                    registry.limits.upstream_streams
                );
                continue;
            };
            let http = match registry.http_client(target.ca_file.as_ref(), &current.discovery) {
                Ok(http) => http,
                Err(e) => {
                    tracing::warn!("not following server {server}'s GET stream: {e}");
                    continue;
                }
            };
            let task = tokio::spawn(pump(
                target.clone(),
                http,
                upstream.clone(),
                tx.clone(),
                current.discovery,
                permit,
            ));
            running.insert(
                server,
                Running {
                    upstream,
                    target,
                    task,
                },
            );
        }
        tokio::select! {
            _ = tx.closed() => break,
            changed = wake.changed() => if changed.is_err() { break },
            changed = settings.changed() => if changed.is_err() { break },
            _ = sleep_until(next_expiry.unwrap_or_else(Instant::now)), if next_expiry.is_some() => {}
        }
    }
    drop(running);
    registry.release(&session, id);
}

/// How one upstream GET ended.
enum Outcome {
    /// The client's stream is gone.
    ClientGone,
    /// The server offers no standalone stream (405, or not an event stream), or no longer knows
    /// the session (404): not followed.
    Stop(String),
    /// Dropped or failed: reconnect (after `retry` when the server asked for it).
    Reconnect {
        reason: String,
        received: bool,
        retry: Option<Duration>,
    },
}

/// Follows one upstream GET stream until the client's stream ends, reconnecting with backoff
/// (and `Last-Event-ID` when the server sent event ids).
async fn pump(
    target: Target,
    http: reqwest::Client,
    upstream: Upstream,
    tx: mpsc::Sender<String>,
    timing: Timing,
    _permit: OwnedSemaphorePermit,
) {
    let mut last_event_id: Option<String> = None;
    let mut delay = timing.backoff_initial;
    loop {
        let wait = match stream_once(&target, &http, &upstream, &tx, &mut last_event_id).await {
            Outcome::ClientGone => return,
            Outcome::Stop(reason) => {
                tracing::debug!(
                    "server {}: GET stream not followed: {reason}",
                    target.server
                );
                return;
            }
            Outcome::Reconnect {
                reason,
                received,
                retry,
            } => {
                if received {
                    delay = timing.backoff_initial;
                }
                let wait = retry.unwrap_or_else(|| crate::discovery::jitter(delay));
                delay = (delay * 2).min(timing.backoff_max);
                tracing::debug!(
                    "server {}: GET stream ended ({reason}); reconnecting in {} ms",
                    target.server,
                    wait.as_millis()
                );
                wait
            }
        };
        tokio::select! {
            _ = tx.closed() => return,
            _ = sleep(wait) => {}
        }
    }
}

async fn stream_once(
    target: &Target,
    http: &reqwest::Client,
    upstream: &Upstream,
    tx: &mpsc::Sender<String>,
    last_event_id: &mut Option<String>,
) -> Outcome {
    let mut request = http
        .get(&target.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &upstream.session);
    if !upstream.protocol_version.is_empty() {
        request = request.header("mcp-protocol-version", &upstream.protocol_version);
    }
    for header in &target.headers {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    if let Some(id) = last_event_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let sent = tokio::select! {
        _ = tx.closed() => return Outcome::ClientGone,
        sent = request.send() => sent,
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => {
            return Outcome::Reconnect {
                reason: crate::discovery::describe(&e),
                received: false,
                retry: None,
            }
        }
    };
    let status = response.status();
    if status == reqwest::StatusCode::METHOD_NOT_ALLOWED || status == reqwest::StatusCode::NOT_FOUND
    {
        return Outcome::Stop(format!("HTTP {status}"));
    }
    if !status.is_success() {
        return Outcome::Reconnect {
            reason: format!("HTTP {status}"),
            received: false,
            retry: None,
        };
    }
    let event_stream = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"));
    if !event_stream {
        return Outcome::Stop("the answer is not an event stream".into());
    }
    tracing::debug!("server {}: following its GET stream", target.server);
    let mut parser = Parser::new();
    let mut received = false;
    let mut retry = None;
    loop {
        let chunk = tokio::select! {
            _ = tx.closed() => return Outcome::ClientGone,
            chunk = response.chunk() => chunk,
        };
        let bytes = match chunk {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Outcome::Reconnect {
                    reason: "closed by the server".into(),
                    received,
                    retry,
                }
            }
            Err(e) => {
                return Outcome::Reconnect {
                    reason: crate::discovery::describe(&e),
                    received,
                    retry,
                }
            }
        };
        received = true;
        for event in parser.feed(&bytes) {
            if let Some(id) = event.id {
                *last_event_id = (!id.is_empty()).then_some(id);
            }
            if let Some(ms) = event.retry {
                retry = Some(Duration::from_millis(ms));
            }
            if event.data.trim().is_empty() {
                continue; // a priming event (an id for resumption, no message)
            }
            let data = relay::rewrite(&event.data, &target.server, target.mapped);
            if tx.send(data.into_owned()).await.is_err() {
                return Outcome::ClientGone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(session: &str, server: &str, upstream: &str) -> Registration {
        Registration {
            session: session.into(),
            server: server.into(),
            upstream_session: upstream.into(),
            protocol_version: "2025-06-18".into(),
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    fn servers(registry: &Registry, session: &str, now: Instant) -> Vec<(String, String)> {
        let mut v: Vec<_> = registry
            .snapshot(session, now)
            .0
            .into_iter()
            .map(|u| (u.server, u.session))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_registration_replaces_the_previous_one_of_its_server() {
        let registry = Registry::new(Limits::default());
        let now = Instant::now();
        registry.register(registration("s1", "a", "up-1"), TTL, now);
        registry.register(registration("s1", "b", "up-2"), TTL, now);
        registry.register(registration("s1", "a", "up-3"), TTL, now);
        registry.register(registration("s2", "a", "up-4"), TTL, now);
        assert_eq!(
            servers(&registry, "s1", now),
            [("a".into(), "up-3".into()), ("b".into(), "up-2".into())]
        );
        assert_eq!(servers(&registry, "s2", now), [("a".into(), "up-4".into())]);
        assert!(servers(&registry, "s3", now).is_empty());
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn registrations_are_bounded_per_session_and_in_total() {
        let limits = Limits {
            registrations: 5,
            per_session: 2,
            upstream_streams: 1,
        };
        let registry = Registry::new(limits);
        let now = Instant::now();
        for server in ["a", "b", "c"] {
            registry.register(registration("s1", server, server), TTL, now);
        }
        assert_eq!(
            servers(&registry, "s1", now),
            [("b".into(), "b".into()), ("c".into(), "c".into())],
            "the session's oldest is evicted"
        );
        for session in ["s2", "s3"] {
            for server in ["a", "b"] {
                registry.register(registration(session, server, server), TTL, now);
            }
        }
        // 6 kept per session would exceed 5 in total: the oldest of all (s1's b) went.
        assert_eq!(registry.len(), 5);
        assert_eq!(servers(&registry, "s1", now), [("c".into(), "c".into())]);
        assert_eq!(servers(&registry, "s3", now).len(), 2);
    }

    #[test]
    fn an_ended_session_is_forgotten() {
        let registry = Registry::new(Limits::default());
        let now = Instant::now();
        for server in ["a", "b"] {
            registry.register(
                registration("s1", server, "u"),
                Duration::from_secs(60),
                now,
            );
        }
        registry.register(registration("s2", "a", "u"), Duration::from_secs(60), now);
        registry.forget("s1");
        registry.forget("unknown");
        assert!(servers(&registry, "s1", now).is_empty());
        assert_eq!(servers(&registry, "s2", now).len(), 1);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn registrations_expire_with_the_session_ttl() {
        let limits = Limits {
            registrations: 2,
            per_session: 8,
            upstream_streams: 1,
        };
        let registry = Registry::new(limits);
        let start = Instant::now();
        registry.register(registration("old", "a", "1"), TTL, start);
        registry.register(registration("old", "b", "2"), TTL, start);
        let (_, next) = registry.snapshot("old", start);
        assert_eq!(next, Some(start + TTL));
        let later = start + TTL + Duration::from_secs(1);
        assert!(servers(&registry, "old", later).is_empty(), "expired");
        // At the cap, expired entries go first, and their session with them.
        registry.register(registration("new", "a", "3"), TTL, later);
        registry.register(registration("new", "b", "4"), TTL, later);
        assert_eq!(registry.len(), 2);
        assert_eq!(servers(&registry, "new", later).len(), 2);
        assert!(!registry.lock().sessions.contains_key("old"));
    }

    #[test]
    fn a_newer_follower_supersedes_the_older_one() {
        let registry = Registry::new(Limits::default());
        let (first, first_rx) = registry.follow("s1", mpsc::channel(1).0);
        registry.register(registration("s1", "a", "1"), TTL, Instant::now());
        assert!(first_rx.has_changed().unwrap(), "woken by a registration");
        let (second, _second_rx) = registry.follow("s1", mpsc::channel(1).0);
        assert!(first_rx.has_changed().is_err(), "superseded");
        registry.release("s1", first);
        assert!(registry.lock().sessions["s1"].follower.is_some());
        registry.release("s1", second);
        assert!(registry.lock().sessions["s1"].follower.is_none());
    }

    #[test]
    fn a_notice_goes_to_its_sessions_stream_alone() {
        let registry = Registry::new(Limits::default());
        let notice = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        assert!(!registry.notify("a", notice), "no stream open");
        let (a_tx, mut a_rx) = mpsc::channel(2);
        let (b_tx, mut b_rx) = mpsc::channel(2);
        let (a, _a_wake) = registry.follow("a", a_tx);
        let (_b, _b_wake) = registry.follow("b", b_tx);
        assert!(registry.notify("a", notice));
        assert_eq!(a_rx.try_recv().unwrap(), notice);
        assert!(b_rx.try_recv().is_err(), "never another session's");
        assert!(!registry.notify("c", notice));
        // A newer stream of the session takes the notices; a released one none.
        let (a_tx2, mut a_rx2) = mpsc::channel(1);
        let (newer, _wake) = registry.follow("a", a_tx2);
        assert!(registry.notify("a", notice));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(a_rx2.try_recv().unwrap(), notice);
        // Bounded: a client that does not read loses notices, nothing piles up.
        assert!(registry.notify("a", notice));
        assert!(!registry.notify("a", notice));
        registry.release("a", a);
        assert_eq!(a_rx2.try_recv().unwrap(), notice);
        assert!(
            registry.notify("a", notice),
            "the older stream's end leaves the newer one"
        );
        registry.release("a", newer);
        assert!(!registry.notify("a", notice));
        assert!(!registry.lock().sessions.contains_key("a"));
    }

    /// A fake upstream: the first GET streams a priming event, a request and a
    /// `resources/updated`, then closes; the next one (which must resume after event 2) is
    /// answered 405, which ends the following.
    #[test]
    fn upstream_messages_are_rewritten_and_a_405_is_not_followed() {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let gets = Arc::new(AtomicUsize::new(0));
            let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
            let (gets2, seen2) = (Arc::clone(&gets), Arc::clone(&seen));
            let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
            let app = axum::Router::new().route(
                "/mcp",
                axum::routing::get(move |headers: HeaderMap| {
                    let (gets, seen, done) = (Arc::clone(&gets2), Arc::clone(&seen2), done_tx.clone());
                    async move {
                        seen.lock().unwrap().push(headers);
                        if gets.fetch_add(1, Ordering::SeqCst) > 0 {
                            let _ = done.send(()).await;
                            return StatusCode::METHOD_NOT_ALLOWED.into_response();
                        }
                        let body = "id: 1\ndata: \n\n\
                            event: message\nid: 2\nretry: 10\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"roots/list\"}\n\n\
                            data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\",\
                            \"params\":{\"uri\":\"test://x\"}}\n\n";
                        ([("content-type", "text/event-stream")], body).into_response()
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let yaml = format!(
                "servers:\n  - {{name: a, url: 'http://{addr}/mcp', headers: {{x-tenant: t1}}}}\n"
            );
            let settings =
                crate::settings::parse(&yaml, std::path::Path::new("/tmp"), &|_| None).unwrap();
            let (_settings_tx, settings_rx) = watch::channel(Arc::new(settings));
            let registry = Arc::new(Registry::new(Limits::default()));
            let mut rx = follow(Arc::clone(&registry), settings_rx, "s1".into());
            // Registered after the client stream opened: followed all the same.
            registry.register(registration("s1", "a", "up-1"), TTL, Instant::now());
            let first = rx.recv().await.unwrap();
            let request: serde_json::Value = serde_json::from_str(&first).unwrap();
            assert_eq!(request["id"], "mcpgw:a:5");
            let second = rx.recv().await.unwrap();
            let updated: serde_json::Value = serde_json::from_str(&second).unwrap();
            assert_eq!(updated["params"]["uri"], "mcpgw://a/test://x");
            // The upstream closed; the follower resumes after event 2 (after the upstream's
            // `retry`), gets 405 and stops.
            done_rx.recv().await.unwrap();
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 2);
            for headers in &seen {
                assert_eq!(headers["mcp-session-id"], "up-1");
                assert_eq!(headers["mcp-protocol-version"], "2025-06-18");
                assert_eq!(headers["accept"], "text/event-stream");
                assert_eq!(headers["x-tenant"], "t1");
            }
            assert!(seen[0].get("last-event-id").is_none());
            assert_eq!(seen[1]["last-event-id"], "2");
        });
    }

    #[test]
    fn registrations_are_validated() {
        assert!(registration("s", "a", "u").validate().is_ok());
        let mut r = registration("s", "a", "u");
        r.protocol_version.clear();
        assert!(r.validate().is_ok());
        for bad in [
            registration("", "a", "u"),
            registration("s", "", "u"),
            registration("s", "a", ""),
            registration("s", "a", "u\r\nx-evil: 1"),
            registration("s", "a b", "u"),
            registration(&"s".repeat(513), "a", "u"),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
