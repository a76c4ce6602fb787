//! The batched mode of [`RedisRateLimitStore`](super::RedisRateLimitStore): each instance
//! takes a slice of a subject's budget from Redis in one atomic call and spends it here.
//!
//! **A rate's slice is a segment of its GCRA timeline.** Reserving `k` requests moves the
//! key's theoretical arrival time (TAT) in Redis by `k` emission intervals `T`, so the
//! instance owns the segment `[start, end)` of the timeline, `end = start + k·T`, with
//! `end ≤ now + τ` when it was granted (τ: the burst's tolerance). The instance spends it
//! with GCRA of its own, inside the segment: a request at `s` costing `c` is allowed when
//! `max(tat, s) + c·T ≤ end`, and `tat` moves there. So every allowed request holds slots
//! of length `T` that no other request holds, each slot starting no earlier than its
//! request and ending no later than the request's time plus τ: the conditions under which
//! exact GCRA's bound holds. In any window of length `w`, at most `burst + w / T` requests
//! are allowed over all instances together, as with one exact limiter. A segment's slots
//! that pass unspent are gone (this is how a slice expires: by the time `end`, at most τ
//! after it was granted).
//!
//! **A quota's slice is a count**: the calendar window's counter in Redis moves by `k` and
//! the instance spends `k` requests of that window. Unspent requests go back to Redis when
//! the slice is left unused for the lease (default 1 s); a quota is never overspent
//! because every allowed request was counted in Redis first.
//!
//! **Slice sizes adapt.** A policy grants the request's cost plus at most `1/share` of
//! what it has left beyond it (and at most the slice's `want`, which starts small and
//! doubles while the instance keeps spending its slices). A key far from its limit gets
//! large slices; as its budget runs low they shrink, and at the edge the grant is the
//! request's cost alone: one exact check per request, as the exact mode does. A refusal
//! is remembered, with the state Redis reported, for at most the lease: a request that
//! state refuses is refused here. (With one instance a key at its limit so costs no round
//! trip per refused request; with several moving the budget the state goes stale at once
//! and most requests at the edge are calls, as in the exact mode.)
//!
//! **Giving back.** When an instance asks again for a subject it gives back what it still
//! holds: a rate's unspent segment when no other instance took budget after it (the
//! segment is then still the tail of the timeline), a quota's unspent requests when they
//! cannot pay the request (when they can, they pay it, and the call charges that quota
//! nothing).
//! So one instance alone decides exactly as the exact mode does, request by request.
//!
//! **All or nothing.** Locally, a request is allowed only if every one of its policies'
//! slices can pay it, and then all of them are charged under one lock; otherwise one
//! script call checks and charges every policy at once, as the exact script does.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::gcra;
use super::policy::{Limit, QuotaWindow, RateLimitPolicy};
use super::store::{Decision, PolicyStatus, Subject};
use crate::seeded::{GOLDEN, mum};

/// The smallest and largest `want` of a slice (requests beyond the cost).
const MIN_WANT: u64 = 8;
const MAX_WANT: u64 = 1 << 24;

/// The batched mode's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// A grant is at most 1/share of what a policy has left beyond the cost.
    pub(crate) share: u32,
    /// A quota slice left unused this long goes back; a refusal is remembered at most
    /// this long. Microseconds.
    pub(crate) lease_us: u64,
    /// Slices kept at most (beyond them, subjects are checked exactly).
    pub(crate) capacity: usize,
}

/// The local slices of every (subject, policy) this instance holds.
pub(crate) struct Slices {
    pub(crate) config: Batching,
    shards: Box<[Shard]>,
    mask: usize,
    per_shard: usize,
}

#[repr(align(128))]
struct Shard(Mutex<ShardState>);

#[derive(Default)]
struct ShardState {
    map: HashMap<u64, Slice, BuildHasherDefault<Identity>>,
    /// Subjects with a call to Redis in flight, and how to wake those waiting for it.
    inflight: HashMap<u64, Arc<Notify>, BuildHasherDefault<Identity>>,
}

/// The keys are already seeded hashes.
#[derive(Default)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One policy's slice for one subject.
struct Slice {
    subject: u64,
    limit: Limit,
    /// A rate's interval and tolerance (µs), worked out once.
    rate: Rate,
    /// The policy's Redis key (for giving a quota slice back in the background).
    redis_key: Box<str>,
    kind: Kind,
    /// The most to ask for beyond the cost next time.
    want: u64,
    /// The last refusal of this policy, remembered until it could allow.
    refused: Option<Refused>,
    /// Last spent or granted (µs, the layer's clock).
    touched: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    Rate {
        /// This instance's own arrival time inside its segment.
        tat: u64,
        /// The end of the segment.
        end: u64,
        /// A segment granted after this one but not adjoining it: spent once this one
        /// cannot pay.
        next: Option<(u64, u64)>,
        /// The last grant's size (requests): asking again is due when a quarter is left.
        granted: u64,
    },
    Quota {
        /// The calendar window's number.
        window: u64,
        /// Requests of the window held here, not yet spent.
        unspent: u64,
        /// The window's counter in Redis after the last grant (this slice included).
        used: u64,
        /// Until when the unspent requests may be spent (µs); then they go back.
        expires: u64,
        granted: u64,
        /// A span of the window known without calendar arithmetic (Unix ns): from the
        /// last grant to the window's end.
        span: (u64, u64),
    },
}

