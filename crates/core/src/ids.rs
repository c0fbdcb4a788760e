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
}
