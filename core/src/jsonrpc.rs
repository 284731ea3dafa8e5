//! JSON-RPC 2.0 framing: one borrowed parse of a client message, and rendering of answers.
//!
//! The parse keeps every parameter the gateway does not interpret as raw, unparsed JSON so that
//! tool arguments are scanned once and never re-serialized.

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// Members of the message object the gateway reads or classifies by.
const MESSAGE_MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

/// Members of `params` the gateway reads (`name`, `cursor`, `protocolVersion`, `capabilities`,
/// `clientInfo`) or that MCP defines for the requests it forwards (`arguments`, `_meta`, `task`).
const PARAMS_MEMBERS: &[&str] = &[
    "name",
    "uri",
    "ref",
    "argument",
    "level",
    "requestId",
    "progressToken",
    "arguments",
    "_meta",
    "task",
    "cursor",
    "protocolVersion",
    "capabilities",
    "clientInfo",
];

/// The parameters the gateway reads, all kept raw (borrowed from the body, so a value's span in
/// the body can be found) so no method's parameter shape fails the parse.
#[derive(Default)]
pub struct Params<'a> {
    pub name: Option<&'a RawValue>,
    pub uri: Option<&'a RawValue>,
    pub level: Option<&'a RawValue>,
    /// `notifications/cancelled`'s request id.
    pub request_id: Option<&'a RawValue>,
    /// `notifications/progress`'s token.
    pub progress_token: Option<&'a RawValue>,
    /// `completion/complete`'s reference (a prompt or a resource template).
    pub reference: Option<Reference<'a>>,
    pub cursor: Option<&'a RawValue>,
    pub protocol_version: Option<&'a RawValue>,
    pub capabilities: Option<&'a RawValue>,
    pub client_info: Option<&'a RawValue>,
    /// `tools/call`'s arguments (read only when arguments are pinned).
    pub arguments: Option<&'a RawValue>,
    /// `_meta`, raw (2026-07-28 requests carry their protocol version and capabilities there).
    pub meta: Option<&'a RawValue>,
}

/// Members of a completion `ref` the gateway reads; routed on, so checked like `params`.
const REF_MEMBERS: &[&str] = &["type", "name", "uri"];

/// `params.ref` of `completion/complete`, kept raw.
#[derive(Default)]
pub struct Reference<'a> {
    pub kind: Option<&'a RawValue>,
    pub name: Option<&'a RawValue>,
    pub uri: Option<&'a RawValue>,
}

/// A client message, borrowed from the request body.
pub enum Message<'a> {
    Request {
        id: &'a RawValue,
        method: Cow<'a, str>,
        params: Params<'a>,
    },
    Notification {
        method: Cow<'a, str>,
        params: Params<'a>,
    },
    /// The client's answer to a server-to-client request.
    Response { id: &'a RawValue },
}