/// What Redis said when it refused: enough to refuse any cost it would refuse, for a
/// while (the state in Redis only moves against a request until slices go back).
#[derive(Clone, Copy)]
enum Refused {
    /// The rate's arrival time Redis had (µs).
    Rate { tat: u64, until: u64 },
    /// The quota's counter in this window.
    Quota { window: u64, used: u64, until: u64 },
}

impl Refused {
    fn until(self) -> u64 {
        match self {
            Self::Rate { until, .. } | Self::Quota { until, .. } => until,
        }
    }
}

/// One policy's part of the batch script's answer, when every policy allowed.
struct Grant {
    /// Where a rate's slice starts (µs).
    start: u64,
    /// Requests granted, the cost included.
    granted: u64,
    /// What the script reports remaining.
    remaining: u64,
    /// What was to be given back and was not taken.
    kept: Back,
}

/// A policy's numbers in the microseconds the scripts work in.
#[derive(Clone, Copy)]
struct Rate {
    t: u64,
    tau: u64,
}

fn rate_us(requests: u32, per: Duration, burst: u32) -> Rate {
    // As the exact script: the interval rounded up to a whole microsecond.
    let t = gcra::emission_interval(requests, per)
        .div_ceil(1_000)
        .max(1);
    Rate {
        t,
        tau: clamp(u64::from(burst).saturating_mul(t)),
    }
}

/// Products capped at 2^50 µs (35 years), as the exact script's arguments.
pub(crate) fn clamp(v: u64) -> u64 {
    v.min(1 << 50)
}

/// What one request gets without Redis.
pub(crate) enum Local {
    /// Decided here: allowed from the slices (and whether to ask for more in the
    /// background), or refused as Redis refused it a moment ago.
    Decided(Decision, bool),
    /// Redis must be asked.
    Miss,
}

/// The arguments of one policy in a call of the batch script.
pub(crate) enum Ask {
    Rate {
        cost: u32,
        cost_t: u64,
        tau: u64,
        t: u64,
        cap: u64,
        back_end: u64,
        back_tat: u64,
    },
    Quota {
        cost: u32,
        limit: u32,
        tag: String,
        ttl_ms: u64,
        cap: u64,
        back: u64,
    },
}

/// A call to Redis for one subject: taken with [`Slices::begin`], settled with
/// [`Slices::finish`] or dropped (which makes it as if it failed).
pub(crate) struct Ticket<'a> {
    slices: &'a Slices,
    subject: u64,
    /// The slice keys, one per policy.
    keys: Vec<u64>,
    /// What was given back per policy, to restore when Redis refuses (and so wrote
    /// nothing).
    back: Vec<Back>,
    pub(crate) asks: Vec<Ask>,
    cost: u32,
    now_us: u64,
    /// Did this ticket mark the subject in flight?
    marked: bool,
    /// A background call for slices only: no request waits for its decision.
    prefetch: bool,
    /// Answered (else dropped: Redis failed, or the request was cancelled).
    settled: bool,
}

#[derive(Clone, Copy)]
enum Back {
    None,
    Rate {
        end: u64,
        tat: u64,
    },
    Quota {
        window: u64,
        units: u64,
    },
    /// A quota the slice pays itself: `units` taken from it for this request, charged
    /// nothing in Redis, and put back unless every policy allows.
    Paid {
        window: u64,
        units: u64,
    },
}

/// What [`Slices::begin`] says.
pub(crate) enum Begin<'a> {
    /// Ask Redis.
    Go(Ticket<'a>),
    /// Another call for this subject is in flight: wait for it, then look again.
    Wait(tokio::sync::futures::OwnedNotified),
}

