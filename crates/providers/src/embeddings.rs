//! Embeddings (SPEC §3.8) in both shapes Quota serves — OpenAI's `POST /v1/embeddings` and
//! Gemini's `:embedContent` / `:batchEmbedContents` — parsed into one [`EmbedRequest`]: the
//! inputs (what is priced, per input token), the dimension asked for, and how the answer is
//! shaped. The adapters forward it (OpenAI, Google) or answer it (the sandbox: deterministic unit
//! vectors of the model's dimension, derived from each input).
//!
//! Not here: the route's phases (the gateway's `routes::embeddings`).

use crate::openai::describe_json_error;
use crate::UpstreamError;
use quota_core::tokens::count_tokens;
use quota_core::Model;
use serde::Deserialize;
use serde_json::Value;

/// Most inputs in one request (OpenAI's limit is 2,048; Gemini's batch limit is 100).
pub const INPUTS_MAX_OPENAI: usize = 2048;
pub const INPUTS_MAX_GEMINI: usize = 100;

/// Which API the request came in on, and so the shape of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedShape {
    /// `POST /v1/embeddings`.
    OpenAi,
    /// `:embedContent` (one content).
    GeminiSingle,
    /// `:batchEmbedContents` (`requests: [...]`).
    GeminiBatch,
}

/// One input to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedInput {
    Text(String),
    /// Pre-tokenized input (OpenAI accepts token ids): this many tokens.
    Tokens(u64),
}

impl EmbedInput {
    /// The most tokens this input can be billed for: one per byte of text.
    pub fn tokens_max(&self) -> u64 {
        match self {
            EmbedInput::Text(t) => t.len() as u64,
            EmbedInput::Tokens(n) => *n,
        }
    }

    /// The gateway's own count (the sandbox tokenizer), used where the provider reports none.
    pub fn tokens_counted(&self) -> u64 {
        match self {
            EmbedInput::Text(t) => count_tokens(t).min(t.len() as u64),
            EmbedInput::Tokens(n) => *n,
        }
    }

    /// Text the sandbox derives its vector from.
    pub fn seed(&self) -> String {
        match self {
            EmbedInput::Text(t) => t.clone(),
            EmbedInput::Tokens(n) => format!("tokens:{n}"),
        }
    }
}

/// An embeddings request, whichever shape it came in.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub shape: EmbedShape,
    pub inputs: Vec<EmbedInput>,
    /// `dimensions` / `outputDimensionality`: a shorter vector than the model's.
    pub dimensions: Option<u64>,
    /// OpenAI `encoding_format: "base64"`.
    pub base64: bool,
}

#[derive(Deserialize)]
struct OpenAiBody {
    input: Value,
    dimensions: Option<u64>,
    encoding_format: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiSingle {
    content: GeminiContent,
    output_dimensionality: Option<u64>,
}

#[derive(Deserialize)]
struct GeminiBatch {
    requests: Vec<GeminiSingle>,
}

#[derive(Deserialize)]
struct GeminiContent {
    #[serde(default)]
    parts: Vec<GeminiPart>,
}

#[derive(Deserialize)]
struct GeminiPart {
    text: Option<String>,
}

impl EmbedRequest {
    /// OpenAI's body: `input` a string, strings, token ids or lists of token ids.
    pub fn parse_openai(body: &[u8]) -> Result<(String, EmbedRequest), String> {
        let model = model_of(body)?;
        let b: OpenAiBody = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
        let inputs = openai_inputs(&b.input)?;
        let base64 = match b.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => return Err(format!("`encoding_format` must be `float` or `base64`, not `{other}`")),
        };
        let req = EmbedRequest { shape: EmbedShape::OpenAi, inputs, dimensions: b.dimensions, base64 };
        req.checked(INPUTS_MAX_OPENAI).map(|r| (model, r))
    }

