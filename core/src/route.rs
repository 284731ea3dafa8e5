//! Where a routed request goes: the server that owns the name or URI it names, and the one value
//! of its body that changes on the way (a prefixed name, a mapped URI), spliced byte for byte so
//! the rest of the body (arguments, `_meta`) is forwarded exactly as the client sent it.

use std::rc::Rc;

use serde_json::value::RawValue;

use crate::catalog::{Catalog, Route};
use crate::error::GatewayError;
use crate::grant::{Access, Kind};
use crate::host::Host;
use crate::jsonrpc::{self, Params};
use crate::session::Session;

/// A request being routed to one upstream.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) server: usize,
    /// The MCP method, sent upstream as `x-mcp-method` (none for the client's answer to an
    /// upstream's request).
    pub(crate) method: Option<&'static str>,
    /// The tool's name upstream (`tools/call` only), for telemetry.
    pub(crate) tool: Option<String>,
    /// The policy headers naming what the call reaches (besides `x-mcp-method` and
    /// `x-mcp-servername`): `x-mcp-toolname` and `x-mcp-annotation-hints` on `tools/call`,
    /// `x-mcp-promptname` on `prompts/get`, `x-mcp-resourceuri` on `resources/*`; values made
    /// safe for a header (see [`header_safe`]).
    pub(crate) policy: Vec<(&'static str, String)>,
    /// The name (or URI) the upstream knows the target by: `Mcp-Name` of a stateless call.
    pub(crate) name: Option<String>,
    /// The rewritten body (kept to retry once when a cached upstream session has expired).
    pub(crate) body: Vec<u8>,
    /// The body buffered by Envoy, which the rewrite replaces.
    pub(crate) received_len: usize,
    /// Bytes at the end of `body` that are the received body's own, unchanged: the write-back
    /// replaces only what precedes them (a 64 KiB argument after the name is not copied back).
    pub(crate) kept_tail: usize,
    pub(crate) session: Rc<Session>,
}

impl Call {
    /// No call at all: what opens an upstream session of `server` ahead of need.
    pub(crate) fn opening(server: usize, session: Rc<Session>) -> Self {
        Self {
            server,
            method: None,
            tool: None,
            policy: Vec::new(),
            name: None,
            body: Vec::new(),
            received_len: 0,
            kept_tail: 0,
            session,
        }
    }

    /// Writes the rewritten body over the one Envoy buffered: only the part before the kept
    /// tail (Envoy replaces a prefix of the buffer), nothing when nothing changed.
    pub(crate) fn write_body(&self, host: &mut dyn Host) {
        let tail = self.kept_tail.min(self.received_len).min(self.body.len());
        let received = self.received_len - tail;
        let changed = self.body.get(..self.body.len() - tail).unwrap_or_default();
        if received > 0 || !changed.is_empty() {
            host.set_request_body(received, changed);
        }
    }
}

