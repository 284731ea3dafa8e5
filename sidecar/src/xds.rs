//! Envoy configuration for standalone mode: file-based xDS (CDS + RDS through
//! `path_config_source`) and the bootstrap that points at those files.
//!
//! One cluster per enabled server (STATIC for an IP, LOGICAL_DNS for a host name; `https` gets an
//! `UpstreamTlsContext` with SNI and certificate + SAN verification) and one virtual host per server
//! (`domains: [<authority>]`, `host_rewrite_literal: <host>`, path kept). The default virtual host
//! sends `GET <mcp_path>` to the sidecar (the notification stream) and answers everything else 404.
//! What Envoy itself would add stays out of the upstream requests: the server routes remove
//! `x-forwarded-proto`, the router suppresses its `x-envoy-*` headers, the server clusters strip the
//! async client's (docs/architecture.md, "Headers that reach upstreams").
//!
//! Files are written atomically (temporary file + rename), which is the move Envoy's file watcher
//! reacts to. A removed server's cluster stays in CDS for a grace period so that requests the
//! plugin routes with the previous document still find it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcpgw_core::config::Install;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::catalog::hex;
use crate::settings::{
    AccessLog, PluginToken, ServerSpec, Settings, SIDECAR_CLUSTER, SIDECAR_STREAMS_CLUSTER,
};

/// Name of the route configuration (RDS resource) the listener asks for.
pub const ROUTE_CONFIG_NAME: &str = "mcpgw";
pub const CDS_FILE: &str = "cds.json";
pub const RDS_FILE: &str = "rds.json";
/// How long a removed server's cluster is kept.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);

const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTES_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Headers Envoy's async client adds to the plugin's own calls (initialize, DELETE, replays),
/// whose router the configuration cannot reach: an upstream filter on every server cluster
/// removes them (checked with Envoy 1.40: without it they reach the server).
pub const ASYNC_CLIENT_HEADERS: [&str; 2] = ["x-envoy-internal", "x-envoy-expected-rq-timeout-ms"];

/// Left by the plugin because Envoy's route matching needs it; the server routes remove it once
/// the route is chosen (unless the server's `forward_headers` name it).
pub const ROUTE_ONLY_HEADER: &str = "x-forwarded-proto";

fn duration(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// The Envoy cluster of one server.
pub fn cluster(spec: &ServerSpec, settings: &Settings) -> Value {
    let ip = spec.hostname_is_ip();
    let mut cluster = json!({
        "@type": CLUSTER_TYPE,
        "name": spec.cluster,
        "type": if ip { "STATIC" } else { "LOGICAL_DNS" },
        "connect_timeout": duration(settings.envoy.connect_timeout),
        "load_assignment": {
            "cluster_name": spec.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": spec.hostname,
                "port_value": spec.port,
            }}}}]}],
        },
    });
    if let Some(map) = cluster.as_object_mut() {
        if !ip {
            map.insert("dns_lookup_family".into(), json!("V4_PREFERRED"));
        }
        map.insert(
            "typed_extension_protocol_options".into(),
            json!({HTTP_OPTIONS: http_options()}),
        );
        if spec.tls {
            let ca = spec.ca_file.as_ref().unwrap_or(&settings.envoy.ca_bundle);
            let san_type = if ip { "IP_ADDRESS" } else { "DNS" };
            let mut tls = json!({
                "@type": TLS_TYPE,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": ca.display().to_string()},
                    "match_typed_subject_alt_names": [
                        {"san_type": san_type, "matcher": {"exact": spec.hostname}}
                    ],
                }},
            });
            if !ip {
                if let Some(t) = tls.as_object_mut() {
                    t.insert("sni".into(), json!(spec.hostname));
                }
            }
            map.insert(
                "transport_socket".into(),
                json!({"name": "envoy.transport_sockets.tls", "typed_config": tls}),
            );
        }
    }
    cluster
}

/// How long Envoy keeps an idle connection to a server. Below the keep-alive timeouts of common
/// MCP server stacks (uvicorn and Node.js close idle connections after 5 s): a server that closes
/// a connection just as Envoy reuses it fails that request (`UC`), and a POST cannot be retried
/// safely once sent, so Envoy lets such connections go first.
const UPSTREAM_IDLE_TIMEOUT: &str = "3s";