/// An object key, decoded (escapes resolved): borrowed when it had no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The members of one JSON object in document order: keys decoded, values raw (not parsed, so an
/// object is read in one pass whatever its values hold).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4).min(8));
                while let Some(Key(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

impl<'a> Members<'a> {
    /// The value of the member spelled exactly `name` (unique once [`check_members`] passed).
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// The id of a message when it can be read unambiguously, for error replies: exactly one
/// top-level key folds to `id` (see [`fold`]), it is spelled `id`, and its value is a valid id.
pub fn salvage_id(body: &str) -> Option<&RawValue> {
    let members: Members = serde_json::from_str(body).ok()?;
    let mut found = None;
    for (key, value) in &members.0 {
        if folds_equal(key, "id") {
            if found.is_some() || key != "id" {
                return None;
            }
            found = Some(*value);
        }
    }
    found.filter(|id| valid_id(id))
}

/// Parses one JSON-RPC message. Errors carry the code the client must see.
///
/// # One meaning per request
///
/// The gateway routes on `method` and `params.name`; an upstream must read the very message the
/// gateway read. Before anything else is interpreted this refuses (-32600, HTTP 400):
///
/// - a body nesting objects and arrays deeper than `max_depth` anywhere (strings excluded; the
///   message object is level 1), counted by [`nesting_deeper_than`];
/// - at the top level of the message object, and at the top level of `params` whenever it is
///   present (any method: every method the gateway routes or answers reads its params), two keys
///   that are equal after decoding escapes and folding as lenient parsers do (see [`fold`]): a
///   parser that keeps the last duplicate, or matches field names case-insensitively like Go's
///   `encoding/json`, would read another value than the gateway;
/// - at those two levels, a key that folds to a member the gateway or MCP defines there
///   (`jsonrpc`, `id`, `method`, `params`, `result`, `error`; in params `name`, `arguments`,
///   `_meta`, `task`, `cursor`, `protocolVersion`, `capabilities`, `clientInfo`) without being
///   spelled exactly so: alone, `"Method"` is no method to the gateway but the method to Go.
///
/// Deeper levels (inside `arguments`, `_meta`, `capabilities`, ...) are the upstream's to read
/// and are forwarded byte for byte; they are checked for depth only.
pub fn parse_message(body: &str, max_depth: usize) -> Result<Message<'_>, GatewayError> {
    match body.trim_start().as_bytes().first() {
        Some(b'{') => {}
        Some(b'[') => {
            return Err(GatewayError::invalid_request(
                "Invalid Request: JSON-RPC batches are not supported",
            ))
        }
        Some(_) => {
            // Valid JSON that is not an object is an invalid request; anything else a parse error.
            return Err(match serde_json::from_str::<IgnoredAny>(body) {
                Ok(_) => GatewayError::invalid_request(
                    "Invalid Request: a JSON-RPC message must be an object",
                ),
                Err(e) => GatewayError::parse(format!("Parse error: {e}")),
            });
        }
        None => return Err(GatewayError::parse("Parse error: empty body")),
    }
    if nesting_deeper_than(body.as_bytes(), max_depth) {
        return Err(GatewayError::invalid_request(format!(
            "Invalid Request: JSON nesting deeper than {max_depth}"
        ))
        .because("json_depth"));
    }
    let members: Members = serde_json::from_str(body).map_err(|e| {
        if e.is_data() {
            GatewayError::invalid_request(format!("Invalid Request: {e}"))
        } else {
            GatewayError::parse(format!("Parse error: {e}"))
        }
    })?;
    check_members(&members, MESSAGE_MEMBERS, "")?;
    if members.get("jsonrpc").and_then(raw_str).as_deref() != Some("2.0") {
        return Err(GatewayError::invalid_request(
            "Invalid Request: jsonrpc must be \"2.0\"",
        ));
    }
    let id = members.get("id");
    if let Some(id) = id {
        if !valid_id(id) {
            return Err(GatewayError::invalid_request(
                "Invalid Request: id must be a string or an integer of at most 2^53 - 1",
            ));
        }
    }
    let params = match members.get("params") {
        None => Params::default(),
        Some(raw) => read_params(raw)?,
    };
    // `null` counts as absent, as it always has for these two.
    let present = |name: &str| members.get(name).is_some_and(|v| v.get() != "null");
    match (members.get("method"), id) {
        (Some(method), id) => {
            let method = raw_str(method).ok_or_else(|| {
                GatewayError::invalid_request("Invalid Request: method must be a string")
            })?;
            Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            })
        }
        (None, Some(id)) if present("result") != present("error") => Ok(Message::Response { id }),
        _ => Err(GatewayError::invalid_request(
            "Invalid Request: not a JSON-RPC request, notification or response",
        )),
    }
}

/// Largest JSON-RPC batch the gateway serves (elements, of any kind).
pub const MAX_BATCH: usize = 64;

/// The body is a JSON-RPC batch (an array), which [`parse_message`] refuses.
pub fn is_batch(body: &str) -> bool {
    body.trim_start().starts_with('[')
}

/// Splits a batch into its elements, raw (each is then read with [`parse_message`], so every
/// element gets the one-meaning checks of a single message). The whole body is checked for depth
/// first: the array is one level more than its elements, so the limit is `max_depth + 1`.
/// An empty batch, or one of more than `max_len` elements, is refused (-32600, HTTP 400).
pub fn parse_batch(
    body: &str,
    max_depth: usize,
    max_len: usize,
) -> Result<Vec<&RawValue>, GatewayError> {
    if nesting_deeper_than(body.as_bytes(), max_depth.saturating_add(1)) {
        return Err(GatewayError::invalid_request(format!(
            "Invalid Request: JSON nesting deeper than {max_depth}"
        ))
        .because("json_depth"));
    }
    let elements: Vec<&RawValue> = serde_json::from_str(body).map_err(|e| {
        if e.is_data() {
            GatewayError::invalid_request(format!("Invalid Request: {e}"))
        } else {
            GatewayError::parse(format!("Parse error: {e}"))
        }
    })?;
    if elements.is_empty() {
        return Err(GatewayError::invalid_request("Invalid Request: empty batch").because("batch"));
    }
    if elements.len() > max_len {
        return Err(GatewayError::invalid_request(format!(
            "Invalid Request: a batch may hold at most {max_len} messages"
        ))
        .because("batch"));
    }
    Ok(elements)
}

