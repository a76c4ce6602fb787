//! The load of `scripts/soak.sh`: `cargo run --release --example soak -- …`, with the
//! admin key in `ADMIN_KEY` (never on a command line).
//!
//! 1. Mints `--valid` keys (default 100 000) and imports them by hash through
//!    `POST /admin/keys/import`, spread over `--consumers` consumers (default 1 000).
//! 2. Mints `--unknown` well-formed keys that are in no store (default 800 000) and makes
//!    `--malformed` keys that fail the checksum (default 100 000): one million in all.
//! 3. For `--seconds` (default 600), `--conns` keep-alive connections (default 16) send
//!    `GET /v1/whoami` with those keys, in a shuffled order, round after round, counting
//!    the answers by status, and each valid key's 200s.
//! 4. Waits (polling, with a deadline) for the server's usage counts to show every 200
//!    sent: `requests` of each of `--check` valid keys (default 2 000, spread over the
//!    set), and `allowed` summed over all keys (`GET /admin/usage/series`).
//!
//! It prints one line of JSON: what was sent and answered, and whether usage matched.
//! It exits 1 on a 5xx, a lost connection or a usage mismatch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tower_api_key::KeyFormat;

#[path = "support/http1.rs"]
mod http1;
use http1::Conn;

struct Args {
    addr: String,
    valid: usize,
    unknown: usize,
    malformed: usize,
    consumers: usize,
    seconds: u64,
    conns: usize,
    check: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:3000".into(),
        valid: 100_000,
        unknown: 800_000,
        malformed: 100_000,
        consumers: 1_000,
        seconds: 600,
        conns: 16,
        check: 2_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--addr" => a.addr = value.clone(),
            "--valid" => a.valid = number()?.max(1),
            "--unknown" => a.unknown = number()?,
            "--malformed" => a.malformed = number()?,
            "--consumers" => a.consumers = number()?.max(1),
            "--seconds" => a.seconds = number()? as u64,
            "--conns" => a.conns = number()?.max(1),
            "--check" => a.check = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// A JSON string (the values here are ids, consumers and hex: no escapes needed, but
/// checked).
fn json_str(s: &str) -> String {
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    );
    format!("\"{s}\"")
}

/// The ids in an import's answer `{"imported":N,"ids":["key_…",…]}`, in order.
fn ids(body: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let list = text
        .split_once("\"ids\":[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .ok_or_else(|| format!("no ids in {text:.200}"))?
        .0;
    Ok(list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_owned())
        .collect())
}

