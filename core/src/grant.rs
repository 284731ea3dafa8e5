//! Signed capability grants: the `x-mcp-authorized` header (compatible with Kuadrant's
//! mcp-gateway), an ES256 JWT set by a trusted authorization layer (Authorino, an `ext_authz`
//! service, ...) whose `allowed-capabilities` claim is a JSON *string* mapping capability kinds
//! to servers to unprefixed names:
//!
//! ```json
//! {"tools": {"alpha": ["echo"]}, "prompts": {"alpha": ["greet"]}, "resources": {"beta": ["file:///a"]}}
//! ```
//!
//! One grant filters the lists (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) and refuses the calls outside it (`tools/call`, `prompts/get`,
//! `resources/*`, `completion/complete`). The header is verified against the configured P-256
//! public key; a bad signature, an expired token or a malformed claim is an error of its own, never
//! silently an empty list. Without the header, the configured `missing` policy decides (all or
//! nothing). The header never reaches an upstream (see [`crate::pipeline`]).

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// The header carrying the grant.
pub const GRANT_HEADER: &str = "x-mcp-authorized";
/// The claim holding the capabilities (a JSON string).
pub const CLAIM: &str = "allowed-capabilities";

/// Longest grant header read (a token is a few hundred bytes; a large catalog a few KB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// DER of a P-256 SubjectPublicKeyInfo up to its uncompressed point.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// What a request without the header may see and call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Everything (the header only narrows).
    All,
    /// Nothing: lists are empty, calls are refused.
    Nothing,
}

/// `grants` of the configuration document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// The signer's P-256 public key, PEM (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo).
    pub public_key: String,
    /// Without the header: `all` or `nothing` (no default: the choice is the operator's). Also
    /// applies to a kind (tools, prompts, resources) the claim does not name.
    pub missing: Missing,
}

/// Selects a virtual server (`<namespace>/<name>`, as the seed system's MCPVirtualServer); a
/// path `<mcp_path>/<name>` does the same for clients that cannot set headers.
pub const VIRTUAL_SERVER_HEADER: &str = "x-mcp-virtualserver";

/// `virtual_servers[]` of the configuration document: a named, curated subset of the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerConfig {
    /// `<namespace>/<name>` (or any name of `[A-Za-z0-9._-]` segments joined by `/`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tools as clients see them (prefixed names).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Prompts as clients see them; absent: every prompt (as the seed system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<String>>,
}

/// A virtual server, indexed.
#[derive(Debug, Clone)]
pub struct VirtualServer {
    pub name: String,
    tools: HashSet<String>,
    prompts: Option<HashSet<String>>,
}

impl VirtualServer {
    /// Checks the name; unknown tool or prompt names are `warnings` (catalogs change).
    pub fn new(
        index: usize,
        config: &VirtualServerConfig,
        known: &dyn Fn(Kind, &str) -> bool,
        warnings: &mut Vec<String>,
    ) -> Result<Self, String> {
        let valid = |segment: &str| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !config.name.split('/').all(valid) {
            return Err(format!(
                "virtual_servers[{index}].name: must be [A-Za-z0-9._-] segments joined by '/', got {:?}",
                config.name
            ));
        }
        for (kind, names) in [
            (Kind::Tools, Some(&config.tools)),
            (Kind::Prompts, config.prompts.as_ref()),
        ] {
            for name in names.into_iter().flatten() {
                if !known(kind, name) {
                    warnings.push(format!(
                        "virtual server {:?} names {} {name:?}, which no server offers",
                        config.name,
                        kind.noun()
                    ));
                }
            }
        }
        Ok(Self {
            name: config.name.clone(),
            tools: config.tools.iter().cloned().collect(),
            prompts: config.prompts.as_ref().map(|p| p.iter().cloned().collect()),
        })
    }

    /// The (prefixed) names of the tools it shows.
    pub fn tools(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(String::as_str)
    }

    /// The virtual server shows `shown_as` (a prefixed name; resources are not curated).
    pub fn shows(&self, kind: Kind, shown_as: &str) -> bool {
        match kind {
            Kind::Tools => self.tools.contains(shown_as),
            Kind::Prompts => self.prompts.as_ref().is_none_or(|p| p.contains(shown_as)),
            Kind::Resources => true,
        }
    }
}

/// What one request may see and call: its grant, within its virtual server.
#[derive(Debug)]
pub struct Access<'c> {
    pub grant: Grant,
    pub virtual_server: Option<&'c VirtualServer>,
}

