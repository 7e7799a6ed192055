//! Verification metrics: counts per path and outcome, latency histograms
//! per path, breaker transitions. Plain atomics, no locks; the HTTP layer
//! renders them in Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Path, Reject};

pub use crate::metrics::{BUCKETS_US, Counter, Histogram};

/// Every counter the verifier keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Accepted, per path: short, long, fallback.
    pub accepted: [Counter; 3],
    /// Latency per path: short, long, fallback.
    pub latency: [Histogram; 3],
    /// Rejected, per [`REJECT_LABELS`].
    pub rejected: [AtomicU64; REJECT_LABELS.len()],
    /// Store calls that failed as unavailable (timeouts, connection errors).
    pub store_unavailable: AtomicU64,
    /// Breaker transitions to open, half-open, closed.
    pub breaker_transitions: [AtomicU64; 3],
    /// Long tokens rotated to a successor.
    pub rotations: AtomicU64,
    /// Revocations applied to the revoked cache.
    pub revocations_applied: AtomicU64,
    /// Logouts and kicks kept in the outbox while the store was
    /// unreachable.
    pub revocations_deferred: AtomicU64,
    /// Long verifies answered by another request's store call of the same
    /// session (single flight).
    pub store_verifies_shared: AtomicU64,
    /// Long verifies that waited for another request's store call, got no
    /// answer (that request was cancelled or stalled) and asked the store
    /// themselves.
    pub store_verifies_unshared: AtomicU64,
}

/// Index of a path in the per-path arrays.
pub fn path_index(p: Path) -> usize {
    match p {
        Path::Short => 0,
        Path::Long => 1,
        Path::Fallback => 2,
    }
}

/// Index of a rejection in `rejected`.
pub fn reject_index(r: &Reject) -> usize {
    match r {
        Reject::Missing => 0,
        Reject::Invalid(_) => 1,
        Reject::Expired => 2,
        Reject::Revoked => 3,
        Reject::Unavailable(_) => 4,
        Reject::Internal => 5,
        Reject::UnknownSession => 6,
        Reject::ReauthRequired => 7,
        Reject::ProofRequired => 8,
    }
}

/// Labels matching `rejected`'s indexes.
pub const REJECT_LABELS: [&str; 9] = [
    "missing",
    "invalid",
    "expired",
    "revoked",
    "unavailable",
    "internal",
    "unknown_session",
    "reauth_required",
    "proof_required",
];
/// Labels matching the per-path indexes.
pub const PATH_LABELS: [&str; 3] = ["short", "long", "fallback"];

impl Metrics {
    /// Counts an accepted request and its latency.
    pub fn accepted(&self, p: Path, took: Duration) {
        let i = path_index(p);
        self.accepted[i].inc();
        self.latency[i].observe(took);
    }

    /// Counts a rejection.
    pub fn rejected(&self, r: &Reject) {
        self.rejected[reject_index(r)].fetch_add(1, Ordering::Relaxed);
    }
}
