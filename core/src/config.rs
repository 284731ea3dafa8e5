//! The configuration document: the one contract between the sidecar (which writes it) and the plugin
//! (which parses it). Documented field by field in `docs/configuration.md`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Protocol revisions the gateway speaks with clients, newest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

/// The whole gateway configuration, as pushed to every plugin instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Opaque version label; a change means "rebuild everything derived from this document".
    pub version: String,
    /// Hex SHA-256 of the document's content (the sidecar's `ETag`); informational for the plugin.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    #[serde(default)]
    pub gateway: GatewayInfo,
    pub session: SessionConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// Signed capability grants (`x-mcp-authorized`); none: the header is removed and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<crate::grant::GrantsConfig>,
    /// Virtual servers: named, curated subsets of the catalog (docs/governance.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<crate::grant::VirtualServerConfig>,
    /// Client authentication through Envoy's `jwt_authn` and RFC 9728 metadata (docs/governance.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<crate::identity::OAuthConfig>,
    /// Curated tools: hide, rename, describe, pin arguments (docs/governance.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_overrides: Vec<crate::curation::ToolOverride>,
    /// Check `tools/call` arguments against the advertised `inputSchema` at the gateway
    /// (-32602 naming the failing path; see [`crate::schema`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validate_arguments: bool,
    /// An authorization filter after the plugin (rbac, ext_authz, an Istio AuthorizationPolicy)
    /// decides on routed calls: calls inside a JSON-RPC batch, which the plugin sends to upstreams
    /// itself (past Envoy's filters), are refused. The sidecar sets it when
    /// `envoy.http_filters_after_plugin` is not empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authorization_after_plugin: bool,
    /// Categories `discover_tools` offers (tool discovery, docs/governance.md); none: per server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_categories: Vec<ToolCategory>,
}

/// A category of tools for `discover_tools`: a name, a hint for the model, the tools (as clients
/// see them: prefixed, or renamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCategory {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub tools: Vec<String>,
}

/// How the gateway presents itself to clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayInfo {
    pub name: String,
    pub version: String,
    /// Path of the MCP endpoint; other paths pass through the plugin untouched.
    pub mcp_path: String,
    /// Sent as `instructions` in the `initialize` result when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Advertise `tools.listChanged` (true when a sidecar serves the GET notification stream).
    pub list_changed: bool,
    /// Origins (`scheme://host[:port]`) whose browser pages may call the gateway, besides the
    /// loopback ones (`localhost`, `127.0.0.1`, `[::1]`, any port) which are always allowed;
    /// `"*"` allows any. A request with any other `Origin` is refused with 403 (DNS rebinding).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// When a client session's upstream sessions are opened (docs/architecture.md, "Upstream
    /// sessions ahead of the first call").
    #[serde(skip_serializing_if = "OpenUpstreamSessions::is_default")]
    pub open_upstream_sessions: OpenUpstreamSessions,
}

/// When the gateway opens a client session's upstream sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenUpstreamSessions {
    /// On the session's first call to each server: nothing is opened that is not used, and
    /// that first call waits for the opening (two more round trips to the upstream).
    #[default]
    OnFirstCall,
    /// As soon as the client's `initialize` is answered, for every server its session can reach
    /// (its virtual server's, or all): the answer is not delayed, a first call that arrives
    /// after the opening finds it cached, one that arrives during it waits for it; every
    /// session costs an upstream session on every server, used or not.
    OnInitialize,
}

impl OpenUpstreamSessions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for GatewayInfo {
    fn default() -> Self {
        Self {
            name: "mcpgw".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            mcp_path: DEFAULT_MCP_PATH.into(),
            instructions: None,
            list_changed: false,
            allowed_origins: Vec::new(),
            open_upstream_sessions: OpenUpstreamSessions::OnFirstCall,
        }
    }
}

