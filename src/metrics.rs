//! The latency histogram every layer records into (store calls, verifies,
//! HTTP routes): fixed buckets, plain atomics, no locks. It sits below
//! `store` and `verify` so that both can own histograms without one
//! importing the other; `http` renders them in Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (the last bucket
/// is +Inf).
pub const BUCKETS_US: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Non-cumulative bucket counts (the last is +Inf) and the sum in µs.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        (
            self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}
