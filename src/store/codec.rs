//! How records are written to SQL columns and read back, exactly: times as Unix
//! nanoseconds, scopes, policies and metadata as JSON.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::StoreError;
use crate::ratelimit::{Limit, QuotaWindow, RateLimitPolicy, RateLimits};
use crate::record::{Scope, Scopes};

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("a stored key has a malformed {what}").into())
}

/// Unix nanoseconds (before 1970 and after 2262 saturate).
pub(crate) fn time_to_sql(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn time_from_sql(n: i64) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

pub(crate) fn scopes_to_sql(scopes: &Scopes) -> String {
    Value::from(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string()
}

pub(crate) fn scopes_from_sql(text: &str) -> Result<Scopes, StoreError> {
    let list: Vec<String> = serde_json::from_str(text).map_err(|_| corrupt("scope list"))?;
    list.iter()
        .map(|s| Scope::new(s).map_err(|_| corrupt("scope")))
        .collect()
}

pub(crate) fn ips_to_sql(networks: &[ipnet::IpNet]) -> String {
    Value::from(networks.iter().map(|n| n.to_string()).collect::<Vec<_>>()).to_string()
}

pub(crate) fn ips_from_sql(text: &str) -> Result<Vec<ipnet::IpNet>, StoreError> {
    let list: Vec<String> = serde_json::from_str(text).map_err(|_| corrupt("allowlist"))?;
    list.iter()
        .map(|s| s.parse().map_err(|_| corrupt("allowlist network")))
        .collect()
}

pub(crate) fn metadata_to_sql(metadata: &BTreeMap<String, String>) -> String {
    json!(metadata).to_string()
}

pub(crate) fn metadata_from_sql(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|_| corrupt("metadata"))
}

pub(crate) fn limits_to_sql(limits: &RateLimits) -> String {
    let list: Vec<Value> = limits
        .iter()
        .map(|p| match p.limit() {
            Limit::Rate {
                requests,
                per,
                burst,
            } => json!({
                "name": p.name(),
                "rate": { "requests": requests, "per_ns": u64::try_from(per.as_nanos()).unwrap_or(u64::MAX), "burst": burst },
            }),
            Limit::Quota { requests, window } => json!({
                "name": p.name(),
                "quota": { "requests": requests, "window": match window { QuotaWindow::Day => "day", QuotaWindow::Month => "month" } },
            }),
        })
        .collect();
    Value::from(list).to_string()
}

pub(crate) fn limits_from_sql(text: &str) -> Result<RateLimits, StoreError> {
    let bad = || corrupt("rate-limit policy");
    let list: Vec<Value> = serde_json::from_str(text).map_err(|_| bad())?;
    let mut policies = Vec::with_capacity(list.len());
    for item in list {
        let name = item["name"].as_str().ok_or_else(bad)?;
        let num = |v: &Value| v.as_u64().ok_or_else(bad);
        let policy = if let Some(rate) = item.get("rate") {
            let requests = u32::try_from(num(&rate["requests"])?).map_err(|_| bad())?;
            let burst = u32::try_from(num(&rate["burst"])?).map_err(|_| bad())?;
            let per = Duration::from_nanos(num(&rate["per_ns"])?);
            RateLimitPolicy::rate(name, requests, per)
                .and_then(|p| p.with_burst(burst))
                .map_err(|_| bad())?
        } else if let Some(quota) = item.get("quota") {
            let requests = u32::try_from(num(&quota["requests"])?).map_err(|_| bad())?;
            let window = match quota["window"].as_str() {
                Some("day") => QuotaWindow::Day,
                Some("month") => QuotaWindow::Month,
                _ => return Err(bad()),
            };
            RateLimitPolicy::quota(name, requests, window).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        policies.push(policy);
    }
    RateLimits::new(policies).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_exactly() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_795_392_000, 123_456_789),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            assert_eq!(time_from_sql(time_to_sql(t)), t);
        }
        let scopes = Scopes::parse(["orders:*", "users:read"]).unwrap();
        assert_eq!(scopes_from_sql(&scopes_to_sql(&scopes)).unwrap(), scopes);
        let metadata = BTreeMap::from([("a\"b".to_owned(), "é\n".to_owned())]);
        assert_eq!(
            metadata_from_sql(&metadata_to_sql(&metadata)).unwrap(),
            metadata
        );
        let limits = RateLimits::new([
            RateLimitPolicy::rate("burst", 10, Duration::from_millis(1500))
                .unwrap()
                .with_burst(3)
                .unwrap(),
            RateLimitPolicy::quota("monthly", 5, QuotaWindow::Month).unwrap(),
        ])
        .unwrap();
        assert_eq!(limits_from_sql(&limits_to_sql(&limits)).unwrap(), limits);
        assert_eq!(limits_from_sql("[]").unwrap(), RateLimits::default());
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        assert!(scopes_from_sql("not json").is_err());
        assert!(scopes_from_sql(r#"["bad scope"]"#).is_err());
        assert!(limits_from_sql(r#"[{"name":"x"}]"#).is_err());
        assert!(
            limits_from_sql(r#"[{"name":"x","rate":{"requests":0,"per_ns":1,"burst":1}}]"#)
                .is_err()
        );
        assert!(metadata_from_sql("[1]").is_err());
    }
}
