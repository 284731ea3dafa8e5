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

use mcpgw_core::config::SidecarLink;
use mcpgw_core::upstream;
use mcpgw_core::{
    Action, CallResponse, Catalog, GatewayConfig, Host, Level, LogBudget, Request, Unconfigured,
};

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
    response_body: Vec<u8>,
    reply: Option<Reply>,
    details: String,
    logs: std::cell::RefCell<Vec<(Level, String)>>,
    calls: Vec<Call>,
    /// Shared data: value and version (CAS), like the proxy's.
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_version: u32,
    resumed_request: bool,
    route_cache_cleared: bool,
    /// Request headers the pipeline removed, in order (one entry per host call).
    removed: Vec<String>,
    /// The length of each request body write.
    body_writes: Vec<usize>,
    now: u64,
    /// The proxy's randomness is broken.
    no_entropy: bool,
    /// Every compare-and-swap write loses (another worker always writes first).
    refuse_versioned_writes: bool,
    /// Mixed into nonces, so that many sessions issued in one second differ.
    nonce_seed: u64,
    /// This VM's wake-up address, and the wake-ups sent (address, message).
    wake_address: Option<u32>,
    woken: Vec<(u32, Vec<u8>)>,
    /// Calls made to outlive the stream (cluster, headers).
    detached: Vec<(String, Vec<(String, String)>)>,
    /// The bodies of the detached calls, in order.
    detached_bodies: Vec<Vec<u8>>,
    /// Telemetry events (Debug form) and access-log fields reported.
    events: Vec<String>,
    fields: Vec<(mcpgw_core::Field, String)>,
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

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
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
    /// Like Envoy's `replace`: the first value is overwritten, later copies stay.
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        match self.request_headers.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.request_headers.push((name.into(), value.to_vec())),
        }
    }
    fn remove_request_header(&mut self, name: &str) {
        self.removed.push(name.into());
        self.request_headers.retain(|(n, _)| n != name);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        assert_eq!(size, self.request_body.len());
        Some(self.request_body.clone())
    }
    /// Like Envoy's write at offset 0: the first `size` bytes are drained, `body` prepended.
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        assert!(
            size <= self.request_body.len(),
            "replaces buffered bytes only"
        );
        self.request_body.splice(..size, body.iter().copied());
        self.body_writes.push(body.len());
    }
    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.response_headers.clone()
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        assert_eq!(size, self.response_body.len());
        Some(self.response_body.clone())
    }
    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        assert_eq!(size, self.response_body.len());
        self.response_body = body.to_vec();
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
        details: &str,
    ) {
        assert!(self.reply.is_none(), "one local reply per stream");
        self.details = details.into();
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
        self.shared.get(key).map(|(value, _)| value.clone())
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        self.next_version += 1;
        self.shared
            .insert(key.into(), (value.to_vec(), self.next_version));
    }
    fn shared_get_versioned(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.get(key).cloned()
    }
    fn shared_set_versioned(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        if self.refuse_versioned_writes || self.shared.get(key).map(|(_, v)| *v) != version {
            return false;
        }
        self.shared_set(key, value);
        true
    }
    fn now_secs(&self) -> u64 {
        self.now
    }
    fn now_millis(&self) -> u64 {
        self.now * 1000
    }
    fn random_nonce(&mut self) -> Option<[u8; 24]> {
        if self.no_entropy {
            return None;
        }
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&self.now.to_le_bytes());
        nonce[8] = self.calls.len() as u8;
        nonce[9..17].copy_from_slice(&self.nonce_seed.to_le_bytes());
        Some(nonce)
    }
    fn clear_route_cache(&mut self) {
        self.route_cache_cleared = true;
    }
    fn resume_request(&mut self) {
        self.resumed_request = true;
    }
    fn resume_response(&mut self) {}
    fn observe(&mut self, event: mcpgw_core::Event<'_>) {
        self.events.push(format!("{event:?}"));
    }
    fn log_field(&mut self, field: mcpgw_core::Field, value: &str) {
        self.fields.push((field, value.to_owned()));
    }
    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.into()));
    }
    fn wake_address(&self) -> Option<u32> {
        self.wake_address
    }
    fn wake(&mut self, address: u32, message: &[u8]) {
        self.woken.push((address, message.to_vec()));
    }
    fn dispatch_detached(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        _timeout: u64,
    ) -> Result<(), String> {
        self.detached_bodies.push(body.to_vec());
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.detached.push((cluster.into(), headers));
        Ok(())
    }
}

fn catalog(page_size: usize) -> Rc<Catalog> {
    catalog_with(page_size, false)
}

/// `list_changed`: the GET notification stream is served behind the plugin (by the sidecar).
fn catalog_with(page_size: usize, list_changed: bool) -> Rc<Catalog> {
    catalog_with_limits(
        serde_json::json!({"page_size": page_size, "max_body_bytes": 4096}),
        list_changed,
    )
}

fn catalog_with_limits(limits: serde_json::Value, list_changed: bool) -> Rc<Catalog> {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "t1",
        "gateway": {"list_changed": list_changed},
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}], "ttl_seconds": 3600},
        "limits": limits,
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
    let mut request = Request::new(Rc::clone(catalog), Rc::default(), None);
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
        catalog.gateway.list_changed
    );
    host.reply_header("mcp-session-id")
        .expect("a session token")
}

/// Puts an upstream session of `server` (id `upstream_id`, protocol 2025-06-18) in the cache for
/// the client session of `token`, as an earlier call would have; returns the client session's id.
fn cache_upstream(
    host: &mut FakeHost,
    catalog: &Catalog,
    token: &str,
    server: &str,
    upstream_id: &str,
) -> String {
    let session_id = catalog
        .keys
        .open(token.as_bytes(), host.now)
        .unwrap()
        .id
        .clone();
    let up = upstream::UpstreamSession {
        session_id: upstream_id.into(),
        protocol_version: "2025-06-18".into(),
    };
    upstream::store(
        host,
        catalog.limits.upstream_session_slots,
        &session_id,
        server,
        &up,
    );
    session_id
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
fn without_randomness_no_session_token_is_issued() {
    let catalog = catalog(10);
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":3,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
        None,
    );
    host.no_entropy = true;
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 503);
    assert_eq!(host.reply_json()["error"]["code"], -32603);
    assert_eq!(host.reply_json()["id"], 3);
    assert!(host.reply_json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no randomness"));
    assert!(host.reply_header("mcp-session-id").is_none());
    assert_eq!(host.details, "mcpgw_no_randomness");
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
    assert!(
        init["params"]["capabilities"].get("sampling").is_some(),
        "the client can be asked for sampling through the gateway"
    );

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
    cache_upstream(&mut host, catalog, token, server, &format!("up-{server}"));
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
            "x-mcp-annotation-hints",
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
    // No annotations: MCP's defaults, in the one fixed shape a policy matches.
    assert_eq!(
        host.header("x-mcp-annotation-hints").unwrap(),
        "readOnly=false,destructive=true,idempotent=false,openWorld=true"
    );

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
    cache_upstream(&mut host, &catalog, &token, "alpha", "up");
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
        request.on_response_body(&mut host, 0, false),
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
            "x-mcp-annotation-hints",
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
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
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

/// The process-wide part of the fake proxy (shared data), moved from one stream to the next.
#[derive(Default)]
struct Process {
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_version: u32,
    requests: u64,
}

impl Process {
    /// Runs one request (`method` on the MCP path, `body` when it has one) at time `now`.
    fn exchange(
        &mut self,
        catalog: &Rc<Catalog>,
        now: u64,
        method: &str,
        body: &str,
        token: Option<&str>,
    ) -> FakeHost {
        let mut host = FakeHost::post(body, token);
        host.now = now;
        host.request_headers[0].1 = method.as_bytes().to_vec();
        host.shared = std::mem::take(&mut self.shared);
        host.next_version = self.next_version;
        self.requests += 1;
        host.nonce_seed = self.requests;
        let mut request = Request::new(Rc::clone(catalog), Rc::default(), None);
        if request.on_request_headers(&mut host, body.is_empty()) == Action::Pause
            && host.reply.is_none()
        {
            let size = host.request_body.len();
            request.on_request_body(&mut host, size, true);
        }
        self.shared = std::mem::take(&mut host.shared);
        self.next_version = host.next_version;
        host
    }

    fn initialize(&mut self, catalog: &Rc<Catalog>, now: u64) -> String {
        let host = self.exchange(
            catalog,
            now,
            "POST",
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
            None,
        );
        host.reply_header("mcp-session-id").unwrap()
    }

    fn ping_status(&mut self, catalog: &Rc<Catalog>, now: u64, token: &str) -> u16 {
        let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
        self.exchange(catalog, now, "POST", ping, Some(token))
            .reply_status()
    }
}

#[test]
fn no_ended_session_reopens_whatever_the_number_of_sessions_ended_since() {
    // The table alone goes through 100,000 cycles in `ended`'s unit tests; here each cycle runs
    // the whole pipeline (and its AEAD, ~1 ms in a debug build).
    let catalog = catalog(10);
    let mut process = Process::default();
    let start = 1_000_000;
    let mut now = start;
    let mut ended_tokens = Vec::new();
    let mut live = Vec::new();
    for cycle in 0..2_000u64 {
        if cycle.is_multiple_of(10) {
            now += 1;
        }
        // Tokens are issued on many workers and replicas: used out of order, up to 10 min old.
        let issued = now - (cycle * 7919) % 600;
        let token = process.initialize(&catalog, issued);
        if cycle.is_multiple_of(100) {
            live.push(token);
            continue;
        }
        let host = process.exchange(&catalog, now, "DELETE", "", Some(&token));
        assert_eq!(host.reply_status(), 200);
        assert_eq!(process.ping_status(&catalog, now, &token), 404);
        assert_eq!(
            process
                .exchange(&catalog, now, "DELETE", "", Some(&token))
                .reply_status(),
            404,
            "ended once"
        );
        ended_tokens.push(token);
    }
    for token in &ended_tokens {
        assert_eq!(process.ping_status(&catalog, now, token), 404, "reopened");
    }
    for token in &live {
        assert_eq!(process.ping_status(&catalog, now, token), 200);
    }
}

/// Session nonces whose ids fall in the ended table's set `set`.
fn nonces_in_set(set: &str, count: usize) -> Vec<u64> {
    use base64::Engine;
    let mut found = Vec::new();
    let mut seed = 0u64;
    while found.len() < count {
        seed += 1;
        // The nonce FakeHost draws: now, calls made (none), the seed.
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
        nonce[9..17].copy_from_slice(&seed.to_le_bytes());
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce);
        if mcpgw_core::ended::key(&id, mcpgw_core::ended::SETS) == set {
            found.push(seed);
        }
    }
    found
}

