//! Reading [`ImportedKey`] rows from JSON (features `admin` or `cli`): the one set of
//! rules the admin API's `POST /admin/keys/import` and `apikey import` share.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::ImportedKey;
use crate::key::KeyHash;
use crate::ratelimit::{RateLimitPolicy, RateLimits};
use crate::record::{Scope, Scopes, parse_network};

/// The members an import row may have.
pub const IMPORT_FIELDS: [&str; 7] = [
    "hash",
    "consumer",
    "name",
    "scopes",
    "expires_at",
    "rate_limit",
    "allowed_ips",
];
/// The most scopes, and the most networks, one row may carry.
const MAX_LIST: usize = 64;
/// The longest consumer or name, in characters.
const MAX_TEXT: usize = 200;

/// Why a JSON import row was refused: the member at fault (such as `hash` or
/// `rate_limit.requests`) and what is wrong with it. It never repeats a hash, nor a
/// value or member name that could be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct InvalidImportRow {
    /// The member at fault; empty when the row is not an object.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

/// The longest unknown member name a problem repeats: longer than every field of the
/// admin API, shorter than any key of this crate's formats (24 characters at least).
const MAX_SHOWN_MEMBER: usize = 20;

/// An unknown member's name as an error repeats it: `…` for a name longer than any
/// field or outside `[A-Za-z0-9_.-]`, so that a key pasted as a member name never comes
/// back in an error. (Values, such as a bad scope, are named by their index instead.)
pub(crate) fn shown_member(name: &str) -> &str {
    let plain = name.len() <= MAX_SHOWN_MEMBER
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain { name } else { "…" }
}

fn invalid(field: &str, detail: impl Into<String>) -> InvalidImportRow {
    InvalidImportRow {
        field: field.to_owned(),
        detail: detail.into(),
    }
}

impl ImportedKey {
    /// Reads one import row: a JSON object
    /// `{"hash","consumer","name"?,"scopes"?,"expires_at"?,"rate_limit"?,"allowed_ips"?}`
    /// where `hash` is the 64 hex digits of the key's SHA-256, `expires_at` an RFC 3339
    /// time (one past imports the key as expired) and `rate_limit`
    /// `{"requests","per_seconds","burst"?}` (whole numbers: `60` or `60.0`), with the
    /// admin API's bounds (consumer and name up to 200 characters with no control
    /// characters, up to 64 scopes and 64 networks). Unknown members are refused.
    ///
    /// ```
    /// use tower_api_key::store::ImportedKey;
    ///
    /// let row = serde_json::json!({
    ///     "hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ///     "consumer": "acme",
    ///     "scopes": ["orders:read"],
    ///     "expires_at": "2099-01-01T00:00:00Z"
    /// });
    /// let key = ImportedKey::from_json(&row).unwrap();
    /// assert_eq!(key.consumer, "acme");
    /// let bad = serde_json::json!({"hash": "abc", "consumer": "acme"});
    /// assert_eq!(ImportedKey::from_json(&bad).unwrap_err().field, "hash");
    /// ```
    pub fn from_json(row: &Value) -> Result<Self, InvalidImportRow> {
        let Value::Object(map) = row else {
            return Err(invalid("", "each key must be a JSON object"));
        };
        if let Some(unknown) = map.keys().find(|k| !IMPORT_FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                shown_member(unknown),
                format!("unknown field; allowed: {}", IMPORT_FIELDS.join(", ")),
            ));
        }
        let hash = match map.get("hash") {
            None | Some(Value::Null) => return Err(invalid("hash", "hash is required")),
            Some(Value::String(s)) => KeyHash::from_hex(s).ok_or_else(|| {
                invalid(
                    "hash",
                    "hash must be the 64 hex digits of the key's SHA-256",
                )
            })?,
            Some(_) => return Err(invalid("hash", "hash must be a string")),
        };
        let consumer =
            text(map, "consumer")?.ok_or_else(|| invalid("consumer", "consumer is required"))?;
        let mut key = ImportedKey::new(hash, consumer)
            .with_name(text(map, "name")?.unwrap_or_default())
            .with_scopes(scopes(map)?)
            .with_rate_limits(rate_limit(map)?)
            .with_allowed_ips(allowed_ips(map)?);
        match map.get("expires_at") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let at = parse_rfc3339(s).ok_or_else(|| {
                    invalid(
                        "expires_at",
                        "expires_at must be an RFC 3339 time such as 2027-01-31T12:00:00Z",
                    )
                })?;
                // A time past imports the key as it was: expired.
                key = key.with_expires_at(at);
            }
            Some(_) => return Err(invalid("expires_at", "expires_at must be a string")),
        }
        Ok(key)
    }
}

