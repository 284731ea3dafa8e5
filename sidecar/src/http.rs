//! The sidecar's HTTP side:
//! - `GET /v1/config?wait_ms=N` (+ `If-None-Match`): the plugin's long poll for the document.
//! - `GET <mcp_path>`: the clients' notification stream (SSE), routed here by Envoy: the
//!   `list_changed` notifications merged with the upstream GET streams of the client's session.
//! - `POST /v1/streams`: the plugin registers an upstream session it opened for a client session.
//! - `DELETE /v1/streams`: the plugin tells that a client session ended.
//! - `POST /v1/streams/notify`: the plugin has a `list_changed` notification sent on one client
//!   session's notification stream (after `select_tools` changed that session's tools/list).
//! - `GET /v1/status`: servers, collisions, config errors (JSON, for people and tests).
//! - `GET /healthz`.
//! - `GET /metrics`: Prometheus metrics (see metrics.rs; open, no secret in them).
//!
//! The first three need `authorization: Bearer <plugin token>`: the document holds every upstream
//! credential and the session keys, and the plugin sets the token on a client's GET stream only
//! after checking the client's session. The status page, `/metrics` and `/healthz` hold no secret
//! and stay open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{timeout_at, Instant};

use crate::engine::{ListKind, Outputs, Published};
use crate::settings::PluginToken;
use crate::streams::{self, Registration, Registry};

/// Longest hold of a long poll, whatever the client asks.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// Body of every 401.
const UNAUTHORIZED_BODY: &str =
    "{\"error\":\"unauthorized\",\"message\":\"a valid plugin bearer token is required\"}\n";

#[derive(Clone)]
struct AppState {
    outputs: Outputs,
    auth: Arc<Auth>,
    streams: Arc<Registry>,
    open_streams: Arc<Mutex<OpenStreams>>,
}

/// Notification streams open at once, in all and per client session.
#[derive(Default)]
struct OpenStreams {
    total: usize,
    per_session: HashMap<String, usize>,
}

/// Streams one client session may hold open at once (one per tab or agent is the usual case).
const STREAMS_PER_SESSION: usize = 4;

/// One open notification stream, counted in `AppState::open_streams` while it lives.
struct StreamSlot {
    open: Arc<Mutex<OpenStreams>>,
    session: Option<String>,
}

impl StreamSlot {
    /// A slot when fewer than `max` streams are open, and fewer than `STREAMS_PER_SESSION` of
    /// `session`'s; otherwise which limit was reached.
    fn take(
        open: &Arc<Mutex<OpenStreams>>,
        max: usize,
        session: Option<&str>,
    ) -> Result<Self, &'static str> {
        let mut guard = open.lock().unwrap_or_else(PoisonError::into_inner);
        let o = &mut *guard;
        if o.total >= max {
            return Err("too many notification streams are open; retry later");
        }
        if let Some(session) = session {
            let n = o.per_session.entry(session.to_owned()).or_default();
            if *n >= STREAMS_PER_SESSION {
                return Err("this session has too many notification streams open");
            }
            *n += 1;
        }
        o.total += 1;
        crate::metrics::get()
            .notification_streams
            .set(i64::try_from(o.total).unwrap_or(i64::MAX));
        Ok(Self {
            open: Arc::clone(open),
            session: session.map(str::to_owned),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        o.total = o.total.saturating_sub(1);
        crate::metrics::get()
            .notification_streams
            .set(i64::try_from(o.total).unwrap_or(i64::MAX));
        if let Some(session) = &self.session {
            if let Some(n) = o.per_session.get_mut(session) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    o.per_session.remove(session);
                }
            }
        }
    }
}

/// Checks `authorization: Bearer <plugin token>`. Only the token's SHA-256 is kept; a presented
/// token is hashed and the digests compared in constant time, so the comparison reveals neither
/// the content nor the length of the token through its timing.
pub struct Auth {
    digest: [u8; 32],
}

impl Auth {
    pub fn new(token: &PluginToken) -> Self {
        Self {
            digest: Sha256::digest(token.expose().as_bytes()).into(),
        }
    }

    /// Exactly one `authorization` header, scheme `Bearer` (any case), the right token.
    fn allows(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some(presented) = bearer(value.as_bytes()) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(digest.ct_eq(&self.digest))
    }
}

