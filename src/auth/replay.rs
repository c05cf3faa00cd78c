//! The replay guard: a jti is accepted once within its token's lifetime. A trait because a
//! deployment of several replicas shares it in Redis; one replica uses memory.

use std::collections::HashMap;
use std::sync::Mutex;

#[async_trait::async_trait]
pub trait ReplayGuard: Send + Sync {
    /// Records `key` until `expires_at` (unix seconds); false if it was already there.
    async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> bool;
}

/// Per-process guard; memory stays bounded because entries are purged once expired and the
/// accepted token lifetime is capped. Keys are kept as 128-bit digests (a jti can be long), and
/// expired entries are swept at most once a second, not on every call.
#[derive(Default)]
pub struct MemoryReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    until: HashMap<u128, i64>,
    swept_at: i64,
}

const SWEEP_MARGIN_SECONDS: i64 = 60;

fn digest(key: &str) -> u128 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&d.as_ref()[..16]);
    u128::from_le_bytes(first)
}

#[async_trait::async_trait]
impl ReplayGuard for MemoryReplayGuard {
    async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> bool {
        let key = digest(key);
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            // A panic elsewhere while holding the lock must not open the door: keep the data.
            Err(poisoned) => poisoned.into_inner(),
        };
        if now != seen.swept_at {
            // With a margin: a concurrent call may carry an older `now` (taken before its
            // signature check), and must still find the jti.
            seen.until
                .retain(|_, exp| *exp + SWEEP_MARGIN_SECONDS >= now);
            seen.swept_at = now;
        }
        match seen.until.get(&key) {
            Some(exp) if *exp >= now => false,
            _ => {
                seen.until.insert(key, expires_at);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn once_per_lifetime_then_forgotten() {
        let g = MemoryReplayGuard::default();
        assert!(g.first_use("iss|a", 100, 10).await);
        assert!(!g.first_use("iss|a", 100, 50).await);
        assert!(g.first_use("iss|b", 100, 50).await);
        // A sweep keeps what a call with a slightly older clock could still look up.
        assert!(g.first_use("iss|c", 100, 99).await);
        assert!(!g.first_use("iss|a", 300, 100).await);
        // Past the margin: swept, and the key may be used again (the token itself is refused as
        // expired long before).
        assert!(g.first_use("iss|a", 400, 161).await);
        assert_eq!(g.seen.lock().map(|s| s.until.len()).unwrap_or(0), 1);
    }
}