impl Slices {
    pub(crate) fn new(config: Batching) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(16, |n| n.get() * 16)
            .next_power_of_two()
            .clamp(16, 1024);
        Self {
            config,
            shards: (0..shards)
                .map(|_| Shard(Mutex::new(ShardState::default())))
                .collect(),
            mask: shards - 1,
            per_shard: config.capacity.div_ceil(shards).max(1),
        }
    }

    fn shard(&self, subject: u64) -> MutexGuard<'_, ShardState> {
        lock(&self.shards[(subject as usize) & self.mask])
    }

    /// How many slices are held.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Decides a request from the slices, when it can.
    pub(crate) fn try_local(
        &self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
    ) -> Local {
        let digest = subject.digest();
        let now_us = now / 1_000;
        let mut shard = self.shard(digest);
        let lease_us = self.config.lease_us;
        if let [policy] = policies {
            // One policy (the usual case): one lookup.
            let limit = policy.limit();
            let Some(slice) = shard
                .map
                .get_mut(&slice_key(digest, policy))
                .filter(|s| s.fits(digest, policy))
            else {
                return Local::Miss;
            };
            if slice.refuses(&limit, cost, now, now_us) {
                let status = slice.status_refused(&limit, cost, now, now_us);
                return Local::Decided(Decision::new([status]), false);
            }
            if !slice.can_pay(&limit, cost, now, now_us) {
                return Local::Miss;
            }
            let (status, low) = slice.spend(&limit, cost, now, now_us, lease_us);
            let more = low && !shard.inflight.contains_key(&digest);
            if more {
                shard.inflight.insert(digest, Arc::new(Notify::new()));
            }
            return Local::Decided(Decision::new([status]), more);
        }
        let mut keys = [0u64; super::policy::RateLimits::MAX];
        let mut refused = false;
        for (i, policy) in policies.iter().enumerate() {
            let key = slice_key(digest, policy);
            keys[i] = key;
            let Some(slice) = shard.map.get(&key).filter(|s| s.fits(digest, policy)) else {
                return Local::Miss;
            };
            if slice.refuses(&policy.limit(), cost, now, now_us) {
                refused = true;
            } else if !refused && !slice.can_pay(&policy.limit(), cost, now, now_us) {
                return Local::Miss;
            }
        }
        let keys = &keys[..policies.len()];
        if refused {
            return Local::Decided(
                Decision::new(policies.iter().zip(keys).map(|(policy, key)| {
                    let slice = &shard.map[key];
                    slice.status_refused(&policy.limit(), cost, now, now_us)
                })),
                false,
            );
        }
        let mut more = false;
        let decision = Decision::new(policies.iter().zip(keys).map(|(policy, key)| {
            let slice = shard.map.get_mut(key).expect("looked up above");
            let (status, low) = slice.spend(&policy.limit(), cost, now, now_us, lease_us);
            more |= low;
            status
        }));
        // Running low: this request's caller asks for more in the background, marked in
        // flight from here so that the requests after it do not ask too.
        let more = more && !shard.inflight.contains_key(&digest);
        if more {
            shard.inflight.insert(digest, Arc::new(Notify::new()));
        }
        Local::Decided(decision, more)
    }

    /// Clears the in-flight mark `try_local` set for a prefetch that will not run.
    pub(crate) fn unmark(&self, subject: Subject<'_>) {
        self.release(subject.digest());
    }

    /// Clears a subject's in-flight mark and wakes whoever waits for it.
    pub(crate) fn release(&self, digest: u64) {
        if let Some(notify) = self.shard(digest).inflight.remove(&digest) {
            notify.notify_waiters();
        }
    }

    /// Starts a call to Redis for a request of `subject`: marks the subject in flight
    /// (unless another call is, when `wait` asks to wait for that one instead) and
    /// takes what the slices still hold, to give it back in the same call.
    pub(crate) fn begin<'a>(
        &'a self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
        wait: bool,
    ) -> Begin<'a> {
        let digest = subject.digest();
        let mut shard = self.shard(digest);
        let marked = match shard.inflight.get(&digest) {
            // Registered under the lock, so that the call's end cannot be missed.
            Some(notify) if wait => return Begin::Wait(notify.clone().notified_owned()),
            Some(_) => false,
            None => {
                shard.inflight.insert(digest, Arc::new(Notify::new()));
                true
            }
        };
        Begin::Go(self.ticket(shard, digest, policies, cost, now, marked, false))
    }

    /// Starts the background call `try_local` asked for (and marked in flight): slices
    /// only (cost 0), giving nothing back.
    pub(crate) fn begin_prefetch<'a>(
        &'a self,
        subject: Subject<'_>,
        policies: &[RateLimitPolicy],
        now: u64,
    ) -> Ticket<'a> {
        let digest = subject.digest();
        let shard = self.shard(digest);
        self.ticket(shard, digest, policies, 0, now, true, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn ticket<'a>(
        &'a self,
        mut shard: MutexGuard<'_, ShardState>,
        digest: u64,
        policies: &[RateLimitPolicy],
        cost: u32,
        now: u64,
        marked: bool,
        prefetch: bool,
    ) -> Ticket<'a> {
        let now_us = now / 1_000;
        let full = shard.map.len() >= self.per_shard;
        let mut ticket = Ticket {
            slices: self,
            subject: digest,
            keys: Vec::with_capacity(policies.len()),
            back: Vec::with_capacity(policies.len()),
            asks: Vec::with_capacity(policies.len()),
            cost,
            now_us,
            marked,
            prefetch,
            settled: false,
        };
        for policy in policies {
            let key = slice_key(digest, policy);
            let limit = policy.limit();
            let slice = shard.map.get_mut(&key).filter(|s| s.fits(digest, policy));
            let want = slice.as_ref().map_or(MIN_WANT, |s| s.want);
            // No room for another slice: this subject is checked exactly.
            let cap = if full && slice.is_none() { 0 } else { want };
            let mut back = Back::None;
            if let Some(slice) = slice
                && !prefetch
            {
                back = match slice.pay_quota(&limit, cost, now, now_us) {
                    // Its own slice pays this quota: nothing of it goes back, so that a
                    // lost answer loses nothing of it either.
                    Some(window) => Back::Paid {
                        window,
                        units: u64::from(cost),
                    },
                    None => slice.take_back(&limit, now),
                };
            }
            ticket.keys.push(key);
            ticket.back.push(back);
            let ask = match back {
                Back::Paid { .. } => ask(&limit, 0, 0, Back::None, now),
                _ => ask(&limit, cost, cap, back, now),
            };
            ticket.asks.push(ask);
        }
        ticket
    }

    /// Applies Redis's answer to a ticket: the request's decision (`None` for a
    /// prefetch, or when the answer does not fit the call).
    pub(crate) fn finish(
        &self,
        mut ticket: Ticket<'_>,
        policies: &[RateLimitPolicy],
        redis_keys: impl Fn(&RateLimitPolicy) -> String,
        reply: &[i64],
    ) -> Option<Decision> {
        if reply.len() != 7 * policies.len() {
            return None;
        }
        ticket.settled = true;
        let (cost, now_us) = (ticket.cost, ticket.now_us);
        let now = now_us * 1_000;
        let all = reply.chunks_exact(7).all(|r| r[0] == 1);
        let mut shard = self.shard(ticket.subject);
        let full = shard.map.len() >= self.per_shard;
        let us = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut statuses = Vec::with_capacity(policies.len());
        for (i, (policy, r)) in policies.iter().zip(reply.chunks_exact(7)).enumerate() {
            let key = ticket.keys[i];
            let limit = policy.limit();
            let allowed = r[0] == 1;
            let remaining = us(r[1]);
            let status = match limit {
                Limit::Rate { .. } => PolicyStatus {
                    allowed,
                    remaining,
                    reset: Duration::from_micros(us(r[2])),
                    retry_after: if allowed {
                        Duration::ZERO
                    } else {
                        Duration::from_micros(us(r[3]).max(1))
                    },
                },
                Limit::Quota { window, .. } => {
                    let reset = Duration::from_nanos(gcra::calendar_window(window, now).1 - now);
                    PolicyStatus {
                        allowed,
                        remaining,
                        reset,
                        retry_after: if allowed {
                            Duration::ZERO
                        } else {
                            reset.max(Duration::from_nanos(1))
                        },
                    }
                }
            };
            if let Back::Paid { .. } = ticket.back[i] {
                // Its own slice paid this quota: kept spent if every policy allowed, put
                // back otherwise; its status is the slice's.
                let status = match shard.map.get_mut(&key) {
                    Some(slice) => {
                        slice.touched = now_us;
                        if !all {
                            slice.restore(ticket.back[i]);
                        }
                        slice.quota_status(&limit, now)
                    }
                    // Never forgotten while in flight; should it be, a bare status.
                    None => PolicyStatus {
                        allowed: true,
                        ..PolicyStatus::default()
                    },
                };
                statuses.push(status);
                continue;
            }
            if !ticket.prefetch {
                statuses.push(status);
            }
            let exists = shard
                .map
                .get(&key)
                .is_some_and(|s| s.fits(ticket.subject, policy));
            if !exists {
                shard.map.remove(&key);
                // Only a grant beyond the cost (or a refusal to remember) needs a slice.
                let extra = us(r[5]) > u64::from(cost);
                if full || !(all && extra || !all && cost > 0) {
                    continue;
                }
                shard.map.insert(
                    key,
                    Slice::new(ticket.subject, limit, redis_keys(policy), now_us),
                );
            }
            let slice = shard.map.get_mut(&key).expect("present");
            slice.touched = now_us;
            if all {
                slice.refused = None;
                // Not taken back (another instance took budget after it): it is still
                // this instance's to spend.
                let kept = if r[6] == 1 {
                    Back::None
                } else {
                    ticket.back[i]
                };
                let grant = Grant {
                    start: us(r[4]),
                    granted: us(r[5]),
                    remaining,
                    kept,
                };
                slice.grant(&limit, cost, grant, now, now_us, self.config.lease_us);
            } else {
                slice.restore(ticket.back[i]);
                if allowed {
                    // This policy allowed: a refusal it remembers is over.
                    slice.refused = None;
                } else if cost > 0 {
                    let until = now_us.saturating_add(self.config.lease_us);
                    slice.refused = Some(match limit {
                        Limit::Rate { .. } => Refused::Rate {
                            tat: us(r[4]),
                            until,
                        },
                        Limit::Quota { requests, window } => Refused::Quota {
                            window: gcra::calendar_window(window, now).0,
                            used: u64::from(requests).saturating_sub(remaining),
                            until,
                        },
                    });
                }
            }
        }
        drop(shard);
        ticket.release();
        (!ticket.prefetch).then(|| Decision::new(statuses))
    }

    /// Takes the unspent requests of the quota slices left unused for the lease, for the
    /// caller to give back, and forgets the slices that hold nothing.
    ///
    /// The subjects given back are marked in flight, as for a call of their own, so that
    /// their requests wait for the give-back rather than read Redis before it lands:
    /// [`release`](Self::release) each once its call is over.
    pub(crate) fn sweep(&self, now: u64) -> Vec<Giveback> {
        let now_us = now / 1_000;
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let ShardState { map, inflight } = &mut *shard;
            let from = out.len();
            map.retain(|_, slice| {
                inflight.contains_key(&slice.subject)
                    || slice.sweep(now_us, self.config.lease_us, &mut out)
            });
            for back in &out[from..] {
                inflight
                    .entry(back.subject)
                    .or_insert_with(|| Arc::new(Notify::new()));
            }
        }
        out
    }
}