/// Where a routed request goes, and the one value of its body that changes on the way (a
/// prefixed name, a mapped URI).
pub(crate) struct Destination {
    server: usize,
    method: &'static str,
    /// Spans of the body replaced on the way (a prefixed name, a mapped URI, pinned arguments).
    rewrite: Vec<(std::ops::Range<usize>, String)>,
    policy: Vec<(&'static str, String)>,
    /// What a capability grant must allow: the kind and the unprefixed name (upstream URI).
    subject: (Kind, String),
    /// The name as the client sent it (prefixed), or the URI: what a virtual server shows.
    shown_as: String,
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
                if let Some(schema) = &route.schema {
                    let arguments = params.arguments.map_or("{}", RawValue::get);
                    let arguments = if arguments.trim() == "null" {
                        "{}"
                    } else {
                        arguments
                    };
                    schema.check(arguments, "arguments").map_err(|e| {
                        GatewayError::invalid_params(format!("Invalid params: {e}"))
                            .because("invalid_arguments")
                    })?;
                }
                let mut destination = Self::named(text, "tools/call", raw, route, true, &name);
                if !route.pins.is_empty() {
                    destination.pin(text, raw, params.arguments, &route.pins)?;
                }
                Ok(destination)
            }
            "prompts/get" => {
                let (raw, name) = required_str(params.name, "params.name")?;
                let (route, _) = catalog.prompt_route(&name).ok_or_else(|| {
                    GatewayError::invalid_params(format!("Unknown prompt: {name}"))
                })?;
                Ok(Self::named(text, "prompts/get", raw, route, false, &name))
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
                        Ok(Self::named(
                            text,
                            "completion/complete",
                            raw,
                            route,
                            false,
                            &name,
                        ))
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

    /// The destination of an MCP 2026-07-28 request routed on its headers alone (`Mcp-Method`,
    /// `Mcp-Name`), before its body is read: the same lookups, policy headers and grant subject
    /// as [`Destination::of`]; the body, checked against the headers when it comes, goes through
    /// [`Destination::of`] for its rewrite.
    pub(crate) fn on_headers(
        catalog: &Catalog,
        method: &str,
        name: &str,
    ) -> Result<Self, GatewayError> {
        match method {
            "tools/call" => {
                let (route, _) = catalog
                    .route(name)
                    .ok_or_else(|| GatewayError::invalid_params(format!("Unknown tool: {name}")))?;
                Ok(Self::unspliced("tools/call", route, true, name))
            }
            "prompts/get" => {
                let (route, _) = catalog.prompt_route(name).ok_or_else(|| {
                    GatewayError::invalid_params(format!("Unknown prompt: {name}"))
                })?;
                Ok(Self::unspliced("prompts/get", route, false, name))
            }
            "resources/read" => Ok(Self::resource(catalog, "resources/read", name)?.0),
            other => Err(GatewayError::invalid_params(format!(
                "Invalid params: {other} is not routed on its headers"
            ))),
        }
    }

    fn named(
        text: &str,
        method: &'static str,
        raw: &RawValue,
        route: &Route,
        tool: bool,
        shown_as: &str,
    ) -> Self {
        let mut destination = Self::unspliced(method, route, tool, shown_as);
        destination.rewrite.extend(
            jsonrpc::span_in(text, raw.get()).map(|span| (span, route.upstream_name_json.clone())),
        );
        destination
    }

    /// A named destination with nothing of its body rewritten yet.
    fn unspliced(method: &'static str, route: &Route, tool: bool, shown_as: &str) -> Self {
        let name = header_safe(&route.upstream_name);
        let policy = match (tool, &route.hints) {
            (true, Some(hints)) => vec![
                ("x-mcp-toolname", name),
                ("x-mcp-annotation-hints", hints.clone()),
            ],
            (true, None) => vec![("x-mcp-toolname", name)],
            (false, _) => vec![("x-mcp-promptname", name)],
        };
        Self {
            server: route.server,
            method,
            rewrite: Vec::new(),
            policy,
            subject: (
                if tool { Kind::Tools } else { Kind::Prompts },
                route.upstream_name.clone(),
            ),
            shown_as: shown_as.to_owned(),
            name: Some(route.upstream_name.clone()),
        }
    }

    /// Pinned arguments replace the client's `arguments` (or join `params` after the name).
    fn pin(
        &mut self,
        text: &str,
        name: &RawValue,
        arguments: Option<&RawValue>,
        pins: &[(String, String)],
    ) -> Result<(), GatewayError> {
        let pinned = crate::curation::pinned_arguments(arguments, pins)
            .map_err(|e| GatewayError::invalid_params(format!("Invalid params: {e}")))?;
        let bad = || GatewayError::invalid_params("Invalid params: arguments");
        match arguments {
            Some(raw) => {
                let span = jsonrpc::span_in(text, raw.get()).ok_or_else(bad)?;
                self.rewrite.push((span, pinned));
            }
            None => {
                // After the name (whose own rewrite ends at the same place): the name's
                // replacement gains the new member.
                let span = jsonrpc::span_in(text, name.get()).ok_or_else(bad)?;
                let (_, replacement) = self
                    .rewrite
                    .iter_mut()
                    .find(|(s, _)| *s == span)
                    .ok_or_else(bad)?;
                replacement.push_str(",\"arguments\":");
                replacement.push_str(&pinned);
            }
        }
        Ok(())
    }

    /// The server this request reaches and the name (URI) as the client sent it, for the audit.
    pub(crate) fn target<'c>(&'c self, catalog: &'c Catalog) -> (&'c str, &'c str) {
        let server = catalog.server(self.server).map_or("?", |s| s.name.as_str());
        (server, &self.shown_as)
    }

