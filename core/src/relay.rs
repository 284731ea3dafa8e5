//! What travels from an upstream to the client inside an SSE answer, relayed event by event as
//! each completes (never the whole stream buffered):
//! - a server-to-client request (`sampling/createMessage`, `elicitation/create`, `roots/list`,
//!   any other) gets an id the client can answer without colliding with another upstream's:
//!   `"mcpgw:<server>:<original id as JSON>"`, which needs no shared state to map back;
//! - `notifications/resources/updated` carries the URI as the client knows it, and so do the
//!   `contents` of a `resources/read` result;
//! - everything else (results, progress, log messages) passes unchanged.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::jsonrpc::{json_string, span_in, splice};
use crate::sse;

const ID_PREFIX: &str = "mcpgw:";

/// The id a client sees for an upstream's request (a JSON string, ready to splice).
pub fn encode_id(server: &str, id_json: &str) -> String {
    json_string(&format!("{ID_PREFIX}{server}:{id_json}"))
}

/// The server and the original id (JSON text) of an id made by [`encode_id`].
pub fn decode_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix(ID_PREFIX)?;
    let (server, original) = rest.split_once(':')?;
    let valid = match original.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(original).is_ok(),
        // An integer written as JSON writes it: the original id is spliced into the client's
        // answer as the id the upstream reads (`str::parse` alone also takes `007`).
        Some(b'-' | b'0'..=b'9') => {
            original.parse::<i64>().is_ok() && serde_json::from_str::<&RawValue>(original).is_ok()
        }
        _ => false,
    };
    valid.then_some((server, original))
}

/// Rewrites one upstream SSE stream for the client.
#[derive(Debug)]
pub struct SseRelay {
    parser: sse::Parser,
    server: String,
    /// The server's URIs are mapped (it has a prefix).
    mapped: bool,
    /// The answer is a `resources/read` result whose contents carry URIs.
    read_result: bool,
    /// The client speaks MCP 2026-07-28 and the upstream an earlier revision: results get the
    /// `resultType` 2026 requires.
    complete_results: bool,
}

impl SseRelay {
    /// `method`: the client's request this stream answers.
    pub fn new(server: &str, mapped: bool, method: Option<&str>) -> Self {
        Self {
            parser: sse::Parser::new(),
            server: server.to_owned(),
            mapped,
            read_result: method == Some("resources/read"),
            complete_results: false,
        }
    }

    /// For an MCP 2026-07-28 client of a session-era upstream: results get `resultType`.
    pub fn completing_results(mut self, complete: bool) -> Self {
        self.complete_results = complete;
        self
    }

    /// The bytes to pass on for this chunk: the events it completed, rewritten. An incomplete
    /// event waits for the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 32);
        for event in self.parser.feed(chunk) {
            let data = rewrite(&event.data, &self.server, self.mapped);
            let data = match self.mapped && self.read_result {
                true => match read_result_uris(&data, &self.server) {
                    Cow::Owned(mapped) => Cow::Owned(mapped),
                    Cow::Borrowed(_) => data,
                },
                false => data,
            };
            let data = match self.complete_results {
                true => match complete_result(&data, self.read_result) {
                    Cow::Owned(completed) => Cow::Owned(completed),
                    Cow::Borrowed(_) => data,
                },
                false => data,
            };
            write_event(&mut out, &event, &data);
        }
        out
    }
}