/// HTTP/1.1 to the server (as without options), through an upstream filter that removes
/// [`ASYNC_CLIENT_HEADERS`].
fn http_options() -> Value {
    let removals: Vec<Value> = ASYNC_CLIENT_HEADERS
        .iter()
        .map(|h| json!({"remove": h}))
        .collect();
    json!({
        "@type": format!("type.googleapis.com/{HTTP_OPTIONS}"),
        "explicit_http_config": {"http_protocol_options": {}},
        "common_http_protocol_options": {"idle_timeout": UPSTREAM_IDLE_TIMEOUT},
        "http_filters": [
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    "mutations": {"request_mutations": removals},
                },
            },
            {
                "name": "envoy.filters.http.upstream_codec",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                },
            },
        ],
    })
}

/// The whole route configuration: one virtual host per enabled server, then the default one.
pub fn route_configuration(settings: &Settings) -> Value {
    let mut hosts: Vec<Value> = settings
        .servers
        .iter()
        .filter(|s| s.enabled)
        .map(|s| {
            let mut route = json!({
                // Only what the plugin routed (it strips client x-mcp-* headers on the
                // MCP path and sets this one), not a client naming the host itself.
                "match": {"prefix": "/", "headers": [{
                    "name": "x-mcp-servername",
                    "string_match": {"exact": s.name},
                }]},
                "route": {
                    "cluster": s.cluster,
                    "host_rewrite_literal": s.host_header,
                    // No limit on a whole answer (tool calls may stream progress for long),
                    // but a silent upstream fails the call (504 -> JSON-RPC error).
                    "timeout": "0s",
                    "idle_timeout": duration(s.idle_timeout),
                },
            });
            if !s.forward_headers.iter().any(|h| h == ROUTE_ONLY_HEADER) {
                if let Some(map) = route.as_object_mut() {
                    map.insert(
                        "request_headers_to_remove".into(),
                        json!([ROUTE_ONLY_HEADER]),
                    );
                }
            }
            json!({
                "name": format!("srv_{}", s.name),
                "domains": [s.authority],
                "routes": [
                    route,
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}},
                    },
                ],
            })
        })
        .collect();
    let mut default_routes = vec![
        // MCP 2026-07-28 `subscriptions/listen`, vouched for by the plugin: the sidecar serves it.
        json!({
            "match": {
                "path": settings.gateway.0.mcp_path,
                "headers": [{"name": "x-mcpgw-listen", "present_match": true}],
            },
            "route": {"cluster": SIDECAR_STREAMS_CLUSTER, "timeout": "0s"},
        }),
        json!({
        "match": {
            "path": settings.gateway.0.mcp_path,
            "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
        },
        "route": {"cluster": SIDECAR_STREAMS_CLUSTER, "timeout": "0s"},
        }),
    ];
    if settings.envoy.install == Install::WasmPlugin {
        // Installed without allow_on_headers_stop_iteration, the plugin cannot hold the headers
        // of a request it answers itself (server/discover, lists) while it reads the body: they
        // go on to the sidecar, which never sees the body (the plugin answers and resets).
        default_routes.push(json!({
            "match": {
                "path": settings.gateway.0.mcp_path,
                "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
            },
            "route": {"cluster": SIDECAR_STREAMS_CLUSTER, "timeout": "30s"},
        }));
    }
    default_routes.push(json!({
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}},
    }));
    hosts.push(json!({
        "name": "mcpgw_default",
        "domains": ["*"],
        "routes": default_routes,
    }));
    json!({
        "@type": ROUTES_TYPE,
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": hosts,
    })
}

