//! Webhooks of key events (feature `webhooks`), per the
//! [Standard Webhooks](https://www.standardwebhooks.com/) specification.
//!
//! The stores write every event to their [outbox](crate::store::outbox) in the same
//! transaction as the change it announces: `key.created`, `key.rotated`, `key.revoked`
//! and `key.leaked`; a periodic scan adds `key.expiring` (a notice ahead, seven days by
//! default) and `key.expired`. A [`WebhookDeliverer`] posts them to one endpoint:
//!
//! ```text
//! POST /hooks HTTP/1.1
//! content-type: application/json
//! webhook-id: msg_2LkHf0n3ZbQk8b1Yc6dTQp
//! webhook-timestamp: 1764633600
//! webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">
//!
//! {"type":"key.revoked","timestamp":"2026-12-02T00:00:00.000000000Z",
//!  "data":{"key_id":"key_…","consumer":"acme","name":"ci","start":"sk_live_AbC1",
//!          "expires_at":null,"revoked_at":"2026-12-02T00:00:00.000000000Z"}}
//! ```
//!
//! A 2xx answer delivers an event; anything else (or no answer within the timeout) is
//! retried with exponential backoff (5 s, doubling to an hour) for 24 hours, then the
//! event is marked failed. All of that state is in the outbox: a restart resumes, and
//! an event whose sender died is sent again. Delivery is **at least once**: receivers
//! deduplicate by `webhook-id`. A body carries ids and public facts, never a key or a
//! hash. Receivers verify with [`WebhookSecret::verify`] (or any Standard Webhooks
//! library).
//!
//! Only `http://` endpoints are supported for now.
//!
//! ```no_run
//! use tower_api_key::webhook::{WebhookConfig, WebhookDeliverer, WebhookSecret};
//! use tower_api_key::store::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = SqliteStore::connect("sqlite://keys.db").await.unwrap();
//! let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let config = WebhookConfig::new("http://127.0.0.1:8080/hooks", secret).unwrap();
//! let deliverer = WebhookDeliverer::spawn(store.clone(), config);
//! // … serve; dropping `deliverer` stops it.
//! # drop(deliverer);
//! # }
//! ```

mod deliver;
mod sign;

pub use deliver::{DEFAULT_EXPIRING_NOTICE, WebhookConfig, WebhookDeliverer, WebhookError};
pub use sign::{DEFAULT_TOLERANCE, SecretError, VerifyError, WebhookSecret};
