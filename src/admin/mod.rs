//! The admin HTTP API (feature `admin`): an axum [`Router`] that manages keys in any
//! [`KeyStore`], protected by [`ApiKeyLayer`] with the scope `admin`.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /admin/keys` | create a key | 201 with `key`, shown only here |
//! | `GET /admin/keys[?consumer=…&q=…&limit=…&after=…]` | list keys, oldest first, revoked ones too (deleted ones not); `q` searches consumer and name | 200, never a key; `Link: <…?after=…>; rel="next"` when there are more |
//! | `GET /admin/keys/{id}` | one record, with `last_used_at` and `revoked_at` | 200 or 404 |
//! | `PATCH /admin/keys/{id}` `{"scopes"?,"expires_in_seconds"?,"allowed_ips"?}` | change scopes, expiry (`null`: never) or allowlist (`[]`: anywhere); the key's cache entry goes at once | 200 with the record |
//! | `POST /admin/keys/{id}/revoke` (no body) | revoke | 200 with the record; the key fails from the next request on |
//! | `DELETE /admin/keys/{id}` | revoke and delete | 204; the key fails from the next request on, and `/admin/keys/{id}…` answers 404 |
//! | `POST /admin/keys/{id}/rotate` `{"grace_seconds"}` | rotate | 201 with the new key |
//! | `POST /admin/keys/import` `[{"hash","consumer","name"?,"scopes"?,"expires_at"?,"rate_limit"?,"allowed_ips"?}]` | import keys minted elsewhere by their SHA-256 (hex), all or nothing | 201 `{"imported","ids"}`; 422 beyond 10 000 keys, or naming every bad row in `errors` (`[{"row":3,"field":"[3].hash","detail"}]`; a bad member, or a hash already stored or twice in the import); 413 beyond 16 MiB |
//! | `GET /admin/keys/{id}/usage` | usage | 200 `{"requests","rejected","last_used_at"}` |
//! | `GET /admin/audit[?key_id=…]` | audit log | 200 `[{"at","event","key_id","actor"}]`, `leaked` entries with `url` and `source` |
//! | `GET /admin/settings` | the lifetimes of new keys, and whether webhooks are on (for the dashboard) | 200 `{"default_key_ttl_seconds","max_key_ttl_seconds","webhooks"}` |
//! | `GET /admin/webhooks/deliveries[?key_id=…&limit=…]` | the webhook delivery log, newest first, of all keys or of one (with [`AdminConfig::webhook_deliveries`]) | 200 `[{"id","type","key_id","state","attempts",…}]`, 404 without webhooks |
//! | `GET /admin/` | the web dashboard (asks for an admin key) | 200 HTML |
//! | `GET /admin/openapi.json` | this API's OpenAPI 3.1 document ([`openapi`]) | 200 JSON |
//!
//! Revoking (`POST …/revoke`) keeps the key readable: its record, usage and audit log stay
//! at their URIs (what a leaked key was used for after it was revoked is what one wants
//! to see), and it does not change any more (`PATCH` or a rotation answer 409); revoking
//! it again answers 200 with the record as it was. Deleting (`DELETE`) revokes the key
//! too, if it is not revoked yet, and removes it from its URI: from then on every
//! `/admin/keys/{id}` and `/admin/keys/{id}/…` operation answers 404 (`DELETE` again too),
//! and the list leaves it out. The store keeps its row: `GET /admin/audit?key_id=…` still
//! shows its log (with a `deleted` entry), and the usage of all keys still counts its
//! past requests. A key does not revoke, delete or change itself: doing so with the key
//! that makes the request answers 409, and so does rotating it with less than 300 s of
//! grace, so that the API cannot lock its caller out (another admin key, or the `apikey`
//! CLI, can).
//!
//! [`secret_scanning`] is a router of its own: GitHub's secret scanning partner endpoint,
//! which revokes (or records) keys found leaked in public code.
//!
//! Input is strict: bad JSON is 400; unknown fields, empty strings, control characters,
//! negative or absurd numbers and too many scopes are 422. Both are RFC 9457
//! problem+json naming the field; every status each route answers is in the OpenAPI
//! document, which CI holds the server to. Every change is audited with the admin key's
//! id as the actor. Times are RFC 3339 UTC.
//!
//! ```
//! use axum::Router;
//! use tower_api_key::{CachedResolver, MemoryStore};
//!
//! let cache = CachedResolver::new(MemoryStore::new());
//! // Share the cache with the ApiKeyLayer of the API, so that a revocation made here
//! // takes effect there at once.
//! let app: Router = Router::new().merge(tower_api_key::admin::router(cache.clone()));
//! # let _ = app;
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::auth::{ApiKeyLayer, KeySource, RequireScopeLayer};
use crate::lifetime::KeyLifetimes;
use crate::ratelimit::{Limit, QuotaWindow, RateLimitPolicy, RateLimits};
use crate::record::{Authenticated, KeyRecord, Scope, Scopes};
use crate::resolve::CachedResolver;
use crate::store::import::whole_number;
use crate::store::{
    AuditEntry, AuditEvent, Delivery, ImportedKey, KeyStore, ListQuery, NewKey, StoreError,
    WebhookOutbox,
};

mod openapi;
pub mod portal;
pub mod secret_scanning;
mod series;

pub use openapi::openapi;
pub use secret_scanning::{LeakAction, PublicKeys, SecretScanning};

/// The most scopes one key may carry through the admin API.
const MAX_SCOPES: usize = 64;
/// The most networks in one key's allowlist.
const MAX_NETWORKS: usize = 64;
/// The longest consumer or name.
const MAX_TEXT: usize = 200;
/// The longest expiry: ten years.
const MAX_EXPIRES_IN: u64 = 10 * 365 * 86_400;
/// The longest rotation grace period: thirty days.
const MAX_GRACE: u64 = 30 * 86_400;
/// The most keys one import may carry.
pub const MAX_IMPORT_KEYS: usize = 10_000;
/// The largest import body, in bytes: 16 MiB.
pub const MAX_IMPORT_BYTES: usize = 16 << 20;

/// Settings of the admin API: the [lifetimes](KeyLifetimes) of new keys, and the
/// webhook outbox whose delivery log it shows.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AdminConfig {
    lifetimes: KeyLifetimes,
    trusted_proxies: Vec<ipnet::IpNet>,
    deliveries: Option<Outbox>,
}

