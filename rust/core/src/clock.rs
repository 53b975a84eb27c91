//! Where "now" comes from. Everything that compares against a deadline asks
//! the engine's clock, so a test clock can skip time (see `perdure.testing`).

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

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
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