impl Access<'_> {
    pub fn is_all(&self) -> bool {
        self.grant.is_all() && self.virtual_server.is_none()
    }

    /// Shown in a list: `server`'s `name` (unprefixed, for the grant), `shown_as` (prefixed, for
    /// the virtual server).
    pub fn shows(&self, kind: Kind, server: &str, name: &str, shown_as: &str) -> bool {
        self.grant.allows(kind, server, name)
            && self.virtual_server.is_none_or(|v| v.shows(kind, shown_as))
    }

    /// A call: outside the virtual server it does not exist (-32602, as an unknown name);
    /// outside the grant it is refused (403).
    pub fn admits(
        &self,
        kind: Kind,
        server: &str,
        name: &str,
        shown_as: &str,
    ) -> Result<(), GatewayError> {
        if let Some(v) = self.virtual_server {
            if !v.shows(kind, shown_as) {
                let noun = match kind {
                    Kind::Tools => "tool",
                    Kind::Prompts => "prompt",
                    Kind::Resources => "resource",
                };
                return Err(GatewayError::invalid_params(format!(
                    "Unknown {noun}: {shown_as} (not in virtual server {})",
                    v.name
                ))
                .because("virtual_server_scope"));
            }
        }
        if self.grant.allows(kind, server, name) {
            Ok(())
        } else {
            Err(GatewayError::grant_denied(kind.noun(), name, server))
        }
    }
}

/// The capability kinds a grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tools,
    Prompts,
    Resources,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Tools => 0,
            Kind::Prompts => 1,
            Kind::Resources => 2,
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Tools => "tool",
            Kind::Prompts => "prompt",
            Kind::Resources => "resource",
        }
    }
}

/// What one kind allows.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    /// Server name -> the unprefixed names (or upstream URIs) allowed on it.
    Listed(HashMap<String, HashSet<String>>),
}

/// What a request may see and call.
#[derive(Debug, Clone)]
pub enum Grant {
    All,
    Only([Scope; 3]),
}

impl Grant {
    /// `name` (unprefixed, or the upstream URI) of `server` is allowed.
    pub fn allows(&self, kind: Kind, server: &str, name: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Only(scopes) => match scopes.get(kind.index()) {
                Some(Scope::All) => true,
                Some(Scope::Listed(servers)) => servers
                    .get(server)
                    .is_some_and(|names| names.contains(name)),
                None => false,
            },
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Grant::All)
    }

    fn nothing() -> Self {
        Grant::Only([
            Scope::Listed(HashMap::new()),
            Scope::Listed(HashMap::new()),
            Scope::Listed(HashMap::new()),
        ])
    }
}

/// The configured verifier, built once per document.
#[derive(Debug, Clone)]
pub struct Grants {
    key: VerifyingKey,
    missing: Missing,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default, rename = "allowed-capabilities")]
    capabilities: Option<Box<serde_json::value::RawValue>>,
}

/// The claim's decoded value: kind -> server -> names.
type Capabilities = HashMap<String, HashMap<String, HashSet<String>>>;

impl Grants {
    /// Parses the configured key; the error names the field.
    pub fn new(config: &GrantsConfig) -> Result<Self, String> {
        let der = pem_body(&config.public_key, "PUBLIC KEY")
            .ok_or("grants.public_key: expected a PEM block -----BEGIN PUBLIC KEY-----")?;
        // A P-256 SubjectPublicKeyInfo is one fixed header (id-ecPublicKey, prime256v1, BIT
        // STRING) and the 65-byte uncompressed point: read as such, no general DER parser.
        let point = der
            .strip_prefix(P256_SPKI_HEADER.as_slice())
            .filter(|point| point.len() == 65)
            .ok_or("grants.public_key: not a P-256 (prime256v1) public key, uncompressed")?;
        let key = VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| "grants.public_key: not a point of P-256".to_owned())?;
        Ok(Self {
            key,
            missing: config.missing,
        })
    }

    /// The grant of a request: its header (`None`: absent), verified at `now` (Unix seconds).
    pub fn evaluate(&self, header: Option<&[u8]>, now: u64) -> Result<Grant, GatewayError> {
        let Some(token) = header else {
            return Ok(match self.missing {
                Missing::All => Grant::All,
                Missing::Nothing => Grant::nothing(),
            });
        };
        let payload = self.verify(token)?;
        #[allow(clippy::cast_precision_loss)]
        let now = now as f64;
        if payload.exp.is_some_and(|exp| now >= exp) {
            return Err(GatewayError::grant_rejected(
                "grant_expired",
                "x-mcp-authorized has expired",
            ));
        }
        if payload.nbf.is_some_and(|nbf| now < nbf) {
            return Err(GatewayError::grant_rejected(
                "grant_not_yet_valid",
                "x-mcp-authorized is not valid yet (nbf)",
            ));
        }
        let claim = payload
            .capabilities
            .ok_or_else(|| malformed(&format!("no {CLAIM} claim")))?;
        let text: String = serde_json::from_str(claim.get())
            .map_err(|_| malformed(&format!("the {CLAIM} claim must be a JSON string")))?;
        let mut map: Capabilities = serde_json::from_str(&text).map_err(|e| {
            malformed(&format!(
                "the {CLAIM} claim must map kinds to servers to lists of names: {e}"
            ))
        })?;
        let absent = || match self.missing {
            Missing::All => Scope::All,
            Missing::Nothing => Scope::Listed(HashMap::new()),
        };
        let mut scope = |kind: &str| match map.remove(kind) {
            None => absent(),
            Some(servers) => Scope::Listed(servers),
        };
        Ok(Grant::Only([
            scope("tools"),
            scope("prompts"),
            scope("resources"),
        ]))
    }

    fn verify(&self, token: &[u8]) -> Result<Payload, GatewayError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("too long"));
        }
        let token = std::str::from_utf8(token).map_err(|_| malformed("not ASCII"))?;
        let mut parts = token.trim().split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "not a JWS compact token (header.payload.signature)",
            ));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| malformed(&format!("the {what} is not base64url")))
        };
        let header_json = decode(header, "header")?;
        let parsed: Header = crate::jsonrpc::from_json_bytes(&header_json)
            .map_err(|_| malformed("the header is not a JSON object with alg"))?;
        if parsed.alg != "ES256" {
            return Err(malformed(&format!(
                "alg must be ES256, got {:?}",
                parsed.alg
            )));
        }
        let signature = Signature::from_slice(&decode(signature, "signature")?)
            .map_err(|_| malformed("the signature is not a 64-byte ES256 signature"))?;
        let signed_len = header.len() + 1 + payload.len();
        let signed = token
            .trim()
            .get(..signed_len)
            .ok_or_else(|| malformed("bad token"))?;
        self.key
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| {
                GatewayError::grant_rejected(
                    "grant_bad_signature",
                    "x-mcp-authorized: the signature does not verify with the configured key",
                )
            })?;
        crate::jsonrpc::from_json_bytes(&decode(payload, "payload")?)
            .map_err(|e| malformed(&format!("the payload is not a JSON object of claims: {e}")))
    }
}