impl GatewayInfo {
    /// The rules every consumer of the document applies (the plugin and the sidecar alike); the
    /// error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.mcp_path.starts_with('/') {
            return Err(format!(
                "gateway.mcp_path: must start with '/', got {:?}",
                self.mcp_path
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if origin != "*" && !crate::origin::is_origin(origin) {
                return Err(format!(
                    "gateway.allowed_origins[{i}]: must be \"*\" or scheme://host[:port], got {origin:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Keys that seal client session tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Newest first: tokens are sealed with the first key and opened with any of them, so a key
    /// can be rotated in by prepending it and rotated out later.
    pub keys: Vec<SessionKey>,
    /// Lifetime of a session token.
    #[serde(default = "default_session_ttl")]
    pub ttl_seconds: u64,
}

fn default_session_ttl() -> u64 {
    24 * 3600
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKey {
    /// Short name of the key, embedded in each token so opening needs one AEAD attempt.
    pub id: String,
    /// 32 random bytes, standard base64.
    pub secret: String,
}

/// Default of [`Limits::max_json_depth`].
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Smallest accepted [`Limits::max_json_depth`]: `tools/call` with `arguments` nests 3 deep.
pub const MIN_MAX_JSON_DEPTH: usize = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body the plugin buffers; larger ones get HTTP 413.
    pub max_body_bytes: usize,
    /// Deepest nesting of objects and arrays a request body may have, anywhere in it (the message
    /// object itself is level 1); deeper ones get -32600 (HTTP 400) and are never forwarded.
    pub max_json_depth: usize,
    /// Tools per `tools/list` page.
    pub page_size: usize,
    /// Slots in the shared upstream-session cache (4-way set associative; a full set evicts its
    /// oldest entry).
    pub upstream_session_slots: u32,
    /// Timeout of the gateway's own calls to upstreams (initialize, DELETE, retries).
    pub upstream_timeout_ms: u64,
    /// Upstream sessions one client session may open per second (all servers together); more
    /// get HTTP 429 with `Retry-After: 1`.
    pub max_session_opens_per_second: u32,
    /// MCP 2026-07-28 `ttlMs` on list and `server/discover` results: how long a client may
    /// cache them (the lists change only with the catalog's version).
    pub list_ttl_ms: u64,
    /// Tool discovery for large catalogs (docs/governance.md): with more tools than this,
    /// `tools/list` offers the meta-tools `discover_tools` and `select_tools` instead of the
    /// catalog. 0 (the default): off.
    pub meta_tools_above: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            page_size: 500,
            upstream_session_slots: 16384,
            upstream_timeout_ms: 10_000,
            max_session_opens_per_second: 20,
            list_ttl_ms: 30_000,
            meta_tools_above: 0,
        }
    }
}

/// One upstream MCP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unique name, sent upstream as `x-mcp-servername`.
    pub name: String,
    /// Prepended to this server's tool names in the aggregated catalog (may be empty for one server).
    #[serde(default)]
    pub prefix: String,
    /// `:authority` set on routed requests, matched by Envoy's routes (an HTTPRoute hostname).
    pub authority: String,
    /// Upstream MCP path.
    #[serde(default = "default_mcp_path")]
    pub path: String,
    /// Envoy cluster for the gateway's own calls to this server (session initialize, DELETE).
    pub cluster: String,
    /// `Host` of those calls; defaults to `authority`. Set it when a route rewrites the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers injected upstream, typically the credential (`authorization: Bearer ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValue>,
    /// Client request headers forwarded to this server on top of [`DEFAULT_FORWARD_HEADERS`]
    /// (lower-case names, checked by [`check_forward_header`]); every other client header is
    /// removed from a routed call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    /// The server's discovered tools, full MCP definitions with their upstream names.
    #[serde(default)]
    pub tools: Vec<Box<RawValue>>,
    /// Its prompts, resources and resource templates, as the server lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_templates: Vec<Box<RawValue>>,
    /// The `capabilities` of the server's `initialize` answer (what the aggregate advertises is
    /// derived from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Box<RawValue>>,
    /// The MCP revisions the server speaks, as discovery found them (its `server/discover`
    /// `supportedVersions`, or the version its `initialize` negotiated); empty: unknown, the
    /// session era assumed. With `2026-07-28` listed, stateless clients' calls go to it as they
    /// are (no upstream session: the cheapest path); otherwise they are bridged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_versions: Vec<String>,
}

/// The MCP endpoint's path unless the document says otherwise.
pub const DEFAULT_MCP_PATH: &str = "/mcp";

fn default_mcp_path() -> String {
    DEFAULT_MCP_PATH.into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

impl ServerConfig {
    pub fn call_host(&self) -> &str {
        self.host.as_deref().unwrap_or(&self.authority)
    }
}

/// Request headers of a client's routed `tools/call` that reach every upstream; the rest of what
/// the client sent is removed (cookies, `proxy-authorization`, its `authorization`, API keys,
/// `x-forwarded-*`, `forwarded`, `accept-encoding`: upstream answers stay uncompressed, so SSE is
/// readable, ...). The gateway sets `:authority`, `:path`, `content-length`, `accept`,
/// `mcp-protocol-version`, `mcp-session-id` (the upstream's own) and the `x-mcp-*` routing
/// headers itself; a server's `headers` (its credential) are always set, and its
/// `forward_headers` add to this list.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &[
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "content-type",
    "content-length",
    "accept",
    "user-agent",
    "mcp-protocol-version",
    "mcp-session-id",
    "last-event-id",
    "traceparent",
    "tracestate",
    "baggage",
    "x-request-id",
    "x-mcp-servername",
    "x-mcp-toolname",
    "x-mcp-method",
];

/// Client request headers the plugin leaves in place for Envoy although upstreams do not need
/// them: Envoy's route matching finds no route for a request without `x-forwarded-proto` (it
/// reads the scheme from it; checked with Envoy 1.40). The routes to servers remove it once the
/// route is chosen (`request_headers_to_remove`), unless a server's `forward_headers` name it;
/// the gateway's own calls (initialize, DELETE, replays) never carry it.
pub const ROUTING_ONLY_HEADERS: &[&str] = &["x-forwarded-proto"];

/// Client credentials: never forwarded, whatever a configuration says.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// Connection-level headers the proxies manage themselves (forwarding a client's
/// `transfer-encoding` next to the gateway's `content-length` would make the framing ambiguous).
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Checks one `forward_headers` entry: a lower-case header token that carries no client
/// credential and does not steer the proxy. The error starts with `field`. The sidecar validates
/// its servers file with this same function.
pub fn check_forward_header(field: &str, name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_digit() || b.is_ascii_lowercase() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if !token {
        return Err(format!(
            "{field}: must be a lower-case header name (token characters), got {name:?}"
        ));
    }
    if CREDENTIAL_HEADERS.contains(&name) {
        return Err(format!(
            "{field}: {name:?} carries the client's credentials and is never forwarded \
             (a server's own credential goes in its `headers`)"
        ));
    }
    if name == crate::grant::GRANT_HEADER || name.starts_with("x-mcp-") {
        return Err(format!(
            "{field}: {name:?} is set or consumed by the gateway and never forwarded from a client"
        ));
    }
    if HOP_BY_HOP_HEADERS.contains(&name) || name.starts_with("x-envoy-") {
        return Err(format!(
            "{field}: {name:?} is managed by the proxy and cannot be forwarded"
        ));
    }
    Ok(())
}

/// The plugin's own configuration, the `configuration` string Envoy hands to `on_configure`.
/// Either an inline document (static setups, tests) or a sidecar to poll, or both (the inline
/// document serves until the sidecar answers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<GatewayConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSource>,
    /// How Envoy runs the filter (see [`Install`]).
    #[serde(default, skip_serializing_if = "Install::is_envoy_filter")]
    pub install: Install,
    /// Metrics, access-log fields and the plugin-time histogram (docs/observability.md); `false`
    /// turns them all off (trace context still reaches upstream session openings).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub telemetry: bool,
}

/// How the filter is installed, which decides what its headers phase may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Install {
    /// `allow_on_headers_stop_iteration: true` (Envoy bootstrap, Istio EnvoyFilter + ECDS): the
    /// headers may wait for the body; both MCP generations are served.
    #[default]
    EnvoyFilter,
    /// Without it (a stock Istio `WasmPlugin`): the headers phase never waits for the body, so
    /// MCP 2026-07-28 requests are routed on their headers and 2025 POSTs get a clear error.
    WasmPlugin,
}

