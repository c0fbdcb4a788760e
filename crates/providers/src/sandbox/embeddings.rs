//! The sandbox's embeddings (SPEC §3.8): for each input a deterministic unit vector of the
//! model's dimension (or the `dimensions` asked for), in the shape the request came in — OpenAI's
//! list (floats or base64) or Gemini's `embedding` / `embeddings` — billed by the gateway's
//! count of the inputs.

use super::{fault_error, Sandbox};
use crate::embeddings::{to_base64, unit_vector, EmbedRequest, EmbedShape};
use crate::{ChatResponse, NativeCall, NativeProvider, UpstreamError};
use bytes::Bytes;
use quota_core::Usage;
use serde_json::{json, Value};

#[async_trait::async_trait]
impl NativeProvider<EmbedRequest> for Sandbox {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, EmbedRequest>) -> u64 {
        call.request.tokens_counted()
    }

    async fn call(&self, call: NativeCall<'_, EmbedRequest>) -> Result<ChatResponse, UpstreamError> {
        if let Some(err) = call.fault.and_then(fault_error) {
            return Err(err);
        }
        let req = call.request;
        let dims = req.dimensions_for(call.model).map_err(UpstreamError::InvalidRequest)?;
        let vectors: Vec<Vec<f32>> = req.inputs.iter().map(|i| unit_vector(&i.seed(), dims)).collect();
        let tokens = req.tokens_counted();
        let body = match req.shape {
            EmbedShape::OpenAi => {
                let data: Vec<Value> = vectors
                    .iter()
                    .enumerate()
                    .map(|(index, v)| {
                        let embedding = if req.base64 { json!(to_base64(v)) } else { json!(v) };
                        json!({"object": "embedding", "index": index, "embedding": embedding})
                    })
                    .collect();
                json!({"object": "list", "data": data, "model": call.model.upstream_id,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
            }
            EmbedShape::GeminiSingle => json!({"embedding": {"values": vectors[0]}}),
            EmbedShape::GeminiBatch => {
                json!({"embeddings": vectors.iter().map(|v| json!({"values": v})).collect::<Vec<_>>()})
            }
        };
        let usage = Usage { input_tokens: tokens, ..Default::default() };
        Ok(ChatResponse::Complete { body: Bytes::from(body.to_string()), usage })
    }
}
