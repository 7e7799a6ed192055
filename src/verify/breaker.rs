//! The circuit breaker in front of the session store.
//!
//! - **closed**: calls go to the store; `FAILURES_TO_OPEN` consecutive
//!   unavailability errors (timeouts, connection errors) open it;
//! - **open**: no call waits on the store; a background probe (the store's
//!   `health()`) runs every `PROBE_EVERY` and, on success, half-opens it;
//! - **half-open**: calls go to the store again; the first success closes
//!   it, the first failure opens it again.
//!
//! Lock-free: one atomic state and one atomic counter; `allow()` is a load.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How often an open breaker probes the store.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// No call waits on the store.
    Open,
    /// Calls go to the store on trial.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// As text for logs and metrics: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// As a number for metrics: 0 closed, 1 open, 2 half-open.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The breaker.
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// How many times it opened (metrics).
    opened: AtomicU64,
}

// Closed = 0, Open = 1, HalfOpen = 2 (BreakerState's discriminants).
impl Breaker {
    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether a call may go to the store now.
    pub fn allow(&self) -> bool {
        self.state() != BreakerState::Open
    }

    /// How many times it has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A store call succeeded. Returns the transition, if any.
    pub fn success(&self) -> Option<(BreakerState, BreakerState)> {
        self.failures.store(0, Ordering::Release);
        self.transition(BreakerState::HalfOpen, BreakerState::Closed)
    }

    /// A store call failed with unavailability. Returns the transition, if any.
    pub fn failure(&self) -> Option<(BreakerState, BreakerState)> {
        match self.state() {
            BreakerState::HalfOpen => self.open_from(BreakerState::HalfOpen),
            BreakerState::Closed => {
                if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= FAILURES_TO_OPEN {
                    self.open_from(BreakerState::Closed)
                } else {
                    None
                }
            }
            BreakerState::Open => None,
        }
    }

    /// The background probe reached the store.
    pub fn probe_succeeded(&self) -> Option<(BreakerState, BreakerState)> {
        self.transition(BreakerState::Open, BreakerState::HalfOpen)
    }

    fn open_from(&self, from: BreakerState) -> Option<(BreakerState, BreakerState)> {
        let t = self.transition(from, BreakerState::Open);
        if t.is_some() {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        t
    }

    fn transition(&self, from: BreakerState, to: BreakerState) -> Option<(BreakerState, BreakerState)> {
        self.state
            .compare_exchange(from.as_u8(), to.as_u8(), Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| (from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_through_half_open() {
        let b = Breaker::default();
        assert!(b.allow());
        assert_eq!(b.failure(), None);
        assert_eq!(b.success(), None, "a success resets the count");
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), Some((BreakerState::Closed, BreakerState::Open)));
        assert!(!b.allow());
        assert_eq!(b.success(), None, "a late success does not close an open breaker");
        assert_eq!(b.probe_succeeded(), Some((BreakerState::Open, BreakerState::HalfOpen)));
        assert!(b.allow());
        assert_eq!(
            b.failure(),
            Some((BreakerState::HalfOpen, BreakerState::Open)),
            "one failure reopens"
        );
        b.probe_succeeded();
        assert_eq!(b.success(), Some((BreakerState::HalfOpen, BreakerState::Closed)));
        assert_eq!(b.times_opened(), 2);
    }
}
