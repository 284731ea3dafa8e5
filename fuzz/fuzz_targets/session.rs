//! `session::SessionKeys::open`, with the keys of a fixed configuration kept across runs (so the
//! per-VM memo of opened tokens is exercised as in a VM):
//!
//! - mode 0 (first byte even), arbitrary token: `open` never panics, and a token it opens is one
//!   the configured key of its id seals, byte for byte, from the claims and nonce it opened to
//!   (nothing else opens; the seeds are such tokens, mutated from there by the fuzzer);
//! - mode 1 (first byte odd), mutation: seal fuzzer-chosen claims with a fuzzer-chosen nonce; the
//!   token opens to those claims; with one byte changed at a fuzzer-chosen position it does not
//!   (before or after the original was remembered), and the original still opens after. A token
//!   sealed by another secret under the same key id never opens.
//!
//! Mode 1 input: `mode | nonce (24) | position (u16 LE) | new byte | age (u32 LE) |
//! pv [0x00 caps JSON [0x00 clientInfo JSON]]`; the claims' `iat` is `NOW - age` (at least 0).
#![no_main]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mcpgw_core::config::{SessionConfig, SessionKey};
use mcpgw_core::session::{Claims, SessionKeys};
use serde_json::value::RawValue;

/// The clock of every run (seeds are issued before it).
const NOW: u64 = 1_750_000_000;
/// The keys of the configuration (fuzz/seed.py seals its seeds with the same).
const KEY_1: (&str, [u8; 32]) = ("k1", sequence(0));
const KEY_2: (&str, [u8; 32]) = ("k2", sequence(32));
/// Same id as KEY_1, another secret.
const FOREIGN: (&str, [u8; 32]) = ("k1", sequence(64));

const fn sequence(start: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = start + i as u8;
        i += 1;
    }
    out
}

fn keys(list: &[(&str, [u8; 32])]) -> SessionKeys {
    SessionKeys::new(&SessionConfig {
        keys: list
            .iter()
            .map(|(id, secret)| SessionKey {
                id: (*id).to_owned(),
                secret: STANDARD.encode(secret),
            })
            .collect(),
        // Nothing expires: any token the keys seal and that is not from the future opens.
        ttl_seconds: u64::MAX,
    })
    .expect("valid keys")
}

thread_local! {
    /// The gateway's keys: rotated, `k1` sealing, `k2` still accepted.
    static GATEWAY: SessionKeys = keys(&[KEY_1, KEY_2]);
    static ONLY_1: SessionKeys = keys(&[KEY_1]);
    static ONLY_2: SessionKeys = keys(&[KEY_2]);
    static OTHER: SessionKeys = keys(&[FOREIGN]);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        arbitrary_token(rest);
    } else {
        mutation(rest);
    }
});

fn arbitrary_token(token: &[u8]) {
    let opened = GATEWAY.with(|k| k.open(token, NOW));
    let again = GATEWAY.with(|k| k.open(token, NOW)); // from the memo, when opened
    assert_eq!(opened.is_some(), again.is_some());
    let Some(session) = opened else { return };
    let text = std::str::from_utf8(token).expect("an opened token is text");
    let (id, _) = text.split_once('.').expect("an opened token names its key");
    let nonce: [u8; 24] = URL_SAFE_NO_PAD
        .decode(&session.id)
        .expect("the session id is base64url")
        .try_into()
        .expect("the session id is a 24-byte nonce");
    let sealer = match id {
        "k1" => &ONLY_1,
        "k2" => &ONLY_2,
        other => panic!("opened with unknown key id {other:?}: {text:?}"),
    };
    let (resealed, _) = sealer
        .with(|k| k.seal(&session.claims, nonce))
        .expect("seals");
    assert_eq!(
        resealed, text,
        "a token opened that its key did not seal as such"
    );
}

fn mutation(input: &[u8]) {
    if input.len() < 24 + 2 + 1 + 4 {
        return;
    }
    let (nonce, rest) = input.split_at(24);
    let nonce: [u8; 24] = nonce.try_into().expect("24 bytes");
    let position = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let new_byte = rest[2];
    let age = u64::from(u32::from_le_bytes([rest[3], rest[4], rest[5], rest[6]]));
    let mut parts = rest[7..].splitn(3, |b| *b == 0);
    let pv = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let raw = |part: Option<&[u8]>| {
        part.and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| RawValue::from_string(p.to_owned()).ok())
    };
    let caps = raw(parts.next());
    let info = raw(parts.next());
    let claims = Claims {
        iat: NOW.saturating_sub(age),
        pv,
        caps,
        info,
    };

    let (token, id) = GATEWAY.with(|k| k.seal(&claims, nonce)).expect("seals");
    assert_eq!(id, URL_SAFE_NO_PAD.encode(nonce));
    let mut mutated = token.clone().into_bytes();
    let at = position % mutated.len();
    mutated[at] = mutated[at].wrapping_add(1 + new_byte % 255);

    // Not remembered yet.
    assert!(
        GATEWAY.with(|k| k.open(&mutated, NOW)).is_none(),
        "a token with byte {at} changed opened: {:?}",
        String::from_utf8_lossy(&mutated)
    );
    let opened = GATEWAY
        .with(|k| k.open(token.as_bytes(), NOW))
        .expect("a fresh token opens");
    assert_eq!(opened.id, id);
    assert_eq!(opened.claims.iat, claims.iat);
    assert_eq!(opened.claims.pv, claims.pv);
    assert_eq!(present(&opened.claims.caps), present(&claims.caps));
    assert_eq!(present(&opened.claims.info), present(&claims.info));
    // The original is remembered now: the memo must not let the mutated token through.
    assert!(
        GATEWAY.with(|k| k.open(&mutated, NOW)).is_none(),
        "a token with byte {at} changed opened once the original was remembered"
    );
    assert!(GATEWAY.with(|k| k.open(token.as_bytes(), NOW)).is_some());

    // Same key id, another secret.
    let (foreign, _) = OTHER.with(|k| k.seal(&claims, nonce)).expect("seals");
    assert!(GATEWAY.with(|k| k.open(foreign.as_bytes(), NOW)).is_none());
}

/// A raw claim as it reads back: JSON `null` is no value (`Option`'s reading of it).
fn present(raw: &Option<Box<RawValue>>) -> Option<&str> {
    raw.as_deref()
        .map(|r| r.get().trim())
        .filter(|text| *text != "null")
}
