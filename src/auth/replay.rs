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
/// accepted token lifetime is capped.
#[derive(Default)]
pub struct MemoryReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

#[async_trait::async_trait]
impl ReplayGuard for MemoryReplayGuard {
    async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> bool {
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            // A panic elsewhere while holding the lock must not open the door: keep the data.
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.len() > 1024 {
            seen.retain(|_, exp| *exp >= now);
        }
        match seen.get(key) {
            Some(exp) if *exp >= now => false,
            _ => {
                seen.insert(key.to_string(), expires_at);
                true
            }
        }
    }
}