fn write_event(out: &mut Vec<u8>, event: &sse::Event, data: &str) {
    if let Some(name) = &event.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = &event.id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry) = event.retry {
        out.extend_from_slice(format!("retry: {retry}\n").as_bytes());
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<&'a RawValue>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UriParam<'a> {
    #[serde(default, borrow)]
    uri: Option<&'a RawValue>,
}

/// A JSON-RPC response whose `result` lacks `resultType` gets `"resultType":"complete"`: what
/// a session-era upstream's result means to an MCP 2026-07-28 client; with `read` (a
/// `resources/read` result, which 2026 requires to carry cache hints) also `"ttlMs":0` and
/// `"cacheScope":"private"`: the upstream said nothing about caching, so nothing is cached or
/// shared. Anything else unchanged.
pub fn complete_result(data: &str, read: bool) -> Cow<'_, str> {
    #[derive(serde::Deserialize)]
    struct Response<'a> {
        #[serde(borrow, default)]
        result: Option<&'a serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "resultType", default)]
        result_type: Option<serde::de::IgnoredAny>,
        #[serde(rename = "ttlMs", default)]
        ttl_ms: Option<serde::de::IgnoredAny>,
    }
    let Some(result) = serde_json::from_str::<Response<'_>>(data)
        .ok()
        .and_then(|r| r.result)
    else {
        return Cow::Borrowed(data);
    };
    let text = result.get();
    let Some(typed) = serde_json::from_str::<Typed>(text).ok() else {
        return Cow::Borrowed(data);
    };
    let Some(rest) = text
        .strip_prefix('{')
        .filter(|_| typed.result_type.is_none())
    else {
        return Cow::Borrowed(data);
    };
    let added = if read && typed.ttl_ms.is_none() {
        "\"resultType\":\"complete\",\"ttlMs\":0,\"cacheScope\":\"private\""
    } else {
        "\"resultType\":\"complete\""
    };
    let completed = if rest.trim_start().starts_with('}') {
        format!("{{{added}{rest}")
    } else {
        format!("{{{added},{rest}")
    };
    crate::jsonrpc::span_in(data, text)
        .and_then(|span| crate::jsonrpc::splice(data, span, &completed))
        .map_or(Cow::Borrowed(data), Cow::Owned)
}

/// One upstream message, as the client must see it.
pub fn rewrite<'d>(data: &'d str, server: &str, mapped: bool) -> Cow<'d, str> {
    // A message is an object: serde would also read a struct from an array by position, taking
    // a batch's first element for the id and its second for the method.
    if !data.trim_start().starts_with('{') {
        return Cow::Borrowed(data);
    }
    let Ok(peek) = serde_json::from_str::<Peek>(data) else {
        return Cow::Borrowed(data);
    };
    let replacement = match (peek.id, peek.method) {
        (Some(id), Some(_)) => {
            // The request's own progress token, if it asked for progress, is the upstream's too:
            // the client's progress notifications for it come back mapped the same way.
            let token = peek
                .params
                .and_then(|p| serde_json::from_str::<ParamsMeta>(p.get()).ok())
                .and_then(|p| p.meta)
                .and_then(|m| m.progress_token);
            let edits = [
                Some((id.get(), encode_id(server, id.get()))),
                token.map(|t| (t.get(), encode_id(server, t.get()))),
            ];
            return apply(data, edits.into_iter().flatten());
        }
        (None, Some(method)) if mapped && method.get() == "\"notifications/resources/updated\"" => {
            peek.params
                .and_then(|p| serde_json::from_str::<UriParam>(p.get()).ok())
                .and_then(|p| p.uri)
                .and_then(|uri| {
                    let value: String = serde_json::from_str(uri.get()).ok()?;
                    let mapped = format!("{}{server}/{value}", crate::catalog::MAPPED_URI_SCHEME);
                    Some((uri.get(), json_string(&mapped)))
                })
        }
        _ => None,
    };
    match replacement.and_then(|(raw, new)| splice(data, span_in(data, raw)?, &new)) {
        Some(rewritten) => Cow::Owned(rewritten),
        None => Cow::Borrowed(data),
    }
}

#[derive(Deserialize)]
struct ParamsMeta<'a> {
    #[serde(default, borrow, rename = "_meta")]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(default, borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// `data` with each (raw value inside it, replacement) applied, back to front.