#[test]
fn a_full_set_of_the_ended_table_refuses_what_it_evicts_and_nothing_newer() {
    use mcpgw_core::ended::WAYS;
    let catalog = catalog(10);
    let mut process = Process::default();
    let set = "mcpgw.ended.7";
    // Sessions of one set, issued a second apart: ids[i] at 1_000_000 - 100 + i.
    let seeds = nonces_in_set(set, 2 * WAYS + 4);
    let now = 1_000_000;
    let mut tokens = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        let mut host = FakeHost::post(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
            None,
        );
        host.now = now;
        host.nonce_seed = *seed;
        host.shared = std::mem::take(&mut process.shared);
        run(&catalog, &mut host);
        process.shared = std::mem::take(&mut host.shared);
        let token = host.reply_header("mcp-session-id").unwrap();
        // Re-seal with the issue time wanted (the nonce, hence the set, stays).
        let session = catalog.keys.open(token.as_bytes(), now).unwrap();
        let mut claims = session.claims.clone();
        claims.iat = now - 100 + i as u64;
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&now.to_le_bytes());
        nonce[9..17].copy_from_slice(&seed.to_le_bytes());
        let (token, id) = catalog.keys.seal(&claims, nonce).unwrap();
        assert_eq!(mcpgw_core::ended::key(&id, mcpgw_core::ended::SETS), set);
        tokens.push(token);
    }
    // End the even-numbered ones, in issue order: WAYS + 2 ends overflow the set twice.
    let ended: Vec<usize> = (0..tokens.len()).filter(|i| i.is_multiple_of(2)).collect();
    assert!(ended.len() > WAYS + 1);
    for i in &ended {
        let host = process.exchange(&catalog, now, "DELETE", "", Some(&tokens[*i]));
        assert_eq!(host.reply_status(), 200);
    }
    for i in &ended {
        assert_eq!(process.ping_status(&catalog, now, &tokens[*i]), 404, "{i}");
    }
    // The set kept the WAYS latest issued; the two earliest were evicted, so the watermark is
    // the issue time of the second earliest ended (index 2): live sessions issued at or before
    // it are refused, the others are not.
    assert_eq!(
        process
            .exchange(&catalog, now, "DELETE", "", Some(&tokens[0]))
            .reply_status(),
        404,
        "an evicted session stays ended"
    );
    for i in (0..tokens.len()).filter(|i| !i.is_multiple_of(2)) {
        let status = process.ping_status(&catalog, now, &tokens[i]);
        assert_eq!(status, if i <= 2 { 404 } else { 200 }, "{i}");
    }
}

#[test]
fn a_delete_that_cannot_be_recorded_leaves_the_session_whole() {
    let catalog = catalog(10);
    let mut process = Process::default();
    let token = process.initialize(&catalog, 1_000_000);
    let id = catalog
        .keys
        .open(token.as_bytes(), 1_000_000)
        .unwrap()
        .id
        .clone();
    // The ended table's key is held by something the plugin cannot version (no CAS can win).
    let key = mcpgw_core::ended::key(&id, mcpgw_core::ended::SETS);
    process.shared.insert(key, (b"0".to_vec(), 0));
    let mut host = FakeHost::post("", Some(&token));
    host.now = 1_000_000;
    host.request_headers[0].1 = b"DELETE".to_vec();
    host.shared = std::mem::take(&mut process.shared);
    host.refuse_versioned_writes = true;
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
    request.on_request_headers(&mut host, true);
    assert_eq!(host.reply_status(), 503);
    assert_eq!(host.reply_json()["error"]["code"], -32603);
    assert_eq!(host.details, "mcpgw_session_not_ended");
    assert!(host.calls.is_empty(), "no upstream session was closed");
    process.shared = std::mem::take(&mut host.shared);
    assert_eq!(process.ping_status(&catalog, 1_000_000, &token), 200);
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
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
    request.on_request_headers(&mut host, false);
    assert_eq!(host.reply_status(), 415);

    let mut host = FakeHost::post("{}", None);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
    request.on_request_headers(&mut host, false);
    assert_eq!(
        request.on_request_body(&mut host, 5000, false),
        Action::Pause
    );
    assert_eq!(host.reply_status(), 413);

    let mut host = FakeHost::post("{}", None);
    host.request_headers[0].1 = b"GET".to_vec();
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
    request.on_request_headers(&mut host, true);
    assert_eq!(host.reply_status(), 405);
    assert_eq!(host.reply_header("allow").unwrap(), "POST, DELETE");
}

#[test]
fn other_paths_pass_through_without_routing_headers() {
    let catalog = catalog(10);
    let mut host = FakeHost::post("{oops", None);
    host.set_request_header(":path", b"/healthz");
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
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

/// A message some upstream parser could read differently than the gateway (a case variant, an
/// escaped duplicate, a Unicode fold, nesting past the limit) is refused before anything else:
/// 400 -32600, the id kept when it is unambiguous, nothing dispatched, nothing rewritten.
#[test]
fn ambiguous_requests_are_refused_and_nothing_is_forwarded() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    let cases: &[(String, serde_json::Value, &str)] = &[
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo","Name":"beta_echo"}}"#.into(),
            1.into(),
            r#"Invalid Request: key "Name" in params is ambiguous (an upstream may read it as "name")"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"alpha_echo","n\u0061me":"beta_echo"}}"#.into(),
            2.into(),
            r#"Invalid Request: duplicate key "name" in params"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"m","method":"tools/call","METHOD":"ping","params":{"name":"alpha_echo"}}"#.into(),
            "m".into(),
            r#"Invalid Request: key "METHOD" is ambiguous (an upstream may read it as "method")"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"alpha_echo"},"param\u017f":{"name":"beta_echo"}}"#.into(),
            3.into(),
            "Invalid Request: key \"param\u{17F}\" is ambiguous (an upstream may read it as \"params\")",
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"ID":5,"method":"tools/call","params":{"name":"alpha_echo"}}"#.into(),
            serde_json::Value::Null,
            r#"Invalid Request: key "ID" is ambiguous (an upstream may read it as "id")"#,
        ),
        (
            format!(r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"alpha_echo","_meta":{{"x":{deep}}}}}}}"#),
            6.into(),
            "Invalid Request: JSON nesting deeper than 64",
        ),
        (
            format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"alpha_echo","arguments":{{"x":{deep}}}}}}}"#),
            7.into(),
            "Invalid Request: JSON nesting deeper than 64",
        ),
    ];
    for (body, id, message) in cases {
        let mut host = FakeHost::post(body, Some(&token));
        let (_, action) = run(&catalog, &mut host);
        assert_eq!(action, Action::Pause, "{body}");
        assert_eq!(host.reply_status(), 400, "{body}");
        let reply = host.reply_json();
        assert_eq!(reply["error"]["code"], -32600, "{body}");
        assert_eq!(reply["error"]["message"], *message, "{body}");
        assert_eq!(reply["id"], *id, "{body}");
        assert!(host.calls.is_empty(), "nothing dispatched for {body}");
        assert_eq!(host.request_body, body.as_bytes(), "body untouched");
        assert_eq!(host.header(":authority").unwrap(), "gw.local");
        assert!(host.header("x-mcp-servername").is_none());
        assert!(!host.route_cache_cleared && !host.resumed_request);
    }
    // The same call spelled once is routed.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo","arguments":{"Name":"x","name":"y"}}}"#;
    let mut host = FakeHost::post(body, Some(&token));
    run(&catalog, &mut host);
    assert!(host.reply.is_none());
    assert_eq!(host.calls.len(), 1, "opens the upstream session");
}

#[test]
fn the_nesting_limit_comes_from_the_document() {
    let catalog = catalog_with_limits(serde_json::json!({"max_json_depth": 5}), false);
    let token = initialize(&catalog);
    let body = |depth: usize| {
        let arrays = depth - 3;
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"alpha_echo","arguments":{{"x":{}1{}}}}}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    };
    let mut host = FakeHost::post(&body(5), Some(&token));
    run(&catalog, &mut host);
    assert!(
        host.reply.is_none() && host.calls.len() == 1,
        "5 levels go through"
    );
    let mut host = FakeHost::post(&body(6), Some(&token));
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 400);
    assert_eq!(
        host.reply_json()["error"]["message"],
        "Invalid Request: JSON nesting deeper than 5"
    );
    assert!(host.calls.is_empty());
}

/// The members of one object in document order, duplicates kept: what a parser sees before it
/// picks one value per name.
struct Ordered(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// How upstream parsers match a member name: exactly; ASCII case-insensitively (Jackson's and
/// .NET's options); Go v1 (plus U+017F and U+212A); Go v2 `case:ignore` (also ignoring `_`/`-`);
/// C strings (cut at NUL, cJSON's case-insensitive lookup); Java's `equalsIgnoreCase` (U+0130 and
/// U+0131 too).
const READERS: [fn(&str) -> String; 6] = [
    |k| k.to_owned(),
    |k| k.to_ascii_lowercase(),
    |k| {
        k.to_ascii_lowercase()
            .replace('\u{17F}', "s")
            .replace('\u{212A}', "k")
    },
    |k| {
        k.to_ascii_lowercase()
            .replace('\u{17F}', "s")
            .replace('\u{212A}', "k")
            .replace(['_', '-'], "")
    },
    |k| k.split('\0').next().unwrap().to_ascii_lowercase(),
    |k| {
        k.to_ascii_lowercase()
            .replace('\u{17F}', "s")
            .replace('\u{212A}', "k")
            .replace(['\u{130}', '\u{131}'], "i")
    },
];

/// The value a reader picks for `name` in `members`, keeping the first or the last match.
fn pick<'m>(
    members: &'m Ordered,
    name: &str,
    fold: fn(&str) -> String,
    last: bool,
) -> Option<&'m str> {
    let mut matches = members.0.iter().filter(|(k, _)| fold(k) == fold(name));
    let hit = if last {
        matches.next_back()
    } else {
        matches.next()
    };
    hit.map(|(_, v)| v.get())
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A spelling of `key` as JSON source (quotes included) that some parser may equate with it.
fn spelling(key: &str, roll: u64) -> String {
    let chars: Vec<char> = key.chars().collect();
    let at = (roll >> 8) as usize % chars.len();
    let with = |c: &str| -> String {
        let mut out: String = chars[..at].iter().collect();
        out.push_str(c);
        out.extend(&chars[at + 1..]);
        out
    };
    let text = match roll % 9 {
        0 => key.to_owned(),
        1 => with(&format!("\\u{:04x}", chars[at] as u32)),
        2 => with(&chars[at].to_ascii_uppercase().to_string()),
        3 => key.to_ascii_uppercase(),
        4 => key.replacen('s', "\u{17F}", 1).replacen('k', "\\u212a", 1),
        5 => with(&format!("_{}", chars[at])),
        6 => format!("{key}\\u0000x"),
        7 => key.replacen('i', "\u{131}", 1),
        _ => with(&format!("{}-", chars[at])),
    };
    format!("\"{text}\"")
}

