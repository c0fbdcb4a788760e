//! Server-Sent Events framing: split an upstream byte stream into whole events as they complete,
//! without waiting for more than the current event.

use bytes::{Bytes, BytesMut};

/// Accumulates bytes and yields complete events (each ending in a blank line).
#[derive(Default)]
pub struct SseSplitter {
    buf: BytesMut,
}

/// Largest event accepted from an upstream before the stream is treated as broken.
pub const SSE_EVENT_MAX_BYTES: usize = 16 * 1024 * 1024;

impl SseSplitter {
    /// Add bytes; returns every event completed by them (with its terminating blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((end, sep_len)) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end + sep_len).freeze();
            events.push(event);
        }
        if self.buf.len() > SSE_EVENT_MAX_BYTES {
            return Err(format!("an upstream SSE event exceeded {SSE_EVENT_MAX_BYTES} bytes"));
        }
        Ok(events)
    }

    /// Whatever is left when the upstream closes (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.buf.split().freeze();
        if rest.iter().all(|b| b.is_ascii_whitespace()) {
            None
        } else {
            Some(rest)
        }
    }
}

fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The concatenated `data:` lines of one event, and its `event:` name if any.
pub fn parse_event(event: &[u8]) -> (Option<&str>, String) {
    let text = std::str::from_utf8(event).unwrap_or("");
    let mut name = None;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        } else if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim());
        }
    }
    (name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_arbitrary_chunk_boundaries() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut s = SseSplitter::default();
            let mut got = s.push(&stream[..cut]).unwrap();
            got.extend(s.push(&stream[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(parse_event(&got[0]).1, "{\"a\":1}");
            assert_eq!(parse_event(&got[1]).1, "{\"b\":2}");
            assert_eq!(parse_event(&got[2]).1, "[DONE]");
            assert!(s.finish().is_none());
        }
    }

    #[test]
    fn reads_event_names() {
        let (name, data) = parse_event(b"event: message_start\ndata: {}\n\n");
        assert_eq!(name, Some("message_start"));
        assert_eq!(data, "{}");
    }
}
