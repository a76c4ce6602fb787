//! Consumer self-service (feature `admin`): an axum [`Router`] under `/portal/` where a
//! key with the scope [`SELF_SCOPE`] (`keys:self`) manages the keys of its own consumer,
//! and a web page for it.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `GET /portal/keys` | the caller's consumer's keys | 200, never a key |
//! | `POST /portal/keys` `{"name"?,"scopes"?,"expires_in_seconds"?,"rate_limit"?,"allowed_ips"?}` | create a key for the caller's consumer | 201 with `key`, shown only here |
//! | `GET /portal/keys/{id}` | one record, with `last_used_at` | 200 or 404 |
//! | `DELETE /portal/keys/{id}` | revoke | 204; 409 for the consumer's last active `keys:self` key |
//! | `POST /portal/keys/{id}/rotate` `{"grace_seconds"}` | rotate | 201 with the new key |
//! | `GET /portal/keys/{id}/usage/series?step=minute\|hour&from&to` | requests over time by outcome | 200 `{"step","buckets":[{"at","allowed","rate_limited","forbidden","unauthorized"}]}` |
//! | `GET /portal/` | the portal page (asks for a key) | 200 HTML |
//!
//! The bodies and answers have the shapes of the [admin API](super)'s, and its strict
//! input: bad JSON is 400, a bad field 422, both problem+json naming the field. Without
//! a key the answer is 401; with a key that lacks `keys:self`, 403.
//!
//! The rules:
//!
//! - **Only the caller's consumer.** The consumer of a new key is the caller's (the body
//!   has no `consumer`). Another consumer's key id answers 404 with the same body as an
//!   id that does not exist, so that nobody learns which ids exist elsewhere.
//! - **A key made here can do no more than the key that made it.** Each of its scopes
//!   must be granted by the caller's scopes; its expiry may not be later than the
//!   caller's; its allowlist must lie within the caller's; its rate limit may not be
//!   looser than the caller's. Without `rate_limit` or `allowed_ips` the new key gets the
//!   caller's; without `expires_in_seconds`, the default lifetime, cut to the caller's
//!   expiry. A request for more is refused with **403** problem+json naming the field
//!   (the request is well formed; the calling key may not grant it). Rate limits are per
//!   key: a consumer with two keys has twice the budget.
//! - **Rotation** is of keys the caller could have made (by those rules; 403 naming the
//!   key's first excess otherwise), because the new secret carries the old key's scopes.
//! - **The last key stays.** Revoking the consumer's last active key with `keys:self`
//!   answers **409**: the consumer would be locked out. The store checks and revokes in
//!   one transaction ([`KeyStore::revoke_unless_last`]), so two revocations at once of
//!   the last two such keys cannot both succeed. Rotating it is allowed: its successor
//!   carries `keys:self`. A key within its rotation grace counts as active.
//! - Every change is audited with the calling key's id as the actor.
//!
//! It takes the [`AdminConfig`] of the admin API: the same [lifetimes](AdminConfig::lifetimes)
//! of new keys and [trusted proxies](AdminConfig::trusted_proxies).
//!
//! ```
//! use axum::Router;
//! use tower_api_key::admin::{self, AdminConfig, portal};
//! use tower_api_key::{CachedResolver, MemoryStore};
//!
//! let cache = CachedResolver::new(MemoryStore::new());
//! let config = AdminConfig::new();
//! // One cache for the API, the admin API and the portal: a key revoked in the portal
//! // fails at once everywhere.
//! let app: Router = Router::new()
//!     .merge(admin::router_with(cache.clone(), config.clone()))
//!     .merge(portal::router(cache, config));
//! # let _ = app;
//! ```

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::series::{SeriesBody, SeriesParams, key_series, series_params};
use super::{
    AdminConfig, CreatedKeyBody, KeyBody, KeyDetail, MAX_EXPIRES_IN, MAX_GRACE, Problem,
    ProblemBody, RateLimitRequest, RotateRequest, allowed_ips, created_body, invalid, key_body,
    number, object, problem, rate_limit, rfc3339, scopes, store_error, text,
};
use crate::auth::{ApiKeyLayer, KeySource, RequireScopeLayer};
use crate::ratelimit::{Limit, RateLimits};
use crate::record::{Authenticated, KeyRecord, Scope};
use crate::resolve::CachedResolver;
use crate::store::{KeyStore, ListQuery, NewKey, StoreError};

