//! One upstream session opening per (client session, server), and a cap on how often a client
//! session opens upstream sessions.
//!
//! **Single flight.** A call that finds no cached upstream session *claims* the opening with a
//! marker in shared data (`mcpgw.open.<n>`, a bounded table keyed by a hash of the pair): a
//! compare-and-swap that only one stream of the whole process wins. The winner (the opener) opens
//! the upstream session; every other call of the pair finds the marker, adds its VM's wake-up
//! address to it and waits. When the opener has cached the session (or failed), it clears the
//! marker and wakes each VM listed; a woken call takes the cached session (or the opener's
//! error). A marker older than [`stale_after_ms`] is taken over (its opener died); a marker slot
//! held by another pair (a hash collision) lets the call open on its own.
//!
//! Markers, like wake-ups, are hints over the cache: whatever happens to them, a call ends up
//! with a cached session, its own opening, or an error, and the cache stays the authority.
//!
//! **Rate.** [`admit`] counts the openings of a client session in the current second
//! (`mcpgw.rate.<n>`, compare-and-swap) against `limits.max_session_opens_per_second`.

use crate::host::Host;
use crate::upstream::hash;

const MARKER_PREFIX: &str = "mcpgw.open.";
const RATE_PREFIX: &str = "mcpgw.rate.";
/// Compare-and-swap attempts on one key before giving up.
const ATTEMPTS: usize = 8;

/// How old an opening may get before another stream takes it over: its opener made two calls
/// (initialize, notifications/initialized) of at most `timeout_ms` each, plus a margin.
pub fn stale_after_ms(timeout_ms: u64) -> u64 {
    timeout_ms.saturating_mul(2).saturating_add(1_000)
}

/// An opening this stream won: it must [`release`] it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    key: String,
    client: String,
    server: String,
    tag: String,
}

/// What a call that needs an upstream session does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Open it: this stream holds the opening.
    Open(Claim),
    /// Wait: another stream is opening it (the opening's tag, to match its outcome).
    Wait { opener: String },
    /// Open it without holding the opening (the marker slot belongs to another pair, or the
    /// marker kept changing).
    OpenAlone,
}

/// How an opening ended, as its waiters learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The upstream session is cached.
    Opened,
    /// The upstream refused or failed: the waiters fail with the same message.
    Failed(&'a str),
    /// The opener went away (its client reset the stream): a waiter opens instead.
    Abandoned,
}

/// Claims the opening of (client session, server), or says whom to wait for.
pub fn claim(
    host: &mut dyn Host,
    slots: u32,
    client: &str,
    server: &str,
    timeout_ms: u64,
) -> Attempt {
    let key = marker_key(slots, client, server);
    let stale_after = stale_after_ms(timeout_ms);
    for _ in 0..ATTEMPTS {
        let now = host.now_millis();
        let (current, version) = match host.shared_get_versioned(&key) {
            None => (None, None),
            Some((value, version)) => (Marker::decode(&value), Some(version)),
        };
        let mut waiters = Vec::new();
        if let Some(mut marker) = current {
            let fresh = now.saturating_sub(marker.since_ms) <= stale_after;
            let ours = marker.client == client && marker.server == server;
            match (fresh, ours) {
                (true, true) => {
                    if let Some(address) = host.wake_address() {
                        if !marker.waiters.contains(&address) {
                            marker.waiters.push(address);
                            if !host.shared_set_versioned(&key, marker.encode().as_bytes(), version)
                            {
                                continue;
                            }
                        }
                    }
                    return Attempt::Wait { opener: marker.tag };
                }
                (true, false) => return Attempt::OpenAlone,
                // A stale opening of the same pair: whoever waited on it waits on this one.
                (false, true) => waiters = marker.waiters,
                (false, false) => {}
            }
        }
        let tag = format!("{now}.{}", host.wake_address().unwrap_or(0));
        let marker = Marker {
            client: client.to_owned(),
            server: server.to_owned(),
            since_ms: now,
            tag: tag.clone(),
            waiters,
        };
        if host.shared_set_versioned(&key, marker.encode().as_bytes(), version) {
            return Attempt::Open(Claim {
                key,
                client: client.to_owned(),
                server: server.to_owned(),
                tag,
            });
        }
    }
    Attempt::OpenAlone
}

