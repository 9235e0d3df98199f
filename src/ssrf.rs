//! The SSRF guard: webhooks go to the public internet and nowhere else.
//!
//! A customer chooses the URL, so without a guard a webhook is a way to make our nodes POST into
//! our own network. The guard is applied twice: when an endpoint is saved (clear 422 for the
//! customer) and at connect time on every address the name resolves to ([`Guard::resolve`],
//! which the deliverer's pool connects through, to exactly the addresses it checked), so a DNS
//! answer that changes after the save (rebinding) cannot slip past. IP-literal hosts are
//! checked by [`Guard::check_url`] when an endpoint's requests are prepared.
//!
//! `std`'s `is_global` is unstable, so the stable predicates are combined with an `ipnet`
//! deny-list of the special-purpose ranges std misses (CGNAT, benchmarking, 6to4, NAT64, ...).
//! IPv4-mapped IPv6 addresses are canonicalised first so `::ffff:127.0.0.1` is loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::IpNet;
use url::{Host, Url};

/// Why a destination was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SsrfError {
    #[error("the URL must use https")]
    NotHttps,
    #[error("the URL has no host")]
    NoHost,
    #[error("{0} is a {1} address, which webhooks may not reach")]
    Forbidden(IpAddr, &'static str),
    #[error("the host `{0}` is not allowed")]
    ForbiddenName(String),
    #[error("the host `{0}` did not resolve: {1}")]
    Unresolved(String, String),
}

/// The IANA special-purpose address registries (IPv4 and IPv6, as of 2025), plus the
/// deprecated IPv6 forms that embed an IPv4 address, with the reason shown to the customer.
/// Std's stable predicates (`v4_reason`, `v6_reason`) already cover loopback, private,
/// link-local, unspecified, broadcast, multicast, unique-local and the IPv4 documentation
/// ranges; this list is complete on its own anyway, so a predicate that changes meaning in a
/// future std cannot open a hole. Entries the registries mark "globally reachable" (AS112,
/// PCP/TURN anycast, AMT) are refused too: no webhook receiver lives there, and a refusal costs
/// nothing. IPv4-mapped addresses (`::ffff:a.b.c.d`) are canonicalised to IPv4 before this
/// list is consulted, so `::ffff:8.8.8.8` is as public as `8.8.8.8`.
static DENY: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        // IPv4 (iana-ipv4-special-registry).
        ("0.0.0.0/8", "\"this network\""),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.31.196.0/24", "AS112"),
        ("192.52.193.0/24", "AMT"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("192.175.48.0/24", "AS112"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
        // IPv6 (iana-ipv6-special-registry).
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "NAT64"),
        ("100::/64", "discard-only"),
        ("100:0:0:1::/64", "dummy prefix"),
        ("2001::/23", "IETF protocol assignment"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("2620:4f:8000::/48", "AS112"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing (SRv6)"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .map(|(net, why)| (net.parse().expect("static CIDR"), why))
    .collect()
});

/// Classifies one address: `Some(reason)` when webhooks may not reach it.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    let std_reason = match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    };
    std_reason.or_else(|| {
        DENY.iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, why)| *why)
    })
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_unique_local() {
        Some("unique-local")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else {
        None
    }
}

