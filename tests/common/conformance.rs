//! The behaviour every `KeyStore` must have: one test body, run against each store.

use std::time::{Duration, SystemTime};

use tower_api_key::ratelimit::QuotaWindow;
use tower_api_key::store::series::bucket_start;
use tower_api_key::store::{
    AuditEvent, DuplicateRow, IMPORTED_START, ImportedKey, ListQuery, NewKey, UsageBucket,
    UsageDelta, UsageStep, UsageTopBy,
};
use tower_api_key::{
    KeyHash, KeyStatus, KeyStore, RateLimitPolicy, RateLimits, Scopes, StoreError,
};

/// Runs every check against `store`. `dump` returns everything the store holds as text
/// (a Debug print, a database file, a table dump), to prove no key text is stored.
pub(crate) async fn run<S, D, F>(store: S, dump: D)
where
    S: KeyStore + Clone,
    D: Fn() -> F,
    F: std::future::Future<Output = String>,
{
    let mut secrets = Vec::new();
    create_get_resolve_round_trip(&store, &mut secrets).await;
    list_pages_by_consumer(&store).await;
    list_searches_consumer_and_name(&store).await;
    revoke_is_final(&store, &mut secrets).await;
    revoke_unless_last_keeps_one(&store).await;
    revoke_unless_last_under_concurrency(&store).await;
    delete_removes_a_key_from_its_id(&store, &mut secrets).await;
    delete_unless_last_keeps_one(&store).await;
    rotate_with_grace(&store, &mut secrets).await;
    expiry_scopes_usage_and_audit(&store, &mut secrets).await;
    allowlists_change(&store, &mut secrets).await;
    concurrent_creates_get_unique_ids(&store, &mut secrets).await;
    leak_reports(&store, &mut secrets).await;
    imports_by_hash(&store).await;
    imports_all_or_nothing(&store).await;
    usage_over_time(&store).await;
    nul_in_text_is_bad_input(&store, &mut secrets).await;
    let everything = dump().await;
    for secret in &secrets {
        let body = &secret[secret.len() - 40..];
        assert!(!everything.contains(body), "the store holds a key's text");
    }
}

fn limits() -> RateLimits {
    RateLimits::new([
        RateLimitPolicy::rate("burst", 10, Duration::from_secs(1))
            .unwrap()
            .with_burst(20)
            .unwrap(),
        RateLimitPolicy::quota("daily", 1000, QuotaWindow::Day).unwrap(),
    ])
    .unwrap()
}

async fn create_get_resolve_round_trip<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
    let new = NewKey::new("acme")
        .with_name("ci deploy")
        .with_scopes(Scopes::parse(["orders:read", "orders:*"]).unwrap())
        .with_expires_at(expires)
        .with_rate_limits(limits())
        .with_metadata("team", "payments")
        .with_metadata("ticket", "OPS-1\u{e9}")
        .with_allowed_ips(
            ["10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32"].map(|n| n.parse().unwrap()),
        );
    let created = store.create(new, "admin-key").await.unwrap();
    let secret = created.key.expose_secret().to_owned();
    secrets.push(secret.clone());
    let record = &created.record;
    assert!(secret.starts_with(&record.start));
    assert_eq!(record.hash, KeyHash::of(&secret));
    assert_eq!(record.consumer, "acme");
    assert_eq!(record.name, "ci deploy");
    assert_eq!(record.expires_at, Some(expires));
    assert_eq!(record.rate_limits, limits());
    assert_eq!(record.metadata["ticket"], "OPS-1\u{e9}");
    assert_eq!(record.allowed_ips.len(), 3);
    assert!(record.allows_ip("10.20.30.40".parse().unwrap()));
    assert!(!record.allows_ip("11.0.0.1".parse().unwrap()));
    assert!(record.revoked_at.is_none());
    // What comes back is exactly what went in.
    assert_eq!(store.get(&record.id).await.unwrap().as_ref(), Some(record));
    assert_eq!(
        store.resolve(&record.hash).await.unwrap().as_ref(),
        Some(record)
    );
    assert_eq!(
        store
            .resolve(&KeyHash::of("sk_live_nothing"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get("key_missing").await.unwrap(), None);
    assert!(
        !format!("{created:?}").contains(&secret[12..]),
        "Debug shows the secret"
    );
}

async fn list_pages_by_consumer<S: KeyStore>(store: &S) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let c = store
            .create(NewKey::new("pager").with_name(format!("k{i}")), "cli")
            .await
            .unwrap();
        ids.push(c.record.id);
    }
    store.create(NewKey::new("other"), "cli").await.unwrap();
    let mut seen = Vec::new();
    let mut query = ListQuery::default().consumer("pager").limit(2);
    let mut pages = 0;
    loop {
        let page = store.list(&query).await.unwrap();
        pages += 1;
        assert!(page.records.len() <= 2);
        assert!(page.records.iter().all(|r| r.consumer == "pager"));
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every key once, oldest first");
    let bad = ListQuery::default().after("not a cursor");
    assert!(matches!(
        store.list(&bad).await,
        Err(StoreError::Invalid(_))
    ));
}

