//! The usage accumulator (DESIGN §1, phase *meter*): watches a response as it is forwarded and
//! can say what was used at any moment — including after the client went away mid-stream, when
//! the upstream's own usage may never arrive (SPEC §4.3.5).

use parking_lot::Mutex;
use quota_core::tokens::count_tokens;
use quota_core::Usage;

#[derive(Debug, Default, Clone)]
struct MeterState {
    /// Usage the upstream reported (authoritative when present).
    reported: Option<Usage>,
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

    /// Output text forwarded to the client (content, tool-call arguments, refusal).
    pub fn count_output(&self, text: &str) {
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

    /// What to charge now: the upstream's report if it came, else the prompt estimate plus the
    /// output counted from forwarded chunks (at least one token per content chunk).
    pub fn usage(&self) -> Usage {
        let st = self.state.lock();
        st.reported.unwrap_or(Usage {
            input_tokens: self.prompt_estimate,
            output_tokens: st.counted_output.max(st.content_chunks),
            ..Default::default()
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
}
