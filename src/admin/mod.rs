//! The admin HTTP API (feature `admin`): an axum [`Router`] that manages keys in any
//! [`KeyStore`], protected by [`ApiKeyLayer`] with the scope `admin`.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /admin/keys` | create a key | 201 with `key`, shown only here |
//! | `GET /admin/keys[?consumer=…]` | list keys | 200, never a key |
//! | `GET /admin/keys/{id}` | one record, with `last_used_at` and `revoked_at` | 200 or 404 |
//! | `PATCH /admin/keys/{id}` `{"scopes"?,"expires_in_seconds"?}` | change scopes or expiry (`null`: never) | 200 with the record |
//! | `DELETE /admin/keys/{id}` | revoke | 204; the key fails from the next request on |
//! | `POST /admin/keys/{id}/rotate` `{"grace_seconds"}` | rotate | 201 with the new key |
//! | `POST /admin/keys/import` `[{"hash","consumer","name"?,"scopes"?,"expires_at"?,"rate_limit"?,"allowed_ips"?}]` | import keys minted elsewhere by their SHA-256 (hex), all or nothing | 201 `{"imported","ids"}`; 422 naming the row (`[3].hash`); 413 beyond 10 000 keys or 16 MiB |
//! | `GET /admin/keys/{id}/usage` | usage | 200 `{"requests","rejected","last_used_at"}` |
//! | `GET /admin/audit[?key_id=…]` | audit log | 200 `[{"at","event","key_id","actor"}]`, `leaked` entries with `url` and `source` |
//! | `GET /admin/settings` | the lifetimes of new keys, and whether webhooks are on (for the dashboard) | 200 `{"default_key_ttl_seconds","max_key_ttl_seconds","webhooks"}` |
//! | `GET /admin/webhooks/deliveries[?limit=…]` | the webhook delivery log, newest first (with [`AdminConfig::webhook_deliveries`]) | 200 `[{"id","type","key_id","state","attempts",…}]`, 404 without webhooks |
//! | `GET /admin/` | the web dashboard (asks for an admin key) | 200 HTML |
//! | `GET /admin/openapi.json` | this API's OpenAPI 3.1 document | 200 JSON |
//!
//! [`secret_scanning`] is a router of its own: GitHub's secret scanning partner endpoint,
//! which revokes (or records) keys found leaked in public code.
//!
//! Input is strict: bad JSON is 400; unknown fields, empty strings, negative or absurd
//! numbers and too many scopes are 422. Both are RFC 9457 problem+json naming the field.
//! Every change is audited with the admin key's id as the actor. Times are RFC 3339 UTC.
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
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{ApiKeyLayer, KeySource, RequireScopeLayer};
use crate::lifetime::KeyLifetimes;
use crate::ratelimit::{RateLimitPolicy, RateLimits};
use crate::record::{Authenticated, KeyRecord, Scope, Scopes};
use crate::resolve::CachedResolver;
use crate::store::{
    AuditEntry, AuditEvent, Delivery, ImportedKey, KeyStore, ListQuery, NewKey, StoreError,
    WebhookOutbox,
};

pub mod secret_scanning;
mod series;

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
    let auth = ApiKeyLayer::from_cache(cache.clone())
        .source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))))
        .trusted_proxies(config.trusted_proxies.iter().copied());
    let protected = Router::new()
        .route("/admin/keys", post(create::<S>).get(list::<S>))
        .route(
            "/admin/keys/{id}",
            get(show::<S>).patch(update::<S>).delete(revoke::<S>),
        )
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

/// The dashboard: one page, HTML, CSS and JavaScript, embedded in the crate.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
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
        DASHBOARD,
    )
        .into_response()
}

/// The admin API's OpenAPI 3.1 document, generated from the handlers and body types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Response {
    match openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None).into_response(),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "tower-api-key admin API", description = "Manage API keys: create, list, revoke, rotate, usage, audit."),
    paths(create, list, show, update, revoke, rotate, import, usage, series::key, series::all, series::top, audit, deliveries, settings, secret_scanning::report),
    components(schemas(
        CreateKeyRequest, ImportKeyRequest, ImportedBody, RateLimitRequest, UpdateKeyRequest, RotateRequest, KeyBody, KeyDetail, CreatedKeyBody,
        UsageBody, series::SeriesBody, series::BucketBody, series::TopBody, AuditEntryBody, DeliveryBody, SettingsBody, ProblemBody, secret_scanning::LeakReportItem, secret_scanning::LeakFeedbackItem
    )),
    modifiers(&KeySchemes),
    security(("bearer" = []), ("api_key" = []))
)]
struct ApiDoc;