/// Ends an opening: clears its marker (unless another stream took it over) and wakes the VMs
/// whose streams wait on it.
pub fn release(host: &mut dyn Host, claim: &Claim, outcome: Outcome<'_>) {
    for _ in 0..ATTEMPTS {
        let Some((value, version)) = host.shared_get_versioned(&claim.key) else {
            return;
        };
        let Some(marker) = Marker::decode(&value) else {
            return;
        };
        if marker.tag != claim.tag || marker.client != claim.client || marker.server != claim.server
        {
            return;
        }
        if host.shared_set_versioned(&claim.key, b"", Some(version)) {
            let message = wake_message(claim, outcome);
            for address in marker.waiters {
                host.wake(address, message.as_bytes());
            }
            return;
        }
    }
}

/// What a wake-up `message` says about the opening `opener` of (client session, server):
/// `None` when it is about another opening; `Some(Err(error))` when that opening failed;
/// `Some(Ok(()))` when it ended otherwise (opened, or abandoned: look at the cache again).
pub fn outcome(
    message: &[u8],
    client: &str,
    server: &str,
    opener: &str,
) -> Option<Result<(), String>> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(5, '\n');
    let matches = parts.next() == Some(client)
        && parts.next() == Some(server)
        && parts.next() == Some(opener);
    if !matches {
        return None;
    }
    match parts.next() {
        Some("failed") => Some(Err(parts.next().unwrap_or_default().to_owned())),
        _ => Some(Ok(())),
    }
}

fn wake_message(claim: &Claim, outcome: Outcome<'_>) -> String {
    let (word, detail) = match outcome {
        Outcome::Opened => ("opened", ""),
        Outcome::Failed(message) => ("failed", message),
        Outcome::Abandoned => ("abandoned", ""),
    };
    format!(
        "{}\n{}\n{}\n{word}\n{detail}",
        claim.client, claim.server, claim.tag
    )
}

fn marker_key(slots: u32, client: &str, server: &str) -> String {
    format!(
        "{MARKER_PREFIX}{}",
        hash(&[client, server]) % u64::from(slots.max(1))
    )
}

/// `client \n server \n since (ms) \n tag \n waiter,waiter,...`
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    client: String,
    server: String,
    since_ms: u64,
    tag: String,
    waiters: Vec<u32>,
}

impl Marker {
    fn decode(value: &[u8]) -> Option<Self> {
        let mut parts = std::str::from_utf8(value).ok()?.split('\n');
        Some(Self {
            client: parts.next()?.to_owned(),
            server: parts.next()?.to_owned(),
            since_ms: parts.next()?.parse().ok()?,
            tag: parts.next()?.to_owned(),
            waiters: parts
                .next()?
                .split(',')
                .filter(|w| !w.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        })
    }

    fn encode(&self) -> String {
        let waiters: Vec<String> = self.waiters.iter().map(u32::to_string).collect();
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.client,
            self.server,
            self.since_ms,
            self.tag,
            waiters.join(",")
        )
    }
}

/// Counts one upstream session opening of `client` in the current second; `false` when that
/// would exceed `per_second` (or the count could not be kept: the opening is refused then too,
/// since only many concurrent openings of one session contend on its count).
pub fn admit(host: &mut dyn Host, slots: u32, client: &str, per_second: u32) -> bool {
    let key = format!("{RATE_PREFIX}{}", hash(&[client]) % u64::from(slots.max(1)));
    for _ in 0..ATTEMPTS {
        let second = host.now_secs();
        let (count, version) = match host.shared_get_versioned(&key) {
            None => (0, None),
            Some((value, version)) => (current_count(&value, client, second), Some(version)),
        };
        if count >= per_second {
            return false;
        }
        let value = format!("{client}\n{second}\n{}", count + 1);
        if host.shared_set_versioned(&key, value.as_bytes(), version) {
            return true;
        }
    }
    false
}