/// The credential of a `Bearer` authorization value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let credential = rest.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !credential.is_empty()).then_some(credential)
}

fn unauthorized(what: &str) -> Response {
    tracing::debug!("refused {what}: no valid plugin token");
    let mut response = (
        StatusCode::UNAUTHORIZED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        UNAUTHORIZED_BODY,
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"mcpgw-sidecar\""),
    );
    response
}

/// The sidecar's endpoints; `/v1/config`, `/v1/streams` and the stream need `token` as a bearer
/// credential.
pub fn router(outputs: Outputs, token: &PluginToken) -> Router {
    router_with(
        outputs,
        token,
        Arc::new(Registry::new(streams::Limits::default())),
    )
}

fn router_with(outputs: Outputs, token: &PluginToken, streams: Arc<Registry>) -> Router {
    Router::new()
        .route("/v1/config", get(config))
        .route("/v1/streams", post(register).delete(forget))
        .route("/v1/streams/notify", post(notify))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(mcp_stream)
        .with_state(AppState {
            outputs,
            auth: Arc::new(Auth::new(token)),
            streams,
            open_streams: Arc::default(),
        })
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": error, "message": message}).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The body of `DELETE /v1/streams`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ended {
    session: String,
}

/// `DELETE /v1/streams`: a client session ended (the plugin answered its DELETE); its
/// registrations go. `204`.
async fn forget(State(state): State<AppState>, request: Request) -> Response {
    if !state.auth.allows(request.headers()) {
        return unauthorized("DELETE /v1/streams");
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), streams::MAX_BODY_BYTES).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is too large",
        );
    };
    match serde_json::from_slice::<Ended>(&body) {
        Ok(ended) if !ended.session.is_empty() => {
            state.streams.forget(&ended.session);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => json_error(StatusCode::BAD_REQUEST, "bad_request", "session is empty"),
        Err(e) => json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    }
}

/// The body of `POST /v1/streams/notify`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Notice {
    session: String,
    method: String,
}

/// `POST /v1/streams/notify`: sends a `list_changed` notification (no other method) on the
/// notification stream of this one client session, if one is open. `204` either way (whether a
/// stream took it is in the `x-mcpgw-delivered` header, for tests): a notice is a hint, and a
/// session without an open stream has nobody to tell.
async fn notify(State(state): State<AppState>, request: Request) -> Response {
    if !state.auth.allows(request.headers()) {
        return unauthorized("POST /v1/streams/notify");
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), streams::MAX_BODY_BYTES).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is too large",
        );
    };
    let notice = match serde_json::from_slice::<Notice>(&body) {
        Ok(notice) => notice,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if notice.session.is_empty() || notice.session.len() > 512 {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "session must be 1 to 512 bytes",
        );
    }
    let kind = match notice.method.as_str() {
        "notifications/tools/list_changed" => ListKind::Tools,
        "notifications/prompts/list_changed" => ListKind::Prompts,
        "notifications/resources/list_changed" => ListKind::Resources,
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "method must be a list_changed notification",
            )
        }
    };
    let delivered = state.streams.notify(&notice.session, kind.notification());
    tracing::debug!(
        "{} for a client session: delivered {delivered}",
        notice.method
    );
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        "x-mcpgw-delivered",
        HeaderValue::from_static(if delivered { "1" } else { "0" }),
    );
    response
}

/// `POST /v1/streams`: the plugin opened an upstream session for a client session (see
/// [`crate::streams`]). `204` when recorded.
async fn register(State(state): State<AppState>, request: Request) -> Response {
    if !state.auth.allows(request.headers()) {
        return unauthorized("POST /v1/streams");
    }
    let body = match axum::body::to_bytes(request.into_body(), streams::MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the registration is too large",
            )
        }
    };
    let registration: Registration = match serde_json::from_slice(&body) {
        Ok(registration) => registration,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if let Err(e) = registration.validate() {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", &e);
    }
    let settings = state.outputs.settings.borrow().clone();
    if !settings
        .servers
        .iter()
        .any(|s| s.enabled && s.name == registration.server)
    {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_server",
            "no enabled server has this name",
        );
    }
    tracing::debug!(
        "upstream session of server {} registered for a client session",
        registration.server
    );
    let ttl = Duration::from_secs(settings.session_ttl_seconds);
    state.streams.register(registration, ttl, Instant::now());
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ConfigQuery {
    wait_ms: Option<u64>,
}

