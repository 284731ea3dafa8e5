//! Ended (DELETEd) client sessions, remembered so that their tokens are refused until they
//! expire, in bounded shared data that never forgets early.
//!
//! Session tokens carry their issue time (`iat`) and the session id (the nonce). The table is
//! [`SETS`] shared-data keys (`mcpgw.ended.<set>`), one per set; a session hashes to one set.
//! A set holds up to [`WAYS`] ended sessions `(iat, id)` and a **watermark**: every token of the
//! set issued at or before the watermark is refused. When a set is full, the entry issued
//! earliest is evicted and the watermark rises to its `iat`, so the evicted session stays
//! refused; entries the watermark covers are dropped. Every update is a compare-and-swap on the
//! set's key, retried on contention, so concurrent DELETEs on other workers are never lost.
//!
//! What it guarantees (docs/security.md, "Session revocation"):
//! - an ended token is refused on every later request, on every worker of the process, until it
//!   expires, whatever the number of sessions created and ended since;
//! - a token that was not ended is refused only when at least `WAYS + 1` sessions of its set,
//!   each issued no earlier than it, were ended while it lived (its set's watermark then reaches
//!   its `iat`); the client re-initializes on the 404, as MCP clients do;
//! - memory is bounded: `SETS` keys of at most `WAYS` entries.
//!
//! The watermark also covers evicted entries that had already expired, which costs nothing: a
//! token issued at or before an expired token's `iat` has expired too.

use crate::host::Host;

/// Sets of the table. Fixed: a different count would scatter sessions over other keys and
/// forget the ones recorded under the old count.
pub const SETS: u64 = 4096;
/// Ended sessions one set holds before it raises its watermark.
pub const WAYS: usize = 8;
/// Compare-and-swap attempts before recording is given up (each failure means another worker
/// changed the same set in between).
const ATTEMPTS: usize = 16;

const PREFIX: &str = "mcpgw.ended.";

/// Whether the session `id` issued at `iat` has been ended. A set whose value cannot be read
/// refuses (fail closed).
/// (A token issued at 0, by a proxy whose clock could not be read, is always refused.)
pub fn is_ended(host: &dyn Host, sets: u64, id: &str, iat: u64) -> bool {
    let set = match host.shared_get(&key(id, sets)) {
        None => Set::default(),
        Some(value) => match Set::decode(&value) {
            Some(set) => set,
            None => return true,
        },
    };
    set.refuses(id, iat)
}

/// The session could not be recorded as ended (contention that outlasted every retry, or the
/// proxy refused the write): its token stays valid, and the DELETE must say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRecorded;

/// Records that the session `id` issued at `iat` has ended.
pub fn record(host: &mut dyn Host, sets: u64, id: &str, iat: u64) -> Result<(), NotRecorded> {
    let key = key(id, sets);
    for _ in 0..ATTEMPTS {
        let (updated, version) = match host.shared_get_versioned(&key) {
            None => (Set::default().with(id, iat), None),
            Some((value, version)) => match Set::decode(&value) {
                Some(set) if set.refuses(id, iat) => return Ok(()),
                Some(set) => (set.with(id, iat), Some(version)),
                // An unreadable value is replaced by one refusing everything issued until now,
                // which keeps whatever it recorded refused.
                None => (
                    Set::refusing_until(host.now_secs()).with(id, iat),
                    Some(version),
                ),
            },
        };
        if host.shared_set_versioned(&key, updated.encode().as_bytes(), version) {
            return Ok(());
        }
    }
    Err(NotRecorded)
}

/// The shared-data key of the set of session `id`.
pub fn key(id: &str, sets: u64) -> String {
    format!("{PREFIX}{}", crate::upstream::hash(&[id]) % sets.max(1))
}

/// One set: `<watermark>` then one `<iat> <id>` line per entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Set {
    watermark: u64,
    entries: Vec<(u64, String)>,
}

