use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::retry_info::status_details;
use crate::resolve::ResolveError;

/// Where the problem types are documented.
const DOCS: &str = "https://docs.rs/tower-api-key/latest/tower_api_key/enum.AuthError.html";

/// Why a request was refused. Each variant has one HTTP and one gRPC mapping; see
/// [`Rejection`] for how it is rendered.
///
/// None of the variants carries any part of the presented key.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No key in the request. HTTP 401 with a `WWW-Authenticate` challenge and no
    /// `error` (RFC 6750 §3.1); gRPC `UNAUTHENTICATED`.
    #[error("the request carries no API key")]
    MissingKey,
    /// The key is malformed, unknown or revoked; one answer for all three so that a
    /// caller learns nothing about which. HTTP 401 `error="invalid_token"`; gRPC
    /// `UNAUTHENTICATED`.
    #[error("the API key is malformed, unknown or revoked")]
    InvalidKey,
    /// The key is past its expiry time. HTTP 401 `error="invalid_token"` with an
    /// `error_description`; gRPC `UNAUTHENTICATED`.
    #[error("the API key has expired")]
    ExpiredKey,
    /// The request carries two different keys (say, a bearer token and an `X-API-Key`
    /// header). HTTP 400 `error="invalid_request"`; gRPC `UNAUTHENTICATED`.
    #[error("the request carries more than one API key")]
    ConflictingKeys,
    /// The key is valid but lacks a scope. HTTP 403 `error="insufficient_scope"`;
    /// gRPC `PERMISSION_DENIED`.
    #[error("the API key lacks the scope {scope}")]
    InsufficientScope {
        /// The scope that was required.
        scope: Cow<'static, str>,
    },
    /// The key is valid but may not be used from the client's address (its record's
    /// [`allowed_ips`](crate::KeyRecord::allowed_ips)), or the address is not known. HTTP
    /// 403; gRPC `PERMISSION_DENIED`.
    #[error("the API key may not be used from this address")]
    AddressNotAllowed,
    /// A rate limit or quota is spent. HTTP 429 with `Retry-After` and an RFC 9457 body
    /// of type `https://iana.org/assignments/http-problem-types#quota-exceeded` naming the
    /// `violated-policies`; gRPC `RESOURCE_EXHAUSTED`.
    #[error("rate limit exceeded ({}); retry in {}", violated.join(", "), retry_after_secs(*retry_after))]
    RateLimited {
        /// How long until the request would be allowed.
        retry_after: Duration,
        /// The names of the policies that refused it.
        violated: Vec<String>,
    },
    /// The client has failed to authenticate too often
    /// ([`ApiKeyLayer::limit_failures`](crate::ApiKeyLayer::limit_failures)): refused
    /// before any lookup. HTTP 429 with `Retry-After`; gRPC `RESOURCE_EXHAUSTED`.
    #[error("too many failed authentications from this client; retry in {}", retry_after_secs(*retry_after))]
    TooManyFailures {
        /// How long until the client's window ends.
        retry_after: Duration,
    },
    /// The key store could not be reached and the key was not cached. HTTP 503 with
    /// `Retry-After`; gRPC `UNAVAILABLE`. Never a 401, never let through.
    #[error("{0}")]
    Unavailable(ResolveError),
}

