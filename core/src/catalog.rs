//! Everything derived from one configuration version, built once and shared by every request:
//! the routing index (prefixed tool name -> server and upstream name), the pre-serialized
//! `tools/list` pages, the `initialize` answer, and the session keys.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{
    check_forward_header, GatewayConfig, GatewayInfo, Limits, ServerConfig, DEFAULT_FORWARD_HEADERS,
};
use crate::error::GatewayError;
use crate::jsonrpc::{json_string, span_in, splice};
use crate::session::SessionKeys;

/// Where a prefixed tool name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRoute {
    pub server: usize,
    /// The tool's name upstream, already JSON-encoded (ready to splice into a body).
    pub upstream_name_json: String,
    pub upstream_name: String,
}

/// The client request headers a server may receive, sorted and deduplicated (lower-case):
/// [`DEFAULT_FORWARD_HEADERS`], the server's `forward_headers` and the names of its configured
/// `headers` (which the gateway sets itself). Built once per document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardHeaders(Vec<String>);

impl ForwardHeaders {
    fn for_server(server: &ServerConfig) -> Self {
        let mut names: Vec<String> = DEFAULT_FORWARD_HEADERS
            .iter()
            .map(|n| (*n).to_owned())
            .chain(server.forward_headers.iter().cloned())
            .chain(server.headers.iter().map(|h| h.name.to_ascii_lowercase()))
            .collect();
        names.sort_unstable();
        names.dedup();
        Self(names)
    }

    /// `name` (lower-case, as the proxy hands header names over) may reach the server.
    pub fn allows(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

#[derive(Debug)]
pub struct Catalog {
    pub version: String,
    pub gateway: GatewayInfo,
    pub limits: Limits,
    pub servers: Vec<ServerConfig>,
    pub keys: SessionKeys,
    /// Per server (same index as `servers`): the client headers forwarded to it.
    forward_headers: Vec<ForwardHeaders>,
    tools: HashMap<String, ToolRoute>,
    /// `tools/list` results, one JSON text per page.
    pages: Vec<String>,
    /// The `initialize` result after `"protocolVersion":"…",`.
    initialize_tail: String,
    /// Problems that did not reject the document (shadowed tool names), for the log.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct ToolName<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
}

impl Catalog {
    /// Validates a document and derives everything requests need. The error names the field.
    pub fn build(config: GatewayConfig) -> Result<Self, String> {
        let GatewayConfig {
            version,
            hash: _,
            gateway,
            session,
            limits,
            servers,
        } = config;
        if !gateway.mcp_path.starts_with('/') {
            return Err(format!(
                "gateway.mcp_path: must start with '/', got {:?}",
                gateway.mcp_path
            ));
        }
        if limits.page_size == 0 {
            return Err("limits.page_size: must be positive".into());
        }
        if limits.upstream_session_slots == 0 {
            return Err("limits.upstream_session_slots: must be positive".into());
        }
        let keys = SessionKeys::new(&session)?;
        let mut warnings = Vec::new();
        let mut tools: HashMap<String, ToolRoute> = HashMap::new();
        let mut listed: Vec<String> = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            validate_server(index, server)?;
            if servers.iter().take(index).any(|s| s.name == server.name) {
                return Err(format!(
                    "servers[{index}].name: duplicate server name {:?}",
                    server.name
                ));
            }
            let mut definitions = Vec::with_capacity(server.tools.len());
            for (t, definition) in server.tools.iter().enumerate() {
                let text = definition.get();
                let parsed: ToolName = serde_json::from_str(text)
                    .map_err(|e| format!("servers[{index}].tools[{t}]: {e}"))?;
                let upstream_name: String = serde_json::from_str(parsed.name.get())
                    .map_err(|_| format!("servers[{index}].tools[{t}].name: must be a string"))?;
                let prefixed = format!("{}{}", server.prefix, upstream_name);
                if let Some(existing) = tools.get(&prefixed) {
                    let owner = servers
                        .get(existing.server)
                        .map_or("?", |s| s.name.as_str());
                    warnings.push(format!(
                        "tool {prefixed:?} of server {:?} collides with server {owner:?}; dropped",
                        server.name
                    ));
                    continue;
                }
                let span = span_in(text, parsed.name.get())
                    .ok_or_else(|| format!("servers[{index}].tools[{t}]: bad name span"))?;
                let renamed = splice(text, span, &json_string(&prefixed))
                    .ok_or_else(|| format!("servers[{index}].tools[{t}]: bad name span"))?;
                definitions.push(renamed);
                tools.insert(
                    prefixed,
                    ToolRoute {
                        server: index,
                        upstream_name_json: parsed.name.get().to_owned(),
                        upstream_name,
                    },
                );
            }
            listed.extend(definitions);
        }
        let pages = paginate(&listed, limits.page_size);
        let initialize_tail = initialize_tail(&gateway);
        let forward_headers = servers.iter().map(ForwardHeaders::for_server).collect();
        Ok(Self {
            version,
            gateway,
            limits,
            servers,
            keys,
            forward_headers,
            tools,
            pages,
            initialize_tail,
            warnings,
        })
    }

    pub fn route(&self, prefixed_name: &str) -> Option<(&ToolRoute, &ServerConfig)> {
        let route = self.tools.get(prefixed_name)?;
        let server = self.servers.get(route.server)?;
        Some((route, server))
    }

    pub fn server(&self, index: usize) -> Option<&ServerConfig> {
        self.servers.get(index)
    }

    /// The client headers forwarded to server `index`.
    pub fn forward_headers(&self, index: usize) -> Option<&ForwardHeaders> {
        self.forward_headers.get(index)
    }

    pub fn tool_count(&self) -> usize {
        self.tools.len()
    }

    /// The `tools/list` result for a cursor (`None`: the first page).
    pub fn tools_page(&self, cursor: Option<&str>) -> Result<&str, GatewayError> {
        let index = match cursor {
            None => 0,
            Some(cursor) => decode_cursor(cursor)
                .filter(|i| *i > 0 && *i < self.pages.len())
                .ok_or_else(|| GatewayError::invalid_params("Invalid params: unknown cursor"))?,
        };
        self.pages
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| GatewayError::invalid_params("Invalid params: unknown cursor"))
    }

