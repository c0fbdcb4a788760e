//! Who is calling (SPEC §7): the client IP that per-IP limits count. The TCP peer, unless it
//! is one of `trusted_proxies`; then `X-Forwarded-For` is read from the right, skipping trusted
//! addresses, and the first untrusted one is the client. The leftmost entry (which any client
//! can write) is never taken on trust: when every entry is trusted, the leftmost is still the
//! client, never something further left. Not here: the limits themselves (`limit`).

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// Most `X-Forwarded-For` entries looked at (from the right): a longer header is not a client
/// we owe the work to.
const FORWARDED_ENTRIES_MAX: usize = 32;

/// The parsed `trusted_proxies` list.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses (`127.0.0.1`).
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::with_capacity(list.len());
        for raw in list {
            let raw = raw.trim();
            let net = raw
                .parse::<IpNet>()
                .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("trusted_proxies: `{raw}` is not an address or CIDR (like 10.0.0.0/8)"))?;
            nets.push(net);
        }
        Ok(TrustedProxies { nets })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client(&self, peer: &SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For header, in order, as one list; read from the right.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev().take(FORWARDED_ENTRIES_MAX) {
            let Ok(ip) = entry.parse::<IpAddr>().map(canonical) else {
                // Garbage where an address should be: the hop that wrote it is the client.
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// What per-IP limits count `ip` as: an IPv4 address itself, an IPv6 address by its /64 (one
/// subscriber's allocation: otherwise a single host could rotate through 2^64 addresses, each
/// with a fresh budget).
pub fn limit_bucket(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(proxies(&[]).client(&peer, &headers("1.2.3.4")).to_string(), "127.0.0.1");
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_skipping_trusted_hops() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(p.client(&peer, &headers("1.2.3.4, 198.51.100.7")).to_string(), "198.51.100.7");
        assert_eq!(p.client(&peer, &headers("1.2.3.4, 198.51.100.7, 10.1.1.1")).to_string(), "198.51.100.7");
        // Every entry trusted: the leftmost is the client, nothing further left is invented.
        assert_eq!(p.client(&peer, &headers("10.0.0.9, 10.1.1.1")).to_string(), "10.0.0.9");
        // Garbage in the header: the hop that wrote it is the client.
        assert_eq!(p.client(&peer, &headers("1.2.3.4, not-an-ip, 10.1.1.1")).to_string(), "10.1.1.1");
        // No header: the (trusted) peer.
        assert_eq!(p.client(&peer, &HeaderMap::new()).to_string(), "127.0.0.1");
    }

    #[test]
    fn an_untrusted_peer_cannot_forward() {
        let p = proxies(&["10.0.0.0/8"]);
        let peer: SocketAddr = "203.0.113.5:5000".parse().unwrap();
        assert_eq!(p.client(&peer, &headers("1.2.3.4")).to_string(), "203.0.113.5");
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().unwrap();
        assert_eq!(p.client(&mapped, &headers("1.2.3.4")).to_string(), "1.2.3.4", "IPv4-mapped peers are IPv4");
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a = limit_bucket("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, limit_bucket("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_ne!(a, limit_bucket("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(limit_bucket("::ffff:198.51.100.1".parse().unwrap()), "198.51.100.1");
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.internal".into()]).is_err());
    }
}