/// The outbox behind `GET /admin/webhooks/deliveries`.
#[derive(Clone)]
struct Outbox(std::sync::Arc<dyn WebhookOutbox>);

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookOutbox")
    }
}

impl AdminConfig {
    /// The defaults: no default lifetime and no maximum.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long new keys live by default and at most: a create without
    /// `expires_in_seconds` gets the default; a longer one, or a `PATCH` to a longer
    /// expiry or to none, is refused with 422 naming `expires_in_seconds`.
    pub fn lifetimes(mut self, lifetimes: KeyLifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    /// The proxies trusted to name the client in `X-Forwarded-For`, for admin keys with
    /// an allowlist: as [`ApiKeyLayer::trusted_proxies`] (give the API's the same).
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Shows `outbox`'s delivery log at `GET /admin/webhooks/deliveries` (without it,
    /// that path answers 404). Pass the store the webhook deliverer reads.
    pub fn webhook_deliveries(mut self, outbox: impl WebhookOutbox) -> Self {
        self.deliveries = Some(Outbox(std::sync::Arc::new(outbox)));
        self
    }
}

/// The admin API over `cache`'s store, for keys with the scope `admin` (read from
/// `Authorization: Bearer` or `X-API-Key`).
pub fn router<S: KeyStore>(cache: CachedResolver<S>) -> Router {
    router_with(cache, AdminConfig::new())
}

/// The admin API, as [`router`], with settings.
///
/// ```
/// use tower_api_key::admin::{self, AdminConfig};
/// use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
/// use tower_api_key::{CachedResolver, MemoryStore};
///
/// let lifetimes = KeyLifetimes::new()
///     .with_default(parse_lifetime("90d").unwrap())
///     .unwrap()
///     .with_max(parse_lifetime("365d").unwrap())
///     .unwrap();
/// let cache = CachedResolver::new(MemoryStore::new());
/// let app = admin::router_with(cache, AdminConfig::new().lifetimes(lifetimes));
/// # let _: axum::Router = app;
/// ```
pub fn router_with<S: KeyStore>(cache: CachedResolver<S>, config: AdminConfig) -> Router {
    let auth = key_layer(&cache, &config);
    let protected = Router::new()
        .route("/admin/keys", post(create::<S>).get(list::<S>))
        .route(
            "/admin/keys/{id}",
            get(show::<S>).patch(update::<S>).delete(delete::<S>),
        )
        .route("/admin/keys/{id}/revoke", post(revoke::<S>))
        .route("/admin/keys/{id}/rotate", post(rotate::<S>))
        .route(
            "/admin/keys/import",
            post(import::<S>).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/admin/keys/{id}/usage", get(usage::<S>))
        .route("/admin/keys/{id}/usage/series", get(series::key::<S>))
        .route("/admin/usage/series", get(series::all::<S>))
        .route("/admin/usage/top", get(series::top::<S>))
        .route("/admin/audit", get(audit::<S>))
        .route("/admin/webhooks/deliveries", get(deliveries))
        .route("/admin/settings", get(settings))
        .layer(Extension(config))
        .layer(RequireScopeLayer::new([Scope::from_static("admin")]))
        .layer(auth)
        .with_state(cache);
    // The page and the description of the API hold no data: they load without a key
    // (the page asks for one).
    Router::new()
        .route("/admin/", get(dashboard))
        .route("/admin/openapi.json", get(openapi_json))
        .merge(protected)
}

/// The key layer of the admin API and the portal: keys from `Authorization: Bearer` or
/// `X-API-Key`, clients behind the configured proxies.
fn key_layer<S: KeyStore>(cache: &CachedResolver<S>, config: &AdminConfig) -> ApiKeyLayer<S> {
    ApiKeyLayer::from_cache(cache.clone())
        .source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))))
        .trusted_proxies(config.trusted_proxies.iter().copied())
}

/// The dashboard: one page, HTML, CSS and JavaScript, embedded in the crate.
const DASHBOARD: &str = include_str!("dashboard.html");

#[utoipa::path(get, path = "/admin/", security(()),
    description = "The web dashboard: one page that asks for an admin key and calls this API.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn dashboard() -> Response {
    html_page(DASHBOARD)
}

/// A page of the crate's (`body`): everything it needs is in it, and it talks only to
/// this origin.
fn html_page(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is in the page; it talks only to this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

#[utoipa::path(get, path = "/admin/openapi.json", security(()),
    responses((status = 200, description = "This document", body = Object)))]
async fn openapi_json() -> Response {
    document_json(&openapi())
}

/// An OpenAPI document as the answer to a `GET`.
fn document_json(document: &utoipa::openapi::OpenApi) -> Response {
    match document.to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None).into_response(),
    }
}

/// What `POST /admin/keys/import` stored.
#[derive(Serialize, ToSchema)]
struct ImportedBody {
    /// How many keys were imported.
    imported: usize,
    /// Their new ids, in the order of the request.
    ids: Vec<String>,
}

/// A key's record. Never the key.
#[derive(Serialize, ToSchema)]
struct KeyBody {
    /// The key's id (`key_…`).
    #[schema(schema_with = openapi::key_id_schema)]
    id: String,
    /// The key's first characters, for people to recognise it (`sk_live_AbC1`).
    start: String,
    consumer: String,
    /// Empty when the key has none.
    name: String,
    scopes: Vec<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// When the key stops working; `null`: never.
    #[schema(format = DateTime, required = true)]
    expires_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    revoked_at: Option<String>,
    #[schema(value_type = KeyStatusName)]
    status: String,
    /// The networks the key may be used from (CIDRs); empty: anywhere.
    allowed_ips: Vec<String>,
    /// The key's rate limits and quotas; empty: the service's default.
    rate_limits: Vec<LimitBody>,
}

/// One rate limit (`per_seconds`, `burst`) or quota (`window`) of a key.
#[derive(Serialize, ToSchema)]
struct LimitBody {
    /// The policy's name, as in the `RateLimit-Policy` header.
    name: String,
    /// Requests per period or per window.
    requests: u32,
    /// A rate's period, in seconds; `null` for a quota.
    #[schema(required = true)]
    per_seconds: Option<f64>,
    /// How many requests a rate lets through at once; `null` for a quota.
    #[schema(required = true)]
    burst: Option<u32>,
    /// A quota's UTC calendar window; `null` for a rate.
    #[schema(required = true, value_type = Option<QuotaWindowName>)]
    window: Option<String>,
}