    /// The `initialize` result for a negotiated protocol version.
    pub fn initialize_result(&self, protocol_version: &str) -> String {
        format!(
            "{{\"protocolVersion\":{},{}",
            json_string(protocol_version),
            self.initialize_tail
        )
    }
}

fn validate_server(index: usize, server: &ServerConfig) -> Result<(), String> {
    let field = |name: &str| format!("servers[{index}].{name}");
    if server.name.is_empty() || !server.name.bytes().all(is_token_byte) {
        return Err(format!(
            "{}: must be non-empty [A-Za-z0-9._-], got {:?}",
            field("name"),
            server.name
        ));
    }
    if !server.prefix.bytes().all(is_token_byte) {
        return Err(format!(
            "{}: must be [A-Za-z0-9._-], got {:?}",
            field("prefix"),
            server.prefix
        ));
    }
    if server.authority.is_empty() || !server.authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{}: must be a host[:port]", field("authority")));
    }
    if !server.path.starts_with('/') || !server.path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{}: must start with '/'", field("path")));
    }
    if server.cluster.is_empty() {
        return Err(format!("{}: must name an Envoy cluster", field("cluster")));
    }
    for (h, header) in server.headers.iter().enumerate() {
        let name_ok = !header.name.is_empty()
            && !header.name.starts_with(':')
            && header
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return Err(format!(
                "{}: invalid header name",
                field(&format!("headers[{h}].name"))
            ));
        }
        if header
            .value
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(format!(
                "{}: must not contain CR, LF or NUL",
                field(&format!("headers[{h}].value"))
            ));
        }
    }
    for (f, name) in server.forward_headers.iter().enumerate() {
        check_forward_header(&field(&format!("forward_headers[{f}]")), name)?;
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn paginate(definitions: &[String], page_size: usize) -> Vec<String> {
    let chunks: Vec<&[String]> = definitions.chunks(page_size).collect();
    if chunks.is_empty() {
        return vec![String::from("{\"tools\":[]}")];
    }
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut page =
                String::with_capacity(chunk.iter().map(|d| d.len() + 1).sum::<usize>() + 48);
            page.push_str("{\"tools\":[");
            page.push_str(&chunk.join(","));
            page.push(']');
            if i < last {
                page.push_str(",\"nextCursor\":");
                page.push_str(&json_string(&encode_cursor(i + 1)));
            }
            page.push('}');
            page
        })
        .collect()
}

