//! GitHub's secret scanning endpoint through its router, beside an API behind
//! ApiKeyLayer and the admin API, sharing one cache.
#![cfg(feature = "admin")]

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_api_key::admin::secret_scanning::{
    ACTOR, DEFAULT_PATH, KEY_IDENTIFIER_HEADER, SIGNATURE_HEADER,
};
use tower_api_key::admin::{LeakAction, PublicKeys, SecretScanning};
use tower_api_key::store::{AuditEvent, NewKey};
use tower_api_key::{
    ApiKeyLayer, CachedResolver, KeyFormat, KeyHash, KeyStore, MemoryStore, Scopes,
};

const LEAK_URL: &str = "https://github.com/octo/repo/blob/0123abc/.env";

/// GitHub's signing key in these tests, from a fixed scalar.
fn github_key() -> SigningKey {
    SigningKey::from_slice(&[0x42; 32]).unwrap()
}

fn public_keys() -> PublicKeys {
    let pem = github_key()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let document = json!({"public_keys": [
        {"key_identifier": "old", "key": SigningKey::from_slice(&[0x07; 32]).unwrap()
            .verifying_key().to_public_key_pem(LineEnding::LF).unwrap(), "is_current": false},
        {"key_identifier": "current", "key": pem, "is_current": true},
    ]});
    PublicKeys::parse(document.to_string().as_bytes()).unwrap()
}

struct Setup<S> {
    app: Router,
    cache: CachedResolver<S>,
}

fn setup<S: KeyStore>(store: S, action: LeakAction) -> Setup<S> {
    let cache = CachedResolver::new(store);
    let api = Router::new()
        .route("/v1/ping", get(|| async { "pong" }))
        .layer(ApiKeyLayer::from_cache(cache.clone()));
    let app = Router::new()
        .merge(api)
        .merge(tower_api_key::admin::router(cache.clone()))
        .merge(
            SecretScanning::new(cache.clone(), public_keys())
                .action(action)
                .router(),
        );
    Setup { app, cache }
}

/// GitHub's report of `tokens`, as GitHub would send it: a JSON array, signed.
fn report(tokens: &[&str]) -> Request<Body> {
    let entries: Vec<Value> = tokens
        .iter()
        .map(|t| json!({"token": t, "type": "acme_api_key", "url": LEAK_URL, "source": "content"}))
        .collect();
    let body = Value::Array(entries).to_string();
    let signature: Signature = github_key().sign(body.as_bytes());
    Request::post(DEFAULT_PATH)
        .header("content-type", "application/json")
        .header(KEY_IDENTIFIER_HEADER, "current")
        .header(
            SIGNATURE_HEADER,
            base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes()),
        )
        .body(Body::from(body))
        .unwrap()
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn ping(app: &Router, key: &str) -> StatusCode {
    let request = Request::get("/v1/ping")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

fn labels(feedback: &Value) -> Vec<&str> {
    feedback
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect()
}

/// `key` with its last checksum character changed.
fn bad_checksum(key: &str) -> String {
    let mut text = key.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == 'A' { 'B' } else { 'A' });
    assert!(KeyFormat::default().validate(&text).is_err());
    text
}

#[tokio::test]
async fn revoke_revokes_at_once_and_labels_every_token() {
    let s = setup(MemoryStore::new(), LeakAction::Revoke);
    let leaked = s.cache.create(NewKey::new("acme"), "test").await.unwrap();
    let bystander = s.cache.create(NewKey::new("acme"), "test").await.unwrap();
    let key = leaked.key.expose_secret();
    // Cached as active before the report.
    assert_eq!(ping(&s.app, key).await, StatusCode::OK);

    let unknown = KeyFormat::default().generate();
    let foreign = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let checksum = bad_checksum(bystander.key.expose_secret());
    let tokens = [key, unknown.expose_secret(), foreign, &checksum];
    let (status, feedback) = call(&s.app, report(&tokens)).await;
    assert_eq!(status, StatusCode::OK, "{feedback}");
    assert_eq!(
        labels(&feedback),
        [
            "true_positive",
            "false_positive",
            "false_positive",
            "false_positive"
        ]
    );
    for (entry, token) in feedback.as_array().unwrap().iter().zip(tokens) {
        assert_eq!(entry["token_hash"], KeyHash::of(token).to_hex());
        assert_eq!(entry["token_type"], "acme_api_key");
    }
    assert!(
        !feedback.to_string().contains(key),
        "the answer holds no token"
    );

    assert_eq!(
        ping(&s.app, key).await,
        StatusCode::UNAUTHORIZED,
        "revoked, the cache too"
    );
    assert_eq!(
        ping(&s.app, bystander.key.expose_secret()).await,
        StatusCode::OK
    );

    let log = s.cache.audit(Some(&leaked.record.id)).await.unwrap();
    let events: Vec<_> = log.iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        events,
        [
            AuditEvent::Created,
            AuditEvent::Leaked {
                url: LEAK_URL.to_owned(),
                source: "content".to_owned()
            },
            AuditEvent::Revoked
        ]
    );
    assert!(log[1..].iter().all(|e| e.actor == ACTOR));
    // Nothing was written for the others.
    let bystander_log = s.cache.audit(Some(&bystander.record.id)).await.unwrap();
    assert_eq!(bystander_log.len(), 1);

    // The admin API's audit list shows where it was found.
    let admin = s
        .cache
        .create(
            NewKey::new("ops").with_scopes(Scopes::parse(["admin"]).unwrap()),
            "test",
        )
        .await
        .unwrap();
    let request = Request::get(format!("/admin/audit?key_id={}", leaked.record.id))
        .header(
            "authorization",
            format!("Bearer {}", admin.key.expose_secret()),
        )
        .body(Body::empty())
        .unwrap();
    let (status, audit) = call(&s.app, request).await;
    assert_eq!(status, StatusCode::OK);
    let leak = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "leaked")
        .unwrap();
    assert_eq!(leak["url"], LEAK_URL);
    assert_eq!(leak["source"], "content");
    assert_eq!(leak["actor"], ACTOR);
    let created = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "created")
        .unwrap();
    assert!(
        created.get("url").is_none(),
        "only leaked entries carry a url"
    );
}

