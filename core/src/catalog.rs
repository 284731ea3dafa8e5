//! Everything derived from one configuration version, built once and shared by every request:
//! the routing indexes (prefixed tool and prompt names, resource URIs -> server and upstream
//! name), the pre-serialized list pages, the `initialize` answer, and the session keys.
//!
//! Resource URIs of two servers can be identical, so a server with a prefix has its URIs mapped:
//! `mcpgw://<server>/<upstream uri>` (reversible by cutting the known head; the upstream URI is
//! kept verbatim, so templates stay templates). A server without a prefix keeps its URIs.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{
    check_forward_header, GatewayConfig, GatewayInfo, Limits, ServerConfig,
    DEFAULT_FORWARD_HEADERS, MIN_MAX_JSON_DEPTH,
};
use crate::error::GatewayError;
use crate::jsonrpc::{json_string, span_in, splice};
use crate::session::SessionKeys;

/// Scheme of mapped resource URIs.
pub const MAPPED_URI_SCHEME: &str = "mcpgw://";

/// Where a prefixed tool or prompt name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub server: usize,
    /// The name upstream, already JSON-encoded (ready to splice into a body).
    pub upstream_name_json: String,
    pub upstream_name: String,
    /// A tool's `x-mcp-annotation-hints` (see [`annotation_hints`]); `None` for prompts.
    pub hints: Option<String>,
    /// Arguments pinned by configuration (name, JSON value), injected into every call.
    pub pins: Vec<(String, String)>,
    /// The advertised `inputSchema`, compiled, when the document asks for argument validation.
    pub schema: Option<Box<crate::schema::Schema>>,
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
        // A score of short names: comparing lengths first rules out almost all at once.
        self.0
            .iter()
            .any(|n| n.len() == name.len() && n.as_str() == name)
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// A tool's route (the historical name).
pub type ToolRoute = Route;

/// One listed definition (see [`Catalog::page_for`]).
#[derive(Debug)]
struct Listed {
    definition: String,
    server: usize,
    /// Unprefixed name, or upstream URI / URI template.
    granted_as: String,
    /// The name clients see (prefixed), or the URI as listed.
    shown_as: String,
}

/// The kinds of list the gateway serves from its catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    /// The result member holding the items.
    /// The capability kind a grant names for this list.
    fn granted_kind(self) -> crate::grant::Kind {
        match self {
            ListKind::Tools => crate::grant::Kind::Tools,
            ListKind::Prompts => crate::grant::Kind::Prompts,
            ListKind::Resources | ListKind::ResourceTemplates => crate::grant::Kind::Resources,
        }
    }

    fn member(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }
}

/// What the aggregate can do, derived from the upstreams' own capabilities.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub prompts: bool,
    pub resources: bool,
    pub subscribe: bool,
    pub completions: bool,
    pub logging: bool,
}

#[derive(Debug)]
pub struct Catalog {
    pub version: String,
    pub gateway: GatewayInfo,
    pub limits: Limits,
    pub servers: Vec<ServerConfig>,
    pub keys: SessionKeys,
    pub capabilities: Capabilities,
    /// Per server (same index): what it can do.
    pub server_capabilities: Vec<Capabilities>,
    /// Per server (same index as `servers`): the client headers forwarded to it.
    forward_headers: Vec<ForwardHeaders>,
    tools: HashMap<String, Route>,
    prompts: HashMap<String, Route>,
    /// Unmapped resource URIs (servers without a prefix) -> server.
    plain_uris: HashMap<String, usize>,
    /// Servers without a prefix that serve resources, in order: where an unmapped URI that no
    /// list names (a template's expansion) goes.
    plain_servers: Vec<usize>,
    /// List results, one JSON text per page, per kind.
    pages: [Vec<String>; 4],
    /// Every listed definition per kind (as the pages hold them), with its server and the name
    /// (or URI, URI template) a grant names: to build the pages of a narrowed list.
    listed: [Vec<Listed>; 4],
    /// Verifier of `x-mcp-authorized` (`grants` of the document).
    pub grants: Option<crate::grant::Grants>,
    /// Virtual servers by name.
    pub virtual_servers: HashMap<String, crate::grant::VirtualServer>,
    /// Client authentication (`oauth` of the document).
    pub identity: Option<crate::identity::Identity>,
    /// `authorization_after_plugin` of the document: no routed call inside a batch.
    pub authorization_after_plugin: bool,
    /// The `initialize` result after `"protocolVersion":"…",`.
    initialize_tail: String,
    /// Problems that did not reject the document (shadowed names), for the log.
    pub warnings: Vec<String>,
    /// `tool_categories` of the document: what `discover_tools` offers besides servers.
    pub tool_categories: Vec<crate::config::ToolCategory>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
    /// Read leniently (see [`annotation_hints`]): a malformed value counts as absent.
    #[serde(default, borrow)]
    annotations: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "inputSchema")]
    input_schema: Option<&'a RawValue>,
}