fn apply<'d>(data: &'d str, edits: impl Iterator<Item = (&'d str, String)>) -> Cow<'d, str> {
    let mut spans: Vec<(std::ops::Range<usize>, String)> = edits
        .filter_map(|(raw, new)| Some((span_in(data, raw)?, new)))
        .collect();
    if spans.is_empty() {
        return Cow::Borrowed(data);
    }
    spans.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    let mut out = data.to_owned();
    for (span, replacement) in spans {
        if out.get(span.clone()).is_some() {
            out.replace_range(span, &replacement);
        }
    }
    Cow::Owned(out)
}

#[derive(Deserialize)]
struct ReadAnswer<'a> {
    #[serde(default, borrow)]
    result: Option<ReadResult<'a>>,
}

#[derive(Deserialize)]
struct ReadResult<'a> {
    #[serde(default, borrow)]
    contents: Vec<UriParam<'a>>,
}

/// A `resources/read` answer of a mapped server, its `contents[].uri` as the client knows them
/// (the contents themselves are never re-serialized: only the URIs' bytes change).
pub fn read_result_uris<'d>(data: &'d str, server: &str) -> Cow<'d, str> {
    let Ok(answer) = serde_json::from_str::<ReadAnswer>(data) else {
        return Cow::Borrowed(data);
    };
    let mut edits: Vec<(std::ops::Range<usize>, String)> = answer
        .result
        .into_iter()
        .flat_map(|r| r.contents)
        .filter_map(|c| {
            let raw = c.uri?;
            let value: String = serde_json::from_str(raw.get()).ok()?;
            let mapped = format!("{}{server}/{value}", crate::catalog::MAPPED_URI_SCHEME);
            Some((span_in(data, raw.get())?, json_string(&mapped)))
        })
        .collect();
    if edits.is_empty() {
        return Cow::Borrowed(data);
    }
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    let mut out = data.to_owned();
    for (span, replacement) in edits {
        if out.get(span.clone()).is_some() {
            out.replace_range(span, &replacement);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_completed_for_2026_clients() {
        let done = complete_result(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#, false);
        assert_eq!(
            done,
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","content":[]}}"#
        );
        let empty = complete_result(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, false);
        assert_eq!(
            empty,
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}}"#
        );
        let read = complete_result(r#"{"jsonrpc":"2.0","id":1,"result":{"contents":[]}}"#, true);
        assert_eq!(
            read,
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","ttlMs":0,"cacheScope":"private","contents":[]}}"#
        );
        for unchanged in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
        ] {
            assert!(matches!(
                complete_result(unchanged, false),
                Cow::Borrowed(_)
            ));
        }
    }

    #[test]
    fn ids_round_trip() {
        let id = encode_id("alpha", "7");
        let id: String = serde_json::from_str(&id).unwrap();
        assert_eq!(decode_id(&id), Some(("alpha", "7")));
        let id: String = serde_json::from_str(&encode_id("b", "\"x:y\"")).unwrap();
        assert_eq!(decode_id(&id), Some(("b", "\"x:y\"")));
        assert_eq!(decode_id("mcpgw:a:{}"), None);
        assert_eq!(decode_id("7"), None);
    }

    #[test]
    fn decoded_ids_are_json() {
        // Found by `cargo fuzz` (targets `relay` and `jsonrpc`): a client answering with this id
        // had `"id":007` forwarded upstream, a body no JSON parser reads.
        for id in [
            "mcpgw:alpha:007",
            "mcpgw:alpha:00",
            "mcpgw:alpha:-01",
            "mcpgw:alpha:1.0",
        ] {
            assert_eq!(decode_id(id), None, "{id}");
        }
        assert_eq!(decode_id("mcpgw:alpha:0"), Some(("alpha", "0")));
        assert_eq!(decode_id("mcpgw:alpha:-0"), Some(("alpha", "-0")));
        assert_eq!(
            decode_id("mcpgw:alpha:-9223372036854775808"),
            Some(("alpha", "-9223372036854775808"))
        );
    }

    #[test]
    fn server_requests_get_gateway_ids_and_the_rest_passes() {
        let request = r#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{}}"#;
        let out = rewrite(request, "alpha", true);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], "mcpgw:alpha:3");
        for unchanged in [
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1}}"#,
            "not json",
        ] {
            assert_eq!(rewrite(unchanged, "alpha", true), unchanged);
        }
        let updated = r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://w"}}"#;
        let v: serde_json::Value = serde_json::from_str(&rewrite(updated, "alpha", true)).unwrap();
        assert_eq!(v["params"]["uri"], "mcpgw://alpha/test://w");
        assert_eq!(rewrite(updated, "alpha", false), updated);
    }

    #[test]
    fn read_results_carry_the_clients_uris() {
        let answer = r#"{"jsonrpc":"2.0","id":2,"result":{"contents":[{"uri":"test://a","text":"x"},{"uri":"test://b","blob":"AA=="}]}}"#;
        let v: serde_json::Value = serde_json::from_str(&read_result_uris(answer, "srv")).unwrap();
        assert_eq!(v["result"]["contents"][0]["uri"], "mcpgw://srv/test://a");
        assert_eq!(v["result"]["contents"][1]["uri"], "mcpgw://srv/test://b");
        assert_eq!(v["result"]["contents"][1]["blob"], "AA==");
        let relayed = SseRelay::new("srv", true, Some("resources/read"))
            .feed(format!("data: {answer}\n\n").as_bytes());
        assert!(String::from_utf8(relayed)
            .unwrap()
            .contains("mcpgw://srv/test://b"));
        let error = r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32002,"message":"no"}}"#;
        assert_eq!(read_result_uris(error, "srv"), error);
    }

    #[test]
    fn an_upstream_requests_progress_token_is_mapped_like_its_id() {
        let request = r#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{"_meta":{"progressToken":"t-1"},"messages":[]}}"#;
        let v: serde_json::Value = serde_json::from_str(&rewrite(request, "alpha", false)).unwrap();
        assert_eq!(v["id"], "mcpgw:alpha:3");
        assert_eq!(v["params"]["_meta"]["progressToken"], "mcpgw:alpha:\"t-1\"");
        let token = v["params"]["_meta"]["progressToken"].as_str().unwrap();
        assert_eq!(decode_id(token), Some(("alpha", "\"t-1\"")));
    }

    #[test]
    fn only_objects_are_rewritten() {
        // Found by `cargo fuzz` (target `relay`): a batch (MCP 2025-03-26) had its first request
        // turned into a string id, `["mcpgw:alpha:{\"jsonrpc\"...}", ...]`.
        for unchanged in [
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":2,"method":"b"}]"#,
            r#"[7,"sampling/createMessage"]"#,
        ] {
            assert_eq!(rewrite(unchanged, "alpha", true), unchanged);
        }
        let spaced = " \n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"roots/list\"}";
        assert!(rewrite(spaced, "alpha", false).contains("\"mcpgw:alpha:1\""));
    }

    #[test]
    fn events_are_relayed_whole_whatever_the_chunking() {
        let body = "event: message\r\nid: e1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"elicitation/create\"}\r\n\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}\n\n";
        let whole = SseRelay::new("s", false, None).feed(body.as_bytes());
        for cut in 0..body.len() {
            let mut relay = SseRelay::new("s", false, None);
            let mut out = relay.feed(&body.as_bytes()[..cut]);
            out.extend(relay.feed(&body.as_bytes()[cut..]));
            assert_eq!(out, whole, "cut at {cut}");
        }
        let events = sse::parse_all(&whole);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id.as_deref(), Some("e1"));
        assert!(events[0].data.contains("\"mcpgw:s:0\""));
        assert_eq!(
            events[1].data,
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}"
        );
    }
}
