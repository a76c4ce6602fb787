//! A real tonic server behind `ApiKeyLayer`, called by a real tonic client over TCP.
//!
//! The service is written out by hand (what tonic-build would generate) so that the test
//! needs no `protoc`.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::HeaderName;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::codegen::Service;
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyFormat, KeyRecord, KeySource, MemoryRateLimitStore, MemoryStore,
    RateLimitLayer, RateLimitPolicy, Scopes, grpc, scope,
};

scope!(OrdersRead = "orders:read");

#[derive(Clone, PartialEq, prost::Message)]
struct WhoamiRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct WhoamiReply {
    #[prost(string, tag = "1")]
    key_id: String,
    #[prost(string, tag = "2")]
    consumer: String,
    #[prost(string, repeated, tag = "3")]
    scopes: Vec<String>,
}

const WHOAMI: &str = "/test.Auth/Whoami";
const ORDERS: &str = "/test.Auth/Orders";

/// The handlers: one reads `Authenticated`, one requires a scope.
#[derive(Clone, Copy)]
struct Handler {
    needs_scope: bool,
}

impl UnaryService<WhoamiRequest> for Handler {
    type Response = WhoamiReply;
    type Future = Pin<Box<dyn Future<Output = Result<Response<WhoamiReply>, Status>> + Send>>;

    fn call(&mut self, request: Request<WhoamiRequest>) -> Self::Future {
        let result = if self.needs_scope {
            grpc::require::<OrdersRead, _>(&request).cloned()
        } else {
            grpc::authenticated(&request).cloned()
        };
        Box::pin(async move {
            let auth = result?;
            Ok(Response::new(WhoamiReply {
                key_id: auth.key_id().to_owned(),
                consumer: auth.consumer().to_owned(),
                scopes: auth.scopes().iter().map(|s| s.to_string()).collect(),
            }))
        })
    }
}

#[derive(Clone)]
struct AuthService;

impl NamedService for AuthService {
    const NAME: &'static str = "test.Auth";
}

impl Service<http::Request<tonic::body::Body>> for AuthService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let needs_scope = match req.uri().path() {
            WHOAMI => false,
            ORDERS => true,
            _ => {
                return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
            }
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(Handler { needs_scope }, req).await)
        })
    }
}

struct Fixture {
    channel: Channel,
    store: MemoryStore,
}

async fn start() -> Fixture {
    start_with_limit("1000/1s").await
}

/// A server behind `ApiKeyLayer` and then `RateLimitLayer` with `limit` per key.
async fn start_with_limit(limit: &str) -> Fixture {
    let store = MemoryStore::new();
    let layer = ApiKeyLayer::new(store.clone())
        .source(KeySource::bearer().or(KeySource::header(HeaderName::from_static("x-api-key"))));
    let policy: RateLimitPolicy = limit.parse().unwrap();
    let limiter = RateLimitLayer::new(MemoryRateLimitStore::new(), policy);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .layer(limiter)
            .add_service(AuthService)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Fixture { channel, store }
}

impl Fixture {
    fn issue(&self, scopes: &[&str], edit: impl FnOnce(KeyRecord) -> KeyRecord) -> ApiKey {
        let key = KeyFormat::default().generate();
        let record = KeyRecord::new(&key, "acme").with_scopes(Scopes::parse(scopes).unwrap());
        self.store.insert(edit(record));
        key
    }

    async fn call(&self, method: &'static str, key: Option<&str>) -> Result<WhoamiReply, Status> {
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        client.ready().await.unwrap();
        let mut request = Request::new(WhoamiRequest {});
        if let Some(key) = key {
            let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        client
            .unary(
                request,
                PathAndQuery::from_static(method),
                ProstCodec::default(),
            )
            .await
            .map(Response::into_inner)
    }
}

#[tokio::test]
async fn handler_reads_the_caller_from_the_extensions() {
    let f = start().await;
    let key = f.issue(&["orders:read"], |r| r.with_id("key_grpc"));
    let reply = f.call(WHOAMI, Some(key.expose_secret())).await.unwrap();
    assert_eq!(reply.key_id, "key_grpc");
    assert_eq!(reply.consumer, "acme");
    assert_eq!(reply.scopes, ["orders:read"]);
    assert!(f.call(ORDERS, Some(key.expose_secret())).await.is_ok());
}

#[tokio::test]
async fn missing_bad_and_expired_keys_are_unauthenticated() {
    let f = start().await;
    let expired = f.issue(&[], |r| r.with_expires_at(SystemTime::UNIX_EPOCH));
    let revoked = f.issue(&[], |r| r.with_revoked_at(SystemTime::now()));
    let unknown = KeyFormat::default().generate();
    for key in [
        None,
        Some("sk_live_typo"),
        Some(unknown.expose_secret()),
        Some(revoked.expose_secret()),
        Some(expired.expose_secret()),
    ] {
        let status = f.call(WHOAMI, key).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{key:?}: {status:?}");
        assert!(!status.message().is_empty());
    }
    let status = f
        .call(WHOAMI, Some(expired.expose_secret()))
        .await
        .unwrap_err();
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn missing_scope_is_permission_denied_from_the_handler_helper() {
    let f = start().await;
    let key = f.issue(&["users:read"], |r| r);
    let status = f.call(ORDERS, Some(key.expose_secret())).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("orders:read"));
}

#[tokio::test]
async fn spent_rate_limit_is_resource_exhausted() {
    let f = start_with_limit("2/60s").await;
    let key = f.issue(&[], |r| r);
    for _ in 0..2 {
        f.call(WHOAMI, Some(key.expose_secret())).await.unwrap();
    }
    let status = f.call(WHOAMI, Some(key.expose_secret())).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("default"), "{}", status.message());
    // Another key is not affected.
    let other = f.issue(&[], |r| r);
    assert!(f.call(WHOAMI, Some(other.expose_secret())).await.is_ok());
}

#[tokio::test]
async fn unreachable_store_is_unavailable() {
    #[derive(Clone)]
    struct Down;
    #[async_trait::async_trait]
    impl tower_api_key::KeyResolver for Down {
        async fn resolve(
            &self,
            _: &tower_api_key::KeyHash,
        ) -> Result<Option<KeyRecord>, tower_api_key::ResolveError> {
            Err(tower_api_key::ResolveError::new("db down"))
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(ApiKeyLayer::new(Down))
            .add_service(AuthService)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let f = Fixture {
        channel: Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        store: MemoryStore::new(),
    };
    let key = KeyFormat::default().generate();
    let status = f.call(WHOAMI, Some(key.expose_secret())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains("db down"));
}
