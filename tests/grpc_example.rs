//! Black-box test of `examples/grpc_server.rs`: the built binary on loopback, driven by
//! tonic clients over TCP (the one generated from the example's proto, and
//! tonic-health's and tonic-reflection's, as a generic client would find it). Keys are
//! made and revoked through the store the server shares (`DATABASE_URL`), as another
//! instance, the HTTP example or the `apikey` CLI would.
//!
//! The outage test starts a private PostgreSQL cluster and stops it; like the other
//! PostgreSQL tests it needs `TEST_POSTGRES_URL`, and says it skipped without it unless
//! `TOWER_API_KEY_REQUIRE_SERVICES=1`.
#![cfg(all(
    unix,
    feature = "tonic",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

use std::time::{Duration, Instant};

use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_api_key::store::{NewKey, PostgresStore, SqliteStore};
use tower_api_key::{KeyStore, Scopes};

#[path = "common/pg.rs"]
mod pg;
#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

/// The example's generated code: its client is what a Rust user of the service runs.
#[allow(unreachable_pub, dead_code)]
mod pb {
    include!("../examples/grpc/orders.v1.rs");
}

use pb::orders_client::OrdersClient;
use pb::{CreateOrderRequest, GetOrderRequest, ListOrdersRequest};
use server::{Server, TempDb, start_grpc};

/// How a key travels in the request's metadata.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `authorization: Bearer <key>`
    Bearer,
    /// `x-api-key: <key>`
    XApiKey,
}

fn request<T>(message: T, key: Option<&str>) -> Request<T> {
    match key {
        Some(key) => request_via(message, key, Via::Bearer),
        None => Request::new(message),
    }
}

fn request_via<T>(message: T, key: &str, via: Via) -> Request<T> {
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    match via {
        Via::Bearer => metadata.insert("authorization", format!("Bearer {key}").parse().unwrap()),
        Via::XApiKey => metadata.insert("x-api-key", key.parse().unwrap()),
    };
    request
}

/// A gRPC example server on a SQLite file of its own, the same store opened by the
/// test, and a channel to the server.
struct Fixture {
    server: Server,
    store: SqliteStore,
    channel: Channel,
    _db: TempDb,
}

async fn start(env: &[(&str, &str)]) -> Fixture {
    let db = TempDb::new("grpc");
    let url = db.url();
    let env: Vec<(&str, &str)> = std::iter::once(("DATABASE_URL", url.as_str()))
        .chain(env.iter().copied())
        .collect();
    let server = start_grpc(&env);
    let store = SqliteStore::connect(&url).await.unwrap();
    let channel = connect(&server).await;
    Fixture {
        server,
        store,
        channel,
        _db: db,
    }
}

async fn connect(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap()
}

/// A key of the consumer `acme` with `scopes`: its id and its secret.
async fn issue(store: &impl KeyStore, scopes: &[&str]) -> (String, String) {
    let new = NewKey::new("acme").with_scopes(Scopes::parse(scopes).unwrap());
    let created = store.create(new, "test").await.unwrap();
    (
        created.record.id.clone(),
        created.key.expose_secret().to_owned(),
    )
}

impl Fixture {
    fn orders(&self) -> OrdersClient<Channel> {
        OrdersClient::new(self.channel.clone())
    }

    async fn issue(&self, scopes: &[&str]) -> (String, String) {
        issue(&self.store, scopes).await
    }

    async fn create_order(&self, key: Option<&str>) -> Result<tonic::Response<pb::Order>, Status> {
        let message = CreateOrderRequest {
            item: "widget".into(),
            quantity: 2,
        };
        self.orders().create_order(request(message, key)).await
    }

    async fn get_order(&self, key: Option<&str>, id: u64) -> Result<pb::Order, Status> {
        let message = GetOrderRequest { id };
        Ok(self
            .orders()
            .get_order(request(message, key))
            .await?
            .into_inner())
    }

