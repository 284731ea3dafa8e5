//! The relay of upstream messages (`relay::decode_id`, `relay::encode_id`, `relay::rewrite`):
//!
//! - mode 0, arbitrary id text: `decode_id` never panics; what it decodes re-encodes to the same
//!   id, and the original id it yields is JSON (the pipeline splices it into the client's answer
//!   as the id the upstream reads);
//! - mode 1, round trip: for a valid server name (`[A-Za-z0-9._-]+`, as the catalog requires) and
//!   a valid id (a JSON string or an integer), `decode_id(encode_id(server, id))` gives both back;
//! - mode 2, `rewrite` of arbitrary event data never panics; it changes only a JSON object (a
//!   message, not a batch or any other value), and then the result is JSON, the same message but for the id (`mcpgw:<server>:<id>`) or the mapped URI.
//!
//! Input: `mode (byte % 3; bit 2: the server's URIs are mapped) | rest`; mode 1's rest is
//! `server 0x00 id`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use mcpgw_core::relay;
use serde_json::value::RawValue;
use serde_json::Value;

const SERVER: &str = "alpha";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => decode(rest),
        1 => round_trip(rest),
        _ => rewrite(rest, mode & 4 != 0),
    }
});

fn decode(rest: &[u8]) {
    let Ok(id) = std::str::from_utf8(rest) else {
        return;
    };
    let Some((server, original)) = relay::decode_id(id) else {
        return;
    };
    let encoded: String = serde_json::from_str(&relay::encode_id(server, original)).expect("JSON");
    assert_eq!(encoded, id);
    assert!(
        serde_json::from_str::<&RawValue>(original).is_ok(),
        "decode_id({id:?}) yields {original:?}, which is no JSON value"
    );
}

fn round_trip(rest: &[u8]) {
    let (server, id) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let Ok(server) = std::str::from_utf8(server) else {
        return;
    };
    if server.is_empty()
        || !server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return;
    }
    let mut ids = vec![serde_json::to_string(&String::from_utf8_lossy(id)).expect("JSON")];
    if let Ok(text) = std::str::from_utf8(id) {
        // A JSON string as an upstream wrote it (escapes and all), or an integer.
        if text.starts_with('"')
            && text.ends_with('"')
            && serde_json::from_str::<String>(text).is_ok()
        {
            ids.push(text.to_owned());
        }
    }
    let mut eight = [0u8; 8];
    for (slot, b) in eight.iter_mut().zip(id) {
        *slot = *b;
    }
    ids.push(i64::from_le_bytes(eight).to_string());
    ids.push(i64::from(i32::from_le_bytes([eight[0], eight[1], eight[2], eight[3]])).to_string());
    for original in ids {
        let encoded = relay::encode_id(server, &original);
        let text: String = serde_json::from_str(&encoded).expect("encode_id gives a JSON string");
        assert_eq!(
            relay::decode_id(&text),
            Some((server, original.as_str())),
            "{encoded}"
        );
    }
}

fn rewrite(rest: &[u8], mapped: bool) {
    let Ok(data) = std::str::from_utf8(rest) else {
        return;
    };
    let out = relay::rewrite(data, SERVER, mapped);
    if out == data {
        return;
    }
    assert!(
        serde_json::from_str::<BTreeMap<String, &RawValue>>(data).is_ok(),
        "rewrote {data:?}, which is no JSON-RPC message (not an object), into {out:?}"
    );
    assert!(
        serde_json::from_str::<&RawValue>(&out).is_ok(),
        "rewritten data is not JSON: {out:?}"
    );
    let (Ok(Value::Object(before)), Ok(Value::Object(after))) = (
        serde_json::from_str::<Value>(data),
        serde_json::from_str::<Value>(&out),
    ) else {
        return;
    };
    let mut expected = before.clone();
    if let Some(id) = after.get("id") {
        if before.get("id") != Some(id) {
            let id = id.as_str().expect("a gateway id is a string");
            assert!(id.starts_with(&format!("mcpgw:{SERVER}:")), "{out}");
            expected.insert("id".into(), Value::String(id.into()));
        }
    }
    if let (Some(Value::Object(params)), Some(uri)) = (
        expected.get_mut("params"),
        after.get("params").and_then(|p| p.get("uri")),
    ) {
        if params.get("uri") != Some(uri) {
            assert!(mapped, "{out}");
            let uri = uri.as_str().expect("a mapped URI is a string");
            assert!(uri.starts_with(&format!("mcpgw://{SERVER}/")), "{out}");
            params.insert("uri".into(), Value::String(uri.into()));
        }
    }
    assert_eq!(
        Value::Object(expected),
        Value::Object(after),
        "{data:?} -> {out:?}"
    );
}