/// A quota slice's unspent requests, to give back to Redis.
pub(crate) struct Giveback {
    pub(crate) subject: u64,
    pub(crate) redis_key: Box<str>,
    pub(crate) limit: Limit,
    pub(crate) window: u64,
    pub(crate) units: u64,
}

impl Ticket<'_> {
    /// Clears the in-flight mark and wakes whoever waits for it.
    fn release(&mut self) {
        if !self.marked {
            return;
        }
        self.marked = false;
        let notify = self
            .slices
            .shard(self.subject)
            .inflight
            .remove(&self.subject);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Unsettled (Redis failed, or the request was cancelled): whether the script ran
        // is unknown, so what was given back stays given back. What a slice paid for the
        // request never left it, and goes back to it.
        if !self.settled && self.back.iter().any(|b| matches!(b, Back::Paid { .. })) {
            let mut shard = self.slices.shard(self.subject);
            for (key, back) in self.keys.iter().zip(&self.back) {
                if let (Back::Paid { .. }, Some(slice)) = (back, shard.map.get_mut(key)) {
                    slice.restore(*back);
                }
            }
        }
        self.release();
    }
}

impl Slice {
    fn new(subject: u64, limit: Limit, redis_key: String, now_us: u64) -> Self {
        let kind = match limit {
            Limit::Rate { .. } => Kind::Rate {
                tat: 0,
                end: 0,
                next: None,
                granted: 0,
            },
            Limit::Quota { .. } => Kind::Quota {
                window: u64::MAX,
                unspent: 0,
                used: 0,
                expires: 0,
                granted: 0,
                span: (0, 0),
            },
        };
        let rate = match limit {
            Limit::Rate {
                requests,
                per,
                burst,
            } => rate_us(requests, per, burst),
            Limit::Quota { .. } => Rate { t: 1, tau: 0 },
        };
        Self {
            subject,
            limit,
            rate,
            redis_key: redis_key.into(),
            kind,
            want: MIN_WANT,
            refused: None,
            touched: now_us,
        }
    }

