//! Failed-login throttling, per user name and per client address: after
//! too many failures within a window, logins are refused with 429 and a
//! `Retry-After` until the window ends. Unknown names are throttled like
//! known ones (no enumeration).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// Failures per user name within the window before refusing.
pub const MAX_PER_USER: u32 = 5;
/// Failures per client address within the window before refusing.
pub const MAX_PER_ADDR: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(300);

struct Window {
    start: Instant,
    failures: AtomicU32,
}

/// The throttle.
pub struct Throttle {
    users: Cache<String, Arc<Window>>,
    addrs: Cache<IpAddr, Arc<Window>>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            users: Cache::builder().max_capacity(100_000).time_to_live(WINDOW).build(),
            addrs: Cache::builder().max_capacity(100_000).time_to_live(WINDOW).build(),
        }
    }
}

fn new_window() -> Arc<Window> {
    Arc::new(Window {
        start: Instant::now(),
        failures: AtomicU32::new(0),
    })
}

fn blocked(w: Option<Arc<Window>>, max: u32) -> Option<Duration> {
    let w = w?;
    (w.failures.load(Ordering::Relaxed) >= max).then(|| WINDOW.saturating_sub(w.start.elapsed()))
}

impl Throttle {
    /// `Err(retry_after)` when this user or address must wait.
    pub fn check(&self, user: &str, addr: IpAddr) -> Result<(), Duration> {
        match blocked(self.users.get(user), MAX_PER_USER).or_else(|| blocked(self.addrs.get(&addr), MAX_PER_ADDR)) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Records a failed login.
    pub fn failure(&self, user: &str, addr: IpAddr) {
        self.users
            .get_with(user.to_string(), new_window)
            .failures
            .fetch_add(1, Ordering::Relaxed);
        self.failure_addr(addr);
    }

    /// `Err(retry_after)` when this address must wait (for logins without
    /// a user name, such as one-time codes, which limit guesses per code).
    pub fn check_addr(&self, addr: IpAddr) -> Result<(), Duration> {
        blocked(self.addrs.get(&addr), MAX_PER_ADDR).map_or(Ok(()), Err)
    }

    /// Records a failure against the address only.
    pub fn failure_addr(&self, addr: IpAddr) {
        self.addrs
            .get_with(addr, new_window)
            .failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A successful login clears the user's count (not the address's).
    pub fn success(&self, user: &str) {
        self.users.invalidate(user);
    }
}

/// A fixed-window counter per client address: at most `max` hits per
/// `window`, then `Err(retry_after)` until the window ends. Per node.
pub struct AddrLimit {
    max: u32,
    window: Duration,
    addrs: Cache<IpAddr, Arc<Window>>,
}

impl AddrLimit {
    /// `max` hits per `window` per address.
    pub fn new(max: u32, window: Duration) -> AddrLimit {
        AddrLimit {
            max,
            window,
            addrs: Cache::builder().max_capacity(100_000).time_to_live(window).build(),
        }
    }

    /// Counts a hit; `Err(retry_after)` if the address is over its limit.
    pub fn hit(&self, addr: IpAddr) -> Result<(), Duration> {
        let w = self.addrs.get_with(addr, new_window);
        if w.failures.fetch_add(1, Ordering::Relaxed) >= self.max {
            return Err(self.window.saturating_sub(w.start.elapsed()));
        }
        Ok(())
    }
}
