//! Where webhooks may go: receivers on the public internet, never inside the network the server runs in.
//!
//! A webhook URL is an address an analyst chooses and the server connects to, so without a check it is a
//! port scanner for the internal network (cloud metadata at 169.254.169.254, databases on loopback, ...).
//! Every address is checked against [`inside`]: at rule creation (a literal address, or every address a
//! name resolves to) and again at each delivery, where the HTTP client resolves names only through
//! [`GuardedResolver`], so it connects to the very address that was checked (no second lookup to rebind).
//! No redirects are followed and no proxy from the environment is used. `--webhook-allow-private` turns
//! the check off, for tests and on-premise receivers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a name may take to resolve when a rule is created.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an address is not a receiver's: None when it is a public unicast address.
pub fn inside(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => inside_v4(v4),
        IpAddr::V6(v6) => inside_v6(v6),
    }
}

fn inside_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) => "private (10.0.0.0/8)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10, CGNAT)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn inside_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address: judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return inside_v4(v4);
    }
    if s[..6] == [0; 6] {
        // IPv4-compatible (::a.b.c.d), deprecated: nothing public is reached this way.
        return Some("IPv4-compatible");
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return inside_v4(v4);
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return inside_v4(v4);
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ => return None,
    })
}

/// The egress policy: whether private receivers are allowed (--webhook-allow-private).
#[derive(Debug, Clone, Copy)]
pub struct Egress {
    pub allow_private: bool,
}

impl Egress {
    /// Whether `url`'s host may receive webhooks: a literal address is judged as it is, a name by every
    /// address it resolves to now. A name that does not resolve passes (deliveries will say `dns`); the
    /// check is made again at each delivery.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => refuse(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => refuse(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let lookup = tokio::net::lookup_host((name, 0));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).try_for_each(refuse),
                    _ => Ok(()),
                }
            }
            None => Err("must have a host".into()),
        }
    }

    /// Whether a delivery to `url` may be attempted: a literal address is checked here (the resolver
    /// never sees one); a name is checked by [`GuardedResolver`] as it resolves.
    pub fn check_literal(&self, url: &str) -> Result<(), Transport> {
        if self.allow_private {
            return Ok(());
        }
        let ip = match reqwest::Url::parse(url)
            .ok()
            .as_ref()
            .and_then(|u| u.host())
        {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        match inside(ip) {
            Some(_) => Err(Transport::Blocked),
            None => Ok(()),
        }
    }

    /// The HTTP client deliveries use: names resolved through the guard, no redirects, no proxy.
    pub fn client(&self, timeout: Duration) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("Mercator-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !self.allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        // Building fails only when the TLS backend cannot start; a client without one still sends http.
        builder.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "webhook HTTP client: falling back to defaults");
            reqwest::Client::new()
        })
    }
}

fn refuse(ip: IpAddr) -> Result<(), String> {
    match inside(ip) {
        Some(why) => Err(format!(
            "reaches {ip}, a {why} address: webhooks go to public receivers (--webhook-allow-private \
             allows others)"
        )),
        None => Ok(()),
    }
}

/// Resolves a name and keeps only the addresses outside; none left is an error the delivery reports as
/// `blocked`.
struct GuardedResolver;

/// Every address of the name was inside.
#[derive(Debug)]
struct BlockedAddress;

impl std::fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the name resolves only to addresses inside the network")
    }
}

impl std::error::Error for BlockedAddress {}

/// The lookup itself failed.
#[derive(Debug)]
struct DnsFailure(std::io::Error);

impl std::fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dns: {}", self.0)
    }
}

impl std::error::Error for DnsFailure {}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|e| Box::new(DnsFailure(e)) as Box<dyn std::error::Error + Send + Sync>)?
                .filter(|a| inside(a.ip()).is_none())
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(BlockedAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How a delivery attempt failed before any HTTP status came back: what the delivery log says, instead of
/// the raw error (which would describe the inside of the network to the rule's owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The address is inside the network; nothing was sent.
    Blocked,
    Dns,
    Timeout,
    /// The connection was refused or reset.
    Refused,
    Tls,
    Other,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Blocked => "blocked",
            Transport::Dns => "dns",
            Transport::Timeout => "timeout",
            Transport::Refused => "refused",
            Transport::Tls => "tls",
            Transport::Other => "transport",
        }
    }

    /// The category of a client error, from its chain of causes.
    pub fn of(e: &reqwest::Error) -> Transport {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if c.is::<BlockedAddress>() {
                return Transport::Blocked;
            }
            if c.is::<DnsFailure>() {
                return Transport::Dns;
            }
            cause = c.source();
        }
        if e.is_timeout() {
            return Transport::Timeout;
        }
        let text = format!("{e:?}").to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup") {
            Transport::Dns
        } else if text.contains("certificate") || text.contains("tls") {
            Transport::Tls
        } else if e.is_connect() {
            Transport::Refused
        } else {
            Transport::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inside_addresses_are_named_and_public_ones_pass() {
        for s in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(inside(ip(s)).is_some(), "{s} is inside");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(inside(ip(s)), None, "{s} is public");
        }
    }

    #[tokio::test]
    async fn odd_spellings_of_loopback_are_refused_at_creation() {
        let egress = Egress {
            allow_private: false,
        };
        for url in [
            "http://127.0.0.1/hook",
            "http://127.1/hook",
            "http://2130706433/hook",
            "http://0x7f.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://[::ffff:7f00:1]/hook",
            "http://localhost:9000/hook",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(egress.check_url(url).await.is_err(), "{url} is refused");
        }
        assert!(egress.check_url("https://93.184.215.14/hook").await.is_ok());
        let open = Egress {
            allow_private: true,
        };
        assert!(open.check_url("http://127.0.0.1/hook").await.is_ok());
    }
}
