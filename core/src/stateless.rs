//! MCP 2026-07-28, the stateless revision: what its routing headers promise (`Mcp-Method`,
//! `Mcp-Name`), the check of the body against them, the `_meta` every request carries, the
//! `server/discover` answer and the list-cache hints, and the key of the upstream session a
//! stateless client's calls share on a session-era (2025) upstream (the bridge).

use std::borrow::Cow;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::config::SUPPORTED_PROTOCOL_VERSIONS;
use crate::error::GatewayError;
use crate::jsonrpc::{self, Params};

/// The stateless revision.
pub const VERSION: &str = "2026-07-28";

/// The version the gateway opens session-era upstream sessions with for stateless clients.
pub const BRIDGE_VERSION: &str = "2025-11-25";

/// Header/body mismatch, or a routing header missing where required.
pub const HEADER_MISMATCH: i32 = -32020;
/// `MCP-Protocol-Version` names a version the gateway does not speak.
pub const UNSUPPORTED_VERSION: i32 = -32022;

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// The methods whose target travels in `Mcp-Name` (and where in params it is).
pub fn named_member(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// What a stateless request's headers promise about its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub method: String,
    /// `Mcp-Name`, decoded (required for [`named_member`] methods).
    pub name: Option<String>,
}

impl Expect {
    /// Reads `Mcp-Method` and `Mcp-Name`; either missing where required is -32020.
    pub fn from_headers<'h>(
        header: &dyn Fn(&str) -> Option<&'h [u8]>,
    ) -> Result<Self, GatewayError> {
        let method = header("mcp-method")
            .map(decode_value)
            .transpose()?
            .ok_or_else(|| mismatch("the Mcp-Method header is required"))?;
        let name = header("mcp-name").map(decode_value).transpose()?;
        if named_member(&method).is_some() && name.is_none() {
            return Err(mismatch(format!(
                "the Mcp-Name header is required for {method}"
            )));
        }
        Ok(Self { method, name })
    }

    /// The body says what the headers said: same method, same name (or URI), and `_meta` names
    /// the header's protocol version and carries the client's capabilities.
    pub fn check(&self, method: &str, params: &Params<'_>) -> Result<(), GatewayError> {
        if method != self.method {
            return Err(mismatch(format!(
                "Mcp-Method header {:?} does not match the body's method {method:?}",
                self.method
            )));
        }
        if let Some(member) = named_member(method) {
            let raw = match member {
                "uri" => params.uri,
                _ => params.name,
            };
            let body = raw.and_then(jsonrpc::raw_str);
            if body.as_deref() != self.name.as_deref() {
                return Err(mismatch(format!(
                    "Mcp-Name header {:?} does not match params.{member} {:?}",
                    self.name.as_deref().unwrap_or_default(),
                    body.as_deref().unwrap_or_default()
                )));
            }
        }
        check_meta(params.meta)
    }
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(default, borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    version: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "io.modelcontextprotocol/clientCapabilities")]
    capabilities: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "io.modelcontextprotocol/clientInfo")]
    client_info: Option<&'a RawValue>,
}

/// `params._meta` of a stateless request: its version must be the header's (-32020), and the
/// version and capabilities must be there (-32602, HTTP 400).
fn check_meta(meta: Option<&RawValue>) -> Result<(), GatewayError> {
    let missing = |key: &str| {
        GatewayError::invalid_params(format!("Invalid params: params._meta[{key:?}] is required"))
            .with_status(400)
    };
    let meta: Meta<'_> = meta
        .map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .map_err(|_| missing(META_VERSION))?
        .ok_or_else(|| missing(META_VERSION))?;
    let version = meta
        .version
        .and_then(jsonrpc::raw_str)
        .ok_or_else(|| missing(META_VERSION))?;
    if version != VERSION {
        return Err(mismatch(format!(
            "MCP-Protocol-Version header {VERSION:?} does not match params._meta[{META_VERSION:?}] {version:?}"
        )));
    }
    if !meta.capabilities.is_some_and(|c| c.get().starts_with('{')) {
        return Err(missing(META_CAPABILITIES));
    }
    Ok(())
}

/// The client's `clientInfo` from `_meta`, raw, if it sent one.
pub fn client_info(meta: Option<&RawValue>) -> Option<Box<RawValue>> {
    let meta: Meta<'_> = serde_json::from_str(meta?.get()).ok()?;
    meta.client_info
        .filter(|i| i.get().starts_with('{'))
        .map(ToOwned::to_owned)
}

