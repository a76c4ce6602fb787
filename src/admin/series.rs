//! Usage over time in the admin API: a key's series, the series of all keys, and the
//! top consumers or keys over a range ([`crate::store::series`]).

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{KeyId, Problem, invalid, problem, rfc3339, store_error};
use crate::resolve::CachedResolver;
use crate::store::series::{bucket_start, fill};
use crate::store::{KeyStore, UsageBucket, UsageStep, UsageTopBy};

/// The most buckets one series answer holds: 48 hours of minutes.
pub(crate) const MAX_BUCKETS: usize = 2_880;
/// Buckets in a series when `from` is not given: the last hour by minute, or the
/// last 7 days by hour.
const DEFAULT_MINUTES: u32 = 60;
const DEFAULT_HOURS: u32 = 7 * 24;
/// Entries in a ranking when `limit` is not given, and the most it may ask for.
const DEFAULT_TOP: usize = 10;
const MAX_TOP: usize = 100;
/// The range of a ranking when `from` is not given.
const DEFAULT_TOP_RANGE: Duration = Duration::from_secs(86_400);

/// The query of a series.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SeriesParams {
    /// `minute` (default; kept 48 h) or `hour` (kept 90 days).
    #[param(pattern = "^(minute|hour)$")]
    step: Option<String>,
    /// The first bucket: the one holding this RFC 3339 time (default: 60 minutes or
    /// 7 days before `to`). A range of more than 2 880 buckets answers its last 2 880;
    /// `from` after `to` is an empty range.
    #[param(format = DateTime, pattern = "^(?:197[1-9]|19[89][0-9]|[2-9][0-9]{3})-")]
    from: Option<String>,
    /// The end (excluded) of the range, RFC 3339 (default: now).
    #[param(format = DateTime, pattern = "^(?:197[1-9]|19[89][0-9]|[2-9][0-9]{3})-")]
    to: Option<String>,
}

/// The query of a ranking.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TopParams {
    /// `consumer` (default) or `key`.
    #[param(pattern = "^(consumer|key)$")]
    by: Option<String>,
    /// The start of the range, RFC 3339 (default: 24 hours before `to`). Within the
    /// last 48 hours the ranking counts minute buckets, before that hour buckets. After
    /// `to`: an empty range.
    #[param(format = DateTime, pattern = "^(?:197[1-9]|19[89][0-9]|[2-9][0-9]{3})-")]
    from: Option<String>,
    /// The end (excluded) of the range, RFC 3339 (default: now).
    #[param(format = DateTime, pattern = "^(?:197[1-9]|19[89][0-9]|[2-9][0-9]{3})-")]
    to: Option<String>,
    /// How many entries (default 10).
    // Read as text, so that a bad one is a 422 naming it rather than a 400.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// One bucket of a series.
#[derive(Serialize, ToSchema)]
pub(crate) struct BucketBody {
    /// The bucket's start, RFC 3339.
    #[schema(format = DateTime)]
    at: String,
    allowed: u64,
    rate_limited: u64,
    forbidden: u64,
    unauthorized: u64,
}

/// A series: one bucket per step, zeros included.
#[derive(Serialize, ToSchema)]
pub(crate) struct SeriesBody {
    #[schema(pattern = "^(minute|hour)$")]
    step: &'static str,
    buckets: Vec<BucketBody>,
}

/// One entry of a ranking: `consumer` or `key_id`, and the counts over the range.
#[derive(Serialize, ToSchema)]
pub(crate) struct TopBody {
    /// With `by=consumer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    consumer: Option<String>,
    /// With `by=key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    key_id: Option<String>,
    allowed: u64,
    rate_limited: u64,
    forbidden: u64,
    unauthorized: u64,
    total: u64,
}

fn bad_query(rejection: &QueryRejection, allowed: &str) -> Problem {
    problem(
        StatusCode::BAD_REQUEST,
        format!("bad query ({rejection}); the query parameters are {allowed}"),
        None,
    )
}

fn time(field: &str, value: Option<&str>) -> Result<Option<SystemTime>, Problem> {
    value
        .map(|text| {
            crate::store::import::parse_rfc3339(text).ok_or_else(|| {
                invalid(
                    field,
                    format!("{field} must be an RFC 3339 time such as 2026-12-01T12:00:00Z"),
                )
            })
        })
        .transpose()
}

