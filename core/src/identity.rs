//! Verified identity from Envoy, not hand-rolled: Envoy's `jwt_authn` filter (before the plugin)
//! validates the client's bearer token against its JWKS and writes the verified claims to its
//! dynamic metadata (`payload_in_metadata`); the plugin reads the subject from there. A request to
//! the MCP endpoint without verified claims gets 401 with
//! `WWW-Authenticate: Bearer resource_metadata="…"`, and the plugin serves the RFC 9728
//! protected-resource metadata that URL names, so a standard MCP client can start its OAuth flow.

use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::jsonrpc::json_string;

/// The filter whose dynamic metadata carries the verified claims.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// RFC 9728's well-known path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

fn default_payload_key() -> String {
    "jwt_payload".into()
}

/// `oauth` of the configuration document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The protected resource: the MCP endpoint's public URL (`https://mcp.example.com/mcp`).
    pub resource: String,
    /// Issuers clients get tokens from (RFC 9728 `authorization_servers`).
    pub authorization_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// `payload_in_metadata` of the `jwt_authn` providers.
    #[serde(default = "default_payload_key")]
    pub payload_in_metadata: String,
}

/// Built once per document.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The metadata document (JSON).
    pub metadata: String,
    /// `WWW-Authenticate` of a 401.
    pub challenge: String,
    /// The well-known path and its path-suffixed form for the resource.
    paths: Vec<String>,
    payload_key: String,
}

impl Identity {
    pub fn new(config: &OAuthConfig) -> Result<Self, String> {
        let rest = config
            .resource
            .strip_prefix("https://")
            .or_else(|| config.resource.strip_prefix("http://"))
            .ok_or("oauth.resource: must be an absolute http(s) URL")?;
        let scheme_len = config.resource.len() - rest.len();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || config.resource.contains(['"', '\\', '#', '?']) {
            return Err(
                "oauth.resource: must be an http(s) URL with a host, no query, fragment or quotes"
                    .into(),
            );
        }
        if config.authorization_servers.is_empty() {
            return Err("oauth.authorization_servers: name at least one".into());
        }
        let origin = config
            .resource
            .get(..scheme_len + authority.len())
            .unwrap_or_default();
        let path = path.trim_end_matches('/');
        let mut paths = vec![METADATA_PATH.to_owned()];
        if !path.is_empty() {
            paths.push(format!("{METADATA_PATH}{path}"));
        }
        let metadata_url = format!(
            "{origin}{}",
            paths.last().map_or(METADATA_PATH, String::as_str)
        );
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| json_string(i))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut metadata = format!(
            "{{\"resource\":{},\"authorization_servers\":[{}],\"bearer_methods_supported\":[\"header\"]",
            json_string(&config.resource),
            list(&config.authorization_servers)
        );
        if !config.scopes_supported.is_empty() {
            metadata.push_str(&format!(
                ",\"scopes_supported\":[{}]",
                list(&config.scopes_supported)
            ));
        }
        metadata.push('}');
        Ok(Self {
            metadata,
            challenge: format!("Bearer resource_metadata=\"{metadata_url}\""),
            paths,
            payload_key: config.payload_in_metadata.clone(),
        })
    }

    /// `path` (without its query) is the metadata document's.
    pub fn serves(&self, path: &[u8]) -> bool {
        let bare = path.split(|b| *b == b'?').next().unwrap_or_default();
        self.paths.iter().any(|p| p.as_bytes() == bare)
    }

    /// The verified subject (`sub`) `jwt_authn` left in its dynamic metadata, if any.
    pub fn subject(&self, host: &dyn Host) -> Option<String> {
        let sub = host.property(&[
            "metadata",
            "filter_metadata",
            JWT_AUTHN_FILTER,
            &self.payload_key,
            "sub",
        ])?;
        let sub = String::from_utf8(sub).ok()?;
        (!sub.is_empty()).then_some(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_challenge_follow_the_resource() {
        let id = Identity::new(&OAuthConfig {
            resource: "https://mcp.example.com/mcp".into(),
            authorization_servers: vec!["https://idp.example.com".into()],
            scopes_supported: vec!["mcp:tools".into()],
            payload_in_metadata: "jwt_payload".into(),
        })
        .unwrap();
        assert!(id.serves(b"/.well-known/oauth-protected-resource"));
        assert!(id.serves(b"/.well-known/oauth-protected-resource/mcp"));
        assert!(!id.serves(b"/.well-known/oauth-protected-resource/other"));
        assert_eq!(
            id.challenge,
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        let doc: serde_json::Value = serde_json::from_str(&id.metadata).unwrap();
        assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
        assert_eq!(doc["authorization_servers"][0], "https://idp.example.com");
        assert_eq!(doc["scopes_supported"][0], "mcp:tools");
        for bad in ["mcp.example.com/mcp", "https:///mcp", "https://h/mcp?x=1"] {
            assert!(Identity::new(&OAuthConfig {
                resource: bad.into(),
                authorization_servers: vec!["https://idp".into()],
                scopes_supported: vec![],
                payload_in_metadata: "p".into(),
            })
            .is_err());
        }
    }
}
