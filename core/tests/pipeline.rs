//! The request pipeline driven through a fake host: what it answers, what it sends upstream.
// Test helpers outside #[test] functions are not covered by clippy.toml's in-tests allowances.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::rc::Rc;

use mcpgw_core::upstream;
use mcpgw_core::{Action, CallResponse, Catalog, GatewayConfig, Host, Level, Request};

type Headers = Vec<(String, Vec<u8>)>;
/// A local reply: status, headers, body.
type Reply = (u16, Headers, Vec<u8>);
/// A dispatched call: cluster, headers, body.
type Call = (String, Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
struct FakeHost {
    request_headers: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response_headers: Vec<(String, Vec<u8>)>,
    reply: Option<Reply>,
    calls: Vec<Call>,
    shared: HashMap<String, Vec<u8>>,
    resumed_request: bool,
    route_cache_cleared: bool,
    /// Request headers the pipeline removed, in order (one entry per host call).
    removed: Vec<String>,
    now: u64,
}

impl FakeHost {
    fn post(body: &str, session: Option<&str>) -> Self {
        let mut host = FakeHost {
            now: 1_000_000,
            ..Default::default()
        };
        host.request_headers = vec![
            (":method".into(), b"POST".to_vec()),
            (":path".into(), b"/mcp".to_vec()),
            (":authority".into(), b"gw.local".to_vec()),
            ("content-type".into(), b"application/json".to_vec()),
            (
                "accept".into(),
                b"application/json, text/event-stream".to_vec(),
            ),
            ("authorization".into(), b"Bearer client-token".to_vec()),
            ("x-mcp-servername".into(), b"spoofed".to_vec()),
        ];
        if let Some(session) = session {
            host.request_headers
                .push(("mcp-session-id".into(), session.as_bytes().to_vec()));
        }
        host.request_body = body.as_bytes().to_vec();
        host
    }

    fn header(&self, name: &str) -> Option<String> {
        self.request_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }

    fn reply_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.reply.as_ref().expect("a local reply").2).unwrap()
    }

    fn reply_status(&self) -> u16 {
        self.reply.as_ref().expect("a local reply").0
    }

    fn reply_header(&self, name: &str) -> Option<String> {
        let (_, headers, _) = self.reply.as_ref()?;
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }
}

impl Host for FakeHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.request_headers.clone()
    }
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.request_headers.retain(|(n, _)| n != name);
        self.request_headers.push((name.into(), value.to_vec()));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.removed.push(name.into());
        self.request_headers.retain(|(n, _)| n != name);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        assert_eq!(size, self.request_body.len());
        Some(self.request_body.clone())
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        assert_eq!(
            size,
            self.request_body.len(),
            "replaces exactly the buffered body"
        );
        self.request_body = body.to_vec();
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.remove_response_header(name);
        self.response_headers.push((name.into(), value.to_vec()));
    }
    fn remove_response_header(&mut self, name: &str) {
        self.response_headers.retain(|(n, _)| n != name);
    }
    fn send_response(
        &mut self,
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
        _details: &str,
    ) {
        assert!(self.reply.is_none(), "one local reply per stream");
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        self.reply = Some((status, headers, body.to_vec()));
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout: u64,
    ) -> Result<u32, String> {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.calls.push((cluster.into(), headers, body.to_vec()));
        Ok(100 + self.calls.len() as u32)
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.get(key).cloned()
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        self.shared.insert(key.into(), value.to_vec());
    }
    fn now_secs(&self) -> u64 {
        self.now
    }
    fn random_nonce(&mut self) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&self.now.to_le_bytes());
        nonce[8] = self.calls.len() as u8;
        nonce
    }
    fn clear_route_cache(&mut self) {
        self.route_cache_cleared = true;
    }
    fn resume_request(&mut self) {
        self.resumed_request = true;
    }
    fn resume_response(&mut self) {}
    fn log(&self, _level: Level, _message: &str) {}
}

fn catalog(page_size: usize) -> Rc<Catalog> {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "t1",
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}], "ttl_seconds": 3600},
        "limits": {"page_size": page_size, "max_body_bytes": 4096},
        "servers": [
            {"name": "alpha", "prefix": "alpha_", "authority": "alpha.mcp.local", "cluster": "alpha",
             "host": "127.0.0.1:1", "headers": [{"name": "authorization", "value": "Bearer alpha-secret"}],
             "forward_headers": ["x-tenant"],
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}, {"name": "add", "description": "a+b"}]},
            {"name": "beta", "prefix": "beta_", "authority": "beta.mcp.local", "path": "/v1/mcp", "cluster": "beta",
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
        ]
    }))
    .unwrap();
    Rc::new(Catalog::build(config).unwrap())
}