/// A `DiscoveryResponse` as Envoy reads it from a file.
fn discovery_response(resources: Vec<Value>) -> Vec<u8> {
    let body = serde_json::to_vec(&resources).unwrap_or_default();
    let version = hex(&Sha256::digest(&body));
    let doc = json!({
        "version_info": version.get(..16).unwrap_or(&version),
        "resources": resources,
    });
    let mut text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Writes the two files atomically and remembers what it wrote.
pub struct Writer {
    dir: PathBuf,
    /// Clusters of the last write, by name.
    current: BTreeMap<String, Value>,
    /// Clusters of removed servers, kept until the grace period ends.
    retired: BTreeMap<String, (Value, Instant)>,
    last_cds: Vec<u8>,
    last_rds: Vec<u8>,
}

impl Writer {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            current: BTreeMap::new(),
            retired: BTreeMap::new(),
            last_cds: Vec::new(),
            last_rds: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Renders and writes what changed. Clusters first, so that routes never name a cluster
    /// Envoy has not seen.
    pub fn write(&mut self, settings: &Settings, now: Instant) -> Result<bool, String> {
        let next: BTreeMap<String, Value> = settings
            .servers
            .iter()
            .filter(|s| s.enabled)
            .map(|s| (s.cluster.clone(), cluster(s, settings)))
            .collect();
        for (name, value) in std::mem::take(&mut self.current) {
            if !next.contains_key(&name) {
                self.retired.entry(name).or_insert((value, now));
            }
        }
        self.retired.retain(|name, (_, since)| {
            !next.contains_key(name) && now.duration_since(*since) < RETIRE_GRACE
        });
        self.current = next;

        let clusters: Vec<Value> = self
            .current
            .values()
            .chain(self.retired.values().map(|(v, _)| v))
            .cloned()
            .collect();
        let cds = discovery_response(clusters);
        let rds = discovery_response(vec![route_configuration(settings)]);
        let mut changed = false;
        if cds != self.last_cds {
            write_atomic(&self.dir, CDS_FILE, &cds)?;
            self.last_cds = cds;
            changed = true;
        }
        if rds != self.last_rds {
            write_atomic(&self.dir, RDS_FILE, &rds)?;
            self.last_rds = rds;
            changed = true;
        }
        Ok(changed)
    }

    /// When the next retired cluster expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.retired
            .values()
            .map(|(_, since)| *since + RETIRE_GRACE)
            .min()
    }
}

/// Temporary file in the same directory, then rename: Envoy sees one complete file appear.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    write_with_mode(dir, name, bytes, None)
}

/// [`write_atomic`] for a file holding a secret: readable by its owner only (mode 0600).
pub fn write_atomic_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    write_with_mode(dir, name, bytes, Some(0o600))
}

fn write_with_mode(dir: &Path, name: &str, bytes: &[u8], mode: Option<u32>) -> Result<(), String> {
    use std::io::Write;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // A leftover temporary file would keep its mode: start from a new one.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))
}

/// Envoy tag extraction for the plugin's metrics (src/metrics.rs): the labels travel in the stat
/// name (`mcpgw.method.<m>.outcome.<o>.code.<c>.requests_total`); each regex's first group is cut
/// from the name, its second is the label's value, so Prometheus shows
/// `mcpgw_requests_total{mcp_method=..,mcp_outcome=..,mcp_error_code=..}`. Mirrored in
/// tests/e2e/harness.py (`STATS_TAGS`); docs/observability.md lists the metrics.
pub const STATS_TAGS: [(&str, &str); 6] = [
    (
        "mcp_method",
        r"^(?:wasmcustom\.)?mcpgw\.(method\.([^.]+)\.)",
    ),
    (
        "mcp_outcome",
        r"^(?:wasmcustom\.)?mcpgw\.method\.[^.]+\.(outcome\.([^.]+)\.)",
    ),
    (
        "mcp_error_code",
        r"^(?:wasmcustom\.)?mcpgw\.method\.[^.]+\.outcome\.[^.]+\.(code\.([^.]+)\.)",
    ),
    (
        "mcp_server",
        r"^(?:wasmcustom\.)?mcpgw\.(server\.([^.]+)\.)",
    ),
    (
        "mcp_tool",
        r"^(?:wasmcustom\.)?mcpgw\.server\.[^.]+\.(tool\.([^.]+)\.)",
    ),
    (
        "mcp_refusal",
        r"^(?:wasmcustom\.)?mcpgw\.(reason\.([^.]+)\.)",
    ),
];

/// The bootstrap's `stats_config`: [`STATS_TAGS`].
pub fn stats_config() -> Value {
    let tags: Vec<Value> = STATS_TAGS
        .iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect();
    json!({"stats_tags": tags})
}