/// A quota's UTC calendar window.
#[allow(dead_code)] // Documents `LimitBody::window`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
enum QuotaWindowName {
    Day,
    Month,
}

fn limit_body(policy: &RateLimitPolicy) -> LimitBody {
    let (per_seconds, burst, window, requests) = match policy.limit() {
        Limit::Rate {
            requests,
            per,
            burst,
        } => (Some(per.as_secs_f64()), Some(burst), None, requests),
        Limit::Quota { requests, window } => {
            let window = match window {
                QuotaWindow::Day => "day",
                QuotaWindow::Month => "month",
            };
            (None, None, Some(window.to_owned()), requests)
        }
    };
    LimitBody {
        name: policy.name().to_owned(),
        requests,
        per_seconds,
        burst,
        window,
    }
}

/// A key's state now.
#[allow(dead_code)] // Documents `KeyBody::status`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
enum KeyStatusName {
    Active,
    Expired,
    Revoked,
}

/// A key's record with its last use.
#[derive(Serialize, ToSchema)]
struct KeyDetail {
    #[serde(flatten)]
    record: KeyBody,
    /// The last request it authenticated (written every few seconds); `null`: none yet.
    #[schema(format = DateTime, required = true)]
    last_used_at: Option<String>,
}

/// A key just created or rotated: the only answer that carries the secret.
#[derive(Serialize, ToSchema)]
struct CreatedKeyBody {
    #[serde(flatten)]
    record: KeyBody,
    /// The secret key. Store it now: it is not shown again.
    key: String,
}

/// `GET /admin/keys/{id}/usage`.
#[derive(Serialize, ToSchema)]
struct UsageBody {
    /// Requests the key authenticated.
    requests: u64,
    /// Of those, the ones refused (rate limited, scope missing).
    rejected: u64,
    #[schema(format = DateTime, required = true)]
    last_used_at: Option<String>,
}

/// One audit entry.
#[derive(Serialize, ToSchema)]
struct AuditEntryBody {
    #[schema(format = DateTime)]
    at: String,
    #[schema(value_type = AuditEventName)]
    event: String,
    key_id: String,
    /// Who made the change: an admin key's id, `cli`, `server`, `github-secret-scanning`, ….
    actor: String,
    /// For `leaked`: where the key was found (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    url: Option<String>,
    /// For `leaked`: what kind of place that is (`content`, `commit`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    source: Option<String>,
}

/// What happened to a key.
#[allow(dead_code)] // Documents `AuditEntryBody::event`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
enum AuditEventName {
    Created,
    Rotated,
    ExpiredByRotation,
    Revoked,
    Deleted,
    ExpiryChanged,
    ScopesChanged,
    AllowedIpsChanged,
    Leaked,
    Imported,
}

/// An RFC 9457 problem, naming the offending field when there is one.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    detail: String,
    field: Option<String>,
    /// Each bad row of an import.
    errors: Option<Vec<RowError>>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        if let Some(errors) = self.errors {
            body["errors"] = json!(errors);
        }
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, openapi::PROBLEM_JSON)],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // As the key layer says it when the store fails.
            response.headers_mut().insert(
                header::RETRY_AFTER,
                crate::auth::retry_after_value(crate::auth::DEFAULT_RETRY_AFTER),
            );
        }
        response
    }
}

fn problem(status: StatusCode, detail: impl Into<String>, field: Option<&str>) -> Problem {
    Problem {
        status,
        detail: detail.into(),
        field: field.map(str::to_owned),
        errors: None,
    }
}

fn not_found() -> Problem {
    problem(StatusCode::NOT_FOUND, "no key with this id", None)
}

/// The key at `/admin/keys/{id}`, revoked or not (a revoked key stays readable, with its
/// usage and audit log: that is what revocation leaves to look into), or 404 (no key, or
/// a deleted one: deleting removes it from its URI).
async fn existing_key<S: KeyStore + ?Sized>(store: &S, id: &str) -> Result<KeyRecord, Problem> {
    readable_id(id)?;
    store
        .get(id)
        .await
        .map_err(store_error)?
        .filter(|record| record.deleted_at.is_none())
        .ok_or_else(not_found)
}

/// The key `id` for a change (new scopes, expiry, a rotation): 404 if there is none, 409
/// if it is revoked (a revoked key's successor would bring it back; its scopes no longer
/// matter).
async fn changeable_key<S: KeyStore + ?Sized>(store: &S, id: &str) -> Result<KeyRecord, Problem> {
    unrevoked(existing_key(store, id).await?)
}

/// `record`, unless it is revoked (409: a revoked key does not change any more).
fn unrevoked(record: KeyRecord) -> Result<KeyRecord, Problem> {
    match record.revoked_at {
        Some(at) => Err(problem(
            StatusCode::CONFLICT,
            format!(
                "the key was revoked at {}: it does not change any more (create a new one)",
                rfc3339(at)
            ),
            None,
        )),
        None => Ok(record),
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    problem(StatusCode::UNPROCESSABLE_ENTITY, detail, Some(field))
}

fn store_error(e: StoreError) -> Problem {
    match &e {
        StoreError::NotFound(_) => not_found(),
        StoreError::Invalid(detail) => problem(StatusCode::BAD_REQUEST, detail, None),
        // Not reached from the import, which names each row itself.
        StoreError::DuplicateHashes(_) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}; nothing was imported"),
            None,
        ),
        StoreError::LastKey { scope } => problem(
            StatusCode::CONFLICT,
            format!(
                "this is the last active key with the scope {scope}: revoking it would lock \
                 its consumer out; create or rotate another first"
            ),
            None,
        ),
        _ => {
            tracing::warn!(error = %e, "admin API: key store failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; try again shortly",
                None,
            )
        }
    }
}

/// The `{id}` of a key's path. One that cannot be read (percent-encoded bytes that
/// are not UTF-8) is refused as a problem rather than axum's plain-text rejection.
struct KeyId(String);

impl<St: Send + Sync> axum::extract::FromRequestParts<St> for KeyId {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &St,
    ) -> Result<Self, Problem> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|e| problem(e.status(), e.body_text(), None))
    }
}

/// A body that could not be read (cut short, bad chunked framing, over the size limit),
/// as a problem rather than axum's plain-text rejection.
fn unread(e: BytesRejection) -> Problem {
    problem(e.status(), e.body_text(), None)
}

