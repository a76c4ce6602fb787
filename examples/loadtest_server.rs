//! The server `scripts/loadtest.sh` drives with wrk: one route, either bare
//! (`MODE=bare`) or behind `ApiKeyLayer` + `RateLimitLayer` with a budget no load run can
//! spend, added with two `Router::layer` calls (`MODE=auth`), with one call of a
//! `ServiceBuilder` holding both (`MODE=auth-one`), or wrapped around the router
//! (`MODE=auth-outer`). Two modes split the cost: `MODE=auth-only` is `ApiKeyLayer` alone,
//! and `MODE=bare-headers` a bare route answering the two `RateLimit` header lines that
//! `auth` sends (what those bytes alone cost on the wire). `MODE=auth-redis` is `auth`
//! with the rate limits in Redis at `REDIS_URL` (default `redis://127.0.0.1:6379/`), in
//! `REDIS_MODE` `batched` (the default) or `exact`. `MODE=floor` is the same work for an
//! allowed request written as plainly as it can be, in one service around the router
//! (`examples/support/floor.rs`): the floor under our layers, to tell the work from what
//! the layers add; `MODE=floor-nosha-nohdr` and the like leave parts of that work out, to
//! price each. It prints `key: <key>` and `listening on http://<addr>`, and runs on
//! one thread so that it can be pinned to one core.

use std::time::Duration;

#[path = "support/floor.rs"]
mod floor;

use axum::routing::get;
use axum::{Router, ServiceExt};
use tower::Layer;
use tower_api_key::ratelimit::{RedisMode, RedisRateLimitStore};
use tower_api_key::{
    ApiKeyLayer, KeyFormat, KeyRecord, MemoryRateLimitStore, MemoryStore, RateLimitLayer,
    RateLimitPolicy,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let mode = std::env::var("MODE").unwrap_or_else(|_| "bare".to_owned());
    let keys = MemoryStore::new();
    let key = KeyFormat::default().generate();
    keys.insert(KeyRecord::new(&key, "loadtest"));
    println!("key: {}", key.expose_secret());

    let app = Router::new().route("/", get(|| async { "ok" }));
    let generous = RateLimitPolicy::rate("load", 1_000_000_000, Duration::from_secs(1))?;
    let limits = RateLimitLayer::new(MemoryRateLimitStore::new(), generous.clone());
    let auth = ApiKeyLayer::new(keys);
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    match mode.as_str() {
        "bare" => axum::serve(listener, app).await?,
        "bare-headers" => {
            // What `auth` answers, from a bare route: the floor of sending the standard
            // headers (the same bytes on the wire), with none of the layers' work.
            let app = Router::new().route(
                "/",
                get(|| async {
                    (
                        [
                            ("ratelimit-policy", "\"load\";q=1000000000;w=1"),
                            ("ratelimit", "\"load\";r=999999999;t=1"),
                        ],
                        "ok",
                    )
                }),
            );
            axum::serve(listener, app).await?
        }
        "auth" => axum::serve(listener, app.layer(limits).layer(auth)).await?,
        "auth-redis" => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
            let mode = match std::env::var("REDIS_MODE").as_deref() {
                Err(_) | Ok("batched") => RedisMode::Batched,
                Ok("exact") => RedisMode::Exact,
                Ok(other) => {
                    return Err(
                        format!("REDIS_MODE must be batched or exact, not {other:?}").into(),
                    );
                }
            };
            let store = RedisRateLimitStore::open(&url)?
                .with_mode(mode)
                .with_prefix(format!("loadtest:{}:", std::process::id()));
            store.ping().await?;
            let limits = RateLimitLayer::new(store, generous);
            axum::serve(listener, app.layer(limits).layer(auth)).await?
        }
        "auth-only" => axum::serve(listener, app.layer(auth)).await?,
        "auth-one" => {
            let both = tower::ServiceBuilder::new().layer(auth).layer(limits);
            axum::serve(listener, app.layer(both)).await?
        }
        "auth-outer" => {
            let service = auth.layer(limits.layer(app));
            let make = ServiceExt::<axum::extract::Request>::into_make_service(service);
            axum::serve(listener, make).await?
        }
        other => {
            let Some(skip) = floor::Skip::parse(other) else {
                return Err(format!(
                    "MODE must be bare, bare-headers, auth, auth-only, auth-one, auth-outer, auth-redis, floor or floor-no<part>…, not {other:?}"
                )
                .into());
            };
            let service = floor::FloorLayer::new(&key, "loadtest", generous, skip).layer(app);
            let make = ServiceExt::<axum::extract::Request>::into_make_service(service);
            axum::serve(listener, make).await?
        }
    }
    Ok(())
}
