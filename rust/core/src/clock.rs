//! Where "now" comes from. Everything that compares against a deadline asks
//! the engine's clock, so a test clock can skip time (see `perdure.testing`).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Asked by the timer thread when nothing is running and the earliest
    /// wake-up is at `due_ms`: a clock that skips time jumps there and says so.
    fn skip_to(&self, _due_ms: u64) -> bool {
        false
    }

    /// Whether `skip_to` may ever jump (spares the timer thread the search).
    fn skips(&self) -> bool {
        false
    }
}

/// The system's wall clock as it is (CLOCK_REALTIME), for what other
/// processes compare: lease renewals, owner registration.
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds on a clock that never steps: CLOCK_BOOTTIME, which also
/// counts the time the machine was suspended (a wait that falls due during
/// a suspend fires on resume, as it would by the wall clock).
fn steady_ms() -> u64 {
    let mut spec = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `spec` is a valid timespec to write; CLOCK_BOOTTIME exists on
    // every Linux since 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut spec) };
    if rc != 0 {
        // SAFETY: as above; CLOCK_MONOTONIC exists everywhere.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut spec) };
    }
    let secs = u64::try_from(spec.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(spec.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

/// Where the engines' wall clock stands: (its last reading, the steady
/// clock then). Shared by every engine of the process, so they agree.
static STEADY_WALL: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// The engines' clock: wall-clock milliseconds that never go back. It is
/// anchored to the system clock at its first reading and advanced by the
/// steady clock, and it follows the system clock whenever that is ahead. So a
/// step of the system clock forward (NTP correcting a slow clock) is taken at
/// once, while a step back (NTP correcting a fast one, an operator) does not
/// delay a durable wait of this process by the size of the step: deadlines
/// are stored as wall-clock times, but measured here on a monotonic basis.
/// A process started after a step back reads the system clock as it is; a
/// stored deadline that is in the past fires at once.
pub struct SystemClock;

impl SystemClock {
    fn read(system_now: u64, steady_now: u64, last: &mut Option<(u64, u64)>) -> u64 {
        let now = match *last {
            Some((wall, steady)) => wall.saturating_add(steady_now.saturating_sub(steady)).max(system_now),
            None => system_now,
        };
        *last = Some((now, steady_now));
        now
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let mut last = STEADY_WALL.lock();
        // Both read under the lock, so concurrent readers see one order.
        SystemClock::read(system_ms(), steady_ms(), &mut last)
    }
}

/// A clock that only moves when told to.
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    pub fn set(&self, now_ms: u64) {
        self.now_ms.fetch_max(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// The test clock of `perdure.testing`: time moves when a test advances it,
/// and, with auto-skip on, jumps to the next wake-up (a wait, a retry, a
/// poll) whenever the engine has nothing to run, so a week of waits passes in
/// milliseconds. Callback and execution deadlines are not skipped to: a test
/// reaches them by advancing the clock (or by a later wake-up passing them),
/// so it can still answer a callback first.
pub struct SkippingClock {
    now_ms: AtomicU64,
    auto_skip: AtomicBool,
}

impl SkippingClock {
    pub fn new(start_ms: u64, auto_skip: bool) -> Self {
        SkippingClock {
            now_ms: AtomicU64::new(start_ms),
            auto_skip: AtomicBool::new(auto_skip),
        }
    }

    /// Moves time forward by `ms`; returns the new now.
    pub fn advance(&self, ms: u64) -> u64 {
        self.now_ms.fetch_add(ms, Ordering::SeqCst).saturating_add(ms)
    }

    pub fn set_auto_skip(&self, on: bool) {
        self.auto_skip.store(on, Ordering::SeqCst);
    }

    pub fn auto_skip(&self) -> bool {
        self.auto_skip.load(Ordering::SeqCst)
    }
}

impl Clock for SkippingClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn skip_to(&self, due_ms: u64) -> bool {
        if !self.auto_skip() {
            return false;
        }
        self.now_ms.fetch_max(due_ms, Ordering::SeqCst);
        true
    }

    fn skips(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_back_of_the_system_clock_does_not_stop_the_engine_clock() {
        let hour = 3_600_000;
        let mut last = None;
        assert_eq!(SystemClock::read(10_000_000, 50, &mut last), 10_000_000);
        assert_eq!(SystemClock::read(10_000_100, 150, &mut last), 10_000_100);
        // The system clock steps back an hour; the steady clock moves on.
        assert_eq!(SystemClock::read(10_000_200 - hour, 250, &mut last), 10_000_200);
        assert_eq!(SystemClock::read(10_000_300 - hour, 350, &mut last), 10_000_300);
    }

    #[test]
    fn a_step_forward_of_the_system_clock_is_followed() {
        let mut last = None;
        assert_eq!(SystemClock::read(1_000, 0, &mut last), 1_000);
        assert_eq!(SystemClock::read(5_000_000, 10, &mut last), 5_000_000);
        // And it never goes back after that, whatever the system clock does.
        assert_eq!(SystemClock::read(1_020, 20, &mut last), 5_000_010);
    }

    #[test]
    fn the_system_clock_reads_now() {
        let engine = SystemClock.now_ms();
        let system = system_ms();
        assert!(engine.abs_diff(system) < 60_000, "{engine} vs {system}");
        assert!(SystemClock.now_ms() >= engine);
    }
}