/// `ListQuery::search`: a case-insensitive substring of the consumer or the name, with
/// `%`, `_` and `\` taken literally, combined with the consumer filter and the cursor.
async fn list_searches_consumer_and_name<S: KeyStore>(store: &S) {
    let mut made = std::collections::HashMap::new();
    for (consumer, name) in [
        ("Search-Quixote", "ci deploy"),
        ("search-quixote-eu", "Nightly Zebra"),
        ("search-globex", "QUIXOTE mirror"),
        ("search-initech", "100% off_peak"),
        ("search-initech", "100x offXpeak"),
        ("search-zürich", "Straße"),
        ("search-back\\slash", "plain"),
    ] {
        let c = store
            .create(NewKey::new(consumer).with_name(name), "cli")
            .await
            .unwrap();
        made.insert(c.record.id.clone(), (consumer, name));
    }
    let found = |records: &[tower_api_key::KeyRecord]| {
        let mut names: Vec<&str> = records
            .iter()
            .map(|r| made.get(&r.id).map_or("<another key>", |m| m.1))
            .collect();
        names.sort_unstable();
        names
    };
    let search = |text: &str| ListQuery::default().search(text).limit(1000);
    // Consumer or name, in any case of A to Z.
    let page = store.list(&search("qUiXoTe")).await.unwrap();
    assert_eq!(
        found(&page.records),
        ["Nightly Zebra", "QUIXOTE mirror", "ci deploy"]
    );
    let page = store.list(&search("zebra")).await.unwrap();
    assert_eq!(found(&page.records), ["Nightly Zebra"]);
    // Wildcards in the text are literal: "%" and "_" match only themselves.
    let page = store.list(&search("0% OFF_")).await.unwrap();
    assert_eq!(found(&page.records), ["100% off_peak"]);
    let page = store.list(&search("search-_")).await.unwrap();
    assert!(page.records.is_empty(), "{:?}", found(&page.records));
    let page = store.list(&search("%")).await.unwrap();
    assert_eq!(found(&page.records), ["100% off_peak"]);
    let page = store.list(&search("back\\s")).await.unwrap();
    assert_eq!(found(&page.records), ["plain"]);
    let page = store.list(&search("\\s")).await.unwrap();
    assert_eq!(
        found(&page.records),
        ["plain"],
        "a backslash is not an escape"
    );
    // Text beyond ASCII matches in its own case in every store.
    let page = store.list(&search("zürich")).await.unwrap();
    assert_eq!(found(&page.records), ["Straße"]);
    let page = store.list(&search("straße")).await.unwrap();
    assert_eq!(found(&page.records), ["Straße"]);
    let page = store.list(&search("nobody has this")).await.unwrap();
    assert!(page.records.is_empty());
    // With the consumer filter: both must hold.
    let both = ListQuery::default()
        .consumer("search-initech")
        .search("OFF_PEAK");
    let page = store.list(&both).await.unwrap();
    assert_eq!(found(&page.records), ["100% off_peak"]);
    // Pages of a search: every match once, oldest first, and only matches.
    let mut query = ListQuery::default().search("SEARCH-").limit(3);
    let mut seen = Vec::new();
    loop {
        let page = store.list(&query).await.unwrap();
        assert!(page.records.len() <= 3);
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), made.len());
    assert!(seen.iter().all(|id| made.contains_key(id)));
    let all = store.list(&search("search-")).await.unwrap();
    let oldest_first: Vec<String> = all.records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(seen, oldest_first);
}

async fn revoke_is_final<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let created = store
        .create(NewKey::new("acme"), "admin-key")
        .await
        .unwrap();
    secrets.push(created.key.expose_secret().to_owned());
    let id = created.record.id.clone();
    let revoked = store.revoke(&id, "admin-key").await.unwrap();
    let at = revoked.revoked_at.expect("revoked");
    // Revoking again changes nothing.
    assert_eq!(
        store.revoke(&id, "admin-key").await.unwrap().revoked_at,
        Some(at)
    );
    // Clearing the expiry does not bring it back.
    store.set_expiry(&id, None, "admin-key").await.unwrap();
    let resolved = store.resolve(&created.record.hash).await.unwrap().unwrap();
    assert_eq!(resolved.status(SystemTime::now()), KeyStatus::Revoked);
    assert!(matches!(
        store.revoke("key_missing", "x").await,
        Err(StoreError::NotFound(_))
    ));
}

