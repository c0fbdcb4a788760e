//! Webhook SSRF defence (SPEC §8): which addresses a webhook may reach, and the DNS resolver
//! that makes the check hold at connection time. A delivery resolves its host once, through
//! [`CheckedResolver`], which the HTTP client uses as its only resolver: every address is
//! checked and the connection can only go to an address that passed (no second lookup for DNS
//! rebinding to slip into), with the original Host header and TLS SNI. A URL with a literal
//! address never reaches a resolver, so [`check_literal`] checks it before the send.
//!
//! Private targets are refused unless `webhook_allow_private_urls = true`; how Quota is bound
//! does not matter. Where names are looked up is injectable ([`Resolve`]): the system resolver
//! in production, scripted answers in tests. Not here: the send itself (`webhooks`).

use futures::future::BoxFuture;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Looks names up (the system resolver, or a test's).
pub trait Resolve: Send + Sync + 'static {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (getaddrinfo, on a blocking thread).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// Whether a webhook must not reach `ip` (SSRF): private, loopback, link-local, carrier-grade
/// NAT, multicast, broadcast, unspecified, documentation and reserved ranges, and IPv6
/// addresses that embed such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_documentation()
        || v4.is_multicast()
        || a == 0 // 0.0.0.0/8, "this network"
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10, carrier-grade NAT
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // 192.0.0.0/24, IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15, benchmarking
        || a >= 240 // 240/4, reserved
}

fn private_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let s = v6.segments();
    // ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::a.b.c.d (NAT64) reach IPv4 hosts.
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if (s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified())
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0])
    {
        return private_v4(embedded);
    }
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32, documentation
}

/// Refuse a URL whose host is a literal private address (the resolver never sees those).
pub fn check_literal(url: &url::Url, allow_private: bool) -> Result<(), String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
        _ => return Ok(()),
    };
    if !allow_private && is_private(ip) {
        return Err(format!("refused: {ip} is a private address (SSRF)"));
    }
    Ok(())
}

/// Resolve `host` and check every address; an answer with any private address is refused
/// whole (an attacker's DNS may mix a public address in).
pub async fn resolve_checked(resolver: &dyn Resolve, host: &str, allow_private: bool) -> Result<Vec<IpAddr>, String> {
    let addrs = resolver.lookup(host.to_string()).await.map_err(|e| format!("dns: {host}: {e}"))?;
    if addrs.is_empty() {
        return Err(format!("dns: {host} has no address"));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| is_private(**a)) {
            return Err(format!("refused: {host} resolves to a private address ({bad})"));
        }
    }
    Ok(addrs)
}

/// The webhook client's resolver: the one lookup a connection gets, checked.
pub struct CheckedResolver {
    pub inner: Arc<dyn Resolve>,
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let inner = self.inner.clone();
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_checked(inner.as_ref(), &host, allow_private)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            // Port 0: the client puts the URL's port on each address.
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_private_range_is_refused() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip} is public");
        }
    }

    struct Fixed(Vec<IpAddr>);
    impl Resolve for Fixed {
        fn lookup(&self, _host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
            let a = self.0.clone();
            Box::pin(async move { Ok(a) })
        }
    }

    #[tokio::test]
    async fn one_private_address_in_an_answer_refuses_it_whole() {
        let mixed = Fixed(vec!["93.184.216.34".parse().unwrap(), "127.0.0.1".parse().unwrap()]);
        let e = resolve_checked(&mixed, "hooks.example.com", false).await.unwrap_err();
        assert!(e.contains("private address"), "{e}");
        assert_eq!(resolve_checked(&mixed, "hooks.example.com", true).await.unwrap().len(), 2);
    }
}