impl Install {
    pub fn is_envoy_filter(&self) -> bool {
        *self == Install::EnvoyFilter
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            document: None,
            sidecar: None,
            install: Install::default(),
            telemetry: true,
        }
    }
}

fn default_true() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(value: &bool) -> bool {
    *value
}

/// Where the plugin fetches configuration documents from: `GET {path}?wait_ms=N` with
/// `If-None-Match`, answered 200 (new document, `ETag`) or 304 (unchanged after waiting up to N ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSource {
    /// Envoy cluster of the sidecar.
    pub cluster: String,
    #[serde(default = "default_sidecar_authority")]
    pub authority: String,
    #[serde(default = "default_sidecar_path")]
    pub path: String,
    /// How long the sidecar may hold a poll open waiting for a change (long poll).
    #[serde(default = "default_long_poll_ms")]
    pub long_poll_ms: u64,
    /// Pause between polls after a failed one.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// The sidecar's `plugin_token`: sent as `authorization: Bearer <token>` on every poll, and
    /// set the same way on the `GET <mcp_path>` streams the plugin lets through to the sidecar
    /// (after checking the client's session), replacing whatever `authorization` the client sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl SidecarSource {
    /// Checks what serde cannot: the token must fit in a header value.
    pub fn validate(&self) -> Result<(), String> {
        match &self.token {
            Some(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) => {
                Err("sidecar.token: must be non-empty printable ASCII without spaces".into())
            }
            _ => Ok(()),
        }
    }

    /// The `authorization` value the plugin presents to the sidecar, when it has a token.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|token| format!("Bearer {token}"))
    }

    /// What a stream needs to talk to the sidecar (when the plugin has its token): vouch for a
    /// client's notification stream, register upstream sessions (`POST /v1/streams`).
    pub fn link(&self) -> Option<SidecarLink> {
        Some(SidecarLink {
            authorization: self.authorization()?,
            cluster: self.cluster.clone(),
            authority: self.authority.clone(),
        })
    }
}

/// The sidecar as a request stream sees it (see [`SidecarSource::link`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarLink {
    /// `Bearer <plugin token>`.
    pub authorization: String,
    pub cluster: String,
    pub authority: String,
}

/// Where the plugin registers the upstream sessions it opens, so the sidecar can follow their
/// GET streams for the client's notification stream.
pub const SIDECAR_STREAMS_PATH: &str = "/v1/streams";

/// Where the plugin asks the sidecar to send a `list_changed` notification on one client
/// session's notification stream (after a `select_tools` changed that session's tools/list).
pub const SIDECAR_NOTIFY_PATH: &str = "/v1/streams/notify";

fn default_sidecar_authority() -> String {
    "mcpgw-sidecar".into()
}
fn default_sidecar_path() -> String {
    "/v1/config".into()
}
fn default_long_poll_ms() -> u64 {
    20_000
}
fn default_retry_ms() -> u64 {
    1_000
}
