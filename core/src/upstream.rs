//! Upstream sessions: the gateway's own calls that open and close them, and their cache.
//!
//! The cache lives in Envoy's shared data (process-wide, all workers) as a fixed table of
//! `limits.upstream_session_slots` keys, so it is bounded by construction. It is 4-way set
//! associative: a (client session, server) pair hashes to a set of four slots and, when all four
//! are taken, replaces the one stored longest ago. A miss only costs opening a new upstream
//! session.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ServerConfig;
use crate::host::Host;
use crate::session::Claims;
use crate::sse;

/// An upstream session as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSession {
    /// The upstream's `Mcp-Session-Id`; empty when the upstream runs without sessions.
    pub session_id: String,
    /// The protocol version the upstream negotiated, sent as `MCP-Protocol-Version`.
    pub protocol_version: String,
}

impl UpstreamSession {
    /// No session: an MCP 2026-07-28 upstream called by a 2026-07-28 client.
    pub fn stateless() -> Self {
        Self {
            session_id: String::new(),
            protocol_version: crate::stateless::VERSION.to_owned(),
        }
    }
}

const WAYS: u32 = 4;
const SLOT_PREFIX: &str = "mcpgw.us.";

/// The cached upstream session of (client session, server), if any.
pub fn lookup(host: &dyn Host, slots: u32, client: &str, server: &str) -> Option<UpstreamSession> {
    set_keys(client, server, slots).find_map(|key| {
        let value = host.shared_get(&key)?;
        let slot = Slot::decode(&value)?;
        slot.owned_by(client, server).then_some(slot.session)
    })
}

/// An upstream session a store pushed out of the cache: nobody will use it again, so it should
/// be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub server: String,
    pub session: UpstreamSession,
}

/// A shared-data value and its version.
type Versioned = (Vec<u8>, u32);

/// Compare-and-swap attempts of a store (each failure means another worker changed the way).
const STORE_ATTEMPTS: usize = 4;

/// Caches the upstream session of (client session, server), in the pair's way or a free one,
/// else in place of the entry stored longest ago; returns that entry when it belonged to another
/// pair. Every write is a compare-and-swap against the value read, so a concurrent store on
/// another worker is never overwritten unseen (the evicted entry is exactly the one replaced).
pub fn store(
    host: &mut dyn Host,
    slots: u32,
    client: &str,
    server: &str,
    session: &UpstreamSession,
) -> Option<Evicted> {
    let value = format!(
        "{client}\n{server}\n{}\n{}\n{}",
        session.session_id,
        session.protocol_version,
        host.now_millis()
    );
    for _ in 0..STORE_ATTEMPTS {
        let ways: Vec<(String, Option<Versioned>)> = set_keys(client, server, slots)
            .map(|key| {
                let current = host.shared_get_versioned(&key);
                (key, current)
            })
            .collect();
        let decoded: Vec<(&str, Option<u32>, Option<Slot>)> = ways
            .iter()
            .map(|(key, current)| {
                let version = current.as_ref().map(|(_, version)| *version);
                let slot = current.as_ref().and_then(|(value, _)| Slot::decode(value));
                (key.as_str(), version, slot)
            })
            .collect();
        // The pair's own way, else a free one, else the one stored longest ago.
        let own = decoded
            .iter()
            .find(|(_, _, slot)| slot.as_ref().is_some_and(|s| s.owned_by(client, server)));
        let free = decoded.iter().find(|(_, _, slot)| slot.is_none());
        let oldest = decoded
            .iter()
            .min_by_key(|(_, _, slot)| slot.as_ref().map_or(0, |s| s.stored_at));
        let (key, version, slot) = own.or(free).or(oldest)?;
        let evicted = slot
            .as_ref()
            .filter(|s| !s.owned_by(client, server))
            .map(|s| Evicted {
                server: s.server.to_owned(),
                session: s.session.clone(),
            });
        if host.shared_set_versioned(key, value.as_bytes(), *version) {
            return evicted;
        }
    }
    host.log(
        crate::host::Level::Debug,
        &format!("upstream session of {client} on {server} not cached: its set kept changing"),
    );
    None
}