fn encode_cursor(page: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("page:{page}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("page:")?
        .parse()
        .ok()
}

fn initialize_tail(gateway: &GatewayInfo) -> String {
    let capabilities = format!("{{\"tools\":{{\"listChanged\":{}}}}}", gateway.list_changed);
    let mut tail = format!(
        "\"capabilities\":{capabilities},\"serverInfo\":{{\"name\":{},\"version\":{}}}",
        json_string(&gateway.name),
        json_string(&gateway.version)
    );
    if let Some(instructions) = &gateway.instructions {
        tail.push_str(",\"instructions\":");
        tail.push_str(&json_string(instructions));
    }
    tail.push('}');
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(servers: serde_json::Value) -> GatewayConfig {
        serde_json::from_value(serde_json::json!({
            "version": "v",
            "session": {"keys": [{"id": "k", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]},
            "servers": servers
        }))
        .unwrap()
    }

    fn server(name: &str, prefix: &str, tools: &[&str]) -> serde_json::Value {
        let tools: Vec<_> = tools
            .iter()
            .map(|t| serde_json::json!({"name": t}))
            .collect();
        serde_json::json!({"name": name, "prefix": prefix, "authority": format!("{name}.local"),
                           "cluster": name, "tools": tools})
    }

    #[test]
    fn routes_by_prefixed_name() {
        let catalog = Catalog::build(document(serde_json::json!([
            server("a", "a_", &["x", "b_y"]),
            server("ab", "a_b_", &["z"]),
        ])))
        .unwrap();
        let (route, server) = catalog.route("a_b_y").unwrap();
        assert_eq!(
            (server.name.as_str(), route.upstream_name.as_str()),
            ("a", "b_y")
        );
        let (route, server) = catalog.route("a_b_z").unwrap();
        assert_eq!(
            (server.name.as_str(), route.upstream_name_json.as_str()),
            ("ab", "\"z\"")
        );
        assert!(catalog.route("x").is_none());
        assert!(catalog.warnings.is_empty());
    }

    #[test]
    fn a_colliding_tool_is_reported_not_shadowed() {
        let catalog = Catalog::build(document(serde_json::json!([
            server("a", "p_", &["x"]),
            server("b", "p_", &["x", "y"]),
        ])))
        .unwrap();
        assert_eq!(catalog.route("p_x").unwrap().1.name, "a");
        assert_eq!(catalog.route("p_y").unwrap().1.name, "b");
        assert_eq!(catalog.warnings.len(), 1);
        assert!(
            catalog.warnings[0].contains("\"p_x\""),
            "{:?}",
            catalog.warnings
        );
    }

    #[test]
    fn invalid_documents_name_the_field() {
        let cases = [
            (
                serde_json::json!([server("a", "a_", &[]), server("a", "b_", &[])]),
                "servers[1].name",
            ),
            (
                serde_json::json!([server("a b", "a_", &[])]),
                "servers[0].name",
            ),
            (
                serde_json::json!([server("a", "a/", &[])]),
                "servers[0].prefix",
            ),
            (
                serde_json::json!([{"name": "a", "authority": "a", "cluster": "a", "tools": [{"title": "x"}]}]),
                "servers[0].tools[0]",
            ),
            (
                serde_json::json!([{"name": "a", "authority": "a", "cluster": "a", "path": "mcp"}]),
                "servers[0].path",
            ),
            (
                serde_json::json!([{"name": "a", "authority": "a", "cluster": "a",
                                 "headers": [{"name": "authorization", "value": "x\r\ny: z"}]}]),
                "servers[0].headers[0].value",
            ),
        ];
        for (servers, field) in cases {
            let err = Catalog::build(document(servers)).unwrap_err();
            assert!(err.starts_with(field), "{err} should name {field}");
        }
    }

    #[test]
    fn each_server_gets_its_forward_allow_list_once() {
        let mut a = server("a", "a_", &[]);
        a["forward_headers"] = serde_json::json!(["x-tenant", "traceparent"]);
        a["headers"] = serde_json::json!([{"name": "X-Api-Key", "value": "k"}]);
        let catalog =
            Catalog::build(document(serde_json::json!([a, server("b", "b_", &[])]))).unwrap();
        let a = catalog.forward_headers(0).unwrap();
        let b = catalog.forward_headers(1).unwrap();
        assert!(catalog.forward_headers(2).is_none());
        for name in DEFAULT_FORWARD_HEADERS {
            assert!(a.allows(name) && b.allows(name), "{name}");
        }
        assert!(a.allows("x-tenant"), "the server's forward_headers");
        assert!(
            a.allows("x-api-key"),
            "the server's own credential header, set by the gateway"
        );
        assert!(
            !b.allows("x-tenant") && !b.allows("x-api-key"),
            "per server"
        );
        for refused in [
            "cookie",
            "authorization",
            "proxy-authorization",
            "x-forwarded-for",
            "x-forwarded-proto",
            "forwarded",
            "accept-encoding",
            "x-envoy-original-host",
        ] {
            assert!(!a.allows(refused) && !b.allows(refused), "{refused}");
        }
        // Sorted and deduplicated (binary search), the defaults counted once.
        assert!(a.names().windows(2).all(|w| w[0] < w[1]), "{:?}", a.names());
        assert_eq!(b.names().len(), DEFAULT_FORWARD_HEADERS.len());
        assert_eq!(a.names().len(), DEFAULT_FORWARD_HEADERS.len() + 2);
    }

    #[test]
    fn forward_headers_refuse_credentials_and_bad_names_naming_the_field() {
        let cases = [
            ("cookie", "credentials"),
            ("authorization", "credentials"),
            ("proxy-authorization", "credentials"),
            ("X-Tenant", "lower-case"),
            ("x tenant", "lower-case"),
            ("", "lower-case"),
            (":path", "lower-case"),
            ("transfer-encoding", "managed by the proxy"),
            ("x-envoy-upstream-rq-timeout-ms", "managed by the proxy"),
        ];
        for (name, why) in cases {
            let mut s = server("a", "a_", &[]);
            s["forward_headers"] = serde_json::json!(["x-ok", name]);
            let err = Catalog::build(document(serde_json::json!([s]))).unwrap_err();
            assert!(
                err.starts_with("servers[0].forward_headers[1]: ") && err.contains(why),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn empty_catalog_lists_nothing_and_cursors_are_checked() {
        let catalog = Catalog::build(document(serde_json::json!([]))).unwrap();
        assert_eq!(catalog.tools_page(None).unwrap(), "{\"tools\":[]}");
        assert!(catalog.tools_page(Some("")).is_err());
        assert!(catalog.tools_page(Some(&encode_cursor(0))).is_err());
        let init: serde_json::Value =
            serde_json::from_str(&catalog.initialize_result("2025-06-18")).unwrap();
        assert_eq!(init["serverInfo"]["name"], "mcpgw");
    }
}
