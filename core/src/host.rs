//! The few things the request pipeline needs from its proxy. The plugin edge implements this with
//! proxy-wasm host calls; tests implement it with a fake.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// The answer to a call the gateway dispatched (`status: None` when the call failed without an
/// HTTP response: reset, timeout).
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub status: Option<u16>,
    pub content_type: Option<Vec<u8>>,
    pub session_id: Option<Vec<u8>>,
    pub etag: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

/// What became of a request to the MCP endpoint, once the plugin's part of it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Served {
    /// Answered by the gateway itself (initialize, lists, ping, notifications, DELETE, batches).
    Answered,
    /// Forwarded to an upstream through Envoy's routes.
    Routed,
    /// Refused or failed with this JSON-RPC error code.
    Error(i32),
}

/// Why a client's session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not sealed by a configured key (forged, altered, garbage, or a retired key).
    Tampered,
    /// Older than the session TTL, or issued in the future.
    Expired,
    /// Ended by a DELETE.
    Ended,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tampered => "tampered",
            Refusal::Expired => "expired",
            Refusal::Ended => "ended",
        }
    }
}

/// What the request path reports for telemetry: the pipeline says what happened, the edge
/// decides what to count (metrics) or drops it (`telemetry: false`). Labels are bounded: methods
/// are the MCP method names the gateway knows (see [`crate::pipeline::method_label`]), servers
/// and tools the catalog's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    Request {
        method: &'static str,
        served: Served,
    },
    ToolCall {
        server: &'a str,
        tool: &'a str,
    },
    /// An upstream session was opened (initialize + initialized acknowledged).
    UpstreamOpened {
        server: &'a str,
    },
    /// A cached upstream session was gone (404): the gateway opens a new one and replays.
    UpstreamReinit {
        server: &'a str,
    },
    /// Opening an upstream session failed.
    UpstreamFailed {
        server: &'a str,
    },
    SessionRefused {
        reason: Refusal,
    },
}

/// Fields of the request the proxy's access log may print (see docs/observability.md). The
/// server and tool of a routed call need none: the access log reads them from the routing headers
/// the gateway sets (`x-mcp-servername`, `x-mcp-toolname`), which clients cannot send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Method,
    ErrorCode,
}

impl Field {
    /// The name under which the proxy keeps the field (`mcpgw_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Field::Method => "mcpgw_method",
            Field::ErrorCode => "mcpgw_error_code",
        }
    }
}

pub trait Host {
    /// All request headers, in one host call (names lower-case).
    fn request_headers(&self) -> Vec<(String, Vec<u8>)>;
    fn set_request_header(&mut self, name: &str, value: &[u8]);
    fn remove_request_header(&mut self, name: &str);
    /// The buffered request body (`size` bytes).
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `size` bytes of the buffered request body with `body` (all of it when
    /// `size` is its length), as Envoy's proxy-wasm host does with a write at offset 0.
    fn set_request_body(&mut self, size: usize, body: &[u8]);
    /// All response headers, in one host call (names lower-case).
    fn response_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// The response body chunk at hand (`size` bytes).
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the response body chunk at hand.
    fn set_response_body(&mut self, size: usize, body: &[u8]);
    fn set_response_header(&mut self, name: &str, value: &[u8]);
    fn remove_response_header(&mut self, name: &str);
    /// A local reply; the stream ends here. `details` shows in Envoy's
    /// `%RESPONSE_CODE_DETAILS%` (one token, `[a-z_]`).
    fn send_response(&mut self, status: u16, headers: &[(&str, &[u8])], body: &[u8], details: &str);
    /// An HTTP call to an Envoy cluster; the answer comes back as an event with the token.
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String>;
    fn shared_get(&self, key: &str) -> Option<Vec<u8>>;
    fn shared_set(&mut self, key: &str, value: &[u8]);
    /// A shared-data value and its version (the proxy's CAS token).
    fn shared_get_versioned(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` only if the key still has `version` or, with `None`, only if the key still
    /// does not exist. `false` when another write came first (or the write failed).
    fn shared_set_versioned(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool;
    fn now_secs(&self) -> u64;
    fn now_millis(&self) -> u64;
    /// 24 fresh random bytes; `None` when the proxy has no randomness (then no token is sealed).
    fn random_nonce(&mut self) -> Option<[u8; 24]>;
    /// This VM's wake-up address (see [`Host::wake`]), if it has one.
    fn wake_address(&self) -> Option<u32>;
    /// Wakes the streams of the VM at `address` that wait for an upstream session opening; they
    /// are driven with [`crate::Request::on_wake`] and `message` later, not from within this call.
    fn wake(&mut self, address: u32, message: &[u8]);
    /// An HTTP call whose answer nobody awaits, made so that it outlives this stream.
    fn dispatch_detached(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<(), String>;
    /// Makes Envoy pick the route again after routing headers changed.
    fn clear_route_cache(&mut self);
    fn resume_request(&mut self);
    fn resume_response(&mut self);
    fn log(&self, level: Level, message: &str);
    /// Something worth counting happened (see [`Event`]); hosts without telemetry ignore it.
    fn observe(&mut self, _event: Event<'_>) {}
    /// A field of this request for the proxy's access log; hosts without telemetry ignore it.
    fn log_field(&mut self, _field: Field, _value: &str) {}
    /// A property of the stream, e.g. a filter's dynamic metadata (`["metadata",
    /// "filter_metadata", <filter>, <key>, <field>]`); leaf strings as their bytes.
    fn property(&self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }
    /// Sets a property of the stream: Envoy keeps it as filter state `wasm.<name>`, for the
    /// access log (`%FILTER_STATE(wasm.<name>:PLAIN)%`).
    fn set_property(&mut self, _name: &str, _value: &[u8]) {}
}