/// Runs a POST through headers and body; returns the last action.
fn run(catalog: &Rc<Catalog>, host: &mut FakeHost) -> (Request, Action) {
    let mut request = Request::new(Rc::clone(catalog), Rc::default());
    assert_eq!(request.on_request_headers(host, false), Action::Pause);
    let size = host.request_body.len();
    let action = request.on_request_body(host, size, true);
    (request, action)
}

fn initialize(catalog: &Rc<Catalog>) -> String {
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"1"}}}"#,
        None,
    );
    let (_, action) = run(catalog, &mut host);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply_status(), 200);
    let answer = host.reply_json();
    assert_eq!(answer["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        answer["result"]["capabilities"]["tools"]["listChanged"],
        false
    );
    host.reply_header("mcp-session-id")
        .expect("a session token")
}

#[test]
fn initialize_negotiates_and_issues_a_session() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    assert!(token.starts_with("k1."));
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":"x","method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#,
        None,
    );
    run(&catalog, &mut host);
    assert_eq!(host.reply_json()["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(host.reply_json()["id"], "x");
}

#[test]
fn tools_list_is_prefixed_and_paginated() {
    let catalog = catalog(2);
    let mut host = FakeHost::post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, None);
    run(&catalog, &mut host);
    let first = host.reply_json();
    let names: Vec<&str> = first["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha_echo", "alpha_add"]);
    assert_eq!(first["result"]["tools"][1]["description"], "a+b");
    let cursor = first["result"]["nextCursor"].as_str().unwrap().to_owned();
    let mut host = FakeHost::post(
        &format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{"cursor":"{cursor}"}}}}"#
        ),
        None,
    );
    run(&catalog, &mut host);
    let second = host.reply_json();
    assert_eq!(second["result"]["tools"][0]["name"], "beta_echo");
    assert!(second["result"].get("nextCursor").is_none());
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"nope"}}"#,
        None,
    );
    run(&catalog, &mut host);
    assert_eq!(host.reply_json()["error"]["code"], -32602);
}