fn malformed(why: &str) -> GatewayError {
    GatewayError::grant_malformed(format!("x-mcp-authorized is malformed: {why}"))
}

/// The base64 body of the PEM block `label`.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem.get(start..)?.find(&end)?;
    let body: String = pem
        .get(start..stop)?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The seed system's e2e test key (tests/e2e/jwt_helpers.go); tokens signed with it are
    // checked end to end (tests/e2e/test_governance.py).
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7WdMdvC8hviEAL4wcebqaYbLEtVO
VEiyi/nozagw7BaWXmzbOWyy95gZLirTkhUb1P4Z4lgKLU2rD5NCbGPHAA==
-----END PUBLIC KEY-----";

    fn grants(missing: Missing) -> Grants {
        Grants::new(&GrantsConfig {
            public_key: PUBLIC.into(),
            missing,
        })
        .unwrap()
    }

    #[test]
    fn missing_header_follows_the_policy() {
        let all = grants(Missing::All).evaluate(None, 0).unwrap();
        assert!(all.allows(Kind::Tools, "alpha", "anything"));
        let none = grants(Missing::Nothing).evaluate(None, 0).unwrap();
        assert!(!none.allows(Kind::Tools, "alpha", "echo"));
        assert!(!none.allows(Kind::Prompts, "alpha", "p"));
    }

    #[test]
    fn bad_tokens_get_their_own_errors() {
        let g = grants(Missing::All);
        for (token, check) in [
            ("abc", "grant_malformed"),
            ("a.b.c.d", "grant_malformed"),
            ("e30.e30.AAAA", "grant_malformed"),
        ] {
            let e = g.evaluate(Some(token.as_bytes()), 0).unwrap_err();
            assert_eq!(e.check, check, "{token}");
        }
        // A well-formed ES256 header with a signature that does not verify.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"allowed-capabilities":"{}"}"#);
        let sig = URL_SAFE_NO_PAD.encode([7u8; 64]);
        let e = g
            .evaluate(Some(format!("{header}.{payload}.{sig}").as_bytes()), 0)
            .unwrap_err();
        assert_eq!(e.check, "grant_bad_signature");
        assert_eq!((e.code, e.http_status), (-32001, 401));
        // alg none is refused before any signature check.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let e = g
            .evaluate(Some(format!("{header}.{payload}.").as_bytes()), 0)
            .unwrap_err();
        assert_eq!(e.check, "grant_malformed");
        assert!(e.message.contains("ES256"));
    }

    #[test]
    fn a_bad_key_is_a_configuration_error() {
        let e = Grants::new(&GrantsConfig {
            public_key: "nope".into(),
            missing: Missing::All,
        })
        .unwrap_err();
        assert!(e.starts_with("grants.public_key"), "{e}");
    }
}
