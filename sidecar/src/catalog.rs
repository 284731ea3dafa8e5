//! The catalog: merges the configured servers with what discovery found into the plugin's
//! configuration document (`GatewayConfig`), refusing collisions, and hashes it.
//!
//! Pure: no I/O, no clocks. Servers are considered in configuration-file order; when two servers
//! claim the same prefix, or would publish the same prefixed tool name, the one listed later is
//! refused as a whole (never partially shadowed) and the reason is reported.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mcpgw_core::config::{GatewayConfig, ServerConfig, SessionConfig};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::settings::{ServerSpec, Settings};

/// What one successful discovery pass returned for a server (upstream names, full definitions).
#[derive(Debug, Default, PartialEq)]
pub struct ServerLists {
    pub tools: Vec<Item>,
    pub prompts: Vec<Item>,
    pub resources: Vec<Item>,
    pub resource_templates: Vec<Item>,
    /// The server's `capabilities` from its `initialize` answer.
    pub capabilities: Option<String>,
    /// `serverInfo.name`/`version` as the server reported them, for the status page.
    pub server_info: Option<String>,
    /// The MCP revisions the server speaks: its `server/discover` `supportedVersions` when it
    /// answers one, else the version its `initialize` negotiated.
    pub protocol_versions: Vec<String>,
}

/// One listed definition: its key (tool/prompt name, resource URI) and its JSON text.
#[derive(Debug)]
pub struct Item {
    pub key: String,
    pub json: Box<RawValue>,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.json.get() == other.json.get()
    }
}

impl Item {
    pub fn new(key: impl Into<String>, json: Box<RawValue>) -> Self {
        Self {
            key: key.into(),
            json,
        }
    }
}

/// Discovery's view of one server.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Not yet contacted (just configured).
    Pending,
    Up(Arc<ServerLists>),
    /// Unreachable or failing; the reason is for people.
    Down(String),
}

/// How one configured server ended up in (or out of) the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerReport {
    pub name: String,
    /// `serving`, `pending`, `down`, `refused`, `misconfigured` or `disabled`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub prefix: String,
    pub tools: usize,
    pub prompts: usize,
    pub resources: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_info: Option<String>,
    /// Tools left out for an invalid name or schema, with the reason (tool hygiene).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid_tools: Vec<String>,
}

const SCHEMA_TYPES: [&str; 7] = [
    "array", "boolean", "integer", "null", "number", "object", "string",
];

/// The first `type` anywhere in a schema that is not a JSON Schema type name (as the seed system's
/// check: `"type": "int"` in a property makes the tool invalid).
fn bad_type(schema: &serde_json::Value) -> Option<String> {
    match schema {
        serde_json::Value::Object(map) => {
            if let Some(t) = map.get("type") {
                let names: Vec<&serde_json::Value> = match t {
                    serde_json::Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for n in names {
                    if !n.as_str().is_some_and(|n| SCHEMA_TYPES.contains(&n)) {
                        return Some(n.to_string());
                    }
                }
            }
            map.iter().find_map(|(k, v)| match k.as_str() {
                // Values, not schemas.
                "enum" | "const" | "default" | "examples" => None,
                // Maps of name -> schema: a property may well be called "type".
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => v.as_object()?.values().find_map(bad_type),
                _ => bad_type(v),
            })
        }
        serde_json::Value::Array(items) => items.iter().find_map(bad_type),
        _ => None,
    }
}

/// Why a tool is unfit to publish: a name outside MCP's 1-128 of `[A-Za-z0-9_.-]`, an
/// `inputSchema` that is not a JSON object schema of `"type": "object"`, an `outputSchema` that is
/// present and not one.
pub fn tool_defect(item: &Item) -> Option<String> {
    let name = &item.key;
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Some(format!(
            "tool {name:?}: invalid name (1-128 of A-Z a-z 0-9 _ . -)"
        ));
    }
    #[derive(serde::Deserialize)]
    struct Schemas {
        #[serde(rename = "inputSchema")]
        input: Option<serde_json::Value>,
        #[serde(rename = "outputSchema")]
        output: Option<serde_json::Value>,
    }
    let Ok(schemas) = serde_json::from_str::<Schemas>(item.json.get()) else {
        return Some(format!("tool {name:?}: definition is not a JSON object"));
    };
    let object_schema = |s: &serde_json::Value| {
        s.as_object()
            .is_some_and(|o| o.get("type").and_then(|t| t.as_str()) == Some("object"))
    };
    if let Some(bad) = [&schemas.input, &schemas.output]
        .into_iter()
        .flatten()
        .find_map(bad_type)
    {
        return Some(format!(
            "tool {name:?}: schema uses unknown type {bad} (JSON Schema types: {})",
            SCHEMA_TYPES.join(", ")
        ));
    }
    match &schemas.input {
        Some(s) if object_schema(s) => {}
        _ => {
            return Some(format!(
                "tool {name:?}: inputSchema must be an object schema with \"type\": \"object\""
            ))
        }
    }
    if schemas.output.as_ref().is_some_and(|s| !object_schema(s)) {
        return Some(format!(
            "tool {name:?}: outputSchema must be an object schema with \"type\": \"object\""
        ));
    }
    None
}