/// Parses a JSON object, allowing only `allowed` members.
fn object(body: &Bytes, allowed: &[&str]) -> Result<Map<String, Value>, Problem> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
            None,
        )
    })?;
    let Value::Object(map) = value else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
            None,
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let unknown = crate::store::import::shown_member(unknown);
        return Err(invalid(
            unknown,
            format!("unknown field {unknown:?}; allowed: {}", allowed.join(", ")),
        ));
    }
    Ok(map)
}

fn text(map: &Map<String, Value>, field: &str, required: bool) -> Result<Option<String>, Problem> {
    match map.get(field) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(invalid(field, format!("{field} is required"))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(field, format!("{field} must not be empty")))
        }
        // Not in logs, not in a database that cannot hold them (PostgreSQL text: NUL).
        Some(Value::String(s)) if s.chars().any(char::is_control) => Err(invalid(
            field,
            format!("{field} must not contain control characters"),
        )),
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT => Err(invalid(
            field,
            format!("{field} is longer than {MAX_TEXT} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

/// A whole number in `1..=max` (or `0..=max` when `zero` is allowed). `60.0` is one, as
/// JSON Schema's `integer` says.
fn number(
    map: &Map<String, Value>,
    field: &str,
    max: u64,
    zero: bool,
) -> Result<Option<u64>, Problem> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match whole_number(n) {
            Some(v) if v > max => Err(invalid(field, format!("{field} must be at most {max}"))),
            Some(0) if !zero => Err(invalid(field, format!("{field} must be at least 1"))),
            Some(v) => Ok(Some(v)),
            None => Err(invalid(
                field,
                format!("{field} must be a whole number, not negative"),
            )),
        },
        Some(_) => Err(invalid(field, format!("{field} must be a number"))),
    }
}

/// Can a store hold this text? PostgreSQL's text cannot hold NUL: no cursor of ours has one.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// A key id in a path with control characters names no key (ids are `key_…`): 404 for
/// every store, before any of them is asked (PostgreSQL would refuse NUL).
fn readable_id(id: &str) -> Result<(), Problem> {
    if id.chars().any(char::is_control) {
        return Err(not_found());
    }
    Ok(())
}

/// The caller may not revoke, delete or change its own key: that would lock it out (no
/// admin key left that works). Another admin key, or the CLI, can.
fn not_the_caller(id: &str, caller: &Authenticated, doing: &str) -> Result<(), Problem> {
    if id == caller.key_id() {
        return Err(problem(
            StatusCode::CONFLICT,
            format!(
                "this is the key making the request: a key does not {doing} itself through \
                 the admin API (use another admin key, or the apikey CLI)"
            ),
            None,
        ));
    }
    Ok(())
}

/// The shortest grace with which a key may rotate itself, in seconds: the caller gets
/// the new key in the answer, and keeps working with the old one while it switches.
pub(crate) const SELF_ROTATION_GRACE: u64 = 300;

/// A key rotates itself only with [`SELF_ROTATION_GRACE`] or more: with less it would
/// lock its caller out before it could switch.
fn self_rotation(id: &str, caller: &Authenticated, grace: u64) -> Result<(), Problem> {
    if id == caller.key_id() && grace < SELF_ROTATION_GRACE {
        return Err(problem(
            StatusCode::CONFLICT,
            format!(
                "this is the key making the request: it rotates itself only with \
                 grace_seconds of at least {SELF_ROTATION_GRACE}, so that it keeps working \
                 while you switch to the new key"
            ),
            None,
        ));
    }
    Ok(())
}

fn scopes(map: &Map<String, Value>) -> Result<Scopes, Problem> {
    let field = "scopes";
    let list = match map.get(field) {
        None | Some(Value::Null) => return Ok(Scopes::empty()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid(field, "scopes must be an array of strings")),
    };
    if list.len() > MAX_SCOPES {
        return Err(invalid(field, format!("at most {MAX_SCOPES} scopes")));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some(s) => Scope::new(s).map_err(|e| invalid(field, format!("scopes[{i}]: {e}"))),
            None => Err(invalid(field, "scopes must be an array of strings")),
        })
        .collect()
}

fn allowed_ips(map: &Map<String, Value>) -> Result<Vec<ipnet::IpNet>, Problem> {
    let field = "allowed_ips";
    let list = match map.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid(field, "allowed_ips must be an array of strings")),
    };
    if list.len() > MAX_NETWORKS {
        return Err(invalid(field, format!("at most {MAX_NETWORKS} networks")));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some(s) => crate::record::parse_network(s)
                .map_err(|e| invalid(field, format!("allowed_ips[{i}]: {e}"))),
            None => Err(invalid(field, "allowed_ips must be an array of strings")),
        })
        .collect()
}

fn rate_limit(map: &Map<String, Value>) -> Result<RateLimits, Problem> {
    let field = "rate_limit";
    let limit = match map.get(field) {
        None | Some(Value::Null) => return Ok(RateLimits::default()),
        Some(Value::Object(limit)) => limit,
        Some(_) => return Err(invalid(field, "rate_limit must be an object")),
    };
    let allowed = ["requests", "per_seconds", "burst"];
    if let Some(unknown) = limit.keys().find(|k| !allowed.contains(&k.as_str())) {
        let unknown = crate::store::import::shown_member(unknown);
        return Err(invalid(
            &format!("rate_limit.{unknown}"),
            format!("unknown field {unknown:?}"),
        ));
    }
    let requests = number(limit, "requests", 1_000_000_000, false)
        .map_err(|_| {
            invalid(
                "rate_limit.requests",
                "requests must be a whole number from 1 to 1000000000",
            )
        })?
        .ok_or_else(|| invalid("rate_limit.requests", "requests is required"))?;
    let per = number(limit, "per_seconds", 365 * 86_400, false)
        .map_err(|_| {
            invalid(
                "rate_limit.per_seconds",
                "per_seconds must be a whole number from 1 to 31536000",
            )
        })?
        .ok_or_else(|| invalid("rate_limit.per_seconds", "per_seconds is required"))?;
    let burst = number(limit, "burst", 1_000_000_000, false).map_err(|_| {
        invalid(
            "rate_limit.burst",
            "burst must be a whole number from 1 to 1000000000",
        )
    })?;
    let policy = RateLimitPolicy::rate("default", requests as u32, Duration::from_secs(per))
        .and_then(|p| match burst {
            Some(b) => p.with_burst(b as u32),
            None => Ok(p),
        })
        .map_err(|e| invalid(field, e.to_string()))?;
    Ok(policy.into())
}

