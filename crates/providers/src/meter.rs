//! The usage accumulator (DESIGN §1, phase *meter*): watches a response as it is forwarded and
//! can say what was used at any moment — including after the client went away mid-stream, when
//! the upstream's own usage may never arrive (SPEC §4.3.5). It also carries what the gateway's
//! final event needs from the stream: its identity, and (Gemini) the final event held back so
//! the `quota` object can be added to it.

use bytes::Bytes;
use parking_lot::Mutex;
use quota_core::tokens::count_tokens;
use quota_core::Usage;

#[derive(Debug, Default, Clone)]
struct MeterState {
    /// Usage the upstream reported (authoritative when present).
    reported: Option<Usage>,
    /// The prompt side of the usage (input, cached, cache-write tokens), when the upstream
    /// reported it before the output was known (Anthropic's `message_start`, Gemini's chunks).
    reported_prompt: Option<Usage>,
    /// The last upstream event, held back so the gateway can add `quota` to it.
    held_final: Option<Bytes>,
    /// Output tokens counted from the text forwarded so far.
    counted_output: u64,
    /// Content chunks forwarded (each is at least one token).
    content_chunks: u64,
    /// Identity of the stream, echoed in the final chunk.
    id: Option<String>,
    created: Option<i64>,
    model: Option<String>,
    finished: bool,
}

/// Shared between the adapter's stream and the gateway.
#[derive(Debug, Default)]
pub struct Meter {
    state: Mutex<MeterState>,
    /// The prompt tokens to charge if the upstream never reports usage.
    prompt_estimate: u64,
}

impl Meter {
    pub fn new(prompt_estimate: u64) -> Meter {
        Meter { state: Mutex::new(MeterState::default()), prompt_estimate }
    }

    pub fn report_usage(&self, usage: Usage) {
        self.state.lock().reported = Some(usage);
    }

    /// The prompt side of the usage, known before the output is (its output count is ignored).
    pub fn report_prompt(&self, usage: Usage) {
        self.state.lock().reported_prompt = Some(Usage { output_tokens: 0, ..usage });
    }

    /// Hold `event` back as the stream's final event; returns the one held before, which is no
    /// longer final and must be sent now.
    pub fn hold_final_event(&self, event: Bytes) -> Option<Bytes> {
        self.state.lock().held_final.replace(event)
    }

    /// The held-back final event, if any (taken: it is sent once).
    pub fn take_final_event(&self) -> Option<Bytes> {
        self.state.lock().held_final.take()
    }

    /// Output text forwarded to the client (content, tool-call arguments, refusal). An empty
    /// piece (`"content": ""`, which OpenAI sends first) is no token.
    pub fn count_output(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        st.counted_output += count_tokens(text);
        st.content_chunks += 1;
    }

    pub fn set_identity(&self, id: &str, created: i64, model: &str) {
        let mut st = self.state.lock();
        if st.id.is_none() {
            st.id = Some(id.to_string());
            st.created = Some(created);
            st.model = Some(model.to_string());
        }
    }

    /// The upstream finished the stream normally.
    pub fn mark_finished(&self) {
        self.state.lock().finished = true;
    }

    pub fn finished(&self) -> bool {
        self.state.lock().finished
    }

    pub fn reported(&self) -> Option<Usage> {
        self.state.lock().reported
    }

    /// What to charge now: the upstream's report if it came, else its prompt-side report (or the
    /// prompt estimate) plus the output counted from forwarded chunks (at least one token per
    /// content chunk).
    pub fn usage(&self) -> Usage {
        let st = self.state.lock();
        let output_tokens = st.counted_output.max(st.content_chunks);
        st.reported.unwrap_or(match st.reported_prompt {
            Some(prompt) => Usage { output_tokens, ..prompt },
            None => Usage { input_tokens: self.prompt_estimate, output_tokens, ..Default::default() },
        })
    }

    /// (id, created, model) of the stream, if any chunk carried them.
    pub fn identity(&self) -> Option<(String, i64, String)> {
        let st = self.state.lock();
        Some((st.id.clone()?, st.created?, st.model.clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_counted_output_until_usage_is_reported() {
        let m = Meter::new(12);
        m.count_output("Hello");
        m.count_output(" world");
        assert_eq!(m.usage(), Usage { input_tokens: 12, output_tokens: 2, ..Default::default() });
        let reported = Usage { input_tokens: 10, cached_tokens: 2, output_tokens: 3, ..Default::default() };
        m.report_usage(reported);
        assert_eq!(m.usage(), reported);
    }

    #[test]
    fn empty_content_chunks_are_not_counted_as_tokens() {
        let m = Meter::new(4);
        for _ in 0..5 {
            m.count_output("");
        }
        assert_eq!(m.usage(), Usage { input_tokens: 4, output_tokens: 0, ..Default::default() });
        m.count_output("Hi");
        assert_eq!(m.usage().output_tokens, 1);
    }

    #[test]
    fn a_prompt_side_report_replaces_the_estimate_but_not_the_counted_output() {
        let m = Meter::new(12);
        m.report_prompt(Usage {
            input_tokens: 3,
            cached_tokens: 100,
            cache_write_tokens: 7,
            output_tokens: 1,
            ..Default::default()
        });
        m.count_output("Hello world again");
        assert_eq!(
            m.usage(),
            Usage {
                input_tokens: 3,
                cached_tokens: 100,
                cache_write_tokens: 7,
                output_tokens: 3,
                ..Default::default()
            }
        );
        assert!(m.reported().is_none(), "a prompt-side report alone does not say the stream produced anything");
    }

    #[test]
    fn a_held_final_event_is_replaced_and_taken_once() {
        let m = Meter::new(0);
        assert!(m.hold_final_event(Bytes::from_static(b"a")).is_none());
        assert_eq!(m.hold_final_event(Bytes::from_static(b"b")).as_deref(), Some(&b"a"[..]));
        assert_eq!(m.take_final_event().as_deref(), Some(&b"b"[..]));
        assert!(m.take_final_event().is_none());
    }
}