impl Set {
    fn refusing_until(watermark: u64) -> Self {
        Self {
            watermark,
            entries: Vec::new(),
        }
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let mut lines = text.split('\n');
        let watermark = lines.next()?.parse().ok()?;
        let entries = lines
            .map(|line| {
                let (iat, id) = line.split_once(' ')?;
                Some((iat.parse().ok()?, id.to_owned()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { watermark, entries })
    }

    fn encode(&self) -> String {
        let mut out = self.watermark.to_string();
        for (iat, id) in &self.entries {
            out.push('\n');
            out.push_str(&iat.to_string());
            out.push(' ');
            out.push_str(id);
        }
        out
    }

    fn refuses(&self, id: &str, iat: u64) -> bool {
        iat <= self.watermark || self.entries.iter().any(|(_, ended)| ended == id)
    }

    /// The set with `(iat, id)` added: over [`WAYS`] entries, the earliest issued is evicted and
    /// the watermark rises to cover it.
    fn with(mut self, id: &str, iat: u64) -> Self {
        self.entries.push((iat, id.to_owned()));
        while self.entries.len() > WAYS {
            let Some(earliest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, (iat, _))| *iat)
                .map(|(index, _)| index)
            else {
                break;
            };
            let (evicted, _) = self.entries.swap_remove(earliest);
            self.watermark = self.watermark.max(evicted);
        }
        let watermark = self.watermark;
        self.entries.retain(|(iat, _)| *iat > watermark);
        self
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::host::Level;

    /// Shared data with versions, like the proxy's; nothing else.
    #[derive(Default)]
    pub(crate) struct Shared {
        data: HashMap<String, (Vec<u8>, u32)>,
        next: u32,
        now: u64,
        /// Writes that fail with a CAS mismatch before succeeding (another worker's DELETE).
        contention: usize,
    }

    impl Host for Shared {
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
            self.data.get(key).map(|(value, _)| value.clone())
        }
        fn shared_set(&mut self, key: &str, value: &[u8]) {
            self.next += 1;
            self.data.insert(key.into(), (value.to_vec(), self.next));
        }
        fn shared_get_versioned(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data.get(key).cloned()
        }
        fn shared_set_versioned(&mut self, key: &str, value: &[u8], version: Option<u32>) -> bool {
            if self.contention > 0 {
                self.contention -= 1;
                return false;
            }
            if self.data.get(key).map(|(_, v)| *v) != version {
                return false;
            }
            self.shared_set(key, value);
            true
        }
        fn now_secs(&self) -> u64 {
            self.now
        }
        fn now_millis(&self) -> u64 {
            self.now * 1000
        }
        fn random_nonce(&mut self) -> Option<[u8; 24]> {
            None
        }
        fn clear_route_cache(&mut self) {}
        fn resume_request(&mut self) {}
        fn resume_response(&mut self) {}
        fn log(&self, _: Level, _: &str) {}
        fn wake_address(&self) -> Option<u32> {
            None
        }
        fn wake(&mut self, _: u32, _: &[u8]) {}
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

    /// A small deterministic generator (xorshift), so the test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn no_ended_session_ever_comes_back_and_live_ones_fall_only_to_a_full_set() {
        const TTL: u64 = 600;
        let sets = 4;
        let mut host = Shared::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut ended: Vec<(String, u64)> = Vec::new();
        let mut live: Vec<(String, u64)> = Vec::new();
        // Model of the documented condition: per set, the iats of the sessions ended there.
        let mut ended_iats: HashMap<u64, Vec<u64>> = HashMap::new();
        for cycle in 0..100_000u64 {
            // Time moves by 0 to 2 seconds per cycle; sessions are issued up to a TTL ago.
            host.now += rng.next() % 3;
            let id = format!("s{cycle}");
            let iat = host.now.saturating_sub(rng.next() % TTL);
            if rng.next().is_multiple_of(4) {
                live.push((id, iat));
                continue;
            }
            record(&mut host, sets, &id, iat).unwrap();
            let set = crate::upstream::hash(&[&id]) % sets;
            ended_iats.entry(set).or_default().push(iat);
            ended.push((id, iat));
            if cycle.is_multiple_of(997) {
                // Every ended token still within its TTL stays refused.
                for (id, iat) in ended.iter().filter(|(_, iat)| host.now - iat <= TTL) {
                    assert!(is_ended(&host, sets, id, *iat), "{id} came back");
                }
            }
        }
        for (id, iat) in &ended {
            assert!(is_ended(&host, sets, id, *iat), "{id} came back");
        }
        // A live session is refused only if more than WAYS sessions of its set, issued no
        // earlier than it, were ended.
        for iats in ended_iats.values_mut() {
            iats.sort_unstable();
        }
        let mut refused = 0;
        for (id, iat) in &live {
            if is_ended(&host, sets, id, *iat) {
                refused += 1;
                let set = crate::upstream::hash(&[id]) % sets;
                let later = ended_iats
                    .get(&set)
                    .map_or(0, |iats| iats.len() - iats.partition_point(|i| i < iat));
                assert!(later > WAYS, "{id} refused with only {later} later ends");
            }
        }
        assert!(refused > 0, "the small table did overflow");
        // Bounded: one key per set, at most WAYS entries each.
        assert!(host.data.len() as u64 <= sets);
        for (value, _) in host.data.values() {
            assert!(Set::decode(value).unwrap().entries.len() <= WAYS);
        }
    }

    #[test]
    fn a_large_table_refuses_no_live_session() {
        let mut host = Shared {
            now: 1_000_000,
            ..Shared::default()
        };
        let ids: Vec<String> = (0..10_000).map(|i| format!("ended-{i}")).collect();
        let now = host.now;
        for id in &ids {
            record(&mut host, SETS, id, now).unwrap();
        }
        let mut seen = HashSet::new();
        for id in &ids {
            assert!(is_ended(&host, SETS, id, host.now));
            seen.insert(key(id, SETS));
        }
        let refused = (0..10_000)
            .filter(|i| is_ended(&host, SETS, &format!("live-{i}"), host.now - 1))
            .count();
        // 10,000 ends over 4,096 sets of 8: a set overflows only by a rare pile-up.
        assert!(refused < 50, "{refused} live sessions refused");
    }

    #[test]
    fn contention_is_retried_and_reported_when_it_never_ends() {
        let mut host = Shared {
            contention: 3,
            ..Shared::default()
        };
        record(&mut host, 16, "a", 10).unwrap();
        assert!(is_ended(&host, 16, "a", 10));
        host.contention = usize::MAX;
        assert_eq!(record(&mut host, 16, "b", 10), Err(NotRecorded));
        assert!(!is_ended(&host, 16, "b", 10), "not recorded, and said so");
    }

    #[test]
    fn an_unreadable_set_refuses_and_is_rewritten_conservatively() {
        let mut host = Shared {
            now: 500,
            ..Shared::default()
        };
        let key = key("x", 1);
        host.shared_set(&key, b"garbage");
        assert!(is_ended(&host, 1, "y", 1), "fail closed");
        record(&mut host, 1, "x", 499).unwrap();
        assert!(is_ended(&host, 1, "x", 499));
        assert!(is_ended(&host, 1, "older", 100), "covered by the watermark");
        assert!(!is_ended(&host, 1, "newer", 501));
    }

    #[test]
    fn the_encoding_round_trips() {
        let set = Set::default().with("a", 5).with("b", 7);
        assert_eq!(set.encode(), "0\n5 a\n7 b");
        assert_eq!(Set::decode(set.encode().as_bytes()), Some(set));
        assert_eq!(Set::decode(b"12"), Some(Set::refusing_until(12)));
        assert!(Set::decode(b"12\nnope").is_none());
    }
}
