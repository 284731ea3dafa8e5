//! A minimal MCP server (Streamable HTTP, session era, JSON responses only) built to be fast, so that a
//! benchmark measures the gateway in front of it rather than the upstream.
//!
//! * `POST` with one JSON-RPC message:
//!   - `initialize` answers with a fresh `Mcp-Session-Id` (process seed + counter; not tracked),
//!   - `ping` answers `{}`,
//!   - `tools/list` answers `--tools N` tools in one page (`echo`, `tool0002` .. `toolNNNN`),
//!   - `tools/call` (any tool name) echoes its `arguments` as text when they are at most
//!     `--echo-max` bytes long, otherwise the text `"<len> bytes"`,
//!   - any other method: JSON-RPC error -32601; notifications and responses: `202`.
//! * `DELETE` answers `200` (the session "ends"), `GET` answers `405`.
//!
//! Session ids are accepted whatever they are (never checked): the server keeps no per-session state,
//! so it neither grows nor answers 404 for an unknown session.
//!
//! `--latency-ms L` delays every JSON-RPC request's answer by `L` ms (timer, not CPU), to model a
//! slower upstream. One single-threaded tokio runtime serves every `--port` given.

use std::borrow::Cow;
use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

const USAGE: &str =
    "usage: mcpgw-bench-echo --port P[-Q] [--port ...] [--tools N] [--latency-ms L] \
[--echo-max BYTES] [--max-body BYTES] [--name NAME]";

const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

struct Options {
    ports: Vec<u16>,
    tools: usize,
    latency: Duration,
    echo_max: usize,
    max_body: usize,
    name: String,
}

fn parse_ports(spec: &str, out: &mut Vec<u16>) -> Result<(), String> {
    let bad = || format!("bad port spec {spec:?}");
    match spec.split_once('-') {
        Some((a, b)) => {
            let a: u16 = a.parse().map_err(|_| bad())?;
            let b: u16 = b.parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            out.extend(a..=b);
        }
        None => out.push(spec.parse().map_err(|_| bad())?),
    }
    Ok(())
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        ports: Vec::new(),
        tools: 1,
        latency: Duration::ZERO,
        echo_max: 256,
        max_body: 16 * 1024 * 1024,
        name: "bench-echo".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        };
        match flag.as_str() {
            "--port" => parse_ports(&value, &mut opts.ports)?,
            "--tools" => opts.tools = num(&value)?,
            "--latency-ms" => opts.latency = Duration::from_millis(num(&value)? as u64),
            "--echo-max" => opts.echo_max = num(&value)?,
            "--max-body" => opts.max_body = num(&value)?,
            "--name" => opts.name = value,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if opts.ports.is_empty() {
        return Err(format!("--port is required\n{USAGE}"));
    }
    Ok(opts)
}

/// Everything a request handler needs; one per process, shared by `Rc` on the single thread.
struct Server {
    /// `{"tools":[...]}`, serialised once.
    tools_result: String,
    /// `{"protocolVersion":` is prepended per request; this is the rest of the initialize result.
    init_tail: String,
    latency: Duration,
    echo_max: usize,
    max_body: usize,
    seed: u64,
    sessions: AtomicU64,
}

fn tool_name(i: usize) -> String {
    if i == 0 {
        "echo".into()
    } else {
        format!("tool{:04}", i + 1)
    }
}

fn build_tools(n: usize) -> String {
    let mut out = String::from("{\"tools\":[");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let name = tool_name(i);
        out.push_str(&format!(
            "{{\"name\":\"{name}\",\"description\":\"Benchmark tool {name}: echoes its arguments.\",\
             \"inputSchema\":{{\"type\":\"object\",\"properties\":{{\"text\":{{\"type\":\"string\",\
             \"description\":\"Text to echo\"}}}},\"required\":[\"text\"]}}}}"
        ));
    }
    out.push_str("]}");
    out
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InitParams<'a> {
    #[serde(borrow, default, rename = "protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>, json: bool) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if json {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}

fn envelope(id: &str, key: &str, value: &str) -> String {
    let mut s = String::with_capacity(value.len() + id.len() + 32);
    s.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    s.push_str(id);
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    s.push_str(value);
    s.push('}');
    s
}

fn rpc_error(id: &str, code: i32, message: &str) -> String {
    let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    envelope(
        id,
        "error",
        &format!("{{\"code\":{code},\"message\":{msg}}}"),
    )
}

