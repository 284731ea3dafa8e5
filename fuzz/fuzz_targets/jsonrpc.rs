//! `jsonrpc::parse_message` on arbitrary bytes, UTF-8 checked as the pipeline does, never panics
//! (nor does `salvage_id`, which the pipeline calls on a refused body).
//!
//! And the splicer property: for a routed request (`tools/call` and `prompts/get` by
//! `params.name`, `completion/complete` by `params.ref.name` or `params.ref.uri`, `resources/*`
//! by `params.uri`) and for a client's answer to a relayed request (its gateway id), replacing
//! the value in place as `pipeline.rs` does (`span_in` + `splice`) yields a body that
//! `parse_message` still accepts, reading the same message with only that value changed (compared
//! as `serde_json::Value`).
//!
//! Input: `body [0xFF replacement]`. 0xFF never occurs in UTF-8, so it splits a body from the new
//! name; without it a fixed name is used. A replacement that is a JSON string literal is spliced
//! verbatim (as a configured upstream name is, escapes and all), anything else JSON-encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpgw_core::catalog::MAPPED_URI_SCHEME;
use mcpgw_core::config::DEFAULT_MAX_JSON_DEPTH;
use mcpgw_core::jsonrpc::{self, Message};
use mcpgw_core::relay;
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (body, replacement) = match data.iter().position(|b| *b == 0xFF) {
        Some(at) => (&data[..at], data.get(at + 1..).unwrap_or_default()),
        None => (data, &b"upstream_echo"[..]),
    };
    if body.len() != data.len() {
        // The whole input, as the pipeline would see it.
        pipeline(data, replacement);
    }
    pipeline(body, replacement);
});

/// What `handle_message` does with a body, then the splice checks on what it accepted.
fn pipeline(body: &[u8], replacement: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    for depth in [DEFAULT_MAX_JSON_DEPTH, 3] {
        if let Err(_refused) = jsonrpc::parse_message(text, depth) {
            let _ = jsonrpc::salvage_id(text);
        }
    }
    let Ok(message) = jsonrpc::parse_message(text, DEFAULT_MAX_JSON_DEPTH) else {
        return;
    };
    match message {
        Message::Request { method, params, .. } => {
            let (raw, path): (Option<&RawValue>, &[&str]) = match method.as_ref() {
                "tools/call" | "prompts/get" => (params.name, &["params", "name"]),
                "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                    (params.uri, &["params", "uri"])
                }
                "completion/complete" => match params.reference.as_ref() {
                    Some(r) if r.name.is_some() => (r.name, &["params", "ref", "name"]),
                    Some(r) => (r.uri, &["params", "ref", "uri"]),
                    None => (None, &[]),
                },
                _ => (None, &[]),
            };
            let Some(raw) = raw else { return };
            let Some(value) = jsonrpc::raw_str(raw) else {
                return; // refused by the pipeline: must be a string
            };
            let new = if path.last() == Some(&"uri") {
                // A mapped URI goes upstream as the URI after `mcpgw://<server>/`.
                match value
                    .strip_prefix(MAPPED_URI_SCHEME)
                    .and_then(|rest| rest.split_once('/'))
                {
                    Some((_, upstream)) => jsonrpc::json_string(upstream),
                    None => return, // an unmapped URI is forwarded unchanged
                }
            } else {
                name_json(replacement)
            };
            check_splice(text, raw, &new, path);
        }
        Message::Response { id } => {
            // `answer_call`: the gateway id names the upstream and its original id.
            let Some(gateway_id) = jsonrpc::raw_str(id) else {
                return;
            };
            let Some((_server, original)) = relay::decode_id(&gateway_id) else {
                return;
            };
            check_splice(text, id, original, &["id"]);
        }
        Message::Notification { .. } => {}
    }
}

/// The replacement as the pipeline has it: JSON text of a string.
fn name_json(replacement: &[u8]) -> String {
    match std::str::from_utf8(replacement) {
        Ok(literal) if is_string_literal(literal) => literal.to_owned(),
        _ => jsonrpc::json_string(&String::from_utf8_lossy(replacement)),
    }
}

/// `text` is exactly one JSON string, no whitespace around it.
fn is_string_literal(text: &str) -> bool {
    text.len() >= 2
        && text.starts_with('"')
        && text.ends_with('"')
        && serde_json::from_str::<String>(text).is_ok()
}

/// Splices `new` (JSON text) over `raw` (a value borrowed from `text`, at `path`) and checks the
/// result is the same message with that one value changed.
fn check_splice(text: &str, raw: &RawValue, new: &str, path: &[&str]) {
    let span = jsonrpc::span_in(text, raw.get()).expect("a parsed value lies within the body");
    assert_eq!(
        text.get(span.clone()),
        Some(raw.get()),
        "the span is the value's"
    );
    let spliced = jsonrpc::splice(text, span.clone(), new).expect("the span is on char boundaries");
    assert_eq!(spliced.get(..span.start), text.get(..span.start));
    assert_eq!(spliced.get(span.start + new.len()..), text.get(span.end..));

    let before = jsonrpc::parse_message(text, DEFAULT_MAX_JSON_DEPTH).expect("accepted before");
    let after = match jsonrpc::parse_message(&spliced, DEFAULT_MAX_JSON_DEPTH) {
        Ok(after) => after,
        Err(e) => panic!(
            "the spliced body is refused: {}\n  before: {text:?}\n  after:  {spliced:?}",
            e.message
        ),
    };
    match (&before, &after) {
        (
            Message::Request {
                id: id0,
                method: m0,
                params: p0,
            },
            Message::Request {
                id: id1,
                method: m1,
                params: p1,
            },
        ) => {
            assert_eq!(id0.get(), id1.get());
            assert_eq!(m0, m1);
            let read = match path {
                ["params", "name"] => p1.name,
                ["params", "uri"] => p1.uri,
                ["params", "ref", "name"] => p1.reference.as_ref().and_then(|r| r.name),
                ["params", "ref", "uri"] => p1.reference.as_ref().and_then(|r| r.uri),
                _ => None,
            };
            assert_eq!(
                read.map(RawValue::get),
                Some(new),
                "the gateway reads the new value"
            );
            assert_eq!(p0.cursor.map(RawValue::get), p1.cursor.map(RawValue::get));
        }
        (Message::Response { .. }, Message::Response { id }) => {
            assert_eq!(id.get(), new, "the upstream reads its own id");
        }
        _ => panic!("the spliced body is another kind of message: {spliced:?}"),
    }

    // Every other member, at any depth, is what it was (as a lenient reader sees it).
    let v0 = serde_json::from_str::<Value>(text);
    let v1 = serde_json::from_str::<Value>(&spliced);
    match (v0, v1) {
        (Ok(mut expected), Ok(got)) => {
            let new_value: Value = serde_json::from_str(new).expect("the replacement is JSON");
            let mut slot = &mut expected;
            for key in path {
                slot = slot
                    .get_mut(*key)
                    .unwrap_or_else(|| panic!("no {key} in {text:?}"));
            }
            *slot = new_value;
            assert_eq!(expected, got, "\n  before: {text:?}\n  after:  {spliced:?}");
        }
        (Err(_), Err(_)) => {}
        (before, after) => panic!(
            "a JSON reader reads one body and not the other ({} / {}):\n  before: {text:?}\n  after:  {spliced:?}",
            before.is_ok(),
            after.is_ok()
        ),
    }
}