impl AuthError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::ExpiredKey => StatusCode::UNAUTHORIZED,
            Self::ConflictingKeys => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. } | Self::AddressNotAllowed => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::TooManyFailures { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code this error is answered with.
    pub fn grpc_code(&self) -> i32 {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::ExpiredKey | Self::ConflictingKeys => 16,
            Self::InsufficientScope { .. } | Self::AddressNotAllowed => 7,
            Self::RateLimited { .. } | Self::TooManyFailures { .. } => 8,
            Self::Unavailable(_) => 14,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::MissingKey => "variant.MissingKey",
            Self::InvalidKey => "variant.InvalidKey",
            Self::ExpiredKey => "variant.ExpiredKey",
            Self::ConflictingKeys => "variant.ConflictingKeys",
            Self::InsufficientScope { .. } => "variant.InsufficientScope",
            Self::AddressNotAllowed => "variant.AddressNotAllowed",
            Self::RateLimited { .. } => "variant.RateLimited",
            Self::TooManyFailures { .. } => "variant.TooManyFailures",
            Self::Unavailable(_) => "variant.Unavailable",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::MissingKey => "Missing API key",
            Self::InvalidKey => "Invalid API key",
            Self::ExpiredKey => "Expired API key",
            Self::ConflictingKeys => "Conflicting API keys",
            Self::InsufficientScope { .. } => "Insufficient scope",
            Self::AddressNotAllowed => "Address not allowed",
            Self::RateLimited { .. } => {
                "Request cannot be satisfied as assigned quota has been exceeded"
            }
            Self::TooManyFailures { .. } => "Too many failed authentications",
            Self::Unavailable(_) => "Key store unavailable",
        }
    }

    /// The message shown to callers. It never includes the resolver's error, which is
    /// for the service's logs.
    pub(crate) fn detail(&self) -> Cow<'static, str> {
        match self {
            Self::MissingKey => "The request carries no API key.".into(),
            Self::InvalidKey => "The API key is malformed, unknown or revoked.".into(),
            Self::ExpiredKey => "The API key has expired.".into(),
            Self::ConflictingKeys => "The request carries more than one different API key.".into(),
            Self::InsufficientScope { scope } => {
                format!("The API key lacks the scope {scope}.").into()
            }
            Self::AddressNotAllowed => {
                "The API key may not be used from this network address.".into()
            }
            Self::RateLimited {
                retry_after,
                violated,
            } => format!(
                "Rate limit exceeded ({}); retry in {} s.",
                violated.join(", "),
                retry_after_secs(*retry_after)
            )
            .into(),
            Self::TooManyFailures { retry_after } => format!(
                "Too many failed authentications from this client; retry in {} s.",
                retry_after_secs(*retry_after)
            )
            .into(),
            Self::Unavailable(_) => {
                "The API key could not be checked right now; try again shortly.".into()
            }
        }
    }

    /// The problem type URI of the RFC 9457 body.
    fn problem_type(&self) -> Cow<'static, str> {
        match self {
            Self::RateLimited { .. } => {
                "https://iana.org/assignments/http-problem-types#quota-exceeded".into()
            }
            other => format!("{DOCS}#{}", other.slug()).into(),
        }
    }
}

/// The realm named in `WWW-Authenticate` challenges, with the challenges prebuilt so
/// that rejecting formats nothing. The default realm's are static.
#[derive(Clone)]
pub(crate) struct Realm {
    name: Box<str>,
    missing: HeaderValue,
    invalid: HeaderValue,
    expired: HeaderValue,
    bad_request: HeaderValue,
}

const EXPIRED_SUFFIX: &str =
    r#", error="invalid_token", error_description="The API key has expired""#;

impl Default for Realm {
    fn default() -> Self {
        Self {
            name: "api".into(),
            missing: HeaderValue::from_static(r#"Bearer realm="api""#),
            invalid: HeaderValue::from_static(r#"Bearer realm="api", error="invalid_token""#),
            expired: HeaderValue::from_static(concat!(
                r#"Bearer realm="api""#,
                r#", error="invalid_token", error_description="The API key has expired""#
            )),
            bad_request: HeaderValue::from_static(r#"Bearer realm="api", error="invalid_request""#),
        }
    }
}

impl fmt::Debug for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

impl Realm {
    /// `None` if the name has characters that cannot stand in a quoted string.
    pub(crate) fn new(name: &str) -> Option<Self> {
        if !is_quotable(name) {
            return None;
        }
        let value = |rest: &str| {
            HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer realm=\"{name}\"{rest}")))
                .ok()
        };
        Some(Self {
            name: name.into(),
            missing: value("")?,
            invalid: value(", error=\"invalid_token\"")?,
            expired: value(EXPIRED_SUFFIX)?,
            bad_request: value(", error=\"invalid_request\"")?,
        })
    }

