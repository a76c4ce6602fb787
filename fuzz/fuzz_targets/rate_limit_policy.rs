//! Fuzz target `rate_limit_policy`: the body is `checks/rate_limit_policy.rs`, shared with the crate's
//! `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../checks/rate_limit_policy.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
