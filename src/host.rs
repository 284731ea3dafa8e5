//! [`mcpgw_core::Host`] over proxy-wasm: the only place that talks to the proxy for a stream.

use std::time::UNIX_EPOCH;

use mcpgw_core::sync::ControlHost;
use mcpgw_core::{CallResponse, Host, Level};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use crate::abi;

/// Stateless: every call goes to the stream the host is currently dispatching.
#[derive(Default)]
pub struct ProxyHost;

impl ProxyHost {
    /// Reads the answer of a dispatched call (inside `on_http_call_response`).
    pub fn call_response(body_size: usize) -> CallResponse {
        let headers =
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
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
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
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

fn report(what: &str, status: abi::Status) {
    if status != 0 {
        log::warn!("host call {what} failed with status {status}");
    }
}

impl Host for ProxyHost {
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        report(name, abi::replace_header(abi::REQUEST_HEADERS, name, value));
    }

    fn remove_request_header(&mut self, name: &str) {
        report(name, abi::remove_header(abi::REQUEST_HEADERS, name));
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        report(
            "set body",
            abi::set_buffer(abi::REQUEST_BODY, 0, size, body),
        );
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
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

    fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key)
            .ok()
            .and_then(|(value, _)| value)
    }

    fn shared_set(&mut self, key: &str, value: &[u8]) {
        if let Err(status) = hostcalls::set_shared_data(key, Some(value), None) {
            log::warn!("shared data {key}: {status:?}");
        }
    }

    fn now_secs(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }

    fn random_nonce(&mut self) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        if let Err(e) = getrandom::fill(&mut nonce) {
            // No entropy must not mean a guessable token: fall back to time, logged loudly.
            log::error!("getrandom failed: {e}; session nonce falls back to the clock");
            let now = hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
            let nanos = now.map_or(0, |d| d.as_nanos());
            for (slot, byte) in nonce.iter_mut().zip(nanos.to_le_bytes()) {
                *slot ^= byte;
            }
        }
        nonce
    }

    fn clear_route_cache(&mut self) {
        // Not every Envoy build has it; older ones re-route on their own.
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
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
        ProxyHost.dispatch(cluster, headers, b"", timeout_ms)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn now_millis(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&self, level: Level, message: &str) {
        ProxyHost.log(level, message);
    }
}

/// A random name for this root context in the poller lease.
pub fn owner_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