    /// `ListOrders`: the `RateLimit` field of its response metadata and the orders it
    /// streamed.
    async fn list_orders(&self, key: &str) -> (String, Vec<pb::Order>) {
        let response = self
            .orders()
            .list_orders(request(ListOrdersRequest {}, Some(key)))
            .await
            .unwrap();
        let ratelimit = metadata(response.metadata(), "ratelimit").to_owned();
        let mut stream = response.into_inner();
        let mut orders = Vec::new();
        while let Some(order) = stream.message().await.unwrap() {
            orders.push(order);
        }
        (ratelimit, orders)
    }

    async fn health(&self, service: &str) -> ServingStatus {
        health(&self.channel, service).await
    }
}

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let answer = HealthClient::new(channel.clone())
        .check(request)
        .await
        .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"));
    answer.into_inner().status()
}

fn metadata<'a>(map: &'a tonic::metadata::MetadataMap, name: &str) -> &'a str {
    map.get(name)
        .unwrap_or_else(|| panic!("no {name} metadata in {map:?}"))
        .to_str()
        .unwrap()
}

/// `r` of a `RateLimit` field such as `"default";r=41;t=36000`.
fn remaining(ratelimit: &str) -> u64 {
    let (_, rest) = ratelimit
        .split_once(";r=")
        .unwrap_or_else(|| panic!("no r= in {ratelimit:?}"));
    rest.split(';').next().unwrap().parse().unwrap()
}

/// Polls `check` every 50 ms until it gives `Some`; fails past `within`.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(done) = check().await {
            return done;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_and_reflection_answer_without_a_key() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let f = start(&[]).await;
    // A fresh database: the admin key is printed, as the HTTP example does.
    let admin = f.server.admin_key.as_deref().expect("an admin key");
    assert!(admin.starts_with("sk_live_"), "{admin}");

    assert_eq!(f.health("").await, ServingStatus::Serving);
    // Ready once the store has answered and its change log has been read.
    poll("SERVING", Duration::from_secs(20), || async {
        (f.health("orders.v1.Orders").await == ServingStatus::Serving).then_some(())
    })
    .await;

    // What `grpcurl list` and `grpcurl describe orders.v1.Orders` ask.
    let mut reflection = ServerReflectionClient::new(f.channel.clone());
    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let questions = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "orders.v1.Orders".into(),
        )),
    ];
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(questions))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "orders.v1.Orders"
        ]
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no file descriptor");
    };
    let file =
        prost_types::FileDescriptorProto::decode(&files.file_descriptor_proto[0][..]).unwrap();
    assert_eq!(file.package(), "orders.v1");
    let service = &file.service[0];
    assert_eq!(service.name(), "Orders");
    let methods: Vec<(&str, bool)> = service
        .method
        .iter()
        .map(|m| (m.name(), m.server_streaming()))
        .collect();
    assert_eq!(
        methods,
        [
            ("GetOrder", false),
            ("CreateOrder", false),
            ("ListOrders", true)
        ]
    );

    // Older clients (grpcurl before 1.9) ask v1alpha.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaAsk;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaAnswer;
    let question = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaAsk::ListServices(String::new())),
    };
    let answer = Alpha::new(f.channel.clone())
        .server_reflection_info(tokio_stream::iter([question]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaAnswer::ListServicesResponse(list)) = answer.message_response else {
        panic!("no v1alpha list of services");
    };
    assert!(list.service.iter().any(|s| s.name == "orders.v1.Orders"));
}

