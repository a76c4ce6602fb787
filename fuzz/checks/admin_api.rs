//! The admin API's JSON bodies, through `admin::router_with` in process.
//!
//! Each input is a short session of up to four requests, with an admin key (scope
//! `admin`) and one other key of its own in a `MemoryStore`.
//! A request is one byte of settings and a body that runs to the next NUL byte:
//! bits 0–1 pick `POST /admin/keys`, `PATCH /admin/keys/{id}`,
//! `POST /admin/keys/{id}/rotate` or `POST /admin/keys/import`; bits 2–3 the id
//! (the other key, the admin key, the key the session last created, or one that does not
//! exist); bit 4 sends the admin key in `X-API-Key` rather than `Authorization`. In
//! bodies, `$ADMIN` and `$KEY` are replaced by the admin key and the other key, so that
//! the fuzzer can put keys where they do not belong.
//!
//! Every answer is 2xx `application/json` or 4xx `application/problem+json` with
//! `type`, `title`, `detail` and its own `status` — never 5xx; a body that is not JSON
//! is 400; 401/403 only after the session changed the admin key itself. No problem holds
//! a well-formed key, and no answer holds a key of the session (the admin key, the other
//! key, the keys it created) that none of its requests carried; a 201 holds one new key,
//! once, in `key`: that key is of the store's format, and the store has it by hash, with
//! the consumer and scopes asked for. An import's 201 counts its rows, and every imported hash resolves.

use std::sync::{LazyLock, Mutex};

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_api_key::admin::AdminConfig;
use tower_api_key::{
    ApiKey, CachedResolver, KeyFormat, KeyHash, KeyRecord, KeyResolver, KeyStore, MemoryStore,
    Scopes,
};

struct World {
    runtime: tokio::runtime::Runtime,
    state: Mutex<Option<State>>,
}

/// A store, its cache and the router over them, shared by [`RENEW_EVERY`] inputs:
/// building them costs more than most sessions, and each input works on keys of its
/// own, so that what one input does cannot change what the next one sees.
struct State {
    cache: CachedResolver<MemoryStore>,
    app: axum::Router,
    inputs: u64,
}

/// How many inputs one store serves before it is dropped (which bounds its memory).
const RENEW_EVERY: u64 = 256;

static WORLD: LazyLock<World> = LazyLock::new(|| World {
    runtime: tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap(),
    state: Mutex::new(None),
});

const PREFIX: &str = "sk_live_";

/// Runs one input; panics when an invariant does not hold.
pub(crate) fn check(data: &[u8]) {
    let w = &*WORLD;
    let mut state = w.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.as_ref().is_none_or(|s| s.inputs >= RENEW_EVERY) {
        let cache = CachedResolver::new(MemoryStore::new());
        let app = tower_api_key::admin::router_with(cache.clone(), AdminConfig::new());
        *state = Some(State {
            cache,
            app,
            inputs: 0,
        });
    }
    let state = state.as_mut().unwrap();
    state.inputs += 1;
    w.runtime.block_on(session(state, data));
}