/// The count a rate value holds for `client` in `second` (another session's, or an older
/// second's, counts for nothing).
fn current_count(value: &[u8], client: &str, second: u64) -> u32 {
    let Ok(text) = std::str::from_utf8(value) else {
        return 0;
    };
    let mut parts = text.split('\n');
    let owner = parts.next();
    let at = parts.next().and_then(|s| s.parse::<u64>().ok());
    let count = parts.next().and_then(|s| s.parse::<u32>().ok());
    match (owner, at, count) {
        (Some(owner), Some(at), Some(count)) if owner == client && at == second => count,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::host::Level;

    /// Shared data with versions, a clock, wake-ups recorded; one VM per wake address.
    #[derive(Default)]
    struct Vm {
        data: HashMap<String, (Vec<u8>, u32)>,
        next: u32,
        now_ms: u64,
        address: Option<u32>,
        woken: Vec<(u32, String)>,
    }

    impl Host for Vm {
        fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
            Vec::new()
        }
        fn set_request_header(&mut self, _: &str, _: &[u8]) {}
        fn remove_request_header(&mut self, _: &str) {}
        fn request_body(&self, _: usize) -> Option<Vec<u8>> {
            None
        }
        fn set_request_body(&mut self, _: usize, _: &[u8]) {}
        fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
            Vec::new()
        }
        fn response_body(&self, _: usize) -> Option<Vec<u8>> {
            None
        }
        fn set_response_body(&mut self, _: usize, _: &[u8]) {}
        fn set_response_header(&mut self, _: &str, _: &[u8]) {}
        fn remove_response_header(&mut self, _: &str) {}
        fn send_response(&mut self, _: u16, _: &[(&str, &[u8])], _: &[u8], _: &str) {}
        fn dispatch(
            &mut self,
            _: &str,
            _: &[(&str, &str)],
            _: &[u8],
            _: u64,
        ) -> Result<u32, String> {
            Err("no calls".into())
        }
        fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
            self.data.get(key).map(|(v, _)| v.clone())
        }
        fn shared_set(&mut self, key: &str, value: &[u8]) {
            self.next += 1;
            self.data.insert(key.into(), (value.to_vec(), self.next));
        }
        fn shared_get_versioned(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data.get(key).cloned()
        }
        fn shared_set_versioned(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
            if self.data.get(key).map(|(_, v)| *v) != version {
                return false;
            }
            self.shared_set(key, value);
            true
        }
        fn now_secs(&self) -> u64 {
            self.now_ms / 1000
        }
        fn now_millis(&self) -> u64 {
            self.now_ms
        }
        fn random_nonce(&mut self) -> Option<[u8; 24]> {
            None
        }
        fn clear_route_cache(&mut self) {}
        fn resume_request(&mut self) {}
        fn resume_response(&mut self) {}
        fn log(&self, _: Level, _: &str) {}
        fn wake_address(&self) -> Option<u32> {
            self.address
        }
        fn wake(&mut self, address: u32, message: &[u8]) {
            self.woken
                .push((address, String::from_utf8_lossy(message).into_owned()));
        }
        fn dispatch_detached(
            &mut self,
            _: &str,
            _: &[(&str, &str)],
            _: &[u8],
            _: u64,
        ) -> Result<(), String> {
            Err("no calls".into())
        }
    }

    fn vm(address: u32) -> Vm {
        Vm {
            now_ms: 5_000,
            address: Some(address),
            ..Vm::default()
        }
    }

    #[test]
    fn one_opener_and_everyone_else_waits_then_is_woken() {
        let mut vm = vm(7);
        let Attempt::Open(claim) = claim(&mut vm, 64, "c", "alpha", 1000) else {
            panic!("the first call opens");
        };
        for _ in 0..5 {
            assert!(matches!(claim_again(&mut vm), Attempt::Wait { .. }));
        }
        vm.address = Some(9); // a stream of another VM
        let Attempt::Wait { opener } = claim_again(&mut vm) else {
            panic!("waits");
        };
        assert_eq!(opener, claim.tag);
        assert!(matches!(
            super::claim(&mut vm, 64, "c", "beta", 1000),
            Attempt::Open(_)
        ));
        release(
            &mut vm,
            &claim,
            Outcome::Failed("upstream alpha failed: HTTP 500"),
        );
        let woken: Vec<u32> = vm.woken.iter().map(|(a, _)| *a).collect();
        assert_eq!(woken, [7, 9], "each VM once");
        let message = vm.woken[0].1.as_bytes();
        assert_eq!(
            outcome(message, "c", "alpha", &opener),
            Some(Err("upstream alpha failed: HTTP 500".into()))
        );
        assert_eq!(outcome(message, "c", "alpha", "another opening"), None);
        assert_eq!(outcome(message, "d", "alpha", &opener), None);
        // Released: the next call opens again.
        assert!(matches!(claim_again(&mut vm), Attempt::Open(_)));
    }

    fn claim_again(vm: &mut Vm) -> Attempt {
        claim(vm, 64, "c", "alpha", 1000)
    }

    #[test]
    fn a_stale_opening_is_taken_over_with_its_waiters() {
        let mut vm = vm(1);
        let Attempt::Open(first) = claim_again(&mut vm) else {
            panic!()
        };
        vm.address = Some(2);
        assert!(matches!(claim_again(&mut vm), Attempt::Wait { .. }));
        vm.now_ms += stale_after_ms(1000) + 1;
        vm.address = Some(3);
        let Attempt::Open(second) = claim_again(&mut vm) else {
            panic!("a dead opener's opening is taken over")
        };
        release(&mut vm, &first, Outcome::Opened);
        assert!(vm.woken.is_empty(), "the old opener no longer owns it");
        release(&mut vm, &second, Outcome::Opened);
        let woken: Vec<u32> = vm.woken.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            woken,
            [2],
            "the waiter of the dead opening is woken by the new one"
        );
        assert!(vm.woken[0].1.contains("\nopened\n"));
        let tag = second.tag.clone();
        assert_eq!(
            outcome(vm.woken[0].1.as_bytes(), "c", "alpha", &tag),
            Some(Ok(()))
        );
    }

    #[test]
    fn a_slot_held_by_another_pair_opens_alone() {
        let mut vm = vm(1);
        // One slot: every pair collides.
        assert!(matches!(
            claim(&mut vm, 1, "c", "alpha", 1000),
            Attempt::Open(_)
        ));
        assert_eq!(claim(&mut vm, 1, "d", "alpha", 1000), Attempt::OpenAlone);
    }

    #[test]
    fn openings_are_capped_per_session_and_second() {
        let mut vm = vm(1);
        for _ in 0..3 {
            assert!(admit(&mut vm, 64, "c", 3));
        }
        assert!(!admit(&mut vm, 64, "c", 3));
        assert!(admit(&mut vm, 64, "other", 3), "per session");
        vm.now_ms += 1000;
        assert!(admit(&mut vm, 64, "c", 3), "per second");
    }

    #[test]
    fn markers_round_trip() {
        let marker = Marker {
            client: "c".into(),
            server: "s".into(),
            since_ms: 12,
            tag: "12.3".into(),
            waiters: vec![3, 4],
        };
        assert_eq!(Marker::decode(marker.encode().as_bytes()), Some(marker));
        assert_eq!(Marker::decode(b""), None);
    }
}
