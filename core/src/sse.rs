//! Incremental Server-Sent Events parser: feed chunks as they arrive (split anywhere, lines ended
//! by CR, LF or CRLF), get complete events out. Only the current partial line is buffered.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous chunk ended with CR: a leading LF in the next chunk belongs to it.
    pending_cr: bool,
    current: Event,
    has_data: bool,
    has_fields: bool,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.pending_cr {
                self.pending_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\r' => {
                    self.pending_cr = true;
                    self.end_line(&mut events);
                }
                b'\n' => self.end_line(&mut events),
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data || self.has_fields {
                let mut event = std::mem::take(&mut self.current);
                if event.data.ends_with('\n') {
                    event.data.pop();
                }
                if self.has_data {
                    events.push(event);
                }
                self.has_data = false;
                self.has_fields = false;
            }
            return;
        }
        if line.first() == Some(&b':') {
            return; // comment (keep-alive)
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                self.current.data.push_str(value);
                self.current.data.push('\n');
                self.has_data = true;
            }
            "event" => {
                self.current.event = Some(value.to_owned());
                self.has_fields = true;
            }
            "id" if !value.contains('\0') => {
                self.current.id = Some(value.to_owned());
                self.has_fields = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.current.retry = value.parse().ok();
                self.has_fields = true;
            }
            _ => {}
        }
    }
}

/// The events of a complete SSE body (an unterminated last event is discarded, per the spec).
pub fn parse_all(body: &[u8]) -> Vec<Event> {
    Parser::new().feed(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_line_endings_and_multiline_data() {
        let body = b"event: message\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: ping\n\ndata:x\rdata: y\r\r";
        let events = parse_all(body);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\":\n1}");
        assert_eq!(events[0].id.as_deref(), Some("1"));
        assert_eq!(events[0].event.as_deref(), Some("message"));
        assert_eq!(events[1].data, "x\ny");
    }

    #[test]
    fn survives_any_split_point() {
        let body = b"id: 7\r\ndata: {\"jsonrpc\":\"2.0\"}\r\n\r\ndata: two\n\n";
        for cut in 0..body.len() {
            let mut parser = Parser::new();
            let mut events = parser.feed(&body[..cut]);
            events.extend(parser.feed(&body[cut..]));
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(events[0].data, "{\"jsonrpc\":\"2.0\"}");
            assert_eq!(events[1].data, "two");
        }
    }

    #[test]
    fn priming_events_without_data_are_not_events_and_tails_are_dropped() {
        assert!(parse_all(b"id: 0\nretry: 100\n\n").is_empty());
        assert!(parse_all(b"data: unterminated").is_empty());
        let retry = parse_all(b"retry: 5\ndata: a\n\n");
        assert_eq!(retry[0].retry, Some(5));
    }
}
