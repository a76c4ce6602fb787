//! Consumer self-service (feature `admin`): an axum [`Router`] under `/portal/` where a
//! key with the scope [`SELF_SCOPE`] (`keys:self`) manages the keys of its own consumer,
//! and a web page for it.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `GET /portal/keys` | the caller's consumer's keys (deleted ones not) | 200, never a key |
//! | `POST /portal/keys` `{"name"?,"scopes"?,"expires_in_seconds"?,"rate_limit"?,"allowed_ips"?}` | create a key for the caller's consumer | 201 with `key`, shown only here |
//! | `GET /portal/keys/{id}` | one record, with `last_used_at` | 200 or 404 |
//! | `POST /portal/keys/{id}/revoke` (no body) | revoke | 200 with the record; 409 for the consumer's last active `keys:self` key |
//! | `DELETE /portal/keys/{id}` | revoke and delete | 204, then 404 for `/portal/keys/{id}…`; 409 for the consumer's last active `keys:self` key |
//! | `POST /portal/keys/{id}/rotate` `{"grace_seconds"}` | rotate | 201 with the new key |
//! | `GET /portal/keys/{id}/usage/series?step=minute\|hour&from&to` | requests over time by outcome | 200 `{"step","buckets":[{"at","allowed","rate_limited","forbidden","unauthorized"}]}` |
//! | `GET /portal/` | the portal page (asks for a key) | 200 HTML |
//! | `GET /portal/openapi.json` | this API's OpenAPI 3.1 document ([`openapi`]) | 200 JSON |
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
//! - **The last key stays.** Revoking or deleting the consumer's last active key with
//!   `keys:self` answers **409**: the consumer would be locked out. The store checks and
//!   revokes in one transaction ([`KeyStore::revoke_unless_last`],
//!   [`KeyStore::delete_unless_last`]), so two keys that revoke each other at once cannot
//!   both succeed. Rotating it is allowed: its successor carries `keys:self`. A key within
//!   its rotation grace counts as active.
//! - **A key does not lock out its caller.** Revoking or deleting the key that makes the
//!   request answers **409** (another key with `keys:self` can), and so does rotating it
//!   with a `grace_seconds` under 300: the caller gets the new key in the answer and keeps
//!   working with the old one while it switches.
//! - As in the admin API, a revoked key stays readable (its record and usage), and is not
//!   rotated (409); a deleted key is revoked and gone: `/portal/keys/{id}` and its
//!   sub-paths answer 404, and the list leaves it out.
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
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::openapi::{KeyIdPath, RateLimitRequest, RotateRequest};
use super::series::{SeriesBody, SeriesParams, key_series, series_params};
use super::{
    AdminConfig, CreatedKeyBody, KeyBody, KeyDetail, KeyId, MAX_EXPIRES_IN, MAX_GRACE, Problem,
    allowed_ips, created_body, existing_key, invalid, key_body, not_found, number, object, problem,
    rate_limit, rfc3339, scopes, self_rotation, store_error, text, unread, unrevoked,
};
use crate::auth::RequireScopeLayer;
use crate::ratelimit::{Limit, RateLimits};
use crate::record::{Authenticated, KeyRecord, Scope};
use crate::resolve::CachedResolver;
use crate::store::{KeyStore, ListQuery, NewKey};

/// The scope that lets a key manage its own consumer's keys here.
pub const SELF_SCOPE: &str = "keys:self";

/// The most keys `GET /portal/keys` lists (oldest first).
pub const MAX_LISTED: usize = 10_000;

/// The portal over `cache`'s store, for keys with the scope [`SELF_SCOPE`] (read from
/// `Authorization: Bearer` or `X-API-Key`), with the admin API's settings.
pub fn router<S: KeyStore>(cache: CachedResolver<S>, config: AdminConfig) -> Router {
    let auth = super::key_layer(&cache, &config);
    let protected = Router::new()
        .route("/portal/keys", get(list::<S>).post(create::<S>))
        .route("/portal/keys/{id}", get(show::<S>).delete(delete::<S>))
        .route("/portal/keys/{id}/revoke", post(revoke::<S>))
        .route("/portal/keys/{id}/rotate", post(rotate::<S>))
        .route("/portal/keys/{id}/usage/series", get(series::<S>))
        .layer(Extension(config))
        .layer(RequireScopeLayer::new([Scope::from_static(SELF_SCOPE)]))
        .layer(auth)
        .with_state(cache);
    // The page and the description of the API hold no data: they load without a key
    // (the page asks for one).
    Router::new()
        .route("/portal/", get(page))
        .route("/portal/openapi.json", get(openapi_json))
        .merge(protected)
}