    /// Refused when `access` does not admit what this request reaches (see
    /// [`Access::admits`]).
    pub(crate) fn check(&self, catalog: &Catalog, access: &Access<'_>) -> Result<(), GatewayError> {
        let (kind, name) = &self.subject;
        let server = catalog.server(self.server).map_or("?", |s| s.name.as_str());
        access.admits(*kind, server, name, &self.shown_as)
    }

    fn located(
        catalog: &Catalog,
        text: &str,
        method: &'static str,
        raw: &RawValue,
        uri: &str,
    ) -> Result<Self, GatewayError> {
        let (mut destination, mapped) = Self::resource(catalog, method, uri)?;
        if let Some(upstream) = mapped {
            let span = jsonrpc::span_in(text, raw.get())
                .ok_or_else(|| GatewayError::invalid_params("Invalid params: uri"))?;
            destination
                .rewrite
                .push((span, jsonrpc::json_string(&upstream)));
        }
        Ok(destination)
    }

    /// The destination of a resource URI, with nothing rewritten yet, and the URI its server
    /// knows it by when that differs from the client's.
    fn resource(
        catalog: &Catalog,
        method: &'static str,
        uri: &str,
    ) -> Result<(Self, Option<String>), GatewayError> {
        let (server, upstream_uri) = catalog
            .resource_route(uri)
            .ok_or_else(|| GatewayError::resource_not_found(uri))?;
        let upstream = upstream_uri.as_deref().unwrap_or(uri).to_owned();
        let policy = vec![("x-mcp-resourceuri", header_safe(&upstream))];
        let destination = Self {
            server,
            method,
            rewrite: Vec::new(),
            policy,
            subject: (Kind::Resources, upstream.clone()),
            shown_as: uri.to_owned(),
            name: Some(upstream),
        };
        Ok((destination, upstream_uri))
    }

    /// The server the request goes to.
    pub(crate) fn server(&self) -> usize {
        self.server
    }

    /// The call of a request routed on its headers: its body comes later (see
    /// [`Destination::on_headers`]).
    pub(crate) fn into_headers_call(self, session: Rc<Session>) -> Call {
        let (kind, name) = self.subject;
        Call {
            server: self.server,
            method: Some(self.method),
            tool: (self.method == "tools/call" && kind == Kind::Tools).then_some(name),
            name: self.name,
            policy: self.policy,
            body: Vec::new(),
            received_len: 0,
            kept_tail: 0,
            session,
        }
    }

    /// The call with its body rewritten for the upstream.
    pub(crate) fn into_call(
        self,
        text: &str,
        received_len: usize,
        session: Rc<Session>,
    ) -> Result<Call, GatewayError> {
        let mut rewrite = self.rewrite;
        let kept_tail = text.len() - rewrite.iter().map(|(span, _)| span.end).max().unwrap_or(0);
        // Last span first: earlier spans keep their offsets.
        rewrite.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
        let mut body = std::borrow::Cow::Borrowed(text);
        for (span, replacement) in rewrite {
            body = std::borrow::Cow::Owned(
                jsonrpc::splice(&body, span, &replacement)
                    .ok_or_else(|| GatewayError::invalid_params("Invalid params"))?,
            );
        }
        let body = body.into_owned().into_bytes();
        let (kind, name) = self.subject;
        Ok(Call {
            server: self.server,
            method: Some(self.method),
            tool: (self.method == "tools/call" && kind == Kind::Tools).then_some(name),
            name: self.name,
            policy: self.policy,
            body,
            received_len,
            kept_tail,
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

/// A name or URI as a header value: visible ASCII and spaces kept, every other byte (controls,
/// DEL, non-ASCII UTF-8) percent-encoded, so a hostile name can neither break the header nor be
/// refused by the proxy. Authorization rules match the encoded form.
pub(crate) fn header_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x20..0x7f).contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::header_safe;

    #[test]
    fn header_values_are_visible_ascii() {
        assert_eq!(header_safe("echo"), "echo");
        assert_eq!(header_safe("a b/c?d"), "a b/c?d");
        assert_eq!(header_safe("x\r\ny"), "x%0D%0Ay");
        assert_eq!(header_safe("\u{e9}"), "%C3%A9");
    }
}
