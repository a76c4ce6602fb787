//! The gRPC example server: `cargo run --features full --example grpc_server`.
//!
//! `orders.v1.Orders` (examples/proto/orders/v1/orders.proto) served by tonic behind
//! `ApiKeyLayer` and `RateLimitLayer`, beside the standard health service
//! (`grpc.health.v1.Health`) and server reflection (`grpc.reflection.v1` and
//! `v1alpha`), which need no key, so that generic clients can find and check it.
//!
//! - `GRPC_BIND` (default `127.0.0.1:50051`) is where it listens (plaintext HTTP/2).
//! - `DATABASE_URL`, `RATE_LIMIT`, `REDIS_URL`, `REDIS_MODE`, `CACHE_TTL`,
//!   `CACHE_STALE`, `STORE_TIMEOUT` and `CHANGES_POLL` mean what they mean for the HTTP
//!   example server (`examples/server.rs`), and the two can share a store: a key created,
//!   revoked or rotated through one (or the `apikey` CLI) is seen by the other.
//! - On a start that finds no active admin key it issues one (scope `admin`) and prints
//!   `admin key: <key>`; then `listening on http://<address>`.
//! - Keys are read from the `authorization: Bearer …` and the `x-api-key` metadata.
//! - `GetOrder` and `ListOrders` need `orders:read`, `CreateOrder` needs `orders:write`.
//!   Each call is charged once against the key's rate limit, a streaming one too, and
//!   its `ratelimit` and `ratelimit-policy` response metadata say how much is left.
//! - The health service answers `SERVING` for the server (`""`); for
//!   `orders.v1.Orders`, `SERVING` once the store answers and its change log has been
//!   read, `NOT_SERVING` before that and while the store does not answer or changes made
//!   elsewhere stop arriving (what `/readyz` says on the HTTP server), checked every
//!   second.
//!
//! Usage is counted off the request path and written every 5 s. It stops cleanly on
//! Ctrl-C or SIGTERM, writing the last usage counts first.
//!
//! The Rust code of the service is generated from the proto by tonic-prost-build and
//! committed in `examples/grpc/` with the encoded descriptor set that reflection serves,
//! so that neither running this nor depending on the crate needs `protoc` or a build
//! script; `tests/grpc_codegen.rs` fails when they are stale.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::service::LayerExt as _;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;
use tower_api_key::resolve::{ChangeFollower, FeedHealth};
use tower_api_key::usage::{UsageLayer, UsageRecorder};
use tower_api_key::{ApiKeyLayer, RateLimitLayer, grpc};

// Shared with the HTTP example server: the store, its cache and change feed, the rate
// limit, where keys are read, the shutdown signal.
#[path = "support/setup.rs"]
mod setup;

use setup::Store;

/// What tonic-prost-build generates from `examples/proto/orders/v1/orders.proto`.
#[allow(unreachable_pub)]
mod pb {
    include!("grpc/orders.v1.rs");

    /// The proto's encoded `FileDescriptorSet`, for server reflection.
    pub(crate) const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("grpc/orders.v1.bin");
}

use pb::orders_server::{Orders, OrdersServer};
use pb::{CreateOrderRequest, GetOrderRequest, ListOrdersRequest, Order};

/// The orders, in memory: every consumer's, each caller sees its own.
#[derive(Default)]
struct OrdersService {
    orders: Mutex<Vec<Order>>,
}

impl OrdersService {
    fn orders(&self) -> std::sync::MutexGuard<'_, Vec<Order>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tonic::async_trait]
impl Orders for OrdersService {
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        // The caller, put in the request's extensions by ApiKeyLayer; PERMISSION_DENIED
        // naming the scope if its key lacks it.
        let auth = grpc::require_scope(&request, "orders:read")?;
        let id = request.get_ref().id;
        self.orders()
            .iter()
            .find(|o| o.id == id && o.consumer == auth.consumer())
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no order {id}")))
    }

    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let consumer = grpc::require_scope(&request, "orders:write")?
            .consumer()
            .to_owned();
        let new = request.into_inner();
        if new.item.trim().is_empty() || new.quantity == 0 {
            return Err(Status::invalid_argument(
                "item must not be empty and quantity must be at least 1",
            ));
        }
        let mut orders = self.orders();
        let order = Order {
            id: orders.len() as u64 + 1,
            consumer,
            item: new.item,
            quantity: new.quantity,
        };
        orders.push(order.clone());
        Ok(Response::new(order))
    }

    type ListOrdersStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<Self::ListOrdersStream>, Status> {
        let auth = grpc::require_scope(&request, "orders:read")?;
        let mine: Vec<Order> = self
            .orders()
            .iter()
            .filter(|o| o.consumer == auth.consumer())
            .cloned()
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(
            mine.into_iter().map(Ok),
        ))))
    }
}

#[tokio::main]
async fn main() -> Result<(), setup::BoxError> {
    // The library's own log lines (a Redis outage, a failing store) on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let bind: SocketAddr = std::env::var("GRPC_BIND")
        .unwrap_or_else(|_| "127.0.0.1:50051".to_owned())
        .parse()
        .map_err(|e| format!("GRPC_BIND must be an address such as 127.0.0.1:50051: {e}"))?;
    let rate_limit = setup::rate_limit()?;
    let cache_settings = setup::CacheSettings::from_env()?;
    let store = setup::open_store().await?;
    setup::ensure_admin_key(&store, "grpc_server").await?;
    let setup::Cache {
        cache,
        follower,
        probe_timeout,
    } = cache_settings.build(&store);
    let (limit_store, _redis) = setup::rate_limit_store().await?;
    let usage = UsageRecorder::spawn(store.clone(), Duration::from_secs(5));

    // Outermost first: authenticate, count, limit, then the service.
    let keyed = ServiceBuilder::new()
        .layer(
            ApiKeyLayer::from_cache(cache)
                .source(setup::key_source())
                .count_refusals(usage.clone()),
        )
        .layer(UsageLayer::new(usage.clone()))
        .layer(RateLimitLayer::new(limit_store, rate_limit))
        .into_inner();
    // `named_layer` keeps the service's gRPC name, so that the router sends only
    // `/orders.v1.Orders/*` through the layers; health and reflection stay open.
    let orders = keyed.named_layer(OrdersServer::new(OrdersService::default()));

    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the first probe finds the store and the change log read.
    health
        .set_not_serving::<OrdersServer<OrdersService>>()
        .await;
    tokio::spawn(report_health(health, store, follower, probe_timeout));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    let shutdown = setup::shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    // On stdout after the admin key line, so that readers see the two in order.
    println!("listening on http://{}", listener.local_addr()?);
    Server::builder()
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(orders)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    usage.shutdown().await;
    eprintln!("shut down");
    Ok(())
}

/// Once a second: `orders.v1.Orders` is `SERVING` while the store answers within
/// `timeout` and the change feed is not down, `NOT_SERVING` otherwise.
async fn report_health(
    health: HealthReporter,
    store: Arc<dyn Store>,
    follower: Arc<ChangeFollower>,
    timeout: Duration,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let store_ok = tokio::time::timeout(timeout, store.last_seq())
            .await
            .is_ok_and(|r| r.is_ok());
        let status = if store_ok && follower.state().health != FeedHealth::Down {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health
            .set_service_status(
                <OrdersServer<OrdersService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }
}
