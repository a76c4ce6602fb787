//! `apikey`: manage API keys in the database at `DATABASE_URL` (`sqlite://keys.db` or
//! `postgres://user@host/db`).
//!
//! ```text
//! apikey create --consumer acme --name ci --scope orders:read --expires-in 86400 --rate-limit 100/60s
//! apikey list [--consumer acme]
//! apikey show <id>
//! apikey revoke <id>
//! apikey delete <id>
//! apikey rotate <id> [--grace 3600]
//! apikey allowlist <id> --allow-ip 10.0.0.0/8 [--allow-ip 2001:db8::/32]   (or --anywhere)
//! apikey verify <key>
//! apikey import keys.jsonl
//! ```
//!
//! `import` reads keys minted elsewhere, one JSON object a line
//! (`{"hash","consumer","name"?,"scopes"?,"expires_at"?,"rate_limit"?,"allowed_ips"?}`,
//! `hash` being the hex SHA-256 of the key), and stores them all or none: a file with
//! bad lines is refused with one message naming every one of them.
//!
//! Add `--json` for output that scripts read. Errors are one line on stderr and a
//! non-zero exit code.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::sync::Arc;
use tower_api_key::lifetime::{KeyLifetimes, parse_lifetime};
use tower_api_key::ratelimit::{Limit, QuotaWindow};
use tower_api_key::record::parse_network;

use tower_api_key::StoreError;
use tower_api_key::store::{ImportedKey, ListQuery, NewKey, PostgresStore, SqliteStore};
use tower_api_key::{
    KeyFormat, KeyRecord, KeyResolver, KeyStatus, KeyStore, RateLimitPolicy, RateLimits, Scopes,
};

#[derive(Parser)]
#[command(name = "apikey", version, about = "Manage API keys (tower-api-key)")]
struct Cli {
    /// The key database (sqlite://… or postgres://…); also read from DATABASE_URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://keys.db",
        global = true
    )]
    database_url: String,
    /// The lifetime of a key created without --expires-in, such as 90d; also read from
    /// DEFAULT_KEY_TTL. (Read by `create` only, so that a bad value never stops a
    /// revocation.)
    #[arg(long, env = "DEFAULT_KEY_TTL", global = true)]
    default_ttl: Option<String>,
    /// The longest lifetime a new key may have, such as 365d; also read from MAX_KEY_TTL.
    #[arg(long, env = "MAX_KEY_TTL", global = true)]
    max_ttl: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// Who the key belongs to.
        #[arg(long)]
        consumer: String,
        /// A name for the key.
        #[arg(long, default_value = "")]
        name: String,
        /// A scope the key grants (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Seconds until the key expires.
        #[arg(long)]
        expires_in: Option<u64>,
        /// A rate limit such as 100/60s or a quota such as 10000/1d (repeatable).
        #[arg(long = "rate-limit")]
        rate_limits: Vec<String>,
        /// A network the key may be used from, such as 10.0.0.0/8, 2001:db8::/32 or one
        /// address (repeatable; without it, anywhere).
        #[arg(long = "allow-ip")]
        allowed_ips: Vec<String>,
    },
    /// List keys, oldest first (deleted ones not).
    List {
        /// Only this consumer's keys.
        #[arg(long)]
        consumer: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one key's record and usage.
    Show {
        /// The key's id.
        id: String,
    },
    /// Revoke a key now; its record, usage and audit log stay.
    Revoke {
        /// The key's id.
        id: String,
    },
    /// Revoke a key now (unless it is revoked already) and delete it: it is listed no
    /// more, and changes no more; `show` and the audit log still have it.
    Delete {
        /// The key's id.
        id: String,
    },
    /// Replace a key; the old one keeps working for the grace period.
    Rotate {
        /// The key's id.
        id: String,
        /// Seconds the old key keeps working.
        #[arg(long, default_value_t = 0)]
        grace: u64,
    },
    /// Replace the networks a key may be used from: the --allow-ip networks, or with
    /// --anywhere none (the key works from anywhere).
    #[command(group(clap::ArgGroup::new("networks").required(true).args(["allowed_ips", "anywhere"])))]
    Allowlist {
        /// The key's id.
        id: String,
        /// A network the key may be used from, such as 10.0.0.0/8, 2001:db8::/32 or one
        /// address (repeatable).
        #[arg(long = "allow-ip")]
        allowed_ips: Vec<String>,
        /// Take the key's allowlist away: it works from anywhere.
        #[arg(long, conflicts_with = "allowed_ips")]
        anywhere: bool,
    },
    /// Check a key: its format, and whether it exists and may be used. Exits 1 if not.
    Verify {
        /// The key.
        key: String,
    },
    /// Import keys minted elsewhere by their SHA-256, all or none: FILE (`-`: standard
    /// input) holds one JSON object a line, {"hash","consumer","name"?,"scopes"?,
    /// "expires_at"?,"rate_limit"?,"allowed_ips"?}; blank lines are skipped.
    Import {
        /// The JSON lines file.
        file: std::path::PathBuf,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("apikey: {message}");
            ExitCode::from(2)
        }
    }
}