/// The portal page: HTML, CSS and JavaScript, embedded in the crate.
const PAGE: &str = include_str!("portal.html");

#[utoipa::path(get, path = "/portal/", tag = "portal", security(()),
    description = "The portal page: asks for a key with keys:self and calls this API.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub(super) async fn page() -> Response {
    super::html_page(PAGE)
}

/// The portal's OpenAPI 3.1 document, served at `GET /portal/openapi.json`: every status
/// each operation answers, every error as problem+json, the rules of every field.
pub fn openapi() -> utoipa::openapi::OpenApi {
    super::openapi::portal_openapi()
}

#[utoipa::path(get, path = "/portal/openapi.json", tag = "portal", security(()),
    responses((status = 200, description = "This document", body = Object)))]
pub(super) async fn openapi_json() -> Response {
    super::document_json(&openapi())
}

/// `POST /portal/keys`: `POST /admin/keys` without `consumer`, and within the calling
/// key's own scopes, expiry, allowlist and rate limit (else 403 naming the field).
#[allow(dead_code)] // Documents the body; the handler checks it field by field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnKeyRequest {
    /// A name.
    #[schema(schema_with = super::openapi::name_schema)]
    name: Option<String>,
    /// Scopes, each granted by the calling key's.
    #[schema(schema_with = super::openapi::scopes_schema)]
    scopes: Option<Vec<String>>,
    /// Seconds until the key expires, no later than the calling key.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<u64>,
    /// The key's rate limit, no looser than the calling key's; without one, the calling
    /// key's.
    rate_limit: Option<RateLimitRequest>,
    /// Networks the key may be used from, within the calling key's; without them, the
    /// calling key's.
    #[schema(schema_with = super::openapi::networks_schema)]
    allowed_ips: Option<Vec<String>>,
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
    // Another consumer's key answers exactly as an unknown one.
    let record = existing_key(store, id).await?;
    if record.consumer != caller.consumer() {
        return Err(not_found());
    }
    Ok(record)
}

/// The key `id` for a rotation: the caller's consumer's (else 404, as an unknown one),
/// and not revoked (else 409, as in the admin API).
async fn changeable<S: KeyStore>(
    store: &CachedResolver<S>,
    caller: &Authenticated,
    id: &str,
) -> Result<KeyRecord, Problem> {
    // Another consumer's key answers as an unknown one, revoked or not.
    unrevoked(owned(store, caller, id).await?)
}

#[utoipa::path(get, path = "/portal/keys", tag = "portal",
    description = "The keys of the calling key's consumer, oldest first (at most 10 000), revoked ones too, deleted ones not.",
    responses((status = 200, description = "The keys", body = Vec<KeyBody>)))]
pub(super) async fn list<S: KeyStore>(
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
    responses(
        (status = 201, description = "Created; `key` is shown here only", body = CreatedKeyBody),
        (status = 400, description = "The body is not a JSON object."),
        (status = 403, description = "The request asks for more than the calling key has (`field` names what)."),
        (status = 413, description = "The body is larger than 2 MiB."),
        (status = 422, description = "A field is wrong (`field` names it), or the lifetime is longer than the server allows.")))]
pub(super) async fn create<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
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

#[utoipa::path(get, path = "/portal/keys/{id}", tag = "portal", params(KeyIdPath),
    responses(
        (status = 200, description = "The key's record", body = KeyDetail),
        (status = 404, description = "No key with this id for your consumer.")))]
pub(super) async fn show<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    KeyId(id): KeyId,
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

