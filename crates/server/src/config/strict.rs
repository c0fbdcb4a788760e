//! Strict configuration (SPEC §12): which names are configuration, the error for one that is
//! not (naming the closest known one: `QUOTA_DATABSE_URL` → "did you mean QUOTA_DATABASE_URL?"),
//! secrets read from files (`QUOTA_<KEY>_FILE`), and the masked view `quota config check` prints.
//!
//! The rule for environment variables: every `QUOTA_*` variable is configuration (`QUOTA_<KEY>`
//! or, for a secret, `QUOTA_<KEY>_FILE`) except `QUOTA_CONFIG` (the file), `QUOTA_LOG` (the log
//! filter), `QUOTA_BIN` (the binary the Python suite starts) and anything beginning
//! `QUOTA_TEST_` (the test suites' and CI's own settings). Anything else stops start-up.

use super::{Kind, FILE_ONLY_KEYS, KEYS};

/// `QUOTA_*` variables that are known but are not configuration keys.
const NOT_CONFIGURATION: &[&str] = &["QUOTA_CONFIG", "QUOTA_LOG", "QUOTA_BIN"];

/// The prefix of the test suites' variables (`QUOTA_TEST_POSTGRES_URL`, `QUOTA_TEST_BACKEND`…).
const TEST_PREFIX: &str = "QUOTA_TEST_";

/// Keys whose whole value is a secret: readable from `QUOTA_<KEY>_FILE`, masked when shown.
const SECRET_KEYS: &[&str] = &[
    "openai_api_key",
    "anthropic_api_key",
    "gemini_api_key",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "metrics_token",
    "secret_key",
];

/// URL keys that may carry a password (`postgres://quota:secret@db/quota`): readable from a file
/// too; only the password is masked when shown.
const URL_KEYS_WITH_PASSWORDS: &[&str] = &["database_url", "redis_url"];

/// Shown instead of a secret.
const MASK: &str = "********";

/// A secret read from a file larger than this is refused (a key is at most a few hundred bytes;
/// a wrong path to a big file should not be read into memory).
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// One configuration value from the environment.
pub(super) struct Variable {
    /// The variable it came from (for error messages).
    pub var: String,
    pub key: &'static str,
    pub kind: Kind,
    pub value: String,
}

fn is_file_readable(key: &str) -> bool {
    SECRET_KEYS.contains(&key) || URL_KEYS_WITH_PASSWORDS.contains(&key)
}

/// Every `QUOTA_*` name that means something, for suggestions.
fn known_variables() -> impl Iterator<Item = String> {
    let keys = KEYS.iter().map(|(k, _)| format!("QUOTA_{}", k.to_ascii_uppercase()));
    let files =
        KEYS.iter().filter(|(k, _)| is_file_readable(k)).map(|(k, _)| format!("QUOTA_{}_FILE", k.to_ascii_uppercase()));
    keys.chain(files).chain(NOT_CONFIGURATION.iter().map(|v| v.to_string()))
}

/// The configuration variables in `env`, files read; an error for an unknown `QUOTA_*`
/// variable, for a secret given both plainly and as a file, or for an unreadable file.
pub(super) fn config_variables(env: &[(String, String)]) -> Result<Vec<Variable>, String> {
    let mut out = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("QUOTA_") else { continue };
        if NOT_CONFIGURATION.contains(&var.as_str()) || var.starts_with(TEST_PREFIX) {
            continue;
        }
        let name = rest.to_ascii_lowercase();
        if let Some(&(key, kind)) = KEYS.iter().find(|(k, _)| *k == name) {
            if env.iter().any(|(other, _)| *other == format!("{var}_FILE")) && is_file_readable(key) {
                return Err(format!("both {var} and {var}_FILE are set: use one"));
            }
            out.push(Variable { var: var.clone(), key, kind, value: value.clone() });
            continue;
        }
        let file_key = name.strip_suffix("_file").and_then(|base| KEYS.iter().find(|(k, _)| *k == base));
        match file_key {
            Some(&(key, kind)) if is_file_readable(key) => {
                out.push(Variable { var: var.clone(), key, kind, value: read_secret_file(var, value)? });
            }
            _ => {
                let hint = closest(var, known_variables()).map(|k| format!(": did you mean {k}?")).unwrap_or_default();
                return Err(format!(
                    "unknown configuration variable {var}{hint} (every QUOTA_* variable is configuration, \
                     except QUOTA_CONFIG, QUOTA_LOG, QUOTA_BIN and QUOTA_TEST_*)"
                ));
            }
        }
    }
    Ok(out)
}

