//! Token counting without the provider: a safe upper bound for reservations, and the sandbox's
//! deterministic tokenizer.
//!
//! Byte-level BPE tokenizers (every provider Quota proxies) never produce more tokens than the
//! text has bytes, so a byte count is a provable upper bound for text. Images are priced by the
//! provider in tokens unrelated to the URL's length, so each image part adds its own bound.

/// Tokens one image part can cost at most (OpenAI high detail: 85 + 170 × 8 tiles = 1,445;
/// Anthropic and Gemini bill less per image), rounded up.
pub const IMAGE_PART_TOKENS_MAX: u64 = 1_500;

/// Upper bound of the prompt tokens of a request whose JSON body is `body`: every byte could be a
/// token, plus the per-image bound for each image part. Never below the truth for text prompts.
pub fn prompt_upper_bound(body: &[u8]) -> u64 {
    let images = count_occurrences(body, b"\"image_url\"")
        + count_occurrences(body, b"\"inline_data\"")
        + count_occurrences(body, b"\"inlineData\"")
        + count_occurrences(body, b"\"type\":\"image\"");
    (body.len() as u64).saturating_add(images.saturating_mul(IMAGE_PART_TOKENS_MAX))
}

fn count_occurrences(haystack: &[u8], needle: &[u8]) -> u64 {
    if needle.is_empty() || haystack.len() < needle.len() {
        return 0;
    }
    haystack.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// The sandbox tokenizer: deterministic and close to real BPE counts for English text. A run of
/// ASCII letters/digits is one token per started 6 characters; every other non-space character
/// is one token; whitespace is free.
pub fn count_tokens(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut run = 0u64;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            run += 1;
            continue;
        }
        tokens += run.div_ceil(6);
        run = 0;
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + run.div_ceil(6)
}

/// Split `text` into its sandbox tokens, each with the whitespace that precedes it, so that
/// concatenating the pieces gives back `text` (minus trailing whitespace). Used to stream
/// synthetic text one token per chunk and to truncate it at `max_tokens`.
pub fn split_tokens(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0usize;
    let mut run = 0usize;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if c.is_whitespace() {
            continue;
        }
        if c.is_ascii_alphanumeric() {
            run += 1;
            let next_is_alnum = iter.peek().is_some_and(|(_, n)| n.is_ascii_alphanumeric());
            if run.is_multiple_of(6) || !next_is_alnum {
                let end = i + c.len_utf8();
                pieces.push(&text[start..end]);
                start = end;
                if !next_is_alnum {
                    run = 0;
                }
            }
        } else {
            let end = i + c.len_utf8();
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_words_and_punctuation() {
        assert_eq!(count_tokens("Hello, world!"), 4);
        assert_eq!(count_tokens("internationalization"), 4);
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("   "), 0);
    }

    #[test]
    fn images_raise_the_bound() {
        let text = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let image = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#;
        assert_eq!(prompt_upper_bound(text), text.len() as u64);
        // Over-counting (the tag and the key both match) is safe: this is an upper bound.
        assert!(prompt_upper_bound(image) >= image.len() as u64 + IMAGE_PART_TOKENS_MAX);
    }

    proptest! {
        #[test]
        fn split_agrees_with_count_and_loses_nothing(text in "[a-zA-Z0-9 ,.!?é\n]{0,200}") {
            let pieces = split_tokens(&text);
            prop_assert_eq!(pieces.len() as u64, count_tokens(&text));
            let joined: String = pieces.concat();
            prop_assert_eq!(joined.as_str(), text.trim_end());
        }

        #[test]
        fn byte_bound_is_never_below_the_sandbox_count(text in "\\PC{0,300}") {
            prop_assert!(count_tokens(&text) <= text.len() as u64);
        }
    }
}