/// The step and the range of a series.
fn range(params: &SeriesParams) -> Result<(UsageStep, SystemTime, SystemTime), Problem> {
    let step = match params.step.as_deref() {
        None => UsageStep::Minute,
        Some(text) => text
            .parse()
            .map_err(|_| invalid("step", "step must be minute or hour"))?,
    };
    let to = time("to", params.to.as_deref())?.unwrap_or_else(SystemTime::now);
    // The last bucket: the one holding `to`'s moment just before it.
    let last = to
        .checked_sub(Duration::from_nanos(1))
        .map_or(to, |t| bucket_start(step, t));
    let buckets_back = |n: u32| {
        last.checked_sub(step.width() * (n - 1))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let from = match time("from", params.from.as_deref())? {
        Some(from) => from,
        // Exactly the default number of buckets.
        None => buckets_back(match step {
            UsageStep::Minute => DEFAULT_MINUTES,
            UsageStep::Hour => DEFAULT_HOURS,
        }),
    };
    // At most MAX_BUCKETS: the last ones of a longer range (a chart wants the latest);
    // the store is asked for no more than that either. `from` after `to` is an empty
    // range: no buckets.
    Ok((step, from.max(buckets_back(MAX_BUCKETS as u32)), to))
}

fn series_body(
    step: UsageStep,
    from: SystemTime,
    to: SystemTime,
    sparse: &[UsageBucket],
) -> SeriesBody {
    let buckets =
        fill(step, from, to, MAX_BUCKETS, sparse).expect("range() keeps a series to MAX_BUCKETS");
    SeriesBody {
        step: step.as_str(),
        buckets: buckets
            .iter()
            .map(|b| BucketBody {
                at: rfc3339(b.at),
                allowed: b.allowed,
                rate_limited: b.rate_limited,
                forbidden: b.forbidden,
                unauthorized: b.unauthorized,
            })
            .collect(),
    }
}

/// The series of the key `id` (which the caller has already been allowed to see),
/// or 404; a revoked key's too. For the admin API and the portal.
pub(crate) async fn key_series<S: KeyStore>(
    store: &S,
    id: &str,
    params: &SeriesParams,
) -> Result<SeriesBody, Problem> {
    let (step, from, to) = range(params)?;
    super::existing_key(store, id).await?;
    let sparse = store
        .usage_series(Some(id), step, from, to)
        .await
        .map_err(store_error)?;
    Ok(series_body(step, from, to, &sparse))
}

/// The query string of a series, or the problem with it.
pub(crate) fn series_params(
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> Result<SeriesParams, Problem> {
    params
        .map(|Query(p)| p)
        .map_err(|r| bad_query(&r, "step, from and to"))
}

#[utoipa::path(get, path = "/admin/keys/{id}/usage/series",
    params(super::openapi::KeyIdPath, SeriesParams),
    responses(
        (status = 200, description = "One bucket per step of the range, zeros included", body = SeriesBody),
        (status = 400, description = "A query parameter other than `step`, `from` and `to`."),
        (status = 404, description = "No key with this id."),
        (status = 422, description = "`step`, `from` or `to` is wrong (`field` names it).")))]
pub(super) async fn key<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    KeyId(id): KeyId,
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> Response {
    let result = async {
        let params = series_params(params)?;
        key_series(&store, &id, &params).await
    };
    match result.await {
        Ok(body) => Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

#[utoipa::path(get, path = "/admin/usage/series", params(SeriesParams),
    responses(
        (status = 200, description = "All keys summed: one bucket per step of the range, zeros included", body = SeriesBody),
        (status = 400, description = "A query parameter other than `step`, `from` and `to`."),
        (status = 422, description = "`step`, `from` or `to` is wrong (`field` names it).")))]
pub(super) async fn all<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> Response {
    let result = async {
        let params = series_params(params)?;
        let (step, from, to) = range(&params)?;
        let sparse = store
            .usage_series(None, step, from, to)
            .await
            .map_err(store_error)?;
        Ok::<_, Problem>(series_body(step, from, to, &sparse))
    };
    match result.await {
        Ok(body) => Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

#[utoipa::path(get, path = "/admin/usage/top", params(TopParams),
    responses(
        (status = 200, description = "The highest totals first", body = Vec<TopBody>),
        (status = 400, description = "A query parameter other than `by`, `from`, `to` and `limit`."),
        (status = 422, description = "`by`, `from`, `to` or `limit` is wrong (`field` names it).")))]