/// The first number after `"field":` in `body`.
fn number(body: &[u8], field: &str) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let (_, rest) = text.split_once(&format!("\"{field}\":"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The sum of every `"field":N` in `body`.
fn sum(body: &[u8], field: &str) -> u64 {
    let text = String::from_utf8_lossy(body);
    let needle = format!("\"{field}\":");
    text.split(&needle)
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

/// RFC 3339 (UTC, seconds) of a time since the epoch.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = args()?;
    let admin = std::env::var("ADMIN_KEY").map_err(|_| "ADMIN_KEY (the admin key) is needed")?;
    let format = KeyFormat::default();
    let started_at = SystemTime::now() - Duration::from_secs(60);

    // 1. The valid keys, imported by hash, 10 000 a call.
    let valid: Vec<String> = (0..a.valid)
        .map(|_| format.generate().expose_secret().to_owned())
        .collect();
    let mut admin_conn = Conn::new(a.addr.clone(), None);
    let mut valid_ids = Vec::with_capacity(a.valid);
    for (chunk_no, chunk) in valid.chunks(10_000).enumerate() {
        let rows: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let n = chunk_no * 10_000 + i;
                let hash = tower_api_key::KeyHash::of(key);
                format!(
                    "{{\"hash\":{},\"consumer\":{},\"name\":\"soak\"}}",
                    json_str(&hash.to_hex()),
                    json_str(&format!("soak-{}", n % a.consumers))
                )
            })
            .collect();
        let body = format!("[{}]", rows.join(","));
        let (status, answer) = admin_conn
            .request("POST", "/admin/keys/import", &admin, Some(body.as_bytes()))
            .await;
        if status != 201 {
            return Err(format!(
                "import: {status} {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        valid_ids.extend(ids(&answer)?);
    }
    if valid_ids.len() != a.valid {
        return Err(format!("imported {} of {}", valid_ids.len(), a.valid));
    }

    // 2. Unknown and malformed keys; then one shuffled order over all of them.
    let mut keys = valid;
    keys.extend((0..a.unknown).map(|_| format.generate().expose_secret().to_owned()));
    keys.extend((0..a.malformed).map(|_| {
        let mut key = format.generate().expose_secret().to_owned();
        // The last character changed: the checksum no longer holds.
        let last = key.pop().unwrap();
        key.push(if last == 'A' { 'B' } else { 'A' });
        key
    }));
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let keys = Arc::new(keys);
    let order = Arc::new(order);

    // 3. The load.
    let ok_per_key: Arc<Vec<AtomicU32>> =
        Arc::new((0..a.valid).map(|_| AtomicU32::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for _ in 0..a.conns {
        let (keys, order, ok_per_key, next, failed, wrong) = (
            keys.clone(),
            order.clone(),
            ok_per_key.clone(),
            next.clone(),
            failed.clone(),
            wrong.clone(),
        );
        let mut conn = Conn::new(a.addr.clone(), None);
        let valid = a.valid;
        tasks.push(tokio::spawn(async move {
            let mut statuses = BTreeMap::<u16, u64>::new();
            while Instant::now() < end && !failed.load(Ordering::Relaxed) {
                let i = order[next.fetch_add(1, Ordering::Relaxed) % order.len()] as usize;
                let status = conn.get("/v1/whoami", &keys[i]).await;
                *statuses.entry(status).or_default() += 1;
                match (i < valid, status) {
                    (true, 200) => {
                        ok_per_key[i].fetch_add(1, Ordering::Relaxed);
                    }
                    (false, 401) => {}
                    (_, 0) | (_, 500..) => failed.store(true, Ordering::Relaxed),
                    _ => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            statuses
        }));
    }
    let mut statuses = BTreeMap::<u16, u64>::new();
    for task in tasks {
        for (status, n) in task.await.map_err(|e| e.to_string())? {
            *statuses.entry(status).or_default() += n;
        }
    }
    let sent: u64 = statuses.values().sum();
    let ok_total: u64 = ok_per_key
        .iter()
        .map(|n| u64::from(n.load(Ordering::Relaxed)))
        .sum();

    // 4. Usage: the server flushes its counts every few seconds.
    let step = (a.valid / a.check.max(1)).max(1);
    let sample: Vec<usize> = (0..a.valid).step_by(step).take(a.check).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let to = rfc3339(SystemTime::now() + Duration::from_secs(120));
    let series = format!(
        "/admin/usage/series?step=minute&from={}&to={to}",
        rfc3339(started_at)
    );
    let (mut keys_matched, mut allowed) = (0, 0);
    loop {
        let (status, body) = admin_conn.request("GET", &series, &admin, None).await;
        if status == 200 {
            allowed = sum(&body, "allowed");
        }
        if allowed == ok_total {
            keys_matched = 0;
            for &i in &sample {
                let path = format!("/admin/keys/{}/usage", valid_ids[i]);
                let (_, body) = admin_conn.request("GET", &path, &admin, None).await;
                let want = u64::from(ok_per_key[i].load(Ordering::Relaxed));
                if number(&body, "requests") == Some(want) {
                    keys_matched += 1;
                }
            }
            if keys_matched == sample.len() {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let usage_ok = allowed == ok_total && keys_matched == sample.len();
    let no_5xx = !failed.load(Ordering::Relaxed) && statuses.keys().all(|&s| s != 0 && s < 500);
    println!(
        "{{\"keys\":{},\"valid\":{},\"sent\":{sent},\"statuses\":{{{}}},\"valid_200\":{ok_total},\"unexpected\":{},\"usage_allowed\":{allowed},\"usage_keys_checked\":{},\"usage_keys_matched\":{keys_matched},\"usage_ok\":{usage_ok},\"no_5xx\":{no_5xx}}}",
        keys.len(),
        a.valid,
        statuses
            .iter()
            .map(|(s, n)| format!("\"{s}\":{n}"))
            .collect::<Vec<_>>()
            .join(","),
        wrong.load(Ordering::Relaxed),
        sample.len(),
    );
    if usage_ok && no_5xx && wrong.load(Ordering::Relaxed) == 0 {
        Ok(())
    } else {
        Err("the soak failed: see the line above".into())
    }
}
