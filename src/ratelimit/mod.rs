//! Per-key rate limiting and quotas.
//!
//! [`RateLimitPolicy`] says what is allowed (a GCRA rate with a burst, or a quota per
//! UTC calendar day or month); [`RateLimits`] is the set of named policies a key
//! carries. The algorithms in [`gcra`] are pure functions of a `u64` state and the time;
//! a [`RateLimitStore`] keeps those states ([`MemoryRateLimitStore`] in this process).

pub mod gcra;
mod memory;
mod policy;
mod store;

pub use memory::MemoryRateLimitStore;
pub use policy::{
    InvalidPolicy, InvalidRateLimits, Limit, QuotaWindow, RateLimitPolicy, RateLimits,
};
pub use store::{Decision, PolicyStatus, RateLimitStore, RateLimitStoreError};
