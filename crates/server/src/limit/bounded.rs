//! Bounded in-memory tables for limiter state (SPEC §7): whatever a client sends, a table never
//! holds more than its cap. Expired entries go first; if that is not enough, the oldest go. Not
//! here: what an entry means (GCRA state, lockout counts).

use std::collections::HashMap;
use std::hash::Hash;

/// Make room in `map` before an insert when it holds `cap` entries or more: drop every entry
/// `expired` says is over, then, if more than nine tenths of `cap` remain, the oldest (lowest
/// `age`) until nine tenths remain. A prune costs O(n) and frees a tenth of the table, so its
/// cost per insert stays constant.
pub fn make_room<K: Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    expired: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> i64,
) {
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| !expired(v));
    let keep = cap - cap / 10;
    if map.len() <= keep {
        return;
    }
    let mut ages: Vec<i64> = map.values().map(&age).collect();
    let drop = map.len() - keep;
    // The `drop`-th smallest age: entries strictly younger stay, ties at it go until enough have.
    let (_, nth, _) = ages.select_nth_unstable(drop - 1);
    let cutoff = *nth;
    let mut dropped = 0usize;
    map.retain(|_, v| {
        let a = age(v);
        if a < cutoff || (a == cutoff && dropped < drop) {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_go_first_then_the_oldest() {
        let mut m: HashMap<u32, (i64, bool)> = (0..100).map(|i| (i, (i64::from(i), i % 2 == 0))).collect();
        make_room(&mut m, 100, |v| v.1, |v| v.0);
        assert_eq!(m.len(), 50, "the expired half went; 50 is under the 90 kept");
        assert!(m.values().all(|v| !v.1));
        let mut m: HashMap<u32, (i64, bool)> = (0..100).map(|i| (i, (i64::from(i), false))).collect();
        make_room(&mut m, 100, |v| v.1, |v| v.0);
        assert_eq!(m.len(), 90);
        assert!(m.keys().all(|k| *k >= 10), "the ten oldest went");
        let mut m: HashMap<u32, (i64, bool)> = (0..100).map(|i| (i, (0, false))).collect();
        make_room(&mut m, 100, |v| v.1, |v| v.0);
        assert_eq!(m.len(), 90, "ties are broken, the cap holds");
        let mut small: HashMap<u32, (i64, bool)> = (0..5).map(|i| (i, (0, true))).collect();
        make_room(&mut small, 100, |v| v.1, |v| v.0);
        assert_eq!(small.len(), 5, "under the cap nothing is touched");
    }
}
