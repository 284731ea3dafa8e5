//! JSON-RPC 2.0 framing: one borrowed parse of a client message, and rendering of answers.
//!
//! The parse keeps every parameter the gateway does not interpret as raw, unparsed JSON so that
//! tool arguments are scanned once and never re-serialized.

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// A field that distinguishes "absent" from "present, possibly null".
#[derive(Debug, Default, Clone, Copy)]
enum Field<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(deserializer).map(Field::Present)
    }
}

impl<'a> Field<'a> {
    fn get(self) -> Option<&'a RawValue> {
        match self {
            Field::Absent => None,
            Field::Present(raw) => Some(raw),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Field<'a>,
    #[serde(default, borrow)]
    method: Field<'a>,
    #[serde(default, borrow)]
    params: Field<'a>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// The parameters the gateway reads, all kept raw so no method's parameter shape fails the parse.
#[derive(Deserialize, Default)]
pub struct Params<'a> {
    #[serde(default, borrow)]
    pub name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub cursor: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "protocolVersion")]
    pub protocol_version: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub capabilities: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "clientInfo")]
    pub client_info: Option<&'a RawValue>,
}

/// A client message, borrowed from the request body.
pub enum Message<'a> {
    Request {
        id: &'a RawValue,
        method: Cow<'a, str>,
        params: Option<&'a RawValue>,
    },
    Notification {
        method: Cow<'a, str>,
    },
    /// The client's answer to a server-to-client request.
    Response {
        id: &'a RawValue,
    },
}

/// The id of a message when one could be read, for error replies.
pub fn salvage_id(body: &str) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
    }
    serde_json::from_str::<IdOnly>(body)
        .ok()
        .and_then(|m| m.id)
        .filter(|id| valid_id(id))
}

/// Parses one JSON-RPC message. Errors carry the code the client must see.
pub fn parse_message(body: &str) -> Result<Message<'_>, GatewayError> {
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
    let envelope: Envelope = serde_json::from_str(body).map_err(|e| {
        if e.is_data() {
            GatewayError::invalid_request(format!("Invalid Request: {e}"))
        } else {
            GatewayError::parse(format!("Parse error: {e}"))
        }
    })?;
    if envelope.jsonrpc.as_deref() != Some("2.0") {
        return Err(GatewayError::invalid_request(
            "Invalid Request: jsonrpc must be \"2.0\"",
        ));
    }
    let id = envelope.id.get();
    if let Some(id) = id {
        if !valid_id(id) {
            return Err(GatewayError::invalid_request(
                "Invalid Request: id must be a string or an integer",
            ));
        }
    }
    let params = envelope.params.get();
    if let Some(params) = params {
        if !params.get().starts_with('{') {
            return Err(GatewayError::invalid_request(
                "Invalid Request: params must be an object",
            ));
        }
    }
    match (envelope.method.get(), id) {
        (Some(method), id) => {
            let method: Cow<str> = serde_json::from_str(method.get()).map_err(|_| {
                GatewayError::invalid_request("Invalid Request: method must be a string")
            })?;
            Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method },
            })
        }
        (None, Some(id)) if envelope.result.is_some() != envelope.error.is_some() => {
            Ok(Message::Response { id })
        }
        _ => Err(GatewayError::invalid_request(
            "Invalid Request: not a JSON-RPC request, notification or response",
        )),
    }
}

/// Reads the gateway-relevant parameters of a request.
pub fn parse_params(params: Option<&RawValue>) -> Result<Params<'_>, GatewayError> {
    match params {
        None => Ok(Params::default()),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| GatewayError::invalid_params(format!("Invalid params: {e}"))),
    }
}

/// Reads a raw JSON value that must be a string.
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str(raw.get()).ok()
}

fn valid_id(id: &RawValue) -> bool {
    let text = id.get();
    match text.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => !text.contains(['.', 'e', 'E']),
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
pub fn json_string(value: &str) -> String {
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
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{},\"message\":{}}}}}",
        id.unwrap_or("null"),
        error.code,
        json_string(&error.message)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR};

    fn code(body: &str) -> i32 {
        match parse_message(body) {
            Ok(_) => 0,
            Err(e) => e.code,
        }
    }

    #[test]
    fn classifies_messages() {
        match parse_message(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap() {
            Message::Request { id, method, params } => {
                assert_eq!(id.get(), "7");
                assert_eq!(method, "tools/list");
                assert!(params.is_none());
            }
            _ => panic!("expected a request"),
        }
        assert!(matches!(
            parse_message(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Message::Notification { .. }
        ));
        assert!(matches!(
            parse_message(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap(),
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
    fn params_keep_arguments_raw_and_reject_duplicate_names() {
        let body = r#"{"name":"a_echo","arguments":{"x":[1,2,{"y":"z"}]}}"#;
        let raw: &RawValue = serde_json::from_str(body).unwrap();
        let params = parse_params(Some(raw)).unwrap();
        assert_eq!(params.name.unwrap().get(), "\"a_echo\"");
        let dup: &RawValue = serde_json::from_str(r#"{"name":"a","name":"b"}"#).unwrap();
        assert_eq!(parse_params(Some(dup)).err().unwrap().code, INVALID_PARAMS);
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