    /// Is this the slice of this subject's policy (not a hash collision, nor the same
    /// name with other numbers)?
    fn fits(&self, subject: u64, policy: &RateLimitPolicy) -> bool {
        self.subject == subject && self.limit == policy.limit()
    }

    /// Does the refusal Redis gave a moment ago refuse this request too?
    fn refuses(&self, limit: &Limit, cost: u32, now: u64, now_us: u64) -> bool {
        match (self.refused, *limit) {
            (Some(Refused::Rate { tat, until }), Limit::Rate { .. }) => {
                let rate = self.rate;
                let need = clamp(u64::from(cost).saturating_mul(rate.t));
                now_us < until && tat.max(now_us).saturating_add(need) > now_us + rate.tau
            }
            (
                Some(Refused::Quota {
                    window,
                    used,
                    until,
                }),
                Limit::Quota {
                    requests,
                    window: w,
                },
            ) => {
                now_us < until
                    && window == gcra::calendar_window(w, now).0
                    && used + u64::from(cost) > u64::from(requests)
            }
            _ => false,
        }
    }

    fn can_pay(&self, limit: &Limit, cost: u32, now: u64, now_us: u64) -> bool {
        match (self.kind, *limit) {
            (Kind::Rate { tat, end, next, .. }, Limit::Rate { .. }) => {
                let rate = self.rate;
                let need = clamp(u64::from(cost).saturating_mul(rate.t));
                tat.max(now_us).saturating_add(need) <= end
                    || next
                        .is_some_and(|(start, end)| start.max(now_us).saturating_add(need) <= end)
            }
            (
                Kind::Quota {
                    window,
                    unspent,
                    expires,
                    span,
                    ..
                },
                Limit::Quota { window: w, .. },
            ) => {
                (span.0 <= now && now < span.1 || window == gcra::calendar_window(w, now).0)
                    && now_us < expires
                    && unspent >= u64::from(cost)
            }
            _ => false,
        }
    }