async fn session(state: &State, data: &[u8]) {
    // This input's own admin key and other key, under ids no other input uses.
    let n = state.inputs;
    let (admin_id, target_id) = (format!("key_admin{n}"), format!("key_target{n}"));
    let admin = KeyFormat::default().generate();
    let target = KeyFormat::default().generate();
    let (cache, app) = (&state.cache, &state.app);
    cache.resolver().insert(
        KeyRecord::new(&admin, "ops")
            .with_id(&admin_id)
            .with_scopes(Scopes::parse(["admin"]).unwrap()),
    );
    cache.resolver().insert(
        KeyRecord::new(&target, "acme")
            .with_id(&target_id)
            .with_scopes(Scopes::parse(["orders:read"]).unwrap()),
    );

    let mut last_created = String::from("key_nope");
    let mut carried = String::new();
    let mut secrets = vec![
        admin.expose_secret().to_owned(),
        target.expose_secret().to_owned(),
    ];
    let mut admin_changed = false;
    let mut rest = data;
    for _ in 0..4 {
        let Some((&settings, tail)) = rest.split_first() else {
            break;
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let body = &replace(&tail[..end], &[("$ADMIN", &admin), ("$KEY", &target)]);
        rest = tail.get(end + 1..).unwrap_or_default();

        let id = match (settings >> 2) & 3 {
            0 => target_id.as_str(),
            1 => admin_id.as_str(),
            2 => last_created.as_str(),
            _ => "key_nope",
        }
        .to_owned();
        let (method, path) = match settings & 3 {
            0 => ("POST", "/admin/keys".to_owned()),
            1 => ("PATCH", format!("/admin/keys/{id}")),
            2 => ("POST", format!("/admin/keys/{id}/rotate")),
            _ => ("POST", "/admin/keys/import".to_owned()),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", "application/json");
        request = if settings & 0x10 != 0 {
            request.header("x-api-key", admin.expose_secret())
        } else {
            request.header("authorization", format!("Bearer {}", admin.expose_secret()))
        };
        let request = request.body(Body::from(body.to_vec())).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let ctype = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("answers are UTF-8");
        let what = format!(
            "{method} {path} {:?} → {status} {text}",
            String::from_utf8_lossy(body)
        );
        trace(&what);

        assert!(!status.is_server_error(), "{what}");
        assert!(status.is_success() || status.is_client_error(), "{what}");
        // A key that no request of the session carried never comes back (a 201's own
        // new key aside): a key the admin stored, say as a scope, is shown as stored.
        carried.push_str(&String::from_utf8_lossy(body));
        carried.push('\0');
        for secret in &secrets {
            if !carried.contains(secret.as_str()) {
                assert!(
                    !text.contains(secret.as_str()),
                    "an answer holds a key: {what}"
                );
            }
        }
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {what}"));
        let asked: Option<Value> = serde_json::from_slice(body).ok();

        if status.is_client_error() {
            assert_eq!(ctype, "application/problem+json", "{what}");
            assert_eq!(
                answer["status"].as_u64(),
                Some(u64::from(status.as_u16())),
                "{what}"
            );
            assert!(
                answer["type"].is_string() && answer["title"].is_string(),
                "{what}"
            );
            assert!(answer["detail"].is_string(), "{what}");
            assert!(keys_in(&text).is_empty(), "a problem holds a key: {what}");
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                assert!(admin_changed, "{what}");
                continue;
            }
            if asked.is_none() {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
            }
            continue;
        }
        assert!(asked.is_some(), "a body that is not JSON was taken: {what}");
        let asked = asked.unwrap();
        assert_eq!(ctype, "application/json", "{what}");
        // The well-formed keys of the answer that the request did not carry.
        let keys: Vec<&str> = keys_in(&text)
            .into_iter()
            .filter(|k| !carried.contains(k))
            .collect();

        match settings & 3 {
            0 | 2 => {
                assert_eq!(status, StatusCode::CREATED, "{what}");
                let key = answer["key"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no key: {what}"));
                assert_eq!(keys, [key], "one new key: {what}");
                assert_eq!(text.matches(key).count(), 1, "the new key, once: {what}");
                secrets.push(key.to_owned());
                let new_id = answer["id"].as_str().unwrap().to_owned();
                assert!(key.starts_with(answer["start"].as_str().unwrap()), "{what}");
                let record = cache
                    .resolver()
                    .resolve(&KeyHash::of(key))
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("the store has no such key: {what}"));
                assert_eq!(record.id, new_id, "{what}");
                let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
                assert_eq!(answer["scopes"], serde_json::json!(scopes), "{what}");
                if settings & 3 == 0 {
                    assert_eq!(
                        Some(record.consumer.as_str()),
                        asked["consumer"].as_str(),
                        "{what}"
                    );
                    assert_eq!(scopes, wanted_scopes(&asked["scopes"]), "{what}");
                } else {
                    let old = cache.get(&id).await.unwrap().unwrap();
                    assert_eq!(old.consumer, record.consumer, "{what}");
                    assert!(
                        old.expires_at.is_some() || old.revoked_at.is_some(),
                        "{what}"
                    );
                    admin_changed |= id == admin_id;
                }
                last_created = new_id;
            }
            1 => {
                assert_eq!(status, StatusCode::OK, "{what}");
                assert!(keys.is_empty(), "{what}");
                assert_eq!(answer["id"].as_str(), Some(id.as_str()), "{what}");
                if asked["scopes"].is_array() {
                    let got: Vec<&str> = answer["scopes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap())
                        .collect();
                    assert_eq!(got, wanted_scopes(&asked["scopes"]), "{what}");
                }
                admin_changed |= id == admin_id;
            }
            _ => {
                assert_eq!(status, StatusCode::CREATED, "{what}");
                assert!(keys.is_empty(), "{what}");
                let rows = asked
                    .as_array()
                    .unwrap_or_else(|| panic!("not an array: {what}"));
                assert_eq!(
                    answer["imported"].as_u64(),
                    Some(rows.len() as u64),
                    "{what}"
                );
                assert_eq!(
                    answer["ids"].as_array().map(Vec::len),
                    Some(rows.len()),
                    "{what}"
                );
                for row in rows {
                    let hash = KeyHash::from_hex(row["hash"].as_str().unwrap()).unwrap();
                    let found = cache.resolver().resolve(&hash).await.unwrap();
                    assert!(found.is_some(), "an imported hash does not resolve: {what}");
                }
            }
        }
    }
}

/// `input` with each placeholder replaced by its key's secret.
fn replace(input: &[u8], keys: &[(&str, &ApiKey)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut i = 0;
    'outer: while i < input.len() {
        for (from, key) in keys {
            if input[i..].starts_with(from.as_bytes()) {
                out.extend_from_slice(key.expose_secret().as_bytes());
                i += from.len();
                continue 'outer;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// The scopes asked for, sorted and without duplicates, as a record keeps them.
fn wanted_scopes(asked: &Value) -> Vec<&str> {
    let mut list: Vec<&str> = asked
        .as_array()
        .map(|l| l.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default();
    list.sort_unstable();
    list.dedup();
    list
}

/// Every well-formed key of the store's format that `text` holds.
fn keys_in(text: &str) -> Vec<&str> {
    let format = KeyFormat::default();
    let len = format.key_len();
    text.match_indices(PREFIX)
        .filter_map(|(at, _)| text.get(at..at + len))
        .filter(|k| format.validate(k).is_ok())
        .collect()
}

/// With `FUZZ_TRACE` set, prints what each input did (to check that seeds reach what
/// they are meant to).
fn trace(what: &str) {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_TRACE").is_some());
    if *ON {
        eprintln!("{what}");
    }
}
