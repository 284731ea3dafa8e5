//! Sealed session tokens: the client's `Mcp-Session-Id` carries, encrypted and authenticated,
//! everything the gateway needs to open upstream sessions later, so validating a session needs
//! no per-session state.
//!
//! Token: `<key id>.<base64url(nonce(24) || XChaCha20-Poly1305(claims JSON))>`. The key id picks
//! the key in one step; the nonce doubles as the session's stable identifier.

use std::cell::RefCell;
use std::rc::Rc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::SessionConfig;

const NONCE_LEN: usize = 24;
/// Recently opened tokens remembered per VM: a client sends the same token on every request, and
/// a hit skips the AEAD and the claims parse. Fixed size, so memory does not grow with sessions.
const MEMO_SLOTS: usize = 64;
/// Tolerated clock difference between gateway replicas for tokens issued "in the future".
const CLOCK_SKEW_SECS: u64 = 300;

/// What a session token carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Negotiated protocol version.
    pub pv: String,
    /// The client's `capabilities` from `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<Box<RawValue>>,
    /// The client's `clientInfo` from `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// An opened token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Stable identifier of the session (the token's nonce, base64url).
    pub id: String,
    pub claims: Claims,
    /// The session as audit lines name it (see [`crate::audit::session_hash`]): computed once
    /// per opened token, since an opened token is remembered.
    pub audit_name: std::cell::OnceCell<String>,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// A token opened before, and what it opened to.
type Remembered = (Box<[u8]>, Rc<Session>);

/// The configured keys, ready to seal and open.
pub struct SessionKeys {
    keys: Vec<Key>,
    ttl_seconds: u64,
    memo: RefCell<Vec<Option<Remembered>>>,
    /// Key of the MAC naming stateless clients' bridged upstream sessions, derived from the
    /// newest session key (HMAC-SHA-256, its own label).
    bridge_key: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("SessionKeys").field("ids", &ids).finish()
    }
}

impl SessionKeys {
    /// Validates the key material; the error names the offending field.
    pub fn new(config: &SessionConfig) -> Result<Self, String> {
        if config.keys.is_empty() {
            return Err("session.keys: at least one key is required".into());
        }
        let mut keys = Vec::with_capacity(config.keys.len());
        let mut bridge_key = None;
        for (i, key) in config.keys.iter().enumerate() {
            if key.id.is_empty()
                || !key
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "session.keys[{i}].id: must be non-empty [A-Za-z0-9_-], got {:?}",
                    key.id
                ));
            }
            if keys.iter().any(|k: &Key| k.id == key.id) {
                return Err(format!(
                    "session.keys[{i}].id: duplicate key id {:?}",
                    key.id
                ));
            }
            let secret = STANDARD
                .decode(key.secret.trim())
                .map_err(|e| format!("session.keys[{i}].secret: not base64: {e}"))?;
            let cipher = XChaCha20Poly1305::new_from_slice(&secret).map_err(|_| {
                format!(
                    "session.keys[{i}].secret: must decode to 32 bytes, got {}",
                    secret.len()
                )
            })?;
            if bridge_key.is_none() {
                bridge_key = Some(crate::stateless::hmac_sha256(
                    &secret,
                    &[b"mcpgw bridge key v1"],
                ));
            }
            keys.push(Key {
                id: key.id.clone(),
                cipher,
            });
        }
        if config.ttl_seconds == 0 {
            return Err("session.ttl_seconds: must be positive".into());
        }
        Ok(Self {
            keys,
            ttl_seconds: config.ttl_seconds,
            memo: RefCell::new(vec![None; MEMO_SLOTS]),
            bridge_key: bridge_key.unwrap_or_default(),
        })
    }

    /// The key of [`crate::stateless::bridge_id`].
    pub fn bridge_key(&self) -> &[u8; 32] {
        &self.bridge_key
    }

    /// Seals claims with the newest key. `nonce` must be fresh random bytes.
    pub fn seal(&self, claims: &Claims, nonce: [u8; NONCE_LEN]) -> Option<(String, String)> {
        let key = self.keys.first()?;
        let plaintext = serde_json::to_vec(claims).ok()?;
        let sealed = key
            .cipher
            .encrypt(&XNonce::from(nonce), plaintext.as_slice())
            .ok()?;
        let mut payload = Vec::with_capacity(NONCE_LEN + sealed.len());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&sealed);
        let token = format!("{}.{}", key.id, URL_SAFE_NO_PAD.encode(&payload));
        Some((token, URL_SAFE_NO_PAD.encode(nonce)))
    }

    /// Opens a token; `None` for anything not sealed by a configured key, or expired.
    pub fn open(&self, token: &[u8], now_secs: u64) -> Option<Rc<Session>> {
        self.open_checked(token, now_secs).ok()
    }

    /// Opens a token, or says why it is refused.
    pub fn open_checked(
        &self,
        token: &[u8],
        now_secs: u64,
    ) -> Result<Rc<Session>, crate::host::Refusal> {
        let slot = memo_slot(token);
        let remembered = self.memo.borrow().get(slot).and_then(|entry| match entry {
            Some((known, session)) if known.as_ref() == token => Some(Rc::clone(session)),
            _ => None,
        });
        let session = match remembered {
            Some(session) => session,
            None => {
                let session = Rc::new(self.unseal(token).ok_or(crate::host::Refusal::Tampered)?);
                if let Some(entry) = self.memo.borrow_mut().get_mut(slot) {
                    *entry = Some((token.into(), Rc::clone(&session)));
                }
                session
            }
        };
        let iat = session.claims.iat;
        let expired = now_secs.saturating_sub(iat) > self.ttl_seconds;
        let from_future = iat > now_secs.saturating_add(CLOCK_SKEW_SECS);
        if expired || from_future {
            return Err(crate::host::Refusal::Expired);
        }
        Ok(session)
    }

    fn unseal(&self, token: &[u8]) -> Option<Session> {
        let token = std::str::from_utf8(token).ok()?;
        let (key_id, payload) = token.split_once('.')?;
        let key = self.keys.iter().find(|k| k.id == key_id)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let (nonce, sealed) = payload.split_at_checked(NONCE_LEN)?;
        let nonce = XNonce::try_from(nonce).ok()?;
        let plaintext = key.cipher.decrypt(&nonce, sealed).ok()?;
        let claims: Claims = crate::jsonrpc::from_json_bytes(&plaintext).ok()?;
        Some(Session {
            id: URL_SAFE_NO_PAD.encode(nonce.as_slice()),
            claims,
            audit_name: std::cell::OnceCell::new(),
        })
    }
}

