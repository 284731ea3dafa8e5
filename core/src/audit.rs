//! One structured audit line per routed call (`tools/call`, `prompts/get`, `resources/*`,
//! `completion/complete`): who (the verified `sub`), what (method, server, name), the outcome (HTTP
//! status, JSON-RPC error code of a gateway refusal), the request id and a hash of the client
//! session. The plugin puts it in Envoy's filter state (`wasm.mcpgw_audit`), so Envoy's access log
//! (`%FILTER_STATE(wasm.mcpgw_audit:PLAIN)%`) writes it wherever the operator ships logs.

use sha2::{Digest, Sha256};

use crate::jsonrpc::json_string;

/// The property the line is written to (Envoy's filter state key `wasm.mcpgw_audit`).
pub const AUDIT_PROPERTY: &str = "mcpgw_audit";

/// What is known of a routed call before its outcome.
#[derive(Debug, Clone)]
pub struct Audit {
    method: String,
    /// Raw JSON id.
    id: String,
    subject: Option<String>,
    session: Option<String>,
    server: Option<String>,
    name: Option<String>,
}

impl Audit {
    /// `session`: the client session's name in audit lines ([`session_hash`] of its token).
    pub fn new(
        method: &str,
        id: Option<&str>,
        subject: Option<&str>,
        session: Option<String>,
    ) -> Self {
        Self {
            method: method.to_owned(),
            id: id.unwrap_or("null").to_owned(),
            subject: subject.map(str::to_owned),
            session,
            server: None,
            name: None,
        }
    }

    /// The server and the name (as the client sent it) the call reaches.
    pub fn target(&mut self, server: &str, name: &str) {
        self.server = Some(server.to_owned());
        self.name = Some(name.to_owned());
    }

    /// The line (JSON), with the outcome.
    pub fn line(&self, status: u16, code: Option<i32>) -> String {
        fn field(out: &mut String, name: &str, value: Option<&str>) {
            out.push_str(name);
            match value {
                Some(value) => out.push_str(&json_string(value)),
                None => out.push_str("null"),
            }
        }
        let mut out = String::with_capacity(160 + self.id.len());
        field(&mut out, "{\"sub\":", self.subject.as_deref());
        field(&mut out, ",\"method\":", Some(&self.method));
        field(&mut out, ",\"server\":", self.server.as_deref());
        field(&mut out, ",\"name\":", self.name.as_deref());
        out.push_str(",\"status\":");
        out.push_str(&status.to_string());
        out.push_str(",\"code\":");
        out.push_str(&code.map_or_else(|| "null".to_owned(), |c| c.to_string()));
        out.push_str(",\"id\":");
        out.push_str(&self.id);
        field(&mut out, ",\"session\":", self.session.as_deref());
        out.push('}');
        out
    }
}

/// First 16 hex digits of SHA-256 of the session token: correlates a session's lines without
/// revealing anything that could be replayed.
pub fn session_hash(token: &[u8]) -> String {
    let digit = |nibble: u8| char::from_digit(u32::from(nibble), 16).unwrap_or('0');
    let mut name = String::with_capacity(16);
    for byte in Sha256::digest(token).iter().take(8) {
        name.push(digit(byte >> 4));
        name.push(digit(byte & 15));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object() {
        let mut audit = Audit::new(
            "tools/call",
            Some("\"r1\""),
            Some("alice"),
            Some(session_hash(b"s")),
        );
        audit.target("alpha", "alpha_echo");
        let line: serde_json::Value = serde_json::from_str(&audit.line(403, Some(-32001))).unwrap();
        assert_eq!(line["sub"], "alice");
        assert_eq!(line["server"], "alpha");
        assert_eq!(line["name"], "alpha_echo");
        assert_eq!(line["status"], 403);
        assert_eq!(line["code"], -32001);
        assert_eq!(line["id"], "r1");
        assert_eq!(line["session"].as_str().unwrap().len(), 16);
        let bare: serde_json::Value =
            serde_json::from_str(&Audit::new("prompts/get", None, None, None).line(200, None))
                .unwrap();
        assert!(bare["sub"].is_null() && bare["code"].is_null() && bare["id"].is_null());
    }
}