/// Everything the gateway forwards means one thing: hostile spellings of the members it routes
/// by (case variants, escapes, Unicode folds, `_`, NUL, duplicates in any order) are either
/// refused or, when forwarded, read identically by every kind of upstream parser, first or last
/// duplicate wins, and nest no deeper than the limit.
#[test]
fn everything_forwarded_means_one_thing_to_every_parser() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let slots = catalog.limits.upstream_session_slots;
    let session_id = catalog
        .keys
        .open(token.as_bytes(), 1_000_000)
        .unwrap()
        .id
        .clone();
    let cached = upstream::UpstreamSession {
        session_id: "up".into(),
        protocol_version: "2025-06-18".into(),
    };
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let top_other = |key: &str| match key {
        "jsonrpc" => "\"1.0\"",
        "id" => "2",
        "method" => "\"ping\"",
        _ => r#"{"name":"alpha_add","arguments":{}}"#,
    };
    let params_other = |key: &str| {
        match key {
        "name" => "\"alpha_add\"",
        "arguments" => r#"{"a":1,"b":2}"#,
        _ => "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    }
    };
    let (mut forwarded, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut params: Vec<(String, String)> = vec![
            ("\"name\"".into(), "\"alpha_echo\"".into()),
            ("\"arguments\"".into(), r#"{"text":"x"}"#.into()),
            ("\"_meta\"".into(), "{}".into()),
        ];
        let mut top: Vec<(String, String)> = vec![
            ("\"jsonrpc\"".into(), "\"2.0\"".into()),
            ("\"id\"".into(), "1".into()),
            ("\"method\"".into(), "\"tools/call\"".into()),
        ];
        for _ in 0..1 + next() % 3 {
            let roll = next();
            let in_params = roll % 2 == 0;
            let (names, list): (&[&str], _) = if in_params {
                (&["name", "arguments", "_meta"], &mut params)
            } else {
                (&["jsonrpc", "id", "method", "params"], &mut top)
            };
            let key = names[(roll >> 1) as usize % names.len()];
            let spelled = spelling(key, next());
            let value = if in_params {
                params_other(key)
            } else {
                top_other(key)
            };
            let at = (next() as usize) % (list.len() + 1);
            if (roll >> 5) % 3 == 0 {
                // Respell an existing member in place (params itself is added last).
                if let Some(entry) = list.iter_mut().find(|(k, _)| k == &format!("\"{key}\"")) {
                    entry.0 = spelled;
                    continue;
                }
            }
            list.insert(at, (spelled, value.to_owned()));
        }
        let render = |members: &[(String, String)]| {
            let items: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", items.join(","))
        };
        let params_json = render(&params);
        let at = (next() as usize) % (top.len() + 1);
        top.insert(at, ("\"params\"".into(), params_json));
        let body = render(&top);

        let mut host = FakeHost::post(&body, Some(&token));
        upstream::store(&mut host, slots, &session_id, "alpha", &cached);
        let (_, action) = run(&catalog, &mut host);
        if host.reply.is_some() {
            refused += 1;
            continue;
        }
        assert_eq!(action, Action::Continue, "{body}");
        forwarded += 1;
        let tool = host.header("x-mcp-toolname").unwrap();
        let sent = String::from_utf8(host.request_body.clone()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert!(depth(&value) <= 64, "{sent}");
        let members: Ordered = serde_json::from_str(&sent).unwrap();
        let first_id = pick(&members, "id", READERS[0], false).unwrap().to_owned();
        for fold in READERS {
            for last in [false, true] {
                let read = |name| pick(&members, name, fold, last);
                assert_eq!(read("jsonrpc"), Some("\"2.0\""), "{sent}");
                assert_eq!(read("method"), Some("\"tools/call\""), "{sent}");
                assert_eq!(read("id"), Some(first_id.as_str()), "{sent}");
                let params: Ordered = serde_json::from_str(read("params").unwrap()).unwrap();
                let name = pick(&params, "name", fold, last).unwrap();
                assert_eq!(
                    serde_json::from_str::<String>(name).unwrap(),
                    tool,
                    "{sent}"
                );
                for member in ["arguments", "_meta"] {
                    let seen = pick(&params, member, fold, last);
                    assert_eq!(seen, pick(&params, member, READERS[0], false), "{sent}");
                }
            }
        }
    }
    assert!(
        forwarded > 100 && refused > 2000,
        "{forwarded} forwarded, {refused} refused"
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
                let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
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

#[test]
fn a_refusal_names_its_check_in_the_log_and_the_response_details() {
    let catalog = catalog(10);
    let mut host = FakeHost::post(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#, None);
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 400);
    assert_eq!(host.details, "mcpgw_missing_session");
    let logs = host.logs.borrow();
    let (level, line) = logs.last().expect("a log line");
    assert_eq!(*level, Level::Info);
    assert!(line.contains("check missing_session"), "{line}");
}

#[test]
fn refusals_are_logged_within_the_vm_budget() {
    let catalog = catalog(10);
    let budget = Rc::new(LogBudget::default());
    let mut logged = 0;
    for _ in 0..50 {
        let mut host = FakeHost::post("not json", None);
        let mut request = Request::new(Rc::clone(&catalog), Rc::clone(&budget), None);
        request.on_request_headers(&mut host, false);
        let size = host.request_body.len();
        request.on_request_body(&mut host, size, true);
        assert_eq!(host.reply_status(), 400, "every request is still answered");
        logged += host.logs.borrow().len();
    }
    assert!(
        logged < 50 && logged > 0,
        "{logged} lines for 50 refusals in one second"
    );
}

#[test]
fn a_vm_without_configuration_answers_with_the_request_id_and_strips_routing_headers() {
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":"abc","method":"tools/list"}"#,
        None,
    );
    let mut stream = Unconfigured::default();
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert!(
        host.header("x-mcp-servername").is_none(),
        "routing headers stripped"
    );
    let size = host.request_body.len();
    assert_eq!(stream.on_request_body(&mut host, size, true), Action::Pause);
    assert_eq!(host.reply_status(), 503);
    assert_eq!(host.details, "mcpgw_not_configured");
    let reply = host.reply_json();
    assert_eq!(reply["id"], "abc");
    assert_eq!(reply["error"]["code"], -32603);

    // Other paths pass, without the routing headers.
    let mut host = FakeHost::post("{}", None);
    host.request_headers.retain(|(n, _)| n != ":path");
    host.request_headers
        .push((":path".into(), b"/other".to_vec()));
    let mut stream = Unconfigured::default();
    assert_eq!(
        stream.on_request_headers(&mut host, false),
        Action::Continue
    );
    assert!(host.header("x-mcp-servername").is_none());
    assert!(host.reply.is_none());
}

const SIDECAR_AUTHORIZATION: &str = "Bearer plugin-token-for-the-sidecar";

fn sidecar_link() -> Option<Rc<SidecarLink>> {
    Some(Rc::new(SidecarLink {
        authorization: SIDECAR_AUTHORIZATION.into(),
        cluster: "mcpgw_sidecar".into(),
        authority: "mcpgw-sidecar".into(),
    }))
}

/// A client's `GET /mcp` (the notification stream) with two credentials of its own and a spoofed
/// routing header.
fn get_stream(session: Option<&str>) -> FakeHost {
    let mut host = FakeHost::post("", session);
    host.request_headers
        .retain(|(n, _)| n != "content-type" && n != "accept");
    host.request_headers[0].1 = b"GET".to_vec();
    host.request_headers
        .push(("accept".into(), b"text/event-stream".to_vec()));
    host.request_headers.push((
        "authorization".into(),
        b"Bearer second-client-token".to_vec(),
    ));
    host
}

fn all_values(host: &FakeHost, name: &str) -> Vec<String> {
    host.request_headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect()
}

#[test]
fn a_vouched_get_carries_the_plugin_token_instead_of_the_client_credential() {
    let catalog = catalog_with(10, true);
    let session = initialize(&catalog);
    let auth = sidecar_link();

    let mut host = get_stream(Some(&session));
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), auth.clone());
    assert_eq!(
        request.on_request_headers(&mut host, true),
        Action::Continue
    );
    assert!(host.reply.is_none(), "the stream goes on to the sidecar");
    assert_eq!(all_values(&host, "authorization"), [SIDECAR_AUTHORIZATION]);
    assert!(host.header("x-mcp-servername").is_none());

    // Without a configured token the client's credentials are still dropped.
    let mut host = get_stream(Some(&session));
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
    assert_eq!(
        request.on_request_headers(&mut host, true),
        Action::Continue
    );
    assert!(all_values(&host, "authorization").is_empty());
}

#[test]
fn an_unvouched_get_is_answered_by_the_plugin_without_the_token() {
    let catalog = catalog_with(10, true);
    let auth = sidecar_link();
    for (session, status) in [(None, 400), (Some("k1.forged"), 404)] {
        let mut host = get_stream(session);
        let mut request = Request::new(Rc::clone(&catalog), Rc::default(), auth.clone());
        assert_eq!(request.on_request_headers(&mut host, true), Action::Pause);
        assert_eq!(host.reply_status(), status, "{session:?}");
        assert!(
            !all_values(&host, "authorization").contains(&SIDECAR_AUTHORIZATION.to_string()),
            "{session:?}"
        );
    }
}

/// Completes the upstream initialize handshake of a held `tools/call` (calls 101 and 102).
fn finish_upstream_handshake(request: &mut Request, host: &mut FakeHost) {
    let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2025-06-18\"}}\n\n";
    request.on_call_response(
        host,
        101,
        CallResponse {
            status: Some(200),
            content_type: Some(b"text/event-stream".to_vec()),
            session_id: Some(b"up-1".to_vec()),
            body: sse.to_vec(),
            ..Default::default()
        },
    );
    request.on_call_response(
        host,
        102,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    assert!(host.resumed_request);
}

#[test]
fn the_sidecar_token_never_rides_on_other_requests() {
    let catalog = catalog_with(10, true);
    let session = initialize(&catalog);
    let auth = sidecar_link();
    // A routed call carries the upstream's credential (alpha) or none (beta): neither the
    // client's two credentials nor the plugin's token.
    for (tool, want) in [
        ("alpha_echo", vec!["Bearer alpha-secret"]),
        ("beta_echo", vec![]),
    ] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
        );
        let mut host = FakeHost::post(&body, Some(&session));
        host.request_headers.push((
            "authorization".into(),
            b"Bearer second-client-token".to_vec(),
        ));
        let mut request = Request::new(Rc::clone(&catalog), Rc::default(), auth.clone());
        assert_eq!(request.on_request_headers(&mut host, false), Action::Pause);
        let size = host.request_body.len();
        request.on_request_body(&mut host, size, true);
        finish_upstream_handshake(&mut request, &mut host);
        assert_eq!(all_values(&host, "authorization"), want, "{tool}");
        // Only the registration of the new upstream session, to the sidecar, carries it.
        for (cluster, headers, _) in &host.calls {
            if cluster != "mcpgw_sidecar" {
                assert!(headers.iter().all(|(_, v)| v != SIDECAR_AUTHORIZATION));
            }
        }
    }
    // Another path is not the gateway's: it passes untouched (and is never routed to the sidecar).
    let mut host = get_stream(Some(&session));
    host.set_request_header(":path", b"/elsewhere");
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), auth);
    assert_eq!(
        request.on_request_headers(&mut host, true),
        Action::Continue
    );
    assert_eq!(all_values(&host, "authorization").len(), 2);
}

#[test]
fn an_opened_upstream_session_is_registered_with_the_sidecar_without_waiting() {
    let catalog = catalog_with(10, true);
    let session = initialize(&catalog);
    let session_id = catalog
        .keys
        .open(session.as_bytes(), 1_000_000)
        .unwrap()
        .id
        .clone();
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}}"#;
    let mut host = FakeHost::post(body, Some(&session));
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    assert_eq!(request.on_request_headers(&mut host, false), Action::Pause);
    let size = host.request_body.len();
    request.on_request_body(&mut host, size, true);
    finish_upstream_handshake(&mut request, &mut host);
    // The call went on at once; the registration (call 103) is on its way.
    assert_eq!(host.calls.len(), 3);
    let (cluster, headers, body) = host.calls[2].clone();
    assert_eq!(cluster, "mcpgw_sidecar");
    for want in [
        (":method", "POST"),
        (":path", "/v1/streams"),
        (":authority", "mcpgw-sidecar"),
        ("authorization", SIDECAR_AUTHORIZATION),
        ("content-type", "application/json"),
    ] {
        assert!(
            headers.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {headers:?}"
        );
    }
    assert_eq!(headers.len(), 5, "nothing of the client's: {headers:?}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"session": session_id, "server": "alpha",
            "upstream_session": "up-1", "protocol_version": "2025-06-18"})
    );
    assert!(
        host.logs
            .borrow()
            .iter()
            .all(|(level, line)| *level == Level::Debug || !line.contains(&session_id)),
        "the session id is not logged above debug"
    );
    // The sidecar's answer arrives while the call is forwarded: ignored, the call goes on.
    request.on_call_response(
        &mut host,
        103,
        CallResponse {
            status: Some(204),
            ..Default::default()
        },
    );
    assert!(host.reply.is_none());
    host.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
    ];
    assert_eq!(request.on_response_headers(&mut host), Action::Continue);
    assert_eq!(
        host.response_header("mcp-session-id").as_deref(),
        Some(session.as_bytes()),
        "still the forwarded stage: the answer carries the client's session"
    );

    // The next call finds the upstream session in the cache: no second registration.
    let mut host2 = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}}"#,
        Some(&session),
    );
    host2.shared = host.shared.clone();
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    assert_eq!(request.on_request_headers(&mut host2, false), Action::Pause);
    let size = host2.request_body.len();
    assert_eq!(
        request.on_request_body(&mut host2, size, true),
        Action::Continue
    );
    assert!(host2.calls.is_empty());

    // Without a sidecar (a static setup) nothing is sent.
    let mut host = FakeHost::post(body_of_call(), Some(&session));
    let (mut request, _) = run(&catalog, &mut host);
    finish_upstream_handshake(&mut request, &mut host);
    assert_eq!(host.calls.len(), 2);
}