#[test]
fn tools_call_opens_an_upstream_session_then_routes() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"arguments":{"name":"alpha_echo","n":[1,2]},"name":"alpha_echo"}}"#;
    let mut host = FakeHost::post(body, Some(&token));
    // A spoofed header with the very value the gateway will set is still replaced by its own.
    host.set_request_header("x-mcp-servername", b"alpha");
    host.set_request_header("x-mcp-toolname", b"echo");
    let (mut request, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Pause, "waits for the upstream initialize");
    let (cluster, headers, init_body) = host.calls[0].clone();
    assert_eq!(cluster, "alpha");
    let mut init_names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    init_names.sort_unstable();
    assert_eq!(
        init_names,
        [
            ":authority",
            ":method",
            ":path",
            "accept",
            "authorization",
            "content-type",
            "x-mcp-servername"
        ],
        "the gateway's own call carries no client header"
    );
    assert!(headers.contains(&(":authority".into(), "127.0.0.1:1".into())));
    assert!(headers.contains(&("authorization".into(), "Bearer alpha-secret".into())));
    let init: serde_json::Value = serde_json::from_slice(&init_body).unwrap();
    assert_eq!(init["method"], "initialize");
    assert_eq!(init["params"]["clientInfo"]["name"], "t");
    assert!(init["params"]["capabilities"].get("sampling").is_none());

    let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2025-06-18\"}}\n\n";
    request.on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(200),
            content_type: Some(b"text/event-stream".to_vec()),
            session_id: Some(b"up-1".to_vec()),
            body: sse.to_vec(),
            ..Default::default()
        },
    );
    let (_, headers, note) = host.calls[1].clone();
    assert!(headers.contains(&("mcp-session-id".into(), "up-1".into())));
    assert_eq!(
        String::from_utf8(note).unwrap(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
    );
    assert!(!host.resumed_request);
    request.on_call_response(
        &mut host,
        102,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    assert!(host.resumed_request);
    assert!(host.reply.is_none());

    // Only the tool name changed; the arguments are byte-for-byte the client's.
    let sent = String::from_utf8(host.request_body.clone()).unwrap();
    assert_eq!(
        sent,
        body.replace(r#""name":"alpha_echo"}}"#, r#""name":"echo"}}"#)
    );
    assert_eq!(
        host.header("content-length").unwrap(),
        sent.len().to_string()
    );
    assert_eq!(host.header(":authority").unwrap(), "alpha.mcp.local");
    assert_eq!(host.header(":path").unwrap(), "/mcp");
    assert_eq!(host.header("x-mcp-servername").unwrap(), "alpha");
    assert_eq!(host.header("x-mcp-toolname").unwrap(), "echo");
    assert_eq!(host.header("x-mcp-method").unwrap(), "tools/call");
    assert_eq!(host.header("authorization").unwrap(), "Bearer alpha-secret");
    assert_eq!(host.header("mcp-session-id").unwrap(), "up-1");
    assert_eq!(host.header("mcp-protocol-version").unwrap(), "2025-06-18");
    assert!(host.route_cache_cleared);

    // The answer goes back under the client's session, not the upstream's.
    host.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("mcp-session-id".into(), b"up-1".to_vec()),
    ];
    assert_eq!(request.on_response_headers(&mut host), Action::Continue);
    assert_eq!(
        host.response_header("mcp-session-id").unwrap(),
        token.as_bytes()
    );

    // The next call reuses the cached upstream session without any call of its own.
    let shared = host.shared.clone();
    let mut host = FakeHost::post(body, Some(&token));
    host.shared = shared;
    let (_, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Continue);
    assert!(host.calls.is_empty());
    assert_eq!(host.header("mcp-session-id").unwrap(), "up-1");
}

/// Headers a hostile or chatty client adds to its call, on top of `FakeHost::post`'s.
const CLIENT_EXTRAS: &[(&str, &str)] = &[
    ("cookie", "sid=client"),
    ("cookie", "theme=dark"),
    ("proxy-authorization", "Basic cHJveHk="),
    ("x-api-key", "client-key"),
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-proto", "http"),
    ("forwarded", "for=203.0.113.9"),
    ("accept-encoding", "gzip"),
    ("x-envoy-upstream-rq-timeout-ms", "1"),
    (
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ),
    ("user-agent", "client/1"),
    ("x-request-id", "rid-1"),
    ("x-tenant", "acme"),
];

fn names(headers: &[(String, Vec<u8>)]) -> std::collections::BTreeSet<String> {
    headers.iter().map(|(n, _)| n.clone()).collect()
}

/// A warm call (upstream session cached) to `tool`, with [`CLIENT_EXTRAS`].
fn routed_call(catalog: &Rc<Catalog>, token: &str, server: &str, tool: &str) -> FakeHost {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    );
    let mut host = FakeHost::post(&body, Some(token));
    for (name, value) in CLIENT_EXTRAS {
        host.request_headers
            .push(((*name).into(), value.as_bytes().to_vec()));
    }
    let session_id = catalog
        .keys
        .open(token.as_bytes(), host.now)
        .unwrap()
        .id
        .clone();
    let up = upstream::UpstreamSession {
        session_id: format!("up-{server}"),
        protocol_version: "2025-06-18".into(),
    };
    upstream::store(
        &mut host,
        catalog.limits.upstream_session_slots,
        &session_id,
        server,
        &up,
    );
    let (_, action) = run(catalog, &mut host);
    assert_eq!(action, Action::Continue);
    assert!(host.calls.is_empty() && host.reply.is_none());
    host
}

