//! A flood of well-formed unknown keys against a server, beside a legitimate key's
//! steady traffic, for `scripts/flood.sh`: `cargo run --release --example flood -- …`.
//!
//! The keys pass the public checksum (they are minted with [`KeyFormat::generate`]), so
//! each distinct one is a cache miss on the server. One connection sends the legitimate
//! key every `--every-ms` and records its latency; `--conns` connections send minted
//! keys at `--per-minute` in total (0: none, for a baseline), from `--flood-from` (a local
//! address such as `127.0.0.2`: another client than the legitimate one) if given. At the end it prints one line of figures: requests
//! and statuses of both, the legitimate key's latency percentiles.
//!
//! ```text
//! flood --addr 127.0.0.1:3000 --key sk_live_… --path /v1/whoami --per-minute 100000 --seconds 60
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tower_api_key::KeyFormat;

#[path = "support/http1.rs"]
mod http1;
use http1::Conn;

struct Args {
    addr: String,
    key: String,
    path: String,
    per_minute: u64,
    seconds: u64,
    every_ms: u64,
    conns: u64,
    flood_from: Option<std::net::IpAddr>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:3000".into(),
        key: String::new(),
        path: "/v1/whoami".into(),
        per_minute: 100_000,
        seconds: 60,
        every_ms: 5,
        conns: 8,
        flood_from: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--addr" => a.addr = value.clone(),
            "--key" => a.key = value.clone(),
            "--path" => a.path = value.clone(),
            "--per-minute" => a.per_minute = number()?,
            "--seconds" => a.seconds = number()?,
            "--every-ms" => a.every_ms = number()?.max(1),
            "--conns" => a.conns = number()?.max(1),
            "--flood-from" => {
                a.flood_from = Some(value.parse().map_err(|e| format!("{flag}: {e}"))?);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.key.is_empty() {
        return Err("--key (the legitimate key) is required".into());
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = args()?;
    let end = Instant::now() + Duration::from_secs(a.seconds);
    // The flood: each connection paced to its share of the rate.
    let per_conn = Duration::from_secs_f64(60.0 * a.conns as f64 / a.per_minute.max(1) as f64);
    let mut flood = Vec::new();
    // `--per-minute 0`: no flood, the legitimate key alone (the baseline).
    let conns = if a.per_minute == 0 { 0 } else { a.conns };
    for _ in 0..conns {
        let (addr, path, from) = (a.addr.clone(), a.path.clone(), a.flood_from);
        flood.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr, from);
            let format = KeyFormat::default();
            let mut statuses = BTreeMap::<u16, u64>::new();
            let mut next = Instant::now();
            while Instant::now() < end {
                let minted = format.generate();
                *statuses
                    .entry(conn.get(&path, minted.expose_secret()).await)
                    .or_default() += 1;
                next += per_conn;
                tokio::time::sleep_until(next.into()).await;
            }
            statuses
        }));
    }
    // The legitimate key, at a steady pace.
    let mut conn = Conn::new(a.addr.clone(), None);
    let mut latencies = Vec::new();
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut next = Instant::now();
    while Instant::now() < end {
        let started = Instant::now();
        let status = conn.get(&a.path, &a.key).await;
        latencies.push(started.elapsed());
        *statuses.entry(status).or_default() += 1;
        next += Duration::from_millis(a.every_ms);
        tokio::time::sleep_until(next.into()).await;
    }
    let mut flooded = BTreeMap::<u16, u64>::new();
    for task in flood {
        for (status, n) in task.await.map_err(|e| e.to_string())? {
            *flooded.entry(status).or_default() += n;
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "legit requests={} statuses={:?} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} | flood requests={} statuses={:?}",
        latencies.len(),
        statuses,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        flooded.values().sum::<u64>(),
        flooded,
    );
    Ok(())
}
