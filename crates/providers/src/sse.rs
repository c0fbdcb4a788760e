//! Server-Sent Events: split an upstream byte stream into whole events as they complete, without
//! waiting for more than the current event, and drive an adapter's per-event translation
//! ([`event_stream`]): each upstream event becomes zero or more client events at once, so no
//! stream is ever buffered.

use crate::{Meter, UpstreamError};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

/// Accumulates bytes and yields complete events (each ending in a blank line).
///
/// Linear in the bytes pushed: each byte is looked at a bounded number of times however the
/// event is cut into chunks, because the search for the end of the current event resumes where
/// the last one stopped (a 1 MiB event in 1 KiB chunks is not rescanned a thousand times).
#[derive(Default)]
pub struct SseSplitter {
    buf: BytesMut,
    /// `buf[..searched]` holds no complete separator (except possibly one still missing its last
    /// bytes, which is why the search backs up a little).
    searched: usize,
    /// Bytes examined by the separator search (the linearity test's work count).
    #[cfg(test)]
    work: usize,
}

/// Largest event accepted from an upstream before the stream is treated as broken.
pub const SSE_EVENT_MAX_BYTES: usize = 16 * 1024 * 1024;

impl SseSplitter {
    /// Add bytes; returns every event completed by them (with its terminating blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            // A separator is at most 4 bytes: one that began before `searched` lacked its tail.
            let from = self.searched.saturating_sub(SEPARATOR_MAX_BYTES - 1);
            let found = find_event_end(&self.buf, from);
            #[cfg(test)]
            {
                self.work += found.map_or(self.buf.len(), |(end, sep_len)| end + sep_len) - from;
            }
            match found {
                Some((end, sep_len)) => {
                    events.push(self.buf.split_to(end + sep_len).freeze());
                    self.searched = 0;
                }
                None => {
                    self.searched = self.buf.len();
                    break;
                }
            }
        }
        if self.buf.len() > SSE_EVENT_MAX_BYTES {
            return Err(format!("an upstream SSE event exceeded {SSE_EVENT_MAX_BYTES} bytes"));
        }
        Ok(events)
    }

    /// Whatever is left when the upstream closes (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        self.searched = 0;
        let rest = self.buf.split().freeze();
        if rest.iter().all(|b| b.is_ascii_whitespace()) {
            None
        } else {
            Some(rest)
        }
    }
}

/// The longest event separator, `\r\n\r\n`.
const SEPARATOR_MAX_BYTES: usize = 4;

/// The first blank line (`\n\n` or `\r\n\r\n`) starting at or after `from`: (its start, its
/// length). One pass over the line feeds, stopping at the first separator, so the search never
/// reads past the event it finds.
fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| i + from) {
        if buf.get(i + 1) == Some(&b'\n') {
            return Some((i, 2));
        }
        if i >= 1 && buf[i - 1] == b'\r' && buf.get(i + 1..i + 3) == Some(b"\r\n") {
            return Some((i - 1, 4));
        }
    }
    None
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

/// What an adapter does with each complete upstream event: record usage in the meter, and say
/// what the client gets for it.
pub trait EventTranslator: Send + 'static {
    /// The client's bytes for this upstream event (`None`: nothing now), or the stream's failure.
    /// Calls [`Meter::mark_finished`] when the upstream's own end-of-stream marker passes.
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError>;
}