/// The four behaviour hints of a tool's `annotations`, with MCP's defaults for those absent.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Hints {
    #[serde(default)]
    read_only_hint: Option<bool>,
    #[serde(default)]
    destructive_hint: Option<bool>,
    #[serde(default)]
    idempotent_hint: Option<bool>,
    #[serde(default)]
    open_world_hint: Option<bool>,
}

/// `x-mcp-annotation-hints` of a tool: `readOnly=…,destructive=…,idempotent=…,openWorld=…` from
/// its `annotations`, MCP's defaults (false, true, false, true) for hints absent or malformed, so
/// an authorization filter can match one fixed shape.
pub fn annotation_hints(annotations: Option<&RawValue>) -> String {
    let hints: Hints = annotations
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    format!(
        "readOnly={},destructive={},idempotent={},openWorld={}",
        hints.read_only_hint.unwrap_or(false),
        hints.destructive_hint.unwrap_or(true),
        hints.idempotent_hint.unwrap_or(false),
        hints.open_world_hint.unwrap_or(true),
    )
}

#[derive(Deserialize)]
struct Located<'a> {
    #[serde(default, borrow)]
    uri: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "uriTemplate")]
    uri_template: Option<&'a RawValue>,
}

/// The few capability members the gateway reads.
#[derive(Deserialize, Default)]
struct UpstreamCapabilities {
    #[serde(default)]
    prompts: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    resources: Option<ResourceCapability>,
    #[serde(default)]
    completions: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    logging: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct ResourceCapability {
    #[serde(default)]
    subscribe: Option<bool>,
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
            grants,
            virtual_servers,
            oauth,
            tool_overrides,
            validate_arguments,
            authorization_after_plugin,
            tool_categories,
        } = config;
        let mut warnings = Vec::new();
        for (i, o) in tool_overrides.iter().enumerate() {
            // A server that is down (or not yet discovered) is not in the document: its
            // overrides wait for it, they do not refuse the document.
            if !servers.iter().any(|s| s.name == o.server) {
                warnings.push(format!(
                    "tool_overrides[{i}]: no server {:?} in this document",
                    o.server
                ));
            }
            if o.tool == "*" && (o.name.is_some() || o.description.is_some()) {
                return Err(format!(
                    "tool_overrides[{i}]: tool \"*\" takes only hidden and pin"
                ));
            }
            if o.name.as_deref().is_some_and(str::is_empty) {
                return Err(format!("tool_overrides[{i}].name: must not be empty"));
            }
        }
        let identity = oauth
            .as_ref()
            .map(crate::identity::Identity::new)
            .transpose()?;
        let grants = grants.as_ref().map(crate::grant::Grants::new).transpose()?;
        gateway.validate()?;
        if limits.page_size == 0 {
            return Err("limits.page_size: must be positive".into());
        }
        if limits.max_json_depth < MIN_MAX_JSON_DEPTH {
            return Err(format!(
                "limits.max_json_depth: must be at least {MIN_MAX_JSON_DEPTH}, got {}",
                limits.max_json_depth
            ));
        }
        if limits.upstream_session_slots == 0 {
            return Err("limits.upstream_session_slots: must be positive".into());
        }
        if limits.max_session_opens_per_second == 0 {
            return Err("limits.max_session_opens_per_second: must be positive".into());
        }
        let keys = SessionKeys::new(&session)?;
        let mut tools = Named::index(
            &servers,
            "tools",
            |s| &s.tools,
            &tool_overrides,
            validate_arguments,
            &mut warnings,
        )?;
        let mut prompts = Named::index(
            &servers,
            "prompts",
            |s| &s.prompts,
            &[],
            false,
            &mut warnings,
        )?;
        let mut resources = Vec::new();
        let mut templates = Vec::new();
        let mut plain_uris = HashMap::new();
        let mut plain_servers = Vec::new();
        let mut server_capabilities = Vec::with_capacity(servers.len());
        let mut capabilities = Capabilities::default();
        for (index, server) in servers.iter().enumerate() {
            validate_server(index, server)?;
            if servers
                .iter()
                .take(index)
                .any(|s| s.name.eq_ignore_ascii_case(&server.name))
            {
                return Err(format!(
                    "servers[{index}].name: duplicate server name {:?} (names are compared case-insensitively)",
                    server.name
                ));
            }
            let caps = server_caps(index, server)?;
            capabilities.prompts |= caps.prompts;
            capabilities.resources |= caps.resources;
            capabilities.subscribe |= caps.subscribe;
            capabilities.completions |= caps.completions;
            capabilities.logging |= caps.logging;
            server_capabilities.push(caps);
            let mapped = !server.prefix.is_empty();
            if !mapped && caps.resources {
                plain_servers.push(index);
            }
            for (list, field, out) in [
                (&server.resources, "resources", &mut resources),
                (
                    &server.resource_templates,
                    "resource_templates",
                    &mut templates,
                ),
            ] {
                for (r, definition) in list.iter().enumerate() {
                    let at = || format!("servers[{index}].{field}[{r}]");
                    let text = definition.get();
                    let located: Located =
                        serde_json::from_str(text).map_err(|e| format!("{}: {e}", at()))?;
                    let raw = located
                        .uri
                        .or(located.uri_template)
                        .ok_or_else(|| format!("{}: needs uri or uriTemplate", at()))?;
                    let uri: String = serde_json::from_str(raw.get())
                        .map_err(|_| format!("{}: the URI must be a string", at()))?;
                    if !mapped {
                        if located.uri.is_some() {
                            if let Some(owner) = plain_uris.insert(uri.clone(), index) {
                                if owner != index {
                                    warnings.push(format!(
                                        "resource {uri:?} of server {:?} is also listed by server {:?}; the first serves it",
                                        server.name,
                                        servers.get(owner).map_or("?", |s| s.name.as_str())
                                    ));
                                    plain_uris.insert(uri.clone(), owner);
                                }
                            }
                        }
                        out.push(Listed {
                            definition: text.to_owned(),
                            server: index,
                            shown_as: uri.clone(),
                            granted_as: uri,
                        });
                        continue;
                    }
                    let span =
                        span_in(text, raw.get()).ok_or_else(|| format!("{}: bad span", at()))?;
                    let mapped_uri = map_uri(&server.name, &uri);
                    out.push(Listed {
                        definition: splice(text, span, &json_string(&mapped_uri))
                            .ok_or_else(|| format!("{}: bad span", at()))?,
                        server: index,
                        shown_as: mapped_uri,
                        granted_as: uri,
                    });
                }
            }
        }
        let mut virtual_index = HashMap::new();
        for (i, config) in virtual_servers.iter().enumerate() {
            let known = |kind: crate::grant::Kind, name: &str| match kind {
                crate::grant::Kind::Tools => tools.routes.contains_key(name),
                crate::grant::Kind::Prompts => prompts.routes.contains_key(name),
                crate::grant::Kind::Resources => true,
            };
            let server = crate::grant::VirtualServer::new(i, config, &known, &mut warnings)?;
            if virtual_index.insert(config.name.clone(), server).is_some() {
                return Err(format!(
                    "virtual_servers[{i}].name: duplicate virtual server {:?}",
                    config.name
                ));
            }
        }
        let listed = [
            std::mem::take(&mut tools.listed),
            std::mem::take(&mut prompts.listed),
            resources,
            templates,
        ];
        let [t, p, r, rt] = &listed;
        let pages = [
            paginate(ListKind::Tools, t.iter(), limits.page_size),
            paginate(ListKind::Prompts, p.iter(), limits.page_size),
            paginate(ListKind::Resources, r.iter(), limits.page_size),
            paginate(ListKind::ResourceTemplates, rt.iter(), limits.page_size),
        ];
        let initialize_tail = initialize_tail(&gateway, capabilities);
        let forward_headers = servers.iter().map(ForwardHeaders::for_server).collect();
        Ok(Self {
            version,
            gateway,
            limits,
            servers,
            keys,
            capabilities,
            server_capabilities,
            forward_headers,
            tools: std::mem::take(&mut tools.routes),
            prompts: std::mem::take(&mut prompts.routes),
            plain_uris,
            plain_servers,
            pages,
            listed,
            grants,
            virtual_servers: virtual_index,
            identity,
            authorization_after_plugin,
            initialize_tail,
            warnings,
            tool_categories,
        })
    }

    /// The route of a prefixed tool name.
    pub fn route(&self, prefixed_name: &str) -> Option<(&Route, &ServerConfig)> {
        let route = self.tools.get(prefixed_name)?;
        let server = self.servers.get(route.server)?;
        Some((route, server))
    }

    /// The route of a prefixed prompt name.
    pub fn prompt_route(&self, prefixed_name: &str) -> Option<(&Route, &ServerConfig)> {
        let route = self.prompts.get(prefixed_name)?;
        let server = self.servers.get(route.server)?;
        Some((route, server))
    }

    /// The server of a resource URI as clients see it, and the URI upstream (`None`: unchanged).
    pub fn resource_route(&self, uri: &str) -> Option<(usize, Option<String>)> {
        if let Some(rest) = uri.strip_prefix(MAPPED_URI_SCHEME) {
            let (name, upstream) = rest.split_once('/')?;
            let index = self
                .servers
                .iter()
                .position(|s| s.name == name && !s.prefix.is_empty())?;
            return Some((index, Some(upstream.to_owned())));
        }
        let index = match self.plain_uris.get(uri) {
            Some(index) => *index,
            None => *self.plain_servers.first()?,
        };
        Some((index, None))
    }

    /// The URI clients see for a resource URI of `server` (for notifications).
    pub fn client_uri<'u>(&self, server: usize, upstream_uri: &'u str) -> Cow<'u, str> {
        match self.servers.get(server) {
            Some(s) if !s.prefix.is_empty() => Cow::Owned(map_uri(&s.name, upstream_uri)),
            _ => Cow::Borrowed(upstream_uri),
        }
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
        self.page(ListKind::Tools, cursor)
    }

    /// A list result for a cursor (`None`: the first page).
    pub fn page(&self, kind: ListKind, cursor: Option<&str>) -> Result<&str, GatewayError> {
        let pages = match kind {
            ListKind::Tools => &self.pages[0],
            ListKind::Prompts => &self.pages[1],
            ListKind::Resources => &self.pages[2],
            ListKind::ResourceTemplates => &self.pages[3],
        };
        let index = page_index(kind, cursor, pages.len())?;
        pages
            .get(index)
            .map(String::as_str)
            .ok_or_else(unknown_cursor)
    }

    /// A page of a list as `access` narrows it: the pre-built page when it allows everything,
    /// else built from the definitions it shows (same page size, same cursors).
    pub fn page_for(
        &self,
        kind: ListKind,
        cursor: Option<&str>,
        access: &crate::grant::Access<'_>,
    ) -> Result<Cow<'_, str>, GatewayError> {
        if access.is_all() {
            return self.page(kind, cursor).map(Cow::Borrowed);
        }
        let listed = match kind {
            ListKind::Tools => &self.listed[0],
            ListKind::Prompts => &self.listed[1],
            ListKind::Resources => &self.listed[2],
            ListKind::ResourceTemplates => &self.listed[3],
        };
        let granted = kind.granted_kind();
        let allowed = listed.iter().filter(|item| {
            self.servers
                .get(item.server)
                .is_some_and(|s| access.shows(granted, &s.name, &item.granted_as, &item.shown_as))
        });
        let mut pages = paginate(kind, allowed, self.limits.page_size);
        let index = page_index(kind, cursor, pages.len())?;
        if index >= pages.len() {
            return Err(unknown_cursor());
        }
        Ok(Cow::Owned(pages.swap_remove(index)))
    }

    /// Whether `tools/list` offers the meta-tools instead of the catalog
    /// (`limits.meta_tools_above`, docs/governance.md "Tool discovery").
    pub fn meta_tools_active(&self) -> bool {
        let above = self.limits.meta_tools_above;
        above > 0 && self.tools.len() > above
    }

    /// The tools `access` shows, with their server's config.
    fn shown_tools<'s>(
        &'s self,
        access: &'s crate::grant::Access<'_>,
    ) -> impl Iterator<Item = (&'s Listed, &'s ServerConfig)> + 's {
        self.listed[0].iter().filter_map(move |item| {
            let server = self.servers.get(item.server)?;
            access
                .shows(
                    crate::grant::Kind::Tools,
                    &server.name,
                    &item.granted_as,
                    &item.shown_as,
                )
                .then_some((item, server))
        })
    }

    /// The `tools/list` result while the meta-tools are active: the two meta-tools, then the
    /// tools of the session's scope that `access` shows (none before a selection).
    pub fn meta_tools_page(
        &self,
        scope: Option<&[String]>,
        access: &crate::grant::Access<'_>,
    ) -> String {
        let mut page = String::from("{\"tools\":[");
        page.push_str(META_TOOLS);
        if let Some(scope) = scope {
            for (item, _) in self.shown_tools(access) {
                if scope.contains(&item.shown_as) {
                    page.push(',');
                    page.push_str(&item.definition);
                }
            }
        }
        page.push_str("]}");
        page
    }

    /// The names of `names` that are no tool `access` shows.
    pub fn unknown_tools(
        &self,
        names: &[String],
        access: &crate::grant::Access<'_>,
    ) -> Vec<String> {
        names
            .iter()
            .filter(|name| {
                !self
                    .shown_tools(access)
                    .any(|(item, _)| item.shown_as == **name)
            })
            .cloned()
            .collect()
    }

    /// What `discover_tools` answers (its structured content): the servers with the number of
    /// tools `access` shows of each, or, for one `server`, its tools with one-line descriptions.
    pub fn discover(
        &self,
        server: Option<&str>,
        category: Option<&str>,
        access: &crate::grant::Access<'_>,
    ) -> Result<serde_json::Value, GatewayError> {
        use serde_json::json;
        if let Some(name) = category {
            let config = self
                .tool_categories
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    GatewayError::invalid_params(format!(
                        "Invalid params: unknown category {}",
                        json_string(name)
                    ))
                })?;
            let tools: Vec<serde_json::Value> = self
                .shown_tools(access)
                .filter(|(item, _)| config.tools.contains(&item.shown_as))
                .map(|(item, _)| {
                    json!({"name": item.shown_as, "description": one_line(&item.definition)})
                })
                .collect();
            return Ok(
                json!({"category": name, "description": config.description, "tools": tools}),
            );
        }
        match server {
            None => {
                let servers: Vec<serde_json::Value> = self
                    .servers
                    .iter()
                    .enumerate()
                    .filter_map(|(index, config)| {
                        let count = self
                            .shown_tools(access)
                            .filter(|(item, _)| item.server == index)
                            .count();
                        (count > 0).then(|| {
                            json!({"name": config.name, "prefix": config.prefix, "tools": count})
                        })
                    })
                    .collect();
                let categories: Vec<serde_json::Value> = self
                    .tool_categories
                    .iter()
                    .filter_map(|c| {
                        let count = self
                            .shown_tools(access)
                            .filter(|(item, _)| c.tools.contains(&item.shown_as))
                            .count();
                        (count > 0).then(|| {
                            json!({"name": c.name, "description": c.description, "tools": count})
                        })
                    })
                    .collect();
                if !categories.is_empty() {
                    return Ok(json!({
                        "servers": servers,
                        "categories": categories,
                        "hint": "call discover_tools with {\"category\": name} (or {\"server\": name}) to see its tools, then select_tools with the names you need"
                    }));
                }
                Ok(json!({
                    "servers": servers,
                    "hint": "call discover_tools with {\"server\": name} to see its tools, then select_tools with the names you need"
                }))
            }
            Some(name) => {
                let tools: Vec<serde_json::Value> = self
                    .shown_tools(access)
                    .filter(|(_, config)| config.name == name)
                    .map(|(item, _)| {
                        json!({"name": item.shown_as, "description": one_line(&item.definition)})
                    })
                    .collect();
                if tools.is_empty() {
                    return Err(GatewayError::invalid_params(format!(
                        "Invalid params: unknown server {}",
                        json_string(name)
                    )));
                }
                Ok(json!({"server": name, "tools": tools}))
            }
        }
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