/// Does `If-None-Match` name this document?
fn matches(if_none_match: Option<&str>, hash: &str) -> bool {
    let Some(value) = if_none_match else {
        return false;
    };
    value.split(',').any(|tag| {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag.trim_matches('"') == hash
    })
}

fn etag(hash: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

fn document_response(p: &Published) -> Response {
    let mut response = Response::new(Body::from(p.body.clone()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, etag(&p.hash));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&p.version) {
        headers.insert("x-mcpgw-version", v);
    }
    response
}

async fn config(
    State(state): State<AppState>,
    query: Result<Query<ConfigQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if !state.auth.allows(&headers) {
        return unauthorized("GET /v1/config");
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return rejection.into_response(),
    };
    let outputs = state.outputs;
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    // A waiting long poll is a connected plugin poller.
    let _poller =
        (!wait.is_zero()).then(|| crate::metrics::InFlight::new(&crate::metrics::get().pollers));
    let mut rx = outputs.document.clone();
    loop {
        let current: Option<Arc<Published>> = rx.borrow_and_update().clone();
        if let Some(p) = &current {
            if !matches(if_none_match.as_deref(), &p.hash) {
                return document_response(p);
            }
        }
        match timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                return match current {
                    Some(p) => {
                        let mut r = StatusCode::NOT_MODIFIED.into_response();
                        r.headers_mut().insert(header::ETAG, etag(&p.hash));
                        r
                    }
                    None => {
                        let mut r = (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no configuration yet: discovery in progress\n",
                        )
                            .into_response();
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                        r
                    }
                };
            }
        }
    }
}

/// `GET /metrics`: the sidecar's metrics (see metrics.rs: no token, no secret).
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        crate::metrics::get().encode(),
    )
        .into_response()
}