#[utoipa::path(post, path = "/portal/keys/{id}/revoke", tag = "portal", params(KeyIdPath),
    description = "Revokes the key: it fails with 401 from the next request on, and stays readable (its record and usage). Takes no body (one sent is not read).",
    responses(
        (status = 200, description = "Revoked (or revoked already, and unchanged); the record", body = KeyBody),
        (status = 404, description = "No key with this id for your consumer (or it was deleted)."),
        (status = 409, description = "The key making the request (a key does not revoke itself), or the consumer's last active key with keys:self.")))]
pub(super) async fn revoke<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    KeyId(id): KeyId,
) -> Response {
    let result = async {
        owned(&store, &caller, &id).await?;
        not_itself(&id, &caller, "revoke")?;
        let record = store
            .revoke_unless_last(&id, SELF_SCOPE, caller.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>(Json(key_body(&record)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(delete, path = "/portal/keys/{id}", tag = "portal", params(KeyIdPath),
    description = "Deletes the key: revokes it (if it is not revoked yet) and removes it: from then on /portal/keys/{id} and its sub-paths answer 404, DELETE too, and the list leaves it out. To revoke a key and keep it readable, POST /portal/keys/{id}/revoke.",
    responses(
        (status = 204, description = "Deleted (and revoked, if it was not); the key fails from the next request on"),
        (status = 404, description = "No key with this id for your consumer, or it was deleted already."),
        (status = 409, description = "The key making the request (a key does not delete itself), or the consumer's last active key with keys:self.")))]
pub(super) async fn delete<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    KeyId(id): KeyId,
) -> Response {
    let result = async {
        owned(&store, &caller, &id).await?;
        not_itself(&id, &caller, "delete")?;
        store
            .delete_unless_last(&id, SELF_SCOPE, caller.key_id())
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>(StatusCode::NO_CONTENT.into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Revoking or deleting itself would lock the caller out (even with another key, the one
/// it holds now): another key with keys:self can (409 otherwise).
fn not_itself(id: &str, caller: &Authenticated, doing: &str) -> Result<(), Problem> {
    if id == caller.key_id() {
        return Err(problem(
            StatusCode::CONFLICT,
            format!(
                "this is the key making the request, and a key does not {doing} itself: \
                 sign in with another key with {SELF_SCOPE} to {doing} it (make one first \
                 if this is your last active key with {SELF_SCOPE})"
            ),
            None,
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/portal/keys/{id}/rotate", tag = "portal", params(KeyIdPath), request_body = RotateRequest,
    description = "Rotates a key the calling key could have made (its scopes, expiry, allowlist and rate limit within the calling key's). The calling key rotates itself with a grace of 300 s or more.",
    responses(
        (status = 201, description = "The new key (shown here only); the old one works until the grace ends", body = CreatedKeyBody),
        (status = 400, description = "The body is not a JSON object."),
        (status = 403, description = "The key to rotate has more than the calling key (`field` names what)."),
        (status = 404, description = "No key with this id for your consumer."),
        (status = 409, description = "The key is revoked, or it is the key making the request and `grace_seconds` is less than 300."),
        (status = 413, description = "The body is larger than 2 MiB."),
        (status = 422, description = "`grace_seconds` is missing or wrong.")))]
pub(super) async fn rotate<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    KeyId(id): KeyId,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let map = object(&body.map_err(unread)?, &["grace_seconds"])?;
        let grace = number(&map, "grace_seconds", MAX_GRACE, true)?
            .ok_or_else(|| invalid("grace_seconds", "grace_seconds is required"))?;
        let record = changeable(&store, &caller, &id).await?;
        self_rotation(&id, &caller, grace)?;
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
    params(KeyIdPath, SeriesParams),
    description = "The key's requests over time by outcome, as GET /admin/keys/{id}/usage/series: one bucket per step from `from` up to `to`, zeros included (at most the last 2 880).",
    responses(
        (status = 200, description = "One bucket per step of the range", body = SeriesBody),
        (status = 400, description = "A query parameter other than `step`, `from` and `to`."),
        (status = 404, description = "No key with this id for your consumer."),
        (status = 422, description = "`step`, `from` or `to` is wrong (`field` names it).")))]
pub(super) async fn series<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    Extension(caller): Extension<Authenticated>,
    KeyId(id): KeyId,
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
