//! How a request that reached an [`ApiKeyService`](crate::ApiKeyService) ended, and
//! the reporting of it: one `tracing` span per request and, with the `metrics` feature,
//! one count in `tower_api_key_requests_total` (see [`crate::metrics`]). The span and
//! its fields are described in the [`auth`](crate::auth) module's docs.

use http::Response;
use tracing::Span;
use tracing::field::Empty;

use super::AuthError;
use crate::metrics::{Requests, Tally};
use crate::record::Authenticated;

macro_rules! outcomes {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// How a request ended. Its [`name`](Self::name) is the `outcome` field of the
        /// request's span and the `outcome` label of `tower_api_key_requests_total`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Outcome {
            $($(#[$doc])* $variant,)*
        }

        impl Outcome {
            /// Every outcome, in the order of their indices.
            #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
            pub(crate) const ALL: [Self; [$(Self::$variant),*].len()] = [$(Self::$variant),*];

            /// The outcome's name: a label value.
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

outcomes! {
    /// Authenticated, and answered by the inner service.
    Allowed = "allowed",
    /// No key, let through by [`allow_anonymous`](crate::ApiKeyLayer::allow_anonymous).
    Anonymous = "anonymous",
    /// No key.
    Missing = "missing",
    /// A malformed or unknown key (or a revoked one, which callers cannot tell apart).
    Invalid = "invalid",
    /// A revoked key.
    Revoked = "revoked",
    /// An expired key.
    Expired = "expired",
    /// Two different keys in one request.
    Conflicting = "conflicting",
    /// A key used from outside its allowed networks.
    AddressNotAllowed = "address_not_allowed",
    /// Refused by a scope check inside the layer.
    Forbidden = "forbidden",
    /// Refused by a rate limit or quota inside the layer.
    RateLimited = "rate_limited",
    /// Refused before any lookup: the client failed to authenticate too often
    /// ([`limit_failures`](crate::ApiKeyLayer::limit_failures)).
    TooManyFailures = "too_many_failures",
    /// The key store (or the rate-limit store) could not answer: 503.
    Unavailable = "unavailable",
    /// The inner service failed (returned an error instead of a response).
    Error = "error",
}

impl Outcome {
    /// How many outcomes there are.
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) const COUNT: usize = Self::ALL.len();

    /// The outcome of a request refused with `error`.
    pub(crate) fn of(error: &AuthError) -> Self {
        match error {
            AuthError::MissingKey => Self::Missing,
            AuthError::InvalidKey => Self::Invalid,
            AuthError::ExpiredKey => Self::Expired,
            AuthError::ConflictingKeys => Self::Conflicting,
            AuthError::InsufficientScope { .. } => Self::Forbidden,
            AuthError::AddressNotAllowed => Self::AddressNotAllowed,
            AuthError::RateLimited { .. } => Self::RateLimited,
            AuthError::TooManyFailures { .. } => Self::TooManyFailures,
            AuthError::Unavailable(_) => Self::Unavailable,
        }
    }
}

/// Put on a refusal made inside an `ApiKeyService` (rate limit, scope check, extractor)
/// so that the service, seeing the response come back, tells it from an answer of the
/// inner service.
#[derive(Debug, Clone, Copy)]
struct Marked(Outcome);

/// Marks `response` as a refusal with `outcome`. For refusals made by the layers and
/// extractors that sit inside an `ApiKeyService`; its own are reported directly.
pub(crate) fn mark<B>(response: &mut Response<B>, outcome: Outcome) {
    response.extensions_mut().insert(Marked(outcome));
}

/// A new request's span.
///
/// Without a `tracing` subscriber anywhere in the process, a span can only reach `log`,
/// through `tracing`'s `log` compatibility (a feature any crate in the build may turn
/// on), and that writes a DEBUG span's lines only when `log` takes DEBUG records. When
/// neither can see it, no span is made: a disabled span still costs its creation, its
/// entering and exiting, and its drop on every request, each asking `log`.
fn request_span() -> Span {
    if !tracing::dispatcher::has_been_set() && log::max_level() < log::LevelFilter::Debug {
        return Span::none();
    }
    tracing::debug_span!(
        target: "tower_api_key::auth",
        "api_key",
        key_id = Empty,
        consumer = Empty,
        outcome = Empty,
    )
}

/// One request's span and count, finished once.
pub(crate) struct Report {
    span: Span,
    tally: Tally,
    /// The outcome of a response that carries no refusal mark.
    passed: Outcome,
    /// Is the key's record known (its caller recorded)?
    known: bool,
}

impl Report {
    /// Reports nothing: for futures that are not an `ApiKeyService`'s.
    pub(crate) const NONE: Self = Self {
        span: Span::none(),
        tally: Tally::OFF,
        passed: Outcome::Allowed,
        known: false,
    };

    /// A new request's report: its span (when a subscriber wants it) and, with the
    /// `metrics` feature, its count in `requests`.
    pub(crate) fn start(requests: &Requests) -> Self {
        Self {
            span: request_span(),
            tally: requests.tally(),
            passed: Outcome::Allowed,
            known: false,
        }
    }

    /// The report of a request whose key belongs to `auth`.
    pub(crate) fn of_caller(requests: &Requests, auth: &Authenticated) -> Self {
        let mut report = Self::start(requests);
        report.caller(auth);
        report
    }

    /// The report of a request let through without a key.
    pub(crate) fn anonymous(requests: &Requests) -> Self {
        Self {
            passed: Outcome::Anonymous,
            ..Self::start(requests)
        }
    }

    /// The span, to enter while the request's work runs.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Records whose key the request carries.
    pub(crate) fn caller(&mut self, auth: &Authenticated) {
        self.known = true;
        if !self.span.is_disabled() {
            self.span.record("key_id", auth.key_id());
            self.span.record("consumer", auth.consumer());
        }
    }

    /// Records and counts how the request ended; later calls do nothing.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        std::mem::replace(&mut self.tally, Tally::OFF).count(outcome);
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome.name());
            // Recorded once: a second finish must not overwrite it.
            self.span = Span::none();
        }
    }

    /// Finishes with the outcome of a refusal with `error`: a key whose record is known
    /// but that is refused as invalid is a revoked key.
    pub(crate) fn refused(&mut self, error: &AuthError) {
        self.finish(match Outcome::of(error) {
            Outcome::Invalid if self.known => Outcome::Revoked,
            outcome => outcome,
        });
    }

    /// Finishes with the outcome of what came back from inside the service: a refusal
    /// made in there, an answer of the inner service, or its error.
    pub(crate) fn finish_with<B, E>(&mut self, result: &Result<Response<B>, E>) {
        if self.span.is_disabled() && !self.tally.is_on() {
            return;
        }
        let outcome = match result {
            Ok(response) => response
                .extensions()
                .get::<Marked>()
                .map_or(self.passed, |marked| marked.0),
            Err(_) => Outcome::Error,
        };
        self.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use http::Request;
    use tower::{ServiceExt, service_fn};
    use tower_layer::Layer;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata, Subscriber};

    use super::*;
    use crate::{
        ApiKeyLayer, KeyFormat, KeyRecord, MemoryRateLimitStore, MemoryStore, RateLimitLayer,
        RateLimitPolicy, RequireScopeLayer, Scope,
    };

    #[test]
    fn names_are_distinct_label_values() {
        let names: HashSet<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Outcome::COUNT);
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
            let name = outcome.name();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }

    /// A span as the subscriber saw it: name, target, level and every field recorded.
    #[derive(Debug, Clone)]
    struct Seen {
        name: &'static str,
        target: String,
        level: tracing::Level,
        fields: Vec<(String, String)>,
    }

    impl Seen {
        fn field(&self, name: &str) -> Option<&str> {
            let mut found = self.fields.iter().filter(|(k, _)| k == name);
            let value = found.next().map(|(_, v)| v.as_str());
            assert!(found.next().is_none(), "{name} recorded twice: {self:?}");
            value
        }
    }

    /// Collects spans, the span each event happened in, and all text written.
    #[derive(Default, Clone)]
    struct Capture(Arc<Mutex<Captured>>);

    #[derive(Default)]
    struct Captured {
        spans: Vec<Seen>,
        /// Spans entered and not yet exited (one thread: the test's runtime).
        stack: Vec<u64>,
        /// For each event, its message and the span it happened in.
        events: Vec<(String, Option<u64>)>,
        /// Every value recorded by any span or event.
        text: String,
    }

    struct Fields<'a> {
        fields: &'a mut Vec<(String, String)>,
        text: &'a mut String,
    }

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.record_str(field, &format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.text.push_str(value);
            self.text.push('\n');
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl Subscriber for Capture {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::always()
        }

        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, attrs: &Attributes<'_>) -> Id {
            let mut captured = self.0.lock().unwrap();
            let Captured { spans, text, .. } = &mut *captured;
            let mut fields = Vec::new();
            attrs.record(&mut Fields {
                fields: &mut fields,
                text,
            });
            let metadata = attrs.metadata();
            spans.push(Seen {
                name: metadata.name(),
                target: metadata.target().to_owned(),
                level: *metadata.level(),
                fields,
            });
            Id::from_u64(spans.len() as u64)
        }

        fn record(&self, id: &Id, values: &Record<'_>) {
            let mut captured = self.0.lock().unwrap();
            let Captured { spans, text, .. } = &mut *captured;
            let span = &mut spans[id.into_u64() as usize - 1];
            values.record(&mut Fields {
                fields: &mut span.fields,
                text,
            });
        }

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            let mut captured = self.0.lock().unwrap();
            let Captured {
                events,
                stack,
                text,
                ..
            } = &mut *captured;
            let mut fields = Vec::new();
            event.record(&mut Fields {
                fields: &mut fields,
                text,
            });
            let message = fields
                .into_iter()
                .find(|(k, _)| k == "message")
                .map(|(_, v)| v)
                .unwrap_or_default();
            events.push((message, stack.last().copied()));
        }

        fn enter(&self, id: &Id) {
            self.0.lock().unwrap().stack.push(id.into_u64());
        }

        fn exit(&self, id: &Id) {
            let mut captured = self.0.lock().unwrap();
            assert_eq!(captured.stack.pop(), Some(id.into_u64()));
        }
    }

    fn get(key: Option<&str>) -> Request<String> {
        let mut req = Request::get("/");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        req.body(String::new()).unwrap()
    }

    async fn handler(_: Request<String>) -> Result<Response<String>, Infallible> {
        tracing::info!("in the handler");
        Ok(Response::new("ok".to_owned()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_span_per_request_with_key_id_consumer_and_outcome_and_never_the_key() {
        let store = MemoryStore::new();
        let format = KeyFormat::default();
        let (active, revoked) = (format.generate(), format.generate());
        let active_record = KeyRecord::new(&active, "acme-corp");
        let revoked_record = KeyRecord::new(&revoked, "umbrella")
            .with_revoked_at(SystemTime::now() - Duration::from_secs(1));
        let (active_id, revoked_id) = (active_record.id.clone(), revoked_record.id.clone());
        let hashes = [active.hash(), revoked.hash()];
        store.insert(active_record);
        store.insert(revoked_record);
        let auth = ApiKeyLayer::new(store);
        // One request a minute: the second is refused inside the layer.
        let limits = RateLimitLayer::new(
            MemoryRateLimitStore::new(),
            RateLimitPolicy::rate("per-minute", 1, Duration::from_secs(60)).unwrap(),
        );
        let limited = auth.layer(limits.layer(service_fn(handler)));
        let scoped = auth.layer(
            RequireScopeLayer::new([Scope::from_static("orders:read")]).layer(service_fn(handler)),
        );

        let capture = Capture::default();
        let _default = tracing::subscriber::set_default(capture.clone());
        let (active_key, revoked_key) = (active.expose_secret(), revoked.expose_secret());
        let mut malformed = active_key.to_owned();
        malformed.pop();
        for key in [
            Some(active_key),  // a miss (the slow path), allowed
            Some(active_key),  // a hit, over the limit
            None,              // no key
            Some(&malformed),  // not a key
            Some(revoked_key), // a miss, revoked
            Some(revoked_key), // a hit, revoked
        ] {
            limited.clone().oneshot(get(key)).await.unwrap();
        }
        // A hit, without the scope.
        scoped.oneshot(get(Some(active_key))).await.unwrap();
        drop(_default);

        let captured = capture.0.lock().unwrap();
        let spans: Vec<_> = captured
            .spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == "api_key")
            .collect();
        let seen: Vec<_> = spans
            .iter()
            .map(|(_, s)| {
                assert_eq!(s.target, "tower_api_key::auth");
                assert_eq!(s.level, tracing::Level::DEBUG);
                (s.field("key_id"), s.field("consumer"), s.field("outcome"))
            })
            .collect();
        let active = (Some(active_id.as_str()), Some("acme-corp"));
        let revoked = (Some(revoked_id.as_str()), Some("umbrella"));
        assert_eq!(
            seen,
            [
                (active.0, active.1, Some("allowed")),
                (active.0, active.1, Some("rate_limited")),
                (None, None, Some("missing")),
                (None, None, Some("invalid")),
                (revoked.0, revoked.1, Some("revoked")),
                (revoked.0, revoked.1, Some("revoked")),
                (active.0, active.1, Some("forbidden")),
            ]
        );
        // The handler ran inside the request's span.
        let in_handler: Vec<_> = captured
            .events
            .iter()
            .filter(|(message, _)| message == "in the handler")
            .collect();
        assert_eq!(in_handler.len(), 1, "{:?}", captured.events);
        assert_eq!(in_handler[0].1, Some(spans[0].0 as u64 + 1));
        assert!(captured.stack.is_empty());
        // Nothing written holds a key or a key's hash.
        assert!(captured.text.contains(&active_id));
        for secret in [active_key, revoked_key, &malformed] {
            assert!(!captured.text.contains(secret), "a key was recorded");
            assert!(
                !captured.text.contains(&secret[..20]),
                "part of a key was recorded"
            );
        }
        for hash in hashes {
            assert!(
                !captured.text.contains(&hash.to_hex()[..16]),
                "a key's hash was recorded"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_failure_is_logged_once_without_the_key_or_its_hash() {
        #[derive(Clone)]
        struct Down;
        #[async_trait::async_trait]
        impl crate::KeyResolver for Down {
            async fn resolve(
                &self,
                _: &crate::KeyHash,
            ) -> Result<Option<KeyRecord>, crate::ResolveError> {
                Err(crate::ResolveError::new("the database is down"))
            }
        }
        let service = ApiKeyLayer::new(Down).layer(service_fn(handler));
        let capture = Capture::default();
        let _default = tracing::subscriber::set_default(capture.clone());
        let key = KeyFormat::default().generate();
        for _ in 0..20 {
            let response = service
                .clone()
                .oneshot(get(Some(key.expose_secret())))
                .await;
            assert_eq!(
                response.unwrap().status(),
                http::StatusCode::SERVICE_UNAVAILABLE
            );
        }
        drop(_default);
        let captured = capture.0.lock().unwrap();
        let warnings: Vec<_> = captured
            .events
            .iter()
            .filter(|(m, _)| m.starts_with("API keys could not be resolved"))
            .collect();
        assert_eq!(warnings.len(), 1, "{:?}", captured.events);
        let outcomes: Vec<_> = captured
            .spans
            .iter()
            .filter(|s| s.name == "api_key")
            .map(|s| s.field("outcome"))
            .collect();
        assert_eq!(outcomes, vec![Some("unavailable"); 20]);
        assert!(captured.text.contains("the database is down"));
        assert!(!captured.text.contains(&key.expose_secret()[..20]));
        assert!(!captured.text.contains(&key.hash().to_hex()[..16]));
        assert!(!captured.text.contains(&key.hash().to_string()));
    }
}
