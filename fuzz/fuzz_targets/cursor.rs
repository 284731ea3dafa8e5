//! `Catalog::page(kind, Some(cursor))` with arbitrary cursor strings (any string: the pipeline
//! passes `params.cursor` once decoded) never panics, answers only with a later page of the list
//! asked for, and a cursor accepted by one list is refused by every other.
//!
//! The catalog is fixed: two servers (one prefixed, its URIs mapped; one not), lists of 5, 5, 5
//! and 3 definitions in pages of 2. Input: the cursor, UTF-8.
#![no_main]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mcpgw_core::catalog::ListKind;
use mcpgw_core::{Catalog, GatewayConfig};
use serde_json::{json, Value};

const KINDS: [(ListKind, &str); 4] = [
    (ListKind::Tools, "tools"),
    (ListKind::Prompts, "prompts"),
    (ListKind::Resources, "resources"),
    (ListKind::ResourceTemplates, "resourceTemplates"),
];

struct Fixture {
    catalog: Catalog,
    /// Per kind: every page, in order (the first reached without a cursor).
    pages: Vec<Vec<String>>,
}

fn fixture() -> Fixture {
    let server = |name: &str, prefix: &str, n: usize| {
        json!({
            "name": name,
            "prefix": prefix,
            "authority": format!("{name}.mcp.local"),
            "cluster": name,
            "tools": (0..n).map(|i| json!({"name": format!("t{i}"), "inputSchema": {"type": "object"}})).collect::<Vec<_>>(),
            "prompts": (0..n).map(|i| json!({"name": format!("p{i}")})).collect::<Vec<_>>(),
            "resources": (0..n).map(|i| json!({"uri": format!("test://{name}/r{i}"), "name": format!("r{i}")})).collect::<Vec<_>>(),
            "resource_templates": (0..n.min(2)).map(|i| json!({"uriTemplate": format!("test://{name}/{{x}}/{i}"), "name": format!("rt{i}")})).collect::<Vec<_>>(),
        })
    };
    let document = json!({
        "version": "fuzz-1",
        "session": {"keys": [{"id": "k1", "secret": STANDARD.encode([7u8; 32])}]},
        "limits": {"page_size": 2},
        "servers": [server("alpha", "alpha_", 3), server("beta", "", 2)],
    });
    let config: GatewayConfig = serde_json::from_value(document).expect("a valid document");
    let catalog = Catalog::build(config).expect("builds");
    let mut pages = Vec::new();
    for (kind, _) in KINDS {
        let mut list = vec![catalog.page(kind, None).expect("first page").to_owned()];
        while let Some(cursor) = serde_json::from_str::<Value>(list.last().expect("a page"))
            .expect("JSON")
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            list.push(
                catalog
                    .page(kind, Some(&cursor))
                    .expect("listed cursor")
                    .to_owned(),
            );
            // Every list's own cursors are refused by the others.
            for (other, name) in KINDS {
                if other != kind {
                    assert!(
                        catalog.page(other, Some(&cursor)).is_err(),
                        "{name} took {cursor}"
                    );
                }
            }
        }
        assert!(list.len() >= 2, "the fixture pages every list");
        pages.push(list);
    }
    Fixture { catalog, pages }
}

thread_local! {
    static FIXTURE: Fixture = fixture();
}

fuzz_target!(|data: &[u8]| {
    let Ok(cursor) = std::str::from_utf8(data) else {
        return;
    };
    FIXTURE.with(|f| {
        let mut accepted = Vec::new();
        for (i, (kind, member)) in KINDS.iter().enumerate() {
            let Ok(page) = f.catalog.page(*kind, Some(cursor)) else {
                continue;
            };
            let at = f.pages[i].iter().position(|p| p == page);
            assert!(
                matches!(at, Some(n) if n > 0),
                "{member}: cursor {cursor:?} answered with a page not among its later pages: {page}"
            );
            // What the cursor says it is: the list it names.
            let decoded = URL_SAFE_NO_PAD
                .decode(cursor)
                .expect("an accepted cursor decodes");
            let decoded = String::from_utf8(decoded).expect("an accepted cursor is text");
            assert!(
                decoded.starts_with(&format!("{member}:")),
                "{member} accepted {cursor:?} ({decoded:?})"
            );
            accepted.push(*member);
        }
        assert!(accepted.len() <= 1, "{cursor:?} accepted by {accepted:?}");
    });
});
