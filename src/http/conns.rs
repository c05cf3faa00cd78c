//! The open connections: at most `max` at once. When all are taken, the oldest connection that has
//! not yet sent a whole request head is closed to make room (as nginx reuses idle connections), so
//! a flood of idle or trickling connections cannot keep an EHR out until they time out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub struct Connections {
    slots: Arc<Semaphore>,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

/// One open connection, as the accept loop sees it.
#[derive(Default)]
pub struct Conn {
    proven: AtomicBool,
    evict: Notify,
}

impl Conn {
    /// A request head arrived: the connection is in use and is never closed to make room.
    pub fn proven(&self) {
        self.proven.store(true, Ordering::Relaxed);
    }
}

/// Holds a slot until the connection ends.
pub struct Guard {
    id: u64,
    conn: Arc<Conn>,
    owner: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Guard {
    pub fn conn(&self) -> Arc<Conn> {
        self.conn.clone()
    }

    /// Resolves when the slot is wanted for a newer connection.
    pub async fn evicted(&self) {
        self.conn.evict.notified().await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.owner.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            slots: Arc::new(Semaphore::new(max.max(1))),
            open: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// A slot for a connection just accepted: a free one, else one freed by closing the oldest
    /// connection that has sent no request yet, else the next one to close.
    pub async fn admit(self: &Arc<Self>) -> Option<Guard> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.evict_oldest_unproven() {
                    metrics::counter!("offramp_connections_evicted_total").increment(1);
                }
                self.slots.clone().acquire_owned().await.ok()?
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        self.open.lock().ok()?.insert(id, conn.clone());
        Some(Guard {
            id,
            conn,
            owner: self.clone(),
            _permit: permit,
        })
    }

    fn evict_oldest_unproven(&self) -> bool {
        let Ok(open) = self.open.lock() else {
            return false;
        };
        match open.values().find(|c| !c.proven.load(Ordering::Relaxed)) {
            Some(c) => {
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn when_full_the_oldest_unproven_makes_room_and_proven_ones_stay() {
        let c = Connections::new(2);
        let a = c.admit().await.expect("a");
        let b = c.admit().await.expect("b");
        a.conn().proven();
        // Full: b (unproven) is asked to leave; a (proven) is not.
        let third = tokio::spawn({
            let c = c.clone();
            async move { c.admit().await }
        });
        tokio::time::timeout(Duration::from_secs(1), b.evicted())
            .await
            .expect("b evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.evicted())
                .await
                .is_err(),
            "a proven connection is never evicted"
        );
        drop(b);
        let third = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("admitted")
            .expect("task")
            .expect("guard");
        assert_eq!(third.id, 2);
        assert_eq!(c.open(), 2);
    }

    #[tokio::test]
    async fn when_all_are_proven_a_new_one_waits_for_a_close() {
        let c = Connections::new(1);
        let a = c.admit().await.expect("a");
        a.conn().proven();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.admit().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        assert!(waiting.await.expect("task"));
    }
}
