//! The sidecar's own configuration file (YAML): parsing, validation, and resolution of
//! everything that lives outside the file (credentials, CA files, the session key, the plugin
//! token).
//!
//! `load` either returns a complete [`Settings`] or one error message naming the field; the caller
//! keeps the last good settings when it fails. Relative paths are relative to the config file.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use mcpgw_core::config::{
    check_forward_header, GatewayInfo, HeaderValue, Install, Limits, SessionKey,
};
use serde::Deserialize;

/// Name of the Envoy cluster that points at the sidecar (static, in the bootstrap).
pub const SIDECAR_CLUSTER: &str = "mcpgw_sidecar";
/// Name of the Envoy cluster that carries clients' notification streams (`GET <mcp_path>`) to the
/// sidecar: apart from `SIDECAR_CLUSTER`, so long-lived streams never use up the circuit-breaker
/// budget of the plugins' configuration polls and stream registrations.
pub const SIDECAR_STREAMS_CLUSTER: &str = "mcpgw_sidecar_streams";
/// Prefix of the generated per-server Envoy clusters.
pub const CLUSTER_PREFIX: &str = "mcpgw_srv_";

// ---------------------------------------------------------------------------------------------
// The file, as written by people.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Where the sidecar serves `/v1/config`, `/v1/status` and the MCP GET stream.
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    /// The bearer secret the plugin presents (`/v1/config`, the vouched GET stream).
    #[serde(default)]
    plugin_token: PluginTokenSection,
    #[serde(default)]
    gateway: GatewaySection,
    #[serde(default)]
    session: SessionSection,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    discovery: DiscoverySection,
    #[serde(default)]
    notifications: NotificationsSection,
    #[serde(default)]
    envoy: EnvoySection,
    #[serde(default)]
    servers: Vec<ServerSection>,
    /// Signed capability grants (`x-mcp-authorized`, docs/governance.md).
    #[serde(default)]
    grants: Option<GrantsSection>,
    /// Virtual servers: named, curated subsets of the catalog (docs/governance.md).
    #[serde(default)]
    virtual_servers: Vec<mcpgw_core::grant::VirtualServerConfig>,
    /// Client authentication through Envoy's `jwt_authn` (put it in
    /// `envoy.http_filters_before_plugin`) and RFC 9728 metadata.
    #[serde(default)]
    oauth: Option<mcpgw_core::identity::OAuthConfig>,
    /// Curated tools: hide, rename, describe, pin arguments (docs/governance.md).
    #[serde(default)]
    tool_overrides: Vec<ToolOverrideSection>,
    /// Categories `discover_tools` offers (tool discovery, docs/governance.md).
    #[serde(default)]
    tool_categories: Vec<mcpgw_core::config::ToolCategory>,
    /// Check tools/call arguments against the advertised inputSchema at the gateway.
    #[serde(default)]
    validate_arguments: bool,
    /// Tool hygiene: an upstream tool with an invalid name or schema is left out (`filter`) or
    /// its whole server refused (`reject_server`).
    #[serde(default)]
    invalid_tools: InvalidTools,
}

/// What the catalog does with an upstream tool whose name or schema is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidTools {
    #[default]
    Filter,
    RejectServer,
}

/// `mcpgw_core::curation::ToolOverride` as written in YAML (pinned values as any YAML value).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolOverrideSection {
    server: String,
    tool: String,
    #[serde(default)]
    hidden: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    pin: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsSection {
    /// The signer's P-256 public key, PEM, inline ...
    #[serde(default)]
    public_key: Option<String>,
    /// ... or in a file (relative to this file).
    #[serde(default)]
    public_key_file: Option<PathBuf>,
    /// Without the header: `all` or `nothing` (required).
    missing: mcpgw_core::grant::Missing,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 18000))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GatewaySection {
    name: String,
    version: String,
    mcp_path: String,
    instructions: Option<String>,
    allowed_origins: Vec<String>,
    open_upstream_sessions: mcpgw_core::config::OpenUpstreamSessions,
}

