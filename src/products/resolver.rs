//! Name resolution for the product service's agent. ureq resolves the host on every
//! request, pooled connection or not, and with a timeout set (ours always is) it does so
//! on a thread of its own: a thread started and torn down per product lookup, which cost
//! more than the lookup's parsing and JSON together. An address literal (the usual
//! `PRODUCT_SERVICE_URL` at the edge) needs no lookup at all; a name is resolved by
//! ureq's own resolver, within the timeout, at most once per `RESOLVE_TTL`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a resolved name is used before it is resolved again: short enough that a
/// moved product service is followed within seconds.
pub(super) const RESOLVE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(super) struct LookupResolver {
    inner: DefaultResolver,
    last: Mutex<Option<Resolved>>,
    /// Names resolved by `inner`: how often a lookup paid for a resolution.
    resolutions: AtomicU64,
}

#[derive(Debug)]
struct Resolved {
    host_port: String,
    at: Instant,
    addrs: Vec<SocketAddr>,
}

impl LookupResolver {
    fn answer(&self, addrs: &[SocketAddr]) -> ResolvedSocketAddrs {
        let mut out = self.empty();
        for a in addrs {
            out.push(*a);
        }
        out
    }

    #[cfg(test)]
    fn resolutions(&self) -> u64 {
        self.resolutions.load(Ordering::Relaxed)
    }
}

impl Resolver for LookupResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(host_port) = host_and_port(uri) else {
            // Not a URL ureq can use: its own resolver says why.
            return self.inner.resolve(uri, config, timeout);
        };
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            let wanted: Vec<_> = config.ip_family().keep_wanted([addr].into_iter()).collect();
            return if wanted.is_empty() {
                Err(ureq::Error::HostNotFound)
            } else {
                Ok(self.answer(&wanted))
            };
        }
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = last.as_ref() {
            if r.host_port == host_port && r.at.elapsed() < RESOLVE_TTL {
                return Ok(self.answer(&r.addrs));
            }
        }
        // Resolved without the lock: a slow resolver must not hold up the others'
        // answers from the cache, and two at once only resolve twice.
        drop(last);
        let addrs = self.inner.resolve(uri, config, timeout)?;
        self.resolutions.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Resolved {
            host_port,
            at: Instant::now(),
            addrs: addrs.to_vec(),
        });
        Ok(addrs)
    }
}

/// `host:port` of an http(s) URL, the port filled in from the scheme; an IPv6 literal
/// keeps its brackets, so the text parses as a socket address.
fn host_and_port(uri: &Uri) -> Option<String> {
    let authority = uri.authority()?;
    let port = authority.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
        return Some(format!("[{bare}]:{port}"));
    }
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::time::Duration as UreqDuration;

    fn resolve(r: &LookupResolver, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let config = Config::default();
        let timeout = NextTimeout {
            after: UreqDuration::from(Duration::from_secs(2)),
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        r.resolve(&uri, &config, timeout)
            .map(|a| a.iter().copied().collect())
    }

    #[test]
    fn an_address_literal_is_its_own_answer_without_a_resolution() {
        let r = LookupResolver::default();
        assert_eq!(
            resolve(&r, "http://127.0.0.1:8001/api/products/1").unwrap(),
            vec!["127.0.0.1:8001".parse().unwrap()]
        );
        assert_eq!(
            resolve(&r, "http://[::1]/api/products/1").unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert_eq!(
            resolve(&r, "https://10.1.2.3/x").unwrap(),
            vec!["10.1.2.3:443".parse().unwrap()]
        );
        assert_eq!(r.resolutions(), 0);
    }

    #[test]
    fn a_name_is_resolved_once_then_answered_from_the_last_resolution() {
        let r = LookupResolver::default();
        let first = resolve(&r, "http://localhost:8001/api/products/1").unwrap();
        assert!(!first.is_empty());
        assert!(first
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8001));
        for id in 2..10 {
            let again = resolve(&r, &format!("http://localhost:8001/api/products/{id}"));
            assert_eq!(again.unwrap(), first);
        }
        assert_eq!(r.resolutions(), 1);
        // Another port is another answer.
        let other = resolve(&r, "http://localhost:8002/").unwrap();
        assert!(other.iter().all(|a| a.port() == 8002));
        assert_eq!(r.resolutions(), 2);
    }

    #[test]
    fn an_unknown_name_is_an_error_and_is_not_kept() {
        let r = LookupResolver::default();
        assert!(resolve(&r, "http://no-such-host.invalid:8001/").is_err());
        assert!(resolve(&r, "http://no-such-host.invalid:8001/").is_err());
        assert_eq!(r.resolutions(), 0);
    }
}
