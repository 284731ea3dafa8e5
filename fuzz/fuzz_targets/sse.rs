//! `sse::Parser`: any chunking of the same bytes yields the events of `parse_all`;
//! `relay::SseRelay::feed`: any chunking yields the bytes of one feed, and those bytes read back
//! (by the same parser, as a client would) as the relayed events, rewritten. Also runs
//! `upstream::response_message` and `upstream::initialize_outcome` (the other readers of
//! upstream answers) on the same body.
//!
//! Input: `n (1 byte) | n cut points (u16 LE each, taken modulo the body length) | body`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpgw_core::relay::{self, SseRelay};
use mcpgw_core::sse::{self, Parser};
use mcpgw_core::upstream;

const SERVER: &str = "alpha";

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 17);
    let header = (count * 2).min(rest.len());
    let (cuts, body) = rest.split_at(header);
    let mut cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .map(|c| c % (body.len() + 1))
        .collect();
    cuts.sort_unstable();
    let chunks = split(body, &cuts);

    let whole = sse::parse_all(body);
    let mut parser = Parser::new();
    let chunked: Vec<sse::Event> = chunks.iter().flat_map(|c| parser.feed(c)).collect();
    assert_eq!(whole, chunked, "chunks {chunks:?}");

    for (mapped, method) in [(false, None), (true, None), (true, Some("resources/read"))] {
        let at_once = SseRelay::new(SERVER, mapped, method).feed(body);
        let mut relay = SseRelay::new(SERVER, mapped, method);
        let pieces: Vec<u8> = chunks.iter().flat_map(|c| relay.feed(c)).collect();
        assert_eq!(at_once, pieces, "chunks {chunks:?}");

        // What the client reads is what was relayed, event by event.
        let expected: Vec<sse::Event> = whole
            .iter()
            .map(|e| {
                let data = relay::rewrite(&e.data, SERVER, mapped);
                let data = match method {
                    Some(_) => relay::read_result_uris(&data, SERVER).into_owned(),
                    None => data.into_owned(),
                };
                sse::Event { data, ..e.clone() }
            })
            .collect();
        assert_eq!(sse::parse_all(&at_once), expected, "relayed {at_once:?}");
    }

    if let Some(message) = upstream::response_message(Some(b"text/event-stream"), body) {
        assert!(whole.iter().any(|e| e.data.as_bytes() == message));
        let _ = upstream::initialize_outcome(&message);
    }
    let _ = upstream::initialize_outcome(body);
});

fn split<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in cuts {
        chunks.push(&body[start..cut]);
        start = cut;
    }
    chunks.push(&body[start..]);
    chunks
}