#[test]
fn a_routed_call_carries_only_what_its_server_may_receive() {
    let catalog = catalog(10);
    let token = initialize(&catalog);

    // alpha: a credential of its own (authorization) and forward_headers [x-tenant].
    let host = routed_call(&catalog, &token, "alpha", "alpha_echo");
    let mut removed = host.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "accept-encoding",
            "cookie",
            "forwarded",
            "proxy-authorization",
            "x-api-key",
            "x-envoy-upstream-rq-timeout-ms",
            "x-forwarded-for",
            "x-mcp-servername", // the client's spoofed copy, removed on every path
        ],
        "one removal per disallowed name present (cookie came twice)"
    );
    assert_eq!(
        names(&host.request_headers),
        [
            ":authority",
            ":method",
            ":path",
            "accept",
            "authorization",
            "content-length",
            "content-type",
            "mcp-protocol-version",
            "mcp-session-id",
            "traceparent",
            "user-agent",
            // Left for Envoy's route matching; the route removes it (docs/architecture.md).
            "x-forwarded-proto",
            "x-mcp-method",
            "x-mcp-servername",
            "x-mcp-toolname",
            "x-request-id",
            "x-tenant",
        ]
        .map(String::from)
        .into(),
    );
    assert_eq!(host.header("authorization").unwrap(), "Bearer alpha-secret");
    assert_eq!(host.header("x-tenant").unwrap(), "acme");
    assert_eq!(host.header("mcp-session-id").unwrap(), "up-alpha");

    // beta: no credential, no forward_headers: the client's authorization and x-tenant go too.
    let host = routed_call(&catalog, &token, "beta", "beta_echo");
    assert!(host.removed.contains(&"authorization".to_owned()));
    assert!(host.removed.contains(&"x-tenant".to_owned()));
    assert!(host.header("authorization").is_none());
    assert!(host.header("x-tenant").is_none());
    assert_eq!(
        host.header("traceparent").unwrap(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    for gone in [
        "cookie",
        "proxy-authorization",
        "x-api-key",
        "x-forwarded-for",
    ] {
        assert!(host.header(gone).is_none(), "{gone}");
    }
}

#[test]
fn a_call_with_only_allowed_headers_removes_nothing() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"alpha_echo"}}"#;
    let mut host = FakeHost::post(body, Some(&token));
    let session_id = catalog
        .keys
        .open(token.as_bytes(), host.now)
        .unwrap()
        .id
        .clone();
    let up = upstream::UpstreamSession {
        session_id: "up".into(),
        protocol_version: "2025-06-18".into(),
    };
    upstream::store(
        &mut host,
        catalog.limits.upstream_session_slots,
        &session_id,
        "alpha",
        &up,
    );
    run(&catalog, &mut host);
    // Only the spoofed routing header (removed on every path) cost a removal.
    assert_eq!(host.removed, ["x-mcp-servername"]);
}

#[test]
fn an_expired_upstream_session_is_reopened_and_the_call_replayed() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"beta_echo","arguments":{}}}"#;
    let mut host = FakeHost::post(body, Some(&token));
    for (name, value) in CLIENT_EXTRAS {
        host.request_headers
            .push(((*name).into(), value.as_bytes().to_vec()));
    }
    let session_id = catalog
        .keys
        .open(token.as_bytes(), host.now)
        .unwrap()
        .id
        .clone();
    let slots = catalog.limits.upstream_session_slots;
    let stale = upstream::UpstreamSession {
        session_id: "old".into(),
        protocol_version: "2025-06-18".into(),
    };
    upstream::store(&mut host, slots, &session_id, "beta", &stale);
    let (mut request, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Continue);
    host.response_headers = vec![(":status".into(), b"404".to_vec())];
    assert_eq!(request.on_response_headers(&mut host), Action::Pause);
    assert_eq!(
        request.on_response_body(),
        Action::Pause,
        "the 404 body is held back"
    );
    let init = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}"#;
    request.on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(200),
            content_type: Some(b"application/json".to_vec()),
            session_id: Some(b"new".to_vec()),
            body: init.as_bytes().to_vec(),
            ..Default::default()
        },
    );
    request.on_call_response(
        &mut host,
        102,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    let (cluster, headers, replayed) = host.calls[2].clone();
    assert_eq!(cluster, "beta");
    assert!(headers.contains(&("mcp-session-id".into(), "new".into())));
    assert!(headers.contains(&(":path".into(), "/v1/mcp".into())));
    assert!(headers.contains(&("x-mcp-toolname".into(), "echo".into())));
    // The replay carries what the routed call carried: the gateway's headers and the client's
    // allowed ones (trace context), never the rest.
    let mut replay_names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    replay_names.sort_unstable();
    assert_eq!(
        replay_names,
        [
            ":authority",
            ":method",
            ":path",
            "accept",
            "content-type",
            "mcp-protocol-version",
            "mcp-session-id",
            "traceparent",
            "user-agent",
            "x-mcp-method",
            "x-mcp-servername",
            "x-mcp-toolname",
            "x-request-id",
        ]
    );
    assert!(
        !headers.iter().any(|(_, v)| v == &token),
        "not the client's session"
    );
    assert!(String::from_utf8(replayed)
        .unwrap()
        .contains(r#""name":"echo""#));
    let answer = br#"{"jsonrpc":"2.0","id":9,"result":{"content":[]}}"#;
    request.on_call_response(
        &mut host,
        103,
        CallResponse {
            status: Some(200),
            content_type: Some(b"application/json".to_vec()),
            session_id: Some(b"new".to_vec()),
            body: answer.to_vec(),
            ..Default::default()
        },
    );
    assert_eq!(host.reply_status(), 200);
    assert_eq!(host.reply_json()["id"], 9);
    assert_eq!(host.reply_header("mcp-session-id").unwrap(), token);
    let cached = upstream::lookup(&host, slots, &session_id, "beta").unwrap();
    assert_eq!(cached.session_id, "new");
}

#[test]
fn upstream_initialize_failure_is_a_jsonrpc_error() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"alpha_add"}}"#,
        Some(&token),
    );
    let (mut request, _) = run(&catalog, &mut host);
    request.on_call_response(&mut host, 101, CallResponse::default());
    assert_eq!(host.reply_status(), 200);
    let answer = host.reply_json();
    assert_eq!(answer["id"], 4);
    assert_eq!(answer["error"]["code"], -32603);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("alpha"));
}