/// The sidecar's own model of prompts and resources (the document has no fields for them yet).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Extras {
    /// Prefixed prompt name -> (server, definition).
    pub prompts: BTreeMap<String, (String, Arc<str>)>,
    /// Resource URI -> (server, definition); URIs are not prefixed.
    pub resources: BTreeMap<String, (String, Arc<str>)>,
    pub resource_templates: BTreeMap<String, (String, Arc<str>)>,
}

/// The result of one merge.
#[derive(Debug)]
pub struct Built {
    /// The document with `version` empty (the publisher assigns it) and `hash` set.
    pub document: GatewayConfig,
    pub hash: String,
    pub reports: Vec<ServerReport>,
    /// Collisions and other problems, one line each, for the log and the status page.
    pub problems: Vec<String>,
    pub extras: Extras,
    /// Fingerprints of the three lists, to tell which `list_changed` notifications to send.
    pub tools_fingerprint: String,
    pub prompts_fingerprint: String,
    pub resources_fingerprint: String,
}

pub fn build(settings: &Settings, health: &HashMap<String, Health>) -> Built {
    let mut servers = Vec::new();
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    let mut extras = Extras::default();
    // Prefix -> server that holds it (enabled, well-configured servers, healthy or not).
    let mut prefixes: HashMap<&str, &str> = HashMap::new();
    // Prefixed tool name -> server that publishes it.
    let mut tool_owner: HashMap<String, &str> = HashMap::new();
    let mut tools_fp = Sha256::new();
    let mut prompts_fp = Sha256::new();
    let mut resources_fp = Sha256::new();

    for spec in &settings.servers {
        let mut report = ServerReport {
            name: spec.name.clone(),
            state: "pending",
            detail: None,
            prefix: spec.prefix.clone(),
            tools: 0,
            prompts: 0,
            resources: 0,
            server_info: None,
            invalid_tools: Vec::new(),
        };
        if !spec.enabled {
            report.state = "disabled";
            reports.push(report);
            continue;
        }
        let headers = match &spec.headers {
            Ok(h) => h,
            Err(e) => {
                report.state = "misconfigured";
                report.detail = Some(e.clone());
                reports.push(report);
                continue;
            }
        };
        // Several servers may go without a prefix (their names must then not collide, which the
        // tool check below enforces); a non-empty prefix belongs to one server.
        if let Some(owner) = prefixes
            .get(spec.prefix.as_str())
            .filter(|_| !spec.prefix.is_empty())
        {
            let line = format!(
                "server {:?} refused: prefix {:?} is already used by server {owner:?}",
                spec.name, spec.prefix
            );
            report.state = "refused";
            report.detail = Some(line.clone());
            problems.push(line);
            reports.push(report);
            continue;
        }
        prefixes.insert(spec.prefix.as_str(), spec.name.as_str());

        let lists = match health.get(&spec.name) {
            Some(Health::Up(lists)) => lists,
            Some(Health::Down(reason)) => {
                report.state = "down";
                report.detail = Some(reason.clone());
                reports.push(report);
                continue;
            }
            Some(Health::Pending) | None => {
                reports.push(report);
                continue;
            }
        };
        report.server_info = lists.server_info.clone();

        // Tool hygiene: invalid tools are left out (or the server refused, when so configured).
        let defects: Vec<String> = lists.tools.iter().filter_map(tool_defect).collect();
        if !defects.is_empty() {
            if settings.invalid_tools == crate::settings::InvalidTools::RejectServer {
                let line = format!(
                    "server {:?} refused: {} invalid tool(s): {}",
                    spec.name,
                    defects.len(),
                    defects.join("; ")
                );
                report.state = "refused";
                report.detail = Some(line.clone());
                report.invalid_tools = defects;
                problems.push(line);
                reports.push(report);
                continue;
            }
            for d in &defects {
                problems.push(format!("server {:?}: {d}: left out", spec.name));
            }
            report.invalid_tools = defects;
        }
        let valid_tools: Vec<Item> = lists
            .tools
            .iter()
            .filter(|t| tool_defect(t).is_none())
            .map(|t| Item::new(t.key.clone(), t.json.clone()))
            .collect();
        let filtered;
        let lists: &ServerLists = if valid_tools.len() == lists.tools.len() {
            lists
        } else {
            filtered = ServerLists {
                tools: valid_tools,
                prompts: copy(&lists.prompts),
                resources: copy(&lists.resources),
                resource_templates: copy(&lists.resource_templates),
                capabilities: lists.capabilities.clone(),
                server_info: lists.server_info.clone(),
                protocol_versions: lists.protocol_versions.clone(),
            };
            &filtered
        };

        let prefixed: Vec<String> = lists
            .tools
            .iter()
            .map(|t| format!("{}{}", spec.prefix, t.key))
            .collect();
        let clash = prefixed
            .iter()
            .find_map(|name| tool_owner.get(name).map(|owner| (name, *owner)));
        if let Some((name, owner)) = clash {
            let line = format!(
                "server {:?} refused: tool {name:?} is already published by server {owner:?}",
                spec.name
            );
            report.state = "refused";
            report.detail = Some(line.clone());
            problems.push(line);
            reports.push(report);
            continue;
        }
        for name in prefixed {
            tool_owner.insert(name, spec.name.as_str());
        }

        report.state = "serving";
        report.tools = lists.tools.len();
        report.prompts = lists.prompts.len();
        report.resources = lists.resources.len() + lists.resource_templates.len();
        reports.push(report);

        feed(&mut tools_fp, &spec.name, &spec.prefix, &lists.tools);
        feed(&mut prompts_fp, &spec.name, &spec.prefix, &lists.prompts);
        feed(&mut resources_fp, &spec.name, "", &lists.resources);
        feed(&mut resources_fp, &spec.name, "", &lists.resource_templates);
        for p in &lists.prompts {
            let key = format!("{}{}", spec.prefix, p.key);
            if let Some((other, _)) = extras.prompts.get(&key) {
                problems.push(format!(
                    "prompt {key:?} of server {:?} hidden: server {other:?} has it",
                    spec.name
                ));
                continue;
            }
            extras
                .prompts
                .insert(key, (spec.name.clone(), Arc::from(p.json.get())));
        }
        for (list, map) in [
            (&lists.resources, &mut extras.resources),
            (&lists.resource_templates, &mut extras.resource_templates),
        ] {
            for r in list {
                if let Some((other, _)) = map.get(&r.key) {
                    problems.push(format!(
                        "resource {:?} of server {:?} hidden: server {other:?} has it",
                        r.key, spec.name
                    ));
                    continue;
                }
                map.insert(r.key.clone(), (spec.name.clone(), Arc::from(r.json.get())));
            }
        }

        servers.push(server_config(spec, headers.clone(), lists));
    }

    let mut document = GatewayConfig {
        version: String::new(),
        hash: String::new(),
        gateway: settings.gateway.0.clone(),
        session: SessionConfig {
            keys: settings.session_keys.0.clone(),
            ttl_seconds: settings.session_ttl_seconds,
        },
        limits: settings.limits.0.clone(),
        servers,
        grants: settings.grants.0.clone(),
        virtual_servers: settings.virtual_servers.0.clone(),
        oauth: settings.oauth.0.clone(),
        tool_overrides: settings.tool_overrides.0.clone(),
        validate_arguments: settings.validate_arguments,
        authorization_after_plugin: !settings.envoy.http_filters_after_plugin.is_empty(),
        tool_categories: settings.tool_categories.0.clone(),
    };
    let hash = content_hash(&document);
    document.hash = hash.clone();
    Built {
        document,
        hash,
        reports,
        problems,
        extras,
        tools_fingerprint: hex(&tools_fp.finalize()),
        prompts_fingerprint: hex(&prompts_fp.finalize()),
        resources_fingerprint: hex(&resources_fp.finalize()),
    }
}