/// A deleted key is revoked and gone from its id: listed no more, every change to it
/// not found; its record (for `get` and `resolve`), audit log and past usage stay.
async fn delete_removes_a_key_from_its_id<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let consumer = format!(
        "deleted-{}",
        store
            .create(NewKey::new("x"), "cli")
            .await
            .unwrap()
            .record
            .id
    );
    let created = store
        .create(NewKey::new(&consumer).with_name("doomed"), "admin-key")
        .await
        .unwrap();
    secrets.push(created.key.expose_secret().to_owned());
    let kept = store
        .create(NewKey::new(&consumer), "admin-key")
        .await
        .unwrap();
    let id = created.record.id.clone();
    let minute = bucket_start(UsageStep::Minute, SystemTime::now());
    store
        .record_usage(&[minutes(&id, &[bucket(minute, (4, 0, 0, 1))])])
        .await
        .unwrap();

    let deleted = store.delete(&id, "admin-key").await.unwrap();
    let at = deleted.deleted_at.expect("deleted");
    assert_eq!(deleted.revoked_at, Some(at), "revoked as it is deleted");
    assert_eq!(deleted.name, "doomed");
    // The store keeps the record, as it was returned.
    assert_eq!(store.get(&id).await.unwrap().as_ref(), Some(&deleted));
    let resolved = store.resolve(&created.record.hash).await.unwrap().unwrap();
    assert_eq!(resolved.status(SystemTime::now()), KeyStatus::Revoked);
    assert_eq!(resolved.deleted_at, Some(at));
    // Listed no more, with or without a filter.
    let listed = store
        .list(&ListQuery::default().consumer(&consumer))
        .await
        .unwrap();
    let ids: Vec<&str> = listed.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [kept.record.id.as_str()]);
    let searched = store
        .list(
            &ListQuery::default()
                .search(&consumer)
                .limit(ListQuery::MAX_LIMIT),
        )
        .await
        .unwrap();
    assert!(searched.records.iter().all(|r| r.id != id));
    // Every change is refused as for an unknown key, and changes nothing.
    let gone = |what: &str, result: Result<(), StoreError>| {
        assert!(
            matches!(result, Err(StoreError::NotFound(_))),
            "{what} of a deleted key: {result:?}"
        );
    };
    gone("revoke", store.revoke(&id, "x").await.map(drop));
    gone(
        "revoke_unless_last",
        store
            .revoke_unless_last(&id, "keys:self", "x")
            .await
            .map(drop),
    );
    gone("delete", store.delete(&id, "x").await.map(drop));
    gone(
        "delete_unless_last",
        store
            .delete_unless_last(&id, "keys:self", "x")
            .await
            .map(drop),
    );
    gone(
        "rotate",
        store
            .rotate(&id, Duration::from_secs(60), "x")
            .await
            .map(drop),
    );
    gone(
        "set_expiry",
        store.set_expiry(&id, None, "x").await.map(drop),
    );
    gone(
        "set_scopes",
        store.set_scopes(&id, Scopes::empty(), "x").await.map(drop),
    );
    gone(
        "set_allowed_ips",
        store.set_allowed_ips(&id, Vec::new(), "x").await.map(drop),
    );
    assert_eq!(store.get(&id).await.unwrap().as_ref(), Some(&deleted));
    let events: Vec<(String, String)> = store
        .audit(Some(&id))
        .await
        .unwrap()
        .iter()
        .map(|e| (e.event.name().to_owned(), e.actor.clone()))
        .collect();
    let entry = |event: &str, actor: &str| (event.to_owned(), actor.to_owned());
    assert_eq!(
        events,
        [
            entry("created", "admin-key"),
            entry("revoked", "admin-key"),
            entry("deleted", "admin-key")
        ]
    );
    // Its past requests still count among all keys'.
    let all = store
        .usage_series(
            None,
            UsageStep::Minute,
            minute,
            minute + Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(
        all.iter()
            .any(|b| b.at == minute && b.allowed >= 4 && b.unauthorized >= 1)
    );
    let top = store
        .usage_top(
            UsageTopBy::Key,
            UsageStep::Minute,
            minute,
            minute + Duration::from_secs(60),
            1_000,
        )
        .await
        .unwrap();
    assert!(top.iter().any(|t| t.name == id && t.counts.total() == 5));

    // A revoked key deleted keeps the time it was revoked, and is not revoked again.
    let revoked = store.revoke(&kept.record.id, "admin-key").await.unwrap();
    let deleted = store.delete(&kept.record.id, "cli").await.unwrap();
    assert_eq!(deleted.revoked_at, revoked.revoked_at);
    assert!(deleted.deleted_at.is_some());
    let events: Vec<&str> = store
        .audit(Some(&kept.record.id))
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.name())
        .collect();
    assert_eq!(events, ["created", "revoked", "deleted"]);
    assert!(
        store
            .list(&ListQuery::default().consumer(&consumer))
            .await
            .unwrap()
            .records
            .is_empty()
    );
    assert!(matches!(
        store.delete("key_missing", "x").await,
        Err(StoreError::NotFound(_))
    ));
}

