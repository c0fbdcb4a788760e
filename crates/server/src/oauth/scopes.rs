//! OAuth scopes (SPEC §5): the fixed set Quota knows, parsed strictly at the edge into a set,
//! and described in plain words for the consent page.

use std::fmt;

/// One scope Quota grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Openid,
    Profile,
    Email,
    CreditsRead,
    CreditsSpend,
    AccountRead,
    AccountWrite,
    AppsRead,
    AppsWrite,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::Openid,
        Scope::Profile,
        Scope::Email,
        Scope::CreditsRead,
        Scope::CreditsSpend,
        Scope::AccountRead,
        Scope::AccountWrite,
        Scope::AppsRead,
        Scope::AppsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Openid => "openid",
            Scope::Profile => "profile",
            Scope::Email => "email",
            Scope::CreditsRead => "credits.read",
            Scope::CreditsSpend => "credits.spend",
            Scope::AccountRead => "account.read",
            Scope::AccountWrite => "account.write",
            Scope::AppsRead => "apps.read",
            Scope::AppsWrite => "apps.write",
        }
    }

    /// What granting this scope lets the app do, in words a user reads on the consent page.
    pub fn describe(self) -> &'static str {
        match self {
            Scope::Openid => "Sign you in with your Quota account",
            Scope::Profile => "See your name",
            Scope::Email => "See your email address",
            Scope::CreditsRead => "See your credit balance",
            Scope::CreditsSpend => "Spend credits from your wallet on AI requests (base price plus the app's markup)",
            Scope::AccountRead => "See your account details",
            Scope::AccountWrite => "Change your account (for example, start a top-up)",
            Scope::AppsRead => "See the apps you have connected",
            Scope::AppsWrite => "Manage the apps you have connected",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

/// A set of scopes. Its text form is the space-separated list in Quota's canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    /// Parse a space-separated scope string (RFC 6749 §3.3). Unknown scopes are an error
    /// naming the first one; duplicates are harmless.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut set = Scopes::default();
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            let scope = Scope::parse(word).ok_or_else(|| format!("unknown scope `{word}`"))?;
            set.0 |= scope.bit();
        }
        Ok(set)
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_strictly_and_print_canonically() {
        let s = Scopes::parse("credits.spend openid  openid email").unwrap();
        assert_eq!(s.to_string(), "openid email credits.spend");
        assert!(s.contains(Scope::CreditsSpend) && !s.contains(Scope::CreditsRead));
        assert_eq!(Scopes::parse("openid admin").unwrap_err(), "unknown scope `admin`");
        assert!(Scopes::parse("OPENID").is_err());
        assert!(Scopes::parse("").unwrap().is_empty());
        assert!(Scopes::parse("openid").unwrap().is_subset_of(s));
        assert!(!Scopes::parse("credits.read").unwrap().is_subset_of(s));
    }
}