#[tokio::test]
async fn keys_from_bearer_and_x_api_key_with_rate_limit_metadata() {
    let f = start(&[("RATE_LIMIT", "100/1000h")]).await;
    let (_, key) = f.issue(&["orders:read", "orders:write"]).await;
    let created = f.create_order(Some(&key)).await.unwrap();
    assert_eq!(
        metadata(created.metadata(), "ratelimit-policy"),
        "\"default\";q=100;w=3600000"
    );
    let first = remaining(metadata(created.metadata(), "ratelimit"));
    let order = created.into_inner();
    assert_eq!(
        (order.consumer.as_str(), order.item.as_str()),
        ("acme", "widget")
    );

    let mut last = first;
    for via in [Via::Bearer, Via::XApiKey] {
        let request = request_via(GetOrderRequest { id: order.id }, &key, via);
        let response = f.orders().get_order(request).await.unwrap();
        let now = remaining(metadata(response.metadata(), "ratelimit"));
        assert_eq!(now, last - 1, "{via:?}");
        last = now;
        assert_eq!(response.into_inner(), order, "{via:?}");
    }
    // The scheme is case-insensitive.
    let mut lower = Request::new(GetOrderRequest { id: order.id });
    lower
        .metadata_mut()
        .insert("authorization", format!("bearer {key}").parse().unwrap());
    assert!(f.orders().get_order(lower).await.is_ok());
    // Another consumer's key does not see acme's order.
    let new = NewKey::new("globex").with_scopes(Scopes::parse(["orders:read"]).unwrap());
    let other = f.store.create(new, "test").await.unwrap();
    let status = f
        .get_order(Some(other.key.expose_secret()), order.id)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = f
        .orders()
        .create_order(request(
            CreateOrderRequest {
                item: String::new(),
                quantity: 1,
            },
            Some(&key),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn missing_bad_and_revoked_keys_are_unauthenticated() {
    let f = start(&[]).await;
    let (id, key) = f.issue(&["orders:read"]).await;
    let unknown = tower_api_key::KeyFormat::default().generate();
    for bad in [None, Some("sk_live_nope"), Some(unknown.expose_secret())] {
        let status = f.get_order(bad, 1).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}: {status:?}");
        assert!(!status.message().is_empty());
    }
    // Unknown order, but the key is good.
    assert_eq!(
        f.get_order(Some(&key), 1).await.unwrap_err().code(),
        Code::NotFound
    );
    // Revoked through the store (as the HTTP example's admin API or the CLI would): the
    // server's change feed drops it from its cache.
    f.store.revoke(&id, "test").await.unwrap();
    let status = poll("the revocation", Duration::from_secs(20), || async {
        let status = f.get_order(Some(&key), 1).await.unwrap_err();
        (status.code() == Code::Unauthenticated).then_some(status)
    })
    .await;
    assert!(!status.message().contains(&key));
}

#[tokio::test]
async fn missing_scope_is_permission_denied_naming_the_scope() {
    let f = start(&[]).await;
    let (_, reader) = f.issue(&["orders:read"]).await;
    let status = f.create_order(Some(&reader)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("orders:write"), "{status:?}");
    // The admin key may manage keys, not read orders.
    let admin = f.server.admin_key.clone().unwrap();
    let status = f.get_order(Some(&admin), 1).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("orders:read"), "{status:?}");
}

/// google.rpc.Status and google.rpc.RetryInfo as prost declares them (tonic-types has
/// them too; these are the fields the test reads).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// The delay of the `google.rpc.RetryInfo` detail of `status`.
fn retry_info(status: &Status) -> prost_types::Duration {
    let details = RpcStatus::decode(status.details()).unwrap();
    assert_eq!(details.code, status.code() as i32);
    assert_eq!(details.message, status.message());
    let [any] = &details.details[..] else {
        panic!("one detail: {details:?}");
    };
    assert_eq!(any.type_url, "type.googleapis.com/google.rpc.RetryInfo");
    RetryInfo::decode(&any.value[..])
        .unwrap()
        .retry_delay
        .unwrap()
}

#[tokio::test]
async fn over_the_limit_is_resource_exhausted_with_the_delay() {
    let f = start(&[("RATE_LIMIT", "2/1000h")]).await;
    let (id, key) = f.issue(&["orders:write"]).await;
    for _ in 0..2 {
        f.create_order(Some(&key)).await.unwrap();
    }
    let status = f.create_order(Some(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let after: u64 = metadata(status.metadata(), "retry-after").parse().unwrap();
    // One request in every 500 h comes back.
    assert!((1..=1_800_000).contains(&after), "{after}");
    let delay = retry_info(&status);
    assert_eq!((delay.seconds, delay.nanos), (after as i64, 0));
    assert_eq!(remaining(metadata(status.metadata(), "ratelimit")), 0);
    assert_eq!(
        metadata(status.metadata(), "ratelimit-policy"),
        "\"default\";q=2;w=3600000"
    );
    // Another key is not affected.
    let (_, other) = f.issue(&["orders:write"]).await;
    assert!(f.create_order(Some(&other)).await.is_ok());
    // Usage, written every 5 s, counts the refusal.
    poll("the usage counts", Duration::from_secs(30), || async {
        let usage = f.store.usage(&id).await.unwrap().unwrap();
        ((usage.requests, usage.rejected) == (2, 1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_streaming_call_is_charged_once() {
    let f = start(&[("RATE_LIMIT", "100/1000h")]).await;
    let (_, key) = f.issue(&["orders:read", "orders:write"]).await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(f.create_order(Some(&key)).await.unwrap().into_inner().id);
    }
    let (ratelimit, orders) = f.list_orders(&key).await;
    let mut last = remaining(&ratelimit);
    // 7 orders placed and one list: 8 of 100 spent.
    assert_eq!(last, 92, "{ratelimit}");
    assert_eq!(orders.iter().map(|o| o.id).collect::<Vec<_>>(), ids);
    for _ in 0..3 {
        let (ratelimit, orders) = f.list_orders(&key).await;
        assert_eq!(orders.len(), 7);
        let now = remaining(&ratelimit);
        assert_eq!(now, last - 1, "seven messages, one charge");
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_and_key_not_cached_is_unavailable() {
    if pg::test_url().is_none() {
        return;
    }
    let cluster = tokio::task::block_in_place(pg::Cluster::start);
    let url = cluster.url();
    let server = tokio::task::block_in_place(|| {
        start_grpc(&[("DATABASE_URL", url.as_str()), ("STORE_TIMEOUT", "1s")])
    });
    let store = PostgresStore::connect(&url).await.unwrap();
    let (_, seen) = issue(&store, &["orders:read"]).await;
    let (_, unseen) = issue(&store, &["orders:read"]).await;
    let channel = connect(&server).await;
    let orders = || OrdersClient::new(channel.clone());
    let get = |key: &str| request(GetOrderRequest { id: 1 }, Some(key));
    // Applying a key's create drops it from the cache (a negative entry would be
    // wrong), so `seen` is warmed only once the server has applied both creates: a
    // sentinel revoked after them is refused only then, as the log is applied in order.
    let (sentinel_id, sentinel) = issue(&store, &["orders:read"]).await;
    assert_eq!(
        orders().get_order(get(&sentinel)).await.unwrap_err().code(),
        Code::NotFound
    );
    store.revoke(&sentinel_id, "test").await.unwrap();
    poll(
        "the sentinel's revocation",
        Duration::from_secs(20),
        || async {
            let status = orders().get_order(get(&sentinel)).await.unwrap_err();
            (status.code() == Code::Unauthenticated).then_some(())
        },
    )
    .await;
    drop(store);
    assert_eq!(
        orders().get_order(get(&seen)).await.unwrap_err().code(),
        Code::NotFound
    );

    tokio::task::block_in_place(|| cluster.stop());
    let status = orders().get_order(get(&unseen)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().contains("postgres"), "{status:?}");
    let after: u64 = metadata(status.metadata(), "retry-after").parse().unwrap();
    assert_eq!(retry_info(&status).seconds, after as i64);
    // The key seen before the outage is still served from the cache.
    assert_eq!(
        orders().get_order(get(&seen)).await.unwrap_err().code(),
        Code::NotFound
    );
    // And the health service says the orders service is not ready.
    poll("NOT_SERVING", Duration::from_secs(20), || async {
        (health(&channel, "orders.v1.Orders").await == ServingStatus::NotServing).then_some(())
    })
    .await;
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
}