#[test]
fn delete_closes_upstream_sessions_and_ends_the_session() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let mut host = FakeHost::post("", Some(&token));
    let session_id = catalog
        .keys
        .open(token.as_bytes(), host.now)
        .unwrap()
        .id
        .clone();
    let slots = catalog.limits.upstream_session_slots;
    let up = upstream::UpstreamSession {
        session_id: "up-a".into(),
        protocol_version: "2025-06-18".into(),
    };
    upstream::store(&mut host, slots, &session_id, "alpha", &up);
    host.request_headers[0].1 = b"DELETE".to_vec();
    let mut request = Request::new(Rc::clone(&catalog), Rc::default());
    assert_eq!(request.on_request_headers(&mut host, true), Action::Pause);
    let (cluster, headers, _) = host.calls[0].clone();
    assert_eq!(cluster, "alpha");
    assert!(headers.contains(&(":method".into(), "DELETE".into())));
    assert!(headers.contains(&("mcp-session-id".into(), "up-a".into())));
    assert!(host.reply.is_none());
    request.on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(200),
            ..Default::default()
        },
    );
    assert_eq!(host.reply_status(), 200);

    let shared = host.shared.clone();
    let mut host = FakeHost::post(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, Some(&token));
    host.shared = shared;
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 404, "an ended session is gone");
}

#[test]
fn bad_input_gets_precise_errors() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let cases: &[(&str, Option<&str>, u16, i64)] = &[
        ("{oops", None, 400, -32700),
        ("[]", None, 400, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
            Some(&token),
            200,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_nope"}}"#,
            Some(&token),
            200,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            Some(&token),
            200,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            Some(&token),
            200,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo"}}"#,
            None,
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            Some("k1.tampered"),
            404,
            -32600,
        ),
    ];
    for (body, session, status, code) in cases {
        let mut host = FakeHost::post(body, *session);
        run(&catalog, &mut host);
        assert_eq!(host.reply_status(), *status, "{body}");
        assert_eq!(host.reply_json()["error"]["code"], *code, "{body}");
    }
    let mut host = FakeHost::post("{}", None);
    host.set_request_header("content-type", b"text/plain");
    let mut request = Request::new(Rc::clone(&catalog), Rc::default());
    request.on_request_headers(&mut host, false);
    assert_eq!(host.reply_status(), 415);

    let mut host = FakeHost::post("{}", None);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default());
    request.on_request_headers(&mut host, false);
    assert_eq!(
        request.on_request_body(&mut host, 5000, false),
        Action::Pause
    );
    assert_eq!(host.reply_status(), 413);

    let mut host = FakeHost::post("{}", None);
    host.request_headers[0].1 = b"GET".to_vec();
    let mut request = Request::new(Rc::clone(&catalog), Rc::default());
    request.on_request_headers(&mut host, true);
    assert_eq!(host.reply_status(), 405);
    assert_eq!(host.reply_header("allow").unwrap(), "POST, DELETE");
}