    /// Spends `cost` (which `can_pay` said it can): the policy's status, and whether
    /// the slice runs low.
    fn spend(
        &mut self,
        limit: &Limit,
        cost: u32,
        now: u64,
        now_us: u64,
        lease_us: u64,
    ) -> (PolicyStatus, bool) {
        self.touched = now_us;
        match (&mut self.kind, *limit) {
            (
                Kind::Rate {
                    tat,
                    end,
                    next,
                    granted,
                },
                Limit::Rate { .. },
            ) => {
                let rate = self.rate;
                let need = clamp(u64::from(cost).saturating_mul(rate.t));
                if (*tat).max(now_us).saturating_add(need) > *end
                    && let Some((start, e)) = next.take()
                {
                    // This segment cannot pay: go on with the next one.
                    *tat = start;
                    *end = e;
                }
                *tat = (*tat).max(now_us).saturating_add(need);
                let limit_at = now_us.saturating_add(rate.tau);
                let status = PolicyStatus {
                    allowed: true,
                    remaining: limit_at.saturating_sub(*tat) / rate.t,
                    reset: Duration::from_micros(*tat - now_us),
                    retry_after: Duration::ZERO,
                };
                let left = end.saturating_sub((*tat).max(now_us)) / rate.t;
                let low = next.is_none() && *granted > u64::from(cost) && left * 4 < *granted;
                (status, low)
            }
            (
                Kind::Quota {
                    unspent,
                    used,
                    granted,
                    expires,
                    span,
                    ..
                },
                Limit::Quota { requests, window },
            ) => {
                *unspent -= u64::from(cost);
                // The lease runs from the last use: a slice in use does not go back.
                *expires = now_us.saturating_add(lease_us);
                let end = if span.0 <= now && now < span.1 {
                    span.1
                } else {
                    gcra::calendar_window(window, now).1
                };
                let reset = Duration::from_nanos(end - now);
                let status = PolicyStatus {
                    allowed: true,
                    remaining: (u64::from(requests) + *unspent).saturating_sub(*used),
                    reset,
                    retry_after: Duration::ZERO,
                };
                let low = *granted > u64::from(cost) && *unspent * 4 < *granted;
                (status, low)
            }
            _ => unreachable!("fits() checked the kind"),
        }
    }

    /// The status of a policy in a request some policy's remembered refusal refuses.
    fn status_refused(&self, limit: &Limit, cost: u32, now: u64, now_us: u64) -> PolicyStatus {
        if self.refuses(limit, cost, now, now_us) {
            return match (self.refused, *limit) {
                (Some(Refused::Rate { tat, .. }), Limit::Rate { .. }) => {
                    let rate = self.rate;
                    let need = clamp(u64::from(cost).saturating_mul(rate.t));
                    let from = tat.max(now_us);
                    let limit_at = now_us.saturating_add(rate.tau);
                    PolicyStatus {
                        allowed: false,
                        remaining: limit_at.saturating_sub(from) / rate.t,
                        reset: Duration::from_micros(from - now_us),
                        retry_after: Duration::from_micros(
                            (from.saturating_add(need) - limit_at).max(1),
                        ),
                    }
                }
                (Some(Refused::Quota { used, .. }), Limit::Quota { requests, window }) => {
                    let end = gcra::calendar_window(window, now).1;
                    let reset = Duration::from_nanos(end - now);
                    PolicyStatus {
                        allowed: false,
                        remaining: u64::from(requests).saturating_sub(used),
                        reset,
                        retry_after: reset.max(Duration::from_nanos(1)),
                    }
                }
                _ => PolicyStatus::default(),
            };
        }
        // This policy would allow: what it has, uncharged.
        match (self.kind, *limit) {
            (Kind::Rate { tat, .. }, Limit::Rate { .. }) => {
                let rate = self.rate;
                let from = tat.max(now_us);
                PolicyStatus {
                    allowed: true,
                    remaining: now_us.saturating_add(rate.tau).saturating_sub(from) / rate.t,
                    reset: Duration::from_micros(from - now_us),
                    retry_after: Duration::ZERO,
                }
            }
            (Kind::Quota { .. }, Limit::Quota { .. }) => self.quota_status(limit, now),
            _ => PolicyStatus::default(),
        }
    }