/// The MCP part of an access-log line: the method and JSON-RPC error code the plugin keeps as
/// filter state (`-` when it has none: a request it did not read, or telemetry off), the server and
/// tool from the routing headers it sets on routed calls (one filter-state write per request on
/// the hot path instead of three: docs/observability.md, "Cost"). Mirrored in
/// tests/e2e/harness.py (`MCP_LOG_FIELDS`).
pub const MCP_LOG_FIELDS: &str = "mcp_method=%FILTER_STATE(wasm.mcpgw_method:PLAIN)% \
mcp_server=%REQ(X-MCP-SERVERNAME)% mcp_tool=%REQ(X-MCP-TOOLNAME)% \
mcp_error=%FILTER_STATE(wasm.mcpgw_error_code:PLAIN)%";

/// Options of the generated bootstrap.
pub struct BootstrapOptions {
    /// Include the MCP gateway Wasm filter, configured with this plugin token (`None`: no
    /// filter, plain routing, for testing the xDS files alone).
    pub plugin_token: Option<PluginToken>,
}

/// The Envoy bootstrap for standalone mode: the listener (Wasm filter + router, routes from RDS),
/// clusters from CDS, and the static `mcpgw_sidecar` cluster. Paths are made absolute.
pub fn bootstrap(settings: &Settings, xds_dir: &Path, options: &BootstrapOptions) -> Value {
    let xds_dir = absolute(xds_dir);
    let source = |file: &str| {
        json!({
            "path_config_source": {"path": xds_dir.join(file).display().to_string()},
            "resource_api_version": "V3",
        })
    };
    // Authentication (jwt_authn) before the plugin, which reads the verified claims.
    let mut filters: Vec<Value> = settings.envoy.http_filters_before_plugin.clone();
    if let Some(token) = &options.plugin_token {
        let mut plugin_configuration = json!({
            "sidecar": {
                "cluster": SIDECAR_CLUSTER,
                "authority": "mcpgw-sidecar",
                "path": "/v1/config",
                "long_poll_ms": settings.envoy.long_poll_ms,
                "retry_ms": settings.envoy.retry_ms,
                "token": token.expose(),
            }
        });
        let mut config = json!({
            "name": "mcpgw",
            "root_id": "mcpgw",
            "failure_policy": "FAIL_RELOAD",
            "vm_config": {
                "vm_id": "mcpgw",
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": absolute(&settings.envoy.wasm).display().to_string()}},
            },
        });
        // One builder, two installs (docs/mcp2026.md): the EnvoyFilter shape lets the headers
        // wait for the body; the WasmPlugin shape cannot, and tells the plugin so.
        match settings.envoy.install {
            Install::EnvoyFilter => {
                insert(&mut config, "allow_on_headers_stop_iteration", json!(true));
            }
            Install::WasmPlugin => {
                insert(&mut plugin_configuration, "install", json!("wasm_plugin"));
            }
        }
        let configuration = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin_configuration.to_string(),
        });
        insert(&mut config, "configuration", configuration);
        filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": config,
            },
        }));
    }
    // Authorization on the plugin's policy headers: after the plugin (which sets them and strips
    // clients' copies), before the router.
    filters.extend(settings.envoy.http_filters_after_plugin.iter().cloned());
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            // The router's own headers would reach upstreams after the plugin removed what they
            // may not see: x-envoy-original-host (added by the routes' host rewrite, after any
            // route-level request_headers_to_remove), x-envoy-original-path,
            // x-envoy-expected-rq-timeout-ms.
            "suppress_envoy_headers": true,
        },
    }));
    let address = |a: std::net::SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
    json!({
        "node": {"id": "mcpgw", "cluster": "mcpgw"},
        "admin": {"address": address(settings.envoy.admin)},
        "stats_config": stats_config(),
        "dynamic_resources": {"cds_config": source(CDS_FILE)},
        "static_resources": {
            "listeners": [{
                "name": "mcpgw",
                "address": address(settings.envoy.listen),
                "per_connection_buffer_limit_bytes": 4 * 1024 * 1024,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "mcpgw",
                        "rds": {"route_config_name": ROUTE_CONFIG_NAME, "config_source": source(RDS_FILE)},
                        "http_filters": filters,
                        "access_log": access_log(settings.envoy.access_log),
                    },
                }]}],
            }],
            "clusters": [
                sidecar_cluster(SIDECAR_CLUSTER, address(settings.listen)),
                // Streams stay open for as long as clients keep them: a cluster of their own, so
                // they never use up the circuit-breaker budget of the configuration poll.
                sidecar_cluster(SIDECAR_STREAMS_CLUSTER, address(settings.listen)),
            ],
        },
    })
}

