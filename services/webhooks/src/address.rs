//! Where webhooks may be sent: the addresses a customer's URL may reach. By default only
//! public addresses over https: loopback, private, link-local (cloud metadata included),
//! unique-local, multicast and reserved addresses are refused in any spelling (decimal, hex or
//! octal IPv4, IPv4-mapped or NAT64 IPv6), as are credentials in the URL and local names. The
//! check runs at registration and again at every delivery, where the resolver drops every
//! private address a name resolves to (DNS rebinding) and redirects are not followed. The
//! development setting `STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS=true` allows http and local
//! receivers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sterling_template::{Error, Result};

/// Which receivers a webhook may have.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy {
    /// Development: http and local or private addresses allowed.
    pub allow_local: bool,
}

/// Host names that always mean this machine or the cloud's metadata service.
const LOCAL_NAMES: &[&str] = &["localhost", "metadata", "metadata.google.internal"];

impl UrlPolicy {
    /// The URL, if a webhook may be sent there; `bad_request.url` saying why otherwise.
    pub fn check(&self, url: &str) -> Result<Url> {
        let refuse = |why: &str| Error::bad_request("url", format!("url refused: {why}"));
        if url.len() > 2048 {
            return Err(refuse("longer than 2048 bytes"));
        }
        let parsed = Url::parse(url).map_err(|_| refuse("not a URL"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_local => {}
            _ => return Err(refuse("https only")),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(refuse("credentials in the URL"));
        }
        if self.allow_local {
            return parsed
                .host()
                .map(|_| parsed.clone())
                .ok_or_else(|| refuse("no host"));
        }
        match parsed.host() {
            None => Err(refuse("no host")),
            Some(url::Host::Ipv4(ip)) if forbidden(IpAddr::V4(ip)) => {
                Err(refuse("not a public address"))
            }
            Some(url::Host::Ipv6(ip)) if forbidden(IpAddr::V6(ip)) => {
                Err(refuse("not a public address"))
            }
            Some(url::Host::Domain(name)) if local_name(name) => Err(refuse("a local name")),
            Some(_) => Ok(parsed.clone()),
        }
    }
}

fn local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    LOCAL_NAMES.contains(&name.as_str())
        || name.ends_with(".localhost")
        || name.ends_with(".local")
        || name.ends_with(".internal")
}

/// Whether `ip` is anything but a public unicast address.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return forbidden_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link local
        || (segments[0] & 0xffc0) == 0xfec0 // site local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible
}

/// A resolver that answers only public addresses: a name that resolves to loopback, private
/// or metadata addresses (DNS rebinding included) cannot be reached.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver {
    /// Development: every address allowed.
    pub allow_local: bool,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_local = self.allow_local;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_local || !forbidden(a.ip()))
                .collect();
            if found.is_empty() {
                let refused = format!("{host} resolves to no public address");
                return Err(refused.into());
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_local_address_is_refused() {
        let policy = UrlPolicy::default();
        for url in [
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://127.0.0.1:7105/",
            "https://0x7f000001/",
            "https://2130706433/",
            "https://0177.0.0.1/",
            "https://127.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[ff02::1]/",
            "https://100.64.0.1/",
            "https://224.0.0.1/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://api.localhost/",
            "https://metadata.google.internal/",
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "http://example.com/",
            "ftp://example.com/",
            "not a url",
        ] {
            let error = policy.check(url).expect_err(url);
            assert_eq!(error.code(), "bad_request.url", "{url}");
        }
    }

    #[test]
    fn public_https_urls_pass_and_development_allows_local() {
        let policy = UrlPolicy::default();
        for url in [
            "https://hooks.example.com/sterling",
            "https://93.184.216.34/x",
            "https://[2606:4700::1111]/",
        ] {
            assert!(policy.check(url).is_ok(), "{url}");
        }
        let development = UrlPolicy { allow_local: true };
        assert!(development.check("http://127.0.0.1:9000/hook").is_ok());
        assert!(
            development.check("http://user:pw@127.0.0.1/").is_err(),
            "never credentials"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_not_reached() {
        let resolver = PublicResolver::default();
        let name: Name = "localhost".parse().unwrap();
        let error = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost resolved to a public address"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("no public address"), "{error}");
        let development = PublicResolver { allow_local: true };
        assert!(
            development
                .resolve("localhost".parse().unwrap())
                .await
                .is_ok()
        );
    }
}