/// A header value: ASCII as is, anything else as `=?base64?<standard base64 of UTF-8>?=`.
fn decode_value(raw: &[u8]) -> Result<String, GatewayError> {
    let bad = || mismatch("a routing header value is not ASCII or =?base64?...?= encoded UTF-8");
    if let Some(encoded) = raw
        .strip_prefix(b"=?base64?")
        .and_then(|r| r.strip_suffix(b"?="))
    {
        let bytes = STANDARD.decode(encoded).map_err(|_| bad())?;
        return String::from_utf8(bytes).map_err(|_| bad());
    }
    if !raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(bad());
    }
    std::str::from_utf8(raw)
        .map(|s| s.trim_matches(' ').to_owned())
        .map_err(|_| bad())
}

/// A header value for `value` (base64-wrapped unless plain printable ASCII).
pub fn encode_value(value: &str) -> Cow<'_, str> {
    if value.bytes().all(|b| (0x21..0x7f).contains(&b)) && !value.starts_with("=?") {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("=?base64?{}?=", STANDARD.encode(value)))
    }
}

fn mismatch(message: impl Into<Cow<'static, str>>) -> GatewayError {
    GatewayError::header_mismatch(message)
}

/// -32022, HTTP 400, with the versions the gateway speaks.
pub fn unsupported_version(requested: &[u8]) -> GatewayError {
    let requested = String::from_utf8_lossy(requested);
    let supported: Vec<String> = supported_versions().map(jsonrpc::json_string).collect();
    let mut error = GatewayError::unsupported_protocol_version(&requested);
    error.code = UNSUPPORTED_VERSION;
    error.data = Some(format!(
        "{{\"supported\":[{}],\"requested\":{}}}",
        supported.join(","),
        jsonrpc::json_string(&requested)
    ));
    error
}

/// Every version the gateway speaks, newest first.
pub fn supported_versions() -> impl Iterator<Item = &'static str> {
    std::iter::once(VERSION).chain(SUPPORTED_PROTOCOL_VERSIONS.iter().copied())
}

/// The cache hints of a list (or discover) result: lists change only with the catalog, which
/// every client shares (no per-identity filtering), so `public`, for `limits.list_ttl_ms`; and
/// the gateway's `serverInfo` in `_meta`, where 2026-07-28 results carry it.
fn hints(catalog: &Catalog, scope: CacheScope) -> String {
    let scope = match scope {
        CacheScope::Public => "public",
        CacheScope::Private => "private",
    };
    format!(
        "\"resultType\":\"complete\",\"ttlMs\":{},\"cacheScope\":\"{scope}\",\"_meta\":{{\"io.modelcontextprotocol/serverInfo\":{{\"name\":{},\"version\":{}}}}}",
        catalog.limits.list_ttl_ms,
        jsonrpc::json_string(&catalog.gateway.name),
        jsonrpc::json_string(&catalog.gateway.version)
    )
}

/// Who may share a cached list result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Every client sees the same list.
    Public,
    /// The list was narrowed for this caller (its grant, its virtual server).
    Private,
}

/// A pre-serialised result object with the cache hints (and `resultType`) added first.
pub fn with_hints(catalog: &Catalog, result: &str, scope: CacheScope) -> String {
    let hints = hints(catalog, scope);
    match result.trim_start().strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{{hints}{rest}"),
        Some(rest) => format!("{{{hints},{rest}"),
        None => result.to_owned(),
    }
}

/// `server/discover`: the aggregate's versions, capabilities, serverInfo and instructions (the
/// `initialize` answer's members), with the cache hints.
pub fn discover_result(catalog: &Catalog) -> String {
    let versions: Vec<String> = supported_versions().map(jsonrpc::json_string).collect();
    // `{"protocolVersion":"…",<tail>`: the tail is the members after the version.
    let initialize = catalog.initialize_result(VERSION);
    let tail = initialize
        .split_once(',')
        .map_or("}", |(_, tail)| tail)
        .to_owned();
    with_hints(
        catalog,
        &format!("{{\"supportedVersions\":[{}],{tail}", versions.join(",")),
        CacheScope::Public,
    )
}