/// A guarded deletion refuses what a guarded revocation refuses, and changes nothing then.
async fn delete_unless_last_keeps_one<S: KeyStore>(store: &S) {
    let consumer = format!(
        "guarded-delete-{}",
        store
            .create(NewKey::new("x"), "cli")
            .await
            .unwrap()
            .record
            .id
    );
    let new = || NewKey::new(&consumer).with_scopes(Scopes::parse(["keys:self"]).unwrap());
    let a = store.create(new(), "cli").await.unwrap().record.id;
    let b = store.create(new(), "cli").await.unwrap().record.id;
    let deleted = store
        .delete_unless_last(&a, "keys:self", "key_caller")
        .await
        .unwrap();
    assert!(deleted.deleted_at.is_some() && deleted.revoked_at.is_some());
    let last = store.audit(Some(&a)).await.unwrap();
    assert_eq!(
        (
            &last.last().unwrap().event,
            last.last().unwrap().actor.as_str()
        ),
        (&AuditEvent::Deleted, "key_caller")
    );
    match store
        .delete_unless_last(&b, "keys:self", "key_caller")
        .await
    {
        Err(StoreError::LastKey { scope }) => assert_eq!(scope, "keys:self"),
        other => panic!("the last key was deleted: {other:?}"),
    }
    let kept = store.get(&b).await.unwrap().unwrap();
    assert_eq!(kept.status(SystemTime::now()), KeyStatus::Active);
    assert!(kept.deleted_at.is_none());
    assert_eq!(
        store.audit(Some(&b)).await.unwrap().len(),
        1,
        "only created"
    );
    // Once revoked (by an operator), it is not active: deleting it is allowed.
    store.revoke(&b, "admin-key").await.unwrap();
    store
        .delete_unless_last(&b, "keys:self", "key_caller")
        .await
        .unwrap();
    assert!(matches!(
        store
            .delete_unless_last("key_missing", "keys:self", "x")
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// A guarded revocation refuses the consumer's last active key granting the scope, and
/// counts only that consumer's active keys that grant it.
async fn revoke_unless_last_keeps_one<S: KeyStore>(store: &S) {
    let make = |consumer: &str, scopes: &[&str]| {
        NewKey::new(consumer).with_scopes(Scopes::parse(scopes).unwrap())
    };
    let a = store
        .create(make("guarded", &["keys:self"]), "cli")
        .await
        .unwrap();
    let b = store
        .create(make("guarded", &["keys:*"]), "cli")
        .await
        .unwrap();
    let plain = store
        .create(make("guarded", &["orders:read"]), "cli")
        .await
        .unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    store
        .create(make("guarded", &["keys:self"]).with_expires_at(past), "cli")
        .await
        .unwrap();
    store
        .create(make("elsewhere", &["keys:self"]), "cli")
        .await
        .unwrap();
    let (a, b) = (a.record.id, b.record.id);

    // A key without the scope is revoked whatever is left.
    let revoked = store
        .revoke_unless_last(&plain.record.id, "keys:self", "key_caller")
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    // One of two is revoked, and audited with the actor.
    let revoked = store
        .revoke_unless_last(&a, "keys:self", "key_caller")
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let log = store.audit(Some(&a)).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (&last.event, last.actor.as_str()),
        (&AuditEvent::Revoked, "key_caller")
    );
    // The other is the last (the expired key and the other consumer's do not count):
    // refused, and nothing changes.
    match store
        .revoke_unless_last(&b, "keys:self", "key_caller")
        .await
    {
        Err(StoreError::LastKey { scope }) => assert_eq!(scope, "keys:self"),
        other => panic!("the last key was revoked: {other:?}"),
    }
    let kept = store.get(&b).await.unwrap().unwrap();
    assert_eq!(kept.status(SystemTime::now()), KeyStatus::Active);
    assert_eq!(
        store.audit(Some(&b)).await.unwrap().len(),
        1,
        "only created"
    );
    // A revoked key is not active: revoking it again is allowed and changes nothing.
    let again = store
        .revoke_unless_last(&a, "keys:self", "key_caller")
        .await
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    // The plain revocation is still there for operators.
    store.revoke(&b, "admin-key").await.unwrap();
    assert!(matches!(
        store
            .revoke_unless_last("key_missing", "keys:self", "x")
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// Two guarded revocations at once of a consumer's last two keys: one succeeds, the
/// other is refused, every time.
async fn revoke_unless_last_under_concurrency<S: KeyStore + Clone>(store: &S) {
    let scopes = Scopes::parse(["keys:self"]).unwrap();
    for round in 0..8 {
        let consumer = format!("race-{round}");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let new = NewKey::new(&consumer).with_scopes(scopes.clone());
            ids.push(store.create(new, "cli").await.unwrap().record.id);
        }
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move { store.revoke_unless_last(&id, "keys:self", "x").await })
            })
            .collect();
        let mut revoked = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(record) => {
                    assert!(record.revoked_at.is_some());
                    revoked += 1;
                }
                Err(StoreError::LastKey { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(
            revoked, 1,
            "round {round}: exactly one of the two is revoked"
        );
        let page = store
            .list(&ListQuery::default().consumer(&consumer))
            .await
            .unwrap();
        let now = SystemTime::now();
        let active = page
            .records
            .iter()
            .filter(|r| r.status(now) == KeyStatus::Active)
            .count();
        assert_eq!(active, 1, "round {round}");
    }
}

async fn rotate_with_grace<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let old = store
        .create(
            NewKey::new("acme")
                .with_scopes(Scopes::parse(["a"]).unwrap())
                .with_rate_limits(limits()),
            "admin-key",
        )
        .await
        .unwrap();
    secrets.push(old.key.expose_secret().to_owned());
    // A grace past what the clock can hold is refused, and changes nothing.
    assert!(matches!(
        store
            .rotate(&old.record.id, Duration::MAX, "admin-key")
            .await,
        Err(StoreError::Invalid(_))
    ));
    let untouched = store.get(&old.record.id).await.unwrap().unwrap();
    assert_eq!(untouched.expires_at, None);
    let grace = Duration::from_secs(3600);
    let before = SystemTime::now();
    let new = store
        .rotate(&old.record.id, grace, "admin-key")
        .await
        .unwrap();
    secrets.push(new.key.expose_secret().to_owned());
    assert_ne!(new.record.id, old.record.id);
    assert_ne!(new.key.expose_secret(), old.key.expose_secret());
    assert_eq!(new.record.consumer, "acme");
    assert_eq!(new.record.scopes, old.record.scopes);
    assert_eq!(new.record.rate_limits, limits());
    let now = SystemTime::now();
    let new_resolved = store.resolve(&new.record.hash).await.unwrap().unwrap();
    assert_eq!(new_resolved.status(now), KeyStatus::Active);
    let old_resolved = store.resolve(&old.record.hash).await.unwrap().unwrap();
    assert_eq!(
        old_resolved.status(now),
        KeyStatus::Active,
        "works during the grace"
    );
    let ends = old_resolved.expires_at.unwrap();
    assert!(ends >= before + grace && ends <= SystemTime::now() + grace);
    assert_eq!(
        old_resolved.status(ends),
        KeyStatus::Expired,
        "fails after it"
    );
    assert!(matches!(
        store.rotate("key_missing", grace, "x").await,
        Err(StoreError::NotFound(_))
    ));
    let log = store.audit(Some(&old.record.id)).await.unwrap();
    let events: Vec<&str> = log.iter().map(|e| e.event.name()).collect();
    assert_eq!(events, ["created", "rotated", "expired_by_rotation"]);
    assert_eq!(
        log[1].event,
        AuditEvent::Rotated {
            new_key_id: new.record.id.clone()
        }
    );
    assert_eq!(log[2].at, ends);
}

async fn expiry_scopes_usage_and_audit<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let created = store.create(NewKey::new("acme"), "cli").await.unwrap();
    secrets.push(created.key.expose_secret().to_owned());
    let id = created.record.id.clone();
    let past = SystemTime::now() - Duration::from_secs(1);
    let r = store
        .set_expiry(&id, Some(past), "admin-key")
        .await
        .unwrap();
    assert_eq!(r.status(SystemTime::now()), KeyStatus::Expired);
    let scopes = Scopes::parse(["users:read"]).unwrap();
    let r = store
        .set_scopes(&id, scopes.clone(), "admin-key")
        .await
        .unwrap();
    assert_eq!(r.scopes, scopes);
    assert_eq!(store.get(&id).await.unwrap().unwrap().scopes, scopes);

    assert_eq!(store.usage(&id).await.unwrap().unwrap().requests, 0);
    let t1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let t2 = t1 + Duration::from_secs(5);
    let delta = |requests, rejected, at| UsageDelta {
        key_id: id.clone(),
        requests,
        rejected,
        last_used_at: at,
        minutes: Vec::new(),
    };
    let unknown = UsageDelta {
        key_id: "key_missing".into(),
        requests: 9,
        rejected: 9,
        last_used_at: t2,
        minutes: Vec::new(),
    };
    store
        .record_usage(&[delta(3, 1, t2), unknown])
        .await
        .unwrap();
    store.record_usage(&[delta(4, 0, t1)]).await.unwrap();
    let usage = store.usage(&id).await.unwrap().unwrap();
    assert_eq!(
        (usage.requests, usage.rejected, usage.last_used_at),
        (7, 1, Some(t2))
    );
    assert_eq!(store.usage("key_missing").await.unwrap(), None);

    let log = store.audit(Some(&id)).await.unwrap();
    let events: Vec<&str> = log.iter().map(|e| e.event.name()).collect();
    assert_eq!(events, ["created", "expiry_changed", "scopes_changed"]);
    assert_eq!(log[0].actor, "cli");
    assert!(
        log[1..]
            .iter()
            .all(|e| e.actor == "admin-key" && e.key_id == id)
    );
    let all = store.audit(None).await.unwrap();
    assert!(all.len() > log.len());
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at), "oldest first");
}