pub(super) async fn top<S: KeyStore>(
    State(store): State<CachedResolver<S>>,
    params: Result<Query<TopParams>, QueryRejection>,
) -> Response {
    let result = async {
        let params = params
            .map(|Query(p)| p)
            .map_err(|r| bad_query(&r, "by, from, to and limit"))?;
        let by = match params.by.as_deref() {
            None | Some("consumer") => UsageTopBy::Consumer,
            Some("key") => UsageTopBy::Key,
            Some(_) => return Err(invalid("by", "by must be consumer or key")),
        };
        let limit = match params.limit.as_deref() {
            None => DEFAULT_TOP,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_TOP).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "limit",
                        format!("limit must be a whole number from 1 to {MAX_TOP}"),
                    )
                })?,
        };
        let now = SystemTime::now();
        let to = time("to", params.to.as_deref())?.unwrap_or(now);
        let from = time("from", params.from.as_deref())?.unwrap_or_else(|| {
            to.checked_sub(DEFAULT_TOP_RANGE)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        // `from` after `to`: an empty range, an empty ranking.
        // Minute buckets while they are kept, hour buckets for older ranges.
        let keeps_minutes = now
            .checked_sub(UsageStep::Minute.retention())
            .is_none_or(|cut| from >= cut);
        let step = if keeps_minutes {
            UsageStep::Minute
        } else {
            UsageStep::Hour
        };
        let top = store
            .usage_top(by, step, from, to, limit)
            .await
            .map_err(store_error)?;
        Ok(top
            .into_iter()
            .map(|entry| {
                let (consumer, key_id) = match by {
                    UsageTopBy::Consumer => (Some(entry.name), None),
                    UsageTopBy::Key => (None, Some(entry.name)),
                };
                let c = entry.counts;
                TopBody {
                    consumer,
                    key_id,
                    allowed: c.allowed,
                    rate_limited: c.rate_limited,
                    forbidden: c.forbidden,
                    unauthorized: c.unauthorized,
                    total: c.total(),
                }
            })
            .collect::<Vec<_>>())
    };
    match result.await {
        Ok(body) => Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(step: Option<&str>, from: Option<&str>, to: Option<&str>) -> SeriesParams {
        SeriesParams {
            step: step.map(str::to_owned),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        }
    }

    #[test]
    fn default_ranges_hold_the_default_number_of_buckets() {
        for (to, step, want) in [
            ("2026-12-02T05:00:30Z", "minute", 60),
            ("2026-12-02T05:00:00Z", "minute", 60),
            ("2026-12-02T05:10:00Z", "hour", 168),
        ] {
            let (step, from, to) = range(&params(Some(step), None, Some(to))).unwrap();
            let body = series_body(step, from, to, &[]);
            assert_eq!(body.buckets.len(), want, "{step} to {to:?}");
        }
    }

    #[test]
    fn bad_ranges_name_their_field() {
        let field = |p: SeriesParams| range(&p).err().and_then(|p| p.field);
        assert_eq!(
            field(params(Some("day"), None, None)).as_deref(),
            Some("step")
        );
        assert_eq!(
            field(params(None, Some("yesterday"), None)).as_deref(),
            Some("from")
        );
    }

    #[test]
    fn a_long_range_answers_its_last_buckets_and_a_reversed_one_none() {
        let (step, from, to) = range(&params(
            None,
            Some("2026-11-01T00:00:00Z"),
            Some("2026-12-01T00:00:00Z"),
        ))
        .unwrap();
        let body = series_body(step, from, to, &[]);
        assert_eq!(body.buckets.len(), MAX_BUCKETS);
        assert_eq!(body.buckets[MAX_BUCKETS - 1].at, "2026-11-30T23:59:00Z");
        assert_eq!(body.buckets[0].at, "2026-11-29T00:00:00Z");
        let (step, from, to) = range(&params(
            Some("hour"),
            Some("2026-12-02T00:00:00Z"),
            Some("2026-12-01T00:00:00Z"),
        ))
        .unwrap();
        assert!(series_body(step, from, to, &[]).buckets.is_empty());
    }
}
