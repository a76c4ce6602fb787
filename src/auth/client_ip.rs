//! The client's address, for keys with an allowlist: the connection's peer, unless the
//! peer is a trusted proxy, and then from `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use http::Request;
use ipnet::IpNet;

/// The connection's peer address, for servers that do not give axum's `ConnectInfo`:
/// insert it into the request's extensions (a `tower` layer, or the accept loop) and
/// [`ApiKeyLayer`](super::ApiKeyLayer) reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client's address: the peer, or when the peer is one of `trusted`, the
/// right-most `X-Forwarded-For` entry that is not (skipping trusted hops). `None` when
/// the peer is not known, or `X-Forwarded-For` from a trusted proxy is malformed:
/// a key with an allowlist is then refused.
pub(crate) fn client_ip<B>(req: &Request<B>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer(req)?.to_canonical();
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    // Right to left over every X-Forwarded-For field line and entry.
    let lines: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    for entry in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        let ip = parse_entry(entry.trim())?.to_canonical();
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    Some(client)
}

fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = req.extensions().get() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// An address as proxies write it: `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or
/// `203.0.113.7:443`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, xff: &[&str]) -> Request<()> {
        let mut b = Request::builder();
        for line in xff {
            b = b.header("x-forwarded-for", *line);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        req
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_peer_unless_it_is_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        // An untrusted peer's X-Forwarded-For is ignored: it could say anything.
        assert_eq!(
            client_ip(&req("203.0.113.9:5000", &["198.51.100.1"]), &trusted),
            ip("203.0.113.9")
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(&req("10.1.2.3:5000", &["198.51.100.1"]), &trusted),
            ip("198.51.100.1")
        );
        // Right to left, skipping trusted hops; what the client wrote itself (the
        // left-most, spoofed entry) is never reached.
        assert_eq!(
            client_ip(
                &req("10.1.2.3:5000", &["6.6.6.6, 198.51.100.1, 10.9.9.9"]),
                &trusted
            ),
            ip("198.51.100.1")
        );
        // Several field lines are one list, in order.
        assert_eq!(
            client_ip(
                &req("10.1.2.3:5000", &["6.6.6.6", "198.51.100.2, fd00::1"]),
                &trusted
            ),
            ip("198.51.100.2")
        );
        // Ports and brackets as some proxies write them; IPv4-mapped IPv6 is IPv4.
        assert_eq!(
            client_ip(&req("10.1.2.3:5000", &["[2001:db8::7]:443"]), &trusted),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(
                &req("[::ffff:10.1.2.3]:5000", &["198.51.100.3:80"]),
                &trusted
            ),
            ip("198.51.100.3")
        );
        // Only trusted hops: the left-most of them.
        assert_eq!(
            client_ip(&req("10.1.2.3:5000", &["10.0.0.1, 10.0.0.2"]), &trusted),
            ip("10.0.0.1")
        );
        // No X-Forwarded-For from a trusted proxy: the proxy itself.
        assert_eq!(
            client_ip(&req("10.1.2.3:5000", &[]), &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn malformed_forwarding_or_no_peer_is_unknown() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(&req("10.1.2.3:5000", &["not-an-ip"]), &trusted),
            None
        );
        assert_eq!(
            client_ip(
                &req("10.1.2.3:5000", &["198.51.100.1, , 10.0.0.1"]),
                &trusted
            ),
            None
        );
        let bare = Request::builder().body(()).unwrap();
        assert_eq!(client_ip(&bare, &trusted), None);
    }
}