/// A prefixed-name index (tools or prompts) and its listed definitions, renamed.
struct NameIndex {
    routes: HashMap<String, Route>,
    listed: Vec<Listed>,
}

impl<'a> Named<'a> {
    fn index(
        servers: &[ServerConfig],
        field: &str,
        list: impl Fn(&ServerConfig) -> &Vec<Box<RawValue>>,
        overrides: &[crate::curation::ToolOverride],
        validate: bool,
        warnings: &mut Vec<String>,
    ) -> Result<NameIndex, String> {
        let mut routes: HashMap<String, Route> = HashMap::new();
        let mut listed = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            for (t, definition) in list(server).iter().enumerate() {
                let original = definition.get();
                let parsed: Named = serde_json::from_str(original)
                    .map_err(|e| format!("servers[{index}].{field}[{t}]: {e}"))?;
                let upstream_name: String = serde_json::from_str(parsed.name.get())
                    .map_err(|_| format!("servers[{index}].{field}[{t}].name: must be a string"))?;
                let curated = crate::curation::curate(
                    overrides,
                    &server.name,
                    &upstream_name,
                    original,
                    &format!("servers[{index}].{field}[{t}]"),
                )?
                .unwrap_or_default();
                if curated.hidden {
                    continue;
                }
                let text = curated.definition.as_deref().unwrap_or(original);
                let parsed: Named = serde_json::from_str(text)
                    .map_err(|e| format!("servers[{index}].{field}[{t}]: {e}"))?;
                let prefixed = curated
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}{}", server.prefix, upstream_name));
                if let Some(existing) = routes.get(&prefixed) {
                    let owner = servers
                        .get(existing.server)
                        .map_or("?", |s| s.name.as_str());
                    warnings.push(format!(
                        "{} {prefixed:?} of server {:?} collides with server {owner:?}; dropped",
                        field.trim_end_matches('s'),
                        server.name
                    ));
                    continue;
                }
                let span = span_in(text, parsed.name.get())
                    .ok_or_else(|| format!("servers[{index}].{field}[{t}]: bad name span"))?;
                let renamed = splice(text, span, &json_string(&prefixed))
                    .ok_or_else(|| format!("servers[{index}].{field}[{t}]: bad name span"))?;
                listed.push(Listed {
                    definition: renamed,
                    server: index,
                    granted_as: upstream_name.clone(),
                    shown_as: prefixed.clone(),
                });
                routes.insert(
                    prefixed,
                    Route {
                        server: index,
                        upstream_name_json: parsed.name.get().to_owned(),
                        upstream_name,
                        hints: (field == "tools").then(|| annotation_hints(parsed.annotations)),
                        pins: curated.pins,
                        schema: parsed
                            .input_schema
                            .filter(|_| validate)
                            .map(|s| Box::new(crate::schema::Schema::compile(s.get()))),
                    },
                );
            }
        }
        Ok(NameIndex { routes, listed })
    }
}