/// A session-era client's request made a 2026-07-28 one for an upstream that speaks only that
/// revision: `params._meta` gets the protocol version, the client's capabilities and clientInfo
/// (from its session); the rest of the body is kept byte for byte.
pub fn with_meta(
    body: &[u8],
    capabilities: Option<&RawValue>,
    client_info: Option<&RawValue>,
) -> Result<Vec<u8>, GatewayError> {
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default)]
        params: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow, default, rename = "_meta")]
        meta: Option<&'a RawValue>,
    }
    let bad = || {
        GatewayError::invalid_request("Invalid Request: cannot add _meta for a 2026-07-28 upstream")
    };
    let text = std::str::from_utf8(body).map_err(|_| bad())?;
    let keys = format!(
        "\"{META_VERSION}\":\"{VERSION}\",\"{META_CAPABILITIES}\":{},\"io.modelcontextprotocol/clientInfo\":{}",
        capabilities.map_or("{}", RawValue::get),
        client_info.map_or("{\"name\":\"mcpgw\",\"version\":\"0\"}", RawValue::get)
    );
    let message: Message<'_> = serde_json::from_str(text).map_err(|_| bad())?;
    let params = message
        .params
        .filter(|p| p.get().starts_with('{'))
        .ok_or_else(bad)?;
    let parsed: Params<'_> = serde_json::from_str(params.get()).map_err(|_| bad())?;
    // Insert right after the opening brace of `_meta` (or of params, with a new `_meta`).
    let (outer, inserted) = match parsed.meta.filter(|m| m.get().starts_with('{')) {
        Some(meta) if meta.get().contains(META_VERSION) => return Ok(body.to_vec()),
        Some(meta) => (meta.get(), keys),
        None => (params.get(), format!("\"_meta\":{{{keys}}}")),
    };
    let span = jsonrpc::span_in(text, outer).ok_or_else(bad)?;
    let inner = outer.get(1..).ok_or_else(bad)?;
    let separator = if inner.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    let replacement = format!("{{{inserted}{separator}{inner}");
    jsonrpc::splice(text, span, &replacement)
        .map(String::into_bytes)
        .ok_or_else(bad)
}

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    let hashed;
    let key = if key.len() > 64 {
        hashed = Sha256::digest(key);
        hashed.as_ref()
    } else {
        key
    };
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for part in message {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// The id under which a stateless client's calls share their upstream sessions on session-era
/// upstreams: a keyed MAC of its authorization context (the `authorization` header, or none),
/// so two callers with different credentials never share one, and the id reveals nothing.
pub fn bridge_id(key: &[u8; 32], authorization: Option<&[u8]>) -> String {
    let mac = hmac_sha256(
        key,
        &[b"mcpgw-bridge\0", authorization.unwrap_or(b"\0anonymous")],
    );
    format!(
        "b-{}",
        URL_SAFE_NO_PAD.encode(mac.get(..18).unwrap_or_default())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bridge_ids_differ_by_credential_and_key() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let a = bridge_id(&k1, Some(b"Bearer a"));
        assert_eq!(a, bridge_id(&k1, Some(b"Bearer a")));
        assert_ne!(a, bridge_id(&k1, Some(b"Bearer b")));
        assert_ne!(a, bridge_id(&k1, None));
        assert_ne!(a, bridge_id(&k2, Some(b"Bearer a")));
    }

    fn expect(headers: &[(&str, &str)]) -> Result<Expect, GatewayError> {
        let owned: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect();
        let header = |name: &str| {
            owned
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        Expect::from_headers(&header)
    }

    #[test]
    fn routing_headers_are_required_where_the_spec_says() {
        assert_eq!(expect(&[]).unwrap_err().code, HEADER_MISMATCH);
        assert_eq!(
            expect(&[("mcp-method", "tools/call")]).unwrap_err().code,
            HEADER_MISMATCH
        );
        let e = expect(&[("mcp-method", "tools/list")]).unwrap();
        assert_eq!(e.method, "tools/list");
        let e = expect(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?w6k=?="),
        ])
        .unwrap();
        assert_eq!(e.name.as_deref(), Some("é"));
        assert_eq!(encode_value("é"), "=?base64?w6k=?=");
        assert_eq!(encode_value("a_echo"), "a_echo");
    }

    #[test]
    fn session_calls_get_the_2026_meta() {
        let out = |body: &str| {
            String::from_utf8(with_meta(body.as_bytes(), None, None).unwrap()).unwrap()
        };
        let v: serde_json::Value = serde_json::from_str(&out(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":1}}}"#,
        ))
        .unwrap();
        assert_eq!(v["params"]["_meta"][META_VERSION], VERSION);
        assert_eq!(v["params"]["arguments"]["a"], 1);
        let v: serde_json::Value = serde_json::from_str(&out(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","_meta":{"progressToken":7}}}"#,
        ))
        .unwrap();
        assert_eq!(v["params"]["_meta"]["progressToken"], 7);
        assert_eq!(
            v["params"]["_meta"][META_CAPABILITIES],
            serde_json::json!({})
        );
        let v: serde_json::Value =
            serde_json::from_str(&out(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{}}"#))
                .unwrap();
        assert_eq!(v["params"]["_meta"][META_VERSION], VERSION);
    }

    #[test]
    fn hints_go_first_in_a_result() {
        assert!(with_hints_text("{\"tools\":[]}").starts_with("{\"resultType\""));
        assert!(with_hints_text("{}").ends_with("\"public\"}"));
    }

    fn with_hints_text(result: &str) -> String {
        let hints = "\"resultType\":\"complete\",\"ttlMs\":1,\"cacheScope\":\"public\"";
        match result.strip_prefix('{') {
            Some(rest) if rest.starts_with('}') => format!("{{{hints}{rest}"),
            Some(rest) => format!("{{{hints},{rest}"),
            None => result.to_owned(),
        }
    }
}
