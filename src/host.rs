//! [`mcpgw_core::Host`] over proxy-wasm: the only place that talks to the proxy for a stream.

use mcpgw_core::sync::ControlHost;
use mcpgw_core::{CallResponse, Event, Field, Host, Level};
use proxy_wasm::hostcalls;

use crate::abi;

/// The proxy, for one stream: its calls go to the effective context (the stream itself, or the
/// stream the root context drives, see lib.rs).
#[derive(Default)]
pub struct ProxyHost {
    /// The stream's context.
    context: u32,
    /// The VM's root context: detached calls are made on it, so that they outlive the stream.
    root_context: u32,
    /// The VM's wake-up queue.
    wake_queue: Option<u32>,
    /// Calls dispatched through this host since the last look: when the root context drives a
    /// stream, their answers reach the root, which routes them to the stream.
    pub dispatched: Vec<u32>,
    /// Metrics and access-log fields are reported (the plugin's `telemetry` switch).
    telemetry: bool,
}

impl ProxyHost {
    pub fn new(context: u32, root_context: u32, wake_queue: Option<u32>, telemetry: bool) -> Self {
        Self {
            context,
            root_context,
            wake_queue,
            dispatched: Vec::new(),
            telemetry,
        }
    }

    /// Reads the answer of a dispatched call (inside `on_http_call_response`).
    pub fn call_response(body_size: usize) -> CallResponse {
        let headers = abi::header_map_pairs(abi::CALL_RESPONSE_HEADERS)
            .inspect_err(|status| report("call response headers", *status))
            .unwrap_or_default();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let status =
            find(":status").and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()));
        let body = if body_size == 0 {
            Vec::new()
        } else {
            read_buffer("call response body", abi::CALL_RESPONSE_BODY, body_size)
                .unwrap_or_default()
        };
        CallResponse {
            status,
            content_type: find("content-type"),
            session_id: find("mcp-session-id"),
            etag: find("etag"),
            body,
        }
    }
}

/// The CAS token of a write that must only create its key (see `shared_set_versioned`).
const ABSENT: u32 = u32::MAX;

