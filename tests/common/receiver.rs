//! A real webhook receiver on loopback: it checks every request's Standard Webhooks
//! signature, can fail on purpose (503) until told to recover, can hold requests open
//! until released (counting how many are in flight at once), and keeps what it got.
#![allow(dead_code)] // each test crate uses part of it

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::Semaphore;
use tower_api_key::webhook::{DEFAULT_TOLERANCE, WebhookSecret};

#[derive(Default)]
pub(crate) struct Received {
    /// Bodies by message id, and how often each id came.
    pub(crate) bodies: BTreeMap<String, Value>,
    pub(crate) times: BTreeMap<String, usize>,
}

pub(crate) struct Receiver {
    secret: WebhookSecret,
    /// Answer 503 to every signed request while set.
    pub(crate) failing: AtomicBool,
    pub(crate) refused: AtomicUsize,
    pub(crate) bad_signatures: AtomicUsize,
    pub(crate) received: Mutex<Received>,
    /// When holding: a request waits for a permit before it is answered.
    gate: Option<Semaphore>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Receiver {
    /// A receiver that answers at once: 503 while `failing`, else 204.
    pub(crate) async fn start(secret: WebhookSecret, failing: bool) -> (Arc<Self>, SocketAddr) {
        Self::serve(secret, failing, None).await
    }

    /// A receiver that holds every request open until [`release`](Self::release) lets
    /// it go, and remembers the most it held at once.
    pub(crate) async fn holding(secret: WebhookSecret) -> (Arc<Self>, SocketAddr) {
        Self::serve(secret, false, Some(Semaphore::new(0))).await
    }

    async fn serve(
        secret: WebhookSecret,
        failing: bool,
        gate: Option<Semaphore>,
    ) -> (Arc<Self>, SocketAddr) {
        let rx = Arc::new(Self {
            secret,
            failing: AtomicBool::new(failing),
            refused: AtomicUsize::new(0),
            bad_signatures: AtomicUsize::new(0),
            received: Mutex::new(Received::default()),
            gate,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rx, addr)
    }

    /// Lets `n` held requests be answered.
    pub(crate) fn release(&self, n: usize) {
        self.gate
            .as_ref()
            .expect("a holding receiver")
            .add_permits(n);
    }

    /// Requests being held now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests held at once so far.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// How many distinct messages of `event_type` arrived for `key_id`.
    pub(crate) fn messages(&self, event_type: &str, key_id: &str) -> usize {
        let received = self.received.lock().unwrap();
        received
            .bodies
            .values()
            .filter(|b| b["type"] == event_type && b["data"]["key_id"] == key_id)
            .count()
    }

    /// How many distinct messages arrived.
    pub(crate) fn count(&self) -> usize {
        self.received.lock().unwrap().bodies.len()
    }
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if rx
        .secret
        .verify(&headers, &body, SystemTime::now(), DEFAULT_TOLERANCE)
        .is_err()
    {
        rx.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if rx.failing.load(Ordering::SeqCst) {
        rx.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(gate) = &rx.gate {
        let now = rx.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        rx.max_in_flight.fetch_max(now, Ordering::SeqCst);
        gate.acquire().await.unwrap().forget();
        rx.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let mut received = rx.received.lock().unwrap();
    *received.times.entry(id.clone()).or_default() += 1;
    received
        .bodies
        .insert(id, serde_json::from_slice(&body).unwrap());
    StatusCode::NO_CONTENT
}
