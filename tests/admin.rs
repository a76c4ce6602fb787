//! The admin API through an axum Router: the DESIGN.md contract, strict input, audit.
#![cfg(feature = "admin")]

#[path = "common/rfc3339.rs"]
mod rfc3339;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use rfc3339::{rfc3339, secs_until};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_api_key::store::NewKey;
use tower_api_key::{ApiKeyLayer, CachedResolver, KeyResolver, KeyStore, MemoryStore, Scopes};

struct Admin {
    app: Router,
    admin_key: String,
    admin_id: String,
    cache: CachedResolver<MemoryStore>,
}

async fn setup() -> Admin {
    setup_with(tower_api_key::admin::AdminConfig::new()).await
}

async fn setup_with(config: tower_api_key::admin::AdminConfig) -> Admin {
    let cache = CachedResolver::new(MemoryStore::new());
    let admin = cache
        .create(
            NewKey::new("ops").with_scopes(Scopes::parse(["admin"]).unwrap()),
            "test",
        )
        .await
        .unwrap();
    // The API the keys are for, sharing the cache with the admin router.
    let api = Router::new()
        .route("/v1/ping", get(|| async { "pong" }))
        .layer(ApiKeyLayer::from_cache(cache.clone()));
    let app = Router::new()
        .merge(api)
        .merge(tower_api_key::admin::router_with(cache.clone(), config));
    Admin {
        app,
        admin_key: admin.key.expose_secret().to_owned(),
        admin_id: admin.record.id,
        cache,
    }
}

impl Admin {
    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let ctype = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value, ctype)
    }

    async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value, String) {
        self.call(method, path, Some(&self.admin_key.clone()), body)
            .await
    }

    /// A new key of `consumer`: its id, the key, and its path `/admin/keys/{id}`.
    async fn create(&self, consumer: &str) -> (String, String, String) {
        let body = format!(r#"{{"consumer": "{consumer}"}}"#);
        let (status, created, _) = self.admin("POST", "/admin/keys", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let key = created["key"].as_str().unwrap().to_owned();
        let path = format!("/admin/keys/{id}");
        (id, key, path)
    }

    /// The audit log of the key `id`, oldest first: `(event, actor)`.
    async fn audit(&self, id: &str) -> Vec<(String, String)> {
        let (status, log, _) = self
            .admin("GET", &format!("/admin/audit?key_id={id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{log}");
        log.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let field = |name: &str| e[name].as_str().unwrap().to_owned();
                (field("event"), field("actor"))
            })
            .collect()
    }
}

