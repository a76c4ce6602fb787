//! How a request that reached an [`ApiKeyService`](crate::ApiKeyService) ended, and
//! the reporting of it: one `tracing` span per request and, with the `metrics` feature,
//! one count in `tower_api_key_requests_total` (see [`crate::metrics`]).
//!
//! # The span
//!
//! Each request gets one span, `api_key` (target `tower_api_key::auth`), at level
//! `DEBUG`, with the fields
//!
//! - `key_id`: the id of the key the request carried, once known (never the key, never
//!   its hash);
//! - `consumer`: the key's consumer, once known;
//! - `outcome`: how the request ended: one of the names of [`Outcome`], the same as the
//!   metric's `outcome` label.
//!
//! The service's work and the inner service's future run inside it (it is entered
//! while polling), so that spans and events of handlers are its children.
//!
//! `DEBUG`, as tower-http's `TraceLayer` makes its spans: a service that logs at `INFO`
//! (the usual production setting) pays one level check per request and nothing else:
//! no span is built and nothing is allocated. Turn it on with a filter such as
//! `tower_api_key=debug`, for the subscriber or for one layer of it (an OpenTelemetry
//! layer, say).

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
    /// The key store (or the rate-limit store) could not answer: 503.
    Unavailable = "unavailable",
    /// The inner service failed (returned an error instead of a response).
    Error = "error",
}

impl Outcome {
    /// How many outcomes there are.
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

/// One request's span and count, finished once.
pub(crate) struct Report {
    span: Span,
    tally: Tally,
    /// The outcome of a response that carries no refusal mark.
    passed: Outcome,
}

impl Report {
    /// Reports nothing: for futures that are not an `ApiKeyService`'s.
    pub(crate) const NONE: Self = Self {
        span: Span::none(),
        tally: Tally::OFF,
        passed: Outcome::Allowed,
    };

    /// A new request's report: its span (when a subscriber wants it) and, with the
    /// `metrics` feature, its count in `requests`.
    pub(crate) fn start(requests: &Requests) -> Self {
        Self {
            span: tracing::debug_span!(
                target: "tower_api_key::auth",
                "api_key",
                key_id = Empty,
                consumer = Empty,
                outcome = Empty,
            ),
            tally: requests.tally(),
            passed: Outcome::Allowed,
        }
    }

    /// The report of a request whose key belongs to `auth`.
    pub(crate) fn of_caller(requests: &Requests, auth: &Authenticated) -> Self {
        let report = Self::start(requests);
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
    pub(crate) fn caller(&self, auth: &Authenticated) {
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
    use std::sync::{Arc, Mutex};

    use http::Request;
    use tower::{ServiceExt, service_fn};
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Metadata, Subscriber};

    use super::*;
    use crate::auth::Rejection;
    use crate::{ApiKeyLayer, KeyFormat, KeyRecord, MemoryStore, RateLimitLayer, RateLimitPolicy};

    #[test]
    fn names_are_distinct_label_values() {
        let names: HashSet<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Outcome::COUNT);
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
            assert!(
                outcome
                    .name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                outcome.name()
            );
        }
    }

    /// Spans and their fields as a subscriber saw them, and every field written.
    #[derive(Default, Clone)]
    struct Captured {
        spans: Arc<Mutex<Vec<CapturedSpan>>>,
        /// Every value any span or event recorded, as text.
        text: Arc<Mutex<String>>,
    }

    #[derive(Debug, Default, Clone)]
    struct CapturedSpan {
        name: &'static str,
        target: String,
        level: Option<tracing::Level>,
        fields: Vec<(String, String)>,
    }

