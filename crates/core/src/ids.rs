//! Ids and secrets (SPEC §0): a type prefix plus random URL-safe characters. Ids carry 131 bits
//! of randomness; secrets at least 190 bits. Secrets are stored only as hashes (see the server's
//! `secrets` module).

use rand::distributions::Alphanumeric;
use rand::Rng;

/// Characters after the prefix of an id (base62: 22 chars ≈ 131 bits).
pub const ID_RANDOM_CHARS: usize = 22;
/// Characters after the prefix of a secret (base62: 32 chars ≈ 190 bits).
pub const SECRET_RANDOM_CHARS: usize = 32;

fn random_base62(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// A new id such as `usr_3x9…`. `prefix` includes its separator.
pub fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + ID_RANDOM_CHARS);
    s.push_str(prefix);
    s.push_str(&random_base62(ID_RANDOM_CHARS));
    s
}

/// Characters of the time prefix of an ordered id (base62 of Unix microseconds; 62^9 µs is
/// about 428 years).
const ORDERED_TIME_CHARS: usize = 9;

/// A new id whose first characters are the time, so ids made later sort later: `req_…` and
/// `ledg_…` are primary and indexed keys written on every request, and appending to a B-tree
/// dirties one page where a random key dirties a page per row. 13 random characters (≈ 77 bits)
/// follow.
pub fn new_ordered_id(prefix: &str, unix_micros: u64) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut time = [b'0'; ORDERED_TIME_CHARS];
    let mut t = unix_micros;
    for slot in time.iter_mut().rev() {
        *slot = DIGITS[(t % 62) as usize];
        t /= 62;
    }
    let mut s = String::with_capacity(prefix.len() + ID_RANDOM_CHARS);
    s.push_str(prefix);
    s.push_str(std::str::from_utf8(&time).expect("base62 digits are ASCII"));
    s.push_str(&random_base62(ID_RANDOM_CHARS - ORDERED_TIME_CHARS));
    s
}

/// A new secret such as `sk-quota-…`. `prefix` includes its separator.
pub fn new_secret(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + SECRET_RANDOM_CHARS);
    s.push_str(prefix);
    s.push_str(&random_base62(SECRET_RANDOM_CHARS));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_are_distinct() {
        let a = new_id("usr_");
        let b = new_id("usr_");
        assert!(a.starts_with("usr_") && a.len() == 4 + ID_RANDOM_CHARS);
        assert_ne!(a, b);
        assert!(new_secret("sk-quota-").chars().skip(9).all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn ordered_ids_sort_by_time_and_stay_distinct() {
        let a = new_ordered_id("req_", 1_795_000_000_000_000);
        let b = new_ordered_id("req_", 1_795_000_000_000_001);
        let c = new_ordered_id("req_", 1_795_000_000_000_001);
        assert!(a < b && a < c);
        assert_ne!(b, c);
        assert_eq!(a.len(), 4 + ID_RANDOM_CHARS);
        assert!(new_ordered_id("req_", 0) < new_ordered_id("req_", u64::from(u32::MAX)));
    }
}