/// RFC 3339 in UTC, to the second.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = crate::ratelimit::gcra::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn key_body(r: &KeyRecord) -> KeyBody {
    KeyBody {
        id: r.id.clone(),
        start: r.start.clone(),
        consumer: r.consumer.clone(),
        name: r.name.clone(),
        scopes: r.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        created_at: rfc3339(r.created_at),
        expires_at: r.expires_at.map(rfc3339),
        revoked_at: r.revoked_at.map(rfc3339),
        status: r.status(SystemTime::now()).as_str().to_owned(),
        allowed_ips: r.allowed_ips.iter().map(ToString::to_string).collect(),
        rate_limits: r.rate_limits.iter().map(limit_body).collect(),
    }
}

fn created_body(created: &crate::store::CreatedKey) -> CreatedKeyBody {
    CreatedKeyBody {
        record: key_body(&created.record),
        key: created.key.expose_secret().to_owned(),
    }
}

#[utoipa::path(post, path = "/admin/keys", request_body = openapi::CreateKeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown here only", body = CreatedKeyBody),
        (status = 400, description = "The body is not a JSON object."),
        (status = 413, description = "The body is larger than 2 MiB."),
        (status = 422, description = "A field is wrong (`field` names it), or the lifetime is longer than the server allows.")))]
async fn create<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Extension(config): Extension<AdminConfig>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let map = object(
            &body.map_err(unread)?,
            &[
                "consumer",
                "name",
                "scopes",
                "expires_in_seconds",
                "rate_limit",
                "allowed_ips",
            ],
        )?;
        let consumer = text(&map, "consumer", true)?.unwrap_or_default();
        let name = text(&map, "name", false)?.unwrap_or_default();
        let scopes = scopes(&map)?;
        let asked = number(&map, "expires_in_seconds", MAX_EXPIRES_IN, false)?;
        let expires = config
            .lifetimes
            .expires_in(asked.map(Duration::from_secs))
            .map_err(|e| invalid("expires_in_seconds", e.to_string()))?;
        let limits = rate_limit(&map)?;
        let networks = allowed_ips(&map)?;
        let mut new = NewKey::new(consumer)
            .with_name(name)
            .with_scopes(scopes)
            .with_rate_limits(limits)
            .with_allowed_ips(networks);
        if let Some(life) = expires {
            new = new.with_expires_at(SystemTime::now() + life);
        }
        let created = store
            .create(new, admin.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>((StatusCode::CREATED, Json(created_body(&created))).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(post, path = "/admin/keys/import", request_body = openapi::ImportRequest,
    description = "Imports keys minted elsewhere by their SHA-256, all or nothing: any bad row fails the whole import, and the 422 names every bad row in `errors` (`[{\"row\":3,\"field\":\"[3].hash\",\"detail\":…}]`; `field` names the first). A hash already stored, or one of an earlier row (in any case), is a bad row. At most 10 000 keys and 16 MiB.",
    responses(
        (status = 201, description = "Imported", body = ImportedBody),
        (status = 400, description = "The body is not a JSON array."),
        (status = 413, description = "The body is larger than 16 MiB."),
        (status = 422, description = "More than 10 000 keys, or rows are wrong: each is in `errors` (a bad member, an expiry past the longest lifetime, a hash already stored or repeated); nothing was imported.")))]
async fn import<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Extension(config): Extension<AdminConfig>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let split = "split it (each part is all or nothing)";
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an import is at most {MAX_IMPORT_BYTES} bytes; {split}"),
                None,
            ),
            _ => unread(e),
        })?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            problem(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
                None,
            )
        })?;
        let Value::Array(rows) = value else {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON array of keys",
                None,
            ));
        };
        // A count, not a size: the body's shape is wrong (the schema's `maxItems`).
        if rows.len() > MAX_IMPORT_KEYS {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("an import carries at most {MAX_IMPORT_KEYS} keys; {split}"),
                None,
            ));
        }
        let now = SystemTime::now();
        let mut keys = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            match import_row(row, now, &config.lifetimes) {
                Ok(key) => keys.push((index, key)),
                Err((field, detail)) => bad.push(RowError::new(index, &field, detail)),
            }
        }
        if !bad.is_empty() {
            // Name the rows refused for their hash too, so that one answer names every
            // bad row: repeats within the batch, and hashes already stored.
            let mut batch = std::collections::HashMap::new();
            for (index, key) in &keys {
                if let Some(earlier) = batch.insert(key.hash, *index) {
                    let detail = format!("the same key hash as row {earlier}");
                    bad.push(RowError::new(*index, "hash", detail));
                } else if store
                    .resolver()
                    .resolve(&key.hash)
                    .await
                    .map_err(|e| store_error(StoreError::Backend(Box::new(e))))?
                    .is_some()
                {
                    let detail = "a key with this hash is already stored";
                    bad.push(RowError::new(*index, "hash", detail));
                }
            }
            return Err(bad_rows(bad));
        }
        let keys = keys.into_iter().map(|(_, key)| key).collect();
        let records = match store.import(keys, admin.key_id()).await {
            Ok(records) => records,
            // Every row reached the store, in order: its indexes are the body's.
            Err(StoreError::DuplicateHashes(rows)) => {
                let bad = rows.iter().map(|d| {
                    let detail = match d.earlier {
                        Some(earlier) => format!("the same key hash as row {earlier}"),
                        None => "a key with this hash is already stored".to_owned(),
                    };
                    RowError::new(d.index, "hash", detail)
                });
                return Err(bad_rows(bad.collect()));
            }
            Err(e) => return Err(store_error(e)),
        };
        let body = ImportedBody {
            imported: records.len(),
            ids: records.into_iter().map(|r| r.id).collect(),
        };
        Ok::<_, Problem>((StatusCode::CREATED, Json(body)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// One import row, checked, with the lifetimes of new keys applied: or the member at
/// fault (`""` for the row itself) and what is wrong with it.
fn import_row(
    row: &Value,
    now: SystemTime,
    lifetimes: &KeyLifetimes,
) -> Result<ImportedKey, (String, String)> {
    let mut key = ImportedKey::from_json(row).map_err(|e| (e.field, e.detail))?;
    // A key that expired already is imported as it is: expired.
    if key.expires_at.is_some_and(|t| t <= now) {
        return Ok(key);
    }
    // The lifetimes of new keys apply to imported ones: a default when none is given,
    // and the maximum.
    let asked = key
        .expires_at
        .map(|t| t.duration_since(now).unwrap_or_default());
    let life = lifetimes
        .expires_in(asked)
        .map_err(|e| ("expires_at".to_owned(), e.to_string()))?;
    key.expires_at = life.map(|life| now + life);
    Ok(key)
}

/// A bad row of an import, as the 422's `errors` lists it.
#[derive(Debug, Serialize)]
struct RowError {
    /// The row, from 0.
    row: usize,
    /// The member at fault, as `field` names it elsewhere: `[3].hash`, `[3]` for the
    /// row itself.
    field: String,
    /// What is wrong with it (never the value, which could be a key).
    detail: String,
}

impl RowError {
    fn new(row: usize, member: &str, detail: impl Into<String>) -> Self {
        let field = match member {
            "" => format!("[{row}]"),
            member => format!("[{row}].{member}"),
        };
        Self {
            row,
            field,
            detail: detail.into(),
        }
    }
}

/// The 422 of an import with bad rows: `errors` names each (in row order), `field` and
/// `detail` the first, as every other 422 does.
fn bad_rows(mut rows: Vec<RowError>) -> Problem {
    rows.sort_by_key(|r| r.row);
    let first = &rows[0];
    let detail = match rows.len() {
        1 => format!("{}: {}; nothing was imported", first.field, first.detail),
        n => format!(
            "{n} rows are wrong, the first {}: {}; nothing was imported (errors lists them all)",
            first.field, first.detail
        ),
    };
    let mut problem = invalid(&first.field.clone(), detail);
    problem.errors = Some(rows);
    problem
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only this consumer's keys.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    consumer: Option<String>,
    /// Only keys whose consumer or name contains this text, ignoring case.
    #[param(max_length = 200, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    q: Option<String>,
    /// At most this many (default 1000).
    // Read as text, so that a bad one is a 422 naming it rather than a 400.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The cursor of the next page, from the `Link` header of the previous one.
    #[param(pattern = "^[0-9]{1,19}\\.[^\\u0000]+$")]
    after: Option<String>,
}

#[utoipa::path(get, path = "/admin/keys", params(ListParams),
    description = "Keys, oldest first, revoked ones too, a page at a time: when there are more, the `Link` header (RFC 8288) names the next page, `<…?after=…>; rel=\"next\"`.",
    responses(
        (status = 200, description = "A page of keys", body = Vec<KeyBody>,
            headers(("Link" = String, description = "`<…>; rel=\"next\"` when there is a next page"))),
        (status = 400, description = "A query parameter other than `consumer`, `q`, `limit` and `after`, or one twice."),
        (status = 422, description = "`limit`, `q`, `after` or `consumer` is wrong (`field` names it).")))]
