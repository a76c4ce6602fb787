//! Names unique across the tests of a run: within a process by a counter (tests run in
//! parallel and may read the same clock value), across processes by the pid and the time.

/// A unique lower-case name: pid, a counter and the time.
pub(crate) fn unique_name(label: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tak_{label}_{}_{n}_{nanos}", std::process::id())
}