fn map_uri(server: &str, upstream_uri: &str) -> String {
    format!("{MAPPED_URI_SCHEME}{server}/{upstream_uri}")
}

/// What a server can do: its declared capabilities, or (for documents without them) what it lists.
fn server_caps(index: usize, server: &ServerConfig) -> Result<Capabilities, String> {
    let declared: UpstreamCapabilities = match &server.capabilities {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| format!("servers[{index}].capabilities: {e}"))?,
        None => UpstreamCapabilities::default(),
    };
    let resources = declared.resources.is_some()
        || !server.resources.is_empty()
        || !server.resource_templates.is_empty();
    Ok(Capabilities {
        prompts: declared.prompts.is_some() || !server.prompts.is_empty(),
        resources,
        subscribe: declared
            .resources
            .as_ref()
            .and_then(|r| r.subscribe)
            .unwrap_or(false),
        completions: declared.completions.is_some(),
        logging: declared.logging.is_some(),
    })
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

/// The two meta-tools of tool discovery, as `tools/list` lists them.
const META_TOOLS: &str = concat!(
    r#"{"name":"discover_tools","description":"Lists the servers of this gateway with their tool counts; with `server`, that server's tools with one-line descriptions. Then call select_tools.","inputSchema":{"type":"object","properties":{"server":{"type":"string","description":"A server name from discover_tools"},"category":{"type":"string","description":"A category name from discover_tools"}}}},"#,
    r#"{"name":"select_tools","description":"Makes exactly these tools available in this session (all or nothing); tools/list then shows them.","inputSchema":{"type":"object","properties":{"tools":{"type":"array","items":{"type":"string"},"description":"Tool names as discover_tools shows them"}},"required":["tools"]}}"#
);