fn body_of_call() -> &'static str {
    r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}}"#
}

#[test]
fn the_registration_answer_does_not_disturb_a_pending_log_level() {
    let catalog = federated_catalog();
    let session = initialize(&catalog);
    // The session's log level is known: a new upstream session is told it before the call.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"debug"}}"#,
        Some(&session),
    );
    let (_, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Pause);
    let shared = host.shared.clone();
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"alpha_greet"}}"#,
        Some(&session),
    );
    host.shared = shared;
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    assert_eq!(request.on_request_headers(&mut host, false), Action::Pause);
    let size = host.request_body.len();
    request.on_request_body(&mut host, size, true);
    let sse =
        b"data: {\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2025-06-18\"}}\n\n";
    request.on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(200),
            content_type: Some(b"text/event-stream".to_vec()),
            session_id: Some(b"up-9".to_vec()),
            body: sse.to_vec(),
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
    // 103: the registration, 104: logging/setLevel.
    assert_eq!(host.calls[2].0, "mcpgw_sidecar");
    let level: serde_json::Value = serde_json::from_slice(&host.calls[3].2).unwrap();
    assert_eq!(level["method"], "logging/setLevel");
    request.on_call_response(
        &mut host,
        103,
        CallResponse {
            status: Some(204),
            ..Default::default()
        },
    );
    assert!(!host.resumed_request, "still waiting for the log level");
    request.on_call_response(
        &mut host,
        104,
        CallResponse {
            status: Some(200),
            ..Default::default()
        },
    );
    assert!(host.resumed_request);
    assert!(host.reply.is_none());
}

#[test]
fn a_vouched_get_names_its_session_and_a_client_copy_never_passes() {
    let catalog = catalog_with(10, true);
    let session = initialize(&catalog);
    let session_id = catalog
        .keys
        .open(session.as_bytes(), 1_000_000)
        .unwrap()
        .id
        .clone();
    let spoof = |host: &mut FakeHost| {
        host.request_headers
            .push(("x-mcpgw-session".into(), b"someone-else".to_vec()));
        host.request_headers
            .push(("x-mcpgw-session".into(), b"and-another".to_vec()));
    };
    // The vouched GET: the gateway's value alone.
    let mut host = get_stream(Some(&session));
    spoof(&mut host);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    assert_eq!(
        request.on_request_headers(&mut host, true),
        Action::Continue
    );
    assert_eq!(all_values(&host, "x-mcpgw-session"), [session_id.as_str()]);
    // Without a sidecar token nothing vouches, and nothing names the session.
    let mut host = get_stream(Some(&session));
    spoof(&mut host);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None);
    request.on_request_headers(&mut host, true);
    assert!(all_values(&host, "x-mcpgw-session").is_empty());
    // A refused GET, a POST, a DELETE, another path, an unconfigured VM: stripped everywhere.
    let mut hosts = Vec::new();
    let mut refused = get_stream(Some("k1.forged"));
    spoof(&mut refused);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    request.on_request_headers(&mut refused, true);
    hosts.push(refused);
    let mut post = FakeHost::post(body_of_call(), Some(&session));
    spoof(&mut post);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    request.on_request_headers(&mut post, false);
    let size = post.request_body.len();
    request.on_request_body(&mut post, size, true);
    finish_upstream_handshake(&mut request, &mut post);
    hosts.push(post);
    let mut delete = get_stream(Some(&session));
    delete.set_request_header(":method", b"DELETE");
    spoof(&mut delete);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    request.on_request_headers(&mut delete, true);
    hosts.push(delete);
    let mut elsewhere = get_stream(Some(&session));
    elsewhere.set_request_header(":path", b"/elsewhere");
    spoof(&mut elsewhere);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar_link());
    request.on_request_headers(&mut elsewhere, true);
    hosts.push(elsewhere);
    let mut unconfigured = get_stream(Some(&session));
    unconfigured.set_request_header(":path", b"/other");
    spoof(&mut unconfigured);
    Unconfigured::default().on_request_headers(&mut unconfigured, true);
    hosts.push(unconfigured);
    for (i, host) in hosts.iter().enumerate() {
        assert!(all_values(host, "x-mcpgw-session").is_empty(), "case {i}");
    }
}

fn federated_catalog() -> Rc<Catalog> {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "f1",
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]},
        "servers": [
            {"name": "alpha", "prefix": "alpha_", "authority": "alpha.mcp.local", "cluster": "alpha",
             "prompts": [{"name": "greet"}],
             "resources": [{"uri": "test://static-text", "name": "t"}],
             "resource_templates": [{"uriTemplate": "test://template/{id}/data", "name": "tpl"}],
             "capabilities": {"prompts": {}, "resources": {"subscribe": true}, "completions": {}, "logging": {}}}
        ]
    }))
    .unwrap();
    Rc::new(Catalog::build(config).unwrap())
}

/// Caches an upstream session on alpha for the client session of `token`.
fn cache_alpha_session(
    catalog: &Catalog,
    host: &mut FakeHost,
    token: &str,
) -> (Rc<mcpgw_core::session::Session>, upstream::UpstreamSession) {
    let session = catalog.keys.open(token.as_bytes(), host.now).unwrap();
    let up = upstream::UpstreamSession {
        session_id: "up-1".into(),
        protocol_version: "2025-06-18".into(),
    };
    let slots = catalog.limits.upstream_session_slots;
    upstream::store(host, slots, &session.id, "alpha", &up);
    (session, up)
}

/// Sends `body` on a session whose upstream session on alpha is cached; returns the host.
fn routed(catalog: &Rc<Catalog>, body: &str) -> FakeHost {
    let token = initialize(catalog);
    let mut host = FakeHost::post(body, Some(&token));
    cache_alpha_session(catalog, &mut host, &token);
    let (_, action) = run(catalog, &mut host);
    assert!(
        host.reply.is_none(),
        "{:?}",
        host.reply
            .as_ref()
            .map(|r| String::from_utf8_lossy(&r.2).into_owned())
    );
    assert_eq!(action, Action::Continue);
    host
}

fn forwarded_json(host: &FakeHost) -> serde_json::Value {
    serde_json::from_slice(&host.request_body).unwrap()
}

#[test]
fn prompts_get_is_routed_with_the_upstream_name() {
    let catalog = federated_catalog();
    let host = routed(
        &catalog,
        r#"{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"alpha_greet","arguments":{"who":"x"}}}"#,
    );
    assert_eq!(forwarded_json(&host)["params"]["name"], "greet");
    assert_eq!(host.header("x-mcp-method").unwrap(), "prompts/get");
    assert_eq!(host.header("x-mcp-servername").unwrap(), "alpha");
    assert!(host.header("x-mcp-toolname").is_none());
}

#[test]
fn resource_uris_are_mapped_back_for_read_subscribe_and_completion() {
    let catalog = federated_catalog();
    for (method, params, path) in [
        (
            "resources/read",
            r#"{"uri":"mcpgw://alpha/test://static-text"}"#,
            "/params/uri",
        ),
        (
            "resources/subscribe",
            r#"{"uri":"mcpgw://alpha/test://static-text"}"#,
            "/params/uri",
        ),
        (
            "resources/unsubscribe",
            r#"{"uri":"mcpgw://alpha/test://static-text"}"#,
            "/params/uri",
        ),
        (
            "completion/complete",
            r#"{"ref":{"type":"ref/resource","uri":"mcpgw://alpha/test://template/{id}/data"},"argument":{"name":"id","value":"1"}}"#,
            "/params/ref/uri",
        ),
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":5,"method":"{method}","params":{params}}}"#);
        let host = routed(&catalog, &body);
        let sent = forwarded_json(&host);
        assert!(
            sent.pointer(path)
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with("test://"),
            "{method}: {sent}"
        );
        assert_eq!(host.header("x-mcp-method").unwrap(), method);
    }
    let host = routed(
        &catalog,
        r#"{"jsonrpc":"2.0","id":6,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"alpha_greet"},"argument":{"name":"who","value":"a"}}}"#,
    );
    assert_eq!(forwarded_json(&host)["params"]["ref"]["name"], "greet");
}

#[test]
fn unknown_prompts_and_resources_get_the_spec_errors() {
    let catalog = federated_catalog();
    let token = initialize(&catalog);
    for (body, code) in [
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"nope"}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"test://nope"}}"#,
            -32002,
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"mcpgw://zeta/x"}}"#,
            -32002,
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{}}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"completion/complete","params":{"ref":{"type":"ref/other"}}}"#,
            -32602,
        ),
    ] {
        let mut host = FakeHost::post(body, Some(&token));
        run(&catalog, &mut host);
        assert_eq!(host.reply_status(), 200, "{body}");
        let reply = host.reply_json();
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
        assert_eq!(reply["id"], 7);
        assert!(host.calls.is_empty());
    }
}

#[test]
fn an_upstream_request_in_an_sse_answer_gets_a_gateway_id_and_the_answer_goes_back() {
    let catalog = federated_catalog();
    let token = initialize(&catalog);
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"alpha_greet"}}"#,
        Some(&token),
    );
    let (session, up) = cache_alpha_session(&catalog, &mut host, &token);
    let slots = catalog.limits.upstream_session_slots;
    let (mut request, _) = run(&catalog, &mut host);
    host.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"text/event-stream".to_vec()),
        ("content-length".into(), b"999".to_vec()),
    ];
    assert_eq!(request.on_response_headers(&mut host), Action::Continue);
    assert!(host.response_header("content-length").is_none());
    // The event arrives in two chunks; only the completed event is passed on.
    host.response_body =
        b"data: {\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"sampling/createMessage\"}\n".to_vec();
    let size = host.response_body.len();
    request.on_response_body(&mut host, size, false);
    assert!(
        host.response_body.is_empty(),
        "held until the event completes"
    );
    host.response_body = b"\n".to_vec();
    request.on_response_body(&mut host, 1, true);
    let events = mcpgw_core::sse::parse_all(&host.response_body);
    let asked: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(asked["id"], "mcpgw:alpha:5");

    // The client's answer reaches alpha with alpha's own id.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":"mcpgw:alpha:5","result":{"content":{"type":"text","text":"ok"}}}"#,
        Some(&token),
    );
    upstream::store(&mut host, slots, &session.id, "alpha", &up);
    let (_, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Continue);
    assert!(host.reply.is_none());
    assert_eq!(forwarded_json(&host)["id"], 5);
    assert_eq!(host.header("x-mcp-servername").unwrap(), "alpha");
    assert!(host.header("x-mcp-method").is_none());

    // An answer to nothing the gateway relayed is refused.
    let mut host = FakeHost::post(r#"{"jsonrpc":"2.0","id":5,"result":{}}"#, Some(&token));
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 400);
    assert_eq!(host.reply_json()["error"]["code"], -32600);
}