async fn list<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        let detail = "the query parameters are consumer, q, limit and after, each at most once";
        return problem(StatusCode::BAD_REQUEST, detail, None).into_response();
    };
    let max = ListQuery::MAX_LIMIT;
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => max,
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => {
            return invalid("limit", format!("limit must be from 1 to {max}")).into_response();
        }
    };
    if params
        .q
        .as_ref()
        .is_some_and(|q| q.chars().count() > MAX_TEXT)
    {
        return invalid("q", format!("q is longer than {MAX_TEXT} characters")).into_response();
    }
    // Ours never hold NUL (PostgreSQL's text cannot): a cursor with one is not ours.
    if params.after.as_deref().is_some_and(|a| !storable(a)) {
        return invalid("after", "malformed list cursor").into_response();
    }
    // A store may not keep control characters (PostgreSQL refuses NUL): name the
    // parameter here rather than leave the store's refusal to look like a bad cursor.
    for (field, value) in [("consumer", &params.consumer), ("q", &params.q)] {
        if value
            .as_ref()
            .is_some_and(|v| v.chars().any(char::is_control))
        {
            return invalid(field, format!("{field} must not hold control characters"))
                .into_response();
        }
    }
    let mut query = ListQuery::default().limit(limit);
    query.consumer.clone_from(&params.consumer);
    query.search.clone_from(&params.q);
    query.after.clone_from(&params.after);
    let page = match store.list(&query).await {
        Ok(page) => page,
        Err(StoreError::Invalid(e)) => return invalid("after", e).into_response(),
        Err(e) => return store_error(e).into_response(),
    };
    let body = Json(page.records.iter().map(key_body).collect::<Vec<_>>());
    let Some(next) = page.next else {
        return body.into_response();
    };
    // The same question, from the cursor on.
    let mut link = String::from("</admin/keys?");
    for (name, value) in [
        ("consumer", &params.consumer),
        ("q", &params.q),
        ("limit", &params.limit),
    ] {
        if let Some(value) = value {
            link.push_str(&format!("{name}={}&", percent_encode(value)));
        }
    }
    link.push_str(&format!("after={}>; rel=\"next\"", percent_encode(&next)));
    ([(header::LINK, link)], body).into_response()
}

/// `text` with every byte but the unreserved characters of RFC 3986 percent-encoded:
/// safe in a query string and in a `Link` header.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[utoipa::path(get, path = "/admin/keys/{id}", params(openapi::KeyIdPath),
    responses(
        (status = 200, description = "The key's record", body = KeyDetail),
        (status = 404, description = "No key with this id.")))]
async fn show<S: KeyStore>(State(store): State<CachedResolver<S>>, KeyId(id): KeyId) -> Response {
    let record = match existing_key(&store, &id).await {
        Ok(record) => record,
        Err(e) => return e.into_response(),
    };
    let usage = store.usage(&id).await.ok().flatten().unwrap_or_default();
    Json(KeyDetail {
        record: key_body(&record),
        last_used_at: usage.last_used_at.map(rfc3339),
    })
    .into_response()
}

#[utoipa::path(patch, path = "/admin/keys/{id}", params(openapi::KeyIdPath), request_body = openapi::UpdateKeyRequest,
    description = "Changes the key's scopes, expiry or networks (`allowed_ips`; `[]`: anywhere). Every field given is checked before any is changed, and each change is audited. The key's cached record goes at once on this instance, and through the change feed on the others: a new allowlist refuses a request from outside it from the next one on.",
    responses(
        (status = 200, description = "Changed; the record", body = KeyBody),
        (status = 400, description = "The body is not a JSON object."),
        (status = 404, description = "No key with this id."),
        (status = 409, description = "This is the key making the request (a key does not change itself), or the key is revoked."),
        (status = 413, description = "The body is larger than 2 MiB."),
        (status = 422, description = "A field is wrong (`field` names it), nothing to change, or the expiry is longer than the server allows.")))]
