//! Tool scopes chosen with `select_tools` (docs/governance.md, "Tool discovery"), kept per
//! client session in bounded shared data, never in the plugin's memory.
//!
//! The table is [`SETS`] shared-data keys (`mcpgw.scope.<set>`); a session (its stable id, the
//! token's nonce) hashes to one set, which holds up to [`WAYS`] scopes as JSON
//! `[[id, [tool, ...]], ...]`, most recent last. A full set evicts its oldest scope: that session
//! sees the two meta-tools again (and may select again), never another session's tools, since a
//! scope is found only by the exact session id. Updates are compare-and-swap on the set's key,
//! retried on contention.

use crate::host::Host;

/// Sets of the table.
pub const SETS: u64 = 4096;
/// Scopes one set holds before it evicts its oldest.
pub const WAYS: usize = 4;
/// Most tools one scope may name.
pub const MAX_TOOLS: usize = 128;
const ATTEMPTS: usize = 16;
const PREFIX: &str = "mcpgw.scope.";

type Entries = Vec<(String, Vec<String>)>;

fn key(id: &str) -> String {
    format!("{PREFIX}{}", crate::upstream::hash(&[id]) % SETS)
}

fn decode(value: &[u8]) -> Entries {
    crate::jsonrpc::from_json_bytes(value).unwrap_or_default()
}

/// The scope the session `id` selected, if any.
pub fn get(host: &dyn Host, id: &str) -> Option<Vec<String>> {
    let value = host.shared_get(&key(id))?;
    decode(&value)
        .into_iter()
        .find(|(entry, _)| entry == id)
        .map(|(_, tools)| tools)
}

/// Records `tools` as the scope of the session `id`; false when contention outlasted every
/// retry or the proxy refused the write.
pub fn set(host: &mut dyn Host, id: &str, tools: &[String]) -> bool {
    let key = key(id);
    for _ in 0..ATTEMPTS {
        let (mut entries, version) = match host.shared_get_versioned(&key) {
            None => (Vec::new(), None),
            Some((value, version)) => (decode(&value), Some(version)),
        };
        entries.retain(|(entry, _)| entry != id);
        while entries.len() >= WAYS {
            entries.remove(0);
        }
        entries.push((id.to_owned(), tools.to_vec()));
        let Ok(encoded) = serde_json::to_vec(&entries) else {
            return false;
        };
        if host.shared_set_versioned(&key, &encoded, version) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ended::tests::Shared;

    /// `count` session ids that share one set.
    fn colliding(count: usize) -> Vec<String> {
        let set = |id: &str| crate::upstream::hash(&[id]) % SETS;
        let first = set("s0");
        (0..)
            .map(|i| format!("s{i}"))
            .filter(|id| set(id) == first)
            .take(count)
            .collect()
    }

    #[test]
    fn a_scope_is_found_only_by_its_session_and_a_full_set_evicts_the_oldest() {
        let mut host = Shared::default();
        let ids = colliding(WAYS + 1);
        for (i, id) in ids.iter().take(WAYS).enumerate() {
            assert!(set(&mut host, id, &[format!("t{i}")]));
        }
        for (i, id) in ids.iter().take(WAYS).enumerate() {
            assert_eq!(get(&host, id), Some(vec![format!("t{i}")]));
        }
        assert_eq!(get(&host, "someone-else"), None);
        // A new selection replaces the session's own, without evicting another.
        assert!(set(&mut host, &ids[1], &["again".to_owned()]));
        assert_eq!(get(&host, &ids[0]), Some(vec!["t0".to_owned()]));
        assert_eq!(get(&host, &ids[1]), Some(vec!["again".to_owned()]));
        // One more session in the full set: the oldest (ids[0]) loses its scope, nobody else's.
        let last = ids.last().unwrap();
        assert!(set(&mut host, last, &["new".to_owned()]));
        assert_eq!(get(&host, &ids[0]), None);
        assert_eq!(get(&host, last), Some(vec!["new".to_owned()]));
        assert_eq!(get(&host, &ids[2]), Some(vec!["t2".to_owned()]));
    }
}
