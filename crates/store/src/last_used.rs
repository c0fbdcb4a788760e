//! `api_keys.last_used_at` throttling, shared by both ledger writers: the column is shown to
//! people, so a write per key per second is enough, and it spares most batches a statement (and,
//! on PostgreSQL, a lock on the key's row that every instance's writer would queue on).

use std::collections::HashMap;

/// Resolution of a key's `last_used_at`.
const RESOLUTION_MS: i64 = 1_000;
/// Bound on the table of recent writes.
const REMEMBERED_MAX: usize = 100_000;

/// When this writer last wrote each key's `last_used_at`.
#[derive(Default)]
pub(crate) struct LastUsed {
    written_at: HashMap<String, i64>,
}

impl LastUsed {
    /// The keys among `used` whose `last_used_at` is due for a write at `now` (each once), noted
    /// as written. A batch that then fails to commit leaves a key's time up to a second stale.
    pub(crate) fn due<'a>(&mut self, used: impl IntoIterator<Item = &'a str>, now: i64) -> Vec<&'a str> {
        let mut due = Vec::new();
        for key in used {
            let fresh = self.written_at.get(key).is_some_and(|t| now - *t < RESOLUTION_MS);
            if !fresh {
                self.written_at.insert(key.to_string(), now);
                due.push(key);
            }
        }
        if self.written_at.len() > REMEMBERED_MAX {
            self.written_at.retain(|_, t| now - *t < RESOLUTION_MS);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_written_at_most_once_a_second() {
        let mut l = LastUsed::default();
        assert_eq!(l.due(["a", "b", "a"], 0), vec!["a", "b"]);
        assert!(l.due(["a", "b"], 999).is_empty());
        assert_eq!(l.due(["b", "c"], 1_000), vec!["b", "c"]);
    }
}
