//! Fuzz target `secret_scanning`: the body is `checks/secret_scanning.rs`, shared with the crate's
//! `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../checks/secret_scanning.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