#[test]
fn set_level_reaches_open_upstream_sessions_and_is_remembered() {
    let catalog = federated_catalog();
    let token = initialize(&catalog);
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":8,"method":"logging/setLevel","params":{"level":"debug"}}"#,
        Some(&token),
    );
    let (session, _) = cache_alpha_session(&catalog, &mut host, &token);
    let slots = catalog.limits.upstream_session_slots;
    let (mut request, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Pause);
    let (cluster, headers, body) = host.calls[0].clone();
    assert_eq!(cluster, "alpha");
    assert!(headers.contains(&("mcp-session-id".into(), "up-1".into())));
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["params"]["level"], "debug");
    request.on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(200),
            ..Default::default()
        },
    );
    assert_eq!(host.reply_json()["result"], serde_json::json!({}));
    assert_eq!(
        upstream::log_level(&host, slots, &session.id).as_deref(),
        Some("debug")
    );

    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":9,"method":"logging/setLevel","params":{"level":"loud"}}"#,
        Some(&token),
    );
    run(&catalog, &mut host);
    assert_eq!(host.reply_json()["error"]["code"], -32602);
}

#[test]
fn cancellations_reach_the_upstream_sessions_and_other_notifications_stay() {
    let catalog = federated_catalog();
    let token = initialize(&catalog);
    // The client cancels one of its own requests: every upstream session of its session hears it.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9,"reason":"user"}}"#,
        Some(&token),
    );
    cache_alpha_session(&catalog, &mut host, &token);
    let (mut request, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Pause);
    let (cluster, headers, body) = host.calls[0].clone();
    assert_eq!(cluster, "alpha");
    assert!(headers.contains(&("mcp-session-id".into(), "up-1".into())));
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["params"]["requestId"], 9);
    request.on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    assert_eq!(host.reply_status(), 202);

    // It cancels an upstream's request it was relayed: that upstream, with its own id.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"mcpgw:alpha:5"}}"#,
        Some(&token),
    );
    cache_alpha_session(&catalog, &mut host, &token);
    run(&catalog, &mut host);
    let sent: serde_json::Value = serde_json::from_slice(&host.calls[0].2).unwrap();
    assert_eq!(sent["params"]["requestId"], 5);

    // Progress for an upstream's request goes to that upstream with its own token; progress
    // with a token the gateway did not map stays here.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"mcpgw:alpha:\"t-1\"","progress":1}}"#,
        Some(&token),
    );
    cache_alpha_session(&catalog, &mut host, &token);
    run(&catalog, &mut host);
    let sent: serde_json::Value = serde_json::from_slice(&host.calls[0].2).unwrap();
    assert_eq!(sent["params"]["progressToken"], "t-1");
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#,
        Some(&token),
    );
    cache_alpha_session(&catalog, &mut host, &token);
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 202);
    assert!(host.calls.is_empty());

    // notifications/initialized stays with the gateway.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        Some(&token),
    );
    cache_alpha_session(&catalog, &mut host, &token);
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 202);
    assert!(host.calls.is_empty());
}

// ---------------------------------------------------------------------------------- batches

/// A client session negotiated at `version`.
fn initialize_at(catalog: &Rc<Catalog>, version: &str) -> String {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
    );
    let mut host = FakeHost::post(&body, None);
    run(catalog, &mut host);
    assert_eq!(host.reply_json()["result"]["protocolVersion"], version);
    host.reply_header("mcp-session-id")
        .expect("a session token")
}

fn json_response(body: &str) -> CallResponse {
    CallResponse {
        status: Some(200),
        content_type: Some(b"application/json".to_vec()),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn call_json(host: &FakeHost, index: usize) -> serde_json::Value {
    serde_json::from_slice(&host.calls[index].2).unwrap()
}

fn call_header(host: &FakeHost, index: usize, name: &str) -> Option<String> {
    host.calls[index]
        .1
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

const PING_BATCH: &str =
    r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#;

#[test]
fn a_batch_is_refused_without_a_2025_03_26_session() {
    let catalog = catalog(10);
    for session in [None, Some(initialize_at(&catalog, "2025-06-18"))] {
        let mut host = FakeHost::post(PING_BATCH, session.as_deref());
        run(&catalog, &mut host);
        assert_eq!(host.reply_status(), 400);
        let answer = host.reply_json();
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        assert!(answer["id"].is_null());
        assert_eq!(host.details, "mcpgw_batch");
        assert!(host.calls.is_empty());
    }
    // An initialize cannot open a session inside a batch.
    let init = r#"[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}]"#;
    let mut host = FakeHost::post(init, None);
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 400);
    assert!(host.reply_header("mcp-session-id").is_none());

    let token = initialize_at(&catalog, "2025-03-26");
    let too_many = format!(
        "[{}]",
        vec![r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#; 65].join(",")
    );
    for body in ["[]", " [ ] ", too_many.as_str()] {
        let mut host = FakeHost::post(body, Some(&token));
        run(&catalog, &mut host);
        assert_eq!(host.reply_status(), 400, "{body}");
        assert_eq!(host.reply_json()["error"]["code"], -32600);
    }
    // On a 2025-03-26 session an initialize element gets its own error.
    let mut host = FakeHost::post(init, Some(&token));
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 200);
    let answer = host.reply_json();
    assert_eq!(answer[0]["id"], 1);
    assert_eq!(answer[0]["error"]["code"], -32600);
    assert!(answer[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("initialize must not be part of a batch"));
}

#[test]
fn a_mixed_batch_is_answered_in_order() {
    let catalog = catalog(10);
    let token = initialize_at(&catalog, "2025-03-26");
    let body = r#"[
        {"jsonrpc":"2.0","id":1,"method":"ping"},
        {"jsonrpc":"2.0","id":"two","method":"tools/list"},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"alpha_echo","arguments":{"text":"a"}}},
        {"jsonrpc":"2.0","method":"notifications/progress","params":{}},
        {"jsonrpc":"2.0","id":"mcpgw:alpha:7","result":{"roots":[]}},
        {"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"beta_echo","arguments":{"text":"b"}}},
        {"jsonrpc":"2.0","id":5,"method":"frobnicate"},
        7
    ]"#;
    let mut host = FakeHost::post(body, Some(&token));
    host.request_headers
        .push(("x-tenant".into(), b"acme".to_vec()));
    cache_alpha_session(&catalog, &mut host, &token);
    let (mut request, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Pause);
    assert!(host.reply.is_none());
    assert!(
        !host.resumed_request,
        "the batch itself never goes upstream"
    );

    // 101: alpha's call on the cached session, name rewritten, with alpha's allow-listed headers.
    assert_eq!(host.calls[0].0, "alpha");
    let sent = call_json(&host, 0);
    assert_eq!(sent["id"], 3);
    assert_eq!(sent["params"]["name"], "echo");
    assert_eq!(sent["params"]["arguments"]["text"], "a");
    assert_eq!(call_header(&host, 0, "mcp-session-id").unwrap(), "up-1");
    assert_eq!(call_header(&host, 0, "x-mcp-toolname").unwrap(), "echo");
    assert_eq!(call_header(&host, 0, "x-tenant").unwrap(), "acme");
    assert_eq!(
        call_header(&host, 0, "authorization").unwrap(),
        "Bearer alpha-secret"
    );
    // 102: the client's answer to alpha's request, with alpha's own id back.
    assert_eq!(host.calls[1].0, "alpha");
    assert_eq!(call_json(&host, 1)["id"], 7);
    // 103: beta has no upstream session yet: initialize first.
    assert_eq!(host.calls[2].0, "beta");
    assert_eq!(call_json(&host, 2)["method"], "initialize");
    assert_eq!(
        call_json(&host, 2)["params"]["protocolVersion"],
        "2025-03-26"
    );
    assert_eq!(host.calls.len(), 3);

    request.on_call_response(
        &mut host,
        101,
        json_response(
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"a"}]}}"#,
        ),
    );
    request.on_call_response(
        &mut host,
        102,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    let mut init =
        json_response(r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-03-26"}}"#);
    init.session_id = Some(b"up-beta".to_vec());
    request.on_call_response(&mut host, 103, init);
    assert_eq!(
        String::from_utf8(host.calls[3].2.clone()).unwrap(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
    );
    request.on_call_response(
        &mut host,
        104,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    // 105: beta's call, on the session just opened (and cached).
    assert_eq!(host.calls[4].0, "beta");
    assert_eq!(call_json(&host, 4)["params"]["name"], "echo");
    assert_eq!(call_header(&host, 4, "mcp-session-id").unwrap(), "up-beta");
    assert_eq!(call_header(&host, 4, ":path").unwrap(), "/v1/mcp");
    let session = catalog.keys.open(token.as_bytes(), host.now).unwrap();
    let slots = catalog.limits.upstream_session_slots;
    assert_eq!(
        upstream::lookup(&host, slots, &session.id, "beta")
            .unwrap()
            .session_id,
        "up-beta"
    );
    assert!(host.reply.is_none());
    let sse = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"b\"}]}}\n\n";
    request.on_call_response(
        &mut host,
        105,
        CallResponse {
            status: Some(200),
            content_type: Some(b"text/event-stream".to_vec()),
            body: sse.as_bytes().to_vec(),
            ..Default::default()
        },
    );

    assert_eq!(host.reply_status(), 200);
    assert_eq!(host.reply_header("mcp-session-id").unwrap(), token);
    assert_eq!(
        host.reply_header("content-type").unwrap(),
        "application/json"
    );
    let answers = host.reply_json();
    let answers = answers.as_array().unwrap();
    let ids: Vec<&serde_json::Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(
        ids,
        [
            &serde_json::json!(1),
            &serde_json::json!("two"),
            &serde_json::json!(3),
            &serde_json::json!(4),
            &serde_json::json!(5),
            &serde_json::Value::Null
        ]
    );
    assert_eq!(answers[0]["result"], serde_json::json!({}));
    assert_eq!(answers[1]["result"]["tools"][0]["name"], "alpha_echo");
    assert_eq!(answers[2]["result"]["content"][0]["text"], "a");
    assert_eq!(answers[3]["result"]["content"][0]["text"], "b");
    assert_eq!(answers[4]["error"]["code"], -32601);
    assert_eq!(answers[5]["error"]["code"], -32600);
}

#[test]
fn an_upstream_failure_fails_only_its_own_element() {
    let catalog = catalog(10);
    let token = initialize_at(&catalog, "2025-03-26");
    let body = r#"[
        {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha_echo"}},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"alpha_add"}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"beta_echo"}},
        {"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"alpha_nope"}}
    ]"#;
    let mut host = FakeHost::post(body, Some(&token));
    cache_alpha_session(&catalog, &mut host, &token);
    let (mut request, _) = run(&catalog, &mut host);
    assert_eq!(host.calls.len(), 3, "two alpha calls, one beta initialize");
    // Alpha's first call: reset; beta cannot be opened; alpha's second call answers.
    request.on_call_response(&mut host, 101, CallResponse::default());
    request.on_call_response(
        &mut host,
        103,
        CallResponse {
            status: Some(503),
            body: b"upstream connect error".to_vec(),
            ..Default::default()
        },
    );
    assert!(host.reply.is_none());
    request.on_call_response(
        &mut host,
        102,
        json_response(r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#),
    );
    assert_eq!(host.reply_status(), 200);
    let answers = host.reply_json();
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["error"]["code"], -32603);
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[1]["result"]["content"], serde_json::json!([]));
    assert_eq!(answers[2]["id"], 3);
    assert_eq!(answers[2]["error"]["code"], -32603);
    assert_eq!(answers[3]["id"], 4);
    assert_eq!(answers[3]["error"]["code"], -32602);
    assert_eq!(answers.as_array().unwrap().len(), 4);
}

#[test]
fn a_batch_without_requests_is_accepted_with_202() {
    let catalog = catalog(10);
    let token = initialize_at(&catalog, "2025-03-26");
    let body = r#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}]"#;
    let mut host = FakeHost::post(body, Some(&token));
    let (_, action) = run(&catalog, &mut host);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply_status(), 202);
    assert!(host.reply.as_ref().unwrap().2.is_empty());
}

// ------------------------------------------------------------------------------------------
// One upstream session opening per (client session, server)

/// Moves the process-wide shared data from one stream's host to another's.
fn hand_over(from: &mut FakeHost, to: &mut FakeHost) {
    to.shared = std::mem::take(&mut from.shared);
    to.next_version = from.next_version;
    to.now = from.now;
}

const ECHO: &str = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}}"#;

