//! The sandbox's deterministic tokenizer, also the gateway's fallback count of a stream cut
//! short before its usage arrived. The hold's upper bound is [`crate::hold`]: byte-level BPE
//! tokenizers (every provider Quota proxies) never produce more tokens than the text has bytes,
//! and `byte_bound_is_never_below_the_sandbox_count` keeps this tokenizer within that bound.

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