/// A key's allowlist is replaced, and cleared: the record, a lookup by hash (through a
/// cache, for a cached store: it must not keep the old list) and the audit log say so.
async fn allowlists_change<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let net = |s: &str| tower_api_key::record::parse_network(s).unwrap();
    let created = store
        .create(
            NewKey::new("acme").with_allowed_ips([net("10.0.0.0/8")]),
            "cli",
        )
        .await
        .unwrap();
    secrets.push(created.key.expose_secret().to_owned());
    let (id, hash) = (created.record.id.clone(), created.record.hash);
    let resolved = async || store.resolve(&hash).await.unwrap().unwrap();
    assert_eq!(resolved().await.allowed_ips, [net("10.0.0.0/8")]);

    let networks = vec![net("2001:db8::/32"), net("192.0.2.7")];
    let r = store
        .set_allowed_ips(&id, networks.clone(), "admin-key")
        .await
        .unwrap();
    assert_eq!(r.allowed_ips, networks);
    assert_eq!(store.get(&id).await.unwrap().unwrap().allowed_ips, networks);
    assert_eq!(resolved().await.allowed_ips, networks);
    // Nothing else changed.
    assert_eq!(
        (r.scopes.clone(), r.expires_at, r.revoked_at),
        (created.record.scopes.clone(), None, None)
    );

    let r = store
        .set_allowed_ips(&id, Vec::new(), "admin-key")
        .await
        .unwrap();
    assert!(r.allowed_ips.is_empty(), "anywhere");
    assert!(resolved().await.allowed_ips.is_empty());
    // A rotation's successor takes the list as it is now.
    store
        .set_allowed_ips(&id, vec![net("198.51.100.0/24")], "admin-key")
        .await
        .unwrap();
    let next = store
        .rotate(&id, Duration::from_secs(60), "admin-key")
        .await
        .unwrap();
    secrets.push(next.key.expose_secret().to_owned());
    assert_eq!(next.record.allowed_ips, [net("198.51.100.0/24")]);

    let log = store.audit(Some(&id)).await.unwrap();
    let events: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.event.name(), e.actor.as_str()))
        .collect();
    assert_eq!(
        events[..4],
        [
            ("created", "cli"),
            ("allowed_ips_changed", "admin-key"),
            ("allowed_ips_changed", "admin-key"),
            ("allowed_ips_changed", "admin-key"),
        ]
    );
    assert_eq!(log[1].event, AuditEvent::AllowedIpsChanged);
    assert!(matches!(
        store
            .set_allowed_ips("key_missing", Vec::new(), "admin-key")
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn concurrent_creates_get_unique_ids<S: KeyStore + Clone>(
    store: &S,
    secrets: &mut Vec<String>,
) {
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create(NewKey::new("burst").with_name(format!("n{i}")), "cli")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let created = t.await.unwrap();
        secrets.push(created.key.expose_secret().to_owned());
        assert!(ids.insert(created.record.id));
    }
    assert_eq!(ids.len(), 50);
    let listed = store
        .list(&ListQuery::default().consumer("burst").limit(1000))
        .await
        .unwrap();
    assert_eq!(listed.records.len(), 50);
}

/// A leak report is audited with where the key was found; with `revoke` it revokes
/// (once), without it the key keeps working; an unknown id changes nothing.
async fn leak_reports<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    let url = "https://github.com/octo/repo/blob/abc/config.yml";
    let notified = store.create(NewKey::new("acme"), "cli").await.unwrap();
    let revoked = store.create(NewKey::new("acme"), "cli").await.unwrap();
    secrets.push(notified.key.expose_secret().to_owned());
    secrets.push(revoked.key.expose_secret().to_owned());

    let r = store
        .report_leak(&notified.record.id, url, "content", false, "github")
        .await
        .unwrap();
    assert_eq!(r.status(SystemTime::now()), KeyStatus::Active);
    assert_eq!(
        store
            .resolve(&notified.record.hash)
            .await
            .unwrap()
            .unwrap()
            .status(SystemTime::now()),
        KeyStatus::Active,
        "notify leaves the key working"
    );
    let log = store.audit(Some(&notified.record.id)).await.unwrap();
    let events: Vec<&str> = log.iter().map(|e| e.event.name()).collect();
    assert_eq!(events, ["created", "leaked"]);
    assert_eq!(
        log[1].event,
        AuditEvent::Leaked {
            url: url.to_owned(),
            source: "content".to_owned()
        }
    );
    assert_eq!(log[1].actor, "github");

    let r = store
        .report_leak(&revoked.record.id, "", "", true, "github")
        .await
        .unwrap();
    assert_eq!(r.status(SystemTime::now()), KeyStatus::Revoked);
    assert_eq!(
        store
            .resolve(&revoked.record.hash)
            .await
            .unwrap()
            .unwrap()
            .status(SystemTime::now()),
        KeyStatus::Revoked
    );
    // A second report of a revoked key is audited, and revokes nothing again.
    let again = store
        .report_leak(&revoked.record.id, url, "commit", true, "github")
        .await
        .unwrap();
    assert_eq!(again.revoked_at, r.revoked_at);
    let log = store.audit(Some(&revoked.record.id)).await.unwrap();
    let events: Vec<&str> = log.iter().map(|e| e.event.name()).collect();
    assert_eq!(events, ["created", "leaked", "revoked", "leaked"]);
    assert_eq!(
        log[1].event,
        AuditEvent::Leaked {
            url: String::new(),
            source: String::new()
        }
    );

    assert!(matches!(
        store
            .report_leak("key_missing", url, "content", true, "github")
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store.audit(Some("key_missing")).await.unwrap().is_empty(),
        "a failed report leaves no trace"
    );
}

/// A random foreign key (a UUID-like text), never seen before.
fn foreign_key() -> String {
    let id = tower_api_key::record::generate_key_id();
    format!("doda_{}", &id[4..])
}

/// Imported keys resolve by their hash, with what went in, a fresh id each, the
/// `imported` start and an `imported` audit entry by the actor.
async fn imports_by_hash<S: KeyStore>(store: &S) {
    let (a, b) = (foreign_key(), foreign_key());
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
    // Asked for before the import: unknown (and, through a cache, remembered so).
    assert!(store.resolve(&KeyHash::of(&a)).await.unwrap().is_none());
    let imported = store
        .import(
            vec![
                ImportedKey::new(KeyHash::of(&a), "legacy")
                    .with_name("old system")
                    .with_scopes(Scopes::parse(["orders:read"]).unwrap())
                    .with_expires_at(expires)
                    .with_rate_limits(limits())
                    .with_allowed_ips(["10.0.0.0/8".parse().unwrap()]),
                ImportedKey::new(KeyHash::of(&b), "legacy").with_start("doda_"),
            ],
            "admin-key",
        )
        .await
        .unwrap();
    assert_eq!(imported.len(), 2);
    assert_ne!(imported[0].id, imported[1].id);
    let first = &imported[0];
    assert_eq!(first.hash, KeyHash::of(&a));
    assert_eq!(first.start, IMPORTED_START);
    assert_eq!(first.consumer, "legacy");
    assert_eq!(first.name, "old system");
    assert!(first.scopes.grants("orders:read"));
    assert_eq!(first.expires_at, Some(expires));
    assert_eq!(first.rate_limits, limits());
    assert_eq!(
        first.allowed_ips,
        ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(first.status(SystemTime::now()), KeyStatus::Active);
    assert_eq!(imported[1].start, "doda_");
    assert_eq!(
        store.resolve(&KeyHash::of(&a)).await.unwrap().as_ref(),
        Some(first),
        "an imported key resolves by its hash at once"
    );
    assert_eq!(
        store.get(&imported[1].id).await.unwrap().as_ref(),
        Some(&imported[1])
    );
    for record in &imported {
        let log = store.audit(Some(&record.id)).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].event, AuditEvent::Imported);
        assert_eq!(log[0].event.name(), "imported");
        assert_eq!(log[0].actor, "admin-key");
    }
    // An imported key is managed like any other.
    store.revoke(&first.id, "admin-key").await.unwrap();
    assert_eq!(
        store
            .resolve(&first.hash)
            .await
            .unwrap()
            .unwrap()
            .status(SystemTime::now()),
        KeyStatus::Revoked
    );
    // An empty import imports nothing and is no error.
    assert!(
        store
            .import(Vec::new(), "admin-key")
            .await
            .unwrap()
            .is_empty()
    );
}