/// Runs the plugin's own validation (`mcpgw_core::Catalog::build`) on the document these
/// settings make with every enabled, usable server serving and nothing discovered yet: what the
/// file alone decides (key id, TTL, limits, gateway, servers) is checked by the rules the plugin
/// applies, so a file the plugin would refuse is refused when it is loaded. The error is the
/// plugin's, naming the document's field.
pub fn check_document(settings: &Settings) -> Result<(), String> {
    let health = settings
        .servers
        .iter()
        .map(|s| (s.name.clone(), Health::Up(Arc::new(ServerLists::default()))))
        .collect();
    let mut document = build(settings, &health).document;
    for key in &mut document.session.keys {
        if key.secret.is_empty() {
            // Not loaded yet (`check` before `run` created the key file): any 32 bytes do.
            key.secret = PLACEHOLDER_SECRET.into();
        }
    }
    validate(document)
}

/// Base64 of 32 zero bytes.
const PLACEHOLDER_SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// The plugin's verdict on a document, as the sidecar reports it.
pub fn validate(document: GatewayConfig) -> Result<(), String> {
    mcpgw_core::Catalog::build(document)
        .map(drop)
        .map_err(|e| format!("the plugin would refuse the configuration document: {e}"))
}

fn copy(items: &[Item]) -> Vec<Item> {
    items
        .iter()
        .map(|i| Item::new(i.key.clone(), i.json.clone()))
        .collect()
}