impl Server {
    fn new(opts: &Options) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        let name = serde_json::to_string(&opts.name).unwrap_or_else(|_| "\"bench-echo\"".into());
        Self {
            tools_result: build_tools(opts.tools),
            init_tail: format!(
                ",\"capabilities\":{{\"tools\":{{\"listChanged\":false}}}},\
                 \"serverInfo\":{{\"name\":{name},\"version\":\"{}\"}}}}",
                env!("CARGO_PKG_VERSION")
            ),
            latency: opts.latency,
            echo_max: opts.echo_max,
            max_body: opts.max_body,
            seed,
            sessions: AtomicU64::new(1),
        }
    }

    /// Answers one JSON-RPC message: `(status, body, session id to return)`.
    fn answer(&self, body: &[u8]) -> (StatusCode, String, Option<String>) {
        let msg: Message = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    rpc_error("null", -32700, "Parse error"),
                    None,
                )
            }
        };
        let (Some(id), Some(method)) = (msg.id, msg.method) else {
            // A notification, or a response to a server request: accepted, no body.
            return (StatusCode::ACCEPTED, String::new(), None);
        };
        let id = id.get();
        let params = msg.params.map(RawValue::get).unwrap_or("{}");
        match method.as_ref() {
            "tools/call" => {
                let args = serde_json::from_str::<CallParams>(params)
                    .ok()
                    .and_then(|p| p.arguments)
                    .map(RawValue::get)
                    .unwrap_or("{}");
                let text = if args.len() <= self.echo_max {
                    serde_json::to_string(args).unwrap_or_default()
                } else {
                    format!("\"{} bytes\"", args.len())
                };
                let result = format!(
                    "{{\"content\":[{{\"type\":\"text\",\"text\":{text}}}],\"isError\":false}}"
                );
                (StatusCode::OK, envelope(id, "result", &result), None)
            }
            "tools/list" => (
                StatusCode::OK,
                envelope(id, "result", &self.tools_result),
                None,
            ),
            "ping" => (StatusCode::OK, envelope(id, "result", "{}"), None),
            "initialize" => {
                let asked = serde_json::from_str::<InitParams>(params)
                    .ok()
                    .and_then(|p| p.protocol_version);
                let version = match asked {
                    Some(v) if PROTOCOL_VERSIONS.contains(&v.as_ref()) => v.into_owned(),
                    _ => "2025-06-18".to_owned(),
                };
                let result = format!("{{\"protocolVersion\":\"{version}\"{}", self.init_tail);
                let n = self.sessions.fetch_add(1, Ordering::Relaxed);
                let sid = format!("{:016x}{:016x}", self.seed, n);
                (StatusCode::OK, envelope(id, "result", &result), Some(sid))
            }
            _ => (
                StatusCode::OK,
                rpc_error(id, -32601, "Method not found"),
                None,
            ),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        match *req.method() {
            Method::POST => {}
            Method::DELETE => return reply(StatusCode::OK, Bytes::new(), false),
            _ => return reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new(), false),
        }
        let body = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, Bytes::new(), false),
        };
        let (status, text, sid) = self.answer(&body);
        if status == StatusCode::ACCEPTED {
            return reply(status, Bytes::new(), false);
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut resp = reply(status, text, true);
        if let Some(sid) = sid.and_then(|s| HeaderValue::from_str(&s).ok()) {
            resp.headers_mut().insert("mcp-session-id", sid);
        }
        resp
    }
}

async fn serve(listener: TcpListener, server: Rc<Server>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn run(opts: Options) -> Result<(), Box<dyn Error>> {
    let server = Rc::new(Server::new(&opts));
    let mut bound = Vec::new();
    for port in &opts.ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        bound.push(listener);
    }
    for listener in bound {
        tokio::task::spawn_local(serve(listener, server.clone()));
    }
    println!(
        "mcpgw-bench-echo {} listening on 127.0.0.1 ports {:?} ({} tools, latency {} ms)",
        opts.name,
        opts.ports,
        opts.tools,
        opts.latency.as_millis()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(opts))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn server(tools: usize) -> Server {
        Server::new(&Options {
            ports: vec![1],
            tools,
            latency: Duration::ZERO,
            echo_max: 16,
            max_body: 1 << 20,
            name: "t".into(),
        })
    }

    #[test]
    fn answers_the_methods() {
        let s = server(3);
        let (st, body, sid) = s.answer(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}"#);
        assert_eq!(st, StatusCode::OK);
        assert!(
            body.contains("\"protocolVersion\":\"2025-03-26\""),
            "{body}"
        );
        assert!(sid.is_some());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["result"]["serverInfo"]["name"], "t");

        let (_, body, _) = s.answer(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: Vec<_> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["echo", "tool0002", "tool0003"]);
        assert_eq!(v["id"], "a");

        let (_, body, _) = s.answer(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"a":"b"}}}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["result"]["content"][0]["text"], r#"{"a":"b"}"#);

        let big = format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"x","arguments":{{"t":"{}"}}}}}}"#,
            "y".repeat(100)
        );
        let (_, body, _) = s.answer(big.as_bytes());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["result"]["content"][0]["text"], "108 bytes");

        let (st, body, _) = s.answer(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!((st, body.as_str()), (StatusCode::ACCEPTED, ""));
        let (st, _, _) = s.answer(b"{nope");
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (_, body, _) = s.answer(br#"{"jsonrpc":"2.0","id":9,"method":"nope"}"#);
        assert!(body.contains("-32601"));
    }

    #[test]
    fn port_ranges() {
        let mut v = Vec::new();
        parse_ports("10-12", &mut v).unwrap();
        parse_ports("20", &mut v).unwrap();
        assert_eq!(v, [10, 11, 12, 20]);
        assert!(parse_ports("12-10", &mut v).is_err());
    }
}