/// Name of the meta-tool that lists servers and tools.
pub const DISCOVER_TOOLS: &str = "discover_tools";
/// Name of the meta-tool that sets the session's scope.
pub const SELECT_TOOLS: &str = "select_tools";

/// The first line of a definition's `description`, at most 160 characters.
fn one_line(definition: &str) -> String {
    #[derive(Deserialize)]
    struct Described {
        #[serde(default)]
        description: Option<String>,
    }
    let description = serde_json::from_str::<Described>(definition)
        .ok()
        .and_then(|d| d.description)
        .unwrap_or_default();
    description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

/// The page a list cursor names (none: the first), among `count` pages of `kind`.
fn page_index(kind: ListKind, cursor: Option<&str>, count: usize) -> Result<usize, GatewayError> {
    match cursor {
        None => Ok(0),
        Some(cursor) => decode_cursor(kind, cursor)
            .filter(|i| *i > 0 && *i < count)
            .ok_or_else(unknown_cursor),
    }
}

fn unknown_cursor() -> GatewayError {
    GatewayError::invalid_params("Invalid params: unknown cursor")
}

fn paginate<'a>(
    kind: ListKind,
    listed: impl Iterator<Item = &'a Listed>,
    page_size: usize,
) -> Vec<String> {
    let member = kind.member();
    let definitions: Vec<&str> = listed.map(|l| l.definition.as_str()).collect();
    let chunks: Vec<&[&str]> = definitions.chunks(page_size).collect();
    if chunks.is_empty() {
        return vec![format!("{{\"{member}\":[]}}")];
    }
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut page =
                String::with_capacity(chunk.iter().map(|d| d.len() + 1).sum::<usize>() + 48);
            page.push_str("{\"");
            page.push_str(member);
            page.push_str("\":[");
            page.push_str(&chunk.join(","));
            page.push(']');
            if i < last {
                page.push_str(",\"nextCursor\":");
                page.push_str(&json_string(&encode_cursor(kind, i + 1)));
            }
            page.push('}');
            page
        })
        .collect()
}

