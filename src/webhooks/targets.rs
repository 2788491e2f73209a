//! Where deliveries may go. An organizer's URL must not reach into our own network: URLs
//! resolving to loopback, private, link-local (cloud metadata at 169.254.169.254 among
//! them), shared, multicast or unspecified addresses are refused when the endpoint is saved
//! and again at every connection (the resolver below), since a name may resolve elsewhere
//! by then (DNS rebinding). `TOMBOLA_WEBHOOK_ALLOW_PRIVATE_TARGETS=true` (tests,
//! on-premise) allows them, and plain http.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest a save waits for a name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
pub const MAX_URL_LEN: usize = 2_000;

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10: carrier-grade NAT, shared address space.
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 (protocol assignments) and 198.18.0.0/15 (benchmarking).
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // 64:ff9b::/96 (NAT64) may reach any IPv4 address, private ones too.
        || (first == 0x64 && ip.segments()[1] == 0xff9b))
}

/// Why a URL cannot be an endpoint's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Checks a URL an organizer wants to save: scheme, form, and where its host resolves now.
pub async fn check(url: &str, allow_private: bool) -> Result<reqwest::Url, Refused> {
    if url.len() > MAX_URL_LEN {
        return Err(Refused(format!("longer than {MAX_URL_LEN} characters")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| Refused(format!("not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(Refused("must use https".into())),
        _ => return Err(Refused("must be an https URL".into())),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused("must not carry credentials".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Refused("has no host".into()))?;
    if allow_private {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addresses = resolve(host, port)
        .await
        .map_err(|e| Refused(format!("its host does not resolve: {e}")))?;
    if addresses.is_empty() {
        return Err(Refused("its host does not resolve".into()));
    }
    if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
        return Err(Refused(format!(
            "its host resolves to a non-public address ({})",
            private.ip()
        )));
    }
    Ok(parsed)
}

/// The host of a URL as an IP address, when it is written as one (a resolver never sees
/// those, so the worker checks them itself).
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(found) => Ok(found?.collect()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        )),
    }
}

/// The delivery client's resolver: the system's, keeping only public addresses, so a name
/// that resolves to a private address at connect time is refused there.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all = resolve(&host, 0).await?;
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn loopback_and_plain_http_are_refused_unless_allowed() {
        assert!(check("https://127.0.0.1/hook", false).await.is_err());
        assert!(check("https://localhost:8443/hook", false).await.is_err());
        assert!(check("https://[::1]/hook", false).await.is_err());
        assert!(check("http://93.184.216.34/hook", false).await.is_err());
        assert!(check("ftp://93.184.216.34/hook", false).await.is_err());
        assert!(check("https://user:pw@93.184.216.34/", false)
            .await
            .is_err());
        assert!(check("https://93.184.216.34/hook", false).await.is_ok());
        assert!(check("http://127.0.0.1:18200/hook", true).await.is_ok());
    }
}
