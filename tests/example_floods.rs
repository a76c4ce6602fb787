//! The example server under a flood of well-formed unknown keys from one client: after
//! `FAILURE_LIMIT` failures the client gets 429 before any lookup; its cached key works.
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin"
))]

#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use server::{Client, refuses_to_start, start_sqlite};
use tower_api_key::KeyFormat;

#[tokio::test]
async fn a_flood_from_one_client_is_cut_off_and_its_valid_key_keeps_working() {
    let server = start_sqlite(&[("FAILURE_LIMIT", "5/60s")]);
    let admin = server.admin_key.clone().unwrap();
    let mut client = Client::new(&server.addr);
    let created = client
        .send(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(
                &serde_json::json!({"consumer": "acme", "name": "app", "scopes": ["orders:read"]}),
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(client.get("/v1/whoami", Some(&key)).await.status, 200);

    let format = KeyFormat::default();
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let minted = format.generate();
        let answer = client.get("/v1/whoami", Some(minted.expose_secret())).await;
        if answer.status == 429 {
            let retry: u64 = answer.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            assert_eq!(
                answer.header("content-type"),
                Some("application/problem+json")
            );
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    for _ in 0..100 {
        assert_eq!(client.get("/v1/whoami", Some(&key)).await.status, 200);
    }
    server.stop();
}

#[tokio::test]
async fn the_failure_limit_can_be_turned_off() {
    let server = start_sqlite(&[("FAILURE_LIMIT", "off")]);
    let mut client = Client::new(&server.addr);
    let format = KeyFormat::default();
    for _ in 0..150 {
        let minted = format.generate();
        assert_eq!(
            client
                .get("/v1/whoami", Some(minted.expose_secret()))
                .await
                .status,
            401
        );
    }
    server.stop();
}

#[test]
fn a_bad_failure_limit_is_a_clear_error() {
    let stderr = refuses_to_start(&[("FAILURE_LIMIT", "lots")]);
    assert!(stderr.contains("FAILURE_LIMIT"), "{stderr}");
    assert!(stderr.contains("20/60s"), "{stderr}");
}