    /// The challenge that goes with `error`, if it has one of the realm's.
    fn challenge(&self, error: &AuthError) -> Option<HeaderValue> {
        match error {
            AuthError::MissingKey => Some(self.missing.clone()),
            AuthError::InvalidKey => Some(self.invalid.clone()),
            AuthError::ExpiredKey => Some(self.expired.clone()),
            AuthError::ConflictingKeys => Some(self.bad_request.clone()),
            AuthError::InsufficientScope { .. }
            | AuthError::AddressNotAllowed
            | AuthError::RateLimited { .. }
            | AuthError::TooManyFailures { .. }
            | AuthError::Unavailable(_) => None,
        }
    }
}

/// A refused request, ready to be rendered: the [`AuthError`], whether the request was
/// gRPC, and the layer's settings that shape the answer.
///
/// [`render`](Self::render) gives the standard answer; a custom
/// [`Responder`](crate::Responder) can look at [`error`](Self::error) and answer
/// differently. With the `axum` feature, `Rejection` is also an axum `IntoResponse` (the
/// extractors' rejection type); with `tonic`, it converts into a `tonic::Status`.
#[derive(Debug, Clone)]
pub struct Rejection {
    error: AuthError,
    grpc: bool,
    /// The realm's `WWW-Authenticate` challenge for this error, if it has one.
    challenge: Option<HeaderValue>,
    retry_after: Duration,
}

pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Rejection {
    /// A rejection with the default realm (`api`) and `Retry-After`, for code outside the
    /// layer that wants the same answers (extractors, handlers).
    pub fn new(error: AuthError, grpc: bool) -> Self {
        static DEFAULT_REALM: LazyLock<Realm> = LazyLock::new(Realm::default);
        Self::with_settings(error, grpc, &DEFAULT_REALM, DEFAULT_RETRY_AFTER)
    }

    /// A rejection for a request with these headers: gRPC if its `content-type` says so.
    pub fn for_request(error: AuthError, headers: &HeaderMap) -> Self {
        Self::new(error, is_grpc(headers))
    }

    pub(crate) fn with_settings(
        error: AuthError,
        grpc: bool,
        realm: &Realm,
        retry_after: Duration,
    ) -> Self {
        Self {
            challenge: realm.challenge(&error),
            error,
            grpc,
            retry_after,
        }
    }

    /// Why the request was refused.
    pub fn error(&self) -> &AuthError {
        &self.error
    }

    /// Turns the rejection back into its error.
    pub fn into_error(self) -> AuthError {
        self.error
    }

    /// Was the request a gRPC call?
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The standard answer: an RFC 9457 `application/problem+json` response with the
    /// RFC 6750 `WWW-Authenticate` challenge, or for gRPC a trailers-only response with
    /// `grpc-status` and `grpc-message`.
    pub fn render(&self) -> Response<Bytes> {
        if self.grpc {
            return self.render_grpc();
        }
        let mut response = Response::new(self.problem_body());
        *response.status_mut() = self.error.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = &self.challenge {
            headers.insert(WWW_AUTHENTICATE, challenge.clone());
        }
        if let AuthError::InsufficientScope { scope } = &self.error {
            let value = if is_quotable(scope) {
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")
            } else {
                "Bearer error=\"insufficient_scope\"".to_owned()
            };
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        }
        if let Some(after) = self.retry_delay() {
            headers.insert(RETRY_AFTER, retry_after_value(after));
        }
        response
    }

    /// How long the caller should wait before it tries again, for the errors that say
    /// so: the store's outage (the layer's `retry_after`) and spent limits.
    fn retry_delay(&self) -> Option<Duration> {
        match &self.error {
            AuthError::Unavailable(_) => Some(self.retry_after),
            AuthError::RateLimited { retry_after, .. }
            | AuthError::TooManyFailures { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    fn problem_body(&self) -> Bytes {
        let error = &self.error;
        // The fixed answers are the same bytes every time.
        macro_rules! fixed {
            ($slug:literal, $title:literal, $status:literal, $detail:literal) => {
                Bytes::from_static(
                    concat!(
                        "{\"type\":\"",
                        "https://docs.rs/tower-api-key/latest/tower_api_key/enum.AuthError.html#",
                        $slug,
                        "\",\"title\":\"",
                        $title,
                        "\",\"status\":",
                        $status,
                        ",\"detail\":\"",
                        $detail,
                        "\"}"
                    )
                    .as_bytes(),
                )
            };
        }
        match error {
            AuthError::MissingKey => fixed!(
                "variant.MissingKey",
                "Missing API key",
                "401",
                "The request carries no API key."
            ),
            AuthError::InvalidKey => fixed!(
                "variant.InvalidKey",
                "Invalid API key",
                "401",
                "The API key is malformed, unknown or revoked."
            ),
            _ => {
                let mut body = String::with_capacity(256);
                body.push_str("{\"type\":");
                push_json_string(&mut body, &error.problem_type());
                body.push_str(",\"title\":");
                push_json_string(&mut body, error.title());
                body.push_str(",\"status\":");
                body.push_str(error.status().as_str());
                body.push_str(",\"detail\":");
                push_json_string(&mut body, &error.detail());
                if let AuthError::InsufficientScope { scope } = error {
                    body.push_str(",\"scope\":");
                    push_json_string(&mut body, scope);
                }
                if let AuthError::RateLimited { violated, .. } = error {
                    body.push_str(",\"violated-policies\":[");
                    for (i, name) in violated.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        push_json_string(&mut body, name);
                    }
                    body.push(']');
                }
                body.push('}');
                Bytes::from(body)
            }
        }
    }

    fn render_grpc(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.error.grpc_code()));
        let detail = self.error.detail();
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&detail)) {
            headers.insert("grpc-message", value);
        }
        // The delay as `retry-after` metadata (whole seconds, as over HTTP) and as the
        // standard `google.rpc.RetryInfo` detail.
        if let Some(after) = self.retry_delay() {
            let seconds = retry_after_secs(after);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
            headers.insert(
                "grpc-status-details-bin",
                status_details(self.error.grpc_code(), &detail, seconds),
            );
        }
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<AuthError> for Rejection {
    fn from(error: AuthError) -> Self {
        Self::new(error, false)
    }
}

