//! The hold's prompt bound (SPEC §4.3(1)) of an Anthropic Messages request, walked over the
//! parsed request: text, tool inputs and tool definitions at one token per byte; a base64 image
//! at the model's per-image maximum; an image or document by URL or file id, a base64 PDF, and
//! any block type Quota does not know at the whole context window.

use super::wire::{MessagesRequest, TextOrBlocks};
use quota_core::hold::PromptBound;
use serde_json::{Map, Value};

/// Anthropic adds a tool-use system prompt of about 350 tokens when tools are offered.
pub const TOOL_USE_PROMPT_TOKENS_MAX: u64 = 400;

/// Anthropic-defined tools (`bash_…`, `text_editor_…`, `computer_…`) add a documented fixed
/// prompt of at most ~1,200 tokens each (computer use: 735 + its system prompt).
pub const TYPED_TOOL_TOKENS_MAX: u64 = 2_000;

impl MessagesRequest {
    /// What this request's prompt can be billed for at most, block by block.
    pub fn prompt_bound(&self) -> PromptBound {
        let mut bound = PromptBound::new();
        if let Some(system) = &self.system {
            bound.message();
            content_bound(system, &mut bound);
        }
        for m in &self.messages {
            bound.message();
            content_bound(&m.content, &mut bound);
        }
        let tools = self.tools.as_deref().unwrap_or_default();
        if !tools.is_empty() {
            bound.add(TOOL_USE_PROMPT_TOKENS_MAX);
        }
        for tool in tools {
            bound.tool();
            bound.text(&tool.name);
            bound.text(tool.description.as_deref().unwrap_or(""));
            if let Some(schema) = &tool.input_schema {
                bound.json(schema);
            }
            if tool.kind.as_deref().is_some_and(|k| k != "custom") {
                bound.add(TYPED_TOOL_TOKENS_MAX);
            }
        }
        if let Some(choice) = &self.tool_choice {
            bound.json_map(choice);
        }
        bound
    }
}

fn content_bound(content: &TextOrBlocks, bound: &mut PromptBound) {
    match content {
        TextOrBlocks::Text(t) => bound.text(t),
        TextOrBlocks::Blocks(blocks) => blocks.iter().for_each(|b| block_bound(b, bound)),
    }
}

fn text_of<'a>(block: &'a Map<String, Value>, key: &str) -> &'a str {
    block.get(key).and_then(Value::as_str).unwrap_or("")
}

fn block_bound(block: &Map<String, Value>, bound: &mut PromptBound) {
    bound.message();
    match block.get("type").and_then(Value::as_str).unwrap_or("") {
        "text" => bound.text(text_of(block, "text")),
        "thinking" => bound.text(text_of(block, "thinking")),
        // Encrypted thinking: its ciphertext is longer than the thinking it carries.
        "redacted_thinking" => bound.text(text_of(block, "data")),
        "tool_use" | "server_tool_use" => {
            bound.text(text_of(block, "id"));
            bound.text(text_of(block, "name"));
            if let Some(input) = block.get("input") {
                bound.json(input);
            }
        }
        "tool_result" => {
            bound.text(text_of(block, "tool_use_id"));
            match block.get("content") {
                Some(Value::String(s)) => bound.text(s),
                Some(Value::Array(parts)) => nested_bound(parts, bound),
                None => {}
                Some(_) => bound.unmeasurable(),
            }
        }
        "image" => match source_type(block) {
            "base64" => bound.image(),
            _ => bound.unmeasurable(),
        },
        "document" => {
            bound.text(text_of(block, "title"));
            bound.text(text_of(block, "context"));
            let source = block.get("source").and_then(Value::as_object);
            match (source_type(block), source) {
                ("text", Some(s)) => bound.text(text_of(s, "data")),
                ("content", Some(s)) => match s.get("content") {
                    Some(Value::String(t)) => bound.text(t),
                    Some(Value::Array(parts)) => nested_bound(parts, bound),
                    _ => bound.unmeasurable(),
                },
                // A base64 PDF is billed per page (text and an image of each), a URL or file
                // id not at all measurable here.
                _ => bound.unmeasurable(),
            }
        }
        _ => bound.unmeasurable(),
    }
}

fn nested_bound(parts: &[Value], bound: &mut PromptBound) {
    for part in parts {
        match part.as_object() {
            Some(p) => block_bound(p, bound),
            None => bound.unmeasurable(),
        }
    }
}

fn source_type(block: &Map<String, Value>) -> &str {
    block.get("source").and_then(|s| s.get("type")).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_core::Catalog;
    use serde_json::json;

    fn bound_of(content: Value) -> u64 {
        let body =
            json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": content}]});
        let req = MessagesRequest::parse(body.to_string().as_bytes()).unwrap();
        req.prompt_bound().tokens_max(Catalog::builtin().get("anthropic/claude-sonnet-4.5").unwrap())
    }

    #[test]
    fn media_by_url_or_file_and_pdfs_are_bounded_by_the_context_window() {
        let window = Catalog::builtin().get("anthropic/claude-sonnet-4.5").unwrap().context_window;
        for block in [
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}),
            json!({"type": "image", "source": {"type": "file", "file_id": "file_1"}}),
            json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}),
            json!({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}),
            json!({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}),
            json!({"type": "mystery"}),
        ] {
            assert_eq!(bound_of(json!([block])), window, "{block}");
        }
    }

    #[test]
    fn text_and_inline_images_are_counted() {
        let text = bound_of(json!([{"type": "text", "text": "Hello there"}]));
        assert_eq!(text, 16 + 8 + 8 + 11);
        let image = bound_of(
            json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]),
        );
        assert_eq!(
            image,
            16 + 8 + 8 + Catalog::builtin().get("anthropic/claude-sonnet-4.5").unwrap().image_part_tokens_max
        );
    }
}