fn text(map: &Map<String, Value>, field: &str) -> Result<Option<String>, InvalidImportRow> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(field, format!("{field} must not be empty")))
        }
        // PostgreSQL's text cannot hold NUL; logs should not hold any control character.
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

fn strings<'a>(map: &'a Map<String, Value>, field: &str) -> Result<Vec<&'a str>, InvalidImportRow> {
    let list = match map.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(invalid(
                field,
                format!("{field} must be an array of strings"),
            ));
        }
    };
    if list.len() > MAX_LIST {
        return Err(invalid(field, format!("at most {MAX_LIST} entries")));
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| invalid(field, format!("{field} must be an array of strings")))
        })
        .collect()
}

fn scopes(map: &Map<String, Value>) -> Result<Scopes, InvalidImportRow> {
    strings(map, "scopes")?
        .into_iter()
        .enumerate()
        .map(|(i, s)| Scope::new(s).map_err(|e| invalid("scopes", format!("scopes[{i}]: {e}"))))
        .collect()
}

fn allowed_ips(map: &Map<String, Value>) -> Result<Vec<ipnet::IpNet>, InvalidImportRow> {
    strings(map, "allowed_ips")?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            parse_network(s).map_err(|e| invalid("allowed_ips", format!("allowed_ips[{i}]: {e}")))
        })
        .collect()
}

fn rate_limit(map: &Map<String, Value>) -> Result<RateLimits, InvalidImportRow> {
    let limit = match map.get("rate_limit") {
        None | Some(Value::Null) => return Ok(RateLimits::default()),
        Some(Value::Object(limit)) => limit,
        Some(_) => return Err(invalid("rate_limit", "rate_limit must be an object")),
    };
    let allowed = ["requests", "per_seconds", "burst"];
    if let Some(unknown) = limit.keys().find(|k| !allowed.contains(&k.as_str())) {
        let unknown = shown_member(unknown);
        return Err(invalid(&format!("rate_limit.{unknown}"), "unknown field"));
    }
    let number = |name: &str, max: u64| -> Result<Option<u64>, InvalidImportRow> {
        match limit.get(name) {
            None | Some(Value::Null) => Ok(None),
            // A whole number, as JSON Schema's `integer`: `60` or `60.0`.
            Some(v) => match v.as_number().and_then(whole_number) {
                Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(invalid(
                    &format!("rate_limit.{name}"),
                    format!("{name} must be a whole number from 1 to {max}"),
                )),
            },
        }
    };
    let requests = number("requests", 1_000_000_000)?
        .ok_or_else(|| invalid("rate_limit.requests", "requests is required"))?;
    let per = number("per_seconds", 365 * 86_400)?
        .ok_or_else(|| invalid("rate_limit.per_seconds", "per_seconds is required"))?;
    let burst = number("burst", 1_000_000_000)?;
    let policy = RateLimitPolicy::rate("default", requests as u32, Duration::from_secs(per))
        .and_then(|p| match burst {
            Some(b) => p.with_burst(b as u32),
            None => Ok(p),
        })
        .map_err(|e| invalid("rate_limit", e.to_string()))?;
    Ok(policy.into())
}

/// Parses an RFC 3339 time (`2027-01-31T12:00:00Z`, `…T12:00:00.5+02:00`); `None` if
/// it is not one or is before 1970.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let month_days = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d == 0
        || d > month_days[mo as usize - 1]
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in frac[..n].iter().take(9).enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[n..];
    }
    let offset: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (oh, om) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = crate::ratelimit::gcra::days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s.min(59)) - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A JSON number that is a whole number, not negative: `3`, `3.0`, `3e2`.
