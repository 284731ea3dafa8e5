//! The sidecar's HTTP side:
//! - `GET /v1/config?wait_ms=N` (+ `If-None-Match`): the plugin's long poll for the document.
//! - `GET <mcp_path>`: the clients' notification stream (SSE), routed here by Envoy.
//! - `GET /v1/status`: servers, collisions, config errors (JSON, for people and tests).
//! - `GET /healthz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{timeout_at, Instant};

use crate::engine::{ListKind, Outputs, Published};

/// Longest hold of a long poll, whatever the client asks.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

pub fn router(outputs: Outputs) -> Router {
    Router::new()
        .route("/v1/config", get(config))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(mcp_stream)
        .with_state(outputs)
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
    State(outputs): State<Outputs>,
    Query(query): Query<ConfigQuery>,
    headers: HeaderMap,
) -> Response {
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
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

async fn status(State(outputs): State<Outputs>) -> Response {
    let status = outputs.status.borrow().clone();
    match serde_json::to_vec_pretty(&*status) {
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

/// `GET <mcp_path>`: the notification stream; anything else is 404/405.
async fn mcp_stream(State(outputs): State<Outputs>, request: Request) -> Response {
    let settings = outputs.settings.borrow().clone();
    if request.uri().path() != settings.gateway.0.mcp_path {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if request.method() != Method::GET {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n").into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let mut response = Sse::new(notifications(outputs.notices.subscribe()))
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
