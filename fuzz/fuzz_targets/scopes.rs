//! Fuzz target `scopes`: the body is `checks/scopes.rs`, shared with the crate's
//! `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../checks/scopes.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
