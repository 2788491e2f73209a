//! The client's address, for per-IP limits. Behind a balancer every request comes from the
//! balancer, so the client is what the balancer says in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`, but only a trusted proxy's word counts (`TOMBOLA_TRUSTED_PROXIES`):
//! anyone else can write those headers, so from an untrusted peer they are ignored.
//!
//! The chain is read from the right (the hop nearest to us) and the first address that is
//! not a trusted proxy is the client: a client that prepends made-up hops only fools itself.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An address block (`10.0.0.0/8`, `2001:db8::/32`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn mask_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let prefix = usize::from(prefix);
    let (whole, bits) = (prefix / 8, prefix % 8);
    if net[..whole] != ip[..whole] {
        return false;
    }
    bits == 0 || (net[whole] ^ ip[whole]) & (0xff_u8 << (8 - bits)) == 0
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || format!("{text:?} is not an address or a CIDR block (10.0.0.0/8)");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| invalid())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix > max {
            return Err(invalid());
        }
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client of a request that came from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        let hops = forwarded_hops(headers);
        for hop in hops.iter().rev() {
            match hop {
                // An unreadable hop (`unknown`, an obfuscated name, garbage): the proxy that
                // passed it on is the last address we can vouch for.
                None => return client,
                Some(ip) => {
                    client = canonical(*ip);
                    if !self.trusts(client) {
                        return client;
                    }
                }
            }
        }
        client
    }
}

/// The `for` addresses of `Forwarded` if the request has one, else `X-Forwarded-For`'s, from
/// the client to the nearest proxy; `None` for a hop that is not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(axum::http::header::FORWARDED)
        .iter()
        .map(|v| v.to_str().unwrap_or("for=unknown"))
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| parse_node(value))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("unknown").split(','))
        .map(parse_node)
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, quoted or not.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// IPv4 peers of a dual-stack socket arrive as `::ffff:a.b.c.d`: one client, one key.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_contain_what_they_should() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        let odd: IpNet = "192.168.0.128/25".parse().unwrap();
        assert!(odd.contains(ip("192.168.0.200")) && !odd.contains(ip("192.168.0.100")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "proxy", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let spoofed = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        assert_eq!(
            trusted.client_ip(ip("192.0.2.50"), &spoofed),
            ip("192.0.2.50")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &spoofed),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn through_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // The client made up the first entry; the balancer appended the real address.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.7")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), &chain), ip("203.0.113.9"));
        // Several header lines are one list.
        let lines = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9:5555"),
        ]);
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), &lines), ip("203.0.113.9"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
        // Only proxies in the chain: the farthest of them.
        let internal = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.7")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), &internal), ip("10.9.9.9"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_its_forms_parse() {
        let trusted = proxies(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.200"),
            (
                "forwarded",
                "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https",
            ),
        ]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &both),
            ip("2001:db8:cafe::17")
        );
        let ported = headers(&[("forwarded", "For=\"192.0.2.60:8080\";by=10.0.0.2")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), &ported), ip("192.0.2.60"));
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk_at_the_proxy_that_passed_it() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, not-an-ip, 10.0.0.7")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), &garbage), ip("10.0.0.7"));
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), &unknown), ip("10.0.0.2"));
    }
}
