//! The one error type of the request path: each failure knows its JSON-RPC code, its HTTP status
//! and a message for the client. The edge only renders it.

use std::borrow::Cow;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub code: i32,
    pub http_status: u16,
    pub message: Cow<'static, str>,
}

impl GatewayError {
    fn new(code: i32, http_status: u16, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            http_status,
            message: message.into(),
        }
    }

    pub fn parse(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(PARSE_ERROR, 400, message)
    }
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(INVALID_REQUEST, 400, message)
    }
    /// Unknown method: a protocol error inside a successful HTTP exchange (session era).
    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, 200, format!("Method not found: {method}"))
    }
    pub fn invalid_params(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(INVALID_PARAMS, 200, message)
    }
    pub fn missing_session() -> Self {
        Self::new(
            INVALID_REQUEST,
            400,
            "Bad Request: Mcp-Session-Id header is required",
        )
    }
    /// Unknown, tampered, expired or ended session: 404 tells the client to re-initialize.
    pub fn session_not_found() -> Self {
        Self::new(INVALID_REQUEST, 404, "Session not found")
    }
    pub fn unsupported_protocol_version(version: &str) -> Self {
        Self::new(
            INVALID_REQUEST,
            400,
            format!("Bad Request: unsupported MCP-Protocol-Version: {version}"),
        )
    }
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            INVALID_REQUEST,
            413,
            format!("Request body exceeds the limit of {limit} bytes"),
        )
    }
    pub fn unsupported_media_type() -> Self {
        Self::new(
            INVALID_REQUEST,
            415,
            "Unsupported Media Type: Content-Type must be application/json",
        )
    }
    pub fn not_acceptable() -> Self {
        Self::new(
            INVALID_REQUEST,
            406,
            "Not Acceptable: Accept must allow application/json and text/event-stream",
        )
    }
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            INVALID_REQUEST,
            405,
            format!("Method Not Allowed: {method} on the MCP endpoint"),
        )
    }
    /// An upstream failed this request: the client's session is fine, so the failure is a
    /// JSON-RPC error for that one request inside HTTP 200.
    pub fn upstream(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(INTERNAL_ERROR, 200, message)
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.http_status, self.message)
    }
}