/// Opaque to clients; names its list so a cursor of one list is refused by another.
fn encode_cursor(kind: ListKind, page: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{page}", kind.member()))
}

fn decode_cursor(kind: ListKind, cursor: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix(kind.member())?
        .strip_prefix(':')?
        .parse()
        .ok()
}

fn initialize_tail(gateway: &GatewayInfo, caps: Capabilities) -> String {
    let list_changed = gateway.list_changed;
    let mut capabilities = format!("{{\"tools\":{{\"listChanged\":{list_changed}}}");
    if caps.prompts {
        capabilities.push_str(&format!(",\"prompts\":{{\"listChanged\":{list_changed}}}"));
    }
    if caps.resources {
        capabilities.push_str(&format!(
            ",\"resources\":{{\"listChanged\":{list_changed},\"subscribe\":{}}}",
            caps.subscribe
        ));
    }
    if caps.completions {
        capabilities.push_str(",\"completions\":{}");
    }
    if caps.logging {
        capabilities.push_str(",\"logging\":{}");
    }
    capabilities.push('}');
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
    fn the_json_depth_limit_defaults_to_64_and_must_allow_a_tool_call() {
        let catalog = Catalog::build(document(serde_json::json!([]))).unwrap();
        assert_eq!(catalog.limits.max_json_depth, 64);
        let mut config = document(serde_json::json!([]));
        config.limits.max_json_depth = 2;
        let err = Catalog::build(config).unwrap_err();
        assert!(err.starts_with("limits.max_json_depth"), "{err}");
        let mut config = document(serde_json::json!([]));
        config.limits.max_json_depth = 3;
        assert!(Catalog::build(config).is_ok());
    }

    #[test]
    fn empty_catalog_lists_nothing_and_cursors_are_checked() {
        let catalog = Catalog::build(document(serde_json::json!([]))).unwrap();
        assert_eq!(catalog.tools_page(None).unwrap(), "{\"tools\":[]}");
        assert!(catalog.tools_page(Some("")).is_err());
        assert!(catalog
            .tools_page(Some(&encode_cursor(ListKind::Tools, 0)))
            .is_err());
        let init: serde_json::Value =
            serde_json::from_str(&catalog.initialize_result("2025-06-18")).unwrap();
        assert_eq!(init["serverInfo"]["name"], "mcpgw");
    }

    #[test]
    fn prompts_and_resources_are_federated_with_mapped_uris() {
        let a = serde_json::json!({"name": "a", "prefix": "a_", "authority": "a.local", "cluster": "a",
            "prompts": [{"name": "greet", "arguments": [{"name": "who"}]}],
            "resources": [{"uri": "test://static-text", "name": "t"}],
            "resource_templates": [{"uriTemplate": "test://template/{id}/data", "name": "tpl"}],
            "capabilities": {"resources": {"subscribe": true}, "prompts": {}, "completions": {}}});
        let b = serde_json::json!({"name": "b", "prefix": "", "authority": "b.local", "cluster": "b",
            "prompts": [{"name": "greet"}],
            "resources": [{"uri": "test://static-text", "name": "t"}],
            "capabilities": {"resources": {}, "logging": {}}});
        let catalog = Catalog::build(document(serde_json::json!([a, b]))).unwrap();
        let (route, server) = catalog.prompt_route("a_greet").unwrap();
        assert_eq!(
            (server.name.as_str(), route.upstream_name.as_str()),
            ("a", "greet")
        );
        assert_eq!(catalog.prompt_route("greet").unwrap().1.name, "b");
        let page: serde_json::Value =
            serde_json::from_str(catalog.page(ListKind::Resources, None).unwrap()).unwrap();
        let uris: Vec<&str> = page["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uri"].as_str().unwrap())
            .collect();
        assert_eq!(uris, ["mcpgw://a/test://static-text", "test://static-text"]);
        let page: serde_json::Value =
            serde_json::from_str(catalog.page(ListKind::ResourceTemplates, None).unwrap()).unwrap();
        assert_eq!(
            page["resourceTemplates"][0]["uriTemplate"],
            "mcpgw://a/test://template/{id}/data"
        );
        // Reversible: the mapped URI goes to its server with the upstream URI restored.
        assert_eq!(
            catalog.resource_route("mcpgw://a/test://template/7/data"),
            Some((0, Some("test://template/7/data".into())))
        );
        assert_eq!(
            catalog.resource_route("test://static-text"),
            Some((1, None))
        );
        assert_eq!(catalog.resource_route("mcpgw://b/test://static-text"), None);
        assert_eq!(catalog.client_uri(0, "test://x"), "mcpgw://a/test://x");
        assert_eq!(catalog.client_uri(1, "test://x"), "test://x");
        let init: serde_json::Value =
            serde_json::from_str(&catalog.initialize_result("2025-11-25")).unwrap();
        let caps = &init["capabilities"];
        assert_eq!(caps["resources"]["subscribe"], true);
        assert!(caps["prompts"].is_object() && caps["completions"].is_object());
        assert!(caps["logging"].is_object());
    }

    #[test]
    fn a_cursor_belongs_to_its_list() {
        let tools: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        let tools: Vec<&str> = tools.iter().map(String::as_str).collect();
        let mut config = document(serde_json::json!([server("a", "a_", &tools)]));
        config.limits.page_size = 2;
        let catalog = Catalog::build(config).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(catalog.tools_page(None).unwrap()).unwrap();
        let cursor = first["nextCursor"].as_str().unwrap();
        assert!(catalog.tools_page(Some(cursor)).is_ok());
        assert!(catalog.page(ListKind::Prompts, Some(cursor)).is_err());
        let prompts: serde_json::Value =
            serde_json::from_str(catalog.page(ListKind::Prompts, None).unwrap()).unwrap();
        assert_eq!(prompts, serde_json::json!({"prompts": []}));
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
}
