//! Helpers shared by the benchmarks.
#![allow(dead_code)] // each benchmark uses part of it

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::BatchSize;
use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use http::{HeaderValue, Request, Response};
use tower::{Service, ServiceExt};

/// A fixed pseudo-random permutation of 0..n (xorshift, Fisher-Yates).
pub(crate) fn scattered(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// `(header, value)` for each of `values` in `order`, round and round: the requests
/// of a run over many keys.
pub(crate) fn cycling<'a>(
    header: &'static str,
    values: &'a [String],
    order: &'a [usize],
) -> impl FnMut() -> (&'static str, String) + 'a {
    let mut i = 0;
    move || {
        i = (i + 1) % order.len();
        (header, values[order[i]].clone())
    }
}

/// What a benchmarked response must be.
#[derive(Clone, Copy)]
pub(crate) enum Expect {
    /// 2xx: the request got through.
    Success,
    /// Anything (a refusal is what is measured).
    Any,
}

/// `GET /` carrying one header, freshly copied as a server would hand it over.
fn request((header, value): (&'static str, String)) -> Request<Body> {
    let mut req = Request::get("/").body(Body::empty()).unwrap();
    req.headers_mut()
        .insert(header, HeaderValue::from_str(&value).unwrap());
    req
}

/// Times `oneshot` through a clone of `service` of a request carrying the header that
/// `next` names. The request is built in setup, its header freshly copied as a server
/// would hand it over, in small batches so that prepared requests are still in cache.
pub(crate) fn run<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    service: &S,
    expect: Expect,
    next: &mut dyn FnMut() -> (&'static str, String),
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    g.bench_function(name, |b| {
        b.to_async(rt).iter_batched(
            || request(next()),
            |req| {
                let service = service.clone();
                async move {
                    let res = service.oneshot(req).await.unwrap();
                    if let Expect::Success = expect {
                        assert!(res.status().is_success(), "{name}: {}", res.status());
                    }
                    black_box(res.status())
                }
            },
            BatchSize::NumIterations(64),
        )
    });
}

/// Which way a paired difference is taken.
#[derive(Clone, Copy)]
pub(crate) enum Diff {
    /// What the layer adds over bare (clamped at zero).
    LayerMinusBare,
    /// What the layer saves against bare (clamped at zero): for refusals, which may be
    /// cheaper than serving.
    BareMinusLayer,
}

/// The difference between `service` and `bare`, timed in alternating blocks of 64
/// requests within each sample, so that the machine's drift between benchmarks does not
/// enter it. Criterion reports the difference per request as the time (at least 1 ns).
pub(crate) fn run_paired<S, B>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    bare: &B,
    service: &S,
    diff: Diff,
    next: &mut dyn FnMut() -> (&'static str, String),
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
    B: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let mut make = |n: u64| -> Vec<Request<Body>> { (0..n).map(|_| request(next())).collect() };
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (bare_time, layer_time) =
                rt.block_on(alternate(bare, service, iters, &mut make, Expect::Any));
            let difference = match diff {
                Diff::LayerMinusBare => layer_time.saturating_sub(bare_time),
                Diff::BareMinusLayer => bare_time.saturating_sub(layer_time),
            };
            at_least_1ns_a_request(difference, iters)
        })
    });
}

/// What `service` adds over `bare` when two threads send requests at once, each with a
/// runtime of its own, in alternating blocks as `run_paired` does: per request and
/// thread (the mean of the two threads). What one core's requests cost the other's
/// shows here: cache lines that every request writes travel between the cores.
pub(crate) fn run_two_threads_paired<S, B>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    bare: &B,
    service: &S,
    header: (&'static str, String),
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Sync,
    B: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Sync,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let differences = on_two_threads(|rt| {
                let mut make = |n: u64| -> Vec<Request<Body>> {
                    (0..n).map(|_| request(header.clone())).collect()
                };
                let (bare_time, layer_time) =
                    rt.block_on(alternate(bare, service, iters, &mut make, Expect::Success));
                layer_time.saturating_sub(bare_time)
            });
            at_least_1ns_a_request(differences.iter().sum::<Duration>() / 2, iters)
        })
    });
}

/// `iters` requests through `bare` and through `service`, alternating in blocks of 64
/// that `make` builds before each is timed; the time spent in each.
async fn alternate<S, B>(
    bare: &B,
    service: &S,
    iters: u64,
    make: &mut dyn FnMut(u64) -> Vec<Request<Body>>,
    expect: Expect,
) -> (Duration, Duration)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
    B: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let (mut bare_time, mut layer_time) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(64);
        let (for_bare, for_layer) = (make(n), make(n));
        let started = Instant::now();
        for req in for_bare {
            black_box(bare.clone().oneshot(req).await.unwrap().status());
        }
        bare_time += started.elapsed();
        let started = Instant::now();
        for req in for_layer {
            let status = service.clone().oneshot(req).await.unwrap().status();
            if let Expect::Success = expect {
                assert!(status.is_success(), "{status}");
            }
            black_box(status);
        }
        layer_time += started.elapsed();
        done += n;
    }
    (bare_time, layer_time)
}

/// A sample the machine disturbed can come out below zero; criterion refuses a zero
/// time, so such a sample counts as 1 ns a request (a low outlier).
fn at_least_1ns_a_request(difference: Duration, iters: u64) -> Duration {
    difference.max(Duration::from_nanos(iters))
}

/// `f` on two threads at once, each given a current-thread runtime of its own made
/// before they start together; what each returned.
pub(crate) fn on_two_threads<T: Send>(f: impl Fn(&tokio::runtime::Runtime) -> T + Sync) -> Vec<T> {
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    start.wait();
                    f(&rt)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}