/// Checks the top level of `params` (see [`parse_message`]) and picks the members the gateway reads.
fn read_params(raw: &RawValue) -> Result<Params<'_>, GatewayError> {
    if !raw.get().starts_with('{') {
        return Err(GatewayError::invalid_request(
            "Invalid Request: params must be an object",
        ));
    }
    let members: Members = serde_json::from_str(raw.get())
        .map_err(|e| GatewayError::invalid_request(format!("Invalid Request: params: {e}")))?;
    check_members(&members, PARAMS_MEMBERS, " in params")?;
    let reference = match members.get("ref") {
        None => None,
        Some(raw) if raw.get().starts_with('{') => {
            let reference: Members = serde_json::from_str(raw.get()).map_err(|e| {
                GatewayError::invalid_request(format!("Invalid Request: params.ref: {e}"))
            })?;
            check_members(&reference, REF_MEMBERS, " in params.ref")?;
            Some(Reference {
                kind: reference.get("type"),
                name: reference.get("name"),
                uri: reference.get("uri"),
            })
        }
        Some(_) => {
            return Err(GatewayError::invalid_params(
                "Invalid params: ref must be an object",
            ))
        }
    };
    Ok(Params {
        name: members.get("name"),
        uri: members.get("uri"),
        level: members.get("level"),
        request_id: members.get("requestId"),
        progress_token: members.get("progressToken"),
        reference,
        cursor: members.get("cursor"),
        protocol_version: members.get("protocolVersion"),
        capabilities: members.get("capabilities"),
        client_info: members.get("clientInfo"),
        arguments: members.get("arguments"),
        meta: members.get("_meta"),
    })
}

/// Refuses the keys of one object level that another parser could read differently: a key that
/// folds to a `known` member without being spelled so, and two keys that fold equal. `place`
/// (`""` or `" in params"`) goes into the message.
fn check_members(members: &Members<'_>, known: &[&str], place: &str) -> Result<(), GatewayError> {
    // The usual object: a few plain keys (see `is_plain`), compared with each other pairwise,
    // without folding or sorting.
    if members.0.len() <= 16 && members.0.iter().all(|(key, _)| is_plain(key)) {
        for (i, (key, _)) in members.0.iter().enumerate() {
            // A plain key folds to its own length: a longer one cannot fold to a member.
            if let Some(member) = known
                .iter()
                .find(|m| key.len() <= m.len() && **m != key.as_ref() && folds_equal(key, m))
            {
                return Err(ambiguous(key, member, place));
            }
            let earlier = members.0.iter().take(i).map(|(k, _)| k.as_ref());
            if let Some(first) = earlier.clone().find(|first| *first == key.as_ref()) {
                return Err(duplicate(first, place));
            }
            if let Some(first) = earlier
                .clone()
                .find(|first| first.eq_ignore_ascii_case(key))
            {
                return Err(ambiguous(key, first, place));
            }
        }
        return Ok(());
    }
    for (key, _) in &members.0 {
        if let Some(member) = known
            .iter()
            .find(|m| **m != key.as_ref() && folds_equal(key, m))
        {
            return Err(ambiguous(key, member, place));
        }
    }
    if members.0.len() < 2 {
        return Ok(());
    }
    // Sorting by folded key puts equal ones next to each other: n log n, even for objects with
    // thousands of keys. The sort is stable, so the earlier of two keys comes first.
    let mut keys: Vec<&str> = members.0.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_by(|a, b| fold(a).cmp(fold(b)));
    for pair in keys.windows(2) {
        if let [first, second] = pair {
            if first == second {
                return Err(duplicate(first, place));
            }
            if folds_equal(first, second) {
                return Err(ambiguous(second, first, place));
            }
        }
    }
    Ok(())
}

fn duplicate(key: &str, place: &str) -> GatewayError {
    GatewayError::invalid_request(format!(
        "Invalid Request: duplicate key {}{place}",
        quote_key(key)
    ))
    .because("duplicate_key")
}

fn ambiguous(key: &str, read_as: &str, place: &str) -> GatewayError {
    GatewayError::invalid_request(format!(
        "Invalid Request: key {}{place} is ambiguous (an upstream may read it as {})",
        quote_key(key),
        quote_key(read_as)
    ))
    .because("ambiguous_key")
}