#[tokio::test]
async fn the_whole_contract() {
    let a = setup().await;
    let body = json!({
        "consumer": "acme", "name": "ci", "scopes": ["orders:read"],
        "expires_in_seconds": 3600, "rate_limit": {"requests": 100, "per_seconds": 60, "burst": 10},
    });
    let (status, created, _) = a
        .admin("POST", "/admin/keys", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    for field in [
        "id",
        "key",
        "start",
        "consumer",
        "name",
        "scopes",
        "expires_at",
    ] {
        assert!(created.get(field).is_some(), "{field}");
    }
    assert!(key.starts_with(created["start"].as_str().unwrap()));
    let record = a.cache.get(&id).await.unwrap().unwrap();
    assert_eq!(
        record.rate_limits.iter().next().unwrap().to_string(),
        "100/60000ms burst 10"
    );

    // The key works on the API.
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&key), None).await.0,
        StatusCode::OK
    );

    let (status, list, _) = a.admin("GET", "/admin/keys?consumer=acme", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("key").is_none(), "a listing never shows a key");

    let (status, one, _) = a.admin("GET", &format!("/admin/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(one.get("last_used_at").is_some() && one.get("revoked_at").is_some());
    assert_eq!(
        a.admin("GET", "/admin/keys/key_missing", None).await.0,
        StatusCode::NOT_FOUND
    );

    let (status, usage, _) = a
        .admin("GET", &format!("/admin/keys/{id}/usage"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        usage,
        json!({"requests": 0, "rejected": 0, "last_used_at": null})
    );

    let (status, rotated, _) = a
        .admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(r#"{"grace_seconds": 600}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&key), None).await.0,
        StatusCode::OK,
        "grace"
    );
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&new_key), None).await.0,
        StatusCode::OK
    );

    // Revocation takes effect on the very next request.
    let (status, _, _) = a
        .admin("DELETE", &format!("/admin/keys/{new_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&new_key), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        a.admin("DELETE", "/admin/keys/key_missing", None).await.0,
        StatusCode::NOT_FOUND
    );
    // Deleted: gone from its URI.
    assert_eq!(
        a.admin("GET", &format!("/admin/keys/{new_id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let (status, log, _) = a
        .admin("GET", &format!("/admin/audit?key_id={id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "rotated", "expired_by_rotation"]);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == a.admin_id.as_str())
    );
    let (_, all, _) = a.admin("GET", "/admin/audit", None).await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "revoked" && e["key_id"] == new_id.as_str())
    );
    assert!(
        !all.to_string().contains(&key[12..]),
        "no secret in the audit log"
    );
}

#[tokio::test]
async fn only_admin_keys_get_in() {
    let a = setup().await;
    let (status, _, ctype) = a.call("GET", "/admin/keys", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(ctype, "application/problem+json");
    let user = a.cache.create(NewKey::new("acme"), "test").await.unwrap();
    let (status, body, _) = a
        .call("GET", "/admin/keys", Some(user.key.expose_secret()), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["scope"], "admin");
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let a = setup().await;
    let too_many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let cases: Vec<(String, StatusCode, Option<&str>)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, None),
        ("[1]".into(), StatusCode::BAD_REQUEST, None),
        (
            json!({"consumer": "a", "colour": "red"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("colour"),
        ),
        (
            json!({"name": "x"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("consumer"),
        ),
        (
            json!({"consumer": "  "}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("consumer"),
        ),
        (
            json!({"consumer": 7}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("consumer"),
        ),
        (
            json!({"consumer": "a", "name": ""}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
        (
            json!({"consumer": "a", "scopes": [""]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("scopes"),
        ),
        (
            json!({"consumer": "a", "scopes": ["bad scope"]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("scopes"),
        ),
        (
            json!({"consumer": "a", "scopes": too_many}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("scopes"),
        ),
        (
            json!({"consumer": "a", "expires_in_seconds": -5}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("expires_in_seconds"),
        ),
        (
            json!({"consumer": "a", "expires_in_seconds": 1e12}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("expires_in_seconds"),
        ),
        (
            json!({"consumer": "a", "rate_limit": {"requests": -1, "per_seconds": 60}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("rate_limit.requests"),
        ),
        (
            json!({"consumer": "a", "rate_limit": {"requests": 5}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("rate_limit.per_seconds"),
        ),
        (
            json!({"consumer": "a", "rate_limit": {"requests": 5, "per_seconds": 1, "x": 1}})
                .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("rate_limit.x"),
        ),
    ];
    for (body, want, field) in cases {
        let (status, problem, ctype) = a.admin("POST", "/admin/keys", Some(&body)).await;
        assert_eq!(status, want, "{body}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{body}");
        assert_eq!(problem["status"], want.as_u16());
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{body}: {problem}");
        }
    }
    let (status, problem, _) = a
        .admin(
            "POST",
            &format!("/admin/keys/{}/rotate", a.admin_id),
            Some(r#"{"grace_seconds": -1}"#),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("grace_seconds"))
    );
    assert_eq!(
        a.admin("GET", "/admin/keys?colour=red", None).await.0,
        StatusCode::BAD_REQUEST
    );
    // Nothing was created by any of it.
    assert_eq!(a.cache.resolver().len(), 1);
}

#[tokio::test]
async fn patch_changes_scopes_and_expiry_and_checks_both_first() {
    let a = setup().await;
    let body = json!({"consumer": "acme", "scopes": ["orders:read"]}).to_string();
    let (_, created, _) = a.admin("POST", "/admin/keys", Some(&body)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/keys/{id}");

    let (status, record, _) = a
        .admin(
            "PATCH",
            &path,
            Some(r#"{"scopes":["orders:write","orders:read"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(record["expires_at"], Value::Null);
    assert!(record.get("key").is_none());

    let (status, record, _) = a
        .admin("PATCH", &path, Some(r#"{"expires_in_seconds":3600}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert!(record["expires_at"].is_string());
    let (_, record, _) = a
        .admin("PATCH", &path, Some(r#"{"expires_in_seconds":null}"#))
        .await;
    assert_eq!(record["expires_at"], Value::Null);

    // Bad input changes nothing, not even the valid half.
    for (bad, field) in [
        (r#"{}"#, "scopes"),
        (r#"{"scopes":["bad scope"]}"#, "scopes"),
        (
            r#"{"scopes":["x"],"expires_in_seconds":-1}"#,
            "expires_in_seconds",
        ),
        (r#"{"expires_in_seconds":1.5}"#, "expires_in_seconds"),
        (r#"{"name":"x"}"#, "name"),
    ] {
        let (status, problem, ctype) = a.admin("PATCH", &path, Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
        assert_eq!(problem["field"], field, "{bad}");
        assert_eq!(ctype, "application/problem+json");
    }
    let record = a.cache.get(&id).await.unwrap().unwrap();
    assert_eq!(
        record.scopes,
        Scopes::parse(["orders:read", "orders:write"]).unwrap()
    );
    let (status, _, _) = a
        .admin("PATCH", "/admin/keys/key_nope", Some(r#"{"scopes":[]}"#))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Audited, with the admin key as the actor.
    let (_, log, _) = a
        .admin("GET", &format!("/admin/audit?key_id={id}"), None)
        .await;
    let events: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "created",
            "scopes_changed",
            "expiry_changed",
            "expiry_changed"
        ]
    );
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == a.admin_id.as_str())
    );
}

#[tokio::test]
async fn openapi_document_describes_the_api_and_its_key_schemes() {
    let a = setup().await;
    let (status, doc, ctype) = a.call("GET", "/admin/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "served without a key");
    assert_eq!(ctype, "application/json");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/admin/keys", "post"),
        ("/admin/keys", "get"),
        ("/admin/keys/{id}", "get"),
        ("/admin/keys/{id}", "patch"),
        ("/admin/keys/{id}", "delete"),
        ("/admin/keys/{id}/rotate", "post"),
        ("/admin/keys/{id}/usage", "get"),
        ("/admin/keys/import", "post"),
        ("/admin/audit", "get"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    // GitHub's endpoint: signed by GitHub, so no admin key; its headers are declared.
    let github = &paths["/github/secret-scanning"]["post"];
    assert_eq!(github["security"], json!([{}]), "{github}");
    let headers: Vec<&str> = github["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        headers,
        [
            "Github-Public-Key-Identifier",
            "Github-Public-Key-Signature"
        ]
    );
    for status in ["200", "400", "401", "413"] {
        assert!(github["responses"].get(status).is_some(), "{status}");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(doc["security"], json!([{"bearer": []}, {"api_key": []}]));
    let import = &doc["components"]["schemas"]["ImportKeyRequest"];
    assert_eq!(import["additionalProperties"], false);
    assert_eq!(import["required"], json!(["hash", "consumer"]));
    let create = &doc["components"]["schemas"]["CreateKeyRequest"];
    assert_eq!(create["additionalProperties"], false);
    assert_eq!(create["required"], json!(["consumer"]));
    // The 201 body documents the secret field, and the listing's does not.
    assert!(
        doc["components"]["schemas"]["CreatedKeyBody"]
            .to_string()
            .contains("\"key\"")
    );
    assert!(
        !doc["components"]["schemas"]["KeyBody"]["properties"]
            .as_object()
            .unwrap()
            .contains_key("key")
    );
}

#[tokio::test]
async fn lifetimes_give_a_default_and_refuse_longer_keys() {
    use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
    let lifetimes = KeyLifetimes::new()
        .with_default(parse_lifetime("90d").unwrap())
        .unwrap()
        .with_max(parse_lifetime("365d").unwrap())
        .unwrap();
    let a = setup_with(tower_api_key::admin::AdminConfig::new().lifetimes(lifetimes)).await;
    const DAY: i64 = 86_400;

    // No expiry asked for: the default.
    let (status, created, _) = a
        .admin("POST", "/admin/keys", Some(r#"{"consumer":"acme"}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let left = secs_until(created["expires_at"].as_str().unwrap());
    assert!((90 * DAY - 60..=90 * DAY).contains(&left), "{left}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Up to the maximum: as asked.
    let body = json!({"consumer": "acme", "expires_in_seconds": 365 * DAY}).to_string();
    let (status, created, _) = a.admin("POST", "/admin/keys", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let left = secs_until(created["expires_at"].as_str().unwrap());
    assert!((365 * DAY - 60..=365 * DAY).contains(&left), "{left}");

    // Longer: 422 naming the field, and nothing created.
    let before = a.cache.resolver().len();
    let body = json!({"consumer": "acme", "expires_in_seconds": 365 * DAY + 1}).to_string();
    let (status, problem, ctype) = a.admin("POST", "/admin/keys", Some(&body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(problem["field"], "expires_in_seconds", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("31536000 s (365d)"),
        "{problem}"
    );
    assert_eq!(a.cache.resolver().len(), before);

    // A PATCH to a longer expiry, or to none, is refused too; a shorter one is not.
    for body in [
        json!({"expires_in_seconds": 366 * DAY}),
        json!({"expires_in_seconds": null}),
    ] {
        let (status, problem, _) = a
            .admin(
                "PATCH",
                &format!("/admin/keys/{id}"),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(problem["field"], "expires_in_seconds", "{problem}");
    }
    let (status, record, _) = a
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(&json!({"expires_in_seconds": 7 * DAY}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let left = secs_until(record["expires_at"].as_str().unwrap());
    assert!((7 * DAY - 60..=7 * DAY).contains(&left), "{left}");

    // Rotation keeps the old expiry, whatever the default.
    let (status, rotated, _) = a
        .admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(r#"{"grace_seconds": 0}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["expires_at"], record["expires_at"]);
}

#[tokio::test]
async fn allowlists_are_set_on_create_and_shown() {
    let a = setup().await;
    let body =
        json!({"consumer": "acme", "allowed_ips": ["10.1.2.3/8", "2001:db8::/32", "203.0.113.7"]})
            .to_string();
    let (status, created, _) = a.admin("POST", "/admin/keys", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // Host bits cleared; one address is a /32.
    assert_eq!(
        created["allowed_ips"],
        json!(["10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32"])
    );
    let id = created["id"].as_str().unwrap();
    let (_, shown, _) = a.admin("GET", &format!("/admin/keys/{id}"), None).await;
    assert_eq!(shown["allowed_ips"], created["allowed_ips"]);
    // Without one: anywhere.
    let (_, open, _) = a
        .admin("POST", "/admin/keys", Some(r#"{"consumer":"acme"}"#))
        .await;
    assert_eq!(open["allowed_ips"], json!([]));
    // Bad input: 422 naming the field, nothing created.
    let before = a.cache.resolver().len();
    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    for bad in [
        json!({"consumer": "a", "allowed_ips": ["10.0.0.0/33"]}),
        json!({"consumer": "a", "allowed_ips": ["localhost"]}),
        json!({"consumer": "a", "allowed_ips": [7]}),
        json!({"consumer": "a", "allowed_ips": "10.0.0.0/8"}),
        json!({"consumer": "a", "allowed_ips": too_many}),
    ] {
        let (status, problem, _) = a.admin("POST", "/admin/keys", Some(&bad.to_string())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(problem["field"], "allowed_ips", "{problem}");
    }
    assert_eq!(a.cache.resolver().len(), before);
}

/// `GET /v1/ping` with `key`, from the peer `from`: the status.
async fn ping_from(a: &Admin, key: &str, from: &str) -> StatusCode {
    let mut req = Request::get("/v1/ping")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let peer: std::net::SocketAddr = from.parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    a.app.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn allowlists_change_through_patch_and_a_cached_key_obeys_at_once() {
    let a = setup().await;
    let (id, key, path) = a.create("acme").await;
    // Used from anywhere: the layer caches the key's record.
    assert_eq!(ping_from(&a, &key, "127.0.0.1:4000").await, StatusCode::OK);
    assert_eq!(ping_from(&a, &key, "192.0.2.1:4000").await, StatusCode::OK);

    let body = json!({"allowed_ips": ["10.1.2.3/8", "2001:db8::/32"]}).to_string();
    let (status, record, _) = a.admin("PATCH", &path, Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(
        record["allowed_ips"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    // The very next request from outside is refused, though the key was cached.
    assert_eq!(
        ping_from(&a, &key, "127.0.0.1:4000").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(ping_from(&a, &key, "10.9.8.7:4000").await, StatusCode::OK);
    assert_eq!(
        ping_from(&a, &key, "[2001:db8::1]:4000").await,
        StatusCode::OK
    );
    let (_, shown, _) = a.admin("GET", &path, None).await;
    assert_eq!(shown["allowed_ips"], record["allowed_ips"]);

    // Bad input: 422 naming the field; the list stays, and so do the other fields.
    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    for bad in [
        json!({"allowed_ips": ["10.0.0.0/33"]}),
        json!({"allowed_ips": ["localhost"]}),
        json!({"allowed_ips": [7]}),
        json!({"allowed_ips": "10.0.0.0/8"}),
        json!({"allowed_ips": too_many}),
        json!({"scopes": ["orders:read"], "allowed_ips": ["300.0.0.1"]}),
    ] {
        let (status, problem, ctype) = a.admin("PATCH", &path, Some(&bad.to_string())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["field"], "allowed_ips", "{bad}: {problem}");
    }
    let (_, unchanged, _) = a.admin("GET", &path, None).await;
    assert_eq!(unchanged["allowed_ips"], record["allowed_ips"]);
    assert_eq!(unchanged["scopes"], json!([]), "nothing of a refused PATCH");
    // `null` changes nothing, and alone is nothing to change.
    let (status, _, _) = a
        .admin("PATCH", &path, Some(r#"{"allowed_ips":null}"#))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // `[]`: anywhere again, at once.
    let (status, record, _) = a.admin("PATCH", &path, Some(r#"{"allowed_ips":[]}"#)).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["allowed_ips"], json!([]));
    assert_eq!(ping_from(&a, &key, "127.0.0.1:4000").await, StatusCode::OK);
    let changes: Vec<_> = a
        .audit(&id)
        .await
        .into_iter()
        .filter(|(event, _)| event == "allowed_ips_changed")
        .collect();
    assert_eq!(
        changes,
        [
            ("allowed_ips_changed".to_owned(), a.admin_id.clone()),
            ("allowed_ips_changed".to_owned(), a.admin_id.clone())
        ]
    );
    // A revoked key does not change any more.
    a.admin("POST", &format!("{path}/revoke"), None).await;
    let (status, _, _) = a.admin("PATCH", &path, Some(&body)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

fn sha256_hex(key: &str) -> String {
    tower_api_key::KeyHash::of(key).to_hex()
}

const UUID_KEY: &str = "0b9c6e1e-5e37-4b7e-9f0e-8d4a0f3c2a11";
const DODA_KEY: &str = "doda_5f3c9a1e7b2d4c6e8f0a1b3c5d7e9f21";

#[tokio::test]
async fn import_stores_keys_by_hash_and_they_authenticate_where_foreign_keys_are_accepted() {
    let a = setup().await;
    let body = json!([
        {"hash": sha256_hex(UUID_KEY), "consumer": "legacy", "name": "old billing",
         "scopes": ["orders:read"], "expires_at": "2099-01-01T00:00:00Z",
         "rate_limit": {"requests": 10, "per_seconds": 60, "burst": 20},
         "allowed_ips": ["10.0.0.0/8"]},
        {"hash": sha256_hex(DODA_KEY).to_uppercase(), "consumer": "legacy"},
    ]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["imported"], 2);
    let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 2);
    let (_, first, _) = a
        .admin("GET", &format!("/admin/keys/{}", ids[0]), None)
        .await;
    assert_eq!(first["consumer"], "legacy");
    assert_eq!(first["name"], "old billing");
    assert_eq!(first["start"], "imported");
    assert_eq!(first["scopes"], json!(["orders:read"]));
    assert_eq!(first["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(first["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(first["status"], "active");
    let (_, log, _) = a
        .admin("GET", &format!("/admin/audit?key_id={}", ids[1]), None)
        .await;
    assert_eq!(log[0]["event"], "imported");
    assert_eq!(log[0]["actor"], a.admin_id);

    // The keys themselves work on an API that accepts foreign keys, and only there.
    let foreign = Router::new()
        .route("/v1/ping", get(|| async { "pong" }))
        .layer(ApiKeyLayer::from_cache(a.cache.clone()).accept_foreign_keys(true));
    let ping = |app: Router| async move {
        let req = Request::get("/v1/ping")
            .header("authorization", format!("Bearer {DODA_KEY}"))
            .body(Body::empty())
            .unwrap();
        app.oneshot(req).await.unwrap().status()
    };
    assert_eq!(ping(foreign).await, StatusCode::OK);
    assert_eq!(ping(a.app.clone()).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_bad_or_duplicate_import_row_is_named_and_nothing_is_imported() {
    let a = setup().await;
    let good = |i: usize| json!({"hash": sha256_hex(&format!("legacy-{i}")), "consumer": "legacy"});
    let with = |edit: Value| {
        let mut row = good(99);
        for (k, v) in edit.as_object().unwrap() {
            row[k] = v.clone();
        }
        row
    };
    let stored = sha256_hex(&a.admin_key);
    let cases: Vec<(Value, &str)> = vec![
        (with(json!({"hash": "abc"})), "hash"),
        (with(json!({"hash": "z".repeat(64)})), "hash"),
        (with(json!({"hash": 7})), "hash"),
        (json!({"consumer": "legacy"}), "hash"),
        (json!({"hash": sha256_hex("x")}), "consumer"),
        (with(json!({"consumer": ""})), "consumer"),
        (with(json!({"key": UUID_KEY})), "key"),
        (with(json!({"scopes": ["bad scope"]})), "scopes"),
        (with(json!({"expires_at": "2099-01-01"})), "expires_at"),
        (
            with(json!({"expires_at": "1969-12-31T23:59:59Z"})),
            "expires_at",
        ),
        (with(json!({"consumer": "line\nbreak"})), "consumer"),
        (
            with(json!({"rate_limit": {"requests": -1, "per_seconds": 60}})),
            "rate_limit.requests",
        ),
        (
            with(json!({"rate_limit": {"requests": 1, "per_seconds": 60, "every": 1}})),
            "rate_limit.every",
        ),
        (with(json!({"allowed_ips": ["10.0.0.0/40"]})), "allowed_ips"),
        (json!("not an object"), ""),
    ];
    for (bad, field) in cases {
        // Good rows first: none of them may be stored when row 3 fails.
        let body = json!([good(0), good(1), good(2), bad, good(4)]);
        let (status, v, ctype) = a
            .admin("POST", "/admin/keys/import", Some(&body.to_string()))
            .await;
        let want = if field.is_empty() {
            "[3]".to_owned()
        } else {
            format!("[3].{field}")
        };
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{want}: {v}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(v["field"], want, "{v}");
        assert!(
            !v.to_string().contains(UUID_KEY),
            "a problem never repeats a key"
        );
    }
    // A hash already stored, or twice in the batch (in either case), is a bad row too:
    // 422 naming the later row.
    let body = json!([good(0), good(1), with(json!({"hash": stored}))]);
    let (status, v, ctype) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(v["field"], "[2].hash");
    assert_eq!(
        v["errors"],
        json!([{"row": 2, "field": "[2].hash", "detail": "a key with this hash is already stored"}])
    );
    let upper = good(0)["hash"].as_str().unwrap().to_uppercase();
    let body = json!([good(0), good(1), with(json!({"hash": upper}))]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "[2].hash");
    assert!(v["detail"].as_str().unwrap().contains("row 0"), "{v}");
    assert_eq!(v["errors"][0]["row"], 2, "{v}");

    for (body, want) in [
        ("{\"hash\": 1}", StatusCode::BAD_REQUEST),
        ("[", StatusCode::BAD_REQUEST),
    ] {
        let (status, _, ctype) = a.admin("POST", "/admin/keys/import", Some(body)).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(ctype, "application/problem+json");
    }
    let too_many = Value::from(
        (0..=tower_api_key::admin::MAX_IMPORT_KEYS)
            .map(|i| json!({"hash": format!("{i:064x}"), "consumer": "c"}))
            .collect::<Vec<_>>(),
    );
    let (status, v, ctype) = a
        .admin("POST", "/admin/keys/import", Some(&too_many.to_string()))
        .await;
    // Too many keys is a body of the wrong shape (the schema's maxItems), not too large.
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(ctype, "application/problem+json");
    let huge = format!("[{}]", " ".repeat(tower_api_key::admin::MAX_IMPORT_BYTES));
    let (status, _, ctype) = a.admin("POST", "/admin/keys/import", Some(&huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(ctype, "application/problem+json");

    // Nothing of any of this was stored: only the admin key exists.
    let (_, all, _) = a.admin("GET", "/admin/keys", None).await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let (status, _, _) = a.call("POST", "/admin/keys/import", None, Some("[]")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Every bad row of an import is named in one answer, whatever is wrong with it, and a
/// good row among them is not imported either.
#[tokio::test]
async fn an_import_names_every_bad_row_and_imports_none() {
    let a = setup().await;
    let good = |i: usize| json!({"hash": sha256_hex(&format!("every-{i}")), "consumer": "legacy"});
    let stored = sha256_hex(&a.admin_key);
    let count = |a: &Admin| a.cache.resolver().len();
    let before = count(&a);

    // One good row and two bad ones: nothing imported, both named.
    let body = json!([good(0), {"hash": "abc", "consumer": "legacy"}, {"hash": stored, "consumer": "legacy"}]);
    let (status, v, ctype) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(ctype, "application/problem+json");
    let named = |v: &Value| -> Vec<(u64, String)> {
        v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors: {v}"))
            .iter()
            .map(|e| {
                (
                    e["row"].as_u64().unwrap(),
                    e["field"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        named(&v),
        [(1, "[1].hash".to_owned()), (2, "[2].hash".to_owned())]
    );
    assert_eq!(
        v["field"], "[1].hash",
        "the first bad row, as other 422s name one"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was imported"),
        "{v}"
    );
    assert_eq!(count(&a), before, "the good row was not imported");
    assert!(
        a.cache
            .resolver()
            .resolve(&tower_api_key::KeyHash::from_hex(good(0)["hash"].as_str().unwrap()).unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Every kind at once: a bad member, a repeat (in another case), a hash already
    // stored and a row that is not an object, among good rows.
    let repeat = good(1)["hash"].as_str().unwrap().to_uppercase();
    let body = json!([
        good(1),
        {"hash": sha256_hex("x"), "consumer": ""},
        {"hash": repeat, "consumer": "legacy"},
        good(3),
        {"hash": stored, "consumer": "legacy"},
        "not an object",
        {"hash": sha256_hex("y"), "consumer": "legacy", "rate_limit": {"requests": 0, "per_seconds": 1}},
    ]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        named(&v),
        [
            (1, "[1].consumer".to_owned()),
            (2, "[2].hash".to_owned()),
            (4, "[4].hash".to_owned()),
            (5, "[5]".to_owned()),
            (6, "[6].rate_limit.requests".to_owned()),
        ]
    );
    assert!(
        v["errors"][1]["detail"].as_str().unwrap().contains("row 0"),
        "{v}"
    );
    assert!(
        v["errors"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("already stored"),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("5 rows are wrong"),
        "{v}"
    );
    assert_eq!(count(&a), before);

    // Only hashes wrong (the store finds them, in its transaction): each named.
    let body = json!([good(4), good(5), {"hash": stored, "consumer": "c"}, good(4), good(6)]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        named(&v),
        [(2, "[2].hash".to_owned()), (3, "[3].hash".to_owned())]
    );
    assert_eq!(count(&a), before);
    // Fixed, the same good rows import.
    let body = json!([good(4), good(5), good(6)]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(count(&a), before + 3);
}

#[tokio::test]
async fn imported_keys_get_the_lifetimes_of_new_keys() {
    use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
    let lifetimes = KeyLifetimes::new()
        .with_default(parse_lifetime("1d").unwrap())
        .unwrap()
        .with_max(parse_lifetime("30d").unwrap())
        .unwrap();
    let a = setup_with(tower_api_key::admin::AdminConfig::new().lifetimes(lifetimes)).await;
    let body =
        json!([{"hash": sha256_hex("a"), "consumer": "c", "expires_at": "2099-01-01T00:00:00Z"}]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["field"], "[0].expires_at");
    let body = json!([{"hash": sha256_hex("a"), "consumer": "c"}]);
    let (status, v, _) = a
        .admin("POST", "/admin/keys/import", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, record, _) = a
        .admin(
            "GET",
            &format!("/admin/keys/{}", v["ids"][0].as_str().unwrap()),
            None,
        )
        .await;
    let left = secs_until(record["expires_at"].as_str().unwrap());
    assert!((86_000..=86_400).contains(&left), "{left}");
}

#[tokio::test]
async fn the_webhook_delivery_log_lists_events_and_is_documented() {
    // Without webhooks, the log is not there.
    let a = setup().await;
    let (status, body, _) = a
        .call(
            "GET",
            "/admin/webhooks/deliveries",
            Some(&a.admin_key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "webhooks are not configured");

    let cache = CachedResolver::new(MemoryStore::new());
    let admin = cache
        .create(
            NewKey::new("ops").with_scopes(Scopes::parse(["admin"]).unwrap()),
            "test",
        )
        .await
        .unwrap();
    let config = tower_api_key::admin::AdminConfig::new().webhook_deliveries(cache.clone());
    let a = Admin {
        app: tower_api_key::admin::router_with(cache.clone(), config),
        admin_key: admin.key.expose_secret().to_owned(),
        admin_id: admin.record.id.clone(),
        cache,
    };
    let (status, created, _) = a
        .call(
            "POST",
            "/admin/keys",
            Some(&a.admin_key),
            Some(r#"{"consumer":"acme","name":"ci","scopes":["orders:read"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    let path = format!("/admin/keys/{id}");
    assert_eq!(
        a.call("DELETE", &path, Some(&a.admin_key), None).await.0,
        StatusCode::NO_CONTENT
    );

    let (status, log, _) = a
        .call(
            "GET",
            "/admin/webhooks/deliveries",
            Some(&a.admin_key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = log.as_array().unwrap();
    assert_eq!(
        log.len(),
        3,
        "the admin key's creation, then the key's two events"
    );
    assert_eq!(log[0]["type"], "key.revoked");
    assert_eq!(log[0]["key_id"], id);
    assert_eq!(log[1]["type"], "key.created");
    assert_eq!(log[2]["key_id"], a.admin_id.as_str());
    assert_eq!(log[0]["state"], "pending");
    assert_eq!(log[0]["attempts"], 0);
    assert!(log[0]["id"].as_str().unwrap().starts_with("msg_"));
    assert!(log[0]["next_attempt_at"].as_str().unwrap().ends_with('Z'));
    assert!(log[0]["last_status"].is_null() && log[0]["delivered_at"].is_null());
    let secret = created["key"].as_str().unwrap();
    assert!(!serde_json::to_string(&log).unwrap().contains(secret));

    let (_, one, _) = a
        .call(
            "GET",
            "/admin/webhooks/deliveries?limit=1",
            Some(&a.admin_key),
            None,
        )
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    for bad in ["?limit=0", "?limit=1001"] {
        let path = format!("/admin/webhooks/deliveries{bad}");
        assert_eq!(
            a.call("GET", &path, Some(&a.admin_key), None).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    for bad in ["?limit=x", "?state=failed"] {
        let path = format!("/admin/webhooks/deliveries{bad}");
        assert_eq!(
            a.call("GET", &path, Some(&a.admin_key), None).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(
        a.call("GET", "/admin/webhooks/deliveries", None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let (_, doc, _) = a.call("GET", "/admin/openapi.json", None, None).await;
    let op = &doc["paths"]["/admin/webhooks/deliveries"]["get"];
    assert!(op.is_object(), "the path is in the OpenAPI document");
    assert!(doc["components"]["schemas"]["DeliveryBody"].is_object());
}

#[tokio::test]
async fn settings_tell_the_dashboard_the_lifetimes_and_whether_webhooks_are_on() {
    use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
    let a = setup().await;
    let (status, v, _) = a.admin("GET", "/admin/settings", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v,
        json!({"default_key_ttl_seconds": null, "max_key_ttl_seconds": null, "webhooks": false})
    );
    let lifetimes = KeyLifetimes::new()
        .with_max(parse_lifetime("30d").unwrap())
        .unwrap();
    let a = setup_with(tower_api_key::admin::AdminConfig::new().lifetimes(lifetimes)).await;
    let (_, v, _) = a.admin("GET", "/admin/settings", None).await;
    assert_eq!(v["max_key_ttl_seconds"], 30 * 86_400);
    assert_eq!(
        a.call("GET", "/admin/settings", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

impl Admin {
    /// `GET path` with the admin key: the status, the body and the `Link` header.
    async fn get_page(&self, path: &str) -> (StatusCode, Value, Option<String>) {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {}", self.admin_key))
            .body(Body::empty())
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let link = res
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap(), link)
    }
}

/// The target of a `Link: <target>; rel="next"` header.
fn next_of(link: &str) -> &str {
    let target = link
        .strip_suffix(">; rel=\"next\"")
        .and_then(|l| l.strip_prefix('<'))
        .unwrap_or_else(|| panic!("not a next link: {link}"));
    assert!(target.starts_with("/admin/keys?"), "{target}");
    target
}

#[tokio::test]
async fn listing_searches_and_pages_with_a_link_header() {
    let a = setup().await;
    for i in 0..7 {
        let consumer = if i % 2 == 0 { "Big Corp" } else { "smallco" };
        let body = json!({"consumer": consumer, "name": format!("key {i}")}).to_string();
        let (status, _, _) = a.admin("POST", "/admin/keys", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // Without paging parameters: everything, in one bare array, and no Link.
    let (status, all, link) = a.get_page("/admin/keys").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 8, "the admin key and 7 more");
    assert_eq!(link, None);
    // q: consumer or name, ignoring case; combined with consumer.
    let (_, found, _) = a.get_page("/admin/keys?q=BIG%20c").await;
    let names: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["key 0", "key 2", "key 4", "key 6"]);
    let (_, found, _) = a.get_page("/admin/keys?q=KEY%205").await;
    assert_eq!(found[0]["consumer"], "smallco");
    assert_eq!(found.as_array().unwrap().len(), 1);
    let (_, found, _) = a.get_page("/admin/keys?consumer=smallco&q=key%201").await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    let (_, found, _) = a
        .get_page("/admin/keys?consumer=Big%20Corp&q=key%201")
        .await;
    assert_eq!(found, json!([]));
    // Pages of 3 of a search: the Link header carries the question and the cursor,
    // and the last page has none.
    let mut path = "/admin/keys?q=key&limit=3".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page, link) = a.get_page(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let page = page.as_array().unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|k| k["name"].as_str().unwrap().to_owned()));
        let Some(link) = link else { break };
        let next = next_of(&link);
        assert!(next.contains("q=key&limit=3&after="), "{next}");
        path = next.to_owned();
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..7).map(|i| format!("key {i}")).collect();
    assert_eq!(seen, want, "every match once, oldest first");
    // A consumer with a space and a search with a wildcard come back percent-encoded.
    let (_, _, link) = a
        .get_page("/admin/keys?consumer=Big%20Corp&q=%25&limit=1")
        .await;
    assert_eq!(link, None, "no key has a % in it");
    let (_, page, link) = a.get_page("/admin/keys?consumer=Big%20Corp&limit=1").await;
    assert_eq!(page[0]["name"], "key 0");
    let next = next_of(link.as_deref().unwrap()).to_owned();
    assert!(
        next.starts_with("/admin/keys?consumer=Big%20Corp&limit=1&after="),
        "{next}"
    );
    let (_, page, _) = a.get_page(&next).await;
    assert_eq!(page[0]["name"], "key 2");
    // Bad parameters are problems naming the field.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("after=not-a-cursor", "after"),
    ] {
        let (status, problem, ctype) = a.admin("GET", &format!("/admin/keys?{query}"), None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["field"], field, "{query}");
    }
    let long = "x".repeat(201);
    let (status, problem, _) = a.admin("GET", &format!("/admin/keys?q={long}"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "q");
    // The document names the parameters, their bounds and the Link header.
    let (_, doc, _) = a.call("GET", "/admin/openapi.json", None, None).await;
    let list = &doc["paths"]["/admin/keys"]["get"];
    let params: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["consumer", "q", "limit", "after"]);
    let limit = &list["parameters"][2]["schema"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&json!(1), &json!(1000)),
        "{limit}"
    );
    assert!(
        list["responses"]["200"]["headers"].get("Link").is_some(),
        "{list}"
    );
    for status in ["400", "422"] {
        assert!(list["responses"].get(status).is_some(), "{status}");
    }
    for query in ["page=2", "limit=1&limit=2"] {
        let (status, problem, ctype) = a.admin("GET", &format!("/admin/keys?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(ctype, "application/problem+json");
    }
}

#[tokio::test]
async fn records_show_their_rate_limits() {
    let a = setup().await;
    let body =
        json!({"consumer": "acme", "rate_limit": {"requests": 5, "per_seconds": 60, "burst": 2}});
    let (status, created, _) = a
        .admin("POST", "/admin/keys", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let limits = json!([{"name": "default", "requests": 5, "per_seconds": 60.0, "burst": 2, "window": null}]);
    assert_eq!(created["rate_limits"], limits);
    let path = format!("/admin/keys/{}", created["id"].as_str().unwrap());
    let (_, shown, _) = a.admin("GET", &path, None).await;
    assert_eq!(shown["rate_limits"], limits);
    // A quota, made through the Rust API.
    let quota = tower_api_key::RateLimitPolicy::quota(
        "monthly",
        10_000,
        tower_api_key::ratelimit::QuotaWindow::Month,
    )
    .unwrap();
    let made = a
        .cache
        .create(NewKey::new("acme").with_rate_limits(quota), "test")
        .await
        .unwrap();
    let (_, shown, _) = a
        .admin("GET", &format!("/admin/keys/{}", made.record.id), None)
        .await;
    assert_eq!(
        shown["rate_limits"],
        json!([{"name": "monthly", "requests": 10000, "per_seconds": null, "burst": null, "window": "month"}])
    );
    // None: the service's default.
    let (_, listed, _) = a.admin("GET", "/admin/keys?consumer=ops", None).await;
    assert_eq!(listed[0]["rate_limits"], json!([]));
}

/// The admin API's view of usage over time: a key's series (one bucket per step, zeros
/// included), the series of all keys, and the top consumers and keys.
#[tokio::test]
async fn usage_series_and_top_over_http() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    use tower_api_key::store::{UsageBucket, UsageDelta};

    let a = setup().await;
    let one = a
        .cache
        .create(NewKey::new("acme"), "test")
        .await
        .unwrap()
        .record;
    let two = a
        .cache
        .create(NewKey::new("acme"), "test")
        .await
        .unwrap()
        .record;
    let three = a
        .cache
        .create(NewKey::new("globex"), "test")
        .await
        .unwrap()
        .record;
    // Two hours ago on a whole hour, within the 48 h of minute buckets.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = UNIX_EPOCH + Duration::from_secs(now - now % 3600 - 2 * 3600);
    let minute = |m: u64, counts: (u64, u64, u64, u64)| UsageBucket {
        at: base + Duration::from_secs(60 * m),
        allowed: counts.0,
        rate_limited: counts.1,
        forbidden: counts.2,
        unauthorized: counts.3,
    };
    let delta = |id: &str, minutes: Vec<UsageBucket>| UsageDelta {
        key_id: id.to_owned(),
        requests: minutes.iter().map(|b| b.allowed).sum(),
        rejected: minutes.iter().map(UsageBucket::refused).sum(),
        last_used_at: minutes[0].at,
        minutes,
    };
    a.cache
        .record_usage(&[
            delta(
                &one.id,
                vec![minute(1, (4, 1, 0, 0)), minute(3, (0, 0, 2, 0))],
            ),
            delta(&two.id, vec![minute(1, (0, 0, 0, 3))]),
            delta(&three.id, vec![minute(2, (1, 0, 0, 0))]),
        ])
        .await
        .unwrap();
    let stamp = |m: u64| {
        let secs = base.duration_since(UNIX_EPOCH).unwrap().as_secs() + 60 * m;
        rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
    };
    let range = format!("from={}&to={}", stamp(0), stamp(5));

    let (status, body, _) = a
        .admin(
            "GET",
            &format!("/admin/keys/{}/usage/series?step=minute&{range}", one.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["step"], "minute");
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 5, "one bucket a minute, zeros included");
    assert_eq!(buckets[0]["at"], stamp(0));
    assert_eq!(buckets[1]["allowed"], 4);
    assert_eq!(buckets[1]["rate_limited"], 1);
    assert_eq!(buckets[3]["forbidden"], 2);
    assert_eq!(buckets[2]["allowed"], 0);

    // By hour: one bucket holding it all. By default: the last hour by minute.
    let (_, body, _) = a
        .admin(
            "GET",
            &format!("/admin/keys/{}/usage/series?step=hour&{range}", one.id),
            None,
        )
        .await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(body["buckets"][0]["allowed"], 4);
    assert_eq!(body["buckets"][0]["forbidden"], 2);
    let (_, body, _) = a
        .admin("GET", &format!("/admin/keys/{}/usage/series", one.id), None)
        .await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 60);
    let (_, body, _) = a
        .admin(
            "GET",
            &format!("/admin/keys/{}/usage/series?step=hour", one.id),
            None,
        )
        .await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 7 * 24);

    // All keys, summed.
    let (status, body, _) = a
        .admin("GET", &format!("/admin/usage/series?{range}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let b = &body["buckets"];
    assert_eq!(
        (b[1]["allowed"].clone(), b[1]["unauthorized"].clone()),
        (json!(4), json!(3))
    );
    assert_eq!(b[2]["allowed"], 1);

    // The top consumers and keys.
    let (status, body, _) = a
        .admin(
            "GET",
            &format!("/admin/usage/top?by=consumer&{range}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["consumer"], "acme");
    assert_eq!(body[0]["total"], 10);
    assert_eq!(body[0]["unauthorized"], 3);
    assert_eq!(body[1]["consumer"], "globex");
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (_, body, _) = a
        .admin(
            "GET",
            &format!("/admin/usage/top?by=key&limit=1&{range}"),
            None,
        )
        .await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["key_id"], one.id.as_str());
    assert!(body[0].get("consumer").is_none());

    // Mistakes.
    let (status, body, ctype) = a
        .admin("GET", "/admin/keys/key_nope/usage/series", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(body["status"], 404);
    let path = format!("/admin/keys/{}/usage/series", one.id);
    for (query, field) in [
        ("step=day", "step"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
    ] {
        let (status, body, _) = a.admin("GET", &format!("{path}?{query}"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}");
    }
    // Ranges a schema cannot refuse: reversed is empty, too long answers its last 2 880
    // buckets (the OpenAPI document says so; schemathesis holds the server to it).
    let (status, body, _) = a
        .admin(
            "GET",
            &format!("{path}?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["buckets"], json!([]));
    let (status, body, _) = a
        .admin(
            "GET",
            &format!("{path}?from=2026-10-01T00:00:00Z&to=2026-12-01T00:00:00Z"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2_880);
    assert_eq!(buckets[2_879]["at"], "2026-11-30T23:59:00Z");
    let (status, body, _) = a
        .admin(
            "GET",
            "/admin/usage/top?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    let (status, _, _) = a.admin("GET", &format!("{path}?colour=blue"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for (query, field) in [
        ("by=colour", "by"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
    ] {
        let (status, body, _) = a
            .admin("GET", &format!("/admin/usage/top?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(body["field"], field, "{query}");
    }
    // Admin keys only.
    let user = a.cache.create(NewKey::new("acme"), "test").await.unwrap();
    for path in [path.as_str(), "/admin/usage/series", "/admin/usage/top"] {
        let (status, _, _) = a
            .call("GET", path, Some(user.key.expose_secret()), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn a_key_does_not_change_itself_and_another_admin_key_can() {
    let a = setup().await;
    let own = format!("/admin/keys/{}", a.admin_id);
    for (method, path, body) in [
        ("DELETE", own.clone(), None),
        ("POST", format!("{own}/revoke"), None),
        (
            "POST",
            format!("{own}/rotate"),
            Some(r#"{"grace_seconds": 299}"#),
        ),
        ("PATCH", own.clone(), Some(r#"{"scopes": []}"#)),
        ("PATCH", own.clone(), Some(r#"{"expires_in_seconds": 1}"#)),
    ] {
        let (status, problem, ctype) = a.admin(method, &path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {problem}");
        assert_eq!(ctype, "application/problem+json");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("making the request"),
            "{problem}"
        );
    }
    // Nothing changed: the key still works, with its scope and no expiry.
    let (status, record, _) = a.admin("GET", &own, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["scopes"], json!(["admin"]));
    assert_eq!(record["expires_at"], Value::Null);
    // With a grace that lets its caller switch, a key rotates itself (the dashboard's
    // way); the old one works on through the grace.
    let (status, rotated, _) = a
        .admin(
            "POST",
            &format!("{own}/rotate"),
            Some(r#"{"grace_seconds": 300}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(a.admin("GET", &own, None).await.0, StatusCode::OK);
    // Bad input is still named first.
    let (status, _, _) = a
        .admin(
            "POST",
            &format!("{own}/rotate"),
            Some(r#"{"grace_seconds": -1}"#),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A second admin key may rotate, revoke or delete the first.
    let body = json!({"consumer": "ops", "scopes": ["admin"]}).to_string();
    let (_, second, _) = a.admin("POST", "/admin/keys", Some(&body)).await;
    let second_key = second["key"].as_str().unwrap().to_owned();
    let (status, record, _) = a
        .call("POST", &format!("{own}/revoke"), Some(&second_key), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["status"], "revoked");
    assert_eq!(
        a.admin("GET", "/admin/keys", None).await.0,
        StatusCode::UNAUTHORIZED,
        "the first is revoked"
    );
    let (status, _, _) = a.call("DELETE", &own, Some(&second_key), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_revoked_key_stays_readable_and_changes_no_more() {
    let a = setup().await;
    let (id, key, path) = a.create("acme").await;
    let (status, revoked, ctype) = a.admin("POST", &format!("{path}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(ctype, "application/json");
    assert_eq!(revoked["id"], id.as_str());
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked.get("key").is_none(), "never the key");
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&key), None).await.0,
        StatusCode::UNAUTHORIZED,
        "refused from the next request on"
    );
    // Its record, usage and series: what a revoked (say, leaked) key was used for.
    let (status, record, _) = a.admin("GET", &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["status"], "revoked");
    assert!(record["revoked_at"].is_string(), "{record}");
    assert_eq!(record["revoked_at"], revoked["revoked_at"]);
    for sub in ["/usage", "/usage/series"] {
        assert_eq!(
            a.admin("GET", &format!("{path}{sub}"), None).await.0,
            StatusCode::OK
        );
    }
    // A change is refused: a rotation would bring a successor to life, new scopes or an
    // expiry mean nothing any more.
    for (method, path, body) in [
        ("PATCH", path.clone(), r#"{"scopes": ["orders:read"]}"#),
        ("POST", format!("{path}/rotate"), r#"{"grace_seconds": 0}"#),
    ] {
        let (status, problem, ctype) = a.admin(method, &path, Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {problem}");
        assert_eq!(ctype, "application/problem+json");
        assert!(
            problem["detail"].as_str().unwrap().contains("revoked at"),
            "{problem}"
        );
    }
    // Revoking again is fine and changes nothing, and nothing was rotated.
    let (status, again, _) = a.admin("POST", &format!("{path}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    let (_, list, _) = a.admin("GET", "/admin/keys?consumer=acme", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let events: Vec<String> = a.audit(&id).await.into_iter().map(|(e, _)| e).collect();
    assert_eq!(events, ["created", "revoked"]);
}

#[tokio::test]
async fn a_deleted_key_is_gone_from_its_uri_and_its_log_stays() {
    let a = setup().await;
    let (id, key, path) = a.create("globex").await;
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&key), None).await.0,
        StatusCode::OK
    );
    // Its past requests, as the usage recorder writes them.
    let minute = tower_api_key::store::series::bucket_start(
        tower_api_key::store::UsageStep::Minute,
        std::time::SystemTime::now(),
    );
    let counts = tower_api_key::store::UsageBucket {
        at: minute,
        allowed: 7,
        rate_limited: 0,
        forbidden: 0,
        unauthorized: 0,
    };
    a.cache
        .record_usage(&[tower_api_key::store::UsageDelta {
            key_id: id.clone(),
            requests: 7,
            rejected: 0,
            last_used_at: minute,
            minutes: vec![counts],
        }])
        .await
        .unwrap();

    let (status, body, _) = a.admin("DELETE", &path, None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(
        a.call("GET", "/v1/ping", Some(&key), None).await.0,
        StatusCode::UNAUTHORIZED,
        "revoked from the next request on"
    );
    // Every operation on its URI and below answers as for an unknown key.
    for (method, sub, body) in [
        ("GET", "", None),
        ("PATCH", "", Some(r#"{"scopes": []}"#)),
        ("DELETE", "", None),
        ("POST", "/revoke", None),
        ("POST", "/rotate", Some(r#"{"grace_seconds": 0}"#)),
        ("GET", "/usage", None),
        ("GET", "/usage/series", None),
    ] {
        let (status, problem, ctype) = a.admin(method, &format!("{path}{sub}"), body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {path}{sub}: {problem}"
        );
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["detail"], "no key with this id");
    }
    let (_, list, _) = a.admin("GET", "/admin/keys", None).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != id.as_str()),
        "{list}"
    );
    // What happened to it stays on record, and its traffic in the totals.
    let admin = a.admin_id.clone();
    let expected = ["created", "revoked", "deleted"].map(|e| (e.to_owned(), admin.clone()));
    assert_eq!(a.audit(&id).await, expected);
    let (status, top, _) = a.admin("GET", "/admin/usage/top?by=key", None).await;
    assert_eq!(status, StatusCode::OK, "{top}");
    assert!(
        top.as_array()
            .unwrap()
            .iter()
            .any(|t| t["key_id"] == id.as_str() && t["allowed"] == 7),
        "{top}"
    );
    let (_, series, _) = a.admin("GET", "/admin/usage/series", None).await;
    let allowed: u64 = series["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["allowed"].as_u64().unwrap())
        .sum();
    assert!(allowed >= 7, "{series}");

    // A revoked key is deleted the same way; its revocation is not repeated.
    let (_, other, _) = a
        .admin("POST", "/admin/keys", Some(r#"{"consumer": "globex"}"#))
        .await;
    let other = other["id"].as_str().unwrap().to_owned();
    let other_path = format!("/admin/keys/{other}");
    let (status, _, _) = a.admin("POST", &format!("{other_path}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        a.admin("DELETE", &other_path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        a.admin("GET", &other_path, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, log, _) = a
        .admin("GET", &format!("/admin/audit?key_id={other}"), None)
        .await;
    let events: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "revoked", "deleted"]);
}

#[tokio::test]
async fn whole_numbers_may_have_a_zero_fraction_and_texts_no_control_characters() {
    let a = setup().await;
    let body = json!({"consumer": "acme", "expires_in_seconds": 3600.0,
        "rate_limit": {"requests": 70.0, "per_seconds": 6e1, "burst": 5}});
    let (status, created, _) = a
        .admin("POST", "/admin/keys", Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let record = a.cache.get(&id).await.unwrap().unwrap();
    assert_eq!(
        record.rate_limits.iter().next().unwrap().to_string(),
        "70/60000ms burst 5"
    );
    let (status, rotated, _) = a
        .admin(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(r#"{"grace_seconds": 10.0}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");

    for (body, field) in [
        (
            json!({"consumer": "acme", "expires_in_seconds": 1.5}),
            "expires_in_seconds",
        ),
        (json!({"consumer": "a\u{0}b"}), "consumer"),
        (json!({"consumer": "acme", "name": "two\nlines"}), "name"),
        (json!({"consumer": "\u{3000}"}), "consumer"),
    ] {
        let (status, problem, _) = a
            .admin("POST", "/admin/keys", Some(&body.to_string()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(problem["field"], field, "{body}");
    }
    // Control characters (PostgreSQL's text cannot hold NUL) are answered before any
    // store is asked, the same for every store: an id with one names no key (404), a
    // filter with one is a 422 naming it.
    for path in ["/admin/keys/key%00", "/admin/keys/key%0A/usage"] {
        assert_eq!(
            a.admin("GET", path, None).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    for (path, field) in [
        ("/admin/keys?consumer=a%00", "consumer"),
        ("/admin/keys?q=a%01", "q"),
        ("/admin/audit?key_id=key%00", "key_id"),
    ] {
        let (status, body, _) = a.admin("GET", path, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(body["field"], field, "{path}");
    }
    let (status, body, _) = a.admin("GET", "/admin/keys?after=1.key%00", None).await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("after"))
    );
}

/// A request body that fails to arrive, as one cut off on the wire does.
struct Broken;

impl http_body::Body for Broken {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())))
    }
}

#[tokio::test]
async fn unreadable_bodies_and_paths_are_problems_too() {
    let a = setup().await;
    let bearer = format!("Bearer {}", a.admin_key);
    let send = |method: &str, path: &str, body: Body| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let app = a.app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap();
            let status = res.status();
            let ctype = res.headers().get("content-type").cloned();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let problem: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
            assert_eq!(
                ctype.as_ref().map(|v| v.to_str().unwrap()),
                Some("application/problem+json"),
                "{status}: {problem}"
            );
            assert_eq!(problem["status"], status.as_u16(), "{problem}");
            status
        }
    };
    let id = &a.admin_id;
    // Past axum's 2 MiB default body limit.
    let huge = || Body::from(vec![b' '; 3 << 20]);
    for (method, path) in [
        ("POST", "/admin/keys".to_owned()),
        ("PATCH", format!("/admin/keys/{id}")),
        ("POST", format!("/admin/keys/{id}/rotate")),
    ] {
        assert_eq!(send(method, &path, huge()).await, 413, "{method} {path}");
        let broken = Body::new(Broken);
        assert_eq!(send(method, &path, broken).await, 400, "{method} {path}");
    }
    // Percent-encoded bytes that are not UTF-8 cannot be an id.
    for path in [
        "/admin/keys/%FF%FE",
        "/admin/keys/%FF%FE/usage",
        "/admin/keys/%FF%FE/usage/series",
    ] {
        assert_eq!(send("GET", path, Body::empty()).await, 400, "{path}");
    }
    assert_eq!(
        send("POST", "/admin/keys/%C0/rotate", Body::from("{}")).await,
        400
    );
}
/// Found by fuzzing (`fuzz/checks/admin_api.rs`): a key pasted where it does not
/// belong came back in the 422, quoted as the bad scope, network or member name.
#[tokio::test]
async fn a_misplaced_key_never_comes_back_in_a_problem() {
    let a = setup().await;
    let key = a.admin_key.clone();
    let bad_scope = format!("{key}!");
    let id = a.admin_id.clone();
    let cases = [
        (
            "POST",
            "/admin/keys".to_owned(),
            json!({"consumer": "a", "scopes": [bad_scope]}),
            "scopes",
        ),
        (
            "POST",
            "/admin/keys".to_owned(),
            json!({"consumer": "a", "allowed_ips": [key]}),
            "allowed_ips",
        ),
        (
            "POST",
            "/admin/keys".to_owned(),
            json!({"consumer": "a", key.as_str(): 1}),
            "…",
        ),
        (
            "POST",
            "/admin/keys".to_owned(),
            json!({"consumer": "a", "rate_limit": {key.as_str(): 1}}),
            "rate_limit.…",
        ),
        (
            "PATCH",
            format!("/admin/keys/{id}"),
            json!({"scopes": [bad_scope]}),
            "scopes",
        ),
        (
            "POST",
            format!("/admin/keys/{id}/rotate"),
            json!({key.as_str(): 1}),
            "…",
        ),
        (
            "POST",
            "/admin/keys/import".to_owned(),
            json!([{"hash": "00".repeat(32), "consumer": "a", "scopes": [bad_scope]}]),
            "[0].scopes",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, problem, _) = a.admin(method, &path, Some(&body.to_string())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {problem}"
        );
        assert_eq!(problem["field"], field, "{problem}");
        assert!(!problem.to_string().contains(&key[8..]), "{problem}");
    }
}