fn server_config(
    spec: &ServerSpec,
    headers: Vec<mcpgw_core::config::HeaderValue>,
    lists: &ServerLists,
) -> ServerConfig {
    let json = |items: &[Item]| items.iter().map(|i| i.json.clone()).collect();
    ServerConfig {
        name: spec.name.clone(),
        prefix: spec.prefix.clone(),
        authority: spec.authority.clone(),
        path: spec.path.clone(),
        cluster: spec.cluster.clone(),
        host: Some(spec.host_header.clone()),
        headers,
        forward_headers: spec.forward_headers.clone(),
        tools: json(&lists.tools),
        prompts: json(&lists.prompts),
        resources: json(&lists.resources),
        resource_templates: json(&lists.resource_templates),
        capabilities: lists
            .capabilities
            .as_ref()
            .and_then(|c| serde_json::value::RawValue::from_string(c.clone()).ok()),
        protocol_versions: lists.protocol_versions.clone(),
    }
}

fn feed(hasher: &mut Sha256, server: &str, prefix: &str, items: &[Item]) {
    if items.is_empty() {
        return;
    }
    hasher.update(server.as_bytes());
    hasher.update([0]);
    hasher.update(prefix.as_bytes());
    hasher.update([0]);
    for item in items {
        hasher.update(item.json.get().as_bytes());
        hasher.update([0]);
    }
    hasher.update([1]);
}