/// The scope that lets a key manage its own consumer's keys here.
pub const SELF_SCOPE: &str = "keys:self";

/// The most keys `GET /portal/keys` lists (oldest first).
pub const MAX_LISTED: usize = 10_000;

/// The portal over `cache`'s store, for keys with the scope [`SELF_SCOPE`] (read from
/// `Authorization: Bearer` or `X-API-Key`), with the admin API's settings.
pub fn router<S: KeyStore>(cache: CachedResolver<S>, config: AdminConfig) -> Router {
    let auth = ApiKeyLayer::from_cache(cache.clone())
        .source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))))
        .trusted_proxies(config.trusted_proxies.iter().copied());
    let protected = Router::new()
        .route("/portal/keys", get(list::<S>).post(create::<S>))
        .route("/portal/keys/{id}", get(show::<S>).delete(revoke::<S>))
        .route("/portal/keys/{id}/rotate", post(rotate::<S>))
        .route("/portal/keys/{id}/usage/series", get(series::<S>))
        .layer(Extension(config))
        .layer(RequireScopeLayer::new([Scope::from_static(SELF_SCOPE)]))
        .layer(auth)
        .with_state(cache);
    // The page holds no data: it loads without a key (and asks for one).
    Router::new().route("/portal/", get(page)).merge(protected)
}

/// The portal page: HTML, CSS and JavaScript, embedded in the crate.
const PAGE: &str = include_str!("portal.html");

async fn page() -> Response {
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
        PAGE,
    )
        .into_response()
}

/// `POST /portal/keys`: `POST /admin/keys` without `consumer`, and within the calling
/// key's own scopes, expiry, allowlist and rate limit.
#[allow(dead_code)] // Documents the body; the handler checks it field by field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnKeyRequest {
    /// A name (1 to 200 characters).
    name: Option<String>,
    /// Scopes such as `orders:read` (at most 64), each granted by the calling key's.
    scopes: Option<Vec<String>>,
    /// Seconds until the key expires (1 to 315360000), no later than the calling key.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<u64>,
    /// The key's rate limit, no looser than the calling key's; without one, the calling
    /// key's.
    rate_limit: Option<RateLimitRequest>,
    /// Networks the key may be used from (at most 64), within the calling key's; without
    /// them, the calling key's.
    allowed_ips: Option<Vec<String>>,
}

/// 404, the same whether the key does not exist or belongs to another consumer.
fn not_found() -> Problem {
    store_error(StoreError::NotFound(String::new()))
}

/// A request for more than the calling key has.
fn exceeds(field: &str, detail: impl Into<String>) -> Problem {
    problem(StatusCode::FORBIDDEN, detail, Some(field))
}

/// The key `id`, if it belongs to the caller's consumer; else 404.
async fn owned<S: KeyStore>(
    store: &CachedResolver<S>,
    caller: &Authenticated,
    id: &str,
) -> Result<KeyRecord, Problem> {
    match store.get(id).await {
        Ok(Some(record)) if record.consumer == caller.consumer() => Ok(record),
        Ok(_) => Err(not_found()),
        Err(e) => Err(store_error(e)),
    }
}