    /// Pays `cost` of a quota from this slice for a request that goes to Redis for its
    /// other policies: the window paid in, or `None` (not a quota, or it cannot pay).
    fn pay_quota(&mut self, limit: &Limit, cost: u32, now: u64, now_us: u64) -> Option<u64> {
        if !matches!(limit, Limit::Quota { .. })
            || self.refuses(limit, cost, now, now_us)
            || !self.can_pay(limit, cost, now, now_us)
        {
            return None;
        }
        match &mut self.kind {
            Kind::Quota {
                window, unspent, ..
            } => {
                *unspent -= u64::from(cost);
                Some(*window)
            }
            Kind::Rate { .. } => None,
        }
    }

    /// A quota's status from the slice: what it has left, counting its own unspent
    /// requests as remaining.
    fn quota_status(&self, limit: &Limit, now: u64) -> PolicyStatus {
        match (self.kind, *limit) {
            (
                Kind::Quota {
                    unspent,
                    used,
                    window: held,
                    ..
                },
                Limit::Quota { requests, window },
            ) => {
                let (number, end) = gcra::calendar_window(window, now);
                let remaining = if held == number {
                    (u64::from(requests) + unspent).saturating_sub(used)
                } else {
                    u64::from(requests)
                };
                PolicyStatus {
                    allowed: true,
                    remaining,
                    reset: Duration::from_nanos(end - now),
                    retry_after: Duration::ZERO,
                }
            }
            _ => PolicyStatus::default(),
        }
    }

    /// Takes what the slice holds, to give it back in a call: the slice holds nothing
    /// until the answer comes.
    fn take_back(&mut self, limit: &Limit, now: u64) -> Back {
        match (&mut self.kind, *limit) {
            (Kind::Rate { tat, end, next, .. }, _) => {
                // A next segment does not adjoin this one: it is given back instead
                // (this one is then no longer the tail).
                let (t, e) = match next.take() {
                    Some((start, e)) => (start, e),
                    None => (*tat, *end),
                };
                *tat = e;
                *end = e;
                if e == 0 {
                    Back::None
                } else {
                    Back::Rate { end: e, tat: t }
                }
            }
            (
                Kind::Quota {
                    window, unspent, ..
                },
                Limit::Quota { window: w, .. },
            ) => {
                let units = std::mem::take(unspent);
                if units == 0 || *window != gcra::calendar_window(w, now).0 {
                    Back::None
                } else {
                    Back::Quota {
                        window: *window,
                        units,
                    }
                }
            }
            _ => Back::None,
        }
    }

    /// Puts back what a refused call (which wrote nothing) was to give back.
    fn restore(&mut self, back: Back) {
        match (&mut self.kind, back) {
            (Kind::Rate { tat, end, next, .. }, Back::Rate { end: e, tat: t })
                if *end == e && *tat == e && next.is_none() =>
            {
                *tat = t;
            }
            (
                Kind::Quota {
                    window, unspent, ..
                },
                Back::Quota { window: w, units } | Back::Paid { window: w, units },
            ) if *window == w => {
                *unspent += units;
            }
            _ => {}
        }
    }

    /// Takes a grant, `cost` of which the request that asked spends.
    fn grant(
        &mut self,
        limit: &Limit,
        cost: u32,
        grant: Grant,
        now: u64,
        now_us: u64,
        lease_us: u64,
    ) {
        let Grant {
            start,
            granted,
            remaining,
            kept,
        } = grant;
        let extra = granted.saturating_sub(u64::from(cost));
        // A slice spent down to its last quarter asks for twice as much next time.
        self.want = if extra >= self.want {
            (self.want * 2).min(MAX_WANT)
        } else {
            self.want
        };
        match (&mut self.kind, *limit) {
            (
                Kind::Rate {
                    tat,
                    end,
                    next,
                    granted: g,
                },
                Limit::Rate { .. },
            ) => {
                let rate = self.rate;
                let seg_end = start.saturating_add(clamp(granted.saturating_mul(rate.t)));
                let spent = start.saturating_add(clamp(u64::from(cost).saturating_mul(rate.t)));
                *g = granted;
                if let Back::Rate { end: e, tat: t } = kept
                    && *end == e
                    && *tat == e
                {
                    // What this instance held was not taken back: it is still its own,
                    // spent before the grant.
                    *tat = t;
                }
                // The request's own cost is the grant's start; the rest is added to
                // what the slice holds (another call's grant may have come first).
                if spent >= seg_end {
                    // Nothing beyond the cost.
                } else if (*tat).max(now_us) >= *end {
                    *tat = spent;
                    *end = seg_end;
                } else if spent == *end {
                    *end = seg_end;
                } else {
                    match next {
                        None => *next = Some((spent, seg_end)),
                        Some((_, e)) if *e == spent => *e = seg_end,
                        // A third segment: rare (two calls in flight at once); its
                        // budget passes unspent, which is never more than allowed.
                        Some(_) => {}
                    }
                }
            }
            (
                Kind::Quota {
                    window,
                    unspent,
                    used,
                    expires,
                    granted: g,
                    span,
                },
                Limit::Quota {
                    requests,
                    window: w,
                },
            ) => {
                let (number, window_end) = gcra::calendar_window(w, now);
                *span = (now, window_end);
                // What the slice holds now came from other calls' grants since this
                // one took its unspent requests back: kept, unless of another window.
                if *window != number {
                    *unspent = 0;
                }
                *window = number;
                *unspent += extra;
                // The script's remaining is the limit less the counter after the grant,
                // plus the grant beyond the cost (which this instance will spend).
                *used = (u64::from(requests) + extra).saturating_sub(remaining);
                *expires = now_us.saturating_add(lease_us);
                *g = granted;
            }
            _ => {}
        }
    }