/// Does this request speak gRPC (`content-type: application/grpc…`)?
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whole seconds, rounded up and never 0: what `Retry-After` says.
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)
}

/// `Retry-After` in whole seconds, rounded up and never 0.
pub(crate) fn retry_after_value(after: Duration) -> HeaderValue {
    HeaderValue::from(retry_after_secs(after))
}

fn is_quotable(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(r: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(r.body()).unwrap()
    }

    #[test]
    fn every_http_rendering_is_valid_problem_json() {
        let errors = [
            AuthError::MissingKey,
            AuthError::InvalidKey,
            AuthError::ExpiredKey,
            AuthError::ConflictingKeys,
            AuthError::InsufficientScope {
                scope: "orders:read".into(),
            },
            AuthError::RateLimited {
                retry_after: Duration::from_millis(1500),
                violated: vec!["burst".into()],
            },
            AuthError::Unavailable(ResolveError::new("db down")),
        ];
        for error in errors {
            let r = Rejection::new(error.clone(), false).render();
            assert_eq!(r.status(), error.status());
            assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
            let body = body_json(&r);
            assert_eq!(body["status"], error.status().as_u16());
            assert_eq!(body["title"], error.title());
            assert_eq!(body["detail"], &*error.detail());
            assert_eq!(body["type"].as_str().unwrap(), error.problem_type());
            // The resolver's own error stays out of the answer.
            assert!(!String::from_utf8_lossy(r.body()).contains("db down"));
        }
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let realm = Realm::new("orders api").unwrap();
        let render =
            |e| Rejection::with_settings(e, false, &realm, Duration::from_millis(1500)).render();
        let www = |r: &Response<Bytes>| r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_owned();
        assert_eq!(
            www(&render(AuthError::MissingKey)),
            r#"Bearer realm="orders api""#
        );
        assert_eq!(
            www(&render(AuthError::InvalidKey)),
            r#"Bearer realm="orders api", error="invalid_token""#
        );
        assert_eq!(
            www(&render(AuthError::ExpiredKey)),
            r#"Bearer realm="orders api", error="invalid_token", error_description="The API key has expired""#
        );
        assert_eq!(
            www(&render(AuthError::ConflictingKeys)),
            r#"Bearer realm="orders api", error="invalid_request""#
        );
        let scope = render(AuthError::InsufficientScope {
            scope: "orders:write".into(),
        });
        assert_eq!(
            www(&scope),
            r#"Bearer error="insufficient_scope", scope="orders:write""#
        );
        assert_eq!(body_json(&scope)["scope"], "orders:write");
        let unavailable = render(AuthError::Unavailable(ResolveError::new("x")));
        assert!(unavailable.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(unavailable.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn default_realm_equals_a_built_one() {
        let built = Realm::new("api").unwrap();
        let default = Realm::default();
        for e in [
            AuthError::MissingKey,
            AuthError::InvalidKey,
            AuthError::ExpiredKey,
            AuthError::ConflictingKeys,
        ] {
            assert_eq!(built.challenge(&e), default.challenge(&e));
        }
    }

    #[test]
    fn rate_limited_is_429_quota_exceeded_with_violated_policies() {
        let error = AuthError::RateLimited {
            retry_after: Duration::from_millis(11_001),
            violated: vec!["burst".into(), "daily".into()],
        };
        let r = Rejection::new(error.clone(), false).render();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "12");
        let body = body_json(&r);
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
        assert_eq!(
            body["violated-policies"],
            serde_json::json!(["burst", "daily"])
        );
        let g = Rejection::new(error, true).render();
        assert_eq!(g.headers()["grpc-status"], "8");
    }

    #[test]
    fn realm_must_be_quotable() {
        assert!(Realm::new("a\"b").is_none());
        assert!(Realm::new("a\nb").is_none());
    }

    #[test]
    fn unquotable_scope_is_left_out_of_the_header_but_escaped_in_json() {
        let r = Rejection::new(
            AuthError::InsufficientScope {
                scope: "we\"ird\n".into(),
            },
            false,
        )
        .render();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"insufficient_scope\""
        );
        assert_eq!(body_json(&r)["scope"], "we\"ird\n");
    }

    #[test]
    fn grpc_rendering() {
        for (error, code) in [
            (AuthError::MissingKey, "16"),
            (AuthError::InvalidKey, "16"),
            (AuthError::ExpiredKey, "16"),
            (AuthError::InsufficientScope { scope: "a".into() }, "7"),
            (AuthError::Unavailable(ResolveError::new("x")), "14"),
        ] {
            let r = Rejection::new(error, true).render();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(r.headers()["grpc-status"], code);
            assert!(r.headers().contains_key("grpc-message"));
            // Only the outage says when to try again.
            assert_eq!(r.headers().contains_key(RETRY_AFTER), code == "14");
            assert_eq!(
                r.headers().contains_key("grpc-status-details-bin"),
                code == "14"
            );
        }
        let limited = AuthError::RateLimited {
            retry_after: Duration::from_millis(11_001),
            violated: vec!["burst".into()],
        };
        let r = Rejection::new(limited, true).render();
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()[RETRY_AFTER], "12");
        assert!(r.headers().contains_key("grpc-status-details-bin"));
        assert_eq!(percent_encode("a%b\u{e9}"), "a%25b%C3%A9");
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_value(Duration::ZERO), "1");
        assert_eq!(retry_after_value(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_value(Duration::from_secs(3)), "3");
        assert_eq!(retry_after_value(Duration::from_millis(3001)), "4");
    }
}
