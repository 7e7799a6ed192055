//! Time as a value: [`UnixMs`] and the [`Clock`] that hands it out.
//!
//! Token, key and session logic never read the system clock themselves; they
//! take `now: UnixMs` as a parameter, so tests move time instead of sleeping.
//! Only [`SystemClock`] touches `SystemTime`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC). The unit of every timestamp in
/// tokens, keys and the session store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMs(pub u64);

impl UnixMs {
    /// `self + d`, saturating at the far future instead of overflowing.
    pub fn plus(self, d: Duration) -> UnixMs {
        UnixMs(self.0.saturating_add(duration_ms(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn minus(self, d: Duration) -> UnixMs {
        UnixMs(self.0.saturating_sub(duration_ms(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: UnixMs) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// As a `SystemTime`, for formatting.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// From a `SystemTime`; times before the epoch become the epoch.
    pub fn from_system_time(t: SystemTime) -> UnixMs {
        UnixMs(t.duration_since(UNIX_EPOCH).map(duration_ms).unwrap_or(0))
    }
}

/// RFC 3339 in UTC with seconds.
const SECONDS: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// RFC 3339 in UTC with milliseconds.
const MILLIS: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A date and time without an offset (`T` or a space between them, optional
/// fraction), read as UTC: what a hand-edited file may hold.
const NAIVE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day][first [T][ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
);

impl UnixMs {
    fn to_datetime(self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T10:00:00.250Z`
    /// (key files). Beyond year 9999: the milliseconds as a number.
    pub fn to_rfc3339_millis(self) -> String {
        self.to_datetime()
            .and_then(|t| t.format(MILLIS).ok())
            .unwrap_or_else(|| self.0.to_string())
    }

    /// Reads an RFC 3339 time with any offset (`2026-11-23T10:00:00Z`,
    /// `2026-11-23T11:00:00.5+01:00`), or a date and time without one (read
    /// as UTC). Times before the epoch are refused.
    pub fn parse_rfc3339(text: &str) -> Result<UnixMs, String> {
        let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .or_else(|e| {
                time::PrimitiveDateTime::parse(text, NAIVE)
                    .map(time::PrimitiveDateTime::assume_utc)
                    .map_err(|_| e)
            })
            .map_err(|e| e.to_string())?;
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map(UnixMs)
            .map_err(|_| "it lies before 1970-01-01".to_string())
    }
}

/// RFC 3339 in UTC with seconds, e.g. `2026-11-23T10:00:00Z` (JSON bodies,
/// logs). Beyond year 9999: the milliseconds as a number.
impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime().and_then(|t| t.format(SECONDS).ok()) {
            Some(s) => f.pad(&s),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX`.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where "now" comes from. Library code takes a `Clock` (or a `now`), never
/// the system time directly.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixMs;
}

/// The real wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMs {
        UnixMs::from_system_time(SystemTime::now())
    }
}

/// A clock that only moves when told to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: UnixMs) -> ManualClock {
        ManualClock(AtomicU64::new(start.0))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_ms(d), Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: UnixMs) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMs {
        UnixMs(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(UnixMs(u64::MAX - 1).plus(Duration::from_secs(1)), UnixMs(u64::MAX));
        assert_eq!(UnixMs(5).minus(Duration::from_secs(1)), UnixMs(0));
        assert_eq!(UnixMs(5).since(UnixMs(10)), Duration::ZERO);
    }

    #[test]
    fn display_is_rfc3339_utc() {
        assert_eq!(UnixMs(1_700_000_000_000).to_string(), "2023-11-14T22:13:20Z");
        assert_eq!(
            UnixMs(1_700_000_000_250).to_rfc3339_millis(),
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(UnixMs(u64::MAX).to_string(), u64::MAX.to_string());
    }

    #[test]
    fn rfc3339_reads_what_it_writes_and_what_humans_write() {
        let t = UnixMs(1_700_000_000_250);
        assert_eq!(UnixMs::parse_rfc3339(&t.to_rfc3339_millis()), Ok(t));
        // Written by earlier versions (humantime), offsets, no offset.
        for (text, ms) in [
            ("2023-11-14T22:13:20.250Z", 1_700_000_000_250),
            ("2023-11-14T22:13:20Z", 1_700_000_000_000),
            ("2023-11-14T23:13:20.25+01:00", 1_700_000_000_250),
            ("2023-11-14 22:13:20", 1_700_000_000_000),
            ("2023-11-14T22:13:20.5", 1_700_000_000_500),
        ] {
            assert_eq!(UnixMs::parse_rfc3339(text), Ok(UnixMs(ms)), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-11-14",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(UnixMs::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(UnixMs(1000));
        assert_eq!(c.now(), UnixMs(1000));
        c.advance(Duration::from_millis(500));
        assert_eq!(c.now(), UnixMs(1500));
        c.set(UnixMs(7));
        assert_eq!(c.now(), UnixMs(7));
    }
}