/// A hash already stored, or twice in the batch, fails the whole import, naming the row.
async fn imports_all_or_nothing<S: KeyStore>(store: &S) {
    let stored = store.create(NewKey::new("acme"), "cli").await.unwrap();
    let consumer = format!("atomic-{}", &tower_api_key::record::generate_key_id()[4..]);
    let (a, b, c) = (foreign_key(), foreign_key(), foreign_key());
    let row = |k: &str| ImportedKey::new(KeyHash::of(k), consumer.as_str());
    let audit_before = store.audit(None).await.unwrap().len();

    let dup = |index, earlier| DuplicateRow { index, earlier };
    let err = store
        .import(
            vec![row(&a), row(&b), ImportedKey::new(stored.record.hash, "x")],
            "admin-key",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateHashes(rows) if rows == &[dup(2, None)]),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 2"), "{err}");

    let err = store
        .import(vec![row(&a), row(&b), row(&c), row(&b)], "admin-key")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateHashes(rows) if rows == &[dup(3, Some(1))]),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 3"), "{err}");

    // Every such row is named, in row order, not only the first: a stored hash (twice:
    // both rows are named as stored), and a repeat of a hash that is not stored.
    let err = store
        .import(
            vec![
                row(&a),
                ImportedKey::new(stored.record.hash, "x"),
                row(&b),
                row(&a),
                ImportedKey::new(stored.record.hash, "y"),
                row(&c),
            ],
            "admin-key",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateHashes(rows)
            if rows == &[dup(1, None), dup(3, Some(0)), dup(4, None)]),
        "{err:?}"
    );
    let message = err.to_string();
    for row in ["row 1", "row 3", "row 4"] {
        assert!(message.contains(row), "{message}");
    }

    for k in [&a, &b, &c] {
        assert!(
            store.resolve(&KeyHash::of(k)).await.unwrap().is_none(),
            "a failed import leaves nothing behind"
        );
    }
    let page = store
        .list(&ListQuery::default().consumer(consumer.as_str()))
        .await
        .unwrap();
    assert!(page.records.is_empty());
    assert_eq!(store.audit(None).await.unwrap().len(), audit_before);
    // The same rows, without the duplicate, import.
    let ok = store
        .import(vec![row(&a), row(&b), row(&c)], "admin-key")
        .await
        .unwrap();
    assert_eq!(ok.len(), 3);
    // And now they are stored: importing them again fails, naming each.
    let err = store
        .import(vec![row(&c), row(&foreign_key()), row(&a)], "admin-key")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateHashes(rows) if rows == &[dup(0, None), dup(2, None)]),
        "{err:?}"
    );
}

