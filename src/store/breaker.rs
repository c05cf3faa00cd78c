//! A circuit breaker, so a dead Redis costs a check of an atomic, not a timeout per request:
//! after `threshold` failures in a row calls are refused for `cooldown`; the first call after
//! that probes, and one more failure opens it again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls are refused.
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go through now.
    pub fn allows(&self) -> bool {
        self.now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    pub fn is_open(&self) -> bool {
        !self.allows()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert!(b.allows());
        b.failure();
        assert!(b.allows(), "one failure is not an outage");
        b.failure();
        assert!(b.is_open());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allows(), "a probe after the cooldown");
        b.failure();
        assert!(b.is_open(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(40));
        b.success();
        b.failure();
        assert!(b.allows(), "a success resets the count");
    }
}