fn memo_slot(token: &[u8]) -> usize {
    // The token ends in an authentication tag: its last bytes are already uniformly spread.
    let tail = token.len().saturating_sub(8);
    let hash = token
        .get(tail..)
        .unwrap_or_default()
        .iter()
        .fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(*b))
        });
    hash % MEMO_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionKey;

    fn keys(ids: &[(&str, u8)]) -> SessionKeys {
        SessionKeys::new(&SessionConfig {
            keys: ids
                .iter()
                .map(|(id, fill)| SessionKey {
                    id: id.to_string(),
                    secret: STANDARD.encode([*fill; 32]),
                })
                .collect(),
            ttl_seconds: 100,
        })
        .unwrap()
    }

    fn claims(iat: u64) -> Claims {
        Claims {
            iat,
            pv: "2025-11-25".into(),
            caps: Some(RawValue::from_string("{\"roots\":{}}".into()).unwrap()),
            info: None,
        }
    }

    #[test]
    fn round_trips_and_expires() {
        let k = keys(&[("k1", 1)]);
        let (token, id) = k.seal(&claims(1000), [7; 24]).unwrap();
        assert!(token.starts_with("k1."));
        assert!(token.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        let s = k.open(token.as_bytes(), 1050).unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.claims.pv, "2025-11-25");
        assert_eq!(s.claims.caps.as_ref().unwrap().get(), "{\"roots\":{}}");
        assert!(k.open(token.as_bytes(), 1101).is_none(), "expired");
        assert!(
            k.open(token.as_bytes(), 600).is_none(),
            "issued in the future"
        );
    }

    #[test]
    fn rejects_tampering_and_unknown_keys() {
        let k = keys(&[("k1", 1)]);
        let (token, _) = k.seal(&claims(1000), [7; 24]).unwrap();
        let mut bytes = token.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(k.open(&bytes, 1000).is_none());
        assert!(k.open(b"garbage", 1000).is_none());
        assert!(k.open(b"k1.", 1000).is_none());
        assert!(k.open(&[0xff, 0xfe], 1000).is_none());
        let other = keys(&[("k1", 2)]);
        assert!(
            other.open(token.as_bytes(), 1000).is_none(),
            "same id, other secret"
        );
        let renamed = token.replacen("k1.", "k2.", 1);
        assert!(keys(&[("k2", 1)]).open(renamed.as_bytes(), 1000).is_some());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = keys(&[("k1", 1)]);
        let (token, _) = old.seal(&claims(1000), [9; 24]).unwrap();
        let rotated = keys(&[("k2", 2), ("k1", 1)]);
        assert!(rotated.open(token.as_bytes(), 1000).is_some());
        let (fresh, _) = rotated.seal(&claims(1000), [3; 24]).unwrap();
        assert!(fresh.starts_with("k2."));
    }

    #[test]
    fn validates_configuration() {
        let bad = SessionConfig {
            keys: vec![SessionKey {
                id: "k1".into(),
                secret: STANDARD.encode([0u8; 16]),
            }],
            ttl_seconds: 10,
        };
        let err = SessionKeys::new(&bad).unwrap_err();
        assert!(err.contains("session.keys[0].secret"), "{err}");
        let empty = SessionConfig {
            keys: vec![],
            ttl_seconds: 10,
        };
        assert!(SessionKeys::new(&empty)
            .unwrap_err()
            .contains("session.keys"));
    }
}
