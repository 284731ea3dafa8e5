//! The plugin's hot path, natively: one routed `tools/call` through [`Request`], on a host that
//! counts its calls by kind. Where the Wasm time of a call goes (run it under `perf`), and how many
//! host calls of each kind a call makes (each one is a trip through the proxy-wasm boundary).
//!
//!     cargo run --release -p mcpgw-core --example hotpath [-- ITERATIONS]
//!     perf record -g target/release/examples/hotpath 2000000 && perf report
//!
//! The catalog and request are the benchmark's `call` workload (bench/run.py): two servers of 100
//! tools with prefixes, a session established, its upstream session cached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use mcpgw_core::{upstream, Action, Catalog, GatewayConfig, Host, Level, Request};

#[derive(Default)]
struct CountingHost {
    request_headers: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response_headers: Vec<(String, Vec<u8>)>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    version: u32,
    reply: Option<(u16, Vec<u8>)>,
    session: Option<Vec<u8>>,
    counting: bool,
    calls: std::cell::RefCell<BTreeMap<&'static str, u64>>,
}

impl CountingHost {
    fn count(&self, kind: &'static str) {
        if self.counting {
            *self.calls.borrow_mut().entry(kind).or_default() += 1;
        }
    }
}

impl Host for CountingHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.count("read request headers");
        self.request_headers.clone()
    }
    fn set_request_header(&mut self, _name: &str, _value: &[u8]) {
        self.count("write a request header");
    }
    fn remove_request_header(&mut self, _name: &str) {
        self.count("remove a request header");
    }
    fn request_body(&self, _size: usize) -> Option<Vec<u8>> {
        self.count("read the request body");
        Some(self.request_body.clone())
    }
    fn set_request_body(&mut self, _size: usize, _body: &[u8]) {
        self.count("write the request body");
    }
    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.count("read response headers");
        self.response_headers.clone()
    }
    fn response_body(&self, _size: usize) -> Option<Vec<u8>> {
        self.count("read the response body");
        None
    }
    fn set_response_body(&mut self, _size: usize, _body: &[u8]) {
        self.count("write the response body");
    }
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.count("write a response header");
        if name == "mcp-session-id" && self.session.is_none() {
            self.session = Some(value.to_vec());
        }
    }
    fn remove_response_header(&mut self, _name: &str) {
        self.count("remove a response header");
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &[u8])], body: &[u8], _d: &str) {
        self.count("send a local reply");
        if let Some((_, v)) = headers.iter().find(|(n, _)| *n == "mcp-session-id") {
            self.session = Some(v.to_vec());
        }
        self.reply = Some((status, body.to_vec()));
    }
    fn dispatch(
        &mut self,
        _c: &str,
        _h: &[(&str, &str)],
        _b: &[u8],
        _t: u64,
    ) -> Result<u32, String> {
        self.count("dispatch a call");
        Ok(1)
    }
    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        self.count("read shared data");
        self.shared.get(key).map(|(v, _)| v.clone())
    }
    fn shared_set(&mut self, key: &str, value: &[u8]) {
        self.count("write shared data");
        self.version += 1;
        self.shared
            .insert(key.into(), (value.to_vec(), self.version));
    }
    fn shared_get_versioned(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.count("read shared data");
        self.shared.get(key).cloned()
    }
    fn shared_set_versioned(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        if self.shared.get(key).map(|(_, v)| *v) != version {
            return false;
        }
        self.shared_set(key, value);
        true
    }
    fn now_secs(&self) -> u64 {
        self.count("read the clock");
        1_000_000
    }
    fn now_millis(&self) -> u64 {
        self.count("read the clock");
        1_000_000_000
    }
    fn random_nonce(&mut self) -> Option<[u8; 24]> {
        Some([7; 24])
    }
    fn clear_route_cache(&mut self) {
        self.count("clear the route cache");
    }
    fn resume_request(&mut self) {
        self.count("resume");
    }
    fn resume_response(&mut self) {
        self.count("resume");
    }
    fn observe(&mut self, _event: mcpgw_core::Event<'_>) {
        self.count("telemetry event (metric)");
    }
    fn log_field(&mut self, _field: mcpgw_core::Field, _value: &str) {
        self.count("set a property (access-log field)");
    }
    fn set_property(&mut self, _name: &str, _value: &[u8]) {
        self.count("set a property");
    }
    fn log(&self, _level: Level, _message: &str) {
        self.count("log");
    }
    fn wake_address(&self) -> Option<u32> {
        None
    }
    fn wake(&mut self, _address: u32, _message: &[u8]) {}
    fn dispatch_detached(
        &mut self,
        _c: &str,
        _h: &[(&str, &str)],
        _b: &[u8],
        _t: u64,
    ) -> Result<(), String> {
        self.count("dispatch a call");
        Ok(())
    }
}

