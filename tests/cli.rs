//! The `apikey` binary, run as a user would, against a SQLite file.
#![cfg(feature = "cli")]

use std::process::{Command, Output};

use serde_json::Value;

struct Db(std::path::PathBuf, Option<String>);

impl Db {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let file = format!("apikey-cli-{name}-{}-{nanos}.db", std::process::id());
        Self(std::env::temp_dir().join(file), None)
    }

    /// A fresh PostgreSQL database on the server at TEST_POSTGRES_URL, if there is one.
    async fn postgres(name: &str) -> Option<Self> {
        use sqlx::{ConnectOptions, Connection};
        let url = match std::env::var("TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "TEST_POSTGRES_URL is not set and TOWER_API_KEY_REQUIRE_SERVICES=1 requires PostgreSQL"
                );
                eprintln!("skipped: TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        let server: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let db = format!("apikey_cli_{name}_{}", std::process::id());
        let mut admin = server.connect().await.unwrap();
        let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        sqlx::query(&drop).execute(&mut admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let (base, _) = url.rsplit_once('/').unwrap();
        Some(Self(
            std::path::PathBuf::new(),
            Some(format!("{base}/{db}")),
        ))
    }

    fn url(&self) -> String {
        match &self.1 {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.0.display()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_apikey"))
            .env("DATABASE_URL", self.url())
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.1.is_some() {
            return;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn create_verify_list_show_rotate_revoke() {
    lifecycle(&Db::new("lifecycle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_same_against_postgres() {
    let Some(db) = Db::postgres("lifecycle").await else {
        return;
    };
    tokio::task::spawn_blocking(move || lifecycle(&db))
        .await
        .unwrap();
}

fn lifecycle(db: &Db) {
    let created = db.json(&[
        "create",
        "--consumer",
        "acme",
        "--name",
        "ci",
        "--scope",
        "orders:read",
        "--rate-limit",
        "100/60s",
        "--expires-in",
        "3600",
        "--json",
    ]);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_live_"));
    assert_eq!(created["scopes"], serde_json::json!(["orders:read"]));
    assert_eq!(created["rate_limits"][0]["requests"], 100);

    let ok = db.run(&["verify", &key]);
    assert!(ok.status.success());
    assert_eq!(stdout(&ok).trim(), format!("valid: {id}"));

    let list = db.json(&["list", "--consumer", "acme", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("key").is_none(), "list never shows a key");

    let shown = db.json(&["show", &id, "--json"]);
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["requests"], 0);
    assert!(!stdout(&db.run(&["show", &id])).contains(&key[12..]));

    let rotated = db.json(&["rotate", &id, "--grace", "3600", "--json"]);
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert!(
        db.run(&["verify", &key]).status.success(),
        "the old key works during the grace"
    );
    assert!(db.run(&["verify", &new_key]).status.success());

    let revoked = db.json(&["revoke", &new_id, "--json"]);
    assert_eq!(revoked["status"], "revoked");
    let bad = db.run(&["verify", "--json", &new_key]);
    assert_eq!(bad.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("revoked"))
    );

    // Deleting revokes (the old key was still in its grace) and leaves the list.
    let deleted = db.json(&["delete", &id, "--json"]);
    assert_eq!(deleted["status"], "revoked");
    assert!(deleted["deleted_at"].is_u64(), "{deleted}");
    assert_eq!(db.run(&["verify", &key]).status.code(), Some(1));
    let list = db.json(&["list", "--consumer", "acme", "--json"]);
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [new_id.as_str()],
        "the revoked key stays, the deleted one goes"
    );
    let again = db.run(&["delete", &id]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("no key with id"),
        "{}",
        stderr(&again)
    );
    // The operator still sees what it was.
    assert!(db.json(&["show", &id, "--json"])["deleted_at"].is_u64());
}

#[test]
fn verify_says_why_a_key_fails() {
    let db = Db::new("verify");
    let garbage = db.run(&["verify", "sk_live_nope"]);
    assert_eq!(garbage.status.code(), Some(1));
    assert!(
        stdout(&garbage).starts_with("invalid: malformed"),
        "{}",
        stdout(&garbage)
    );
    // Well-formed but never issued.
    let unknown = tower_api_key::KeyFormat::default().generate();
    let out = db.run(&["verify", unknown.expose_secret()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("unknown"), "{}", stdout(&out));
}

#[test]
fn errors_are_one_clear_line_and_a_non_zero_exit() {
    let db = Db::new("errors");
    let cases: [(&[&str], &str); 5] = [
        (&["show", "key_missing"], "no key with id"),
        (&["revoke", "key_missing"], "no key with id"),
        (&["delete", "key_missing"], "no key with id"),
        (
            &["create", "--consumer", "acme", "--rate-limit", "lots"],
            "--rate-limit",
        ),
        (
            &["create", "--consumer", "acme", "--scope", "bad scope"],
            "--scope",
        ),
    ];
    for (args, says) in cases {
        let out = db.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("apikey: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_apikey"))
        .env("DATABASE_URL", "mysql://user:hunter2@db/keys")
        .args(["list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("sqlite://") && stderr(&out).contains("postgres://"));
    assert!(
        !stderr(&out).contains("hunter2"),
        "a password in the URL is never printed"
    );
}

#[test]
fn lifetimes_from_the_environment_give_a_default_and_refuse_longer_keys() {
    let db = Db::new("lifetimes");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_apikey"))
            .env("DATABASE_URL", db.url())
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    let env = [("DEFAULT_KEY_TTL", "1d"), ("MAX_KEY_TTL", "30d")];
    // No --expires-in: the default, a day.
    let out = run(&env, &["--json", "create", "--consumer", "acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let left = created["expires_at"].as_i64().unwrap() - now;
    assert!((86_400 - 60..=86_400).contains(&left), "{created}");
    // Longer than the maximum: one clear line naming --expires-in, and nothing created.
    let month = (30 * 86_400 + 1).to_string();
    let out = run(
        &env,
        &["create", "--consumer", "acme", "--expires-in", &month],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("apikey: --expires-in: a key may live at most 2592000 s (30d)"),
        "{err}"
    );
    let listed = db.json(&["--json", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // A default above the maximum, or a lifetime that is not one, is refused by create,
    // and stops nothing else (a revocation must work whatever the environment says).
    let create = ["create", "--consumer", "acme"];
    let out = run(
        &[("DEFAULT_KEY_TTL", "40d"), ("MAX_KEY_TTL", "30d")],
        &create,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("longer than the maximum"),
        "{}",
        stderr(&out)
    );
    let out = run(&[("MAX_KEY_TTL", "a year")], &create);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--max-ttl \"a year\""),
        "{}",
        stderr(&out)
    );
    let out = run(&[("MAX_KEY_TTL", "a year")], &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn allowlists_from_the_command_line() {
    let db = Db::new("allowlist");
    let created = db.json(&[
        "--json",
        "create",
        "--consumer",
        "acme",
        "--allow-ip",
        "10.9.9.9/8",
        "--allow-ip",
        "2001:db8::1",
    ]);
    assert_eq!(
        created["allowed_ips"],
        serde_json::json!(["10.0.0.0/8", "2001:db8::1/128"])
    );
    let out = db.run(&["create", "--consumer", "acme", "--allow-ip", "10.0.0.0/99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("apikey: --allow-ip \"10.0.0.0/99\""),
        "{}",
        stderr(&out)
    );

    // An existing key's list is replaced, or taken away; `show` and the audit say so.
    let id = created["id"].as_str().unwrap();
    let out = db.run(&[
        "allowlist",
        id,
        "--allow-ip",
        "192.0.2.7",
        "--allow-ip",
        "2001:db8:1::/48",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("{id} may be used from 192.0.2.7/32, 2001:db8:1::/48")
    );
    assert_eq!(
        db.json(&["show", "--json", id])["allowed_ips"],
        serde_json::json!(["192.0.2.7/32", "2001:db8:1::/48"])
    );
    let v = db.json(&["--json", "allowlist", id, "--anywhere"]);
    assert_eq!(v["allowed_ips"], serde_json::json!([]));
    assert_eq!(
        db.json(&["show", "--json", id])["allowed_ips"],
        serde_json::json!([])
    );
    // A bad network, neither option, or both: refused, and nothing changes.
    let before = db.json(&["show", "--json", id]);
    for args in [
        vec!["allowlist", id, "--allow-ip", "192.0.2.0/40"],
        vec!["allowlist", id],
        vec!["allowlist", id, "--anywhere", "--allow-ip", "10.0.0.0/8"],
    ] {
        let out = db.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!stderr(&out).is_empty());
    }
    let out = db.run(&["allowlist", id, "--allow-ip", "192.0.2.0/40"]);
    assert!(
        stderr(&out).starts_with("apikey: --allow-ip \"192.0.2.0/40\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(db.json(&["show", "--json", id]), before);
    let out = db.run(&["allowlist", "key_missing", "--anywhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("key_missing"), "{}", stderr(&out));
    // Audited, by `cli`, once a change.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = runtime.block_on(async {
        use tower_api_key::KeyStore;
        let store = tower_api_key::store::SqliteStore::connect(&db.url())
            .await
            .unwrap();
        let log = store.audit(Some(id)).await.unwrap();
        store.pool().close().await;
        log.iter()
            .map(|e| (e.event.name().to_owned(), e.actor.clone()))
            .collect::<Vec<_>>()
    });
    let changed = ("allowed_ips_changed".to_owned(), "cli".to_owned());
    assert_eq!(events[1..], [changed.clone(), changed]);
}

fn sha256_hex(key: &str) -> String {
    tower_api_key::KeyHash::of(key).to_hex()
}

/// Writes `lines` to a JSON lines file beside the database.
fn write_lines(db: &Db, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = db.0.with_extension(format!("{name}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn import_reads_json_lines_all_or_nothing() {
    let db = Db::new("import");
    let row = |key: &str| format!(r#"{{"hash":"{}","consumer":"legacy"}}"#, sha256_hex(key));
    let good = write_lines(
        &db,
        "good",
        &[
            row("legacy-1"),
            String::new(),
            format!(
                r#"{{"hash":"{}","consumer":"legacy","name":"billing","scopes":["orders:read"],"expires_at":"2099-01-01T00:00:00Z","rate_limit":{{"requests":5,"per_seconds":1}},"allowed_ips":["10.0.0.0/8"]}}"#,
                sha256_hex("legacy-2")
            ),
        ],
    );
    let out = db.run(&["import", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "imported 2 keys");
    let listed = db.json(&["list", "--json", "--consumer", "legacy"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r["start"] == "imported"));
    assert!(
        listed
            .iter()
            .any(|r| r["name"] == "billing" && r["allowed_ips"][0] == "10.0.0.0/8")
    );

    let more = write_lines(&db, "more", &[row("legacy-3")]);
    let v = db.json(&["import", "--json", more.to_str().unwrap()]);
    assert_eq!(v["imported"], 1);
    let id = v["ids"][0].as_str().unwrap();
    assert_eq!(db.json(&["show", "--json", id])["consumer"], "legacy");

    // Each bad file names its line, exits 2 with one line, and imports nothing.
    let fresh = |i: usize| row(&format!("fresh-{i}"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                fresh(1),
                fresh(2),
                r#"{"hash":"abc","consumer":"x"}"#.into(),
            ],
            "line 3: hash",
        ),
        (vec![fresh(1), "{not json".into()], "line 2: not valid JSON"),
        (
            vec![
                fresh(1),
                r#"{"hash":"00","consumer":"x","key":"sk"}"#
                    .replace("\"00\"", &format!("\"{}\"", sha256_hex("k"))),
                fresh(2),
            ],
            "line 2: key",
        ),
        (
            vec![fresh(1), String::new(), fresh(2), fresh(1)],
            "line 4: the same hash as line 1",
        ),
        (
            vec![fresh(1), row("legacy-1")],
            "line 2: a key with this hash is already stored",
        ),
    ];
    for (lines, says) in cases {
        let file = write_lines(&db, "bad", &lines);
        let out = db.run(&["import", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{says}");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("apikey: ") && err.contains(says),
            "{says}: {err}"
        );
        assert!(err.contains("nothing was imported"), "{err}");
    }
    // Several bad lines, of every kind, among good ones: one line names them all, in
    // order, and nothing is imported.
    let file = write_lines(
        &db,
        "bad",
        &[
            fresh(1),
            r#"{"hash":"abc","consumer":"x"}"#.into(),
            row("legacy-1"),
            fresh(1),
            "{not json".into(),
            fresh(2),
        ],
    );
    let out = db.run(&["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let mut at = 0;
    for says in [
        "line 2: hash",
        "line 3: a key with this hash is already stored",
        "line 4: the same hash as line 1",
        "line 5: not valid JSON",
        "nothing was imported",
    ] {
        let found = err[at..]
            .find(says)
            .unwrap_or_else(|| panic!("{says:?}, in order: {err}"));
        at += found + says.len();
    }
    assert!(
        !err.contains("line 1:") && !err.contains("line 6:"),
        "{err}"
    );
    let all = db.json(&["list", "--json"]);
    assert_eq!(
        all.as_array().unwrap().len(),
        3,
        "no bad file imported anything"
    );
    for name in ["good", "more", "bad"] {
        let _ = std::fs::remove_file(db.0.with_extension(format!("{name}.jsonl")));
    }
}
