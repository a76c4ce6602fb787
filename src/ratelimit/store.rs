use std::sync::LazyLock;
use std::time::Duration;

use super::policy::{RateLimitPolicy, RateLimits};
use crate::seeded;

/// Where one policy stands after a request: the numbers behind the `RateLimit` header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Did this policy allow the request?
    pub allowed: bool,
    /// Requests of cost 1 still allowed now.
    pub remaining: u64,
    /// Until the policy's allowance is whole again (rate) or its window ends (quota).
    pub reset: Duration,
    /// When this policy denied: how long until it would allow the request.
    pub retry_after: Duration,
}

/// The answer for one request: allowed only if every policy allowed it, in which case
/// every policy was charged; otherwise none was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    statuses: Statuses,
}

/// Up to two statuses (a rate and a quota, the usual set) inline, so that the common
/// decision is small to move; more on the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Statuses {
    Inline { len: u8, items: [PolicyStatus; 2] },
    Heap(Box<[PolicyStatus]>),
}

impl Decision {
    /// A decision from one status per policy, in the order of the policies (at most
    /// [`RateLimits::MAX`]; any more are ignored).
    pub fn new(statuses: impl IntoIterator<Item = PolicyStatus>) -> Self {
        let mut iter = statuses.into_iter().take(RateLimits::MAX);
        let mut items = [PolicyStatus::default(); 2];
        let len = items.iter_mut().zip(&mut iter).map(|(i, s)| *i = s).count();
        let statuses = match iter.next() {
            None => Statuses::Inline {
                len: len as u8,
                items,
            },
            Some(third) => Statuses::Heap(items.into_iter().chain([third]).chain(iter).collect()),
        };
        Self { statuses }
    }

    /// Allowed by every policy?
    pub fn allowed(&self) -> bool {
        self.statuses().iter().all(|s| s.allowed)
    }

    /// One status per policy, in the order of the policies.
    pub fn statuses(&self) -> &[PolicyStatus] {
        match &self.statuses {
            Statuses::Inline { len, items } => &items[..usize::from(*len)],
            Statuses::Heap(items) => items,
        }
    }

    /// How long until the request would be allowed by every policy that denied it.
    pub fn retry_after(&self) -> Duration {
        self.statuses()
            .iter()
            .map(|s| s.retry_after)
            .max()
            .unwrap_or_default()
    }
}

/// Whose budget a request is charged to: a kind (`key`, `consumer`, or a custom
/// extractor's name) and an id, so that ids of different kinds never share a budget.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    kind: &'static str,
    id: &'a str,
    /// [`subject_digest`] of the kind and id, when it was worked out beforehand (the
    /// cache does it once per loaded key, so that a hit need not read the id).
    digest: Option<u64>,
}

impl<'a> Subject<'a> {
    /// A budget per API key.
    pub fn key(id: &'a str) -> Self {
        Self::custom("key", id)
    }

    /// A budget shared by all keys of a consumer.
    pub fn consumer(id: &'a str) -> Self {
        Self::custom("consumer", id)
    }

    /// A budget of another kind, such as `peer` for a client address.
    pub fn custom(kind: &'static str, id: &'a str) -> Self {
        Self {
            kind,
            id,
            digest: None,
        }
    }

    /// The same subject, with its digest already worked out.
    pub(crate) fn with_digest(self, digest: u64) -> Self {
        debug_assert_eq!(digest, subject_digest(self.kind, self.id));
        Self {
            digest: Some(digest),
            ..self
        }
    }

    /// A seeded 64-bit hash of the kind and id, the same for the whole process.
    pub(crate) fn digest(&self) -> u64 {
        self.digest
            .unwrap_or_else(|| subject_digest(self.kind, self.id))
    }

    /// The kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The id.
    pub fn id(&self) -> &'a str {
        self.id
    }
}

impl PartialEq for Subject<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, self.id) == (other.kind, other.id)
    }
}

impl Eq for Subject<'_> {}

impl std::hash::Hash for Subject<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.kind, self.id).hash(state);
    }
}

impl std::fmt::Debug for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish()
    }
}

/// The process-wide seeded hash of a subject: in-memory limiter state is found by it.
pub(crate) fn subject_digest(kind: &str, id: &str) -> u64 {
    static SEED: LazyLock<(u64, u64)> = LazyLock::new(seeded::random_seed);
    seeded::hash_pair(*SEED, kind.as_bytes(), id.as_bytes())
}

/// A rate-limit store could not answer (for example, Redis is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store unavailable: {0}")]
pub struct RateLimitStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where limiter state lives: in this process ([`MemoryRateLimitStore`](super::MemoryRateLimitStore))
/// or shared by many instances.
///
/// `check` charges `cost` against every one of `policies` for `subject` at `now` (Unix
/// nanoseconds), all or nothing: when one policy denies, no policy's budget is spent.
#[async_trait::async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Charges one request.
    async fn check(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError>;

    /// The same as [`check`](Self::check) for a store that can answer without waiting
    /// (an in-process store): the layer then calls no async code and boxes nothing.
    /// `None`, the default, means "call `check`".
    fn check_sync(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Option<Result<Decision, RateLimitStoreError>> {
        let _ = (subject, policies, cost, now);
        None
    }
}

#[async_trait::async_trait]
impl<T: RateLimitStore + ?Sized> RateLimitStore for std::sync::Arc<T> {
    async fn check(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Result<Decision, RateLimitStoreError> {
        (**self).check(subject, policies, cost, now).await
    }

    fn check_sync(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Option<Result<Decision, RateLimitStoreError>> {
        (**self).check_sync(subject, policies, cost, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(remaining: u64) -> PolicyStatus {
        PolicyStatus {
            allowed: remaining > 0,
            remaining,
            reset: Duration::from_secs(remaining),
            retry_after: Duration::from_secs(10 - remaining.min(10)),
        }
    }

    #[test]
    fn a_decision_of_two_policies_stays_small() {
        // Moved on every request: two statuses inline, no more (it was 392 bytes).
        assert!(std::mem::size_of::<Decision>() <= 2 * std::mem::size_of::<PolicyStatus>() + 8);
    }

    #[test]
    fn decisions_keep_every_status_in_order() {
        for n in 0..=RateLimits::MAX + 2 {
            let want: Vec<PolicyStatus> = (0..n as u64).map(status).collect();
            let d = Decision::new(want.iter().copied());
            let kept = n.min(RateLimits::MAX);
            assert_eq!(d.statuses(), &want[..kept], "{n} statuses");
            assert_eq!(d.allowed(), want[..kept].iter().all(|s| s.allowed));
            assert_eq!(
                d.retry_after(),
                want[..kept]
                    .iter()
                    .map(|s| s.retry_after)
                    .max()
                    .unwrap_or_default()
            );
        }
    }
}