/// Turn an upstream SSE byte stream into client events with `translator`, one upstream event at
/// a time, as each completes. The stream fails if the upstream breaks, exceeds `deadline`, or
/// closes before the translator marked the meter finished. An event the translator held back in
/// the meter ([`Meter::hold_final_event`]) is sent before such a failure.
pub fn event_stream<T: EventTranslator>(
    upstream: impl futures::Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
    meter: Arc<Meter>,
    deadline: Instant,
    translator: T,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    struct St<S, T> {
        upstream: std::pin::Pin<Box<S>>,
        splitter: SseSplitter,
        pending: VecDeque<Bytes>,
        meter: Arc<Meter>,
        translator: T,
        upstream_done: bool,
        /// Sent after the held-back final event, then the stream ends.
        error: Option<UpstreamError>,
        done: bool,
    }
    type Step<S, T> = Option<(Result<Bytes, UpstreamError>, St<S, T>)>;
    fn fail<S, T>(mut st: St<S, T>, e: UpstreamError) -> Step<S, T> {
        st.done = true;
        st.pending.clear();
        match st.meter.take_final_event() {
            Some(held) => {
                st.error = Some(e);
                Some((Ok(held), st))
            }
            None => Some((Err(e), st)),
        }
    }
    let state = St {
        upstream: Box::pin(upstream),
        splitter: SseSplitter::default(),
        pending: VecDeque::new(),
        meter,
        translator,
        upstream_done: false,
        error: None,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(e) = st.error.take() {
                return Some((Err(e), st));
            }
            if st.done {
                return None;
            }
            if let Some(event) = st.pending.pop_front() {
                match st.translator.event(event, &st.meter) {
                    Ok(Some(out)) => return Some((Ok(out), st)),
                    Ok(None) => continue,
                    Err(e) => return fail(st, e),
                }
            }
            if st.upstream_done {
                if !st.meter.finished() {
                    return fail(st, UpstreamError::Transport("the provider closed the stream early".into()));
                }
                return None;
            }
            match tokio::time::timeout_at(deadline, st.upstream.next()).await {
                Err(_) => return fail(st, UpstreamError::Timeout),
                Ok(None) => {
                    st.upstream_done = true;
                    if let Some(rest) = st.splitter.finish() {
                        st.pending.push_back(rest);
                    }
                }
                Ok(Some(Err(e))) => return fail(st, e),
                Ok(Some(Ok(bytes))) => match st.splitter.push(&bytes) {
                    Ok(events) => st.pending.extend(events),
                    Err(m) => return fail(st, UpstreamError::Transport(m)),
                },
            }
        }
    })
    .boxed()
}

/// One SSE event: `event: name` (if any) and the data, each line prefixed.
pub fn frame(name: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
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
    fn a_1_mib_event_in_small_chunks_is_split_in_linear_work() {
        let data = "x".repeat(1024 * 1024);
        let stream = format!("data: {data}\n\ndata: [DONE]\r\n\r\n");
        for chunk_len in [1024, 4096, 65_536] {
            let mut s = SseSplitter::default();
            let mut got = Vec::new();
            for chunk in stream.as_bytes().chunks(chunk_len) {
                got.extend(s.push(chunk).unwrap());
            }
            assert_eq!(got.len(), 2, "chunks of {chunk_len}");
            assert_eq!(parse_event(&got[0]).1.len(), data.len());
            assert_eq!(parse_event(&got[1]).1, "[DONE]");
            // A rescan from the start at every chunk would be ~(events' bytes)² / 2 / chunk_len
            // (512 MiB for 1 KiB chunks); linear is the bytes plus a few per chunk.
            let bound = stream.len() + (stream.len() / chunk_len + 2) * SEPARATOR_MAX_BYTES;
            assert!(s.work <= bound, "chunks of {chunk_len}: {} bytes examined for {}", s.work, stream.len());
        }
    }

    #[test]
    fn many_events_in_one_chunk_are_split_in_linear_work() {
        let stream = "data: {\"a\":1}\n\n".repeat(100_000);
        let mut s = SseSplitter::default();
        assert_eq!(s.push(stream.as_bytes()).unwrap().len(), 100_000);
        assert!(s.work <= stream.len() + SEPARATOR_MAX_BYTES, "{} for {}", s.work, stream.len());
    }

    #[test]
    fn a_separator_split_across_chunks_is_found() {
        for stream in [&b"data: 1\r\n\r\ndata: 2\n\n"[..], b"data: 1\n\ndata: 2\r\n\r\n"] {
            for cut in 0..=stream.len() {
                let mut s = SseSplitter::default();
                let mut got = Vec::new();
                for b in stream[..cut].iter().chain(&stream[cut..]) {
                    got.extend(s.push(&[*b]).unwrap());
                }
                assert_eq!(got.iter().map(|e| parse_event(e).1).collect::<Vec<_>>(), ["1", "2"]);
            }
        }
    }

    #[test]
    fn reads_event_names() {
        let (name, data) = parse_event(b"event: message_start\ndata: {}\n\n");
        assert_eq!(name, Some("message_start"));
        assert_eq!(data, "{}");
    }
}