async fn update<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Extension(config): Extension<AdminConfig>,
    KeyId(id): KeyId,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let fields = ["scopes", "expires_in_seconds", "allowed_ips"];
        let map = object(&body.map_err(unread)?, &fields)?;
        let nothing = "give scopes, expires_in_seconds, allowed_ips or more than one";
        if map.is_empty() {
            return Err(invalid("scopes", nothing));
        }
        // All checked before any is changed.
        let scopes = map
            .get("scopes")
            .is_some_and(|v| !v.is_null())
            .then(|| scopes(&map))
            .transpose()?;
        let networks = map
            .get("allowed_ips")
            .is_some_and(|v| !v.is_null())
            .then(|| allowed_ips(&map))
            .transpose()?;
        let expiry = match map.get("expires_in_seconds") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => number(&map, "expires_in_seconds", MAX_EXPIRES_IN, false)?
                .map(|secs| Some(Duration::from_secs(secs))),
        };
        if let Some(life) = expiry {
            config
                .lifetimes
                .check(life)
                .map_err(|e| invalid("expires_in_seconds", e.to_string()))?;
        }
        let expiry = expiry.map(|life| life.map(|life| SystemTime::now() + life));
        if scopes.is_none() && expiry.is_none() && networks.is_none() {
            return Err(invalid("scopes", nothing));
        }
        changeable_key(&store, &id).await?;
        not_the_caller(&id, &admin, "change")?;
        let mut record = None;
        if let Some(scopes) = scopes {
            record = Some(
                store
                    .set_scopes(&id, scopes, admin.key_id())
                    .await
                    .map_err(store_error)?,
            );
        }
        if let Some(at) = expiry {
            record = Some(
                store
                    .set_expiry(&id, at, admin.key_id())
                    .await
                    .map_err(store_error)?,
            );
        }
        if let Some(networks) = networks {
            record = Some(
                store
                    .set_allowed_ips(&id, networks, admin.key_id())
                    .await
                    .map_err(store_error)?,
            );
        }
        let record = record.ok_or_else(|| invalid("scopes", "nothing to change"))?;
        Ok::<_, Problem>(Json(key_body(&record)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(post, path = "/admin/keys/{id}/revoke", params(openapi::KeyIdPath),
    description = "Revokes the key: it fails with 401 from the next request on. It stays readable: its record, usage and audit log stay at their URIs, and it changes no more (PATCH and rotate answer 409). Takes no body (one sent is not read). A POST rather than a DELETE, because the key is still there afterwards; DELETE removes it.",
    responses(
        (status = 200, description = "Revoked (or revoked already, and unchanged); the record", body = KeyBody),
        (status = 404, description = "No key with this id (or it was deleted)."),
        (status = 409, description = "This is the key making the request: a key does not revoke itself.")))]
async fn revoke<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    KeyId(id): KeyId,
) -> Response {
    let result = async {
        existing_key(&store, &id).await?;
        not_the_caller(&id, &admin, "revoke")?;
        let record = store
            .revoke(&id, admin.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>(Json(key_body(&record)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(delete, path = "/admin/keys/{id}", params(openapi::KeyIdPath),
    description = "Deletes the key: revokes it (if it is not revoked yet: it fails with 401 from the next request on) and removes it from its URI. From then on every /admin/keys/{id} and /admin/keys/{id}/… operation answers 404, DELETE too, and GET /admin/keys leaves it out; its audit log stays under GET /admin/audit?key_id=…, and the usage of all keys still counts its past requests. To revoke a key and keep it readable, POST /admin/keys/{id}/revoke.",
    responses(
        (status = 204, description = "Deleted (and revoked, if it was not); the key fails from the next request on."),
        (status = 404, description = "No key with this id, or it was deleted already."),
        (status = 409, description = "This is the key making the request: a key does not delete itself.")))]
async fn delete<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    KeyId(id): KeyId,
) -> Response {
    if let Err(e) = readable_id(&id).and_then(|()| not_the_caller(&id, &admin, "delete")) {
        return e.into_response();
    }
    match store.delete(&id, admin.key_id()).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

#[utoipa::path(post, path = "/admin/keys/{id}/rotate", params(openapi::KeyIdPath), request_body = openapi::RotateRequest,
    responses(
        (status = 201, description = "The new key (shown here only); the old one works until the grace ends", body = CreatedKeyBody),
        (status = 400, description = "The body is not a JSON object."),
        (status = 404, description = "No key with this id."),
        (status = 409, description = "The key is revoked, or it is the key making the request and `grace_seconds` is less than 300: a key rotates itself only with a grace that lets its caller switch."),
        (status = 413, description = "The body is larger than 2 MiB."),
        (status = 422, description = "`grace_seconds` is missing or wrong.")))]
async fn rotate<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    KeyId(id): KeyId,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let map = object(&body.map_err(unread)?, &["grace_seconds"])?;
        let grace = number(&map, "grace_seconds", MAX_GRACE, true)?
            .ok_or_else(|| invalid("grace_seconds", "grace_seconds is required"))?;
        changeable_key(&store, &id).await?;
        self_rotation(&id, &admin, grace)?;
        let created = store
            .rotate(&id, Duration::from_secs(grace), admin.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>((StatusCode::CREATED, Json(created_body(&created))).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(get, path = "/admin/keys/{id}/usage", params(openapi::KeyIdPath),
    responses(
        (status = 200, description = "The key's usage counters", body = UsageBody),
        (status = 404, description = "No key with this id.")))]
async fn usage<S: KeyStore>(State(store): State<CachedResolver<S>>, KeyId(id): KeyId) -> Response {
    if let Err(e) = existing_key(&store, &id).await {
        return e.into_response();
    }
    match store.usage(&id).await {
        Ok(Some(u)) => Json(UsageBody {
            requests: u.requests,
            rejected: u.rejected,
            last_used_at: u.last_used_at.map(rfc3339),
        })
        .into_response(),
        Ok(None) => not_found().into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Only this key's entries.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    key_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/audit", params(AuditParams),
    responses(
        (status = 200, description = "The audit log, oldest first", body = Vec<AuditEntryBody>),
        (status = 400, description = "A query parameter other than `key_id`."),
        (status = 422, description = "`key_id` holds control characters.")))]
async fn audit<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the only query parameter is key_id",
            None,
        )
        .into_response();
    };
    // As the list's filters: named here, before a store refuses it (PostgreSQL: NUL).
    if params
        .key_id
        .as_deref()
        .is_some_and(|id| id.chars().any(char::is_control))
    {
        return invalid("key_id", "key_id must not hold control characters").into_response();
    }
    match store.audit(params.key_id.as_deref()).await {
        Ok(entries) => Json(entries.iter().map(audit_body).collect::<Vec<_>>()).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

fn audit_body(e: &AuditEntry) -> AuditEntryBody {
    let (url, source) = match &e.event {
        AuditEvent::Leaked { url, source } => (Some(url.clone()), Some(source.clone())),
        _ => (None, None),
    };
    AuditEntryBody {
        at: rfc3339(e.at),
        event: e.event.name().to_owned(),
        key_id: e.key_id.clone(),
        actor: e.actor.clone(),
        url,
        source,
    }
}

/// One webhook event of the delivery log.
#[derive(Serialize, ToSchema)]
struct DeliveryBody {
    /// The message id: the `webhook-id` header, the same on every attempt.
    id: String,
    #[schema(value_type = EventTypeName)]
    r#type: String,
    key_id: String,
    /// When the event happened.
    #[schema(format = DateTime)]
    at: String,
    #[schema(value_type = DeliveryStateName)]
    state: String,
    attempts: u32,
    /// The receiver's last status, if it answered.
    #[schema(required = true)]
    last_status: Option<u16>,
    /// Why the last attempt failed.
    #[schema(required = true)]
    last_error: Option<String>,
    #[schema(format = DateTime, required = true)]
    last_attempt_at: Option<String>,
    /// When a pending event is tried next.
    #[schema(format = DateTime, required = true)]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    delivered_at: Option<String>,
}

/// The kind of a webhook event.
#[allow(dead_code)] // Documents `DeliveryBody::type`.
#[derive(ToSchema)]
enum EventTypeName {
    #[schema(rename = "key.created")]
    Created,
    #[schema(rename = "key.rotated")]
    Rotated,
    #[schema(rename = "key.revoked")]
    Revoked,
    #[schema(rename = "key.expiring")]
    Expiring,
    #[schema(rename = "key.expired")]
    Expired,
    #[schema(rename = "key.leaked")]
    Leaked,
}

/// Where a delivery stands: `failed` is given up after the retry window.
#[allow(dead_code)] // Documents `DeliveryBody::state`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
enum DeliveryStateName {
    Pending,
    Delivered,
    Failed,
}

/// What the dashboard needs to know of the API's settings.
#[derive(Serialize, ToSchema)]
struct SettingsBody {
    /// The lifetime of a key created without `expires_in_seconds`, if there is one.
    #[schema(required = true)]
    default_key_ttl_seconds: Option<u64>,
    /// The longest lifetime a new key may have, if there is a maximum.
    #[schema(required = true)]
    max_key_ttl_seconds: Option<u64>,
    /// Is `GET /admin/webhooks/deliveries` there?
    webhooks: bool,
}

#[utoipa::path(get, path = "/admin/settings",
    responses((status = 200, description = "The settings", body = SettingsBody)))]