/// Declares the two ways to present an admin key: `Authorization: Bearer` (RFC 6750)
/// and the `X-API-Key` header.
struct KeySchemes;

impl Modify for KeySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key")
                    .description(Some("An admin key: `Authorization: Bearer sk_live_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An admin key in the X-API-Key header",
            ))),
        );
    }
}

/// `POST /admin/keys`.
#[allow(dead_code)] // Documents the body; the handler checks it field by field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKeyRequest {
    /// Who the key belongs to (1 to 200 characters).
    consumer: String,
    /// A name (1 to 200 characters).
    name: Option<String>,
    /// Scopes such as `orders:read` (at most 64).
    scopes: Option<Vec<String>>,
    /// Seconds until the key expires (1 to 315360000).
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<u64>,
    /// The key's rate limit; without one, the service's default applies.
    rate_limit: Option<RateLimitRequest>,
    /// Networks (CIDRs such as `10.0.0.0/8` or `2001:db8::/32`, or single addresses) the
    /// key may be used from, at most 64; without them, anywhere.
    allowed_ips: Option<Vec<String>>,
}

/// A rate limit: `requests` per `per_seconds`, up to `burst` at once.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RateLimitRequest {
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    requests: u64,
    #[schema(minimum = 1, maximum = 31_536_000)]
    per_seconds: u64,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    burst: Option<u64>,
}

/// `PATCH /admin/keys/{id}`: at least one field.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateKeyRequest {
    /// The key's scopes from now on (at most 64; `[]` for none).
    scopes: Option<Vec<String>>,
    /// Seconds from now until the key expires (1 to 315360000), or `null`: never.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<Option<u64>>,
}

/// `POST /admin/keys/{id}/rotate`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Seconds the old key keeps working (0 to 2592000).
    #[schema(minimum = 0, maximum = 2_592_000)]
    grace_seconds: u64,
}

/// One key of `POST /admin/keys/import`: a key minted elsewhere, known by its hash.
#[allow(dead_code)] // Documents the body; ImportedKey::from_json checks it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportKeyRequest {
    /// The SHA-256 of the whole key, 64 hex digits. Never the key itself.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    hash: String,
    /// Who the key belongs to (1 to 200 characters).
    consumer: String,
    /// A name (1 to 200 characters).
    name: Option<String>,
    /// Scopes such as `orders:read` (at most 64).
    scopes: Option<Vec<String>>,
    /// When the key stops working: RFC 3339, in the future, within the maximum lifetime.
    expires_at: Option<String>,
    /// The key's rate limit; without one, the service's default applies.
    rate_limit: Option<RateLimitRequest>,
    /// Networks the key may be used from (at most 64); without them, anywhere.
    allowed_ips: Option<Vec<String>>,
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
    id: String,
    start: String,
    consumer: String,
    name: String,
    scopes: Vec<String>,
    /// RFC 3339, UTC.
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    status: String,
    /// The networks the key may be used from (CIDRs); empty: anywhere.
    allowed_ips: Vec<String>,
}

/// A key's record with its last use.
#[derive(Serialize, ToSchema)]
struct KeyDetail {
    #[serde(flatten)]
    record: KeyBody,
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
    requests: u64,
    rejected: u64,
    last_used_at: Option<String>,
}