    /// Gemini's `:embedContent` (`batch` false) or `:batchEmbedContents` body.
    pub fn parse_gemini(body: &[u8], batch: bool) -> Result<EmbedRequest, String> {
        let singles = if batch {
            serde_json::from_slice::<GeminiBatch>(body).map_err(|e| describe_json_error(&e))?.requests
        } else {
            vec![serde_json::from_slice::<GeminiSingle>(body).map_err(|e| describe_json_error(&e))?]
        };
        let dimensions = singles.first().and_then(|s| s.output_dimensionality);
        if singles.iter().any(|s| s.output_dimensionality != dimensions) {
            return Err("every request of a batch must ask for the same `outputDimensionality`".into());
        }
        let inputs = singles
            .into_iter()
            .map(|s| {
                let text: String = s.content.parts.into_iter().filter_map(|p| p.text).collect::<Vec<_>>().join("\n");
                EmbedInput::Text(text)
            })
            .collect();
        let shape = if batch { EmbedShape::GeminiBatch } else { EmbedShape::GeminiSingle };
        EmbedRequest { shape, inputs, dimensions, base64: false }.checked(INPUTS_MAX_GEMINI)
    }

    fn checked(self, inputs_max: usize) -> Result<EmbedRequest, String> {
        if self.inputs.is_empty() {
            return Err("there is nothing to embed: give at least one input".into());
        }
        if self.inputs.len() > inputs_max {
            return Err(format!("at most {inputs_max} inputs per request, got {}", self.inputs.len()));
        }
        if self.inputs.iter().any(|i| i.tokens_max() == 0) {
            return Err("an input is empty".into());
        }
        if self.dimensions == Some(0) {
            return Err("`dimensions` must be at least 1".into());
        }
        Ok(self)
    }

    /// The vector length to answer with, or 400 when the model cannot give that many.
    pub fn dimensions_for(&self, model: &Model) -> Result<u64, String> {
        match self.dimensions {
            Some(d) if d > model.dimensions => {
                Err(format!("`{}` gives at most {} dimensions, not {d}", model.id, model.dimensions))
            }
            Some(d) => Ok(d),
            None => Ok(model.dimensions),
        }
    }

    /// The most input tokens the request can be billed for (SPEC §4.3(1)), never above the
    /// model's per-request limit (the provider refuses more).
    pub fn tokens_max(&self, model: &Model) -> u64 {
        self.inputs.iter().map(EmbedInput::tokens_max).fold(0u64, u64::saturating_add).min(model.context_window)
    }

    /// The gateway's count of the inputs (Gemini reports no usage for embeddings).
    pub fn tokens_counted(&self) -> u64 {
        self.inputs.iter().map(EmbedInput::tokens_counted).fold(0u64, u64::saturating_add)
    }
}

fn model_of(body: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct M {
        model: String,
    }
    let m: M = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
    if m.model.is_empty() {
        return Err("`model` must not be empty".into());
    }
    Ok(m.model)
}