/// An HTTP call through the SDK, which registers its token to route the answer (see abi.rs).
fn dispatch(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, String> {
    let body = (!body.is_empty()).then_some(body);
    hostcalls::dispatch_http_call(
        cluster,
        headers.to_vec(),
        body,
        Vec::new(),
        std::time::Duration::from_millis(timeout_ms),
    )
    .map_err(|status| format!("{status:?}"))
}

fn report(what: &str, status: abi::Status) {
    if status != abi::OK {
        log::warn!("host call {what} failed with status {status}");
    }
}

fn read_buffer(what: &str, buffer: u32, size: usize) -> Option<Vec<u8>> {
    abi::buffer(buffer, 0, size)
        .inspect_err(|status| report(what, *status))
        .ok()
        .flatten()
}

/// The proxy's clock, in nanoseconds since the Unix epoch (0 when the host cannot tell: every
/// token then looks expired or from the future, so nothing is accepted on a broken clock).
fn now_nanos() -> u64 {
    abi::current_time_nanos()
        .inspect_err(|status| report("current time", *status))
        .unwrap_or(0)
}

/// A shared-data value, `None` when absent or unreadable (logged).
fn shared_value(key: &str) -> Option<(Vec<u8>, u32)> {
    abi::shared_data(key)
        .inspect_err(|status| report(key, *status))
        .ok()
        .flatten()
}

impl Host for ProxyHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        abi::header_map_pairs(abi::REQUEST_HEADERS)
            .inspect_err(|status| report("request headers", *status))
            .unwrap_or_default()
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        report(name, abi::replace_header(abi::REQUEST_HEADERS, name, value));
    }

    fn remove_request_header(&mut self, name: &str) {
        report(name, abi::remove_header(abi::REQUEST_HEADERS, name));
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        read_buffer("request body", abi::REQUEST_BODY, size)
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        report(
            "set body",
            abi::set_buffer(abi::REQUEST_BODY, 0, size, body),
        );
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        abi::header_map_pairs(abi::RESPONSE_HEADERS)
            .inspect_err(|status| report("response headers", *status))
            .unwrap_or_default()
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        read_buffer("response body", abi::RESPONSE_BODY, size)
    }

    fn set_property(&mut self, name: &str, value: &[u8]) {
        report("set property", abi::set_property(name, value));
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        abi::property(path)
            .inspect_err(|status| report("property", *status))
            .ok()
            .flatten()
    }

    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        report(
            "set response body",
            abi::set_buffer(abi::RESPONSE_BODY, 0, size, body),
        );
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        report(
            name,
            abi::replace_header(abi::RESPONSE_HEADERS, name, value),
        );
    }

    fn remove_response_header(&mut self, name: &str) {
        report(name, abi::remove_header(abi::RESPONSE_HEADERS, name));
    }

    fn send_response(
        &mut self,
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        report(
            "send_local_response",
            abi::send_local_response(status, headers, body, details),
        );
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let token = dispatch(cluster, headers, body, timeout_ms)?;
        self.dispatched.push(token);
        Ok(token)
    }

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        shared_value(key).map(|(value, _)| value)
    }

    fn shared_set(&mut self, key: &str, value: &[u8]) {
        report(key, abi::set_shared_data(key, value, 0));
    }

    fn shared_get_versioned(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        shared_value(key)
    }

    fn shared_set_versioned(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
        // The proxy has no "create if absent": a CAS token is checked only against an existing
        // key, and 0 means "unconditionally". A key seen absent is written with a token no key
        // holds at that moment (tokens are handed out by a process-wide counter, so only a key
        // written exactly 2^32 - 1 writes ago could hold this one): the write succeeds only if
        // the key is still absent, and a concurrent creator's value is never overwritten.
        let cas = version.unwrap_or(ABSENT);
        match abi::set_shared_data(key, value, cas) {
            abi::OK => true,
            abi::CAS_MISMATCH => false,
            status => {
                report(key, status);
                false
            }
        }
    }

    fn now_secs(&self) -> u64 {
        now_nanos() / 1_000_000_000
    }

    fn now_millis(&self) -> u64 {
        now_nanos() / 1_000_000
    }

    fn random_nonce(&mut self) -> Option<[u8; 24]> {
        let mut nonce = [0u8; 24];
        match getrandom::fill(&mut nonce) {
            Ok(()) => Some(nonce),
            Err(e) => {
                // No entropy means no token: a clock-derived nonce would be guessable.
                log::error!("getrandom failed: {e}; no session token can be issued");
                None
            }
        }
    }

    fn wake_address(&self) -> Option<u32> {
        self.wake_queue
    }

    fn wake(&mut self, address: u32, message: &[u8]) {
        match abi::enqueue_shared_queue(address, message) {
            abi::OK => {}
            // The queue of a VM that is gone: its streams went with it.
            abi::NOT_FOUND => log::debug!("wake-up queue {address} is gone"),
            status => report("enqueue wake-up", status),
        }
    }

    fn dispatch_detached(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<(), String> {
        // Made on the root context, so the call is not cancelled with the stream; its answer
        // goes unread.
        let status = abi::set_effective_context(self.root_context);
        if status != abi::OK {
            return Err(format!(
                "cannot switch to the root context (status {status})"
            ));
        }
        let result = dispatch(cluster, headers, body, timeout_ms).map(drop);
        report(
            "back to the stream",
            abi::set_effective_context(self.context),
        );
        result
    }

    fn clear_route_cache(&mut self) {
        // Not every Envoy build has it (NotFound); older ones re-route on their own.
        let status = abi::call_foreign_function("clear_route_cache", &[]);
        if status != abi::NOT_FOUND {
            report("clear_route_cache", status);
        }
    }

    fn resume_request(&mut self) {
        report("resume request", abi::continue_stream(abi::STREAM_REQUEST));
    }

    fn resume_response(&mut self) {
        report(
            "resume response",
            abi::continue_stream(abi::STREAM_RESPONSE),
        );
    }

    fn log(&self, level: Level, message: &str) {
        match level {
            Level::Debug => log::debug!("{message}"),
            Level::Info => log::info!("{message}"),
            Level::Warn => log::warn!("{message}"),
            Level::Error => log::error!("{message}"),
        }
    }

    fn observe(&mut self, event: Event<'_>) {
        if self.telemetry {
            crate::metrics::observe(event);
        }
    }

    fn log_field(&mut self, field: Field, value: &str) {
        if self.telemetry {
            let status = abi::set_property(field.name(), value.as_bytes());
            if status != abi::OK {
                log::debug!("cannot set {}: status {status}", field.name());
            }
        }
    }
}

/// The `log` crate's logger, over [`abi::log`] (the SDK's own logger unwraps the host's status).
pub struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => abi::LOG_ERROR,
            log::Level::Warn => abi::LOG_WARN,
            log::Level::Info => abi::LOG_INFO,
            log::Level::Debug | log::Level::Trace => abi::LOG_DEBUG,
        };
        // Nowhere to report a failed log line.
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// [`ControlHost`] for the root context (configuration sync).
pub struct ControlProxy;

impl ControlHost for ControlProxy {
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        dispatch(cluster, headers, b"", timeout_ms)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match shared_value(key) {
            Some((value, cas)) => (Some(value), Some(cas)),
            None => (None, None),
        }
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        match abi::set_shared_data(key, value, cas.unwrap_or(0)) {
            abi::OK => true,
            abi::CAS_MISMATCH => false,
            status => {
                report(key, status);
                false
            }
        }
    }

    fn now_millis(&self) -> u64 {
        now_nanos() / 1_000_000
    }

    fn log(&self, level: Level, message: &str) {
        ProxyHost::default().log(level, message);
    }
}

/// A random name for this root context (its poller lease): `None` when there is no randomness,
/// since a name two VMs could share would let both poll as the lease holder.
pub fn owner_id() -> Option<String> {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        Err(e) => {
            log::error!(
                "getrandom failed: {e}; this VM takes no poller lease and follows the published \
                 configuration only"
            );
            None
        }
    }
}
