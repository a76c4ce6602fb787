//! The committed fuzz corpora as a regression test on stable.
//!
//! Every file of `fuzz/corpus/<target>/` goes through the very check its fuzz target
//! runs (`fuzz/checks/<target>.rs`, compiled here too), so that `cargo test` replays
//! the seeds and every input that once found a bug, without nightly or cargo-fuzz.
//! `scripts/fuzz.sh` does the fuzzing; docs/fuzzing.md says what each target asserts.

use std::path::Path;

#[path = "../fuzz/checks/key_source.rs"]
mod key_source;
#[path = "../fuzz/checks/key_validation.rs"]
mod key_validation;
#[path = "../fuzz/checks/rate_limit_policy.rs"]
mod rate_limit_policy;
#[path = "../fuzz/checks/scopes.rs"]
mod scopes;

#[cfg(feature = "admin")]
#[path = "../fuzz/checks/admin_api.rs"]
mod admin_api;
#[cfg(feature = "admin")]
#[path = "../fuzz/checks/secret_scanning.rs"]
mod secret_scanning;

/// Runs `check` on every file of the target's corpus, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: too few seeds", dir.display());
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} fails its fuzz check", file.display());
        }
    }
}

#[test]
fn key_validation_corpus() {
    replay("key_validation", key_validation::check);
}

#[test]
fn key_source_corpus() {
    replay("key_source", key_source::check);
}

#[test]
fn rate_limit_policy_corpus() {
    replay("rate_limit_policy", rate_limit_policy::check);
}

#[test]
fn scopes_corpus() {
    replay("scopes", scopes::check);
}

#[cfg(feature = "admin")]
#[test]
fn admin_api_corpus() {
    replay("admin_api", admin_api::check);
}

#[cfg(feature = "admin")]
#[test]
fn secret_scanning_corpus() {
    replay("secret_scanning", secret_scanning::check);
}