fn catalog() -> Rc<Catalog> {
    let tools: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            let name = if i == 0 {
                "echo".to_owned()
            } else {
                format!("tool{i}")
            };
            serde_json::json!({"name": name, "inputSchema": {"type": "object"}})
        })
        .collect();
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "version": "hotpath",
        "session": {"keys": [{"id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]},
        "servers": [
            {"name": "s1", "prefix": "s1_", "authority": "s1.mcp.local", "cluster": "s1", "tools": tools},
            {"name": "s2", "prefix": "s2_", "authority": "s2.mcp.local", "cluster": "s2", "tools": tools},
        ]
    }))
    .unwrap();
    Rc::new(Catalog::build(config).unwrap())
}

fn post(host: &mut CountingHost, body: &str, session: Option<&[u8]>) {
    host.request_headers = vec![
        (":authority".into(), b"127.0.0.1:10000".to_vec()),
        (":path".into(), b"/mcp".to_vec()),
        (":method".into(), b"POST".to_vec()),
        (":scheme".into(), b"http".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
        (
            "accept".into(),
            b"application/json, text/event-stream".to_vec(),
        ),
        ("content-length".into(), body.len().to_string().into_bytes()),
        ("x-forwarded-proto".into(), b"http".to_vec()),
        (
            "x-request-id".into(),
            b"6a1c5e0e-3f4e-4b8f-9a57-1f1f2f3f4f5f".to_vec(),
        ),
    ];
    if let Some(session) = session {
        host.request_headers
            .push(("mcp-session-id".into(), session.to_vec()));
        host.request_headers
            .push(("mcp-protocol-version".into(), b"2025-06-18".to_vec()));
    }
    host.request_body = body.as_bytes().to_vec();
}

/// One request through every callback a proxied call gets.
fn one(catalog: &Rc<Catalog>, host: &mut CountingHost) -> Action {
    let mut request = Request::new(Rc::clone(catalog), Rc::default(), None);
    request.on_request_headers(host, false);
    let size = host.request_body.len();
    let action = request.on_request_body(host, size, true);
    request.on_response_headers(host);
    request.on_response_body(host, 64, true);
    request.on_done(host);
    action
}

fn main() {
    let iterations: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let catalog = catalog();
    let mut host = CountingHost::default();
    post(
        &mut host,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}"#,
        None,
    );
    one(&catalog, &mut host);
    let token = host.session.clone().expect("initialize issues a session");
    let session = catalog
        .keys
        .open(&token, 1_000_000)
        .expect("the token opens");
    let up = upstream::UpstreamSession {
        session_id: "upstream-session".into(),
        protocol_version: "2025-06-18".into(),
    };
    for server in ["s1", "s2"] {
        upstream::store(
            &mut host,
            catalog.limits.upstream_session_slots,
            &session.id,
            server,
            &up,
        );
    }
    host.response_headers = vec![
        (":status".into(), b"200".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
        ("content-length".into(), b"64".to_vec()),
    ];
    let mut n = 0u64;
    let body = |n: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"s1_echo","arguments":{{"text":"hello, world"}}}}}}"#
        )
    };
    post(&mut host, &body(0), Some(&token));
    host.counting = true;
    assert_eq!(
        one(&catalog, &mut host),
        Action::Continue,
        "the call is routed"
    );
    host.counting = false;
    println!("host calls per routed tools/call:");
    let calls = host.calls.borrow().clone();
    for (kind, count) in &calls {
        println!("  {count:>3}  {kind}");
    }
    println!("  {:>3}  in all", calls.values().sum::<u64>());
    let start = Instant::now();
    for _ in 0..iterations {
        n += 1;
        post(&mut host, &body(n), Some(&token));
        std::hint::black_box(one(&catalog, &mut host));
    }
    let per = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!(
        "{iterations} calls: {per:.0} ns per call (native, this harness's own copies included)"
    );
}