pub(crate) fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // Beyond 2^64 it is too large for any field, and `as` would saturate.
        (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)).then_some(f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn rfc3339_times() {
        let at = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            at("2026-11-23T10:01:01Z"),
            Some(Duration::from_secs(1_795_392_000 + 36_061))
        );
        assert_eq!(at("2026-11-23T12:01:01+02:00"), at("2026-11-23T10:01:01Z"));
        assert_eq!(
            at("2026-11-23T09:01:01.250-01:00"),
            Some(Duration::new(1_795_392_000 + 36_061, 250_000_000))
        );
        assert!(at("2028-02-29T00:00:00z").is_some());
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T10:01:01",
            "2026-13-01T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:01:01+2:00",
            "2026-11-23 10:01:01Z",
            "2026-11-23T10:01:01.Z",
            "1969-12-31T23:59:59Z",
            "２026-11-23T10:01:01Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_past_expiry_imports_an_expired_key_and_whole_floats_are_whole_numbers() {
        let row = json!({"hash": HASH, "consumer": "acme", "expires_at": "2001-01-01T00:00:00Z",
            "rate_limit": {"requests": 10.0, "per_seconds": 6e1, "burst": 2}});
        let key = ImportedKey::from_json(&row).unwrap();
        assert_eq!(key.expires_at, parse_rfc3339("2001-01-01T00:00:00Z"));
        assert_eq!(
            key.rate_limits.iter().next().unwrap().to_string(),
            "10/60000ms burst 2"
        );
        let half = json!({"hash": HASH, "consumer": "acme", "rate_limit": {"requests": 1.5, "per_seconds": 60}});
        assert_eq!(
            ImportedKey::from_json(&half).unwrap_err().field,
            "rate_limit.requests"
        );
    }

    #[test]
    fn a_full_row_and_each_bad_member() {
        let row = json!({"hash": HASH, "consumer": "acme", "name": "old", "scopes": ["orders:read"],
            "expires_at": "2099-01-01T00:00:00Z", "rate_limit": {"requests": 10, "per_seconds": 60},
            "allowed_ips": ["10.0.0.0/8"]});
        let key = ImportedKey::from_json(&row).unwrap();
        assert_eq!(key.hash.to_hex(), HASH);
        assert_eq!((key.consumer.as_str(), key.name.as_str()), ("acme", "old"));
        assert!(
            key.expires_at.is_some()
                && key.rate_limits.iter().count() == 1
                && key.allowed_ips.len() == 1
        );
        let field = |v: Value| ImportedKey::from_json(&v).unwrap_err().field;
        assert_eq!(field(json!([])), "");
        assert_eq!(field(json!({"consumer": "acme"})), "hash");
        assert_eq!(
            field(json!({"hash": &HASH[1..], "consumer": "acme"})),
            "hash"
        );
        assert_eq!(field(json!({"hash": HASH})), "consumer");
        assert_eq!(field(json!({"hash": HASH, "consumer": " "})), "consumer");
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a", "key": "sk"})),
            "key"
        );
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a", "scopes": ["no spaces"]})),
            "scopes"
        );
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a", "expires_at": "tomorrow"})),
            "expires_at"
        );
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a", "expires_at": "1969-12-31T23:59:59Z"})),
            "expires_at"
        );
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a\u{0}b"})),
            "consumer"
        );
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a", "name": "x\ny"})),
            "name"
        );
        assert_eq!(
            field(
                json!({"hash": HASH, "consumer": "a", "rate_limit": {"requests": 0, "per_seconds": 1}})
            ),
            "rate_limit.requests"
        );
        assert_eq!(
            field(
                json!({"hash": HASH, "consumer": "a", "rate_limit": {"requests": 1, "per_seconds": 1, "x": 1}})
            ),
            "rate_limit.x"
        );
        assert_eq!(
            field(json!({"hash": HASH, "consumer": "a", "allowed_ips": ["10.0.0.0/33"]})),
            "allowed_ips"
        );
    }

    /// Found by fuzzing (`admin_api`): a key pasted in the wrong place came back in the
    /// error, quoted as a bad scope, network or member name.
    #[test]
    fn a_misplaced_key_is_not_repeated() {
        let key = crate::KeyFormat::default().generate();
        let secret = key.expose_secret();
        let bad = format!("{secret}!");
        let rows = [
            json!({"hash": HASH, "consumer": "a", "scopes": ["ok", bad]}),
            json!({"hash": HASH, "consumer": "a", "allowed_ips": [secret]}),
            json!({"hash": HASH, "consumer": "a", secret: 1}),
            json!({"hash": HASH, "consumer": "a", "rate_limit": {secret: 1}}),
        ];
        let fields = ["scopes", "allowed_ips", "…", "rate_limit.…"];
        for (row, field) in rows.iter().zip(fields) {
            let e = ImportedKey::from_json(row).unwrap_err();
            assert_eq!(e.field, field);
            assert!(!e.to_string().contains(&secret[8..20]), "{e}");
        }
        let e = ImportedKey::from_json(&rows[0]).unwrap_err();
        assert!(e.detail.starts_with("scopes[1]: "), "{e}");
        // Member names that could be fields are still named.
        let e = ImportedKey::from_json(&json!({"hash": HASH, "consumer": "a", "scope": []}));
        assert_eq!(e.unwrap_err().field, "scope");
    }
}
