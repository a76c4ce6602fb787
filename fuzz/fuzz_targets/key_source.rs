//! Fuzz target `key_source`: the body is `checks/key_source.rs`, shared with the crate's
//! `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../checks/key_source.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