/// Hex SHA-256 of the document's content: its JSON with `version` and `hash` blanked, so an
/// unchanged catalog hashes the same across sidecar restarts.
pub fn content_hash(document: &GatewayConfig) -> String {
    let mut content = document.clone();
    content.version.clear();
    content.hash.clear();
    let bytes = serde_json::to_vec(&content).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::settings::parse;

    fn settings(servers: &str) -> Settings {
        let text = format!("servers:\n{servers}");
        let mut s = parse(&text, Path::new("/tmp"), &|_| Some("tok".into())).unwrap();
        s.session_keys.0[0].secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        s
    }

    fn tool(name: &str) -> Item {
        let json = format!(r#"{{"name":"{name}","inputSchema":{{"type":"object"}}}}"#);
        Item::new(name, RawValue::from_string(json).unwrap())
    }

    fn up(tools: &[&str]) -> Health {
        Health::Up(Arc::new(ServerLists {
            tools: tools.iter().map(|t| tool(t)).collect(),
            ..ServerLists::default()
        }))
    }

    fn health(entries: &[(&str, Health)]) -> HashMap<String, Health> {
        entries
            .iter()
            .map(|(n, h)| ((*n).to_string(), h.clone()))
            .collect()
    }

    fn names(built: &Built) -> Vec<&str> {
        built
            .document
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }

    fn state<'a>(built: &'a Built, name: &str) -> (&'a str, Option<&'a str>) {
        let r = built.reports.iter().find(|r| r.name == name).unwrap();
        (r.state, r.detail.as_deref())
    }

    const TWO: &str = "  - {name: alpha, url: 'http://127.0.0.1:1/mcp'}\n  - {name: beta, url: 'https://b.example.com:8443/x/mcp', credential: {env: T}, forward_headers: [x-tenant]}\n";

    #[test]
    fn invalid_tools_are_left_out_or_refuse_their_server() {
        let lists = |extra: Vec<Item>| {
            let mut tools = vec![tool("ok")];
            tools.extend(extra);
            Health::Up(Arc::new(ServerLists {
                tools,
                ..ServerLists::default()
            }))
        };
        let bad = || {
            vec![
                tool("bad name"),
                Item::new("noschema", RawValue::from_string(r#"{"name":"noschema"}"#.into()).unwrap()),
                Item::new(
                    "arrayout",
                    RawValue::from_string(
                        r#"{"name":"arrayout","inputSchema":{"type":"object"},"outputSchema":{"type":"array"}}"#.into(),
                    )
                    .unwrap(),
                ),
            ]
        };
        let s = settings("  - {name: a, url: 'http://127.0.0.1:1/mcp'}\n");
        let b = build(&s, &health(&[("a", lists(bad()))]));
        assert_eq!(names(&b), ["a"]);
        assert_eq!(b.document.servers[0].tools.len(), 1, "only the valid tool");
        assert_eq!(state(&b, "a").0, "serving");
        let report = b.reports.iter().find(|r| r.name == "a").unwrap();
        assert_eq!(report.invalid_tools.len(), 3, "{:?}", report.invalid_tools);
        assert!(report.invalid_tools[0].contains("invalid name"));
        assert!(report.invalid_tools[1].contains("inputSchema"));
        assert!(report.invalid_tools[2].contains("outputSchema"));
        assert_eq!(b.problems.len(), 3);
        let int = Item::new(
            "int",
            RawValue::from_string(
                r#"{"name":"int","inputSchema":{"type":"object","properties":{"n":{"type":"int"},"e":{"enum":[{"type":"x"}]}}}}"#.into(),
            )
            .unwrap(),
        );
        assert!(tool_defect(&int).unwrap().contains("unknown type \"int\""));
        let named_type = Item::new(
            "t",
            RawValue::from_string(
                r#"{"name":"t","inputSchema":{"type":"object","properties":{"type":{"type":"string"}}}}"#.into(),
            )
            .unwrap(),
        );
        assert_eq!(
            tool_defect(&named_type),
            None,
            "a property may be called type"
        );

        let mut strict = s.clone();
        strict.invalid_tools = crate::settings::InvalidTools::RejectServer;
        let b = build(&strict, &health(&[("a", lists(bad()))]));
        assert!(names(&b).is_empty());
        assert_eq!(state(&b, "a").0, "refused");
        let b = build(&strict, &health(&[("a", lists(Vec::new()))]));
        assert_eq!(names(&b), ["a"], "a clean server is served");
    }

    #[test]
    fn healthy_servers_make_the_document() {
        let s = settings(TWO);
        let b = build(
            &s,
            &health(&[("alpha", up(&["echo", "add"])), ("beta", up(&["echo"]))]),
        );
        assert_eq!(names(&b), ["alpha", "beta"]);
        let beta = &b.document.servers[1];
        assert_eq!(beta.prefix, "beta_");
        assert_eq!(beta.authority, "beta.mcp.local");
        assert_eq!(beta.cluster, "mcpgw_srv_beta");
        assert_eq!(beta.host.as_deref(), Some("b.example.com:8443"));
        assert_eq!(beta.path, "/x/mcp");
        assert_eq!(beta.headers[0].value, "Bearer tok");
        assert_eq!(beta.forward_headers, ["x-tenant"]);
        assert!(b.document.servers[0].forward_headers.is_empty());
        assert_eq!(beta.tools.len(), 1);
        assert!(b.document.gateway.list_changed);
        assert_eq!(b.document.hash, b.hash);
        assert_eq!(b.hash.len(), 64);
        assert!(b.problems.is_empty());
        // The document round-trips through the plugin's parser.
        let text = serde_json::to_string(&b.document).unwrap();
        let back: GatewayConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back.servers.len(), 2);
        assert_eq!(back.servers[1].forward_headers, ["x-tenant"]);
        let catalog = mcpgw_core::Catalog::build(back).unwrap();
        assert!(catalog.forward_headers(1).unwrap().allows("x-tenant"));
        assert!(!catalog.forward_headers(0).unwrap().allows("x-tenant"));
    }

    #[test]
    fn down_and_pending_servers_leave_the_catalog() {
        let s = settings(TWO);
        let b = build(
            &s,
            &health(&[("alpha", Health::Down("connection refused".into()))]),
        );
        assert!(names(&b).is_empty());
        assert_eq!(state(&b, "alpha"), ("down", Some("connection refused")));
        assert_eq!(state(&b, "beta"), ("pending", None));
    }

    #[test]
    fn same_prefix_refuses_the_later_server() {
        let s = settings(
            "  - {name: one, url: 'http://127.0.0.1:1/mcp', prefix: p_}\n  - {name: two, url: 'http://127.0.0.1:2/mcp', prefix: p_}\n",
        );
        let b = build(&s, &health(&[("one", up(&["a"])), ("two", up(&["b"]))]));
        assert_eq!(names(&b), ["one"]);
        let (st, detail) = state(&b, "two");
        assert_eq!(st, "refused");
        assert!(detail
            .unwrap()
            .contains("prefix \"p_\" is already used by server \"one\""));
        assert_eq!(b.problems.len(), 1);
        // Even while the first is down, the second stays refused: no flapping ownership.
        let b = build(
            &s,
            &health(&[("one", Health::Down("x".into())), ("two", up(&["b"]))]),
        );
        assert!(names(&b).is_empty());
        assert_eq!(state(&b, "two").0, "refused");
    }

    #[test]
    fn several_servers_may_go_without_a_prefix_while_their_names_differ() {
        let s = settings(
            "  - {name: one, url: 'http://127.0.0.1:1/mcp', prefix: ''}\n  - {name: two, url: 'http://127.0.0.1:2/mcp', prefix: ''}\n  - {name: three, url: 'http://127.0.0.1:3/mcp', prefix: ''}\n",
        );
        let b = build(
            &s,
            &health(&[
                ("one", up(&["a"])),
                ("two", up(&["b"])),
                ("three", up(&["a"])),
            ]),
        );
        assert_eq!(names(&b), ["one", "two"]);
        let (st, detail) = state(&b, "three");
        assert_eq!(st, "refused");
        assert!(detail.unwrap().contains("tool \"a\" is already published"));
    }

    #[test]
    fn tool_name_collision_refuses_the_later_server_whole() {
        let s = settings(
            "  - {name: one, url: 'http://127.0.0.1:1/mcp', prefix: a_}\n  - {name: two, url: 'http://127.0.0.1:2/mcp', prefix: a_b_}\n",
        );
        let b = build(
            &s,
            &health(&[("one", up(&["b_x", "y"])), ("two", up(&["x", "z"]))]),
        );
        assert_eq!(names(&b), ["one"]);
        assert_eq!(b.document.servers[0].tools.len(), 2);
        let (st, detail) = state(&b, "two");
        assert_eq!(st, "refused");
        assert!(detail.unwrap().contains("\"a_b_x\""));
    }

    #[test]
    fn disabled_and_misconfigured_servers_are_reported() {
        let s = {
            let text = "servers:\n  - {name: off, url: 'http://h/', enabled: false}\n  - {name: nocred, url: 'http://h/', credential: {env: MISSING}}\n";
            parse(text, Path::new("/tmp"), &|_| None).unwrap()
        };
        let b = build(&s, &health(&[("off", up(&["a"])), ("nocred", up(&["a"]))]));
        assert!(names(&b).is_empty());
        assert_eq!(state(&b, "off").0, "disabled");
        let (st, detail) = state(&b, "nocred");
        assert_eq!(st, "misconfigured");
        assert!(detail.unwrap().contains("MISSING"));
    }

    #[test]
    fn hash_is_stable_and_tracks_content() {
        let s = settings(TWO);
        let h1 = health(&[("alpha", up(&["echo"]))]);
        let a = build(&s, &h1);
        let b = build(&s, &h1);
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.hash, content_hash(&a.document));
        let mut versioned = a.document.clone();
        versioned.version = "123.4".into();
        assert_eq!(content_hash(&versioned), a.hash, "version is not content");
        let c = build(&s, &health(&[("alpha", up(&["echo", "add"]))]));
        assert_ne!(a.hash, c.hash);
        assert_ne!(a.tools_fingerprint, c.tools_fingerprint);
        assert_eq!(a.prompts_fingerprint, c.prompts_fingerprint);
    }

    #[test]
    fn prompts_and_resources_fingerprints() {
        let s = settings(TWO);
        let lists = |prompt: &str| {
            Health::Up(Arc::new(ServerLists {
                tools: vec![tool("t")],
                prompts: vec![Item::new(
                    prompt,
                    RawValue::from_string(format!(r#"{{"name":"{prompt}"}}"#)).unwrap(),
                )],
                resources: vec![Item::new(
                    "file:///a",
                    RawValue::from_string(r#"{"uri":"file:///a","name":"a"}"#.into()).unwrap(),
                )],
                ..ServerLists::default()
            }))
        };
        let a = build(&s, &health(&[("alpha", lists("p1"))]));
        let b = build(&s, &health(&[("alpha", lists("p2"))]));
        assert_eq!(a.tools_fingerprint, b.tools_fingerprint);
        assert_ne!(a.prompts_fingerprint, b.prompts_fingerprint);
        assert_eq!(a.resources_fingerprint, b.resources_fingerprint);
        assert!(a.extras.prompts.contains_key("alpha_p1"));
        assert!(a.extras.resources.contains_key("file:///a"));
        // Prompts and resources travel in the document: a changed prompt is a new version.
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.document.servers[0].prompts.len(), 1);
        assert_eq!(a.document.servers[0].resources.len(), 1);
    }
}