impl Default for GatewaySection {
    fn default() -> Self {
        let info = GatewayInfo::default();
        Self {
            name: info.name,
            version: info.version,
            mcp_path: info.mcp_path,
            instructions: None,
            allowed_origins: Vec::new(),
            open_upstream_sessions: info.open_upstream_sessions,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginTokenSection {
    env: Option<String>,
    file: Option<PathBuf>,
}

impl Default for PluginTokenSection {
    fn default() -> Self {
        Self {
            env: None,
            file: Some(PathBuf::from("plugin.token")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SessionSection {
    /// File holding 32 random bytes, standard base64; generated (mode 0600) when missing.
    key_file: PathBuf,
    key_id: String,
    ttl_seconds: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("session.key"),
            key_id: "k1".into(),
            ttl_seconds: 24 * 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DiscoverySection {
    refresh_interval_ms: u64,
    health_interval_ms: u64,
    request_timeout_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    startup_grace_ms: u64,
    config_poll_ms: u64,
    failure_threshold: u32,
    failure_window_ms: u64,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            refresh_interval_ms: 300_000,
            health_interval_ms: 5_000,
            request_timeout_ms: 10_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            startup_grace_ms: 5_000,
            config_poll_ms: 200,
            failure_threshold: 3,
            failure_window_ms: 15_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NotificationsSection {
    keepalive_ms: u64,
    /// Pause between publishing a changed catalog and telling the clients, so every plugin VM
    /// has adopted it (they pick a new document up on a 200 ms tick).
    delay_ms: u64,
    /// Clients' notification streams (`GET <mcp_path>`) open at once; one more is answered 503.
    max_streams: usize,
}

impl Default for NotificationsSection {
    fn default() -> Self {
        Self {
            keepalive_ms: 15_000,
            delay_ms: 500,
            max_streams: 1_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EnvoySection {
    /// Directory for `cds.json` and `rds.json`; no xDS files are written when unset.
    xds_dir: Option<PathBuf>,
    /// The rest only shapes the bootstrap written by `mcpgw-sidecar bootstrap`.
    listen: SocketAddr,
    admin: SocketAddr,
    wasm: PathBuf,
    /// CA bundle for `https` upstreams without their own `ca_file`.
    ca_bundle: PathBuf,
    authority_suffix: String,
    long_poll_ms: u64,
    retry_ms: u64,
    connect_timeout_ms: u64,
    access_log: AccessLog,
    /// How the bootstrap installs the filter: `envoy_filter` (with
    /// `allow_on_headers_stop_iteration`, both MCP generations) or `wasm_plugin` (without it, as
    /// a stock Istio WasmPlugin: MCP 2026-07-28 routed on headers only). docs/mcp2026.md.
    install: Install,
    /// Envoy HTTP filters placed after the plugin, before the router, as written (each with
    /// `name` and `typed_config`): an authorization filter (`rbac`, `ext_authz`) deciding on the
    /// plugin's policy headers (docs/governance.md). Bootstrap only.
    http_filters_after_plugin: Vec<serde_json::Value>,
    /// Envoy HTTP filters placed before the plugin: `jwt_authn` verifying clients' tokens.
    http_filters_before_plugin: Vec<serde_json::Value>,
}

/// Which requests Envoy's access log (stdout) records in the generated bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    /// Every request.
    #[default]
    All,
    /// Answers with status >= 400 and local replies of any status.
    Errors,
    Off,
}

impl Default for EnvoySection {
    fn default() -> Self {
        Self {
            xds_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 10000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            wasm: PathBuf::from("target/mcpgw.wasm"),
            ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            authority_suffix: "mcp.local".into(),
            long_poll_ms: 20_000,
            retry_ms: 1_000,
            connect_timeout_ms: 5_000,
            access_log: AccessLog::All,
            install: Install::EnvoyFilter,
            http_filters_after_plugin: Vec::new(),
            http_filters_before_plugin: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    name: String,
    url: String,
    /// Defaults to `<name>_`.
    prefix: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    credential: Option<CredentialSection>,
    /// Extra, non-secret headers sent to the server (discovery and routed calls).
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// Client request headers forwarded to the server besides the gateway's default list.
    #[serde(default)]
    forward_headers: Vec<String>,
    /// CA certificate(s) (PEM) trusted for this `https` server instead of the system bundle.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// A routed call whose upstream stays silent this long (no byte of the answer) fails with a
    /// JSON-RPC error; a streaming answer that keeps sending is never cut.
    #[serde(default = "default_idle_timeout_ms")]
    idle_timeout_ms: u64,
}

fn default_idle_timeout_ms() -> u64 {
    300_000
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialSection {
    env: Option<String>,
    file: Option<PathBuf>,
    #[serde(default = "default_credential_header")]
    header: String,
    /// Written before the secret with one space; empty sends the secret alone.
    #[serde(default = "default_scheme")]
    scheme: String,
}

fn default_credential_header() -> String {
    "authorization".into()
}
fn default_scheme() -> String {
    "Bearer".into()
}

// ---------------------------------------------------------------------------------------------
// The resolved settings the rest of the sidecar works with.

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub plugin_token_source: TokenSource,
    /// The plugin token: resolved from the environment by [`parse`], from the file by [`load`];
    /// `None` while the file does not exist and loading was read-only.
    pub plugin_token: Option<PluginToken>,
    pub gateway: SerdeEq<GatewayInfo>,
    pub session_key_file: PathBuf,
    pub session_keys: SerdeEq<Vec<SessionKey>>,
    pub session_ttl_seconds: u64,
    pub limits: SerdeEq<Limits>,
    pub discovery: Timing,
    pub keepalive: Duration,
    pub notify_delay: Duration,
    /// Clients' notification streams open at once (`notifications.max_streams`).
    pub max_streams: usize,
    pub config_poll: Duration,
    pub envoy: EnvoySettings,
    pub servers: Vec<ServerSpec>,
    /// `grants`, as the document carries them (key checked by the core when the document is).
    pub grants: SerdeEq<Option<mcpgw_core::grant::GrantsConfig>>,
    pub virtual_servers: SerdeEq<Vec<mcpgw_core::grant::VirtualServerConfig>>,
    pub oauth: SerdeEq<Option<mcpgw_core::identity::OAuthConfig>>,
    pub tool_overrides: SerdeEq<Vec<mcpgw_core::curation::ToolOverride>>,
    pub tool_categories: SerdeEq<Vec<mcpgw_core::config::ToolCategory>>,
    pub validate_arguments: bool,
    pub invalid_tools: InvalidTools,
}

/// Where the plugin token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the token; generated (32 random bytes, base64url, mode 0600) when missing.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// The secret shared by the sidecar and the plugin. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PluginToken(String);

/// Shortest token accepted from a file or a variable (a generated one has 43 characters).
pub const MIN_TOKEN_LEN: usize = 32;

impl PluginToken {
    /// Trims `text` and checks it: at least [`MIN_TOKEN_LEN`] characters of printable ASCII
    /// without spaces (it travels in an HTTP header and in JSON).
    pub fn parse(text: &str, origin: &dyn std::fmt::Display) -> Result<Self, String> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "plugin_token: {origin} must hold at least {MIN_TOKEN_LEN} characters of \
                 printable ASCII without spaces"
            ));
        }
        Ok(Self(token.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PluginToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginToken(<redacted>)")
    }
}

/// A core type (without `PartialEq`) compared through its JSON form.
#[derive(Debug, Clone, Default)]
pub struct SerdeEq<T>(pub T);

impl<T: serde::Serialize> PartialEq for SerdeEq<T> {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(&self.0).ok() == serde_json::to_value(&other.0).ok()
    }
}

/// Checks after a failure come often enough to reach the threshold within the window, but never
/// more often than every 50 ms nor less often than the health interval.
fn failure_retry(health_interval_ms: u64, window_ms: u64, threshold: u32) -> Duration {
    let spread = window_ms / u64::from(threshold.max(1));
    Duration::from_millis(spread.clamp(50, health_interval_ms.max(50)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub refresh_interval: Duration,
    pub health_interval: Duration,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub startup_grace: Duration,
    /// A server leaves the catalog after this many consecutive failed checks ...
    pub failure_threshold: u32,
    /// ... spanning at least this long.
    pub failure_window: Duration,
    /// Pause before the next check after a failed one.
    pub failure_retry: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvoySettings {
    pub xds_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub wasm: PathBuf,
    pub ca_bundle: PathBuf,
    pub long_poll_ms: u64,
    pub retry_ms: u64,
    pub connect_timeout: Duration,
    pub access_log: AccessLog,
    pub install: Install,
    /// Extra HTTP filters after the plugin (checked: each names itself and has a `typed_config`).
    pub http_filters_after_plugin: Vec<serde_json::Value>,
    /// Extra HTTP filters before the plugin (same checks).
    pub http_filters_before_plugin: Vec<serde_json::Value>,
}

/// One configured upstream server, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    pub prefix: String,
    pub enabled: bool,
    pub url: String,
    pub tls: bool,
    /// Host name or IP (no brackets, no port): what Envoy resolves or connects to, and the SNI.
    pub hostname: String,
    pub port: u16,
    /// `host[:port]` as written in the URL, sent as `Host`.
    pub host_header: String,
    pub path: String,
    pub ca_file: Option<PathBuf>,
    /// `:authority` the plugin sets on routed requests; Envoy's virtual host for this server.
    pub authority: String,
    pub cluster: String,
    /// Headers sent upstream (credential included), or why they could not be resolved (a
    /// missing variable or file): then the server stays out of the catalog.
    pub headers: Result<Vec<HeaderValue>, String>,
    /// Client request headers forwarded besides the default list (lower-case, validated by the
    /// core's own check).
    pub forward_headers: Vec<String>,
    /// Envoy's `idle_timeout` on this server's route.
    pub idle_timeout: Duration,
}

impl ServerSpec {
    pub fn hostname_is_ip(&self) -> bool {
        self.hostname.parse::<IpAddr>().is_ok()
    }
}

/// What loading does about a missing session key file or plugin token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    /// Create them (the sidecar that serves documents needs both).
    Create,
    /// Leave the disk alone (validating; `bootstrap` then creates the token file alone, with
    /// [`ensure_plugin_token`]).
    ReadOnly,
}

/// Reads, parses and validates the file at `path`. The error is one line naming the problem.
pub fn load(path: &Path, key_file: KeyFile) -> Result<Settings, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    load_text(path, &text, &|name| std::env::var(name).ok(), key_file)
}

/// [`load`] of `text` standing for the file at `path` (Kubernetes mode adds the servers it
/// watches to the file's text), variables resolved through `env`.
pub fn load_text(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    key_file: KeyFile,
) -> Result<Settings, String> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut settings = parse(text, &base, env).map_err(|e| format!("{}: {e}", path.display()))?;
    settings.source = path.to_path_buf();
    let key = match key_file {
        KeyFile::Create => Some(load_or_create_key(&settings.session_key_file)?),
        KeyFile::ReadOnly if settings.session_key_file.exists() => {
            Some(load_or_create_key(&settings.session_key_file)?)
        }
        KeyFile::ReadOnly => None,
    };
    if let (Some(key), Some(first)) = (key, settings.session_keys.0.first_mut()) {
        first.secret = key;
    }
    if let TokenSource::File(token_file) = &settings.plugin_token_source {
        settings.plugin_token = match key_file {
            KeyFile::Create => Some(load_or_create_token(token_file)?),
            KeyFile::ReadOnly if token_file.exists() => Some(load_or_create_token(token_file)?),
            KeyFile::ReadOnly => None,
        };
    }
    Ok(settings)
}

/// The plugin token, creating its file when it is missing (what `bootstrap` needs to write the
/// plugin configuration).
pub fn ensure_plugin_token(settings: &mut Settings) -> Result<PluginToken, String> {
    if let Some(token) = &settings.plugin_token {
        return Ok(token.clone());
    }
    match &settings.plugin_token_source {
        TokenSource::File(path) => {
            let token = load_or_create_token(path)?;
            settings.plugin_token = Some(token.clone());
            Ok(token)
        }
        // `parse` resolved (or rejected) the variable already.
        TokenSource::Env(var) => Err(format!(
            "plugin_token: environment variable {var} is not set"
        )),
    }
}

/// Parses and validates the YAML text; paths resolve against `base`, variables through `env`.
/// The session key's secret is left empty (filled by [`load`] from the key file).
pub fn parse(
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    let file: FileConfig = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    let FileConfig {
        listen,
        plugin_token,
        gateway,
        session,
        limits,
        discovery,
        notifications,
        envoy,
        servers,
        grants,
        virtual_servers,
        oauth,
        tool_overrides,
        tool_categories,
        validate_arguments,
        invalid_tools,
    } = file;
    let grants = match grants {
        None => None,
        Some(g) => {
            let public_key = match (g.public_key, g.public_key_file) {
                (Some(pem), None) => pem,
                (None, Some(file)) => {
                    let path = resolve(base, &file);
                    fs::read_to_string(&path)
                        .map_err(|e| format!("grants.public_key_file: {}: {e}", path.display()))?
                }
                _ => {
                    return Err(
                        "grants: set exactly one of `public_key` and `public_key_file`".into(),
                    )
                }
            };
            Some(mcpgw_core::grant::GrantsConfig {
                public_key,
                missing: g.missing,
            })
        }
    };

    let (plugin_token_source, plugin_token) = match (plugin_token.env, plugin_token.file) {
        (Some(var), None) => {
            let source = TokenSource::Env(var.clone());
            let value = env(&var)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("plugin_token: environment variable {var} is not set"))?;
            let token = PluginToken::parse(&value, &source)?;
            (source, Some(token))
        }
        (None, Some(file)) => (TokenSource::File(resolve(base, &file)), None),
        _ => return Err("plugin_token: set exactly one of `env` and `file`".into()),
    };
    if !gateway.mcp_path.starts_with('/') || gateway.mcp_path.starts_with("/v1/") {
        return Err(format!(
            "gateway.mcp_path: must start with '/' and not with '/v1/', got {:?}",
            gateway.mcp_path
        ));
    }
    // The session key id, the TTL and the limits are checked once, by the plugin's own rules:
    // `check_document` below runs them on the document these settings make.
    let positive = |name: &str, v: u64| {
        if v == 0 {
            Err(format!("{name}: must be positive"))
        } else {
            Ok(Duration::from_millis(v))
        }
    };
    let discovery_timing = Timing {
        refresh_interval: positive(
            "discovery.refresh_interval_ms",
            discovery.refresh_interval_ms,
        )?,
        health_interval: positive("discovery.health_interval_ms", discovery.health_interval_ms)?,
        request_timeout: positive("discovery.request_timeout_ms", discovery.request_timeout_ms)?,
        backoff_initial: positive("discovery.backoff_initial_ms", discovery.backoff_initial_ms)?,
        backoff_max: positive("discovery.backoff_max_ms", discovery.backoff_max_ms)?,
        startup_grace: Duration::from_millis(discovery.startup_grace_ms),
        failure_threshold: discovery.failure_threshold,
        failure_window: Duration::from_millis(discovery.failure_window_ms),
        failure_retry: failure_retry(
            discovery.health_interval_ms,
            discovery.failure_window_ms,
            discovery.failure_threshold,
        ),
    };
    if discovery.failure_threshold == 0 {
        return Err("discovery.failure_threshold: must be positive".into());
    }
    if discovery_timing.backoff_max < discovery_timing.backoff_initial {
        return Err("discovery.backoff_max_ms: must be >= backoff_initial_ms".into());
    }
    let config_poll = positive("discovery.config_poll_ms", discovery.config_poll_ms)?;
    let keepalive = positive("notifications.keepalive_ms", notifications.keepalive_ms)?;
    if notifications.max_streams == 0 {
        return Err("notifications.max_streams: must be positive".into());
    }
    let suffix = envoy
        .authority_suffix
        .trim_matches('.')
        .to_ascii_lowercase();
    if suffix.is_empty()
        || !suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!(
            "envoy.authority_suffix: must be a DNS suffix, got {:?}",
            envoy.authority_suffix
        ));
    }

    let mut specs = Vec::with_capacity(servers.len());
    let mut names = HashSet::new();
    for (i, server) in servers.into_iter().enumerate() {
        let spec = server_spec(i, server, base, &suffix, env)?;
        if !names.insert(spec.name.to_ascii_lowercase()) {
            return Err(format!(
                "servers[{i}].name: duplicate server name {:?} (names are compared case-insensitively)",
                spec.name
            ));
        }
        specs.push(spec);
    }

    let gateway = GatewayInfo {
        name: gateway.name,
        version: gateway.version,
        mcp_path: gateway.mcp_path,
        instructions: gateway.instructions,
        // The sidecar serves the GET notification stream.
        list_changed: true,
        allowed_origins: gateway.allowed_origins,
        open_upstream_sessions: gateway.open_upstream_sessions,
    };
    gateway.validate()?;
    let settings = Settings {
        source: PathBuf::new(),
        listen,
        plugin_token_source,
        plugin_token,
        gateway: SerdeEq(gateway),
        session_key_file: resolve(base, &session.key_file),
        session_keys: SerdeEq(vec![SessionKey {
            id: session.key_id,
            secret: String::new(),
        }]),
        session_ttl_seconds: session.ttl_seconds,
        limits: SerdeEq(limits),
        discovery: discovery_timing,
        keepalive,
        notify_delay: Duration::from_millis(notifications.delay_ms),
        max_streams: notifications.max_streams,
        config_poll,
        envoy: EnvoySettings {
            xds_dir: envoy.xds_dir.map(|p| resolve(base, &p)),
            listen: envoy.listen,
            admin: envoy.admin,
            wasm: resolve(base, &envoy.wasm),
            ca_bundle: resolve(base, &envoy.ca_bundle),
            long_poll_ms: envoy.long_poll_ms,
            retry_ms: envoy.retry_ms,
            connect_timeout: positive("envoy.connect_timeout_ms", envoy.connect_timeout_ms)?,
            access_log: envoy.access_log,
            install: envoy.install,
            http_filters_after_plugin: check_filters(
                "envoy.http_filters_after_plugin",
                envoy.http_filters_after_plugin,
            )?,
            http_filters_before_plugin: check_filters(
                "envoy.http_filters_before_plugin",
                envoy.http_filters_before_plugin,
            )?,
        },
        servers: specs,
        grants: SerdeEq(grants),
        virtual_servers: SerdeEq(virtual_servers),
        tool_categories: SerdeEq(tool_categories),
        oauth: SerdeEq(oauth),
        validate_arguments,
        invalid_tools,
        tool_overrides: SerdeEq(
            tool_overrides
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    let pin = o
                        .pin
                        .into_iter()
                        .map(|(k, v)| {
                            serde_json::value::to_raw_value(&v)
                                .map(|v| (k, v))
                                .map_err(|e| format!("tool_overrides[{i}].pin: {e}"))
                        })
                        .collect::<Result<_, String>>()?;
                    Ok(mcpgw_core::curation::ToolOverride {
                        server: o.server,
                        tool: o.tool,
                        hidden: o.hidden,
                        name: o.name,
                        description: o.description,
                        pin,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    };
    crate::catalog::check_document(&settings)?;
    Ok(settings)
}

/// `envoy.http_filters_after_plugin`: each entry an Envoy HTTP filter with a `name` and a
/// `typed_config` carrying its `@type` (Envoy itself validates the rest when it loads them).
fn check_filters(
    name: &str,
    filters: Vec<serde_json::Value>,
) -> Result<Vec<serde_json::Value>, String> {
    for (i, filter) in filters.iter().enumerate() {
        let field = format!("{name}[{i}]");
        let name = filter.get("name").and_then(serde_json::Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(format!("{field}.name: a filter name is required"));
        }
        if name.is_some_and(|n| n == "envoy.filters.http.router") {
            return Err(format!(
                "{field}.name: the router is always last; do not add it"
            ));
        }
        if filter
            .get("typed_config")
            .and_then(|c| c.get("@type"))
            .and_then(serde_json::Value::as_str)
            .is_none()
        {
            return Err(format!(
                "{field}.typed_config: an object with an \"@type\" is required"
            ));
        }
    }
    Ok(filters)
}

fn server_spec(
    i: usize,
    server: ServerSection,
    base: &Path,
    suffix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServerSpec, String> {
    let field = |name: &str| format!("servers[{i}].{name}");
    if server.name.is_empty() || server.name.len() > 64 || !server.name.bytes().all(is_token_byte) {
        return Err(format!(
            "{}: must be 1-64 characters of [A-Za-z0-9._-], got {:?}",
            field("name"),
            server.name
        ));
    }
    let prefix = server.prefix.unwrap_or_else(|| format!("{}_", server.name));
    if prefix.len() > 64 || !prefix.bytes().all(is_token_byte) {
        return Err(format!(
            "{}: must be at most 64 characters of [A-Za-z0-9._-], got {prefix:?}",
            field("prefix")
        ));
    }
    let url = url::Url::parse(&server.url)
        .map_err(|e| format!("{}: {e}: {:?}", field("url"), server.url))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "{}: scheme must be http or https, got {other:?}",
                field("url")
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{}: must not carry user info; use `credential`",
            field("url")
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("{}: must not have a fragment", field("url")));
    }
    let (hostname, host_header) = match url.host() {
        Some(url::Host::Domain(d)) => (d.to_string(), d.to_string()),
        Some(url::Host::Ipv4(a)) => (a.to_string(), a.to_string()),
        Some(url::Host::Ipv6(a)) => (a.to_string(), format!("[{a}]")),
        None => return Err(format!("{}: has no host", field("url"))),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let host_header = match url.port() {
        Some(p) => format!("{host_header}:{p}"),
        None => host_header,
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    if server.ca_file.is_some() && !tls {
        return Err(format!("{}: only applies to https URLs", field("ca_file")));
    }

    let mut forward_headers: Vec<String> = Vec::with_capacity(server.forward_headers.len());
    for (f, name) in server.forward_headers.iter().enumerate() {
        // Names are case-insensitive: written as people like, checked and sent lower-case.
        let name = name.to_ascii_lowercase();
        check_forward_header(&field(&format!("forward_headers[{f}]")), &name)?;
        if !forward_headers.contains(&name) {
            forward_headers.push(name);
        }
    }

    let mut headers = Vec::new();
    for (name, value) in &server.headers {
        check_header(&field(&format!("headers.{name}")), name, value)?;
        headers.push(HeaderValue {
            name: name.to_ascii_lowercase(),
            value: value.clone(),
        });
    }
    let resolved = match server.credential {
        None => Ok(headers),
        Some(c) => {
            let name = c.header.to_ascii_lowercase();
            check_header(&field("credential.header"), &name, "")?;
            if headers.iter().any(|h| h.name == name) {
                return Err(format!(
                    "{}: header {name:?} is also set in `headers`",
                    field("credential")
                ));
            }
            let secret = match (c.env, c.file) {
                (Some(var), None) => env(&var)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| v.trim().to_string())
                    .ok_or_else(|| format!("credential: environment variable {var} is not set")),
                (None, Some(file)) => {
                    let path = resolve(base, &file);
                    fs::read_to_string(&path)
                        .map_err(|e| format!("credential: {}: {e}", path.display()))
                        .and_then(|s| {
                            let s = s.trim().to_string();
                            if s.is_empty() {
                                Err(format!("credential: {} is empty", path.display()))
                            } else {
                                Ok(s)
                            }
                        })
                }
                _ => {
                    return Err(format!(
                        "{}: set exactly one of `env` and `file`",
                        field("credential")
                    ))
                }
            };
            secret.and_then(|secret| {
                let value = if c.scheme.is_empty() {
                    secret
                } else {
                    format!("{} {secret}", c.scheme)
                };
                if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    return Err("credential: the secret contains control characters".into());
                }
                headers.push(HeaderValue { name, value });
                Ok(headers)
            })
        }
    };

    let lower = server.name.to_ascii_lowercase();
    Ok(ServerSpec {
        authority: format!("{lower}.{suffix}"),
        cluster: format!("{CLUSTER_PREFIX}{}", server.name),
        name: server.name,
        prefix,
        enabled: server.enabled,
        url: url.to_string(),
        tls,
        hostname,
        port,
        host_header,
        path,
        ca_file: server.ca_file.map(|p| resolve(base, &p)),
        headers: resolved,
        forward_headers,
        idle_timeout: Duration::from_millis(server.idle_timeout_ms),
    })
}

const RESERVED_HEADERS: &[&str] = &[
    "host",
    "accept",
    "content-type",
    "content-length",
    "connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "keep-alive",
    "proxy-connection",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
];

fn check_header(field: &str, name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty()
        || !lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("{field}: invalid header name {name:?}"));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-mcp-") {
        return Err(format!(
            "{field}: header {name:?} is managed by the gateway"
        ));
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(format!("{field}: value contains control characters"));
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads the plugin token file, creating it (mode 0600, 32 random bytes in base64url without
/// padding) if missing.
pub fn load_or_create_token(path: &Path) -> Result<PluginToken, String> {
    let origin = TokenSource::File(path.to_path_buf());
    match fs::read_to_string(path) {
        Ok(text) => PluginToken::parse(&text, &origin),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| format!("plugin token: no randomness: {e}"))?;
            let text = URL_SAFE_NO_PAD.encode(bytes);
            match create_private(path, &text) {
                Ok(()) => {
                    tracing::info!("generated plugin token file {}", path.display());
                    PluginToken::parse(&text, &origin)
                }
                // Someone else created it meanwhile: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_token(path)
                }
                Err(e) => Err(format!("plugin_token: {}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("plugin_token: {}: {e}", path.display())),
    }
}

/// Creates `path` (and its directory) holding `text` and a newline, readable by its owner only;
/// fails with `AlreadyExists` when the file exists.
fn create_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
}

/// Reads the session key file (standard base64 of 32 bytes), creating it (mode 0600) if missing.
pub fn load_or_create_key(path: &Path) -> Result<String, String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            match STANDARD.decode(text) {
                Ok(bytes) if bytes.len() == 32 => Ok(text.to_string()),
                _ => Err(format!(
                    "session.key_file: {} must hold 32 bytes in standard base64",
                    path.display()
                )),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| format!("session key: no randomness: {e}"))?;
            let text = STANDARD.encode(bytes);
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() {
                    fs::create_dir_all(dir)
                        .map_err(|e| format!("session.key_file: {}: {e}", dir.display()))?;
                }
            }
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let written = options
                .open(path)
                .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()));
            match written {
                Ok(()) => {
                    tracing::info!("generated session key file {}", path.display());
                    Ok(text)
                }
                // Someone else created it meanwhile: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(format!("session.key_file: {}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("session.key_file: {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_TOKEN: &str = "0123456789abcdef0123456789abcdef-_.~";

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret\n".into()),
            "PLUGIN_TOKEN" => Some(format!("  {LONG_TOKEN}\n")),
            _ => None,
        }
    }

    fn parse_ok(text: &str) -> Settings {
        parse(text, Path::new("/etc/mcpgw"), &env).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("/etc/mcpgw"), &env).unwrap_err()
    }

    #[test]
    fn governance_sections_reach_the_document_and_are_checked() {
        let pem = "-----BEGIN PUBLIC KEY-----\\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7WdMdvC8hviEAL4wcebqaYbLEtVO\\n\
VEiyi/nozagw7BaWXmzbOWyy95gZLirTkhUb1P4Z4lgKLU2rD5NCbGPHAA==\\n\
-----END PUBLIC KEY-----";
        let s = parse_ok(&format!(
            "grants: {{public_key: \"{pem}\", missing: nothing}}\n\
             virtual_servers: [{{name: team-a/readers, tools: [a_echo]}}]\n\
             oauth: {{resource: 'https://mcp.example.com/mcp', authorization_servers: ['https://idp']}}\n"
        ));
        let grants = s.grants.0.as_ref().unwrap();
        assert_eq!(grants.missing, mcpgw_core::grant::Missing::Nothing);
        assert!(grants.public_key.contains("MFkw"));
        assert_eq!(s.virtual_servers.0[0].name, "team-a/readers");
        assert_eq!(
            s.oauth.0.as_ref().unwrap().resource,
            "https://mcp.example.com/mcp"
        );
        for (bad, says) in [
            (
                "grants: {public_key: nope, missing: all}\n",
                "grants.public_key",
            ),
            ("grants: {public_key: x}\n", "missing"),
            (
                "virtual_servers: [{name: 'a b', tools: []}]\n",
                "virtual_servers[0].name",
            ),
            (
                "oauth: {resource: 'mcp', authorization_servers: [x]}\n",
                "oauth.resource",
            ),
        ] {
            let err = parse_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let s = parse_ok("servers: []\n");
        assert_eq!(s.listen, "127.0.0.1:18000".parse().unwrap());
        assert_eq!(s.gateway.0.mcp_path, "/mcp");
        assert!(s.gateway.0.list_changed);
        assert_eq!(s.session_keys.0[0].id, "k1");
        assert_eq!(s.keepalive, Duration::from_secs(15));
        assert!(s.envoy.xds_dir.is_none());
        assert_eq!(
            s.plugin_token_source,
            TokenSource::File(PathBuf::from("/etc/mcpgw/plugin.token"))
        );
        assert!(s.plugin_token.is_none(), "read by `load`, not `parse`");
        let empty = parse_ok("{}");
        assert!(empty.servers.is_empty());
        assert_eq!(s.limits.0.max_json_depth, 64);
        let limited = parse_ok("limits: {max_json_depth: 16, max_body_bytes: 4096}\n");
        assert_eq!(limited.limits.0.max_json_depth, 16);
        assert_eq!(limited.limits.0.max_body_bytes, 4096);
        assert_eq!(
            limited.limits.0.meta_tools_above, 0,
            "tool discovery is off by default"
        );
        let discovery = parse_ok("limits: {meta_tools_above: 40}\n");
        assert_eq!(discovery.limits.0.meta_tools_above, 40);
        let categories =
            parse_ok("tool_categories: [{name: math, description: Arithmetic, tools: [a_add]}]\n");
        assert_eq!(categories.tool_categories.0[0].tools, ["a_add"]);
    }

    #[test]
    fn server_fields_resolve() {
        let s = parse_ok(
            r#"
servers:
  - name: Alpha
    url: https://api.example.com/v1/mcp?x=1
    credential: {env: TOKEN}
    headers: {X-Tenant: acme}
    forward_headers: [X-Request-Tenant, x-correlation-id, x-request-tenant]
    ca_file: certs/ca.pem
  - name: beta
    url: http://127.0.0.1:18081/mcp
    prefix: ""
    enabled: false
  - name: gamma
    url: http://[::1]:9000
    credential: {file: /nonexistent/token, header: x-api-key, scheme: ""}
"#,
        );
        let a = &s.servers[0];
        assert_eq!(a.prefix, "Alpha_");
        assert!(a.tls);
        assert_eq!(a.hostname, "api.example.com");
        assert_eq!(a.port, 443);
        assert_eq!(a.host_header, "api.example.com");
        assert_eq!(a.path, "/v1/mcp?x=1");
        assert_eq!(a.authority, "alpha.mcp.local");
        assert_eq!(a.cluster, "mcpgw_srv_Alpha");
        assert_eq!(
            a.ca_file.as_deref(),
            Some(Path::new("/etc/mcpgw/certs/ca.pem"))
        );
        let headers = a.headers.as_ref().unwrap();
        assert_eq!(headers[0].name, "x-tenant");
        assert_eq!(headers[1].name, "authorization");
        assert_eq!(headers[1].value, "Bearer s3cret");
        assert_eq!(
            a.forward_headers,
            ["x-request-tenant", "x-correlation-id"],
            "lower-cased, deduplicated"
        );

        let b = &s.servers[1];
        assert!(b.forward_headers.is_empty());
        assert_eq!(b.prefix, "");
        assert!(!b.enabled);
        assert_eq!(b.host_header, "127.0.0.1:18081");
        assert!(b.hostname_is_ip());

        let g = &s.servers[2];
        assert_eq!(g.hostname, "::1");
        assert_eq!(g.host_header, "[::1]:9000");
        assert_eq!(g.path, "/");
        // A missing credential is a per-server problem, not a rejected file.
        assert!(g
            .headers
            .as_ref()
            .unwrap_err()
            .contains("/nonexistent/token"));
    }

    #[test]
    fn missing_env_credential_is_per_server() {
        let s = parse_ok(
            "servers:\n  - {name: a, url: 'http://127.0.0.1:1/mcp', credential: {env: NOPE}}\n",
        );
        let err = s.servers[0].headers.as_ref().unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
    }

    #[test]
    fn rejects_bad_files_with_a_clear_message() {
        let cases = [
            ("servers: [ {name: a, url: x", "did not find expected"),
            ("serverz: []", "unknown field `serverz`"),
            (
                "servers:\n  - {name: 'a b', url: 'http://h/'}",
                "servers[0].name",
            ),
            (
                "servers:\n  - {name: a, url: 'ftp://h/'}",
                "scheme must be http or https",
            ),
            (
                "servers:\n  - {name: a, url: 'not a url'}",
                "servers[0].url",
            ),
            ("servers:\n  - {name: a, url: 'http://u:p@h/'}", "user info"),
            (
                "servers:\n  - {name: a, url: 'http://h/', prefix: 'a/'}",
                "servers[0].prefix",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/'}\n  - {name: A, url: 'http://h/'}",
                "duplicate server name",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', credential: {env: X, file: y}}",
                "exactly one of",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', credential: {}}",
                "exactly one of",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', ca_file: x}",
                "only applies to https",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', headers: {host: x}}",
                "managed by the gateway",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', colour: red}",
                "unknown field `colour`",
            ),
            ("gateway: {mcp_path: mcp}", "gateway.mcp_path"),
            (
                "gateway: {allowed_origins: [example.com]}",
                "gateway.allowed_origins[0]",
            ),
            ("discovery: {health_interval_ms: 0}", "health_interval_ms"),
            (
                "discovery: {backoff_initial_ms: 10, backoff_max_ms: 5}",
                "backoff_max_ms",
            ),
            ("listen: nowhere", "listen"),
            (
                "limits: {page_size: 0}",
                "the plugin would refuse the configuration document: limits.page_size: must be positive",
            ),
            (
                "limits: {max_json_depth: 2}",
                "the plugin would refuse the configuration document: limits.max_json_depth: must be at least 3, got 2",
            ),
            (
                "limits: {upstream_session_slots: 0}",
                "limits.upstream_session_slots: must be positive",
            ),
            ("session: {ttl_seconds: 0}", "session.ttl_seconds: must be positive"),
            (
                "session: {key_id: a.b}",
                "session.keys[0].id: must be non-empty [A-Za-z0-9_-], got \"a.b\"",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', forward_headers: [x-ok, Cookie]}",
                "servers[0].forward_headers[1]: \"cookie\" carries the client's credentials",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', forward_headers: [authorization]}",
                "servers[0].forward_headers[0]: \"authorization\" carries the client's credentials",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', forward_headers: [Proxy-Authorization]}",
                "servers[0].forward_headers[0]: \"proxy-authorization\" carries",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', forward_headers: ['x y']}",
                "servers[0].forward_headers[0]: must be a lower-case header name",
            ),
            (
                "servers:\n  - {name: a, url: 'http://h/', forward_headers: [transfer-encoding]}",
                "servers[0].forward_headers[0]: \"transfer-encoding\" is managed by the proxy",
            ),
        ];
        for (text, want) in cases {
            let err = parse_err(text);
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn yaml_errors_carry_a_location() {
        let err = parse_err("servers:\n  - name: a\n    url: [\n");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = std::env::temp_dir().join(format!("mcpgw-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/session.key");
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(STANDARD.decode(&first).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_key(&path).unwrap(), first);
        fs::write(&path, "short").unwrap();
        assert!(load_or_create_key(&path).unwrap_err().contains("32 bytes"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn plugin_token_from_a_variable_or_a_file() {
        let s = parse_ok("plugin_token: {env: PLUGIN_TOKEN}");
        assert_eq!(
            s.plugin_token_source,
            TokenSource::Env("PLUGIN_TOKEN".into())
        );
        assert_eq!(s.plugin_token.as_ref().unwrap().expose(), LONG_TOKEN);
        assert!(!format!("{s:?}").contains(LONG_TOKEN), "Debug redacts it");
        let s = parse_ok("plugin_token: {file: secrets/token}");
        assert_eq!(
            s.plugin_token_source,
            TokenSource::File(PathBuf::from("/etc/mcpgw/secrets/token"))
        );
        let cases = [
            ("plugin_token: {env: NOPE}", "NOPE is not set"),
            ("plugin_token: {env: TOKEN}", "at least 32 characters"),
            ("plugin_token: {}", "exactly one of"),
            ("plugin_token: {env: TOKEN, file: x}", "exactly one of"),
            ("plugin_token: {value: x}", "unknown field `value`"),
        ];
        for (text, want) in cases {
            let err = parse_err(text);
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn token_file_is_created_0600_reused_and_checked() {
        let dir = std::env::temp_dir().join(format!("mcpgw-token-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/plugin.token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(first.expose()).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_token(&path).unwrap(), first);
        fs::write(&path, "too short\n").unwrap();
        assert!(load_or_create_token(&path)
            .unwrap_err()
            .contains("at least 32 characters"));
        fs::write(&path, format!("{LONG_TOKEN}\n")).unwrap();
        assert_eq!(load_or_create_token(&path).unwrap().expose(), LONG_TOKEN);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_run_and_bootstrap_create_the_token_file() {
        let dir = std::env::temp_dir().join(format!("mcpgw-load-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sidecar.yaml");
        fs::write(&config, "servers: []\n").unwrap();
        let mut read_only = load(&config, KeyFile::ReadOnly).unwrap();
        assert!(read_only.plugin_token.is_none());
        assert!(!dir.join("plugin.token").exists(), "check writes nothing");
        assert!(!dir.join("session.key").exists());
        let token = ensure_plugin_token(&mut read_only).unwrap();
        assert!(
            dir.join("plugin.token").exists(),
            "bootstrap creates the token"
        );
        assert!(!dir.join("session.key").exists(), "but not the session key");
        let created = load(&config, KeyFile::Create).unwrap();
        assert_eq!(created.plugin_token, Some(token));
        assert!(dir.join("session.key").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
