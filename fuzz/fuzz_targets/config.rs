//! The configuration document as the plugin reads it (`serde_json::from_slice::<GatewayConfig>`
//! then `Catalog::build`) never panics on arbitrary bytes; when it builds, every list page
//! (the first of each kind, then each `nextCursor` in turn) is JSON text holding that kind's
//! list and at most a `nextCursor`, the pages end, and the `initialize` result is JSON too.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use mcpgw_core::catalog::ListKind;
use mcpgw_core::{Catalog, GatewayConfig};
use serde_json::value::RawValue;

const KINDS: [(ListKind, &str); 4] = [
    (ListKind::Tools, "tools"),
    (ListKind::Prompts, "prompts"),
    (ListKind::Resources, "resources"),
    (ListKind::ResourceTemplates, "resourceTemplates"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<GatewayConfig>(data) else {
        return;
    };
    let Ok(catalog) = Catalog::build(config) else {
        return;
    };
    let definitions: usize = catalog
        .servers
        .iter()
        .map(|s| s.tools.len() + s.prompts.len() + s.resources.len() + s.resource_templates.len())
        .sum();
    for (kind, member) in KINDS {
        let mut cursor: Option<String> = None;
        let mut pages = 0usize;
        loop {
            let page = catalog
                .page(kind, cursor.as_deref())
                .unwrap_or_else(|e| panic!("{member}: cursor {cursor:?} refused: {}", e.message));
            pages += 1;
            assert!(pages <= definitions + 1, "{member}: the pages do not end");
            cursor = next_cursor(page, member, catalog.limits.page_size);
            if cursor.is_none() {
                break;
            }
        }
    }
    for version in mcpgw_core::config::SUPPORTED_PROTOCOL_VERSIONS {
        let result = catalog.initialize_result(version);
        assert!(
            serde_json::from_str::<&RawValue>(&result).is_ok(),
            "initialize result is not JSON: {result}"
        );
    }
});

/// Checks one page; its `nextCursor`, if any. Read as raw values: definitions are forwarded
/// verbatim and may nest deeper than `serde_json::Value` goes, which does not make them invalid.
fn next_cursor(page: &str, member: &str, page_size: usize) -> Option<String> {
    assert!(
        serde_json::from_str::<&RawValue>(page).is_ok(),
        "{member}: a page is not JSON: {page}"
    );
    let members: BTreeMap<String, &RawValue> = serde_json::from_str(page)
        .unwrap_or_else(|e| panic!("{member}: a page is not an object ({e}): {page}"));
    let items = members
        .get(member)
        .unwrap_or_else(|| panic!("{member}: a page without its list: {page}"));
    let items: Vec<&RawValue> = serde_json::from_str(items.get())
        .unwrap_or_else(|e| panic!("{member}: the list is not an array ({e}): {page}"));
    let more = members.contains_key("nextCursor");
    assert_eq!(
        members.len(),
        usize::from(more) + 1,
        "{member}: unexpected members: {page}"
    );
    assert!(items.len() <= page_size, "{member}: an oversized page");
    assert!(
        !more || items.len() == page_size,
        "{member}: a short page before the last"
    );
    members.get("nextCursor").map(|c| {
        serde_json::from_str::<String>(c.get())
            .unwrap_or_else(|_| panic!("{member}: nextCursor is not a string: {page}"))
    })
}