/// The secret in the file `path` names, trailing newlines trimmed (what `echo` and editors leave).
fn read_secret_file(var: &str, path: &str) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{var}: reading {path}: {e}"))?.len();
    if size > SECRET_FILE_BYTES_MAX {
        return Err(format!("{var}: {path} is {size} bytes, more than a secret ({SECRET_FILE_BYTES_MAX} at most)"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{var}: reading {path}: {e}"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// An error for the first top-level key of a configuration file that is not a key.
pub(super) fn check_file_keys(table: &toml::Table) -> Result<(), String> {
    let known = || KEYS.iter().map(|(k, _)| *k).chain(FILE_ONLY_KEYS.iter().copied());
    for key in table.keys() {
        if !known().any(|k| k == key) {
            let hint =
                closest(key, known().map(str::to_string)).map(|k| format!(": did you mean `{k}`?")).unwrap_or_default();
            return Err(format!("unknown configuration key `{key}`{hint}"));
        }
    }
    Ok(())
}

/// The candidate nearest to `name` by edit distance (ties: the first).
fn closest(name: &str, candidates: impl Iterator<Item = String>) -> Option<String> {
    let name = name.to_ascii_lowercase();
    candidates.min_by_key(|c| edit_distance(&name, &c.to_ascii_lowercase()))
}

/// Levenshtein distance over bytes (keys are ASCII), one row of memory.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The configuration as TOML, secrets replaced by `********` (a URL keeps all but its password).
pub fn masked_toml(config: &super::Config) -> Result<String, String> {
    let mut table = toml::Table::try_from(config).map_err(|e| e.to_string())?;
    for (key, value) in table.iter_mut() {
        let toml::Value::String(text) = value else { continue };
        if SECRET_KEYS.contains(&key.as_str()) {
            *text = MASK.to_string();
        } else if URL_KEYS_WITH_PASSWORDS.contains(&key.as_str()) {
            *text = mask_url_password(text);
        }
    }
    toml::to_string(&table).map_err(|e| e.to_string())
}

fn mask_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some(MASK));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Not a URL we can read: it may still hold a password, so show none of it.
        Err(_) => MASK.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_misspelled_variable_stops_start_up_naming_the_right_one() {
        let e = Config::load_from(None, env(&[("QUOTA_DATABSE_URL", "postgres://db/quota")])).unwrap_err();
        assert!(e.contains("QUOTA_DATABSE_URL") && e.contains("did you mean QUOTA_DATABASE_URL?"), "{e}");
        let e = Config::load_from(None, env(&[("QUOTA_STRIPE_SECRET_KEY_FIEL", "/x")])).unwrap_err();
        assert!(e.contains("did you mean QUOTA_STRIPE_SECRET_KEY_FILE?"), "{e}");
    }

    #[test]
    fn a_misspelled_file_key_stops_start_up_naming_the_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, "port = 9000\nwelcom_credits = 5\n").unwrap();
        let e = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(e.contains("`welcom_credits`") && e.contains("did you mean `welcome_credits`?"), "{e}");
        std::fs::write(&path, "[[package]]\nid = \"x\"\n").unwrap();
        let e = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(e.contains("did you mean `packages`?"), "{e}");
    }

    #[test]
    fn test_suite_and_tool_variables_are_not_configuration() {
        let vars = env(&[
            ("QUOTA_TEST_POSTGRES_URL", "postgres://x"),
            ("QUOTA_TEST_ANYTHING", "1"),
            ("QUOTA_BIN", "/bin/quota"),
            ("QUOTA_LOG", "debug"),
        ]);
        assert!(Config::load_from(None, vars).is_ok());
    }

    #[test]
    fn secrets_are_read_from_files_with_the_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("stripe");
        std::fs::write(&key, "sk_test_from_file\n").unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "whsec_1\r\n").unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, "postgres://quota:pw@db:5432/quota\n").unwrap();
        let c = Config::load_from(
            None,
            env(&[
                ("QUOTA_PAYMENTS_PROVIDER", "stripe"),
                ("QUOTA_STRIPE_SECRET_KEY_FILE", key.to_str().unwrap()),
                ("QUOTA_STRIPE_WEBHOOK_SECRET_FILE", hook.to_str().unwrap()),
                ("QUOTA_DATABASE_URL_FILE", db.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(c.stripe_secret_key.as_deref(), Some("sk_test_from_file"));
        assert_eq!(c.stripe_webhook_secret.as_deref(), Some("whsec_1"));
        assert_eq!(c.database_url, "postgres://quota:pw@db:5432/quota");
        let missing = dir.path().join("missing");
        let e = Config::load_from(None, env(&[("QUOTA_OPENAI_API_KEY_FILE", missing.to_str().unwrap())])).unwrap_err();
        assert!(e.contains("QUOTA_OPENAI_API_KEY_FILE"), "{e}");
        let both = env(&[("QUOTA_METRICS_TOKEN", "a"), ("QUOTA_METRICS_TOKEN_FILE", key.to_str().unwrap())]);
        assert!(Config::load_from(None, both).unwrap_err().contains("both"));
        // Not a secret: no _FILE form.
        let e = Config::load_from(None, env(&[("QUOTA_PORT_FILE", key.to_str().unwrap())])).unwrap_err();
        assert!(e.contains("unknown configuration variable QUOTA_PORT_FILE"), "{e}");
    }

    #[test]
    fn the_masked_view_hides_every_secret_and_url_password() {
        let mut c = Config::load_from(None, env(&[])).unwrap();
        c.stripe_secret_key = Some("sk_live_SECRET".into());
        c.metrics_token = Some("tok_SECRET".into());
        c.database_url = "postgres://quota:SECRET@db:5432/quota".into();
        c.redis_url = Some("redis://:SECRET@redis:6379".into());
        let shown = masked_toml(&c).unwrap();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("postgres://quota:********@db:5432/quota"), "{shown}");
        assert!(shown.contains("stripe_secret_key = \"********\""), "{shown}");
        // What is shown is a configuration file Quota reads back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, &shown).unwrap();
        assert!(Config::load_from(Some(&path), env(&[])).is_ok());
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("database_url", "databse_url"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
