//! The latency histogram every layer records into (store calls, verifies,
//! HTTP routes) and the counters of the hot path: fixed buckets, plain
//! atomics, no locks. It sits below `store` and `verify` so that both can
//! own histograms without one importing the other; `http` renders them in
//! Prometheus text format.
//!
//! Hot values are striped: each thread adds to its own copy (its own cache
//! lines), readers add the copies up. Without that, every request on one
//! core took the counters' cache lines away from the other core.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How many copies a striped value has. Threads take stripes in turn, so
/// up to this many threads never share one.
const STRIPES: usize = 8;

/// This thread's stripe.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// One stripe, alone on its cache lines (128 bytes: adjacent-line
/// prefetchers fetch lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A value of which each thread updates its own copy ([`Striped::local`])
/// and readers see all copies ([`Striped::each`]).
#[derive(Debug)]
pub struct Striped<T> {
    stripes: [Padded<T>; STRIPES],
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped {
            stripes: std::array::from_fn(|_| Padded::default()),
        }
    }
}

impl<T> Striped<T> {
    /// The calling thread's copy, to update.
    pub fn local(&self) -> &T {
        &self.stripes[stripe()].0
    }

    /// Every copy, to add up.
    pub fn each(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|p| &p.0)
    }
}

/// A striped counter.
#[derive(Debug, Default)]
pub struct Counter(Striped<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.local().fetch_add(1, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.0.each().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket
/// is +Inf).
pub const BUCKETS_US: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// One stripe of a histogram.
#[derive(Debug, Default)]
struct Cells {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A latency histogram with fixed buckets (striped).
#[derive(Debug, Default)]
pub struct Histogram(Striped<Cells>);

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        let c = self.0.local();
        c.counts[i].fetch_add(1, Ordering::Relaxed);
        if us > 0 {
            c.sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    /// Non-cumulative bucket counts (the last is +Inf) and the sum in µs.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut counts = vec![0; BUCKETS_US.len() + 1];
        let mut sum = 0;
        for c in self.0.each() {
            for (total, n) in counts.iter_mut().zip(&c.counts) {
                *total += n.load(Ordering::Relaxed);
            }
            sum += c.sum_us.load(Ordering::Relaxed);
        }
        (counts, sum)
    }
}