fn init_answer(session: &str) -> CallResponse {
    CallResponse {
        status: Some(200),
        content_type: Some(b"application/json".to_vec()),
        session_id: Some(session.as_bytes().to_vec()),
        body: br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}"#.to_vec(),
        ..Default::default()
    }
}

fn accepted() -> CallResponse {
    CallResponse {
        status: Some(202),
        ..Default::default()
    }
}

/// A stream on the VM whose wake-up address is `vm`, its first call of `body` run.
fn stream(
    catalog: &Rc<Catalog>,
    token: &str,
    body: &str,
    vm: u32,
    shared_from: &mut FakeHost,
) -> (Request, FakeHost) {
    let mut host = FakeHost::post(body, Some(token));
    host.wake_address = Some(vm);
    hand_over(shared_from, &mut host);
    let (request, _) = run(catalog, &mut host);
    (request, host)
}

#[test]
fn concurrent_first_calls_share_one_opening() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let mut shared = FakeHost::post("", None);
    shared.now = 1_000_000;
    // The opener, on VM 1.
    let (mut opener, mut a) = stream(&catalog, &token, ECHO, 1, &mut shared);
    assert_eq!(a.calls.len(), 1, "initialize");
    assert!(!opener.is_waiting());
    // Two more first calls, on VM 1 and VM 2: they wait, opening nothing.
    let (mut w1, mut b) = stream(&catalog, &token, ECHO, 1, &mut a);
    let (mut w2, mut c) = stream(&catalog, &token, ECHO, 2, &mut b);
    for (waiter, host) in [(&w1, &b), (&w2, &c)] {
        assert!(waiter.is_waiting());
        assert!(host.calls.is_empty() && host.reply.is_none());
    }
    // The opener finishes: it forwards, and wakes each VM once.
    hand_over(&mut c, &mut a);
    opener.on_call_response(&mut a, 101, init_answer("up-1"));
    opener.on_call_response(&mut a, 102, accepted());
    assert!(a.resumed_request);
    assert_eq!(a.header("mcp-session-id").unwrap(), "up-1");
    let vms: Vec<u32> = a.woken.iter().map(|(vm, _)| *vm).collect();
    assert_eq!(vms, [1, 2]);
    let message = a.woken[0].1.clone();
    // Woken (on the root context): a ping on the session brings each back to its own callback,
    // where the call is forwarded on the one session.
    for (waiter, host) in [(&mut w1, &mut b), (&mut w2, &mut c)] {
        hand_over(&mut a, host);
        waiter.on_wake(host, Some(&message));
        assert!(!waiter.is_waiting());
        let (_, headers, body) = host.calls.last().unwrap().clone();
        assert_eq!(String::from_utf8(body).unwrap(), upstream::PING_BODY);
        assert!(headers.contains(&("mcp-session-id".into(), "up-1".into())));
        assert!(!host.resumed_request);
        let ping = 100 + host.calls.len() as u32;
        waiter.on_call_response(
            host,
            ping,
            CallResponse {
                status: Some(200),
                ..Default::default()
            },
        );
        assert!(host.resumed_request && host.route_cache_cleared);
        assert_eq!(host.header("mcp-session-id").unwrap(), "up-1");
        assert_eq!(host.header("x-mcp-toolname").unwrap(), "echo");
        hand_over(host, &mut a);
    }
    let initializes = [&a, &b, &c]
        .iter()
        .flat_map(|h| h.calls.iter())
        .filter(|(_, _, body)| String::from_utf8_lossy(body).contains(r#""method":"initialize""#))
        .count();
    assert_eq!(initializes, 1, "one upstream session opened");
}

#[test]
fn a_failed_opening_fails_its_waiters_with_the_same_error() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let mut shared = FakeHost::post("", None);
    let (mut opener, mut a) = stream(&catalog, &token, ECHO, 1, &mut shared);
    let (mut waiter, mut b) = stream(&catalog, &token, ECHO, 2, &mut a);
    assert!(waiter.is_waiting());
    hand_over(&mut b, &mut a);
    opener.on_call_response(
        &mut a,
        101,
        CallResponse {
            status: Some(500),
            ..Default::default()
        },
    );
    assert_eq!(a.reply_json()["error"]["code"], -32603);
    let (vm, message) = a.woken[0].clone();
    assert_eq!(vm, 2);
    // A wake-up about another opening, or the tick, changes nothing for it yet.
    hand_over(&mut a, &mut b);
    waiter.on_wake(&mut b, Some(b"other\nalpha\n1.1\nfailed\nno"));
    assert!(b.reply.is_none());
    waiter.on_wake(&mut b, Some(&message));
    assert_eq!(b.reply_json()["error"], a.reply_json()["error"]);
    assert!(b.calls.is_empty(), "no opening of its own");
}

#[test]
fn an_abandoned_opening_is_taken_over_by_a_waiter() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let mut shared = FakeHost::post("", None);
    let (mut opener, mut a) = stream(&catalog, &token, ECHO, 1, &mut shared);
    let (mut waiter, mut b) = stream(&catalog, &token, ECHO, 2, &mut a);
    // The opener's client goes away mid-opening.
    hand_over(&mut b, &mut a);
    opener.on_done(&mut a);
    let (_, message) = a.woken[0].clone();
    hand_over(&mut a, &mut b);
    waiter.on_wake(&mut b, Some(&message));
    assert!(!waiter.is_waiting());
    let (_, _, body) = b.calls[0].clone();
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains(r#""method":"initialize""#),
        "the waiter opens"
    );
    finish_upstream_handshake(&mut waiter, &mut b);
    assert_eq!(b.header("mcp-session-id").unwrap(), "up-1");
}

#[test]
fn a_stale_opening_does_not_hold_its_waiters_forever() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let mut shared = FakeHost::post("", None);
    let (_opener, mut a) = stream(&catalog, &token, ECHO, 1, &mut shared);
    let (mut waiter, mut b) = stream(&catalog, &token, ECHO, 2, &mut a);
    // The opener's VM died: no wake-up comes; the tick finds the opening stale.
    waiter.on_wake(&mut b, None);
    assert!(waiter.is_waiting(), "not stale yet");
    b.now += mcpgw_core::opening::stale_after_ms(catalog.limits.upstream_timeout_ms) / 1000 + 1;
    waiter.on_wake(&mut b, None);
    assert!(!waiter.is_waiting());
    assert!(String::from_utf8(b.calls[0].2.clone())
        .unwrap()
        .contains("initialize"));
}

#[test]
fn concurrent_replays_after_a_lost_session_share_one_opening() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    let session = catalog
        .keys
        .open(token.as_bytes(), 1_000_000)
        .unwrap()
        .id
        .clone();
    let mut shared = FakeHost::post("", None);
    shared.now = 1_000_000;
    let stale = upstream::UpstreamSession {
        session_id: "old".into(),
        protocol_version: "2025-06-18".into(),
    };
    let slots = catalog.limits.upstream_session_slots;
    upstream::store(&mut shared, slots, &session, "alpha", &stale);
    let lost = |request: &mut Request, host: &mut FakeHost| {
        host.response_headers = vec![(":status".into(), b"404".to_vec())];
        assert_eq!(request.on_response_headers(host), Action::Pause);
    };
    let (mut first, mut a) = stream(&catalog, &token, ECHO, 1, &mut shared);
    let (mut second, mut b) = stream(&catalog, &token, ECHO, 2, &mut a);
    hand_over(&mut b, &mut a);
    lost(&mut first, &mut a);
    hand_over(&mut a, &mut b);
    lost(&mut second, &mut b);
    assert!(second.is_waiting());
    assert_eq!(
        second.on_response_body(&mut b, 0, false),
        Action::Pause,
        "its 404 is held"
    );
    hand_over(&mut b, &mut a);
    first.on_call_response(&mut a, 101, init_answer("new"));
    first.on_call_response(&mut a, 102, accepted());
    let (_, message) = a.woken[0].clone();
    hand_over(&mut a, &mut b);
    second.on_wake(&mut b, Some(&message));
    let (_, headers, body) = b.calls[0].clone();
    assert!(headers.contains(&("mcp-session-id".into(), "new".into())));
    assert!(
        String::from_utf8(body).unwrap().contains("tools/call"),
        "replayed at once"
    );
}

#[test]
fn session_openings_are_capped_per_client_session() {
    let catalog = catalog_with_limits(
        serde_json::json!({"max_session_opens_per_second": 1}),
        false,
    );
    let token = initialize(&catalog);
    let beta = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"beta_echo"}}"#;
    let mut shared = FakeHost::post("", None);
    shared.now = 1_000_000;
    let (_, mut a) = stream(&catalog, &token, ECHO, 1, &mut shared);
    assert_eq!(a.calls.len(), 1, "the first opening of the second passes");
    let (refused, mut b) = stream(&catalog, &token, beta, 1, &mut a);
    assert!(!refused.is_waiting());
    assert!(b.calls.is_empty(), "nothing opened");
    assert_eq!(b.reply_status(), 429);
    assert_eq!(b.reply_header("retry-after").as_deref(), Some("1"));
    assert_eq!(b.reply_json()["error"]["code"], -32603);
    assert_eq!(b.reply_json()["id"], 6);
    assert_eq!(b.details, "mcpgw_session_open_rate");
    // The session stays: the next second, it opens.
    b.now += 1;
    let (_, c) = stream(&catalog, &token, beta, 1, &mut b);
    assert_eq!(c.calls.len(), 1);
}

#[test]
fn an_upstream_session_pushed_out_of_the_cache_is_closed() {
    // 4 slots: one set of 4 ways, so the fifth client session's upstream session evicts the
    // first one's.
    let catalog = catalog_with_limits(serde_json::json!({"upstream_session_slots": 4}), false);
    let mut shared = FakeHost::post("", None);
    shared.now = 1_000_000;
    for i in 0..5u64 {
        shared.now += 1;
        shared.nonce_seed = i;
        let mut host = FakeHost::post(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
            None,
        );
        hand_over(&mut shared, &mut host);
        host.nonce_seed = i;
        run(&catalog, &mut host);
        let token = host.reply_header("mcp-session-id").unwrap();
        let (mut request, mut call) = stream(&catalog, &token, ECHO, 1, &mut host);
        request.on_call_response(&mut call, 101, init_answer(&format!("up-{i}")));
        request.on_call_response(&mut call, 102, accepted());
        assert!(call.resumed_request);
        if i < 4 {
            assert!(call.detached.is_empty());
        } else {
            let (cluster, headers) = call.detached[0].clone();
            assert_eq!(cluster, "alpha");
            assert!(headers.contains(&(":method".into(), "DELETE".into())));
            assert!(headers.contains(&("mcp-session-id".into(), "up-0".into())));
        }
        hand_over(&mut call, &mut shared);
    }
}

