//! The time the domain judges by: the system's, which a test may move forward (a cooldown passes
//! without waiting for it).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The system clock plus an offset that only grows (zero unless a test advances it).
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        chrono::Duration::try_milliseconds(self.offset_ms.load(Ordering::Acquire))
            .and_then(|offset| now.checked_add_signed(offset))
            .unwrap_or(now)
    }

    /// How far a test moved the clock forward.
    pub fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Acquire).max(0) as u64)
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .offset_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(o.saturating_add(ms))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward_by_that_much() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(Duration::from_secs(3600));
        let moved = clock.now() - before;
        assert!(moved >= chrono::Duration::seconds(3600), "{moved}");
        assert!(moved < chrono::Duration::seconds(3660), "{moved}");
        clock.advance(Duration::MAX);
        clock.advance(Duration::MAX);
        assert!(
            clock.offset_ms.load(Ordering::Acquire) == i64::MAX,
            "saturates"
        );
        let _ = clock.now();
    }
}
