//! Fuzz target `admin_api`: the body is `checks/admin_api.rs`, shared with the crate's
//! `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../checks/admin_api.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
