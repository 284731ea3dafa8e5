//! A real `rmcp` client for the end-to-end tests (tests/e2e/test_clients.py): connects to an MCP
//! endpoint over Streamable HTTP (`initialize`, session era), answers the server's
//! `sampling/createMessage` and `elicitation/create` requests, lists every tool, calls
//! `<prefix>server_name` (the conformance upstream's `--name`), `<prefix>test_simple_text`,
//! `<prefix>test_sampling` and `<prefix>test_elicitation`, closes the session and prints one JSON
//! object on stdout.
//!
//!     cargo build -p mcpgw-sidecar --examples
//!     target/debug/examples/mcp_client http://127.0.0.1:10000/mcp c_
//!
//! The sampling answer is `rmcp sampled: <the prompt's text>`; the elicitation answer accepts with
//! `{"username": "rmcp-user", "email": "rmcp@example.com"}`. Every server request it received is
//! echoed under `sampling_requests` / `elicitation_requests`. Exit status 1 (and a message on stderr)
//! when a step fails.
#![allow(deprecated)] // sampling is deprecated at 2026-07-28; this client speaks 2025-11-25

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ElicitationAction, ErrorData, Implementation,
};
use rmcp::service::{RequestContext, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error + Send + Sync>;

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Default)]
struct Recorder {
    sampling: Arc<Mutex<Vec<Value>>>,
    elicitation: Arc<Mutex<Vec<Value>>>,
}

fn record(list: &Mutex<Vec<Value>>, item: Value) {
    if let Ok(mut l) = list.lock() {
        l.push(item);
    }
}

fn recorded(list: &Mutex<Vec<Value>>) -> Vec<Value> {
    list.lock().map(|l| l.clone()).unwrap_or_default()
}

impl ClientHandler for Recorder {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let wire = serde_json::to_value(&params).unwrap_or(Value::Null);
        let prompt = wire
            .pointer("/messages/0/content/text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        record(&self.sampling, wire);
        serde_json::from_value(json!({
            "role": "assistant",
            "content": {"type": "text", "text": format!("rmcp sampled: {prompt}")},
            "model": "rmcp-test-model",
            "stopReason": "endTurn",
        }))
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        record(
            &self.elicitation,
            serde_json::to_value(&request).unwrap_or(Value::Null),
        );
        Ok(ElicitResult::new(ElicitationAction::Accept)
            .with_content(json!({"username": "rmcp-user", "email": "rmcp@example.com"})))
    }

    fn get_info(&self) -> ClientConfig {
        // The builder needs rmcp's `server` feature, which the sidecar does not enable.
        let capabilities: ClientCapabilities =
            serde_json::from_value(json!({"sampling": {}, "elicitation": {"form": {}}}))
                .unwrap_or_default();
        ClientConfig::new(
            capabilities,
            Implementation::new("mcpgw-e2e-rmcp-client", env!("CARGO_PKG_VERSION")),
        )
    }
}

async fn step<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Err(_) => Err(format!("{what}: no answer within {} s", STEP_TIMEOUT.as_secs()).into()),
        Ok(Err(e)) => Err(format!("{what}: {e}").into()),
        Ok(Ok(v)) => Ok(v),
    }
}

fn call_json(result: &CallToolResult) -> Value {
    serde_json::to_value(result).unwrap_or(Value::Null)
}

async fn run(url: &str, prefix: &str) -> Result<Value, Error> {
    let recorder = Recorder::default();
    let transport = StreamableHttpClientTransport::from_uri(url);
    let client = step("initialize", recorder.clone().serve(transport)).await?;
    let info = client
        .peer_info()
        .map(|i| serde_json::to_value(&*i).unwrap_or(Value::Null));

    let tools = step("tools/list", client.list_all_tools()).await?;
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();

    let call = |name: String, args: Value| {
        let mut params = CallToolRequestParams::new(name);
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        client.call_tool(params)
    };
    let server_name = step(
        "tools/call server_name",
        call(format!("{prefix}server_name"), json!({})),
    )
    .await?;
    let simple = step(
        "tools/call simple_text",
        call(format!("{prefix}test_simple_text"), json!({})),
    )
    .await?;
    let sampling = step(
        "tools/call test_sampling",
        call(
            format!("{prefix}test_sampling"),
            json!({"prompt": "What is the capital of France?"}),
        ),
    )
    .await?;
    let elicitation = step(
        "tools/call test_elicitation",
        call(
            format!("{prefix}test_elicitation"),
            json!({"message": "Who are you?"}),
        ),
    )
    .await?;

    let mut client = client;
    let closed = step("close", async {
        client.close().await.map_err(|e| e.to_string())
    })
    .await?;

    Ok(json!({
        "server": info,
        "tools": names,
        "server_name": call_json(&server_name),
        "simple_text": call_json(&simple),
        "sampling": call_json(&sampling),
        "elicitation": call_json(&elicitation),
        "sampling_requests": recorded(&recorder.sampling),
        "elicitation_requests": recorded(&recorder.elicitation),
        "closed": format!("{closed:?}"),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: mcp_client URL [PREFIX]");
        std::process::exit(2);
    };
    let prefix = args.next().unwrap_or_default();
    match run(&url, &prefix).await {
        Ok(out) => println!("{out}"),
        Err(e) => {
            eprintln!("mcp_client: {e}");
            std::process::exit(1);
        }
    }
}