/// One audit entry.
#[derive(Serialize, ToSchema)]
struct AuditEntryBody {
    at: String,
    /// `created`, `rotated`, `expired_by_rotation`, `revoked`, `expiry_changed`,
    /// `scopes_changed`, `leaked`, `imported`.
    event: String,
    key_id: String,
    actor: String,
    /// For `leaked`: where the key was found (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// For `leaked`: what kind of place that is (`content`, `commit`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// RFC 9457 problem details.
#[allow(dead_code)]
#[derive(ToSchema)]
struct ProblemBody {
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    /// The request field at fault, for 422.
    field: Option<String>,
}

/// An RFC 9457 problem, naming the offending field when there is one.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    detail: String,
    field: Option<String>,
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
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn problem(status: StatusCode, detail: impl Into<String>, field: Option<&str>) -> Problem {
    Problem {
        status,
        detail: detail.into(),
        field: field.map(str::to_owned),
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    problem(StatusCode::UNPROCESSABLE_ENTITY, detail, Some(field))
}

fn store_error(e: StoreError) -> Problem {
    match &e {
        StoreError::NotFound(_) => problem(StatusCode::NOT_FOUND, "no key with this id", None),
        StoreError::Invalid(detail) => problem(StatusCode::BAD_REQUEST, detail, None),
        StoreError::DuplicateHash { index, .. } => {
            let detail = e.to_string();
            invalid(
                &format!("[{index}].hash"),
                format!("{detail}; nothing was imported"),
            )
        }
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
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT => Err(invalid(
            field,
            format!("{field} is longer than {MAX_TEXT} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

/// A whole number in `1..=max` (or `0..=max` when `zero` is allowed).
fn number(
    map: &Map<String, Value>,
    field: &str,
    max: u64,
    zero: bool,
) -> Result<Option<u64>, Problem> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
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
        status: match r.status(SystemTime::now()) {
            crate::KeyStatus::Active => "active",
            crate::KeyStatus::Expired => "expired",
            crate::KeyStatus::Revoked => "revoked",
        }
        .to_owned(),
        allowed_ips: r.allowed_ips.iter().map(ToString::to_string).collect(),
    }
}

fn created_body(created: &crate::store::CreatedKey) -> CreatedKeyBody {
    CreatedKeyBody {
        record: key_body(&created.record),
        key: created.key.expose_secret().to_owned(),
    }
}

#[utoipa::path(post, path = "/admin/keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKeyBody), (status = 400, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn create<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Extension(config): Extension<AdminConfig>,
    body: Bytes,
) -> Response {
    let result = async {
        let map = object(
            &body,
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

#[utoipa::path(post, path = "/admin/keys/import", request_body = Vec<ImportKeyRequest>,
    description = "Imports keys minted elsewhere by their SHA-256, all or nothing: any bad or duplicate row (within the request or already stored) fails the whole import with 422 naming it, e.g. field `[3].hash`. At most 10 000 keys and 16 MiB.",
    responses((status = 201, body = ImportedBody), (status = 400, body = ProblemBody), (status = 413, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn import<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Extension(config): Extension<AdminConfig>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let too_large = || {
            problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "an import carries at most {MAX_IMPORT_KEYS} keys and {MAX_IMPORT_BYTES} bytes; \
                     split it (each part is all or nothing)"
                ),
                None,
            )
        };
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            status => problem(status, e.body_text(), None),
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
        if rows.len() > MAX_IMPORT_KEYS {
            return Err(too_large());
        }
        let now = SystemTime::now();
        let mut keys = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let at = |field: &str| match field {
                "" => format!("[{index}]"),
                field => format!("[{index}].{field}"),
            };
            let mut key = ImportedKey::from_json(row)
                .map_err(|e| invalid(&at(&e.field), format!("key {index}: {}", e.detail)))?;
            // The lifetimes of new keys apply to imported ones: a default when none is
            // given, and the maximum.
            let asked = key
                .expires_at
                .map(|t| t.duration_since(now).unwrap_or_default());
            let life = config
                .lifetimes
                .expires_in(asked)
                .map_err(|e| invalid(&at("expires_at"), format!("key {index}: {e}")))?;
            key.expires_at = life.map(|life| now + life);
            keys.push(key);
        }
        let records = store
            .import(keys, admin.key_id())
            .await
            .map_err(store_error)?;
        let body = ImportedBody {
            imported: records.len(),
            ids: records.into_iter().map(|r| r.id).collect(),
        };
        Ok::<_, Problem>((StatusCode::CREATED, Json(body)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    consumer: Option<String>,
}

#[utoipa::path(get, path = "/admin/keys", params(("consumer" = Option<String>, Query, description = "Only this consumer's keys")),
    responses((status = 200, body = Vec<KeyBody>)))]
async fn list<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the only query parameter is consumer",
            None,
        )
        .into_response();
    };
    let mut query = ListQuery::default().limit(ListQuery::MAX_LIMIT);
    if let Some(c) = params.consumer {
        query = query.consumer(c);
    }
    match store.list(&query).await {
        Ok(page) => Json(page.records.iter().map(key_body).collect::<Vec<_>>()).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

#[utoipa::path(get, path = "/admin/keys/{id}", params(("id" = String, Path)),
    responses((status = 200, body = KeyDetail), (status = 404, body = ProblemBody)))]
async fn show<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Path(id): Path<String>,
) -> Response {
    let record = match store.get(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return problem(StatusCode::NOT_FOUND, "no key with this id", None).into_response();
        }
        Err(e) => return store_error(e).into_response(),
    };
    let usage = store.usage(&id).await.ok().flatten().unwrap_or_default();
    Json(KeyDetail {
        record: key_body(&record),
        last_used_at: usage.last_used_at.map(rfc3339),
    })
    .into_response()
}