#[test]
fn telemetry_events_and_access_log_fields() {
    use mcpgw_core::Field;
    let catalog = catalog(10);
    let token = initialize(&catalog);
    // An upstream session that cannot be opened: the failure is counted for its server.
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"alpha_add"}}"#,
        Some(&token),
    );
    host.request_headers
        .push(("traceparent".into(), b"00-abc-def-01".to_vec()));
    let (mut request, _) = run(&catalog, &mut host);
    let (_, init_headers, _) = host.calls[0].clone();
    assert!(
        init_headers.contains(&("traceparent".into(), "00-abc-def-01".into())),
        "the opening carries the client's trace context"
    );
    request.on_call_response(&mut host, 101, CallResponse::default());
    assert_eq!(
        host.events,
        [
            "UpstreamFailed { server: \"alpha\" }",
            "Request { method: \"tools/call\", served: Error(-32603) }"
        ]
    );
    assert_eq!(
        host.fields,
        [
            (Field::Method, "tools/call".to_owned()),
            (Field::ErrorCode, "-32603".to_owned())
        ]
    );

    // A tampered token, and an unknown method: bounded labels.
    let mut bad = token.clone();
    bad.push('x');
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":5,"method":"x/made-up","params":{}}"#,
        Some(&bad),
    );
    run(&catalog, &mut host);
    assert_eq!(
        host.events,
        [
            "SessionRefused { reason: Tampered }",
            "Request { method: \"other\", served: Error(-32600) }"
        ]
    );
}

/// Envoy's rbac (or any authorization filter after the plugin) refuses a routed call with its
/// own text reply: the client gets a JSON-RPC error (-32001) under the same status, with its id.
#[test]
fn a_policy_refusal_after_the_plugin_becomes_a_jsonrpc_error() {
    let catalog = catalog(10);
    let token = initialize(&catalog);
    for (status, tool) in [(403, "alpha_echo"), (401, "beta_echo")] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"r-{status}","method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
        );
        let server = tool.split('_').next().unwrap();
        let mut host = FakeHost::post(&body, Some(&token));
        cache_upstream(&mut host, &catalog, &token, server, &format!("up-{server}"));
        let (mut request, action) = run(&catalog, &mut host);
        assert_eq!(action, Action::Continue);
        host.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
        ];
        assert_eq!(request.on_response_headers(&mut host), Action::Pause);
        assert_eq!(host.reply_status(), status);
        let answer = host.reply_json();
        assert_eq!(answer["id"], format!("r-{status}"));
        assert_eq!(answer["error"]["code"], -32001);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("tools/call echo on server"), "{message}");
    }
    // An MCP answer with 403 (the upstream's own JSON-RPC error) passes through untouched.
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}}"#;
    let mut host = FakeHost::post(body, Some(&token));
    cache_upstream(&mut host, &catalog, &token, "alpha", "up-alpha");
    let (mut request, _) = run(&catalog, &mut host);
    host.response_headers = vec![
        (":status".into(), b"403".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
    ];
    assert_eq!(request.on_response_headers(&mut host), Action::Continue);
    assert!(host.reply.is_none());
}

// ------------------------------------------------------------------ MCP 2026-07-28 (stateless)

/// alpha speaks 2026-07-28 (and 2025-11-25), beta only the session era.
fn catalog_2026() -> Rc<Catalog> {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "t2026",
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]},
        "limits": {"page_size": 10, "max_body_bytes": 4096, "list_ttl_ms": 1234},
        "servers": [
            {"name": "alpha", "prefix": "alpha_", "authority": "alpha.mcp.local", "cluster": "alpha",
             "protocol_versions": ["2026-07-28", "2025-11-25"],
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]},
            {"name": "beta", "prefix": "beta_", "authority": "beta.mcp.local", "cluster": "beta",
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
        ]
    }))
    .unwrap();
    Rc::new(Catalog::build(config).unwrap())
}

const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

fn post_2026(body: &str, method: &str, name: Option<&str>) -> FakeHost {
    let mut host = FakeHost::post(body, None);
    host.request_headers
        .push(("mcp-protocol-version".into(), b"2026-07-28".to_vec()));
    host.request_headers
        .push(("mcp-method".into(), method.as_bytes().to_vec()));
    if let Some(name) = name {
        host.request_headers
            .push(("mcp-name".into(), name.as_bytes().to_vec()));
    }
    host.request_headers
        .push(("content-length".into(), body.len().to_string().into_bytes()));
    host
}

#[test]
fn stateless_lists_and_discover_are_answered_with_cache_hints() {
    let catalog = catalog_2026();
    let body = format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{{{META}}}}}"#);
    let mut host = post_2026(&body, "tools/list", None);
    run(&catalog, &mut host);
    assert_eq!(host.reply_status(), 200);
    let result = &host.reply_json()["result"];
    assert_eq!(result["ttlMs"], 1234);
    assert_eq!(result["cacheScope"], "public");
    assert_eq!(result["tools"].as_array().unwrap().len(), 2);
    assert!(host.reply_header("mcp-session-id").is_none());
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":4,"method":"server/discover","params":{{{META}}}}}"#);
    let mut host = post_2026(&body, "server/discover", None);
    run(&catalog, &mut host);
    assert_eq!(
        host.reply_json()["result"]["supportedVersions"][0],
        "2026-07-28"
    );
}

#[test]
fn stateless_mismatch_is_32020_with_the_id_and_nothing_is_forwarded() {
    let catalog = catalog_2026();
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"alpha_echo","arguments":{{}},{META}}}}}"#
    );
    for (method, name) in [("tools/call", "beta_echo"), ("tools/list", "alpha_echo")] {
        let mut host = post_2026(&body, method, Some(name));
        run(&catalog, &mut host);
        assert_eq!(host.reply_status(), 400);
        let answer = host.reply_json();
        assert_eq!(answer["error"]["code"], -32020, "{answer}");
        assert_eq!(answer["id"], 9);
        assert!(host.calls.is_empty() && !host.route_cache_cleared);
    }
    // The header promised no name: -32020 at once too (answered after reading the id).
    let mut host = post_2026(&body, "tools/call", None);
    run(&catalog, &mut host);
    assert_eq!(host.reply_json()["error"]["code"], -32020);
}

#[test]
fn headers_only_install_routes_on_mcp_name_and_splices_the_body() {
    let catalog = catalog_2026();
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"alpha_echo","arguments":{{"a":1}},{META}}}}}"#
    );
    let mut host = post_2026(&body, "tools/call", Some("alpha_echo"));
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None).headers_only(true);
    // Routed in the headers phase: no pause, no upstream session for a 2026 upstream.
    assert_eq!(
        request.on_request_headers(&mut host, false),
        Action::Continue
    );
    assert!(host.calls.is_empty() && host.reply.is_none());
    assert_eq!(
        host.header(":authority").as_deref(),
        Some("alpha.mcp.local")
    );
    assert_eq!(host.header("mcp-name").as_deref(), Some("echo"));
    assert_eq!(
        host.header("mcp-protocol-version").as_deref(),
        Some("2026-07-28")
    );
    assert!(host.header("content-length").is_none());
    assert!(host.route_cache_cleared);
    // The body waits in the plugin until it is whole, then goes on with the upstream's name.
    let size = host.request_body.len();
    assert_eq!(
        request.on_request_body(&mut host, size, true),
        Action::Continue
    );
    let sent: serde_json::Value = serde_json::from_slice(&host.request_body).unwrap();
    assert_eq!(sent["params"]["name"], "echo");
    assert_eq!(sent["params"]["arguments"]["a"], 1);

    // The same headers with another name in the body: refused before the body leaves.
    let bad = body.replace("alpha_echo", "beta_echo");
    let mut host = post_2026(&bad, "tools/call", Some("alpha_echo"));
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None).headers_only(true);
    assert_eq!(
        request.on_request_headers(&mut host, false),
        Action::Continue
    );
    let size = host.request_body.len();
    request.on_request_body(&mut host, size, true);
    assert_eq!(host.reply_status(), 400);
    assert_eq!(host.reply_json()["error"]["code"], -32020);
    assert_eq!(
        host.request_body,
        bad.as_bytes(),
        "the body was not released"
    );

    // A 2025 POST cannot be read before routing there: a clear refusal, from the headers.
    let mut host = FakeHost::post(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, None);
    let mut request = Request::new(Rc::clone(&catalog), Rc::default(), None).headers_only(true);
    assert_eq!(request.on_request_headers(&mut host, false), Action::Pause);
    assert_eq!(host.reply_status(), 400);
    assert_eq!(host.reply_json()["error"]["code"], -32600);
}

/// A POST on `token` that sees (and leaves behind) the shared data `shared`.
fn post_shared(
    catalog: &Rc<Catalog>,
    shared: &mut HashMap<String, (Vec<u8>, u32)>,
    token: &str,
    body: &str,
) -> (FakeHost, Action) {
    let mut host = FakeHost::post(body, Some(token));
    host.shared = std::mem::take(shared);
    host.next_version = 1_000_000;
    let (_, action) = run(catalog, &mut host);
    *shared = host.shared.clone();
    (host, action)
}

fn listed_names(host: &FakeHost) -> Vec<String> {
    host.reply_json()["result"]["tools"]
        .as_array()
        .expect("a tools list")
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn meta_call(tool: &str, arguments: serde_json::Value) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

#[test]
fn above_the_threshold_tools_list_offers_the_meta_tools_and_selection_scopes_the_session() {
    let catalog = catalog_with_limits(
        serde_json::json!({"page_size": 10, "max_body_bytes": 4096, "meta_tools_above": 2}),
        false,
    );
    assert!(catalog.meta_tools_active());
    let mut shared = HashMap::new();
    let token = initialize(&catalog);
    let other = {
        let mut host = FakeHost::post(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
            None,
        );
        host.nonce_seed = 7;
        run(&catalog, &mut host);
        host.reply_header("mcp-session-id").unwrap()
    };
    let id = |token: &str| {
        catalog
            .keys
            .open(token.as_bytes(), FakeHost::post("", None).now)
            .map(|s| s.id.clone())
    };
    assert_ne!(id(&token), id(&other));
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

    let (host, _) = post_shared(&catalog, &mut shared, &token, list);
    assert_eq!(listed_names(&host), ["discover_tools", "select_tools"]);

    // discover: servers with counts, then one server's tools with one-line descriptions.
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("discover_tools", serde_json::json!({})),
    );
    let found = &host.reply_json()["result"]["structuredContent"];
    assert_eq!(found["servers"][0]["name"], "alpha");
    assert_eq!(found["servers"][0]["tools"], 2);
    assert_eq!(found["servers"][1]["tools"], 1);
    assert!(
        host.calls.is_empty()
            && host
                .request_headers
                .iter()
                .all(|(n, _)| n != "x-mcp-servername")
    );
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("discover_tools", serde_json::json!({"server": "alpha"})),
    );
    let found = &host.reply_json()["result"]["structuredContent"];
    assert_eq!(
        found["tools"][1],
        serde_json::json!({"name": "alpha_add", "description": "a+b"})
    );
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("discover_tools", serde_json::json!({"server": "nope"})),
    );
    assert_eq!(host.reply_json()["error"]["code"], -32602);

    // A selection naming an unknown tool changes nothing and names it.
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call(
            "select_tools",
            serde_json::json!({"tools": ["alpha_add", "gamma_x"]}),
        ),
    );
    assert_eq!(host.reply_json()["error"]["code"], -32602);
    let message = host.reply_json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("gamma_x") && !message.contains("alpha_add"),
        "{message}"
    );
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("select_tools", serde_json::json!({"tools": []})),
    );
    assert_eq!(host.reply_json()["error"]["code"], -32602);
    let (host, _) = post_shared(&catalog, &mut shared, &token, list);
    assert_eq!(listed_names(&host), ["discover_tools", "select_tools"]);

    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call(
            "select_tools",
            serde_json::json!({"tools": ["alpha_add", "beta_echo"]}),
        ),
    );
    let selected = &host.reply_json()["result"]["structuredContent"];
    assert_eq!(
        selected["selected"],
        serde_json::json!(["alpha_add", "beta_echo"])
    );
    let (host, _) = post_shared(&catalog, &mut shared, &token, list);
    assert_eq!(
        listed_names(&host),
        ["discover_tools", "select_tools", "alpha_add", "beta_echo"]
    );

    // In scope: routed (the upstream session opens first); outside: refused, never forwarded.
    let (host, action) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("alpha_add", serde_json::json!({})),
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(host.calls[0].0, "alpha");
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("alpha_echo", serde_json::json!({})),
    );
    assert_eq!(host.reply_json()["error"]["code"], -32602);
    assert!(host.calls.is_empty());

    // Another session has no scope: the meta-tools only, and every tool callable.
    let (host, _) = post_shared(&catalog, &mut shared, &other, list);
    assert_eq!(listed_names(&host), ["discover_tools", "select_tools"]);
    let (host, action) = post_shared(
        &catalog,
        &mut shared,
        &other,
        &meta_call("alpha_echo", serde_json::json!({})),
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(host.calls[0].0, "alpha");
}

