//! The example server's `GET /metrics`: who may read it, and what it says, parsed as
//! Prometheus' text exposition format. The outcome counters move by exactly the
//! requests made; nothing in it names a key, a key's hash or a key id.
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin",
    feature = "webhooks",
    feature = "metrics"
))]

#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use server::{Client, start_sqlite};
use tower_api_key::KeyHash;
use tower_api_key::metrics::{
    ALL, CACHE_LOOKUPS_TOTAL, CHANGE_FEED_LAG_SECONDS, CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS,
    REQUESTS_TOTAL, STORE_CALL_DURATION_SECONDS,
};

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed: its samples, and each metric family's `TYPE` and `HELP`.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
    help: HashMap<String, String>,
}

impl Scrape {
    /// The value of the sample `name` with exactly `labels`, if there is one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<_, _> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == labels);
        let value = found.next().map(|s| s.value);
        assert!(found.next().is_none(), "{name} {labels:?} appears twice");
        value
    }

    fn outcome(&self, outcome: &str) -> f64 {
        self.value(REQUESTS_TOTAL, &[("outcome", outcome)])
            .unwrap_or(0.0)
    }
}

/// Parses Prometheus' text format (version 0.0.4), strictly: every line is a
/// `# HELP name text`, a `# TYPE name type`, another comment, or a sample
/// `name{labels} value`; every sample belongs to a family whose `TYPE` came before it.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape {
        samples: Vec::new(),
        types: HashMap::new(),
        help: HashMap::new(),
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(help)) => {
                    assert!(is_name(name), "bad name in {line:?}");
                    scrape.help.insert(name.to_owned(), help.to_owned());
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(is_name(name), "bad name in {line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    let before = scrape.types.insert(name.to_owned(), kind.to_owned());
                    assert!(before.is_none(), "a second TYPE line for {name}");
                }
                _ => {} // any other comment
            }
            continue;
        }
        let sample = parse_sample(line);
        let family = family_of(&sample.name, &scrape.types)
            .unwrap_or_else(|| panic!("{line:?}: no TYPE line before it"));
        if scrape.types[family] == "histogram" && sample.name.ends_with("_bucket") {
            assert!(
                sample.labels.contains_key("le"),
                "{line:?}: a bucket with no le"
            );
        }
        scrape.samples.push(sample);
    }
    scrape
}

/// The family a sample name belongs to: itself, or a histogram's or summary's with its
/// suffix taken off.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| {
            types
                .get(*base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        })
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("{line:?}: no value"));
    let name = &line[..name_end];
    assert!(is_name(name), "{line:?}: bad metric name");
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // A label name, `=`, then a quoted value with \\, \" and \n escapes.
            let (start, _) = *chars
                .peek()
                .unwrap_or_else(|| panic!("{line:?}: unclosed {{"));
            if after[start..].starts_with('}') {
                end = start + 1;
                break;
            }
            let eq = after[start..]
                .find('=')
                .unwrap_or_else(|| panic!("{line:?}: a label with no ="))
                + start;
            let key = &after[start..eq];
            assert!(
                is_name(key) && !key.contains(':'),
                "{line:?}: bad label name {key:?}"
            );
            while chars.next_if(|(i, _)| *i <= eq).is_some() {}
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "{line:?}: unquoted value"
            );
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("{line:?}: bad escape {other:?}"),
                    },
                    Some(c) => value.push(c),
                    None => panic!("{line:?}: unclosed value"),
                }
            }
            assert!(
                labels.insert(key.to_owned(), value).is_none(),
                "{line:?}: {key} twice"
            );
            match chars.peek().map(|(_, c)| *c) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                other => panic!("{line:?}: {other:?} after a label"),
            }
        }
        rest = &after[end..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .unwrap_or_else(|| panic!("{line:?}: no value"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("{line:?}: bad value {v:?}")),
    };
    // An optional timestamp, then nothing.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .unwrap_or_else(|_| panic!("{line:?}: bad timestamp"));
    }
    assert!(fields.next().is_none(), "{line:?}: trailing text");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