async fn status(State(state): State<AppState>) -> Response {
    let status = state.outputs.status.borrow().clone();
    let mut status = match serde_json::to_value(&*status) {
        Ok(status) => status,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Some(fields) = status.as_object_mut() {
        // The long polls held now (`mcpgw_sidecar_plugin_pollers` on /metrics).
        let waiting = crate::metrics::get().pollers.get();
        fields.insert("polls_waiting".into(), waiting.into());
    }
    match serde_json::to_vec_pretty(&status) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET <mcp_path>`: the notification stream, for requests the plugin vouched for (they carry
/// its token); anything else is 404/405.
/// MCP 2026-07-28 `subscriptions/listen` (checked and vouched for by the plugin): an SSE stream
/// that opens with `notifications/subscriptions/acknowledged` and carries the catalog's
/// `list_changed` notifications the client opted into (`params.notifications.toolsListChanged`,
/// `promptsListChanged`, `resourcesListChanged`), each tagged with the subscription id (the
/// request's id). Resource subscriptions are not relayed yet.
async fn listen(
    rx: tokio::sync::broadcast::Receiver<ListKind>,
    keepalive: Duration,
    request: Request,
) -> Response {
    let body = axum::body::to_bytes(request.into_body(), 1024 * 1024)
        .await
        .unwrap_or_default();
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = message
        .get("id")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let wanted = message
        .pointer("/params/notifications")
        .cloned()
        .unwrap_or_default();
    let opted = move |kind: &ListKind| {
        let key = match kind {
            ListKind::Tools => "toolsListChanged",
            ListKind::Prompts => "promptsListChanged",
            ListKind::Resources => "resourcesListChanged",
        };
        wanted.get(key).and_then(serde_json::Value::as_bool) == Some(true)
    };
    let meta = serde_json::json!({ "io.modelcontextprotocol/subscriptionId": id });
    let ack = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"_meta": meta}});
    let tagged = move |kind: ListKind| {
        let method = match kind {
            ListKind::Tools => "notifications/tools/list_changed",
            ListKind::Prompts => "notifications/prompts/list_changed",
            ListKind::Resources => "notifications/resources/list_changed",
        };
        serde_json::json!({"jsonrpc": "2.0", "method": method, "params": {"_meta": meta}})
            .to_string()
    };
    let changes = stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(kind) => Some((kind, rx)),
            // A lagging listener missed changes: tell it the tools changed (the common case).
            Err(RecvError::Lagged(_)) => Some((ListKind::Tools, rx)),
            Err(RecvError::Closed) => None,
        }
    })
    .filter(move |kind| std::future::ready(opted(kind)))
    .map(move |kind| Ok::<_, Infallible>(Event::default().data(tagged(kind))));
    let first = stream::once(std::future::ready(Ok::<_, Infallible>(
        Event::default().data(ack.to_string()),
    )));
    let mut response = Sse::new(first.chain(changes))
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A filter installed without `allow_on_headers_stop_iteration` (`envoy.install: wasm_plugin`, a
/// stock Istio WasmPlugin) cannot hold the headers of an MCP 2026-07-28 request it answers itself
/// (`server/discover`, lists) while it reads the body: the gateway's default route for POSTs
/// brings them here (the bootstrap's, or the Istio install's HTTPRoute), whatever this sidecar's
/// own `envoy.install` says. The plugin
/// holds the body and answers, which resets this request: the body never arrives. Should one
/// arrive (the plugin missing from the chain), the client gets a JSON-RPC error, not a hang.
async fn held_post(request: Request) -> Response {
    let body = axum::body::to_bytes(request.into_body(), 1024 * 1024).await;
    tracing::warn!(
        "a POST reached the sidecar's MCP path with its body ({} bytes): the plugin did not answer it",
        body.as_ref().map_or(0, |b| b.len())
    );
    let error = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32603,
        "message": "the MCP gateway plugin did not answer this request (is it in the filter chain?)"}});
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        error.to_string(),
    )
        .into_response()
}

async fn mcp_stream(State(state): State<AppState>, request: Request) -> Response {
    let outputs = state.outputs;
    let settings = outputs.settings.borrow().clone();
    if request.uri().path() != settings.gateway.0.mcp_path {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if request.method() == Method::POST && request.headers().contains_key("x-mcpgw-listen") {
        if !state.auth.allows(request.headers()) {
            return unauthorized("a subscription stream");
        }
        return listen(outputs.notices.subscribe(), settings.keepalive, request).await;
    }
    if request.method() == Method::POST {
        return held_post(request).await;
    }
    if request.method() != Method::GET {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n").into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if !state.auth.allows(request.headers()) {
        return unauthorized("the notification stream");
    }
    // The plugin names the client session it vouched for: its upstream GET streams are merged in.
    let session = request
        .headers()
        .get(streams::SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 512);
    let slot = match StreamSlot::take(&state.open_streams, settings.max_streams, session) {
        Ok(slot) => slot,
        Err(why) => {
            tracing::debug!("refused a notification stream: {why}");
            let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "too_many_streams", why);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
    };
    let upstream = session.map(|session| {
        streams::follow(
            Arc::clone(&state.streams),
            outputs.settings.clone(),
            session.to_owned(),
        )
    });
    let merged = stream::select(
        notifications(outputs.notices.subscribe()),
        upstream_events(upstream),
    )
    // The slot is freed when the client goes (axum drops the stream).
    .map(move |event| {
        let _held = &slot;
        event
    });
    let mut response = Sse::new(merged)
        .keep_alive(
            KeepAlive::new()
                .interval(settings.keepalive)
                .text("keep-alive"),
        )
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The events of the session's upstream GET streams (none without a session).
fn upstream_events(
    rx: Option<tokio::sync::mpsc::Receiver<String>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let message = rx.recv().await?;
        Some((Ok(Event::default().data(message)), Some(rx)))
    })
}

fn notifications(
    rx: tokio::sync::broadcast::Receiver<ListKind>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // A lagging subscriber missed some changes: tell it about every list.
    stream::unfold(
        (rx, Vec::<ListKind>::new()),
        |(mut rx, mut backlog)| async move {
            loop {
                if let Some(kind) = backlog.pop() {
                    return Some((
                        Ok(Event::default().data(kind.notification())),
                        (rx, backlog),
                    ));
                }
                match rx.recv().await {
                    Ok(kind) => {
                        return Some((
                            Ok(Event::default().data(kind.notification())),
                            (rx, backlog),
                        ))
                    }
                    Err(RecvError::Lagged(_)) => {
                        backlog = vec![ListKind::Resources, ListKind::Prompts, ListKind::Tools];
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use tokio::sync::{broadcast, watch};

    use crate::engine::Status;
    use crate::settings::{parse, Settings};

    const TOKEN: &str = "test-plugin-token-0123456789-abcdefghij";

    #[test]
    fn notification_streams_are_capped_in_all_and_per_session() {
        let open = Arc::default();
        let mine: Vec<_> = (0..STREAMS_PER_SESSION)
            .map(|_| StreamSlot::take(&open, 6, Some("s")).unwrap())
            .collect();
        assert!(StreamSlot::take(&open, 6, Some("s")).is_err());
        let other = StreamSlot::take(&open, 6, Some("t")).unwrap();
        let anonymous = StreamSlot::take(&open, 6, None).unwrap();
        assert_eq!(
            StreamSlot::take(&open, 6, Some("u")).err(),
            Some("too many notification streams are open; retry later")
        );
        drop(mine);
        assert!(StreamSlot::take(&open, 6, Some("s")).is_ok());
        drop((other, anonymous));
        let o = open.lock().unwrap();
        assert_eq!((o.total, o.per_session.len()), (0, 0));
    }
    const UPSTREAM_CREDENTIAL: &str = "Bearer upstream-credential-xyz";
    const SESSION_KEY: &str = "c2Vzc2lvbi1rZXktMzItYnl0ZXMtZm9yLXRlc3RzISE=";

    /// The senders of the watched outputs: dropping them would end long polls early.
    struct Running {
        addr: SocketAddr,
        _document: watch::Sender<Option<Arc<Published>>>,
        _status: watch::Sender<Arc<Status>>,
        _settings: watch::Sender<Arc<Settings>>,
        streams: Arc<Registry>,
    }

    /// The router on 127.0.0.1 (its own thread and runtime), serving a document that holds
    /// secrets.
    fn start() -> Running {
        let body = format!(
            r#"{{"version":"v1","session":{{"keys":[{{"id":"k1","secret":"{SESSION_KEY}"}}]}},"servers":[{{"headers":[{{"name":"authorization","value":"{UPSTREAM_CREDENTIAL}"}}]}}]}}"#
        );
        let (document_tx, document) = watch::channel(Some(Arc::new(Published {
            version: "v1".into(),
            hash: "abc".into(),
            body: body.into(),
        })));
        let (status_tx, status) = watch::channel(Arc::new(Status::default()));
        let settings = parse(
            "servers:\n  - {name: a, url: 'http://127.0.0.1:9/mcp'}\n",
            std::path::Path::new("/tmp"),
            &|_| None,
        )
        .unwrap();
        let (settings_tx, settings) = watch::channel(Arc::new(settings));
        let (notices, _) = broadcast::channel(4);
        let outputs = Outputs {
            document,
            status,
            settings,
            notices,
        };
        let token = PluginToken::parse(TOKEN, &"test").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(Registry::new(streams::Limits::default()));
        let registry = Arc::clone(&streams);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router_with(outputs, &token, registry))
                    .await
                    .unwrap();
            });
        });
        Running {
            addr,
            _document: document_tx,
            _status: status_tx,
            _settings: settings_tx,
            streams,
        }
    }

    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// One HTTP/1.1 request; the body is read to the end except for an event stream (only its
    /// head is read, the stream stays open).
    fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> Answer {
        exchange(addr, method, path, headers, "")
    }

    fn exchange(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> Answer {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut text =
            format!("{method} {path} HTTP/1.1\r\nhost: sidecar\r\nconnection: close\r\n");
        for h in headers {
            text.push_str(h);
            text.push_str("\r\n");
        }
        text.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(text.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let split = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the head");
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut answer = Answer {
            status: head[9..12].parse().unwrap(),
            head,
            body: String::new(),
        };
        let mut body = raw[split + 4..].to_vec();
        if answer.header("content-type") != Some("text/event-stream") {
            stream.read_to_end(&mut body).unwrap();
        }
        answer.body = String::from_utf8(body).unwrap();
        answer
    }

    fn assert_refused(answer: &Answer) {
        assert_eq!(answer.status, 401, "{}", answer.head);
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Bearer realm=\"mcpgw-sidecar\"")
        );
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(error["error"], "unauthorized");
        for secret in [TOKEN, UPSTREAM_CREDENTIAL, SESSION_KEY] {
            assert!(!answer.body.contains(secret) && !answer.head.contains(secret));
        }
    }

    #[test]
    fn the_document_needs_the_plugin_token() {
        let sidecar = start();
        let get = |headers: &[&str]| request(sidecar.addr, "GET", "/v1/config", headers);
        let right = format!("authorization: Bearer {TOKEN}");
        let refused = [
            vec![],
            vec!["authorization: Bearer wrong-token".to_string()],
            vec![format!("authorization: Bearer {TOKEN}x")],
            vec![format!(
                "authorization: Bearer {}",
                &TOKEN[..TOKEN.len() - 1]
            )],
            vec![format!("authorization: Basic {TOKEN}")],
            vec![format!("authorization: {TOKEN}")],
            vec!["authorization: Bearer ".to_string()],
            vec![format!("x-mcpgw-token: {TOKEN}")],
            // One right and one wrong: ambiguous, refused.
            vec![
                right.clone(),
                "authorization: Bearer wrong-token".to_string(),
            ],
        ];
        for headers in refused {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let answer = get(&headers);
            assert_refused(&answer);
        }
        // Refused before the query is even looked at.
        assert_refused(&request(sidecar.addr, "GET", "/v1/config?wait_ms=x", &[]));

        let answer = get(&[&right]);
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert!(answer.body.contains(UPSTREAM_CREDENTIAL));
        assert_eq!(answer.header("etag"), Some("\"abc\""));
        let lower = format!("authorization: bearer   {TOKEN}");
        assert_eq!(get(&[&lower]).status, 200, "the scheme is case-insensitive");
        let unchanged = get(&[&right, "if-none-match: \"abc\""]);
        assert_eq!(unchanged.status, 304);
    }

    #[test]
    fn the_notification_stream_needs_the_plugin_token() {
        let sidecar = start();
        assert_refused(&request(sidecar.addr, "GET", "/mcp", &[]));
        assert_refused(&request(
            sidecar.addr,
            "GET",
            "/mcp",
            &["authorization: Bearer a-client-credential"],
        ));
        let right = format!("authorization: Bearer {TOKEN}");
        let answer = request(sidecar.addr, "GET", "/mcp", &[&right]);
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert_eq!(answer.header("content-type"), Some("text/event-stream"));
        // A POST is held until its body (which the plugin keeps: tests/e2e/test_mcp2026.py); one
        // that arrives means the plugin did not answer.
        assert_eq!(request(sidecar.addr, "POST", "/mcp", &[]).status, 503);
        assert_eq!(request(sidecar.addr, "GET", "/elsewhere", &[]).status, 404);
    }

    #[test]
    fn registrations_need_the_plugin_token_and_a_known_server() {
        let sidecar = start();
        let body = r#"{"session":"c2Vzc2lvbg","server":"a","upstream_session":"up-1","protocol_version":"2025-06-18"}"#;
        let post = |headers: &[&str], body: &str| {
            exchange(sidecar.addr, "POST", "/v1/streams", headers, body)
        };
        let right = format!("authorization: Bearer {TOKEN}");
        for headers in [
            vec![],
            vec!["authorization: Bearer wrong-token".to_string()],
            vec![
                right.clone(),
                "authorization: Bearer wrong-token".to_string(),
            ],
        ] {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            assert_refused(&post(&headers, body));
        }
        assert_eq!(sidecar.streams.len(), 0);
        for (bad, status) in [
            ("{", 400),
            (
                r#"{"session":"s","server":"a","upstream_session":"u"}"#,
                400,
            ),
            (
                r#"{"session":"s","server":"a","upstream_session":"u","protocol_version":"v","x":1}"#,
                400,
            ),
            (
                r#"{"session":"s","server":"a","upstream_session":"u v","protocol_version":"v"}"#,
                400,
            ),
            (
                r#"{"session":"s","server":"zz","upstream_session":"u","protocol_version":"v"}"#,
                404,
            ),
        ] {
            let answer = post(&[&right], bad);
            assert_eq!(answer.status, status, "{bad}: {}", answer.body);
        }
        let huge = format!(
            r#"{{"session":"{}","server":"a","upstream_session":"u","protocol_version":"v"}}"#,
            "s".repeat(streams::MAX_BODY_BYTES)
        );
        assert_eq!(post(&[&right], &huge).status, 413);
        assert_eq!(sidecar.streams.len(), 0);
        let answer = post(&[&right], body);
        assert_eq!(answer.status, 204, "{}", answer.body);
        assert_eq!(sidecar.streams.len(), 1);
        assert_eq!(
            request(sidecar.addr, "GET", "/v1/streams", &[&right]).status,
            405
        );
    }

    /// A vouched notification stream of `session`, its head read; the socket stays open.
    fn open_stream(addr: SocketAddr, session: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).unwrap();
        let text = format!(
            "GET /mcp HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer {TOKEN}\r\n\
             x-mcpgw-session: {session}\r\n\r\n"
        );
        stream.write_all(text.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1);
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        stream
    }

    /// What arrives on a stream within `wait`.
    fn read_for(stream: &mut TcpStream, wait: Duration) -> String {
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(n) => String::from_utf8_lossy(&chunk[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }

    #[test]
    fn a_notice_reaches_the_stream_of_its_session_alone() {
        let sidecar = start();
        let right = format!("authorization: Bearer {TOKEN}");
        let post = |headers: &[&str], body: &str| {
            exchange(sidecar.addr, "POST", "/v1/streams/notify", headers, body)
        };
        let notice = r#"{"session":"c2Vzc2lvbi1h","method":"notifications/tools/list_changed"}"#;
        assert_refused(&post(&[], notice));
        assert_refused(&post(&["authorization: Bearer wrong-token"], notice));
        for bad in [
            "{",
            r#"{"session":"c2Vzc2lvbi1h"}"#,
            r#"{"session":"","method":"notifications/tools/list_changed"}"#,
            r#"{"session":"s","method":"notifications/message"}"#,
            r#"{"session":"s","method":"notifications/tools/list_changed","x":1}"#,
        ] {
            assert_eq!(post(&[&right], bad).status, 400, "{bad}");
        }
        let huge = format!(
            r#"{{"session":"{}","method":"notifications/tools/list_changed"}}"#,
            "s".repeat(streams::MAX_BODY_BYTES)
        );
        assert_eq!(post(&[&right], &huge).status, 413);
        // No stream open: nobody to tell.
        let answer = post(&[&right], notice);
        assert_eq!(answer.status, 204);
        assert_eq!(answer.header("x-mcpgw-delivered"), Some("0"));

        let mut a = open_stream(sidecar.addr, "c2Vzc2lvbi1h");
        let mut b = open_stream(sidecar.addr, "c2Vzc2lvbi1i");
        // The stream's follower starts on its own task: wait until it takes the notice.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = post(&[&right], notice);
            assert_eq!(answer.status, 204);
            if answer.header("x-mcpgw-delivered") == Some("1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never delivered");
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = read_for(&mut a, Duration::from_secs(5));
        assert!(
            got.contains(r#"data: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#),
            "{got}"
        );
        let other = read_for(&mut b, Duration::from_millis(300));
        assert!(!other.contains("list_changed"), "{other}");
    }

    #[test]
    fn status_and_health_stay_open() {
        let sidecar = start();
        let status = request(sidecar.addr, "GET", "/v1/status", &[]);
        assert_eq!(status.status, 200);
        assert!(!status.body.contains(TOKEN));
        let health = request(sidecar.addr, "GET", "/healthz", &[]);
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        let metrics = request(sidecar.addr, "GET", "/metrics", &[]);
        assert_eq!(metrics.status, 200);
        assert!(metrics
            .body
            .contains("# TYPE mcpgw_sidecar_catalog_publishes counter"));
        assert!(metrics.body.ends_with("# EOF\n"));
        assert!(!metrics.body.contains(TOKEN));
    }

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bEaReR  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }

    #[test]
    fn if_none_match_forms() {
        assert!(!matches(None, "abc"));
        assert!(matches(Some("\"abc\""), "abc"));
        assert!(matches(Some("W/\"abc\""), "abc"));
        assert!(matches(Some("\"x\", \"abc\""), "abc"));
        assert!(matches(Some("*"), "abc"));
        assert!(matches(Some("abc"), "abc"));
        assert!(!matches(Some("\"abd\""), "abc"));
    }
}
