//! `RedisRateLimitStore` against a real Redis Cluster of three masters that the test
//! starts (tests/common/redis_cluster.rs): exact and batched limiting of subjects whose
//! keys land on each master, a request's several policies in one slot, `MOVED` and `ASK`
//! followed while a subject's slot moves to another master mid-test, and the local
//! fallback while the whole cluster is down.
//!
//! Without `redis-server` and `redis-cli` on the PATH the tests say they skipped, unless
//! `TOWER_API_KEY_REQUIRE_SERVICES=1`, which makes it a failure.
#![cfg(feature = "redis")]

#[path = "common/redis.rs"]
mod common_redis;
#[path = "common/redis_cluster.rs"]
mod common_redis_cluster;
#[path = "common/unique.rs"]
mod unique;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common_redis::poll_until;
use common_redis_cluster::OwnCluster;
use tower_api_key::RateLimitPolicy;
use tower_api_key::ratelimit::{
    QuotaWindow, RateLimitStore, RedisMode, RedisRateLimitStore, Subject,
};

fn now() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

/// A rate and a daily quota: two keys for each subject, which one script call touches.
fn policies(requests: u32) -> Vec<RateLimitPolicy> {
    vec![
        format!("{requests}/60s").parse().unwrap(),
        RateLimitPolicy::quota("daily", 1000, QuotaWindow::Day).unwrap(),
    ]
}

/// Allowed or not, for `n` requests of `subject` at `t`, `t + 1`, …
async fn run(
    store: &RedisRateLimitStore,
    subject: Subject<'_>,
    policies: &[RateLimitPolicy],
    t: u64,
    n: u64,
) -> Vec<bool> {
    let mut allowed = Vec::new();
    for i in 0..n {
        let decision = tokio::time::timeout(
            Duration::from_secs(10),
            store.check(subject, policies, 1, t + i),
        )
        .await
        .expect("a check answers within 10 s")
        .expect("the store answers");
        allowed.push(decision.allowed());
    }
    allowed
}

/// Does node `node` hold `key`? (Asked by slot, which any node answers for what it holds,
/// where `EXISTS` would be redirected.)
fn exists(cluster: &OwnCluster, node: usize, key: &str) -> bool {
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(cluster.slot_of(key))
        .arg(1000)
        .query(&mut cluster.conn(node))
        .unwrap();
    keys.iter().any(|k| k == key)
}

