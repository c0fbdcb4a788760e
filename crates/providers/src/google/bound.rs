//! The hold's prompt bound (SPEC §4.3(1)) of a Gemini `generateContent` request, walked over the
//! parsed request (both spellings the REST API accepts): text, function calls and responses,
//! code and tool definitions at one token per byte; an inline image at the model's per-image
//! maximum; `fileData` (a URL or an uploaded file), inline audio, video or documents,
//! `cachedContent`, and any part kind Quota does not know at the whole context window.

use super::wire::{Content, GenerateRequest};
use quota_core::hold::PromptBound;
use serde_json::{Map, Value};

impl GenerateRequest {
    /// What this request's prompt can be billed for at most, part by part.
    pub fn prompt_bound(&self) -> PromptBound {
        let mut bound = PromptBound::new();
        for content in self.contents.iter().chain(self.system_instruction.as_ref()) {
            content_bound(content, &mut bound);
        }
        for tool in self.tools.iter().flatten() {
            bound.tool();
            bound.json_map(tool);
        }
        if let Some(config) = &self.tool_config {
            bound.json_map(config);
        }
        if let Some(g) = &self.generation_config {
            for schema in [&g.response_schema, &g.response_json_schema].into_iter().flatten() {
                bound.json(schema);
            }
        }
        if self.cached_content.is_some() {
            // Content cached at Google beforehand: billed (at the cached rate), not visible here.
            bound.unmeasurable();
        }
        bound
    }
}

fn content_bound(content: &Content, bound: &mut PromptBound) {
    bound.message();
    for part in &content.parts {
        bound.message();
        part_bound(part, bound);
    }
}

fn part_bound(part: &Map<String, Value>, bound: &mut PromptBound) {
    for (key, value) in part {
        match key.as_str() {
            "text" => match value.as_str() {
                Some(t) => bound.text(t),
                None => bound.json(value),
            },
            "inlineData" | "inline_data" => {
                let mime = value.get("mimeType").or_else(|| value.get("mime_type")).and_then(Value::as_str);
                match mime {
                    Some(m) if m.starts_with("image/") => bound.image(),
                    // Audio, video and PDFs are billed by duration or pages, not by bytes.
                    _ => bound.unmeasurable(),
                }
            }
            "functionCall"
            | "function_call"
            | "functionResponse"
            | "function_response"
            | "executableCode"
            | "executable_code"
            | "codeExecutionResult"
            | "code_execution_result" => bound.json(value),
            // Flags and metadata that travel with a part and are not billed as tokens.
            "thought" | "thoughtSignature" | "thought_signature" | "videoMetadata" | "video_metadata"
            | "partMetadata" | "part_metadata" => {}
            // `fileData` (by URL or file name) and kinds added after this build.
            _ => bound.unmeasurable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_core::Catalog;
    use serde_json::json;

    fn bound_of(body: Value) -> u64 {
        let req = GenerateRequest::parse(body.to_string().as_bytes(), false).unwrap();
        req.prompt_bound().tokens_max(Catalog::builtin().get("google/gemini-2.5-flash").unwrap())
    }

    #[test]
    fn file_data_in_either_spelling_is_bounded_by_the_context_window() {
        let window = Catalog::builtin().get("google/gemini-2.5-flash").unwrap().context_window;
        for part in [
            json!({"fileData": {"mimeType": "video/mp4", "fileUri": "https://example.com/v.mp4"}}),
            json!({"file_data": {"mime_type": "application/pdf", "file_uri": "gs://b/a.pdf"}}),
            json!({"inlineData": {"mimeType": "audio/mp3", "data": "AAAA"}}),
            json!({"somethingNew": {}}),
        ] {
            let body = json!({"contents": [{"role": "user", "parts": [{"text": "Summarise"}, part]}]});
            assert_eq!(bound_of(body), window);
        }
        let cached = json!({"contents": [{"parts": [{"text": "hi"}]}], "cachedContent": "cachedContents/abc"});
        assert_eq!(bound_of(cached), window);
    }

    #[test]
    fn whitespace_and_key_order_do_not_change_the_bound() {
        let a = r#"{"contents":[{"role":"user","parts":[{"text":"hi"},{"functionCall":{"name":"f","args":{"a":1,"b":2}}}]}]}"#;
        let b = "{ \"contents\" : [ { \"parts\" : [ { \"text\" : \"hi\" } , { \"functionCall\" : { \"args\" : { \"b\" : 2 , \"a\" : 1 } , \"name\" : \"f\" } } ] , \"role\" : \"user\" } ] }";
        let (a, b): (Value, Value) = (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
        assert_eq!(bound_of(a), bound_of(b));
    }

    use proptest::prelude::*;

    fn part() -> impl Strategy<Value = Value> {
        prop_oneof![
            "\\PC{0,64}".prop_map(|t| json!({"text": t})),
            Just(json!({"inlineData": {"mimeType": "image/png", "data": "iVBOR"}})),
            Just(json!({"inline_data": {"mime_type": "audio/wav", "data": "UklGR"}})),
            "[a-z]{1,12}".prop_map(
                |h| json!({"fileData": {"mimeType": "image/png", "fileUri": format!("https://{h}.example/x.png")}})
            ),
            "[a-z]{1,12}".prop_map(|k| json!({format!("x_{k}"): {}})),
        ]
    }

    proptest! {
        /// For any mix of parts the bound covers what a hostile provider could bill and never
        /// passes the context window (see the OpenAI shape's twin test).
        #[test]
        fn the_bound_covers_what_a_hostile_provider_could_bill(
            turns in proptest::collection::vec(proptest::collection::vec(part(), 1..6), 1..5),
        ) {
            let model = Catalog::builtin().get("google/gemini-2.5-pro").unwrap().clone();
            let body = json!({"contents": turns.iter().map(|p| json!({"role": "user", "parts": p})).collect::<Vec<_>>()});
            let req = GenerateRequest::parse(body.to_string().as_bytes(), false).unwrap();
            let bound = req.prompt_bound().tokens_max(&model);
            let parts: Vec<&Value> = turns.iter().flatten().collect();
            let measurable = |p: &Value| p.get("text").is_some()
                || p["inlineData"]["mimeType"].as_str().is_some_and(|m| m.starts_with("image/"));
            prop_assert!(bound <= model.context_window);
            if parts.iter().all(|p| measurable(p)) {
                let billable: u64 = parts.iter().map(|p| match p.get("text").and_then(Value::as_str) {
                    Some(t) => t.len() as u64,
                    None => model.image_part_tokens_max,
                }).sum();
                prop_assert!(bound >= billable.min(model.context_window));
            } else {
                prop_assert_eq!(bound, model.context_window);
            }
        }
    }
}
