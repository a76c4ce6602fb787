//! The delivery task: claims due events from a [`WebhookOutbox`], posts them, and
//! records each attempt, retrying with exponential backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::{JoinHandle, JoinSet};

use super::WebhookSecret;
use crate::store::outbox::{Attempt, KeyEvent, WebhookOutbox, data_to_json, rfc3339};

/// Why a [`WebhookConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The endpoint is not an absolute `http://` URL.
    #[error("the webhook URL must be an absolute http:// URL: {0}")]
    BadUrl(&'static str),
}

/// Where and how events are delivered; for [`WebhookDeliverer::spawn`].
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    endpoint: Uri,
    secret: WebhookSecret,
    concurrency: usize,
    first_backoff: Duration,
    max_backoff: Duration,
    retry_for: Duration,
    timeout: Duration,
    poll_interval: Duration,
    scan_interval: Duration,
    expiring_notice: Duration,
}

/// The default notice of `key.expiring`: seven days.
pub const DEFAULT_EXPIRING_NOTICE: Duration = Duration::from_secs(7 * 86_400);

impl WebhookConfig {
    /// Deliveries to `url`, signed with `secret`: 4 at a time, a 10 s timeout, retries
    /// 5 s after the first failure, doubling up to an hour, for 24 hours; the outbox is
    /// polled every second and expiries scanned every minute, `key.expiring` seven days
    /// ahead.
    ///
    /// Only `http://` is supported for now (TLS to receivers will come later): put a
    /// TLS-terminating proxy on the same host or network in front of an `https://`
    /// receiver.
    pub fn new(url: &str, secret: WebhookSecret) -> Result<Self, WebhookError> {
        let endpoint: Uri = url.parse().map_err(|_| WebhookError::BadUrl("not a URL"))?;
        match endpoint.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(WebhookError::BadUrl("https:// is not supported yet")),
            _ => return Err(WebhookError::BadUrl("the scheme is not http")),
        }
        if endpoint.host().is_none_or(str::is_empty) {
            return Err(WebhookError::BadUrl("there is no host"));
        }
        // A user and password in the URL would be shown wherever the endpoint is (its
        // Debug, a log line): the receiver authenticates the sender by the signature.
        if endpoint
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            return Err(WebhookError::BadUrl(
                "a user or password in the URL is not supported (the signature authenticates)",
            ));
        }
        Ok(Self {
            endpoint,
            secret,
            concurrency: 4,
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            retry_for: Duration::from_secs(86_400),
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            scan_interval: Duration::from_secs(60),
            expiring_notice: DEFAULT_EXPIRING_NOTICE,
        })
    }

    /// How many deliveries may be in flight at once (default 4; at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The wait after a first failure, and the longest wait: each failure doubles it,
    /// up to `max` (default 5 s and 1 h).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.first_backoff);
        self
    }

    /// How long after an event happened failures are still retried (default 24 h);
    /// the first failure after that marks it failed. Keep it shorter than the store's
    /// outbox retention (7 days by default): older events are pruned, delivered or not.
    pub fn retry_for(mut self, window: Duration) -> Self {
        self.retry_for = window;
        self
    }

    /// How long one request may take (default 10 s). An event is leased for twice
    /// this: if its deliverer dies, another sends it again after the lease.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self
    }

    /// How often the outbox is read for due events (default 1 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self
    }

    /// How often keys are scanned for `key.expiring` and `key.expired` (default 60 s).
    pub fn scan_interval(mut self, interval: Duration) -> Self {
        self.scan_interval = interval.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self
    }

    /// How long before its expiry a key is announced as `key.expiring` (default 7 days).
    pub fn expiring_notice(mut self, notice: Duration) -> Self {
        self.expiring_notice = notice;
        self
    }

    /// The wait before the retry that follows attempt number `attempts`.
    fn backoff_after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.first_backoff
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The lease of a claimed event.
    fn lease(&self) -> Duration {
        self.timeout * 2
    }
}

/// The delivery task, running until this handle is dropped (or [`stop`](Self::stop)ped);
/// from [`WebhookDeliverer::spawn`].
///
/// Dropping it stops deliveries at once, even mid-request: the events in flight stay
/// leased in the outbox and are sent again when their lease ends, by this process after a
/// restart or by another instance.
#[derive(Debug)]
pub struct WebhookDeliverer {
    task: JoinHandle<()>,
}

impl Drop for WebhookDeliverer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookDeliverer {
    /// Starts delivering `outbox`'s events as `config` says, on the current tokio
    /// runtime.
    pub fn spawn<O: WebhookOutbox>(outbox: O, config: WebhookConfig) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let worker = Worker {
            outbox: Arc::new(outbox),
            config: Arc::new(config),
            client,
        };
        Self {
            task: tokio::spawn(worker.run()),
        }
    }

    /// Stops the task (as dropping the handle does).
    pub fn stop(self) {}
}