fn openai_inputs(input: &Value) -> Result<Vec<EmbedInput>, String> {
    let bad =
        || "`input` must be a string, an array of strings, or an array of token ids (or of arrays of them)".to_string();
    let token_list = |v: &Value| -> Option<u64> {
        let a = v.as_array()?;
        a.iter().all(Value::is_u64).then_some(a.len() as u64)
    };
    match input {
        Value::String(s) => Ok(vec![EmbedInput::Text(s.clone())]),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Ok(items.iter().filter_map(Value::as_str).map(|s| EmbedInput::Text(s.to_string())).collect())
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            Ok(vec![EmbedInput::Tokens(items.len() as u64)])
        }
        Value::Array(items) => items.iter().map(|i| token_list(i).map(EmbedInput::Tokens).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

/// The provider's reported input tokens of an OpenAI embeddings answer.
pub fn openai_usage(body: &[u8]) -> Result<u64, UpstreamError> {
    #[derive(Deserialize)]
    struct Body {
        usage: Option<U>,
    }
    #[derive(Deserialize)]
    struct U {
        prompt_tokens: u64,
    }
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    b.usage
        .map(|u| u.prompt_tokens)
        .ok_or_else(|| UpstreamError::Transport("the provider's embeddings answer has no usage".into()))
}

/// A deterministic unit vector of `dims` for `seed` (the sandbox's embedding): the same input
/// always gives the same vector, different inputs differ.
pub fn unit_vector(seed: &str, dims: u64) -> Vec<f32> {
    let mut state = crate::sandbox::fnv1a(seed.as_bytes()) | 1;
    let mut v: Vec<f64> = (0..dims)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v.into_iter().map(|x| x as f32).collect()
}

/// `vector` as OpenAI's `encoding_format: "base64"` sends it: little-endian float32s, base64.
pub fn to_base64(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_core::Catalog;

    #[test]
    fn every_openai_input_shape_parses_and_bad_ones_say_why() {
        let (m, r) = EmbedRequest::parse_openai(br#"{"model":"text-embedding-3-small","input":"hello"}"#).unwrap();
        assert_eq!((m.as_str(), r.inputs.len(), r.base64), ("text-embedding-3-small", 1, false));
        let (_, r) =
            EmbedRequest::parse_openai(br#"{"model":"m","input":["a","bc"],"encoding_format":"base64"}"#).unwrap();
        assert_eq!((r.inputs.len(), r.base64), (2, true));
        let (_, r) = EmbedRequest::parse_openai(br#"{"model":"m","input":[1,2,3]}"#).unwrap();
        assert_eq!(r.inputs, vec![EmbedInput::Tokens(3)]);
        let (_, r) = EmbedRequest::parse_openai(br#"{"model":"m","input":[[1,2],[3]]}"#).unwrap();
        assert_eq!(r.inputs, vec![EmbedInput::Tokens(2), EmbedInput::Tokens(1)]);
        for bad in [
            r#"{"model":"m","input":""}"#,
            r#"{"model":"m","input":[]}"#,
            r#"{"model":"m","input":{"x":1}}"#,
            r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
            r#"{"model":"","input":"x"}"#,
        ] {
            assert!(EmbedRequest::parse_openai(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bound_is_a_byte_per_token_over_all_inputs_up_to_the_request_limit() {
        let catalog = Catalog::builtin();
        let model = catalog.get("text-embedding-3-small").unwrap();
        let (_, r) = EmbedRequest::parse_openai(br#"{"model":"m","input":["abcd","ef"]}"#).unwrap();
        assert_eq!(r.tokens_max(model), 6);
        assert!(r.tokens_counted() <= 6);
        assert_eq!(r.dimensions_for(model), Ok(1536));
        let (_, r) = EmbedRequest::parse_openai(br#"{"model":"m","input":"x","dimensions":4000}"#).unwrap();
        assert!(r.dimensions_for(model).is_err());
    }

    #[test]
    fn sandbox_vectors_are_unit_length_deterministic_and_distinct() {
        let a = unit_vector("hello", 256);
        assert_eq!(a.len(), 256);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_eq!(a, unit_vector("hello", 256));
        assert_ne!(a, unit_vector("hellp", 256));
        assert_eq!(to_base64(&[1.0]), "AACAPw==");
    }

    #[test]
    fn gemini_batches_parse_with_one_dimensionality() {
        let r = EmbedRequest::parse_gemini(
            br#"{"requests":[{"model":"models/gemini-embedding-001","content":{"parts":[{"text":"a"}]},"outputDimensionality":8},{"content":{"parts":[{"text":"b"}]},"outputDimensionality":8}]}"#,
            true,
        )
        .unwrap();
        assert_eq!((r.inputs.len(), r.dimensions, r.shape), (2, Some(8), EmbedShape::GeminiBatch));
        assert!(EmbedRequest::parse_gemini(br#"{"content":{"parts":[]}}"#, false).is_err());
    }
}
