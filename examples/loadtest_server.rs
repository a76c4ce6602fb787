//! The server `scripts/loadtest.sh` drives with wrk: one route, either bare
//! (`MODE=bare`) or behind `ApiKeyLayer` + `RateLimitLayer` (`MODE=auth`, with a budget
//! no load run can spend). It prints `key: <key>` and `listening on http://<addr>`, and
//! runs on one thread so that it can be pinned to one core.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
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
    let app = match mode.as_str() {
        "bare" => app,
        "auth" => {
            let generous = RateLimitPolicy::rate("load", 1_000_000_000, Duration::from_secs(1))?;
            app.layer(RateLimitLayer::new(MemoryRateLimitStore::new(), generous))
                .layer(ApiKeyLayer::new(keys))
        }
        other => return Err(format!("MODE must be bare or auth, not {other:?}").into()),
    };
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