struct Worker<O> {
    outbox: Arc<O>,
    config: Arc<WebhookConfig>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl<O> Clone for Worker<O> {
    fn clone(&self) -> Self {
        Self {
            outbox: self.outbox.clone(),
            config: self.config.clone(),
            client: self.client.clone(),
        }
    }
}

impl<O: WebhookOutbox> Worker<O> {
    async fn run(self) {
        let mut in_flight = JoinSet::new();
        let mut next_scan = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_scan {
                next_scan = tokio::time::Instant::now() + self.config.scan_interval;
                let notice = self.config.expiring_notice;
                if let Err(e) = self
                    .outbox
                    .announce_expiries(SystemTime::now(), notice)
                    .await
                {
                    tracing::warn!(error = %e, "webhooks: the expiry scan failed");
                }
            }
            let free = self.config.concurrency.saturating_sub(in_flight.len());
            let mut filled = false;
            if free > 0 {
                let now = SystemTime::now();
                let lease_until = now + self.config.lease();
                match self.outbox.claim_due(now, lease_until, free).await {
                    Ok(events) => {
                        filled = events.len() == free;
                        for event in events {
                            in_flight.spawn(self.clone().deliver(event));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhooks: reading the outbox failed"),
                }
            }
            if in_flight.len() >= self.config.concurrency {
                in_flight.join_next().await;
            } else if !filled {
                tokio::select! {
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
    }

    /// One attempt on `event`, and its record.
    async fn deliver(self, event: KeyEvent) {
        let outcome = self.send(&event).await;
        let at = SystemTime::now();
        let attempt = match outcome {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered { at, status },
            failure => {
                let (status, error) = match failure {
                    Ok(status) => (Some(status), format!("the receiver answered {status}")),
                    Err(error) => (None, error),
                };
                let give_up = at
                    .duration_since(event.at)
                    .is_ok_and(|age| age >= self.config.retry_for);
                let retry_at = (!give_up).then(|| at + self.config.backoff_after(event.attempts));
                if give_up {
                    tracing::warn!(
                        event_id = %event.id, event_type = %event.event_type,
                        attempts = event.attempts, %error,
                        "webhooks: giving up on an event"
                    );
                } else {
                    tracing::debug!(
                        event_id = %event.id, event_type = %event.event_type,
                        attempts = event.attempts, %error,
                        "webhooks: a delivery failed; it will be retried"
                    );
                }
                Attempt::Failed {
                    at,
                    status,
                    error,
                    retry_at,
                }
            }
        };
        if let Err(e) = self.outbox.record_attempt(&event.id, &attempt).await {
            // The lease runs out and the event is sent again: at least once.
            tracing::warn!(event_id = %event.id, error = %e, "webhooks: recording an attempt failed");
        }
    }

    /// Posts `event`: the receiver's status, or why there was none.
    async fn send(&self, event: &KeyEvent) -> Result<u16, String> {
        let body = body_of(event);
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signature = self.config.secret.sign(&event.id, timestamp, &body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.config.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tower-api-key/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request failed: {e}"))?;
        match tokio::time::timeout(self.config.timeout, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(e)) => Err(error_chain(&e)),
            // The answer's body is not read: its status is all that counts.
            Ok(Ok(response)) => Ok(response.status().as_u16()),
        }
    }
}

/// The body of `event`: `{"type","timestamp","data":{…}}`.
pub(crate) fn body_of(event: &KeyEvent) -> Vec<u8> {
    let body = serde_json::json!({
        "type": event.event_type.name(),
        "timestamp": rfc3339(event.at),
        "data": data_to_json(&event.data),
    });
    body.to_string().into_bytes()
}

/// An error and its sources, `: `-separated (hyper's outermost message alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::{EventData, EventType};

    fn config() -> WebhookConfig {
        WebhookConfig::new("http://127.0.0.1:9/hooks", WebhookSecret::generate()).unwrap()
    }

    #[test]
    fn a_url_with_a_user_or_password_is_refused() {
        let secret = || WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        for url in [
            "http://user:pass@127.0.0.1/hooks",
            "http://user@127.0.0.1/hooks",
        ] {
            assert!(WebhookConfig::new(url, secret()).is_err(), "{url}");
        }
        assert!(WebhookConfig::new("http://127.0.0.1:9/hooks", secret()).is_ok());
    }

    #[test]
    fn only_http_urls_are_taken() {
        let secret = WebhookSecret::generate;
        assert!(WebhookConfig::new("https://example.com/", secret()).is_err());
        assert!(WebhookConfig::new("ftp://example.com/", secret()).is_err());
        assert!(WebhookConfig::new("/hooks", secret()).is_err());
        assert!(WebhookConfig::new("http://example.com/hooks", secret()).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let c = config();
        let waits: Vec<u64> = (1..=12).map(|n| c.backoff_after(n).as_secs()).collect();
        assert_eq!(
            waits,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(c.backoff_after(u32::MAX), Duration::from_secs(3600));
        // Retries at these waits span more than the 24 h window.
        let total: u64 = (1..=40).map(|n| c.backoff_after(n).as_secs()).sum();
        assert!(total > 86_400);
    }

    #[test]
    fn the_body_carries_ids_and_public_facts_only() {
        let data = EventData {
            key_id: "key_1".into(),
            consumer: "acme".into(),
            name: "ci".into(),
            start: "sk_live_AbC1".into(),
            expires_at: None,
            revoked_at: Some(SystemTime::UNIX_EPOCH),
            new_key_id: None,
            url: None,
            source: None,
        };
        let event = KeyEvent::new(EventType::KeyRevoked, SystemTime::UNIX_EPOCH, data);
        let body: serde_json::Value = serde_json::from_slice(&body_of(&event)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "key.revoked",
                "timestamp": "1970-01-01T00:00:00.000000000Z",
                "data": {
                    "key_id": "key_1", "consumer": "acme", "name": "ci", "start": "sk_live_AbC1",
                    "expires_at": null, "revoked_at": "1970-01-01T00:00:00.000000000Z"
                }
            })
        );
    }
}
