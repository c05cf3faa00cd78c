//! Shared state behind one trait: feedback and the printable calendars. The embedded default
//! keeps them in memory (one replica); a Redis implementation comes for several replicas.

use crate::protocol::Feedback;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take the write now; the client should retry (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What /readyz reports about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreHealth {
    Ok,
    Degraded,
}

pub trait Store: Send + Sync {
    /// Records feedback items for a service; Ok only once they are stored.
    fn put_feedback(&self, service: &str, items: &[Feedback]) -> Result<(), StoreError>;
    fn put_calendar(&self, id: &str, html: Arc<String>) -> Result<(), StoreError>;
    fn get_calendar(&self, id: &str) -> Option<Arc<String>>;
    fn health(&self) -> StoreHealth;
    /// A short name for logs and /readyz.
    fn kind(&self) -> &'static str;
}

/// Process memory: bounded, with calendar pages expiring after `calendar_ttl`.
pub struct MemoryStore {
    feedback: Mutex<Vec<(String, Feedback)>>,
    calendars: moka::sync::Cache<String, Arc<String>>,
    max_feedback: usize,
}

impl MemoryStore {
    pub fn new(calendar_ttl: Duration) -> Self {
        MemoryStore {
            feedback: Mutex::new(Vec::new()),
            calendars: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(calendar_ttl)
                .build(),
            max_feedback: 100_000,
        }
    }

    /// Feedback stored so far (for tests and the admin view to come).
    pub fn feedback(&self) -> Vec<(String, Feedback)> {
        self.feedback.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

impl Store for MemoryStore {
    fn put_feedback(&self, service: &str, items: &[Feedback]) -> Result<(), StoreError> {
        let mut f = self
            .feedback
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned lock".into()))?;
        if f.len() + items.len() > self.max_feedback {
            // Refuse rather than drop silently: the EHR retries, nothing is lost unseen.
            return Err(StoreError::Unavailable("in-memory feedback is full".into()));
        }
        f.extend(items.iter().map(|i| (service.to_string(), i.clone())));
        Ok(())
    }

    fn put_calendar(&self, id: &str, html: Arc<String>) -> Result<(), StoreError> {
        self.calendars.insert(id.to_string(), html);
        Ok(())
    }

    fn get_calendar(&self, id: &str) -> Option<Arc<String>> {
        self.calendars.get(id)
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