/// A key as JSON text for a message, cut to 64 characters.
fn quote_key(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((end, _)) => json_string(&format!("{}...", key.get(..end).unwrap_or_default())),
        None => json_string(key),
    }
}

/// A key as the most lenient parsers compare it, as a sequence of characters:
///
/// - ASCII letters in one case (Go's `encoding/json` v1 matches field names case-insensitively,
///   as do Jackson's and System.Text.Json's case-insensitive options and cJSON's default lookup);
/// - the only four non-ASCII characters whose simple case mappings reach an ASCII letter: U+017F
///   `ſ` (upper case `S`), U+212A Kelvin sign (lower case `k`), U+0130 `İ` (lower case `i`) and
///   U+0131 `ı` (upper case `I`). Go folds the first two, Java's `equalsIgnoreCase` all four;
/// - `_` and `-` dropped (Go's `encoding/json/v2` ignores them with `MatchCaseInsensitiveNames`
///   or `case:ignore`);
/// - nothing from the first U+0000 on (C parsers such as cJSON see a NUL-terminated key).
///
/// Other non-ASCII letters are left alone: the members compared against are ASCII, and two
/// non-ASCII keys differing only in case are no member the gateway or MCP defines.
fn fold(key: &str) -> impl Iterator<Item = char> + '_ {
    key.chars()
        .take_while(|c| *c != '\0')
        .filter(|c| !matches!(c, '_' | '-'))
        .map(|c| match c {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            '\u{130}' | '\u{131}' => 'i',
            c => c.to_ascii_lowercase(),
        })
}

/// A key whose fold is its ASCII lower case: nothing outside ASCII, no `_`, `-` or NUL.
fn is_plain(key: &str) -> bool {
    key.bytes()
        .all(|b| b.is_ascii() && !matches!(b, b'_' | b'-' | b'\0'))
}

fn folds_equal(a: &str, b: &str) -> bool {
    if is_plain(a) && is_plain(b) {
        return a.eq_ignore_ascii_case(b);
    }
    fold(a).eq(fold(b))
}

/// The body nests objects and arrays more than `limit` deep (the outermost value is level 1).
///
/// One pass over the bytes, no allocation: brackets inside strings do not count, and a
/// backslash inside a string escapes the next byte (so `"\""` and `"\\"` end where JSON says).
/// For valid JSON the depth is exact; invalid JSON is refused by the parser anyway.
pub fn nesting_deeper_than(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Reads a raw JSON value that must be a string.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str(raw.get()).ok()
}

/// Largest integer id: every JSON parser reads integers up to 2^53 - 1 exactly (JavaScript's
/// `Number.MAX_SAFE_INTEGER`); a larger one would mean another id to a JavaScript upstream.
const MAX_INTEGER_ID: i64 = (1 << 53) - 1;

fn valid_id(id: &RawValue) -> bool {
    let text = id.get();
    match text.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => text
            .parse::<i64>()
            .is_ok_and(|n| (-MAX_INTEGER_ID..=MAX_INTEGER_ID).contains(&n)),
        _ => false,
    }
}

/// Byte range of `inner` within `outer`, when `inner` is a sub-slice of it (as every value
/// borrowed by a parse of `outer` is).
pub fn span_in(outer: &str, inner: &str) -> Option<std::ops::Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// `outer` with the bytes of `range` replaced by `replacement`.
pub fn splice(outer: &str, range: std::ops::Range<usize>, replacement: &str) -> Option<String> {
    let head = outer.get(..range.start)?;
    let tail = outer.get(range.end..)?;
    let mut out = String::with_capacity(head.len() + replacement.len() + tail.len());
    out.push_str(head);
    out.push_str(replacement);
    out.push_str(tail);
    Some(out)
}

/// JSON text of a string.
/// Reads JSON from bytes. Every read of the plugin goes through `serde_json::from_str`, so one
/// parser is compiled into the module, not a second one for byte slices (about 10 KB).
pub fn from_json_bytes<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

pub fn json_string(value: &str) -> String {
    // What serde_json escapes: `"`, `\\` and control characters; anything else is copied.
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        let mut out = String::with_capacity(value.len() + 2);
        out.push('"');
        out.push_str(value);
        out.push('"');
        return out;
    }
    serde_json::to_string(value).unwrap_or_else(|_| String::from("\"\""))
}

/// `{"jsonrpc":"2.0","id":ID,"result":RESULT}`; `result` must be JSON text.
pub fn result_body(id: &str, result: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(result.len() + id.len() + 40);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
    out
}