async fn settings(Extension(config): Extension<AdminConfig>) -> Response {
    let lifetimes = &config.lifetimes;
    Json(SettingsBody {
        default_key_ttl_seconds: lifetimes.default_lifetime().map(|d| d.as_secs()),
        max_key_ttl_seconds: lifetimes.max().map(|d| d.as_secs()),
        webhooks: config.deliveries.is_some(),
    })
    .into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesParams {
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only this key's events.
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    key_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/webhooks/deliveries", params(DeliveriesParams),
    responses(
        (status = 200, description = "The latest deliveries, newest first", body = Vec<DeliveryBody>),
        (status = 400, description = "A query parameter other than `limit` and `key_id`, or a `limit` that is not a whole number."),
        (status = 404, description = "Webhooks are not configured."),
        (status = 422, description = "`limit` is not between 1 and 1000, or `key_id` holds control characters.")))]
async fn deliveries(
    Extension(config): Extension<AdminConfig>,
    params: Result<Query<DeliveriesParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the query parameters are limit, a number, and key_id",
            None,
        )
        .into_response();
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return invalid("limit", "limit must be between 1 and 1000").into_response();
    }
    // As the audit log's filter: named here, before a store refuses it (PostgreSQL: NUL).
    if params
        .key_id
        .as_deref()
        .is_some_and(|id| id.chars().any(char::is_control))
    {
        return invalid("key_id", "key_id must not hold control characters").into_response();
    }
    let Some(Outbox(outbox)) = &config.deliveries else {
        return problem(StatusCode::NOT_FOUND, "webhooks are not configured", None).into_response();
    };
    match outbox.deliveries(params.key_id.as_deref(), limit).await {
        Ok(log) => Json(log.iter().map(delivery_body).collect::<Vec<_>>()).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

fn delivery_body(d: &Delivery) -> DeliveryBody {
    DeliveryBody {
        id: d.id.clone(),
        r#type: d.event_type.name().to_owned(),
        key_id: d.key_id.clone(),
        at: rfc3339(d.at),
        state: d.state.name().to_owned(),
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        last_attempt_at: d.last_attempt_at.map(rfc3339),
        next_attempt_at: d.next_attempt_at.map(rfc3339),
        delivered_at: d.delivered_at.map(rfc3339),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_is_503_with_retry_after_as_problem_json() {
        let response = store_error(StoreError::Backend("down".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            openapi::PROBLEM_JSON
        );
        let response = not_found().into_response();
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn whole_numbers_as_json_schema_reads_integer() {
        let n = |text: &str| whole_number(&serde_json::from_str(text).unwrap());
        assert_eq!(n("60"), Some(60));
        assert_eq!(n("60.0"), Some(60));
        assert_eq!(n("6e1"), Some(60));
        assert_eq!(n("0.0"), Some(0));
        assert_eq!(n("60.5"), None);
        assert_eq!(n("-1"), None);
        assert_eq!(n("-1.0"), None);
        assert_eq!(n("1e30"), None);
        assert_eq!(n("18446744073709551615"), Some(u64::MAX));
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_392_000 + 10 * 3600 + 61);
        assert_eq!(rfc3339(t), "2026-11-23T10:01:01Z");
    }
}
