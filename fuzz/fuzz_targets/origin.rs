//! `origin::allowed` and `origin::is_origin` on arbitrary `Origin` header bytes never panic, and:
//! with no configured origin only a loopback host (`localhost`, `127.0.0.1`, `[::1]`) over
//! http(s) passes; `"*"` passes any text; a configured origin passes itself, in any ASCII case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpgw_core::origin;

fuzz_target!(|data: &[u8]| {
    let by_default = origin::allowed(data, &[]);
    let _ = origin::allowed(data, &["https://app.example.com".to_owned()]);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(!by_default);
        assert!(!origin::allowed(data, &["*".to_owned()]));
        return;
    };
    let _ = origin::is_origin(text);
    if by_default {
        assert!(
            loopback_host(text.trim()),
            "{text:?} passed as a loopback origin"
        );
    }
    assert!(origin::allowed(data, &["*".to_owned()]));
    let trimmed = text.trim();
    assert!(origin::allowed(data, &[trimmed.to_owned()]));
    assert!(origin::allowed(data, &[trimmed.to_ascii_uppercase()]));
    assert!(origin::allowed(data, &[trimmed.to_ascii_lowercase()]));
});

/// Independent reading: `http(s)://` then a loopback host, then at most a port-ish rest with no
/// other host in it.
fn loopback_host(origin: &str) -> bool {
    let lower = origin.to_ascii_lowercase();
    let Some(authority) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return false;
    };
    let rest = ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .find_map(|host| authority.strip_prefix(host));
    matches!(rest, Some(rest) if rest.bytes().all(|b| b.is_ascii_digit() || b == b':' || b == b'+'))
}