/// A bucket of `at` with the counts (allowed, rate limited, forbidden, unauthorized).
fn bucket(at: SystemTime, (a, r, f, u): (u64, u64, u64, u64)) -> UsageBucket {
    UsageBucket {
        at,
        allowed: a,
        rate_limited: r,
        forbidden: f,
        unauthorized: u,
    }
}

/// One minute's counts of `key_id` as the recorder hands them over.
fn minutes(key_id: &str, buckets: &[UsageBucket]) -> UsageDelta {
    UsageDelta {
        key_id: key_id.to_owned(),
        requests: buckets.iter().map(|b| b.allowed).sum(),
        rejected: buckets.iter().map(UsageBucket::refused).sum(),
        last_used_at: buckets.last().unwrap().at,
        minutes: buckets.to_vec(),
    }
}

async fn usage_over_time<S: KeyStore>(store: &S) {
    let a = store
        .create(NewKey::new("series"), "cli")
        .await
        .unwrap()
        .record;
    // Consumers of their own, whatever else the store holds.
    let consumer = format!("series-{}", a.id);
    let other = format!("series-other-{}", a.id);
    let a = store
        .create(NewKey::new(&consumer), "cli")
        .await
        .unwrap()
        .record;
    let b = store
        .create(NewKey::new(&consumer), "cli")
        .await
        .unwrap()
        .record;
    let c = store
        .create(NewKey::new(&other), "cli")
        .await
        .unwrap()
        .record;
    let now = SystemTime::now();
    let minute = Duration::from_secs(60);
    let hour = Duration::from_secs(3_600);
    let base = bucket_start(UsageStep::Hour, now) - 3 * hour;
    let (m1, m2, m3) = (base + 5 * minute, base + 6 * minute, base + 70 * minute);
    let end = base + 2 * hour;
    let all_before = store
        .usage_series(None, UsageStep::Minute, base, end)
        .await
        .unwrap();

    store
        .record_usage(&[
            minutes(&a.id, &[bucket(m1, (3, 1, 0, 0)), bucket(m2, (0, 0, 2, 0))]),
            minutes(&b.id, &[bucket(m1, (0, 0, 0, 4))]),
            minutes("key_missing", &[bucket(m1, (100, 0, 0, 0))]),
        ])
        .await
        .unwrap();
    // Later batches add to the same buckets.
    store
        .record_usage(&[
            minutes(&a.id, &[bucket(m1, (2, 0, 0, 0)), bucket(m3, (1, 0, 0, 0))]),
            minutes(&c.id, &[bucket(m1, (1, 0, 0, 0))]),
        ])
        .await
        .unwrap();

    let series = |id: Option<String>, step, from, to| async move {
        store
            .usage_series(id.as_deref(), step, from, to)
            .await
            .unwrap()
    };
    let a_id = Some(a.id.clone());
    assert_eq!(
        series(a_id.clone(), UsageStep::Minute, base, end).await,
        [
            bucket(m1, (5, 1, 0, 0)),
            bucket(m2, (0, 0, 2, 0)),
            bucket(m3, (1, 0, 0, 0))
        ]
    );
    assert_eq!(
        series(a_id.clone(), UsageStep::Hour, base, end).await,
        [
            bucket(base, (5, 1, 2, 0)),
            bucket(base + hour, (1, 0, 0, 0))
        ]
    );
    // `from` is floored to its bucket; `to` is excluded.
    assert_eq!(
        series(
            a_id.clone(),
            UsageStep::Minute,
            m1 + Duration::from_secs(30),
            m2
        )
        .await,
        [bucket(m1, (5, 1, 0, 0))]
    );
    assert_eq!(
        series(
            a_id.clone(),
            UsageStep::Minute,
            m2,
            m2 + Duration::from_secs(1)
        )
        .await,
        [bucket(m2, (0, 0, 2, 0))]
    );
    assert!(
        series(a_id.clone(), UsageStep::Minute, end, base)
            .await
            .is_empty()
    );
    assert!(
        series(Some("key_missing".into()), UsageStep::Minute, base, end)
            .await
            .is_empty(),
        "an unknown key's counts are not kept"
    );

    // All keys: a, b and c summed (over whatever else the store had).
    let all_after = series(None, UsageStep::Minute, base, end).await;
    let at_m1 = |buckets: &[UsageBucket]| {
        buckets
            .iter()
            .find(|x| x.at == m1)
            .copied()
            .unwrap_or(UsageBucket::empty(m1))
    };
    let (before, after) = (at_m1(&all_before), at_m1(&all_after));
    assert_eq!(
        (
            after.allowed - before.allowed,
            after.rate_limited - before.rate_limited,
            after.forbidden - before.forbidden,
            after.unauthorized - before.unauthorized
        ),
        (6, 1, 0, 4)
    );

    // Rankings: a (9 requests) before b (4) and c (1); a's consumer (13) before c's (1).
    let top_keys = store
        .usage_top(UsageTopBy::Key, UsageStep::Minute, base, end, 1_000)
        .await
        .unwrap();
    let place = |name: &str| top_keys.iter().position(|t| t.name == name).unwrap();
    assert!(place(&a.id) < place(&b.id) && place(&b.id) < place(&c.id));
    assert_eq!(top_keys[place(&a.id)].counts.total(), 9);
    assert_eq!(top_keys[place(&a.id)].counts.forbidden, 2);
    assert!(top_keys.iter().all(|t| t.name != "key_missing"));
    assert!(
        top_keys
            .windows(2)
            .all(|w| w[0].counts.total() >= w[1].counts.total()),
        "highest total first"
    );
    let top_consumers = store
        .usage_top(UsageTopBy::Consumer, UsageStep::Hour, base, end, 1_000)
        .await
        .unwrap();
    let of = |name: &str| top_consumers.iter().find(|t| t.name == name).unwrap();
    assert_eq!(of(&consumer).counts.total(), 13);
    assert_eq!(of(&consumer).counts.unauthorized, 4);
    assert_eq!(of(&other).counts.total(), 1);
    assert_eq!(
        store
            .usage_top(UsageTopBy::Key, UsageStep::Minute, base, end, 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // Outside the range: nothing.
    assert!(
        store
            .usage_top(UsageTopBy::Key, UsageStep::Minute, end, end + hour, 10)
            .await
            .unwrap()
            .iter()
            .all(|t| t.name != a.id)
    );

    // Retention: minute buckets older than 48 h and hour buckets older than 90 days
    // are pruned (the hour holding an old minute is kept while it is kept).
    let old_minute = bucket_start(UsageStep::Minute, now - 49 * hour);
    let old_hour = bucket_start(UsageStep::Minute, now - 91 * 24 * hour);
    store
        .record_usage(&[minutes(
            &c.id,
            &[
                bucket(old_hour, (7, 0, 0, 0)),
                bucket(old_minute, (5, 0, 0, 0)),
            ],
        )])
        .await
        .unwrap();
    let c_id = Some(c.id.clone());
    assert!(
        series(c_id.clone(), UsageStep::Minute, old_hour, base)
            .await
            .is_empty(),
        "minute buckets past 48 h are pruned"
    );
    assert_eq!(
        series(c_id.clone(), UsageStep::Hour, old_hour, base).await,
        [bucket(
            bucket_start(UsageStep::Hour, old_minute),
            (5, 0, 0, 0)
        )],
        "hour buckets are kept 90 days, no longer"
    );
    // The counters are the sum of all of it.
    let usage = store.usage(&a.id).await.unwrap().unwrap();
    assert_eq!((usage.requests, usage.rejected), (6, 3));
}

/// Text holding NUL (which PostgreSQL cannot keep) is the caller's mistake: each store
/// keeps it or refuses it as invalid, never fails as if it were down.
async fn nul_in_text_is_bad_input<S: KeyStore>(store: &S, secrets: &mut Vec<String>) {
    fn not_down<T>(what: &str, result: &Result<T, StoreError>) {
        assert!(
            !matches!(result, Err(StoreError::Backend(_))),
            "{what}: {:?}",
            result.as_ref().err()
        );
    }
    for new in [
        NewKey::new("nul\0consumer"),
        NewKey::new("acme").with_name("nul\0name"),
        NewKey::new("acme").with_metadata("k", "nul\0value"),
    ] {
        let created = store.create(new, "test").await;
        not_down("create", &created);
        if let Ok(created) = created {
            secrets.push(created.key.expose_secret().to_owned());
        }
    }
    let id = "key_\0";
    not_down("get", &store.get(id).await);
    not_down("revoke", &store.revoke(id, "test").await);
    not_down("usage", &store.usage(id).await);
    not_down("audit", &store.audit(Some(id)).await);
    let query = ListQuery::default().consumer("nul\0consumer");
    not_down("list", &store.list(&query).await);
}
