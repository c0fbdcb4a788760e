//! The hold's prompt bound (SPEC §4.3(1)) of an OpenAI Chat Completions request, walked over the
//! parsed request: text at one token per byte, inline (`data:`) images at the model's per-image
//! maximum, and anything not measurable here — an `image_url` by http(s) URL, `input_audio`,
//! `file` parts, a content part or tool of a type Quota does not know — at the whole context
//! window. The same walk bounds translated requests (Claude and Gemini models behind
//! `/v1/chat/completions`): their upstream prompt carries the same parts.

use super::wire::{image_url, ChatRequest, Content, ContentPart};
use quota_core::hold::PromptBound;

impl ChatRequest {
    /// What this request's prompt can be billed for at most, part by part.
    pub fn prompt_bound(&self) -> PromptBound {
        let mut bound = PromptBound::new();
        for m in &self.messages {
            bound.message();
            for text in [&m.name, &m.tool_call_id].into_iter().flatten() {
                bound.text(text);
            }
            for call in m.tool_calls.iter().flatten() {
                bound.message();
                bound.text(call.id.as_deref().unwrap_or(""));
                if let Some(f) = &call.function {
                    bound.text(f.name.as_deref().unwrap_or(""));
                    bound.text(f.arguments.as_deref().unwrap_or(""));
                }
            }
            match &m.content {
                None => {}
                Some(Content::Text(t)) => bound.text(t),
                Some(Content::Parts(parts)) => parts.iter().for_each(|p| part_bound(p, &mut bound)),
            }
        }
        for tool in self.tools.iter().flatten() {
            bound.tool();
            match (&*tool.kind, &tool.function) {
                ("function", Some(f)) => {
                    bound.text(&f.name);
                    bound.text(f.description.as_deref().unwrap_or(""));
                    if let Some(p) = &f.parameters {
                        bound.json(p);
                    }
                }
                // Custom or built-in tools are rendered by the provider in ways not published.
                _ => bound.unmeasurable(),
            }
        }
        if let Some(choice) = &self.tool_choice {
            bound.json(choice);
        }
        if let Some(format) = &self.response_format {
            bound.json_map(format);
        }
        bound
    }
}

fn part_bound(part: &ContentPart, bound: &mut PromptBound) {
    match part.kind.as_str() {
        "text" => bound.text(part.text.as_deref().unwrap_or("")),
        "refusal" => bound.text(part.refusal.as_deref().unwrap_or("")),
        "image_url" => match image_url(part.image_url.as_ref()) {
            Some(url) if url.starts_with("data:image/") => bound.image(),
            // By URL (the provider fetches it, at any size), or not an image at all.
            _ => bound.unmeasurable(),
        },
        // `input_audio`, `file` (by id or inline document), and types added after this build.
        _ => bound.unmeasurable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_core::Catalog;

    fn bound_of(body: serde_json::Value, model: &str) -> u64 {
        let req = ChatRequest::parse(body.to_string().as_bytes()).unwrap();
        req.prompt_bound().tokens_max(Catalog::builtin().get(model).unwrap())
    }

    #[test]
    fn text_is_bounded_by_its_bytes_plus_framing() {
        let b = bound_of(
            serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "héllo"}]}),
            "gpt-4o-mini",
        );
        assert_eq!(b, 16 + 8 + "héllo".len() as u64);
    }

    #[test]
    fn an_image_by_url_or_an_audio_or_file_part_is_bounded_by_the_context_window() {
        let window = Catalog::builtin().get("gpt-4o-mini").unwrap().context_window;
        for part in [
            serde_json::json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}),
            serde_json::json!({"type": "image_url", "image_url": "http://example.com/cat.png"}),
            serde_json::json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
            serde_json::json!({"type": "file", "file": {"file_id": "file-abc"}}),
            serde_json::json!({"type": "hologram"}),
        ] {
            let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part]}]});
            assert_eq!(bound_of(body, "gpt-4o-mini"), window);
        }
    }

    #[test]
    fn an_inline_image_costs_the_models_per_image_maximum() {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
        let m = Catalog::builtin().get("gpt-4o-mini").unwrap().clone();
        assert_eq!(bound_of(body, "gpt-4o-mini"), 16 + 8 + m.image_part_tokens_max);
    }
}