/// Removes and returns the cached upstream session of (client session, server).
pub fn forget(
    host: &mut dyn Host,
    slots: u32,
    client: &str,
    server: &str,
) -> Option<UpstreamSession> {
    for key in set_keys(client, server, slots) {
        let value = host.shared_get(&key);
        let slot = value.as_deref().and_then(Slot::decode);
        if let Some(slot) = slot.filter(|s| s.owned_by(client, server)) {
            host.shared_set(&key, b"");
            return Some(slot.session);
        }
    }
    None
}

const LEVEL_PREFIX: &str = "mcpgw.level.";

/// Remembers the log level a client session asked for (`logging/setLevel`), so that upstream
/// sessions opened later are told too. A direct-mapped table: a collision only means a later
/// upstream session starts at its default level.
pub fn store_log_level(host: &mut dyn Host, slots: u32, client: &str, level: &str) {
    let key = format!(
        "{LEVEL_PREFIX}{}",
        hash(&[client]) % u64::from(slots.max(1))
    );
    host.shared_set(&key, format!("{client}\n{level}").as_bytes());
}

/// The log level a client session asked for, if any.
pub fn log_level(host: &dyn Host, slots: u32, client: &str) -> Option<String> {
    let key = format!(
        "{LEVEL_PREFIX}{}",
        hash(&[client]) % u64::from(slots.max(1))
    );
    let value = host.shared_get(&key)?;
    let (owner, level) = std::str::from_utf8(&value).ok()?.split_once('\n')?;
    (owner == client).then(|| level.to_owned())
}

fn set_keys(client: &str, server: &str, slots: u32) -> impl Iterator<Item = String> {
    let sets = u64::from((slots / WAYS).max(1));
    let set = hash(&[client, server]) % sets;
    (0..WAYS).map(move |way| format!("{SLOT_PREFIX}{set}.{way}"))
}

pub(crate) fn hash(parts: &[&str]) -> u64 {
    // FNV-1a: stable across VMs and restarts, no dependency.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A slot's value: `client session \n server \n upstream session \n protocol version \n stored at
/// (ms)`.
struct Slot<'a> {
    client: &'a str,
    server: &'a str,
    session: UpstreamSession,
    stored_at: u64,
}

impl<'a> Slot<'a> {
    fn decode(value: &'a [u8]) -> Option<Self> {
        let mut parts = std::str::from_utf8(value).ok()?.split('\n');
        Some(Self {
            client: parts.next()?,
            server: parts.next()?,
            session: UpstreamSession {
                session_id: parts.next()?.to_owned(),
                protocol_version: parts.next()?.to_owned(),
            },
            stored_at: parts.next()?.parse().ok()?,
        })
    }

    fn owned_by(&self, client: &str, server: &str) -> bool {
        self.client == client && self.server == server
    }
}

/// Client capabilities relayed to upstreams: their requests to the client (sampling,
/// elicitation, roots) reach it through the gateway (see [`crate::relay`]).
const RELAYED_CAPABILITIES: &[&str] = &["experimental", "sampling", "elicitation", "roots"];

/// Body of the gateway's `initialize` to an upstream, on behalf of a client session.
pub fn initialize_body(claims: &Claims) -> String {
    let capabilities = claims
        .caps
        .as_ref()
        .and_then(|raw| relayed_capabilities(raw.get()))
        .unwrap_or_else(|| "{}".into());
    let client_info = claims
        .info
        .as_ref()
        .map(|raw| raw.get())
        .unwrap_or("{\"name\":\"mcpgw\",\"version\":\"0\"}");
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":{},\"capabilities\":{capabilities},\"clientInfo\":{client_info}}}}}",
        crate::jsonrpc::json_string(&claims.pv)
    )
}

/// The client's capabilities restricted to [`RELAYED_CAPABILITIES`], values kept verbatim.
fn relayed_capabilities(capabilities: &str) -> Option<String> {
    let all: Vec<(std::borrow::Cow<str>, &RawValue)> =
        serde_json::from_str::<std::collections::BTreeMap<_, _>>(capabilities)
            .ok()?
            .into_iter()
            .collect();
    let kept: Vec<String> = all
        .iter()
        .filter(|(name, _)| RELAYED_CAPABILITIES.contains(&name.as_ref()))
        .map(|(name, value)| format!("{}:{}", crate::jsonrpc::json_string(name), value.get()))
        .collect();
    Some(format!("{{{}}}", kept.join(",")))
}

pub const INITIALIZED_BODY: &str = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}";