/// A JSON-RPC error answer; `id` is raw JSON (`null` when the request's id is unknown).
pub fn error_body(id: Option<&str>, error: &GatewayError) -> Vec<u8> {
    let data = error
        .data
        .as_deref()
        .map(|d| format!(",\"data\":{d}"))
        .unwrap_or_default();
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{},\"message\":{}{data}}}}}",
        id.unwrap_or("null"),
        error.code,
        json_string(&error.message)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{INVALID_REQUEST, PARSE_ERROR};

    const DEPTH: usize = 64;

    #[test]
    fn batches_are_split_into_raw_elements_within_limits() {
        let body =
            r#" [{"jsonrpc":"2.0","id":1,"method":"ping"}, 7, {"jsonrpc":"2.0","method":"n"}]"#;
        assert!(is_batch(body));
        let elements = parse_batch(body, DEPTH, MAX_BATCH).unwrap();
        assert_eq!(elements.len(), 3);
        assert!(matches!(
            parse_message(elements[0].get(), DEPTH),
            Ok(Message::Request { .. })
        ));
        assert_eq!(
            parse_message(elements[1].get(), DEPTH)
                .err()
                .map(|e| e.code),
            Some(INVALID_REQUEST)
        );
        assert_eq!(
            parse_batch("[]", DEPTH, MAX_BATCH).unwrap_err().code,
            INVALID_REQUEST
        );
        assert_eq!(
            parse_batch("[1,2,3]", DEPTH, 2).unwrap_err().code,
            INVALID_REQUEST
        );
        assert_eq!(parse_batch("[1,", DEPTH, 2).unwrap_err().code, PARSE_ERROR);
        // Elements may nest as deep as a single message, not deeper.
        let deep = |n: usize| format!("[{}1{}]", "[".repeat(n), "]".repeat(n));
        assert!(parse_batch(&deep(DEPTH), DEPTH, MAX_BATCH).is_ok());
        let err = parse_batch(&deep(DEPTH + 1), DEPTH, MAX_BATCH).unwrap_err();
        assert_eq!(err.check, "json_depth");
    }

    fn parse(body: &str) -> Result<Message<'_>, GatewayError> {
        parse_message(body, DEPTH)
    }

    fn code(body: &str) -> i32 {
        match parse(body) {
            Ok(_) => 0,
            Err(e) => e.code,
        }
    }

    /// The error message for `body`, which must be refused with -32600 (HTTP 400).
    fn refused(body: &str) -> String {
        match parse(body) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => {
                assert_eq!(
                    (e.code, e.http_status),
                    (INVALID_REQUEST, 400),
                    "{body}: {e}"
                );
                e.message.into_owned()
            }
        }
    }

    /// A tools/call whose params are `params` (JSON text).
    fn call(params: &str) -> String {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#)
    }

    #[test]
    fn classifies_messages() {
        match parse(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap() {
            Message::Request { id, method, params } => {
                assert_eq!(id.get(), "7");
                assert_eq!(method, "tools/list");
                assert!(params.name.is_none() && params.cursor.is_none());
            }
            _ => panic!("expected a request"),
        }
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Message::Notification { .. }
        ));
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap(),
            Message::Response { .. }
        ));
    }

    #[test]
    fn rejects_bad_input_with_the_right_code() {
        assert_eq!(code("{not json"), PARSE_ERROR);
        assert_eq!(code(""), PARSE_ERROR);
        assert_eq!(code("\u{1}"), PARSE_ERROR);
        assert_eq!(code("42"), INVALID_REQUEST);
        assert_eq!(
            code(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            INVALID_REQUEST
        );
        assert_eq!(code(r#"{"id":1,"method":"ping"}"#), INVALID_REQUEST);
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#),
            INVALID_REQUEST
        );
        // Integers every upstream parser reads as the same number (JavaScript's safe range).
        for huge in [
            "9007199254740992",
            "-9007199254740992",
            "1111111111111111111111",
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{huge},"method":"ping"}}"#);
            assert_eq!(code(&body), INVALID_REQUEST, "{huge}");
        }
        for fine in ["9007199254740991", "-9007199254740991", "0", "-0"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{fine},"method":"ping"}}"#);
            assert_eq!(code(&body), 0, "{fine}");
        }
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":3}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            INVALID_REQUEST
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        // A duplicate key could make the gateway and the upstream read different values.
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#),
            PARSE_ERROR
        );
    }

    #[test]
    fn params_keep_arguments_raw() {
        let body = call(r#"{"name":"a_echo","arguments":{"x":[1,2,{"y":"z"}]}}"#);
        let Message::Request { params, .. } = parse(&body).unwrap() else {
            panic!("expected a request");
        };
        let name = params.name.unwrap();
        assert_eq!(name.get(), "\"a_echo\"");
        // Borrowed from the body, so the gateway can splice the name in place.
        assert_eq!(&body[span_in(&body, name.get()).unwrap()], "\"a_echo\"");
        assert!(params.cursor.is_none());
    }

    #[test]
    fn keys_are_compared_after_decoding_escapes() {
        assert_eq!(
            refused(&call(r#"{"name":"alpha_echo","n\u0061me":"beta_secret"}"#)),
            r#"Invalid Request: duplicate key "name" in params"#
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1,"method":"ping","m\u0065thod":"tools/call"}"#),
            r#"Invalid Request: duplicate key "method""#
        );
        // Members the gateway does not read are forwarded, so they must not repeat either.
        assert_eq!(
            refused(&call(
                r#"{"name":"a_echo","arguments":{},"\u0061rguments":{"x":1}}"#
            )),
            r#"Invalid Request: duplicate key "arguments" in params"#
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1,"method":"ping","x":1,"x":2}"#),
            r#"Invalid Request: duplicate key "x""#
        );
        // An escaped spelling that stands alone is the member itself.
        assert!(parse(&call(r#"{"n\u0061me":"a_echo"}"#)).is_ok());
        let ok = r#"{"j\u0073onrpc":"2.0","\u0069d":1,"method":"ping"}"#;
        assert!(matches!(parse(ok), Ok(Message::Request { .. })));
    }

    #[test]
    fn case_variants_are_refused_in_params() {
        assert_eq!(
            refused(&call(r#"{"name":"alpha_echo","Name":"beta_secret"}"#)),
            r#"Invalid Request: key "Name" in params is ambiguous (an upstream may read it as "name")"#
        );
        // Whichever comes first.
        assert_eq!(
            refused(&call(r#"{"NAME":"beta_secret","name":"alpha_echo"}"#)),
            r#"Invalid Request: key "NAME" in params is ambiguous (an upstream may read it as "name")"#
        );
        // Alone, too: the gateway sees no name where Go sees one.
        assert!(refused(&call(r#"{"nAmE":"beta_secret"}"#)).contains(r#"key "nAmE" in params"#));
        for params in [
            r#"{"name":"a_echo","Arguments":{}}"#,
            r#"{"name":"a_echo","_META":{}}"#,
            r#"{"name":"a_echo","meta":{}}"#,
            r#"{"cursor":"x","CURSOR":"y"}"#,
            r#"{"protocolversion":"2025-06-18"}"#,
            r#"{"protocol_version":"2025-06-18"}"#,
            r#"{"clientinfo":{}}"#,
            r#"{"Capabilities":{}}"#,
            r#"{"TASK":{}}"#,
        ] {
            let message = refused(&call(params));
            assert!(
                message.contains("in params is ambiguous"),
                "{params}: {message}"
            );
        }
        // Unknown members that fold together are refused as well.
        assert_eq!(
            refused(&call(r#"{"name":"a_echo","foo":1,"FOO":2}"#)),
            r#"Invalid Request: key "FOO" in params is ambiguous (an upstream may read it as "foo")"#
        );
        // Every method's params are checked, and notifications' too.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"a","Cursor":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"x","ProtocolVersion":"y"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"whatever","params":{"x":1,"X":2}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"requestid":2}}"#,
        ] {
            refused(body);
        }
    }

    #[test]
    fn case_variants_are_refused_at_the_top_level() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call"}"#,
                "METHOD",
                "method",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call"}"#,
                "Method",
                "method",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","Params":{}}"#,
                "Params",
                "params",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"ID":2,"method":"ping"}"#,
                "ID",
                "id",
            ),
            (
                r#"{"jsonrpc":"2.0","JsonRpc":"1.0","id":1,"method":"ping"}"#,
                "JsonRpc",
                "jsonrpc",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"Result":{}}"#,
                "Result",
                "result",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{},"ERROR":{}}"#,
                "ERROR",
                "error",
            ),
        ];
        for (body, key, member) in cases {
            assert_eq!(
                refused(body),
                format!(
                    r#"Invalid Request: key "{key}" is ambiguous (an upstream may read it as "{member}")"#
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn unicode_folds_and_other_lenient_spellings_are_refused() {
        // U+017F folds to s and U+212A (Kelvin) to k in Go; U+0130/U+0131 upper-case to I.
        for (body, key) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","param\u017f":{}}"#,
                "param\u{17F}",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","paramſ":{}}"#,
                "param\u{17F}",
            ),
            (
                r#"{"jsonrpc":"2.0","\u0131d":1,"method":"ping"}"#,
                "\u{131}d",
            ),
            (
                r#"{"jsonrpc":"2.0","\u0130D":1,"method":"ping"}"#,
                "\u{130}D",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","method\u0000x":"tools/call"}"#,
                "method\\u0000x",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","me_thod":"tools/call"}"#,
                "me_thod",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","-method":"tools/call"}"#,
                "-method",
            ),
        ] {
            let message = refused(body);
            assert!(
                message.contains(&format!("key \"{key}\" is ambiguous")),
                "{body}: {message}"
            );
        }
        assert!(
            refused(&call(r#"{"name":"a_echo","\u017fecret":1,"secret":2}"#)).contains(
                r#"key "secret" in params is ambiguous (an upstream may read it as "ſecret")"#
            )
        );
        assert!(refused(&call(r#"{"name":"a_echo","\u212aey":1,"key":2}"#)).contains("ambiguous"));
        assert!(refused(&call(r#"{"name":"a_echo","Key":1,"\u212aEY":2}"#)).contains("ambiguous"));
        // Other non-ASCII keys are distinct keys.
        assert!(parse(&call(r#"{"name":"a_echo","é":1,"É":2,"ß":3,"ss":4}"#)).is_ok());
    }

    #[test]
    fn deeper_levels_are_the_upstream_s_to_read() {
        let body =
            call(r#"{"name":"a_echo","arguments":{"x":1,"X":2,"Name":"b","a":{"b":1,"B":2}}}"#);
        assert!(parse(&body).is_ok());
        // Distinct keys that merely look alike pass.
        assert!(parse(&call(r#"{"name":"a_echo","nam":1,"names":2,"name2":3}"#)).is_ok());
    }

    #[test]
    fn long_keys_are_cut_in_messages_and_many_keys_stay_cheap() {
        let long = "k".repeat(1000);
        let message = refused(&call(&format!(
            r#"{{"{long}":1,"{}":2}}"#,
            long.to_uppercase()
        )));
        assert!(message.len() < 250, "{message}");
        // Ten thousand distinct keys: sorted once, not compared pairwise.
        let keys: Vec<String> = (0..10_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let body = call(&format!(r#"{{"name":"a_echo",{}}}"#, keys.join(",")));
        assert!(parse(&body).is_ok());
        let body = call(&format!(
            r#"{{"name":"a_echo",{},"K9999":0}}"#,
            keys.join(",")
        ));
        assert!(refused(&body).contains(
            r#"key "K9999" in params is ambiguous (an upstream may read it as "k9999")"#
        ));
    }

    #[test]
    fn the_id_is_salvaged_only_when_unambiguous() {
        let id = |body: &str| salvage_id(body).map(|id| id.get().to_owned());
        let body = call(r#"{"name":"a","Name":"b"}"#);
        assert_eq!(id(&body).as_deref(), Some("1"));
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":"x","Method":"ping"}"#).as_deref(),
            Some("\"x\"")
        );
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":1,"ID":2,"method":"ping"}"#),
            None
        );
        assert_eq!(id(r#"{"jsonrpc":"2.0","ID":2,"method":"ping"}"#), None);
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":1,"\u0069d":2,"method":"ping"}"#),
            None
        );
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","\u0131d":2,"id":1,"method":"ping"}"#),
            None
        );
    }

    /// What a body nesting `depth` levels deep looks like: the message (1), params (2),
    /// arguments (3), then arrays.
    fn nested(depth: usize) -> String {
        let arrays = depth - 3;
        call(&format!(
            r#"{{"name":"a_echo","arguments":{{"x":{}1{}}}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        ))
    }

    #[test]
    fn raw_values_alone_do_not_bound_nesting() {
        // serde_json stops at 128 levels when building values, but skips raw values without a
        // limit (iteratively): without the gateway's own check this would be forwarded.
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(serde_json::from_str::<&RawValue>(&deep).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        let body = call(&format!(
            r#"{{"name":"a_echo","arguments":{{"x":{deep}}}}}"#
        ));
        assert!(parse_message(&body, usize::MAX).is_ok());
        assert_eq!(
            refused(&body),
            "Invalid Request: JSON nesting deeper than 64"
        );
        let meta = call(&format!(r#"{{"name":"a_echo","_meta":{{"x":{deep}}}}}"#));
        assert_eq!(
            refused(&meta),
            "Invalid Request: JSON nesting deeper than 64"
        );
    }

    #[test]
    fn nesting_is_bounded_at_the_limit() {
        assert!(parse(&nested(63)).is_ok());
        assert!(parse(&nested(64)).is_ok());
        assert_eq!(
            refused(&nested(65)),
            "Invalid Request: JSON nesting deeper than 64"
        );
        assert!(parse_message(&nested(65), 65).is_ok());
        assert!(parse_message(&nested(10), 9).is_err());
        // Objects count like arrays (arguments is the outermost of these, at level 3).
        let objects = format!("{}1{}", r#"{"a":"#.repeat(62), "}".repeat(62));
        assert!(parse(&call(&format!(
            r#"{{"name":"a_echo","arguments":{objects}}}"#
        )))
        .is_ok());
        let objects = format!("{}1{}", r#"{"a":"#.repeat(63), "}".repeat(63));
        assert!(parse(&call(&format!(
            r#"{{"name":"a_echo","arguments":{objects}}}"#
        )))
        .is_err());
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let text = format!("{}{}", "[{".repeat(5000), "]}".repeat(5000));
        let body = call(&format!(
            r#"{{"name":"a_echo","arguments":{{"t":"{text}"}}}}"#
        ));
        assert!(parse(&body).is_ok());
        // Escaped quotes and backslashes do not end or start a string early.
        for arguments in [
            format!(r#"{{"t":"\"{text}\""}}"#),
            format!(r#"{{"t":"\\","u":"{text}"}}"#),
            format!(r#"{{"t":"\\\"{text}\\\\"}}"#),
            format!(r#"{{"\"[[[":"{text}"}}"#),
        ] {
            let body = call(&format!(r#"{{"name":"a_echo","arguments":{arguments}}}"#));
            assert!(parse(&body).is_ok(), "{body}");
        }
        // And brackets after an escaped backslash that ends a string do count.
        let deep = format!(r#"{{"t":"\\","u":{}1{}}}"#, "[".repeat(70), "]".repeat(70));
        let body = call(&format!(r#"{{"name":"a_echo","arguments":{deep}}}"#));
        assert_eq!(
            refused(&body),
            "Invalid Request: JSON nesting deeper than 64"
        );
    }

    #[test]
    fn the_depth_scanner_counts_exactly() {
        assert!(!nesting_deeper_than(b"", 0));
        assert!(!nesting_deeper_than(b"1", 0));
        assert!(nesting_deeper_than(b"{}", 0));
        assert!(!nesting_deeper_than(b"{}", 1));
        assert!(!nesting_deeper_than(b"[[],[],{}]", 2));
        assert!(nesting_deeper_than(b"[[],[[]],{}]", 2));
        assert!(!nesting_deeper_than(br#"["[[[", "\"[[", "\\", {}]"#, 2));
        assert!(!nesting_deeper_than(br#"["\\\"[[["]"#, 1));
        assert!(nesting_deeper_than(br#"["\\", ["\\\\", [[]]]]"#, 3));
        // Stray closers never make the depth negative.
        assert!(nesting_deeper_than(b"]]]]{{", 1));
    }

    #[test]
    fn splices_by_span() {
        let body = r#"{"params":{"name":"a_echo"}}"#;
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(body).unwrap();
        assert!(params.contains_key("params"));
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow)]
            name: &'a RawValue,
        }
        #[derive(Deserialize)]
        struct B<'a> {
            #[serde(borrow)]
            params: P<'a>,
        }
        let b: B = serde_json::from_str(body).unwrap();
        let span = span_in(body, b.params.name.get()).unwrap();
        assert_eq!(
            splice(body, span, "\"echo\"").unwrap(),
            r#"{"params":{"name":"echo"}}"#
        );
        assert!(span_in(body, "elsewhere").is_none());
    }

    #[test]
    fn renders_answers() {
        let err = GatewayError::invalid_params("bad \"cursor\"");
        assert_eq!(
            String::from_utf8(error_body(None, &err)).unwrap(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32602,"message":"bad \"cursor\""}}"#
        );
        assert_eq!(
            String::from_utf8(result_body("\"x\"", "{}")).unwrap(),
            r#"{"jsonrpc":"2.0","id":"x","result":{}}"#
        );
        assert_eq!(salvage_id(r#"{"id":3,"method":5}"#).unwrap().get(), "3");
        assert!(salvage_id(r#"{"id":[1]}"#).is_none());
    }
}