#[utoipa::path(get, path = "/portal/keys", tag = "portal",
    description = "The keys of the calling key's consumer, oldest first (at most 10 000).",
    responses((status = 200, body = Vec<KeyBody>),
        (status = 401, description = "No valid key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the scope keys:self", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn list<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
) -> Response {
    let mut query = ListQuery::default()
        .consumer(caller.consumer())
        .limit(ListQuery::MAX_LIMIT);
    let mut keys = Vec::new();
    loop {
        let page = match store.list(&query).await {
            Ok(page) => page,
            Err(e) => return store_error(e).into_response(),
        };
        keys.extend(page.records.iter().map(key_body));
        match page.next {
            Some(next) if keys.len() < MAX_LISTED => query = query.after(next),
            _ => break,
        }
    }
    keys.truncate(MAX_LISTED);
    Json(keys).into_response()
}

#[utoipa::path(post, path = "/portal/keys", tag = "portal", request_body = OwnKeyRequest,
    description = "Creates a key for the calling key's consumer, with no more than the calling key has: scopes it grants, an expiry no later, an allowlist within its, a rate limit no looser (without rate_limit or allowed_ips, the calling key's).",
    responses((status = 201, body = CreatedKeyBody),
        (status = 400, description = "Not a JSON object", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the scope keys:self, or the request asks for more than it has (field names which)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (field names it)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn create<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
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
        if map.contains_key("consumer") {
            return Err(invalid(
                "consumer",
                "a key made here belongs to your consumer: leave consumer out",
            ));
        }
        let own = caller.record();
        let name = text(&map, "name", false)?.unwrap_or_default();
        let scopes = scopes(&map)?;
        if let Some(scope) = scopes.iter().find(|s| !own.scopes.grants(s.as_str())) {
            return Err(exceeds(
                "scopes",
                format!(
                    "your key does not grant {:?}: a key made here has only scopes yours grants",
                    scope.as_str()
                ),
            ));
        }
        let now = SystemTime::now();
        let asked = number(&map, "expires_in_seconds", MAX_EXPIRES_IN, false)?;
        let life = config
            .lifetimes
            .expires_in(asked.map(Duration::from_secs))
            .map_err(|e| invalid("expires_in_seconds", e.to_string()))?;
        let mut expires_at = life.map(|life| now + life);
        if let Some(limit) = own.expires_at {
            match expires_at {
                Some(at) if at > limit && asked.is_some() => {
                    return Err(exceeds(
                        "expires_in_seconds",
                        format!(
                            "your key expires at {}: a key made here may not outlive it",
                            rfc3339(limit)
                        ),
                    ));
                }
                Some(at) if at <= limit => {}
                // The default lifetime, or none: cut to the caller's.
                _ => expires_at = Some(limit),
            }
        }
        let networks = match map.get("allowed_ips") {
            None | Some(Value::Null) => own.allowed_ips.clone(),
            Some(_) => {
                let networks = allowed_ips(&map)?;
                if let Some(problem) = networks_exceed(&networks, &own.allowed_ips) {
                    return Err(exceeds("allowed_ips", problem));
                }
                networks
            }
        };
        let limits = limits_for(&map, &own.rate_limits)?;
        let mut new = NewKey::new(caller.consumer())
            .with_name(name)
            .with_scopes(scopes)
            .with_rate_limits(limits)
            .with_allowed_ips(networks);
        if let Some(at) = expires_at {
            new = new.with_expires_at(at);
        }
        let created = store
            .create(new, caller.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>((StatusCode::CREATED, Json(created_body(&created))).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Why `networks` reach beyond `own` (empty: anywhere), if they do.
fn networks_exceed(networks: &[ipnet::IpNet], own: &[ipnet::IpNet]) -> Option<String> {
    if own.is_empty() {
        return None;
    }
    let yours = own.iter().map(ToString::to_string).collect::<Vec<_>>();
    let yours = yours.join(", ");
    if networks.is_empty() {
        return Some(format!(
            "your key may be used only from {yours}: a key made here may not be used from anywhere"
        ));
    }
    networks
        .iter()
        .find(|n| !own.iter().any(|o| o.contains(*n)))
        .map(|n| format!("{n} is not within your key's networks ({yours})"))
}

/// The rate limits of a new key: the caller's, or the asked `rate_limit` with the
/// caller's quotas, if that is no looser than the caller's.
fn limits_for(map: &Map<String, Value>, own: &RateLimits) -> Result<RateLimits, Problem> {
    if map.get("rate_limit").is_none_or(Value::is_null) {
        return Ok(own.clone());
    }
    let asked = rate_limit(map)?;
    if own.is_empty() {
        return Err(exceeds(
            "rate_limit",
            "your key has the service's default rate limit, and so has a key made here; \
             only an operator sets another",
        ));
    }
    let quotas = own
        .iter()
        .filter(|p| matches!(p.limit(), Limit::Quota { .. }))
        .filter(|q| asked.iter().all(|p| p.name() != q.name()));
    let limits = RateLimits::new(asked.iter().chain(quotas).cloned())
        .map_err(|e| invalid("rate_limit", e.to_string()))?;
    match looser(&limits, own) {
        Some(why) => Err(exceeds(
            "rate_limit",
            format!("{why}: a key made here may not have a looser limit"),
        )),
        None => Ok(limits),
    }
}

/// Why `limits` is looser than `own`, if it is: some limit of `own` has nothing at least
/// as strict in `limits`. Empty `own` is the service's default, which `limits` must share.
fn looser(limits: &RateLimits, own: &RateLimits) -> Option<String> {
    if own.is_empty() {
        return (!limits.is_empty())
            .then(|| "yours has the service's default rate limit, this key another".to_owned());
    }
    own.iter()
        .find(|mine| {
            !limits
                .iter()
                .any(|p| at_least_as_strict(p.limit(), mine.limit()))
        })
        .map(|mine| format!("your key's limit {mine} is stricter"))
}

fn at_least_as_strict(a: Limit, b: Limit) -> bool {
    match (a, b) {
        (
            Limit::Rate {
                requests: r1,
                per: p1,
                burst: b1,
            },
            Limit::Rate {
                requests: r2,
                per: p2,
                burst: b2,
            },
        ) => {
            // r1 / p1 <= r2 / p2, without division.
            u128::from(r1) * p2.as_nanos() <= u128::from(r2) * p1.as_nanos() && b1 <= b2
        }
        (
            Limit::Quota {
                requests: r1,
                window: w1,
            },
            Limit::Quota {
                requests: r2,
                window: w2,
            },
        ) => w1 == w2 && r1 <= r2,
        _ => false,
    }
}

/// Why the caller could not have made `record` (the field at fault, and the detail).
fn beyond(record: &KeyRecord, own: &KeyRecord) -> Option<(&'static str, String)> {
    if let Some(scope) = record
        .scopes
        .iter()
        .find(|s| !own.scopes.grants(s.as_str()))
    {
        return Some((
            "scopes",
            format!(
                "this key has the scope {:?}, which yours does not grant",
                scope.as_str()
            ),
        ));
    }
    if let Some(limit) = own.expires_at
        && record.expires_at.is_none_or(|at| at > limit)
    {
        return Some((
            "expires_at",
            format!(
                "this key outlives yours (which expires at {})",
                rfc3339(limit)
            ),
        ));
    }
    if let Some(problem) = networks_exceed(&record.allowed_ips, &own.allowed_ips) {
        return Some(("allowed_ips", problem));
    }
    looser(&record.rate_limits, &own.rate_limits).map(|why| {
        (
            "rate_limit",
            format!("this key's rate limit is looser ({why})"),
        )
    })
}

#[utoipa::path(get, path = "/portal/keys/{id}", tag = "portal", params(("id" = String, Path)),
    responses((status = 200, body = KeyDetail),
        (status = 401, description = "No valid key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the scope keys:self", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No key with this id for your consumer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn show<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Response {
    let record = match owned(&store, &caller, &id).await {
        Ok(record) => record,
        Err(problem) => return problem.into_response(),
    };
    let usage = store.usage(&id).await.ok().flatten().unwrap_or_default();
    Json(KeyDetail {
        record: key_body(&record),
        last_used_at: usage.last_used_at.map(rfc3339),
    })
    .into_response()
}

#[utoipa::path(delete, path = "/portal/keys/{id}", tag = "portal", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked; the key fails from the next request on"),
        (status = 401, description = "No valid key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the scope keys:self", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No key with this id for your consumer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The consumer's last active key with keys:self", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn revoke<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        owned(&store, &caller, &id).await?;
        match store
            .revoke_unless_last(&id, SELF_SCOPE, caller.key_id())
            .await
        {
            Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(StoreError::LastKey { .. }) => Err(problem(
                StatusCode::CONFLICT,
                format!(
                    "this is your last active key with the scope {SELF_SCOPE}: revoking it \
                     would lock you out; create or rotate another first"
                ),
                None,
            )),
            Err(e) => Err(store_error(e)),
        }
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(post, path = "/portal/keys/{id}/rotate", tag = "portal", params(("id" = String, Path)), request_body = RotateRequest,
    description = "Rotates a key the calling key could have made (its scopes, expiry, allowlist and rate limit within the calling key's).",
    responses((status = 201, body = CreatedKeyBody),
        (status = 400, description = "Not a JSON object", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the scope keys:self, or the key to rotate has more than it (field names what)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No key with this id for your consumer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "grace_seconds is missing or invalid", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn rotate<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let map = object(&body, &["grace_seconds"])?;
        let grace = number(&map, "grace_seconds", MAX_GRACE, true)?
            .ok_or_else(|| invalid("grace_seconds", "grace_seconds is required"))?;
        let record = owned(&store, &caller, &id).await?;
        if let Some((field, detail)) = beyond(&record, caller.record()) {
            return Err(exceeds(
                field,
                format!("{detail}: the new key would have it too, so only an operator rotates it"),
            ));
        }
        let created = store
            .rotate(&id, Duration::from_secs(grace), caller.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>((StatusCode::CREATED, Json(created_body(&created))).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(get, path = "/portal/keys/{id}/usage/series", tag = "portal",
    params(("id" = String, Path), SeriesParams),
    description = "The key's requests over time by outcome, as GET /admin/keys/{id}/usage/series: one bucket per step from `from` up to `to`, zeros included.",
    responses((status = 200, body = SeriesBody),
        (status = 400, description = "A query parameter that is not one of step, from and to", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the scope keys:self", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No key with this id for your consumer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad step or time, or more than 2880 buckets (field names it)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = ProblemBody, content_type = "application/problem+json")))]
async fn series<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    Path(id): Path<String>,
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> Response {
    let result = async {
        // Ownership first: another consumer's key answers 404 whatever the query.
        owned(&store, &caller, &id).await?;
        let params = series_params(params)?;
        key_series(&store, &id, &params).await
    };
    match result.await {
        Ok(body) => Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{QuotaWindow, RateLimitPolicy};

    fn rate(requests: u32, secs: u64, burst: u32) -> RateLimitPolicy {
        RateLimitPolicy::rate("default", requests, Duration::from_secs(secs))
            .unwrap()
            .with_burst(burst)
            .unwrap()
    }

    fn daily(requests: u32) -> RateLimitPolicy {
        RateLimitPolicy::quota("daily", requests, QuotaWindow::Day).unwrap()
    }

    fn limits(policies: impl IntoIterator<Item = RateLimitPolicy>) -> RateLimits {
        RateLimits::new(policies).unwrap()
    }

    #[test]
    fn a_limit_is_no_looser_when_every_own_limit_is_matched() {
        let own = limits([rate(100, 60, 10), daily(1000)]);
        // Slower, smaller burst and a smaller quota: fine.
        assert!(looser(&limits([rate(50, 60, 5), daily(500)]), &own).is_none());
        // The same rate written over another period.
        assert!(looser(&limits([rate(200, 120, 10), daily(1000)]), &own).is_none());
        // Faster, a bigger burst, no quota, a bigger quota: each is looser.
        for other in [
            limits([rate(101, 60, 10), daily(1000)]),
            limits([rate(100, 60, 11), daily(1000)]),
            limits([rate(100, 60, 10)]),
            limits([rate(100, 60, 10), daily(1001)]),
            RateLimits::default(),
        ] {
            assert!(looser(&other, &own).is_some(), "{other:?}");
        }
        // A monthly quota does not stand in for a daily one.
        let monthly = RateLimitPolicy::quota("monthly", 1, QuotaWindow::Month).unwrap();
        assert!(looser(&limits([rate(1, 60, 1), monthly]), &own).is_some());
    }

    #[test]
    fn networks_must_lie_within_the_callers() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let own = [net("10.0.0.0/8")];
        assert_eq!(networks_exceed(&[net("10.1.0.0/16")], &own), None);
        assert!(networks_exceed(&[net("10.1.0.0/16"), net("11.0.0.0/8")], &own).is_some());
        assert!(networks_exceed(&[], &own).is_some(), "anywhere is wider");
        assert_eq!(networks_exceed(&[], &[]), None);
        assert_eq!(networks_exceed(&[net("0.0.0.0/0")], &[]), None);
    }
}