/// Sets `key` of a JSON object (anything else is left alone).
fn insert(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.into(), value);
    }
}

/// A static cluster to the sidecar.
fn sidecar_cluster(name: &str, address: Value) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    })
}

/// Envoy's access log on stdout. `%RESPONSE_CODE_DETAILS%` tells who answered: the upstream
/// (`via_upstream`), a route's `direct_response`, or the plugin (`mcpgw_<check>` on its local
/// answers).
fn access_log(which: AccessLog) -> Value {
    let format = format!(
        "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% \
%DURATION%ms %UPSTREAM_CLUSTER% %UPSTREAM_HOST% {MCP_LOG_FIELDS} request_id=%REQ(X-REQUEST-ID)% \
conn=%CONNECTION_ID% audit=%FILTER_STATE(wasm.mcpgw_audit:PLAIN)%\n"
    );
    let mut log = json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": format}},
        },
    });
    match which {
        AccessLog::Off => return json!([]),
        AccessLog::All => {}
        AccessLog::Errors => {
            if let Some(map) = log.as_object_mut() {
                map.insert(
                    "filter".into(),
                    json!({"or_filter": {"filters": [
                        {"status_code_filter": {"comparison": {"op": "GE", "value": {
                            "default_value": 400, "runtime_key": "mcpgw.access_log.min_status"}}}},
                        {"response_flag_filter": {}},
                    ]}}),
                );
            }
        }
    }
    json!([log])
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse;

    fn settings() -> Settings {
        parse(
            r#"
envoy: {xds_dir: /tmp/x}
servers:
  - {name: alpha, url: 'http://127.0.0.1:18081/mcp'}
  - {name: beta, url: 'https://api.example.com/mcp', ca_file: /ca.pem}
  - {name: gamma, url: 'https://10.0.0.1:8443/mcp', forward_headers: [x-forwarded-proto]}
  - {name: off, url: 'http://h/', enabled: false}
"#,
            Path::new("/etc"),
            &|_| None,
        )
        .unwrap()
    }

    #[test]
    fn clusters_follow_scheme_and_host_kind() {
        let s = settings();
        let a = cluster(&s.servers[0], &s);
        assert_eq!(a["type"], "STATIC");
        let http = &a["typed_extension_protocol_options"][HTTP_OPTIONS];
        assert!(http["explicit_http_config"]["http_protocol_options"].is_object());
        assert_eq!(http["common_http_protocol_options"]["idle_timeout"], "3s");
        let filters = http["http_filters"].as_array().unwrap();
        assert_eq!(filters[0]["name"], "envoy.filters.http.header_mutation");
        assert_eq!(
            filters[0]["typed_config"]["mutations"]["request_mutations"],
            json!([{"remove": "x-envoy-internal"}, {"remove": "x-envoy-expected-rq-timeout-ms"}])
        );
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");
        assert!(a.get("transport_socket").is_none());
        assert!(a.get("dns_lookup_family").is_none());
        let b = cluster(&s.servers[1], &s);
        assert_eq!(b["type"], "LOGICAL_DNS");
        assert_eq!(
            b["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            443
        );
        let tls = &b["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "api.example.com");
        let v = &tls["common_tls_context"]["validation_context"];
        assert_eq!(v["trusted_ca"]["filename"], "/ca.pem");
        assert_eq!(v["match_typed_subject_alt_names"][0]["san_type"], "DNS");
        let g = cluster(&s.servers[2], &s);
        let tls = &g["transport_socket"]["typed_config"];
        assert!(tls.get("sni").is_none(), "no SNI for an IP");
        let v = &tls["common_tls_context"]["validation_context"];
        assert_eq!(
            v["trusted_ca"]["filename"],
            "/etc/ssl/certs/ca-certificates.crt"
        );
        assert_eq!(
            v["match_typed_subject_alt_names"][0]["san_type"],
            "IP_ADDRESS"
        );
    }

    #[test]
    fn routes_have_one_vhost_per_enabled_server_then_default() {
        let s = settings();
        let r = route_configuration(&s);
        let hosts = r["virtual_hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 4);
        assert_eq!(hosts[0]["domains"][0], "alpha.mcp.local");
        assert_eq!(
            hosts[0]["routes"][0]["route"]["host_rewrite_literal"],
            "127.0.0.1:18081"
        );
        assert_eq!(hosts[0]["routes"][0]["route"]["cluster"], "mcpgw_srv_alpha");
        let header = &hosts[0]["routes"][0]["match"]["headers"][0];
        assert_eq!(header["name"], "x-mcp-servername");
        assert_eq!(header["string_match"]["exact"], "alpha");
        assert_eq!(
            hosts[0]["routes"][0]["request_headers_to_remove"],
            json!(["x-forwarded-proto"])
        );
        assert_eq!(hosts[0]["routes"][1]["direct_response"]["status"], 404);
        assert!(
            hosts[2]["routes"][0]
                .get("request_headers_to_remove")
                .is_none(),
            "gamma forwards x-forwarded-proto"
        );
        assert_eq!(hosts[3]["domains"][0], "*");
        // subscriptions/listen the plugin vouched for, then the GET notification stream.
        for route in hosts[3]["routes"].as_array().unwrap().iter().take(2) {
            assert_eq!(route["match"]["path"], "/mcp");
            assert_eq!(route["route"]["cluster"], SIDECAR_STREAMS_CLUSTER);
        }
        assert_eq!(
            hosts[3]["routes"][0]["match"]["headers"][0]["name"],
            "x-mcpgw-listen"
        );
        assert_eq!(hosts[3]["routes"][2]["direct_response"]["status"], 404);
    }

    #[test]
    fn writer_is_atomic_idempotent_and_retires_clusters() {
        let dir = std::env::temp_dir().join(format!("mcpgw-xds-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut w = Writer::new(dir.clone());
        let s = settings();
        let t0 = Instant::now();
        assert!(w.write(&s, t0).unwrap());
        assert!(!w.write(&s, t0).unwrap(), "unchanged: nothing rewritten");
        let cds: Value = serde_json::from_slice(&fs::read(dir.join(CDS_FILE)).unwrap()).unwrap();
        assert_eq!(cds["resources"].as_array().unwrap().len(), 3);
        assert_eq!(cds["resources"][0]["@type"], CLUSTER_TYPE);

        let mut fewer = s.clone();
        fewer.servers.remove(0);
        assert!(w.write(&fewer, t0).unwrap());
        let cds: Value = serde_json::from_slice(&fs::read(dir.join(CDS_FILE)).unwrap()).unwrap();
        assert_eq!(
            cds["resources"].as_array().unwrap().len(),
            3,
            "alpha retired, not gone"
        );
        let rds: Value = serde_json::from_slice(&fs::read(dir.join(RDS_FILE)).unwrap()).unwrap();
        assert_eq!(
            rds["resources"][0]["virtual_hosts"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(w.next_expiry(), Some(t0 + RETIRE_GRACE));
        assert!(w.write(&fewer, t0 + RETIRE_GRACE).unwrap());
        let cds: Value = serde_json::from_slice(&fs::read(dir.join(CDS_FILE)).unwrap()).unwrap();
        assert_eq!(cds["resources"].as_array().unwrap().len(), 2);
        assert_eq!(w.next_expiry(), None);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_builder_writes_both_installs() {
        let filter = settings();
        assert_eq!(filter.envoy.install, Install::EnvoyFilter);
        let plugin = parse(
            "envoy: {xds_dir: /tmp/x, install: wasm_plugin}\nservers:\n  - {name: alpha, url: 'http://127.0.0.1:18081/mcp'}\n",
            Path::new("/etc"),
            &|_| None,
        )
        .unwrap();
        let token = || PluginToken::parse(&"t".repeat(40), &"test").unwrap();
        let wasm_of = |s: &Settings| {
            let b = bootstrap(
                s,
                Path::new("/run/xds"),
                &BootstrapOptions {
                    plugin_token: Some(token()),
                },
            );
            b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                ["http_filters"][0]["typed_config"]["config"]
                .clone()
        };
        let conf = |w: &Value| -> mcpgw_core::PluginConfig {
            serde_json::from_str(w["configuration"]["value"].as_str().unwrap()).unwrap()
        };
        let (a, b) = (wasm_of(&filter), wasm_of(&plugin));
        assert_eq!(a["allow_on_headers_stop_iteration"], true);
        assert_eq!(conf(&a).install, Install::EnvoyFilter);
        assert!(b.get("allow_on_headers_stop_iteration").is_none(), "{b}");
        assert_eq!(conf(&b).install, Install::WasmPlugin);
        // Only the WasmPlugin install sends the POSTs the plugin answers on to the sidecar.
        let posts = |s: &Settings| {
            let routes = route_configuration(s);
            let default = routes["virtual_hosts"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .clone();
            default["routes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["match"]["headers"][0]["string_match"]["exact"] == "POST")
                .count()
        };
        assert_eq!((posts(&filter), posts(&plugin)), (0, 1));
    }

    #[test]
    fn bootstrap_points_at_the_files_and_the_sidecar() {
        let s = settings();
        let token = PluginToken::parse(&"t".repeat(40), &"test").unwrap();
        let b = bootstrap(
            &s,
            Path::new("/run/xds"),
            &BootstrapOptions {
                plugin_token: Some(token),
            },
        );
        assert_eq!(
            b["dynamic_resources"]["cds_config"]["path_config_source"]["path"],
            "/run/xds/cds.json"
        );
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(
            hcm["rds"]["config_source"]["path_config_source"]["path"],
            "/run/xds/rds.json"
        );
        let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
        assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
        let conf: Value =
            serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(conf["sidecar"]["cluster"], SIDECAR_CLUSTER);
        assert_eq!(conf["sidecar"]["long_poll_ms"], 20000);
        assert_eq!(conf["sidecar"]["token"], "t".repeat(40));
        // What the plugin parses: the core type, with the token it will present.
        let source: mcpgw_core::config::SidecarSource =
            serde_json::from_value(conf["sidecar"].clone()).unwrap();
        assert_eq!(
            source.authorization().unwrap(),
            format!("Bearer {}", "t".repeat(40))
        );
        let sidecar = &b["static_resources"]["clusters"][0];
        assert_eq!(
            sidecar["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            18000
        );
        assert_eq!(
            b["static_resources"]["clusters"][1]["name"],
            SIDECAR_STREAMS_CLUSTER
        );
        let router = &hcm["http_filters"][1];
        assert_eq!(router["name"], "envoy.filters.http.router");
        assert_eq!(router["typed_config"]["suppress_envoy_headers"], true);

        let plain = bootstrap(
            &s,
            Path::new("/run/xds"),
            &BootstrapOptions { plugin_token: None },
        );
        let hcm = &plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn filters_after_the_plugin_sit_between_it_and_the_router() {
        let s = parse(
            r#"
envoy:
  http_filters_after_plugin:
    - name: envoy.filters.http.rbac
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
        rules: {action: DENY, policies: {}}
servers:
  - {name: alpha, url: 'http://127.0.0.1:18081/mcp'}
"#,
            Path::new("/etc"),
            &|_| None,
        )
        .unwrap();
        let token = PluginToken::parse(&"t".repeat(40), &"test").unwrap();
        let b = bootstrap(
            &s,
            Path::new("/run/xds"),
            &BootstrapOptions {
                plugin_token: Some(token),
            },
        );
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.wasm",
                "envoy.filters.http.rbac",
                "envoy.filters.http.router"
            ]
        );
        for (bad, says) in [
            ("[{typed_config: {'@type': x}}]", "name"),
            ("[{name: r}]", "typed_config"),
            (
                "[{name: envoy.filters.http.router, typed_config: {'@type': x}}]",
                "router",
            ),
        ] {
            let text = format!(
                "envoy: {{http_filters_after_plugin: {bad}}}\nservers: [{{name: a, url: 'http://h/'}}]\n"
            );
            let err = parse(&text, Path::new("/etc"), &|_| None).unwrap_err();
            assert!(
                err.contains("http_filters_after_plugin[0]") && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn private_files_are_owner_only() {
        let dir = std::env::temp_dir().join(format!("mcpgw-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write_atomic_private(&dir, "envoy.json", b"{}\n").unwrap();
        write_atomic_private(&dir, "envoy.json", b"{\"a\":1}\n").unwrap();
        assert_eq!(fs::read(dir.join("envoy.json")).unwrap(), b"{\"a\":1}\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("envoy.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