#[utoipa::path(patch, path = "/admin/keys/{id}", params(("id" = String, Path)), request_body = UpdateKeyRequest,
    responses((status = 200, body = KeyBody), (status = 400, body = ProblemBody), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn update<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Extension(config): Extension<AdminConfig>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let map = object(&body, &["scopes", "expires_in_seconds"])?;
        if map.is_empty() {
            return Err(invalid("scopes", "give scopes, expires_in_seconds or both"));
        }
        // Both checked before either is changed.
        let scopes = map
            .get("scopes")
            .is_some_and(|v| !v.is_null())
            .then(|| scopes(&map))
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
        let record = record.ok_or_else(|| invalid("scopes", "nothing to change"))?;
        Ok::<_, Problem>(Json(key_body(&record)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(delete, path = "/admin/keys/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked; the key fails from the next request on"), (status = 404, body = ProblemBody)))]
async fn revoke<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Response {
    match store.revoke(&id, admin.key_id()).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

#[utoipa::path(post, path = "/admin/keys/{id}/rotate", params(("id" = String, Path)), request_body = RotateRequest,
    responses((status = 201, body = CreatedKeyBody), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn rotate<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(admin): Extension<Authenticated>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let map = object(&body, &["grace_seconds"])?;
        let grace = number(&map, "grace_seconds", MAX_GRACE, true)?
            .ok_or_else(|| invalid("grace_seconds", "grace_seconds is required"))?;
        let created = store
            .rotate(&id, Duration::from_secs(grace), admin.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>((StatusCode::CREATED, Json(created_body(&created))).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(get, path = "/admin/keys/{id}/usage", params(("id" = String, Path)),
    responses((status = 200, body = UsageBody), (status = 404, body = ProblemBody)))]
async fn usage<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Path(id): Path<String>,
) -> Response {
    match store.usage(&id).await {
        Ok(Some(u)) => Json(UsageBody {
            requests: u.requests,
            rejected: u.rejected,
            last_used_at: u.last_used_at.map(rfc3339),
        })
        .into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "no key with this id", None).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    key_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/audit", params(("key_id" = Option<String>, Query, description = "Only this key's entries")),
    responses((status = 200, body = Vec<AuditEntryBody>)))]
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
    /// `key.created`, `key.rotated`, `key.revoked`, `key.expiring`, `key.expired`,
    /// `key.leaked`.
    r#type: String,
    key_id: String,
    /// When the event happened.
    at: String,
    /// `pending`, `delivered` or `failed` (given up after the retry window).
    state: String,
    attempts: u32,
    /// The receiver's last status, if it answered.
    last_status: Option<u16>,
    /// Why the last attempt failed.
    last_error: Option<String>,
    last_attempt_at: Option<String>,
    /// When a pending event is tried next.
    next_attempt_at: Option<String>,
    delivered_at: Option<String>,
}

/// What the dashboard needs to know of the API's settings.
#[derive(Serialize, ToSchema)]
struct SettingsBody {
    /// The lifetime of a key created without `expires_in_seconds`, if there is one.
    default_key_ttl_seconds: Option<u64>,
    /// The longest lifetime a new key may have, if there is a maximum.
    max_key_ttl_seconds: Option<u64>,
    /// Is `GET /admin/webhooks/deliveries` there?
    webhooks: bool,
}

#[utoipa::path(get, path = "/admin/settings", responses((status = 200, body = SettingsBody)))]
async fn settings(Extension(config): Extension<AdminConfig>) -> Response {
    let lifetimes = &config.lifetimes;
    Json(SettingsBody {
        default_key_ttl_seconds: lifetimes.default_lifetime().map(|d| d.as_secs()),
        max_key_ttl_seconds: lifetimes.max().map(|d| d.as_secs()),
        webhooks: config.deliveries.is_some(),
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesParams {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/admin/webhooks/deliveries",
    params(("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 100)")),
    responses((status = 200, body = Vec<DeliveryBody>), (status = 404, description = "Webhooks are not configured", body = ProblemBody)))]
async fn deliveries(
    Extension(config): Extension<AdminConfig>,
    params: Result<Query<DeliveriesParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the only query parameter is limit, a number",
            None,
        )
        .into_response();
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return invalid("limit", "limit must be between 1 and 1000").into_response();
    }
    let Some(Outbox(outbox)) = &config.deliveries else {
        return problem(StatusCode::NOT_FOUND, "webhooks are not configured", None).into_response();
    };
    match outbox.deliveries(limit).await {
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
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_392_000 + 10 * 3600 + 61);
        assert_eq!(rfc3339(t), "2026-11-23T10:01:01Z");
    }
}
