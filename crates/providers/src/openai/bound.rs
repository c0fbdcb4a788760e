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

    use proptest::prelude::*;

    /// A content part: text, an inline image, an image by URL, or something unknown.
    fn part() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            "\\PC{0,64}".prop_map(|t| serde_json::json!({"type": "text", "text": t})),
            Just(serde_json::json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}})),
            "[a-z]{1,12}".prop_map(
                |h| serde_json::json!({"type": "image_url", "image_url": {"url": format!("https://{h}.example/x.png")}})
            ),
            "[a-z_]{1,12}".prop_map(|k| serde_json::json!({"type": k})),
        ]
    }

    proptest! {
        /// For any mix of parts, the hold's prompt bound is at least what a hostile provider
        /// could bill (every text byte a token, every inline image at the model's maximum, the
        /// whole window once anything is unmeasurable) and never above the context window; the
        /// hold never exceeds the window at the dearest tier price plus the maximum output.
        #[test]
        fn the_bound_covers_what_a_hostile_provider_could_bill(
            messages in proptest::collection::vec(proptest::collection::vec(part(), 1..6), 1..5),
            model_idx in 0usize..64,
        ) {
            let catalog = Catalog::builtin();
            let model = catalog.iter().nth(model_idx % catalog.len()).unwrap().clone();
            let body = serde_json::json!({"model": model.id, "messages": messages.iter().map(|p| serde_json::json!({"role": "user", "content": p})).collect::<Vec<_>>()});
            let req = ChatRequest::parse(body.to_string().as_bytes()).unwrap();
            let bound = req.prompt_bound().tokens_max(&model);
            let parts: Vec<&serde_json::Value> = messages.iter().flatten().collect();
            let unmeasurable = parts.iter().any(|p| match p["type"].as_str() {
                Some("text") => false,
                Some("image_url") => !p["image_url"]["url"].as_str().unwrap().starts_with("data:"),
                _ => true,
            });
            let billable: u64 = parts.iter().map(|p| match p["type"].as_str() {
                Some("text") => p["text"].as_str().unwrap().len() as u64,
                _ => model.image_part_tokens_max,
            }).sum();
            prop_assert!(bound <= model.context_window);
            if unmeasurable {
                prop_assert_eq!(bound, model.context_window);
            } else {
                prop_assert!(bound >= billable.min(model.context_window));
            }
            let hold = quota_core::hold::hold_amount(&model, &quota_core::hold::HoldBound::new(&model, &req.prompt_bound(), None, 1), quota_core::Margin::ZERO);
            let rates = model.price.rates_for(u64::MAX);
            let dearest = rates.prompt_rate_max().max(model.price.base.prompt_rate_max());
            let ceiling = (u128::from(model.context_window) * u128::from(dearest) + u128::from(model.max_output_tokens) * u128::from(rates.output.max(model.price.base.output))).div_ceil(1_000_000);
            prop_assert!(hold.base.get() as u128 <= ceiling);
        }

        /// Arbitrary JSON in a content part is either refused by the parser or bounded: never a
        /// panic, never above the window.
        #[test]
        fn any_part_is_refused_or_bounded(part in any::<u8>().prop_flat_map(|_| proptest::arbitrary::any::<String>()), n in 0u64..1000) {
            let body = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":[{{"type":{},"x":{n}}}]}}]}}"#, serde_json::Value::String(part));
            if let Ok(req) = ChatRequest::parse(body.as_bytes()) {
                let m = Catalog::builtin().get("gpt-4o-mini").unwrap().clone();
                prop_assert!(req.prompt_bound().tokens_max(&m) <= m.context_window);
            }
        }
    }
}