type Store = Arc<dyn KeyStore>;

async fn open(url: &str) -> Result<Store, String> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url).await.map_err(|e| e.to_string())?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(store))
    } else {
        Err(format!(
            "DATABASE_URL must start with sqlite:// or postgres:// (got {:?})",
            scheme_of(url)
        ))
    }
}

/// The lifetimes `--default-ttl` and `--max-ttl` give.
fn lifetimes(default: Option<&str>, max: Option<&str>) -> Result<KeyLifetimes, String> {
    let parse =
        |flag: &str, text: &str| parse_lifetime(text).map_err(|e| format!("{flag} {text:?}: {e}"));
    let mut lifetimes = KeyLifetimes::new();
    if let Some(default) = default {
        lifetimes = lifetimes
            .with_default(parse("--default-ttl", default)?)
            .map_err(|e| format!("--default-ttl / --max-ttl: {e}"))?;
    }
    if let Some(max) = max {
        lifetimes = lifetimes
            .with_max(parse("--max-ttl", max)?)
            .map_err(|e| format!("--default-ttl / --max-ttl: {e}"))?;
    }
    Ok(lifetimes)
}

/// The part of a URL before `://`, so that a password in it is never printed.
fn scheme_of(url: &str) -> &str {
    url.split_once("://")
        .map_or("no scheme", |(scheme, _)| scheme)
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let (default_ttl, max_ttl) = (cli.default_ttl.clone(), cli.max_ttl.clone());
    let store = open(&cli.database_url).await?;
    let json_out = cli.json;
    match cli.command {
        Command::Create {
            consumer,
            name,
            scopes,
            expires_in,
            rate_limits,
            allowed_ips,
        } => {
            if consumer.trim().is_empty() {
                return Err("--consumer must not be empty".to_owned());
            }
            let scopes = Scopes::parse(&scopes).map_err(|e| format!("--scope: {e}"))?;
            let policies = rate_limits
                .iter()
                .map(|s| {
                    s.parse::<RateLimitPolicy>()
                        .map_err(|e| format!("--rate-limit {s:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let limits = RateLimits::new(policies).map_err(|e| format!("--rate-limit: {e}"))?;
            let networks = allowed_ips
                .iter()
                .map(|s| parse_network(s).map_err(|e| format!("--allow-ip {s:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let life = lifetimes(default_ttl.as_deref(), max_ttl.as_deref())?
                .expires_in(expires_in.map(Duration::from_secs))
                .map_err(|e| format!("--expires-in: {e}"))?;
            let mut new = NewKey::new(consumer)
                .with_name(name)
                .with_scopes(scopes)
                .with_rate_limits(limits)
                .with_allowed_ips(networks);
            if let Some(life) = life {
                new = new.with_expires_at(SystemTime::now() + life);
            }
            let created = store.create(new, "cli").await.map_err(|e| e.to_string())?;
            if json_out {
                let mut v = record_json(&created.record);
                v["key"] = json!(created.key.expose_secret());
                println!("{v}");
            } else {
                println!("{}", created.key.expose_secret());
                eprintln!(
                    "created {} for {}: store the key now, it is not shown again",
                    created.record.id, created.record.consumer
                );
            }
        }
        Command::List { consumer, limit } => {
            let mut query = ListQuery::default().limit(limit);
            if let Some(c) = consumer {
                query = query.consumer(c);
            }
            let page = store.list(&query).await.map_err(|e| e.to_string())?;
            if json_out {
                println!(
                    "{}",
                    Value::from(page.records.iter().map(record_json).collect::<Vec<_>>())
                );
            } else {
                for r in &page.records {
                    println!(
                        "{}  {}…  {}  {}  {}  {}",
                        r.id,
                        r.start,
                        r.consumer,
                        r.status(SystemTime::now()).as_str(),
                        r.scopes
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        r.name
                    );
                }
            }
        }
        Command::Show { id } => {
            let record = store
                .get(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no key with id {id:?}"))?;
            let usage = store
                .usage(&id)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let mut v = record_json(&record);
            v["requests"] = json!(usage.requests);
            v["rejected"] = json!(usage.rejected);
            v["last_used_at"] = json!(usage.last_used_at.map(secs));
            if json_out {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
        Command::Revoke { id } => {
            let record = store.revoke(&id, "cli").await.map_err(|e| e.to_string())?;
            if json_out {
                println!("{}", record_json(&record));
            } else {
                println!("revoked {}", record.id);
            }
        }
        Command::Delete { id } => {
            let record = store.delete(&id, "cli").await.map_err(|e| e.to_string())?;
            if json_out {
                println!("{}", record_json(&record));
            } else {
                println!("deleted {}", record.id);
            }
        }
        Command::Rotate { id, grace } => {
            let created = store
                .rotate(&id, Duration::from_secs(grace), "cli")
                .await
                .map_err(|e| e.to_string())?;
            if json_out {
                let mut v = record_json(&created.record);
                v["key"] = json!(created.key.expose_secret());
                v["replaces"] = json!(id);
                println!("{v}");
            } else {
                println!("{}", created.key.expose_secret());
                eprintln!(
                    "{} replaces {id}, which works for {grace} s more",
                    created.record.id
                );
            }
        }
        Command::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| format!("{}: {e}", file.display()))?;
            let lifetimes = lifetimes(default_ttl.as_deref(), max_ttl.as_deref())?;
            let (keys, lines, mut bad) = import_rows(&text, &lifetimes);
            if !bad.is_empty() {
                // Name the lines refused for their hash too: one message, every bad line.
                let mut seen = std::collections::HashMap::new();
                for (key, &line) in keys.iter().zip(&lines) {
                    if let Some(earlier) = seen.insert(key.hash, line) {
                        bad.push((line, format!("the same hash as line {earlier}")));
                    } else if store
                        .resolve(&key.hash)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some()
                    {
                        bad.push((line, "a key with this hash is already stored".to_owned()));
                    }
                }
                return Err(bad_lines(bad));
            }
            let records = store.import(keys, "cli").await.map_err(|e| match e {
                StoreError::DuplicateHashes(rows) => bad_lines(
                    rows.iter()
                        .map(|d| {
                            let why = match d.earlier {
                                Some(earlier) => {
                                    format!("the same hash as line {}", lines[earlier])
                                }
                                None => "a key with this hash is already stored".to_owned(),
                            };
                            (lines[d.index], why)
                        })
                        .collect(),
                ),
                other => other.to_string(),
            })?;
            if json_out {
                let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
                println!("{}", json!({ "imported": records.len(), "ids": ids }));
            } else {
                println!("imported {} keys", records.len());
            }
        }
        Command::Allowlist {
            id,
            allowed_ips,
            anywhere: _,
        } => {
            let networks = allowed_ips
                .iter()
                .map(|s| parse_network(s).map_err(|e| format!("--allow-ip {s:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let record = store
                .set_allowed_ips(&id, networks, "cli")
                .await
                .map_err(|e| e.to_string())?;
            if json_out {
                println!("{}", record_json(&record));
            } else if record.allowed_ips.is_empty() {
                println!("{} may be used from anywhere", record.id);
            } else {
                let networks: Vec<String> =
                    record.allowed_ips.iter().map(ToString::to_string).collect();
                println!("{} may be used from {}", record.id, networks.join(", "));
            }
        }
        Command::Verify { key } => {
            let (valid, reason, record) = verify(&store, &key).await?;
            if json_out {
                println!(
                    "{}",
                    json!({ "valid": valid, "reason": reason, "key_id": record.as_ref().map(|r| r.id.clone()) })
                );
            } else if valid {
                println!("valid: {}", record.map(|r| r.id).unwrap_or_default());
            } else {
                println!("invalid: {reason}");
            }
            if !valid {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The keys of a JSON lines file and the line number of each, and every bad line:
/// its number and what is wrong with it.
fn import_rows(
    text: &str,
    lifetimes: &KeyLifetimes,
) -> (Vec<ImportedKey>, Vec<usize>, Vec<(usize, String)>) {
    let now = SystemTime::now();
    let mut keys = Vec::new();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let key = serde_json::from_str::<Value>(line)
            .map_err(|e| format!("not valid JSON ({e})"))
            .and_then(|value| ImportedKey::from_json(&value).map_err(|e| e.to_string()))
            .and_then(|mut key| {
                let asked = key
                    .expires_at
                    .map(|t| t.duration_since(now).unwrap_or_default());
                let life = lifetimes
                    .expires_in(asked)
                    .map_err(|e| format!("expires_at: {e}"))?;
                key.expires_at = life.map(|life| now + life);
                Ok(key)
            });
        match key {
            Ok(key) => {
                keys.push(key);
                lines.push(n);
            }
            Err(why) => bad.push((n, why)),
        }
    }
    (keys, lines, bad)
}

/// One line naming every bad line of an import, in line order.
fn bad_lines(mut bad: Vec<(usize, String)>) -> String {
    bad.sort_by_key(|(line, _)| *line);
    let each: Vec<String> = bad
        .iter()
        .map(|(line, why)| format!("line {line}: {why}"))
        .collect();
    format!("{}; nothing was imported", each.join("; "))
}

/// Whether `key` works, and if not, why.
async fn verify(store: &Store, key: &str) -> Result<(bool, String, Option<KeyRecord>), String> {
    let format = KeyFormat::default();
    let parsed = match format.parse(key.trim()) {
        Ok(parsed) => parsed,
        Err(e) => return Ok((false, format!("malformed: {e}"), None)),
    };
    let record = store
        .resolve(&parsed.hash())
        .await
        .map_err(|e| e.to_string())?;
    Ok(match record {
        None => (false, "unknown: no key with this hash".to_owned(), None),
        Some(r) => match r.status(SystemTime::now()) {
            KeyStatus::Active => (true, "active".to_owned(), Some(r)),
            KeyStatus::Expired => (false, "expired".to_owned(), Some(r)),
            KeyStatus::Revoked => (false, "revoked".to_owned(), Some(r)),
        },
    })
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn record_json(r: &KeyRecord) -> Value {
    let limits: Vec<Value> = r
        .rate_limits
        .iter()
        .map(|p| match p.limit() {
            Limit::Rate { requests, per, burst } => json!({
                "name": p.name(), "requests": requests, "per_seconds": per.as_secs_f64(), "burst": burst,
            }),
            Limit::Quota { requests, window } => json!({
                "name": p.name(), "requests": requests,
                "window": match window { QuotaWindow::Day => "day", QuotaWindow::Month => "month" },
            }),
        })
        .collect();
    json!({
        "id": r.id,
        "start": r.start,
        "consumer": r.consumer,
        "name": r.name,
        "scopes": r.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "created_at": secs(r.created_at),
        "expires_at": r.expires_at.map(secs),
        "allowed_ips": r.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "revoked_at": r.revoked_at.map(secs),
        "deleted_at": r.deleted_at.map(secs),
        "status": r.status(SystemTime::now()).as_str(),
        "rate_limits": limits,
        "metadata": r.metadata,
    })
}