    /// Keeps the slice (`true`) or forgets it; takes a quota slice's unspent requests
    /// once it has been left unused for the lease.
    fn sweep(&mut self, now_us: u64, lease_us: u64, out: &mut Vec<Giveback>) -> bool {
        let refusing = self.refused.is_some_and(|r| now_us < r.until());
        match &mut self.kind {
            Kind::Rate { tat, end, next, .. } => {
                refusing || (*end).max(*tat) > now_us || next.is_some_and(|(_, e)| e > now_us)
            }
            Kind::Quota {
                window,
                unspent,
                used,
                expires,
                ..
            } => {
                if *unspent > 0 && now_us >= *expires {
                    // Counted as spent no more (the header's estimate).
                    *used = used.saturating_sub(*unspent);
                    out.push(Giveback {
                        subject: self.subject,
                        redis_key: self.redis_key.clone(),
                        limit: self.limit,
                        window: *window,
                        units: std::mem::take(unspent),
                    });
                    self.want = (self.want / 2).max(MIN_WANT);
                }
                refusing || *unspent > 0 || now_us < self.touched.saturating_add(lease_us)
            }
        }
    }
}

/// The script arguments of one policy.
fn ask(limit: &Limit, cost: u32, cap: u64, back: Back, now: u64) -> Ask {
    match *limit {
        Limit::Rate {
            requests,
            per,
            burst,
        } => {
            let rate = rate_us(requests, per, burst);
            let (back_end, back_tat) = match back {
                Back::Rate { end, tat } => (end, tat),
                _ => (0, 0),
            };
            Ask::Rate {
                cost,
                cost_t: clamp(u64::from(cost).saturating_mul(rate.t)),
                tau: rate.tau,
                t: rate.t,
                cap,
                back_end,
                back_tat,
            }
        }
        Limit::Quota { requests, window } => {
            let (number, end) = gcra::calendar_window(window, now);
            let back = match back {
                Back::Quota { units, .. } => units,
                _ => 0,
            };
            Ask::Quota {
                cost,
                limit: requests,
                tag: quota_tag(window, number),
                ttl_ms: (end - now).div_ceil(1_000_000),
                cap,
                back,
            }
        }
    }
}

/// The script arguments that give `units` of a quota's `window` back (and grant
/// nothing); `None` once the window is over (its counter expires by itself).
pub(crate) fn give_back_ask(limit: &Limit, window: u64, units: u64, now: u64) -> Option<Ask> {
    let Limit::Quota {
        requests,
        window: w,
    } = *limit
    else {
        return None;
    };
    let (number, end) = gcra::calendar_window(w, now);
    (number == window).then(|| Ask::Quota {
        cost: 0,
        limit: requests,
        tag: quota_tag(w, number),
        ttl_ms: (end - now).div_ceil(1_000_000),
        cap: 0,
        back: units,
    })
}

/// The window tag both scripts keep a quota's counter under.
pub(crate) fn quota_tag(window: QuotaWindow, number: u64) -> String {
    match window {
        QuotaWindow::Day => format!("d{number}"),
        QuotaWindow::Month => format!("m{number}"),
    }
}

/// The key of one (subject, policy) slice: the subject's hash folded with the policy's
/// name and numbers.
fn slice_key(subject: u64, policy: &RateLimitPolicy) -> u64 {
    let numbers = match policy.limit() {
        Limit::Rate {
            requests,
            per,
            burst,
        } => mum(
            u64::from(requests) ^ (u64::from(burst) << 32),
            u64::try_from(per.as_nanos()).unwrap_or(u64::MAX) ^ GOLDEN,
        ),
        Limit::Quota { requests, window } => mum(
            u64::from(requests),
            GOLDEN ^ (window == QuotaWindow::Month) as u64,
        ),
    };
    mum(subject ^ policy.name_hash(), GOLDEN ^ numbers) ^ subject
}

fn lock(shard: &Shard) -> MutexGuard<'_, ShardState> {
    // The maps hold plain numbers; a panic elsewhere cannot leave them inconsistent.
    shard.0.lock().unwrap_or_else(|e| e.into_inner())
}