/// Body of the gateway's `ping` on an upstream session (see `Stage::Resuming` in the pipeline).
pub const PING_BODY: &str = "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"ping\"}";

/// Headers of a gateway call to an upstream (besides the body-related ones).
pub fn call_headers<'a>(
    server: &'a ServerConfig,
    method: &'a str,
    session: Option<&'a UpstreamSession>,
) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        (":method", method),
        (":path", server.path.as_str()),
        (":authority", server.call_host()),
        ("accept", "application/json, text/event-stream"),
        ("x-mcp-servername", server.name.as_str()),
    ];
    if method == "POST" {
        headers.push(("content-type", "application/json"));
    }
    if let Some(session) = session {
        if !session.session_id.is_empty() {
            headers.push(("mcp-session-id", session.session_id.as_str()));
        }
        if !session.protocol_version.is_empty() {
            headers.push(("mcp-protocol-version", session.protocol_version.as_str()));
        }
    }
    for header in &server.headers {
        headers.push((header.name.as_str(), header.value.as_str()));
    }
    headers
}

/// The JSON-RPC message of an upstream answer: the body itself (JSON), or the first SSE event
/// that carries a response (SSE).
pub fn response_message(content_type: Option<&[u8]>, body: &[u8]) -> Option<Vec<u8>> {
    let is_sse = content_type
        .map(|ct| {
            ct.windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        })
        .unwrap_or(false);
    if !is_sse {
        return Some(body.to_vec());
    }
    sse::parse_all(body)
        .into_iter()
        .map(|event| event.data.into_bytes())
        .find(|data| is_response(data))
}

fn is_response(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(default, borrow)]
        result: Option<&'a RawValue>,
        #[serde(default, borrow)]
        error: Option<&'a RawValue>,
    }
    crate::jsonrpc::from_json_bytes::<Probe>(data)
        .map(|p| p.result.is_some() || p.error.is_some())
        .unwrap_or(false)
}

/// What an upstream `initialize` answer says: the negotiated version, or the upstream's error.
pub fn initialize_outcome(message: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(default, borrow)]
        result: Option<InitResult<'a>>,
        #[serde(default, borrow)]
        error: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct InitResult<'a> {
        #[serde(rename = "protocolVersion", borrow)]
        protocol_version: std::borrow::Cow<'a, str>,
    }
    let answer: Answer = crate::jsonrpc::from_json_bytes(message)
        .map_err(|e| format!("unreadable initialize answer: {e}"))?;
    match (answer.result, answer.error) {
        (Some(result), _) => Ok(result.protocol_version.into_owned()),
        (None, Some(error)) => Err(format!("initialize failed: {}", error.get())),
        (None, None) => Err("initialize answer has neither result nor error".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_relays_client_info_and_the_relayable_capabilities() {
        let claims = Claims {
            iat: 0,
            pv: "2025-06-18".into(),
            caps: Some(
                RawValue::from_string(
                    r#"{"sampling":{},"experimental":{"x":{}},"elicitation":{"form":{}},"tasks":{}}"#
                        .into(),
                )
                .unwrap(),
            ),
            info: Some(RawValue::from_string(r#"{"name":"c","version":"1"}"#.into()).unwrap()),
        };
        let body: serde_json::Value = serde_json::from_str(&initialize_body(&claims)).unwrap();
        assert_eq!(body["params"]["protocolVersion"], "2025-06-18");
        assert_eq!(body["params"]["clientInfo"]["name"], "c");
        let caps = &body["params"]["capabilities"];
        assert!(caps.get("sampling").is_some() && caps.get("experimental").is_some());
        assert_eq!(caps["elicitation"]["form"], serde_json::json!({}));
        assert!(caps.get("tasks").is_none(), "not relayable");
    }

    #[test]
    fn reads_json_and_sse_answers() {
        let json = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}"#;
        let message = response_message(Some(b"application/json"), json).unwrap();
        assert_eq!(initialize_outcome(&message).unwrap(), "2025-06-18");
        let sse = b"id: 1\r\ndata: \r\n\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"error\":{\"code\":-1,\"message\":\"no\"}}\r\n\r\n";
        let message = response_message(Some(b"text/event-stream; charset=utf-8"), sse).unwrap();
        assert!(initialize_outcome(&message).unwrap_err().contains("no"));
        assert!(response_message(Some(b"text/event-stream"), b"data: {}\n\n").is_none());
    }
}