#[tokio::test]
async fn notify_records_and_leaves_the_key_working() {
    let s = setup(MemoryStore::new(), LeakAction::Notify);
    let leaked = s.cache.create(NewKey::new("acme"), "test").await.unwrap();
    let key = leaked.key.expose_secret();
    let (status, feedback) = call(&s.app, report(&[key, "not-a-key"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(labels(&feedback), ["true_positive", "false_positive"]);
    assert_eq!(ping(&s.app, key).await, StatusCode::OK);
    let log = s.cache.audit(Some(&leaked.record.id)).await.unwrap();
    let events: Vec<_> = log.iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        events,
        [
            AuditEvent::Created,
            AuditEvent::Leaked {
                url: LEAK_URL.to_owned(),
                source: "content".to_owned()
            }
        ]
    );
}

#[tokio::test]
async fn a_revoked_key_reported_again_is_still_ours() {
    let s = setup(MemoryStore::new(), LeakAction::Revoke);
    let leaked = s.cache.create(NewKey::new("acme"), "test").await.unwrap();
    let key = leaked.key.expose_secret();
    s.cache.revoke(&leaked.record.id, "test").await.unwrap();
    let (status, feedback) = call(&s.app, report(&[key])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(labels(&feedback), ["true_positive"]);
    let log = s.cache.audit(Some(&leaked.record.id)).await.unwrap();
    let events: Vec<&str> = log.iter().map(|e| e.event.name()).collect();
    assert_eq!(events, ["created", "revoked", "leaked"]);
}

#[tokio::test]
async fn an_unsigned_report_changes_nothing() {
    let s = setup(MemoryStore::new(), LeakAction::Revoke);
    let leaked = s.cache.create(NewKey::new("acme"), "test").await.unwrap();
    let key = leaked.key.expose_secret();
    let mut request = report(&[key]);
    request.headers_mut().remove(SIGNATURE_HEADER);
    let (status, problem) = call(&s.app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!problem.to_string().contains(key));
    let mut request = report(&[key]);
    request
        .headers_mut()
        .insert(KEY_IDENTIFIER_HEADER, "old".parse().unwrap());
    assert_eq!(
        call(&s.app, request).await.0,
        StatusCode::UNAUTHORIZED,
        "signed by another key"
    );
    assert_eq!(ping(&s.app, key).await, StatusCode::OK);
    assert_eq!(
        s.cache.audit(Some(&leaked.record.id)).await.unwrap().len(),
        1
    );
}

/// A batch of 1 000 tokens, half ours and half foreign or unknown, through SQLite.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1000_tokens_through_sqlite() {
    use tower_api_key::store::SqliteStore;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = std::env::temp_dir().join(format!(
        "tower-api-key-scan-{}-{nanos}.db",
        std::process::id()
    ));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mut ours = Vec::new();
    for i in 0..500 {
        let created = store
            .create(NewKey::new("acme").with_name(format!("k{i}")), "test")
            .await
            .unwrap();
        ours.push(created);
    }
    let s = setup(store.clone(), LeakAction::Revoke);
    let unknown: Vec<_> = (0..250).map(|_| KeyFormat::default().generate()).collect();
    let foreign: Vec<String> = (0..250).map(|i| format!("ghp_foreign{i:030}")).collect();
    let mut tokens: Vec<&str> = Vec::new();
    for i in 0..500 {
        tokens.push(ours[i].key.expose_secret());
        if i % 2 == 0 {
            tokens.push(unknown[i / 2].expose_secret());
        } else {
            tokens.push(&foreign[i / 2]);
        }
    }
    assert_eq!(tokens.len(), 1000);
    let request = report(&tokens);
    let started = std::time::Instant::now();
    let (status, feedback) = call(&s.app, request).await;
    let took = started.elapsed();
    eprintln!(
        "secret scanning: 1000 tokens (500 ours, revoked; 500 foreign or unknown) through SQLite answered in {took:?}"
    );
    assert_eq!(status, StatusCode::OK);
    let labels = labels(&feedback);
    assert_eq!(
        labels.iter().filter(|l| **l == "true_positive").count(),
        500
    );
    assert!(labels.iter().step_by(2).all(|l| *l == "true_positive"));
    for created in &ours {
        let record = store.get(&created.record.id).await.unwrap().unwrap();
        assert!(record.revoked_at.is_some());
    }
    store.pool().close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