#[test]
fn other_paths_pass_through_without_routing_headers() {
    let catalog = catalog(10);
    let mut host = FakeHost::post("{oops", None);
    host.set_request_header(":path", b"/healthz");
    let mut request = Request::new(Rc::clone(&catalog), Rc::default());
    assert_eq!(
        request.on_request_headers(&mut host, false),
        Action::Continue
    );
    assert_eq!(
        request.on_request_body(&mut host, 5, true),
        Action::Continue
    );
    assert!(host.reply.is_none());
    assert!(
        host.header("x-mcp-servername").is_none(),
        "routing headers are the gateway's on every path"
    );
}

/// Hostile bodies: every truncation and many byte substitutions of valid messages must end in an
/// answer (or a routed call), never a panic, which would kill the VM for the whole worker.
#[test]
fn mangled_bodies_always_get_an_answer() {
    let catalog = catalog(2);
    let token = initialize(&catalog);
    let seeds = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","id":"a\u00e9","method":"tools/call","params":{"name":"alpha_echo","arguments":{"t":"\ud83d\ude00"}}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"cGFnZTox"}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    ];
    let replacements: &[u8] = b"{}[]\",:\\0-e.\x00\xff\xc3 ";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cases = 0;
    for seed in seeds {
        let bytes = seed.as_bytes();
        let mut bodies: Vec<Vec<u8>> = (0..bytes.len()).map(|cut| bytes[..cut].to_vec()).collect();
        for _ in 0..400 {
            let mut body = bytes.to_vec();
            let at = (next() as usize) % body.len();
            body[at] = replacements[(next() as usize) % replacements.len()];
            bodies.push(body);
        }
        for body in bodies {
            for session in [None, Some(token.as_str())] {
                let mut host = FakeHost::post("", session);
                host.request_body = body.clone();
                let mut request = Request::new(Rc::clone(&catalog), Rc::default());
                if request.on_request_headers(&mut host, false) != Action::Pause {
                    continue;
                }
                let action = request.on_request_body(&mut host, body.len(), true);
                let answered = host.reply.is_some();
                let routed = action == Action::Continue || !host.calls.is_empty();
                assert!(
                    answered || routed,
                    "no answer for {:?}",
                    String::from_utf8_lossy(&body)
                );
                if let Some((status, _, reply)) = &host.reply {
                    if *status != 202 {
                        let reply: serde_json::Value = serde_json::from_slice(reply).unwrap();
                        assert_eq!(reply["jsonrpc"], "2.0");
                    }
                }
                cases += 1;
            }
        }
    }
    assert!(cases > 3000);
}

#[test]
fn the_session_cache_is_bounded_and_evicts_the_oldest_entry_of_a_set() {
    let mut host = FakeHost::post("", None);
    let up = |id: &str| upstream::UpstreamSession {
        session_id: id.into(),
        protocol_version: "2025-06-18".into(),
    };
    // 4 slots = one set of 4 ways: the fifth pair evicts the one stored first.
    for (i, client) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
        host.now = 100 + i as u64;
        upstream::store(&mut host, 4, client, "alpha", &up(client));
    }
    upstream::store(&mut host, 4, "c2", "alpha", &up("c2-renewed"));
    assert_eq!(
        upstream::lookup(&host, 4, "c2", "alpha")
            .unwrap()
            .session_id,
        "c2-renewed"
    );
    host.now = 200;
    upstream::store(&mut host, 4, "c5", "alpha", &up("c5"));
    assert!(
        upstream::lookup(&host, 4, "c1", "alpha").is_none(),
        "oldest evicted"
    );
    for client in ["c2", "c3", "c4", "c5"] {
        assert!(
            upstream::lookup(&host, 4, client, "alpha").is_some(),
            "{client}"
        );
    }
    assert!(
        upstream::lookup(&host, 4, "c3", "beta").is_none(),
        "keyed by server too"
    );
    assert_eq!(host.shared.len(), 4, "bounded by the slot count");
    assert_eq!(
        upstream::forget(&mut host, 4, "c3", "alpha")
            .unwrap()
            .session_id,
        "c3"
    );
    assert!(upstream::lookup(&host, 4, "c3", "alpha").is_none());
}