#[test]
fn at_or_below_the_threshold_the_catalog_is_listed_as_usual() {
    let catalog = catalog_with_limits(
        serde_json::json!({"page_size": 10, "max_body_bytes": 4096, "meta_tools_above": 3}),
        false,
    );
    assert!(!catalog.meta_tools_active());
    let token = initialize(&catalog);
    let mut shared = HashMap::new();
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(
        listed_names(&host),
        ["alpha_echo", "alpha_add", "beta_echo"]
    );
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("select_tools", serde_json::json!({"tools": ["alpha_add"]})),
    );
    assert_eq!(
        host.reply_json()["error"]["code"],
        -32602,
        "an unknown tool"
    );
}

#[test]
fn a_selection_holds_inside_a_batch() {
    let catalog = catalog_with_limits(
        serde_json::json!({"page_size": 10, "max_body_bytes": 4096, "meta_tools_above": 2}),
        false,
    );
    let token = initialize_at(&catalog, "2025-03-26");
    let mut shared = HashMap::new();
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("select_tools", serde_json::json!({"tools": ["alpha_add"]})),
    );
    assert!(host.reply_json()["result"].is_object());
    let batch = r#"[
        {"jsonrpc":"2.0","id":1,"method":"tools/list"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"discover_tools","arguments":{}}}
    ]"#;
    let (host, _) = post_shared(&catalog, &mut shared, &token, batch);
    assert!(host.calls.is_empty(), "nothing goes upstream");
    let answers = host.reply_json();
    let names: Vec<&str> = answers[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["discover_tools", "select_tools", "alpha_add"]);
    assert_eq!(answers[1]["error"]["code"], -32602);
    assert_eq!(answers[2]["error"]["code"], -32600);
}

#[test]
fn discover_tools_offers_configured_categories() {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "t1",
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}], "ttl_seconds": 3600},
        "limits": {"meta_tools_above": 1},
        "tool_categories": [{"name": "math", "description": "Arithmetic", "tools": ["alpha_add", "nope"]}],
        "servers": [
            {"name": "alpha", "prefix": "alpha_", "authority": "alpha.mcp.local", "cluster": "alpha",
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}, {"name": "add", "description": "a+b\nmore"}]}
        ]
    }))
    .unwrap();
    let catalog = Rc::new(Catalog::build(config).unwrap());
    let token = initialize(&catalog);
    let mut shared = HashMap::new();
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("discover_tools", serde_json::json!({})),
    );
    let found = &host.reply_json()["result"]["structuredContent"];
    assert_eq!(
        found["categories"],
        serde_json::json!([{"name": "math", "description": "Arithmetic", "tools": 1}])
    );
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("discover_tools", serde_json::json!({"category": "math"})),
    );
    let found = &host.reply_json()["result"]["structuredContent"];
    assert_eq!(
        found["tools"],
        serde_json::json!([{"name": "alpha_add", "description": "a+b"}])
    );
    let (host, _) = post_shared(
        &catalog,
        &mut shared,
        &token,
        &meta_call("discover_tools", serde_json::json!({"category": "art"})),
    );
    assert_eq!(host.reply_json()["error"]["code"], -32602);
}

#[test]
fn a_selection_notifies_the_sessions_stream_through_the_sidecar_after_the_answer() {
    let catalog = catalog_with_limits(
        serde_json::json!({"page_size": 10, "max_body_bytes": 4096, "meta_tools_above": 2}),
        false,
    );
    let token = initialize(&catalog);
    let session_id = catalog
        .keys
        .open(token.as_bytes(), FakeHost::post("", None).now)
        .unwrap()
        .id
        .clone();
    let call = |body: &str, sidecar: Option<Rc<SidecarLink>>| {
        let mut host = FakeHost::post(body, Some(&token));
        host.next_version = 1_000_000;
        let mut request = Request::new(Rc::clone(&catalog), Rc::default(), sidecar);
        assert_eq!(request.on_request_headers(&mut host, false), Action::Pause);
        let size = host.request_body.len();
        request.on_request_body(&mut host, size, true);
        host
    };
    let select = meta_call("select_tools", serde_json::json!({"tools": ["alpha_add"]}));

    let host = call(&select, sidecar_link());
    // Answered at once, and the notice is on its way, detached (nothing awaits it).
    assert_eq!(
        host.reply_json()["result"]["structuredContent"]["toolsListChanged"],
        true
    );
    assert!(host.calls.is_empty(), "{:?}", host.calls);
    assert_eq!(host.detached.len(), 1);
    let (cluster, headers) = host.detached[0].clone();
    assert_eq!(cluster, "mcpgw_sidecar");
    for want in [
        (":method", "POST"),
        (":path", "/v1/streams/notify"),
        (":authority", "mcpgw-sidecar"),
        ("authorization", SIDECAR_AUTHORIZATION),
        ("content-type", "application/json"),
    ] {
        assert!(
            headers.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {headers:?}"
        );
    }
    assert_eq!(headers.len(), 5, "nothing of the client's: {headers:?}");
    let body: serde_json::Value = serde_json::from_slice(&host.detached_bodies[0]).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"session": session_id,
            "method": "notifications/tools/list_changed"})
    );

    // A refused selection and a discovery change nothing: no notice.
    for body in [
        meta_call("select_tools", serde_json::json!({"tools": ["gamma_x"]})),
        meta_call("discover_tools", serde_json::json!({})),
    ] {
        let host = call(&body, sidecar_link());
        assert!(host.reply_json().get("id").is_some());
        assert!(host.detached.is_empty() && host.calls.is_empty(), "{body}");
    }
    // No sidecar: the selection is answered the same, and nothing is dispatched.
    let host = call(&select, None);
    assert_eq!(
        host.reply_json()["result"]["structuredContent"]["toolsListChanged"],
        true
    );
    assert!(host.detached.is_empty() && host.calls.is_empty());
}

fn catalog_opening_on_initialize() -> Rc<Catalog> {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "t1",
        "gateway": {"open_upstream_sessions": "on_initialize"},
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]},
        "servers": [
            {"name": "alpha", "prefix": "alpha_", "authority": "alpha.mcp.local", "cluster": "alpha",
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]},
            {"name": "beta", "prefix": "beta_", "authority": "beta.mcp.local", "cluster": "beta",
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]},
            {"name": "next", "prefix": "next_", "authority": "next.mcp.local", "cluster": "next",
             "protocol_versions": ["2026-07-28"],
             "tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
        ]
    }))
    .unwrap();
    Rc::new(Catalog::build(config).unwrap())
}

#[test]
fn upstream_sessions_open_ahead_of_the_first_call_when_configured() {
    let catalog = catalog_opening_on_initialize();
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
        None,
    );
    let (mut request, action) = run(&catalog, &mut host);
    // The client's answer is not delayed: it is sent before any upstream is called.
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply_status(), 200);
    assert!(host.calls.is_empty());
    let token = host.reply_header("mcp-session-id").unwrap();
    // One opening per session-era server (`next` speaks only 2026-07-28: no session to open).
    let mut warm_ups = request.take_warm_ups();
    assert_eq!(warm_ups.len(), 2);
    assert!(request.take_warm_ups().is_empty(), "taken once");
    for warm in &mut warm_ups {
        warm.start_warm_up(&mut host);
        assert!(warm.is_opening());
    }
    let clusters: Vec<&str> = host.calls.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(clusters, ["alpha", "beta"]);
    assert!(host.calls[0]
        .2
        .starts_with(br#"{"jsonrpc":"2.0","id":0,"method":"initialize""#));
    // alpha opens; beta fails (logged, nobody answered: the first call to beta opens it).
    let initialized = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}"#;
    warm_ups[0].on_call_response(
        &mut host,
        101,
        CallResponse {
            status: Some(200),
            content_type: Some(b"application/json".to_vec()),
            session_id: Some(b"up-alpha".to_vec()),
            body: initialized.to_vec(),
            ..Default::default()
        },
    );
    warm_ups[1].on_call_response(
        &mut host,
        102,
        CallResponse {
            status: Some(503),
            ..Default::default()
        },
    );
    // (A reply would trip the fake host's one-reply-per-stream assertion.)
    assert!(!warm_ups[1].is_opening());
    assert_eq!(host.calls.len(), 3, "alpha's notifications/initialized");
    warm_ups[0].on_call_response(
        &mut host,
        103,
        CallResponse {
            status: Some(202),
            ..Default::default()
        },
    );
    assert!(!warm_ups[0].is_opening());
    assert!(!host.resumed_request, "a warm-up has no request to resume");
    // The first call to alpha finds its session cached: routed at once, no upstream call.
    let body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"alpha_echo","arguments":{}}}"#;
    let mut call = FakeHost::post(body, Some(&token));
    call.shared = host.shared.clone();
    let (_, action) = run(&catalog, &mut call);
    assert_eq!(action, Action::Continue);
    assert!(call.calls.is_empty());
    assert_eq!(call.header("mcp-session-id").as_deref(), Some("up-alpha"));
    // The first call to beta opens its session itself.
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"beta_echo","arguments":{}}}"#;
    let mut call = FakeHost::post(body, Some(&token));
    call.shared = host.shared.clone();
    let (_, action) = run(&catalog, &mut call);
    assert_eq!(action, Action::Pause);
    assert_eq!(call.calls.len(), 1);
}

#[test]
fn by_default_initialize_opens_no_upstream_session() {
    let catalog = catalog(10);
    let mut host = FakeHost::post(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
        None,
    );
    let (mut request, _) = run(&catalog, &mut host);
    assert!(request.take_warm_ups().is_empty());
    assert!(host.calls.is_empty());
}

#[test]
fn only_the_rewritten_prefix_of_a_body_is_written_back() {
    let catalog = catalog_with_limits(
        serde_json::json!({"page_size": 10, "max_body_bytes": 1 << 20}),
        false,
    );
    let token = initialize(&catalog);
    let big = "x".repeat(64 * 1024);
    for name_first in [true, false] {
        let body = if name_first {
            format!(
                r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"alpha_echo","arguments":{{"text":"{big}"}}}}}}"#
            )
        } else {
            format!(
                r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"arguments":{{"text":"{big}"}},"name":"alpha_echo"}}}}"#
            )
        };
        let mut host = FakeHost::post(&body, Some(&token));
        cache_upstream(&mut host, &catalog, &token, "alpha", "up-alpha");
        let (_, action) = run(&catalog, &mut host);
        assert_eq!(action, Action::Continue);
        // Whatever was written, the upstream gets the whole body with the name unprefixed.
        assert_eq!(
            String::from_utf8(host.request_body.clone()).unwrap(),
            body.replace("alpha_echo", "echo")
        );
        assert_eq!(host.body_writes.len(), 1);
        if name_first {
            // Up to the name: the 64 KiB argument after it is left where Envoy holds it.
            let prefix = body.find("alpha_echo").unwrap() + "echo\"".len();
            assert_eq!(host.body_writes[0], prefix);
        } else {
            assert!(host.body_writes[0] > big.len());
        }
    }
}