/// The guard with the operator's exemptions (tests and development only; empty by default).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
    allow_http: bool,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>, allow_http: bool) -> Self {
        Self { allow, allow_http }
    }

    /// Checks one resolved or literal address against the deny rules and the allowlist.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        let canonical = ip.to_canonical();
        if self.allow.iter().any(|net| net.contains(&canonical)) {
            return Ok(());
        }
        match forbidden_reason(canonical) {
            Some(why) => Err(SsrfError::Forbidden(canonical, why)),
            None => Ok(()),
        }
    }

    /// Checks scheme and, for IP-literal hosts, the address. Names are checked on resolution.
    pub fn check_url(&self, url: &Url) -> Result<(), SsrfError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(SsrfError::NotHttps),
        }
        match url.host() {
            None => Err(SsrfError::NoHost),
            Some(Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6)),
            Some(Host::Domain(name)) => self.check_name(name),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), SsrfError> {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let local = lower == "localhost" || lower.ends_with(".localhost");
        if local
            && !self
                .allow
                .iter()
                .any(|n| n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)))
        {
            return Err(SsrfError::ForbiddenName(name.to_string()));
        }
        Ok(())
    }

    /// Resolves `host` and checks every address: one forbidden address refuses the whole name,
    /// so a name cannot mix a public and a private answer.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
        self.check_name(host)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| SsrfError::Unresolved(host.to_string(), e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(SsrfError::Unresolved(host.into(), "no addresses".into()));
        }
        for addr in &addrs {
            self.check_ip(addr.ip())?;
        }
        Ok(addrs)
    }

    /// Full save-time check: the URL, then (for names) its current DNS answer.
    pub async fn check_destination(&self, url: &Url) -> Result<(), SsrfError> {
        self.check_url(url)?;
        if let Some(Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            self.resolve(name, port).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let forbidden = [
            "127.0.0.1",
            "127.255.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.7",
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "100::1",
            // IPv4 inside IPv6 in the deprecated forms, and the newer special ranges.
            "::127.0.0.1",
            "::7f00:1",
            "::a00:1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "2001:2::1",
            "2620:4f:8000::1",
            "192.31.196.1",
            "192.175.48.1",
        ];
        for ip in forbidden {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(forbidden_reason(parsed).is_some(), "{ip} should be refused");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "3fff:1000::1",
            "5f01::1",
            "2001:4860:4860::8888",
        ];
        for ip in public {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_reason(parsed), None, "{ip} should be allowed");
        }
    }

    /// Every range of the deny-list: its first and last address are refused, whichever family.
    #[test]
    fn every_special_purpose_range_is_refused_end_to_end() {
        for (net, why) in DENY.iter() {
            for ip in [net.network(), net.broadcast()] {
                assert!(
                    forbidden_reason(ip).is_some(),
                    "{ip} ({net}, {why}) should be refused"
                );
                assert!(
                    Guard::default().check_ip(ip).is_err(),
                    "{ip} ({net}) passed the guard"
                );
            }
        }
        assert!(DENY.len() >= 37, "both registries are listed");
    }

    #[test]
    fn urls_are_checked_for_scheme_literals_and_local_names() {
        let g = Guard::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            g.check_url(&url("http://example.com/")),
            Err(SsrfError::NotHttps)
        );
        assert_eq!(
            g.check_url(&url("ftp://example.com/")),
            Err(SsrfError::NotHttps)
        );
        assert!(g.check_url(&url("https://127.0.0.1/")).is_err());
        // The url crate normalises decimal IPv4 hosts: this is 127.0.0.1.
        assert!(g.check_url(&url("https://2130706433/")).is_err());
        assert!(g.check_url(&url("https://[::ffff:127.0.0.1]/")).is_err());
        assert!(g.check_url(&url("https://[::1]:8443/")).is_err());
        for literal in [
            "https://[::127.0.0.1]/",
            "https://[::7f00:1]/",
            "https://[::ffff:0:7f00:1]/",
            "https://[3fff::1]/",
            "https://[5f00::1]/",
        ] {
            assert!(g.check_url(&url(literal)).is_err(), "{literal}");
        }
        assert!(g.check_url(&url("https://localhost/")).is_err());
        assert!(g.check_url(&url("https://api.localhost/")).is_err());
        assert!(g.check_url(&url("https://8.8.8.8/hooks")).is_ok());
        assert!(g.check_url(&url("https://example.com/hooks")).is_ok());
    }

    #[test]
    fn the_allowlist_and_http_switch_are_explicit() {
        let g = Guard::new(vec!["127.0.0.1/32".parse().unwrap()], true);
        assert!(
            g.check_url(&Url::parse("http://127.0.0.1:9/").unwrap())
                .is_ok()
        );
        assert!(
            g.check_url(&Url::parse("https://[::ffff:127.0.0.1]/").unwrap())
                .is_ok()
        );
        assert!(
            g.check_url(&Url::parse("https://10.0.0.1/").unwrap())
                .is_err()
        );
    }

    #[tokio::test]
    async fn resolution_refuses_a_name_with_a_forbidden_answer() {
        let g = Guard::default();
        // `localhost` is refused by name before any lookup; an IP given as a name resolves to itself.
        assert!(g.resolve("localhost", 443).await.is_err());
        assert!(matches!(
            g.resolve("127.0.0.1", 443).await,
            Err(SsrfError::Forbidden(_, "loopback"))
        ));
        let allowed = Guard::new(vec!["127.0.0.0/8".parse().unwrap()], false);
        assert!(allowed.resolve("127.0.0.1", 443).await.is_ok());
    }
}
