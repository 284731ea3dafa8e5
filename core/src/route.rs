//! Where a routed request goes: the server that owns the name or URI it names, and the one value
//! of its body that changes on the way (a prefixed name, a mapped URI), spliced byte for byte so
//! the rest of the body (arguments, `_meta`) is forwarded exactly as the client sent it.

use std::rc::Rc;

use serde_json::value::RawValue;

use crate::catalog::{Catalog, Route};
use crate::error::GatewayError;
use crate::jsonrpc::{self, Params};
use crate::session::Session;

/// A request being routed to one upstream.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) server: usize,
    /// The MCP method, sent upstream as `x-mcp-method` (none for the client's answer to an
    /// upstream's request).
    pub(crate) method: Option<&'static str>,
    /// The tool's name upstream (`tools/call` only), sent as `x-mcp-toolname`.
    pub(crate) tool: Option<String>,
    /// The name (or URI) the upstream knows the target by: `Mcp-Name` of a stateless call.
    pub(crate) name: Option<String>,
    /// The rewritten body (kept to retry once when a cached upstream session has expired).
    pub(crate) body: Vec<u8>,
    /// The body buffered by Envoy, which the rewrite replaces.
    pub(crate) received_len: usize,
    pub(crate) session: Rc<Session>,
}

/// Where a routed request goes, and the one value of its body that changes on the way (a
/// prefixed name, a mapped URI).
pub(crate) struct Destination {
    server: usize,
    method: &'static str,
    rewrite: Option<(std::ops::Range<usize>, String)>,
    tool: Option<String>,
    name: Option<String>,
}

impl Destination {
    pub(crate) fn of(
        catalog: &Catalog,
        text: &str,
        method: &str,
        params: &Params<'_>,
    ) -> Result<Self, GatewayError> {
        match method {
            "tools/call" => {
                let (raw, name) = required_str(params.name, "params.name")?;
                let (route, _) = catalog
                    .route(&name)
                    .ok_or_else(|| GatewayError::invalid_params(format!("Unknown tool: {name}")))?;
                Ok(Self::named(text, "tools/call", raw, route, true))
            }
            "prompts/get" => {
                let (raw, name) = required_str(params.name, "params.name")?;
                let (route, _) = catalog.prompt_route(&name).ok_or_else(|| {
                    GatewayError::invalid_params(format!("Unknown prompt: {name}"))
                })?;
                Ok(Self::named(text, "prompts/get", raw, route, false))
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let method = match method {
                    "resources/read" => "resources/read",
                    "resources/subscribe" => "resources/subscribe",
                    _ => "resources/unsubscribe",
                };
                let (raw, uri) = required_str(params.uri, "params.uri")?;
                Self::located(catalog, text, method, raw, &uri)
            }
            _ => {
                let reference = params.reference.as_ref().ok_or_else(|| {
                    GatewayError::invalid_params("Invalid params: params.ref is required")
                })?;
                let (_, kind) = required_str(reference.kind, "params.ref.type")?;
                match kind.as_ref() {
                    "ref/prompt" => {
                        let (raw, name) = required_str(reference.name, "params.ref.name")?;
                        let (route, _) = catalog.prompt_route(&name).ok_or_else(|| {
                            GatewayError::invalid_params(format!("Unknown prompt: {name}"))
                        })?;
                        Ok(Self::named(text, "completion/complete", raw, route, false))
                    }
                    "ref/resource" => {
                        let (raw, uri) = required_str(reference.uri, "params.ref.uri")?;
                        Self::located(catalog, text, "completion/complete", raw, &uri)
                    }
                    other => Err(GatewayError::invalid_params(format!(
                        "Invalid params: unknown params.ref.type {other:?}"
                    ))),
                }
            }
        }
    }

    fn named(text: &str, method: &'static str, raw: &RawValue, route: &Route, tool: bool) -> Self {
        Self {
            server: route.server,
            method,
            rewrite: jsonrpc::span_in(text, raw.get())
                .map(|span| (span, route.upstream_name_json.clone())),
            tool: tool.then(|| route.upstream_name.clone()),
            name: Some(route.upstream_name.clone()),
        }
    }

    fn located(
        catalog: &Catalog,
        text: &str,
        method: &'static str,
        raw: &RawValue,
        uri: &str,
    ) -> Result<Self, GatewayError> {
        let (server, upstream_uri) = catalog
            .resource_route(uri)
            .ok_or_else(|| GatewayError::resource_not_found(uri))?;
        let name = Some(upstream_uri.clone().unwrap_or_else(|| uri.to_owned()));
        let rewrite = match upstream_uri {
            None => None,
            Some(upstream) => Some((
                jsonrpc::span_in(text, raw.get())
                    .ok_or_else(|| GatewayError::invalid_params("Invalid params: uri"))?,
                jsonrpc::json_string(&upstream),
            )),
        };
        Ok(Self {
            server,
            method,
            rewrite,
            tool: None,
            name,
        })
    }

    /// The server the request goes to.
    pub(crate) fn server(&self) -> usize {
        self.server
    }

    /// The call with its body rewritten for the upstream.
    pub(crate) fn into_call(
        self,
        text: &str,
        received_len: usize,
        session: Rc<Session>,
    ) -> Result<Call, GatewayError> {
        let body = match self.rewrite {
            None => text.as_bytes().to_vec(),
            Some((span, replacement)) => jsonrpc::splice(text, span, &replacement)
                .ok_or_else(|| GatewayError::invalid_params("Invalid params"))?
                .into_bytes(),
        };
        Ok(Call {
            server: self.server,
            method: Some(self.method),
            tool: self.tool,
            name: self.name,
            body,
            received_len,
            session,
        })
    }
}

/// A required string parameter: its raw JSON (for its span in the body) and its value.
pub(crate) fn required_str<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
) -> Result<(&'a RawValue, std::borrow::Cow<'a, str>), GatewayError> {
    let raw = raw.ok_or_else(|| {
        GatewayError::invalid_params(format!("Invalid params: {field} is required"))
    })?;
    let value = jsonrpc::raw_str(raw).ok_or_else(|| {
        GatewayError::invalid_params(format!("Invalid params: {field} must be a string"))
    })?;
    Ok((raw, value))
}