/// Subject ids whose keys land on each of the three masters, in node order.
fn one_subject_per_master(
    cluster: &OwnCluster,
    store: &RedisRateLimitStore,
    label: &str,
) -> Vec<String> {
    let policy = &policies(1)[0];
    let mut found: Vec<Option<String>> = vec![None, None, None];
    for n in 0.. {
        let id = format!("{label}-{n}");
        let slot = cluster.slot_of(&store.redis_key(Subject::key(&id), policy));
        let owner = cluster.owner(slot);
        if found[owner].is_none() {
            found[owner] = Some(id);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_and_batched_across_the_masters() {
    let Some(cluster) = tokio::task::block_in_place(OwnCluster::start) else {
        return;
    };
    for mode in [RedisMode::Exact, RedisMode::Batched] {
        // One seed node: the store learns the others from it.
        let store = RedisRateLimitStore::open_cluster([cluster.url(0)])
            .unwrap()
            .with_prefix(format!("cluster:{mode:?}:"))
            .with_mode(mode);
        tokio::time::timeout(Duration::from_secs(10), store.ping())
            .await
            .unwrap()
            .unwrap();
        let policies = policies(3);
        let ids = one_subject_per_master(&cluster, &store, &format!("{mode:?}"));
        let t = now();
        for (node, id) in ids.iter().enumerate() {
            let subject = Subject::key(id);
            // The rate's and the quota's keys share the subject's slot.
            let keys: Vec<String> = policies
                .iter()
                .map(|p| store.redis_key(subject, p))
                .collect();
            assert_eq!(cluster.slot_of(&keys[0]), cluster.slot_of(&keys[1]));
            assert_eq!(
                run(&store, subject, &policies, t, 4).await,
                [true, true, true, false],
                "{mode:?}, subject on node {node}"
            );
            for key in &keys {
                assert!(
                    exists(&cluster, node, key),
                    "{mode:?}: {key} on node {node}"
                );
            }
        }
        assert!(!store.is_degraded(), "{mode:?}: limited in the cluster");
        // A second instance shares the limits (exact mode: every check asks the cluster).
        if mode == RedisMode::Exact {
            let other = RedisRateLimitStore::open_cluster([cluster.url(2), cluster.url(1)])
                .unwrap()
                .with_prefix(format!("cluster:{mode:?}:"))
                .with_mode(mode);
            for id in &ids {
                assert_eq!(
                    run(&other, Subject::key(id), &policies, t + 10, 1).await,
                    [false]
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_and_ask_are_followed_while_a_slot_moves() {
    let Some(cluster) = tokio::task::block_in_place(OwnCluster::start) else {
        return;
    };
    for mode in [RedisMode::Exact, RedisMode::Batched] {
        let store = RedisRateLimitStore::open_cluster([cluster.url(0)])
            .unwrap()
            .with_prefix(format!("moving:{mode:?}:"))
            .with_mode(mode)
            // Slices of one request: every check is a script call, so each one meets
            // the moving slot.
            .with_slice_share(u32::MAX);
        let policies = policies(6);
        let t = now();
        let id = format!("{mode:?}-moving");
        let subject = Subject::key(&id);
        let key = store.redis_key(subject, &policies[0]);
        let slot = cluster.slot_of(&key);
        let from = cluster.owner(slot);
        let (middle, to) = ((from + 1) % 3, (from + 2) % 3);
        assert_eq!(run(&store, subject, &policies, t, 2).await, [true, true]);
        assert!(exists(&cluster, from, &key));

        // ASK: the keys are on `middle` already, the slot still `from`'s.
        tokio::task::block_in_place(|| cluster.begin_migration(slot, from, middle));
        assert!(exists(&cluster, middle, &key) && !exists(&cluster, from, &key));
        assert_eq!(
            run(&store, subject, &policies, t + 2, 2).await,
            [true, true],
            "{mode:?}: ASK"
        );
        tokio::task::block_in_place(|| cluster.end_migration(slot, from, middle));
        // MOVED: `middle` serves the slot now; the store's map still says `from`.
        assert_eq!(
            run(&store, subject, &policies, t + 4, 1).await,
            [true],
            "{mode:?}: MOVED"
        );
        // And once more, to `to`, all at once.
        tokio::task::block_in_place(|| {
            cluster.begin_migration(slot, middle, to);
            cluster.end_migration(slot, middle, to);
        });
        // The count went along with the keys: six in all, then refused.
        assert_eq!(
            run(&store, subject, &policies, t + 5, 2).await,
            [true, false],
            "{mode:?}: the state moved with the slot"
        );
        let held: Vec<bool> = (0..3).map(|n| exists(&cluster, n, &key)).collect();
        assert!(
            exists(&cluster, to, &key),
            "{mode:?}: on the new master ({from} {middle} {to}: {held:?})"
        );
        assert!(!store.is_degraded(), "{mode:?}: never fell back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_fallback_while_the_cluster_is_down() {
    let Some(mut cluster) = tokio::task::block_in_place(OwnCluster::start) else {
        return;
    };
    let store = RedisRateLimitStore::open_cluster([cluster.url(0), cluster.url(1)])
        .unwrap()
        .with_prefix("down:")
        .with_mode(RedisMode::Exact)
        .with_retry_interval(Duration::from_millis(50));
    let policies = policies(3);
    let t = now();
    assert_eq!(
        run(&store, Subject::key("a"), &policies, t, 4).await,
        [true, true, true, false]
    );
    tokio::task::block_in_place(|| cluster.kill());
    // Down: limited in process, answered within the timeout, said by is_degraded.
    assert_eq!(
        run(&store, Subject::key("b"), &policies, t, 4).await,
        [true, true, true, false]
    );
    assert!(store.is_degraded());
    tokio::task::block_in_place(|| cluster.restart());
    poll_until("the store uses the cluster again", || async {
        let _ = store
            .check(Subject::key("probe"), &policies, 1, now())
            .await;
        !store.is_degraded()
    })
    .await;
    assert_eq!(
        run(&store, Subject::key("c"), &policies, now(), 4).await,
        [true, true, true, false]
    );
    assert!(!store.is_degraded());
}