#[test]
fn the_parser_reads_the_format_and_refuses_what_is_not() {
    let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let scrape = parse(text);
    assert_eq!(
        scrape.value("a_total", &[("x", "1"), ("y", "q\"\\")]),
        Some(3.0)
    );
    assert_eq!(scrape.value("h_count", &[]), Some(2.0));
    assert_eq!(scrape.help["a_total"], "Things.");
    for bad in [
        "a_total 1\n",                             // no TYPE
        "# TYPE a counter\na{x=1} 1\n",            // unquoted
        "# TYPE a counter\na 1 2 3\n",             // trailing
        "# TYPE a counter\na{x=\"1\"}\n",          // no value
        "# TYPE a counter\n1a 1\n",                // bad name
        "# TYPE a gauge\n# TYPE a counter\na 1\n", // two types
        "# TYPE h histogram\nh_bucket 1\n",        // bucket without le
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

/// Creates a key through the admin API: its secret and its id.
async fn create(client: &mut Client, admin: &str, body: serde_json::Value) -> (String, String) {
    let created = client
        .send("POST", "/admin/keys", Some(admin), Some(&body))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn metrics_are_for_metrics_and_admin_keys_and_count_exactly_the_requests_made() {
    let server = start_sqlite(&[]);
    let admin = server.admin_key.clone().unwrap();
    let mut client = Client::new(&server.addr);

    // Keys: one limited to two requests a minute, one that may read metrics and
    // nothing else, one revoked before it is ever used.
    let (limited, limited_id) = create(
        &mut client,
        &admin,
        json!({"consumer": "acme", "name": "app", "scopes": ["orders:read"],
               "rate_limit": {"requests": 2, "per_seconds": 60}}),
    )
    .await;
    let (reader, reader_id) = create(
        &mut client,
        &admin,
        json!({"consumer": "ops", "name": "prometheus", "scopes": ["metrics"]}),
    )
    .await;
    let (revoked, revoked_id) = create(
        &mut client,
        &admin,
        json!({"consumer": "acme", "name": "old", "scopes": ["orders:read"]}),
    )
    .await;
    let gone = client
        .send(
            "DELETE",
            &format!("/admin/keys/{revoked_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(gone.status, 204);

    // Who may read: 401 without a key, 403 with a key of neither scope.
    let refused = client.get("/metrics", None).await;
    assert_eq!(refused.status, 401);
    let refused = client.get("/metrics", Some(&limited)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert!(refused.body.contains("metrics"), "{}", refused.body);

    let first = client.get("/metrics", Some(&admin)).await;
    assert_eq!(first.status, 200);
    assert!(
        first
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        first.header("content-type")
    );
    let before = parse(&first.body);

    // The requests counted: each status says which outcome it is.
    let mut made = Vec::new();
    for (path, key, status) in [
        ("/v1/whoami", Some(limited.as_str()), 200), // allowed
        ("/v1/whoami", Some(limited.as_str()), 200), // allowed
        ("/v1/whoami", Some(limited.as_str()), 429), // rate_limited
        ("/v1/whoami", None, 401),                   // missing
        ("/v1/whoami", Some("sk_live_nope"), 401),   // invalid
        ("/v1/orders", Some("not-even-a-key"), 401), // invalid
        ("/v1/whoami", Some(revoked.as_str()), 401), // revoked
        ("/v1/orders", Some(reader.as_str()), 403),  // forbidden: no orders:read
        ("/metrics", Some(limited.as_str()), 403),   // forbidden: no metrics
        ("/metrics", None, 401),                     // missing
    ] {
        let answer = client.get(path, key).await;
        assert_eq!(
            answer.status, status,
            "{path} with {key:?}: {}",
            answer.body
        );
        made.push(answer);
    }
    let second = client.get("/metrics", Some(&reader)).await;
    assert_eq!(
        second.status, 200,
        "a key with the scope metrics reads them"
    );
    let after = parse(&second.body);

    // The first scrape is counted once it has answered: it is in the second one.
    let moved: BTreeMap<&str, f64> = [
        "allowed",
        "anonymous",
        "missing",
        "invalid",
        "revoked",
        "expired",
        "conflicting",
        "address_not_allowed",
        "forbidden",
        "rate_limited",
        "too_many_failures",
        "unavailable",
        "error",
    ]
    .into_iter()
    .map(|outcome| (outcome, after.outcome(outcome) - before.outcome(outcome)))
    .collect();
    let expected: BTreeMap<&str, f64> = [
        ("allowed", 3.0), // the first scrape and two whoami
        ("anonymous", 0.0),
        ("missing", 2.0),
        ("invalid", 2.0),
        ("revoked", 1.0),
        ("expired", 0.0),
        ("conflicting", 0.0),
        ("address_not_allowed", 0.0),
        ("forbidden", 2.0),
        ("rate_limited", 1.0),
        ("too_many_failures", 0.0),
        ("unavailable", 0.0),
        ("error", 0.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(moved, expected);
    // Every outcome there is, and nothing else, labels the counter.
    for sample in after.samples.iter().filter(|s| s.name == REQUESTS_TOTAL) {
        assert_eq!(sample.labels.keys().collect::<Vec<_>>(), ["outcome"]);
        assert!(
            expected.contains_key(sample.labels["outcome"].as_str()),
            "{sample:?}"
        );
    }
    assert_eq!(after.types[REQUESTS_TOTAL], "counter");
    assert!(after.help.contains_key(REQUESTS_TOTAL));

    // The cache: keys were loaded, and then found.
    for result in ["hit", "miss"] {
        let n = after
            .value(CACHE_LOOKUPS_TOTAL, &[("result", result)])
            .unwrap_or_else(|| panic!("no {result} count"));
        assert!(n >= 1.0, "{result}: {n}");
    }
    assert_eq!(after.types[CACHE_LOOKUPS_TOTAL], "counter");
    // Key loads, as a histogram with buckets.
    assert_eq!(after.types[STORE_CALL_DURATION_SECONDS], "histogram");
    let loads = after
        .value(
            &format!("{STORE_CALL_DURATION_SECONDS}_count"),
            &[("operation", "resolve"), ("result", "ok")],
        )
        .expect("key loads are measured");
    assert!(loads >= 3.0, "{loads}");
    assert!(after.samples.iter().any(|s| {
        s.name == format!("{STORE_CALL_DURATION_SECONDS}_bucket")
            && s.labels.get("le").map(String::as_str) == Some("+Inf")
    }));

    // Names are ours; no key, hash or key id anywhere.
    for sample in &after.samples {
        assert!(sample.name.starts_with("tower_api_key_"), "{sample:?}");
        assert!(
            ALL.iter().any(|n| sample.name.starts_with(n)),
            "{sample:?} is not documented"
        );
        // No per-key (or per-consumer) label: only these, each with few values.
        for label in sample.labels.keys() {
            assert!(
                ["outcome", "result", "operation", "le", "quantile"].contains(&label.as_str()),
                "{sample:?} has the label {label}"
            );
        }
    }
    for key in [&admin, &limited, &reader, &revoked] {
        let hash = KeyHash::of(key);
        for scrape in [&first.body, &second.body] {
            for secret in [key.as_str(), &key[..16], &hash.to_hex()] {
                assert!(!scrape.contains(secret), "the scrape shows {secret}");
            }
        }
    }
    for id in [&limited_id, &reader_id, &revoked_id] {
        assert!(!second.body.contains(id.as_str()), "the scrape shows {id}");
    }
    assert!(!second.body.contains("key_id"));
    for consumer in ["\"acme\"", "\"ops\""] {
        assert!(
            !second.body.contains(consumer),
            "a consumer as a label value"
        );
    }
    drop(made);

    // The change feed: read lately, and the four changes made here applied.
    let read_at = after
        .value(CHANGE_FEED_LAST_READ_TIMESTAMP_SECONDS, &[])
        .expect("the change log's last read");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - read_at).abs() < 60.0, "read at {read_at}, now {now}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let scrape = parse(&client.get("/metrics", Some(&reader)).await.body);
        let applied = scrape
            .value(&format!("{CHANGE_FEED_LAG_SECONDS}_count"), &[])
            .unwrap_or(0.0);
        if applied >= 4.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{applied} changes applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop();
}