    impl CapturedSpan {
        fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    struct Fields<'a>(&'a mut Vec<(String, String)>, &'a mut String);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            let value = format!("{value:?}");
            self.1.push_str(&value);
            self.1.push('\n');
            self.0.push((field.name().to_owned(), value));
        }

        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.1.push_str(value);
            self.1.push('\n');
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl Subscriber for Captured {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::always()
        }

        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, attrs: &Attributes<'_>) -> Id {
            let mut spans = self.spans.lock().unwrap();
            let mut span = CapturedSpan {
                name: attrs.metadata().name(),
                target: attrs.metadata().target().to_owned(),
                level: Some(*attrs.metadata().level()),
                fields: Vec::new(),
            };
            let mut text = self.text.lock().unwrap();
            attrs.record(&mut Fields(&mut span.fields, &mut text));
            spans.push(span);
            Id::from_u64(spans.len() as u64)
        }

        fn record(&self, id: &Id, values: &Record<'_>) {
            let mut spans = self.spans.lock().unwrap();
            let span = &mut spans[id.into_u64() as usize - 1];
            let mut text = self.text.lock().unwrap();
            values.record(&mut Fields(&mut span.fields, &mut text));
        }

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &tracing::Event<'_>) {
            let mut ignored = Vec::new();
            let mut text = self.text.lock().unwrap();
            text.push_str(event.metadata().name());
            event.record(&mut Fields(&mut ignored, &mut text));
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }

    fn get(key: Option<&str>) -> Request<String> {
        let mut req = Request::get("/");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        req.body(String::new()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_request_has_one_span_with_key_id_consumer_and_outcome_and_never_the_key() {
        let store = MemoryStore::new();
        let key = KeyFormat::default().generate();
        let record = KeyRecord::new(&key, "acme-corp");
        let id = record.id.clone();
        let hash = record.hash.to_string();
        store.insert(record);
        let ok = |_req: Request<String>| async { Ok::<_, std::convert::Infallible>(Response::new(String::from("ok"))) };
        let limits = RateLimitLayer::new(
            crate::MemoryRateLimitStore::new(),
            RateLimitPolicy::per_second(1).burst(1),
        );
        let service = ApiKeyLayer::new(store).layer_around(limits.layer_around(service_fn(ok)));
        let captured = Captured::default();
        let dispatch = tracing::Dispatch::new(captured.clone());
        let _guard = tracing::dispatcher::set_default(&dispatch);

        let secret = key.expose_secret();
        let mut malformed = secret.to_owned();
        malformed.pop();
        for req in [
            get(Some(secret)),     // a miss: the slow path
            get(Some(secret)),     // a hit, but over the limit of one a second
            get(None),             // missing
            get(Some(&malformed)), // invalid
        ] {
            service.clone().oneshot(req).await.unwrap();
        }

        let spans: Vec<_> = captured
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == "api_key")
            .cloned()
            .collect();
        assert_eq!(spans.len(), 4, "{spans:#?}");
        for span in &spans {
            assert_eq!(span.target, "tower_api_key::auth");
            assert_eq!(span.level, Some(tracing::Level::DEBUG));
        }
        let fields = |span: &CapturedSpan| {
            (
                span.field("key_id").map(str::to_owned),
                span.field("consumer").map(str::to_owned),
                span.field("outcome").map(str::to_owned),
            )
        };
        let known = (Some(id.clone()), Some("acme-corp".to_owned()));
        let outcomes: Vec<_> = spans.iter().map(fields).collect();
        assert_eq!(
            outcomes,
            [
                (known.0.clone(), known.1.clone(), Some("allowed".to_owned())),
                (known.0.clone(), known.1.clone(), Some("rate_limited".to_owned())),
                (None, None, Some("missing".to_owned())),
                (None, None, Some("invalid".to_owned())),
            ]
        );
        let text = captured.text.lock().unwrap();
        assert!(text.contains(&id), "the capture saw the key id");
        assert!(!text.contains(secret), "the key was recorded");
        assert!(!text.contains(&malformed), "the malformed key was recorded");
        assert!(!text.contains(&hash[..16]), "the key's hash was recorded");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refusal_made_inside_is_its_outcome_and_an_answer_is_allowed() {
        let refusal = |_req: Request<String>| async {
            let mut response = Rejection::new(
                AuthError::InsufficientScope {
                    scope: "orders:read".into(),
                },
                false,
            )
            .render()
            .map(|b| String::from_utf8(b.to_vec()).unwrap());
            mark(
                &mut response,
                &AuthError::InsufficientScope {
                    scope: "orders:read".into(),
                },
            );
            Ok::<_, std::convert::Infallible>(response)
        };
        let mut report = Report::start(&Requests::default());
        let response = refusal(get(None)).await;
        let outcome = response.as_ref().unwrap().extensions().get::<Marked>().unwrap().0;
        assert_eq!(outcome, Outcome::Forbidden);
        report.finish_with(&response);
        let answer: Result<Response<String>, ()> = Ok(Response::new(String::new()));
        assert!(answer.as_ref().unwrap().extensions().get::<Marked>().is_none());
    }
}
