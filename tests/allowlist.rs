//! Network allowlists per key, through an axum Router: the client's address is the
//! connection's peer (axum's `ConnectInfo`), or behind a trusted proxy the right-most
//! `X-Forwarded-For` entry that is not a trusted hop; outside a key's list, 403
//! problem+json, and the handler never runs.
#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, StatusCode};
use tower_api_key::record::parse_network;
use tower_api_key::{ApiKey, ApiKeyLayer, KeyFormat, KeyRecord, MemoryStore, PeerAddr};

#[path = "common/http.rs"]
mod common_http;
use common_http::call;

struct Fixture {
    app: Router,
    reached: Arc<AtomicUsize>,
    v4: ApiKey,
    v6: ApiKey,
    open: ApiKey,
}

fn fixture(trusted: &[&str]) -> Fixture {
    let keys = MemoryStore::new();
    let issue = |nets: &[&str]| {
        let key = KeyFormat::default().generate();
        let nets: Vec<_> = nets.iter().map(|n| parse_network(n).unwrap()).collect();
        keys.insert(KeyRecord::new(&key, "acme").with_allowed_ips(nets));
        key
    };
    let v4 = issue(&["198.51.100.0/24", "203.0.113.7"]);
    let v6 = issue(&["2001:db8:1::/48"]);
    let open = issue(&[]);
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                count.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .layer(
            ApiKeyLayer::new(keys)
                .trusted_proxies(trusted.iter().map(|n| parse_network(n).unwrap())),
        );
    Fixture {
        app,
        reached,
        v4,
        v6,
        open,
    }
}

fn request(key: &ApiKey, peer: Option<&str>, xff: &[&str], grpc: bool) -> Request<Body> {
    let mut b =
        Request::get("/").header("authorization", format!("Bearer {}", key.expose_secret()));
    for line in xff {
        b = b.header("x-forwarded-for", *line);
    }
    if grpc {
        b = b.header("content-type", "application/grpc");
    }
    let mut req = b.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        let addr: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    req
}

async fn status(
    f: &Fixture,
    key: &ApiKey,
    peer: Option<&str>,
    xff: &[&str],
) -> (StatusCode, String) {
    let (r, body) = call(&f.app, request(key, peer, xff, false)).await;
    (r.status(), body)
}

#[tokio::test]
async fn a_key_is_used_only_from_its_networks() {
    let f = fixture(&[]);
    // Twice each: the first request loads the key, the second is a cache hit.
    for _ in 0..2 {
        assert_eq!(
            status(&f, &f.v4, Some("198.51.100.9:4000"), &[]).await.0,
            StatusCode::OK
        );
        assert_eq!(
            status(&f, &f.v4, Some("203.0.113.7:4000"), &[]).await.0,
            StatusCode::OK
        );
        assert_eq!(
            status(&f, &f.v6, Some("[2001:db8:1:ff::1]:4000"), &[])
                .await
                .0,
            StatusCode::OK
        );
        // An IPv4 peer seen as IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(
            status(&f, &f.v4, Some("[::ffff:198.51.100.1]:4000"), &[])
                .await
                .0,
            StatusCode::OK
        );
    }
    let reached = f.reached.load(Ordering::SeqCst);
    assert_eq!(reached, 8);

    for (key, peer) in [
        (&f.v4, "203.0.113.8:4000"),
        (&f.v4, "[2001:db8:1::1]:4000"),
        (&f.v6, "198.51.100.9:4000"),
        (&f.v6, "[2001:db8:2::1]:4000"),
    ] {
        for _ in 0..2 {
            let (code, body) = status(&f, key, Some(peer), &[]).await;
            assert_eq!(code, StatusCode::FORBIDDEN, "{peer}: {body}");
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                problem["type"]
                    .as_str()
                    .unwrap()
                    .ends_with("#variant.AddressNotAllowed"),
                "{problem}"
            );
            assert_eq!(problem["status"], 403);
            assert!(!body.contains(key.expose_secret()));
        }
    }
    // Unknown peer: a key with a list is refused; one without is not.
    assert_eq!(status(&f, &f.v4, None, &[]).await.0, StatusCode::FORBIDDEN);
    assert_eq!(status(&f, &f.open, None, &[]).await.0, StatusCode::OK);
    assert_eq!(
        status(&f, &f.open, Some("192.0.2.1:1"), &[]).await.0,
        StatusCode::OK
    );
    // No refused request reached the handler.
    assert_eq!(f.reached.load(Ordering::SeqCst), reached + 2);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let f = fixture(&["10.0.0.0/8", "fd00::/8"]);
    // A client that writes X-Forwarded-For itself is not believed.
    let (code, _) = status(&f, &f.v4, Some("192.0.2.66:4000"), &["198.51.100.9"]).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // Through a trusted proxy: the address it appended.
    assert_eq!(
        status(&f, &f.v4, Some("10.1.1.1:4000"), &["198.51.100.9"])
            .await
            .0,
        StatusCode::OK
    );
    // Right to left over trusted hops; a spoofed left-most entry is never reached.
    assert_eq!(
        status(
            &f,
            &f.v4,
            Some("10.1.1.1:4000"),
            &["198.51.100.9, 192.0.2.66, 10.2.2.2"]
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &f,
            &f.v4,
            Some("[fd00::1]:4000"),
            &["192.0.2.66, 198.51.100.9", "10.2.2.2"]
        )
        .await
        .0,
        StatusCode::OK
    );
    // Malformed forwarding from a trusted proxy: the address is unknown.
    assert_eq!(
        status(&f, &f.v4, Some("10.1.1.1:4000"), &["198.51.100.9, junk"])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn grpc_gets_permission_denied_and_other_servers_give_a_peer_addr() {
    let f = fixture(&[]);
    let (r, _) = call(&f.app, request(&f.v4, Some("192.0.2.1:1"), &[], true)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["grpc-status"], "7");
    // A server without ConnectInfo inserts PeerAddr.
    let mut req = request(&f.v4, None, &[], false);
    req.extensions_mut()
        .insert(PeerAddr("198.51.100.20:9".parse().unwrap()));
    assert_eq!(call(&f.app, req).await.0.status(), StatusCode::OK);
}

/// The admin API checks its own keys' lists with the same trusted proxies.
#[cfg(feature = "admin")]
#[tokio::test]
async fn admin_keys_with_a_list_see_the_client_behind_a_trusted_proxy() {
    use tower_api_key::admin::{self, AdminConfig};
    use tower_api_key::store::NewKey;
    use tower_api_key::{CachedResolver, KeyStore, Scopes};
    let cache = CachedResolver::new(MemoryStore::new());
    let new = NewKey::new("ops")
        .with_scopes(Scopes::parse(["admin"]).unwrap())
        .with_allowed_ips([parse_network("198.51.100.0/24").unwrap()]);
    let admin_key = cache.create(new, "test").await.unwrap().key;
    let config = AdminConfig::new().trusted_proxies([parse_network("10.0.0.0/8").unwrap()]);
    let app = admin::router_with(cache, config);
    let get = |xff: &str| {
        let mut req = Request::get("/admin/keys")
            .header(
                "authorization",
                format!("Bearer {}", admin_key.expose_secret()),
            )
            .header("x-forwarded-for", xff)
            .body(Body::empty())
            .unwrap();
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    };
    assert_eq!(
        call(&app, get("198.51.100.9")).await.0.status(),
        StatusCode::OK
    );
    // The load balancer itself is not the client: outside the list.
    assert_eq!(
        call(&app, get("203.0.113.1")).await.0.status(),
        StatusCode::FORBIDDEN
    );
}
