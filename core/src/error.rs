//! The one error type of the request path: each failure knows its JSON-RPC code, its HTTP status
//! and a message for the client. The edge only renders it.

use std::borrow::Cow;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
/// MCP: the resource a request names does not exist.
pub const RESOURCE_NOT_FOUND: i32 = -32002;
/// The gateway's authorization refused the request (a policy filter, a capability grant).
pub const ACCESS_DENIED: i32 = -32001;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub code: i32,
    pub http_status: u16,
    pub message: Cow<'static, str>,
    /// Which check refused the request, for logs and Envoy's `%RESPONSE_CODE_DETAILS%`
    /// (`mcpgw_<check>`): one word, `[a-z_]`.
    pub check: &'static str,
    /// The JSON-RPC error's `data`, raw JSON (2026-07-28 errors carry some).
    pub data: Option<String>,
}

impl GatewayError {
    fn new(
        check: &'static str,
        code: i32,
        http_status: u16,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            http_status,
            message: message.into(),
            check,
            data: None,
        }
    }

    pub fn parse(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new("parse_error", PARSE_ERROR, 400, message)
    }
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_request", INVALID_REQUEST, 400, message)
    }
    /// Unknown method: a protocol error inside a successful HTTP exchange (session era).
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            "method_not_found",
            METHOD_NOT_FOUND,
            200,
            format!("Method not found: {method}"),
        )
    }
    pub fn invalid_params(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new("invalid_params", INVALID_PARAMS, 200, message)
    }
    pub fn missing_session() -> Self {
        Self::new(
            "missing_session",
            INVALID_REQUEST,
            400,
            "Bad Request: Mcp-Session-Id header is required",
        )
    }
    /// Unknown, tampered, expired or ended session: 404 tells the client to re-initialize.
    pub fn session_not_found() -> Self {
        Self::new(
            "session_not_found",
            INVALID_REQUEST,
            404,
            "Session not found",
        )
    }
    pub fn unsupported_protocol_version(version: &str) -> Self {
        Self::new(
            "unsupported_protocol_version",
            INVALID_REQUEST,
            400,
            format!("Bad Request: unsupported MCP-Protocol-Version: {version}"),
        )
    }
    /// MCP 2026-07-28: a routing header missing, or saying something else than the body.
    pub fn header_mismatch(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "header_mismatch",
            crate::stateless::HEADER_MISMATCH,
            400,
            message,
        )
    }
    /// MCP 2025 clients on a gateway installed without `allow_on_headers_stop_iteration`.
    pub fn headers_only() -> Self {
        Self::new(
            "headers_only",
            INVALID_REQUEST,
            400,
            "Bad Request: this gateway routes MCP 2026-07-28 requests only (MCP-Protocol-Version: \
             2026-07-28 with Mcp-Method); it is installed without allow_on_headers_stop_iteration \
             and cannot read a 2025 request's body before routing it",
        )
    }
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = status;
        self
    }
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            "body_too_large",
            INVALID_REQUEST,
            413,
            format!("Request body exceeds the limit of {limit} bytes"),
        )
    }
    pub fn unsupported_media_type() -> Self {
        Self::new(
            "unsupported_media_type",
            INVALID_REQUEST,
            415,
            "Unsupported Media Type: Content-Type must be application/json",
        )
    }
    /// A body the gateway and an upstream could decode differently: another charset, or a
    /// content coding the gateway does not undo.
    pub fn unsupported_encoding(what: &str) -> Self {
        Self::new(
            "unsupported_encoding",
            INVALID_REQUEST,
            415,
            format!("Unsupported Media Type: {what}"),
        )
    }
    pub fn repeated_header(name: &str) -> Self {
        Self::new(
            "repeated_header",
            INVALID_REQUEST,
            400,
            format!("Bad Request: header {name} must appear once"),
        )
    }
    pub fn not_acceptable() -> Self {
        Self::new(
            "not_acceptable",
            INVALID_REQUEST,
            406,
            "Not Acceptable: Accept must allow application/json and text/event-stream",
        )
    }
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            "method_not_allowed",
            INVALID_REQUEST,
            405,
            format!("Method Not Allowed: {method} on the MCP endpoint"),
        )
    }
    /// An authorization filter after the plugin answered 401 or 403 (`http_status`).
    pub fn denied(http_status: u16, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new("access_denied", ACCESS_DENIED, http_status, message)
    }
    /// `x-mcp-authorized` is present and well-formed but not acceptable: a bad signature,
    /// expired, not yet valid (`check` says which).
    pub fn grant_rejected(check: &'static str, message: &'static str) -> Self {
        Self::new(check, ACCESS_DENIED, 401, message)
    }
    /// `x-mcp-authorized` cannot be read: not a JWS, not ES256, a malformed claim.
    pub fn grant_malformed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new("grant_malformed", INVALID_REQUEST, 400, message)
    }
    /// The call names a tool, prompt or resource outside the request's grant.
    pub fn grant_denied(noun: &str, name: &str, server: &str) -> Self {
        Self::new(
            "grant_denied",
            ACCESS_DENIED,
            403,
            format!("Access denied: {noun} {name} on server {server} is not in x-mcp-authorized"),
        )
    }
    /// `oauth` is configured and Envoy's `jwt_authn` verified no token for this request.
    pub fn unauthenticated() -> Self {
        Self::new(
            "unauthenticated",
            ACCESS_DENIED,
            401,
            "Unauthorized: a valid bearer token is required (see WWW-Authenticate)",
        )
    }
    /// No virtual server of that name: an error, never the full catalog.
    pub fn unknown_virtual_server(name: &str) -> Self {
        Self::new(
            "unknown_virtual_server",
            INVALID_REQUEST,
            400,
            format!("Bad Request: unknown virtual server {name:?}"),
        )
    }
    /// The path and `x-mcp-virtualserver` name different virtual servers.
    pub fn virtual_server_conflict(path: &str, header: &str) -> Self {
        Self::new(
            "virtual_server_conflict",
            INVALID_REQUEST,
            400,
            format!(
                "Bad Request: the path selects virtual server {path:?} but x-mcp-virtualserver says {header:?}"
            ),
        )
    }
    /// MCP's "resource not found" (-32002), inside HTTP 200.
    pub fn resource_not_found(uri: &str) -> Self {
        Self::new(
            "resource_not_found",
            RESOURCE_NOT_FOUND,
            200,
            format!("Resource not found: {uri}"),
        )
    }
    /// A browser page of a foreign origin (DNS rebinding, cross-site requests).
    pub fn origin_not_allowed(origin: &str) -> Self {
        Self::new(
            "origin",
            INVALID_REQUEST,
            403,
            format!("Forbidden: Origin {origin} is not allowed"),
        )
    }
    /// This VM has no configuration yet (it has only just started).
    pub fn not_configured() -> Self {
        Self::new(
            "not_configured",
            INTERNAL_ERROR,
            503,
            "gateway has no configuration yet; retry shortly",
        )
    }
    /// A DELETE whose end could not be recorded (shared data kept changing under it, or the
    /// proxy refused the write): the session stays valid and the client may retry.
    pub fn session_not_ended() -> Self {
        Self::new(
            "session_not_ended",
            INTERNAL_ERROR,
            503,
            "the session could not be ended; retry the DELETE",
        )
    }
    /// A client session opened upstream sessions faster than `limits.max_session_opens_per_second`:
    /// HTTP 429 with `Retry-After`, since the client's pace is at fault and not an upstream; the
    /// session stays usable.
    pub fn too_many_openings(limit: u32) -> Self {
        Self::new(
            "session_open_rate",
            INTERNAL_ERROR,
            429,
            format!(
                "Too many upstream session openings for this session (at most {limit} a second); retry later"
            ),
        )
    }
    /// The proxy has no randomness: no session token can be sealed (its nonce would be
    /// guessable), so `initialize` fails instead.
    pub fn no_randomness() -> Self {
        Self::new(
            "no_randomness",
            INTERNAL_ERROR,
            503,
            "no randomness: the gateway cannot issue a session token; retry shortly",
        )
    }
    /// An upstream failed this request: the client's session is fine, so the failure is a
    /// JSON-RPC error for that one request inside HTTP 200.
    pub fn upstream(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new("upstream_failed", INTERNAL_ERROR, 200, message)
    }
}

impl GatewayError {
    /// The same answer, attributed to a more specific check.
    pub fn because(mut self, check: &'static str) -> Self {
        self.check = check;
        self
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.http_status, self.message)
    }
}
