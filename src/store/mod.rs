//! Shared state behind one trait: feedback and the printable calendars. The embedded default
//! keeps them in memory (one replica); [`redis::RedisStore`] shares them between replicas.

pub mod breaker;
pub mod redis;

use crate::auth::replay::{MemoryReplayGuard, ReplayGuard};
use crate::protocol::Feedback;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `[store]`: where shared state lives.
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: Backend,
    pub redis: redis::RedisSettings,
}

#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One replica: state in process memory, lost on restart.
    #[default]
    Memory,
    /// Several replicas share it.
    Redis,
}

/// The store and the replay guard the settings ask for.
pub struct Built {
    pub store: Arc<dyn Store>,
    pub replay: Arc<dyn ReplayGuard>,
}

pub fn build(settings: &StoreSettings, calendar_ttl: Duration) -> Result<Built, String> {
    Ok(match settings.backend {
        Backend::Memory => Built {
            store: Arc::new(MemoryStore::new(calendar_ttl)),
            replay: Arc::new(MemoryReplayGuard::default()),
        },
        Backend::Redis => {
            let store = Arc::new(redis::RedisStore::new(&settings.redis, calendar_ttl)?);
            Built {
                store: store.clone(),
                replay: Arc::new(redis::RedisReplayGuard::new(store)),
            }
        }
    })
}

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

/// What a feedback write did: items new to the store, and items already there (an EHR retry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub new: usize,
    pub duplicates: usize,
}

/// The identity of a feedback item: the same card, outcome and time is the same answer, so an
/// EHR's retry is not counted twice.
pub fn feedback_id(service: &str, item: &Feedback) -> String {
    let outcome = item.outcome.as_str();
    let key = format!(
        "{service}\n{}\n{outcome}\n{}",
        item.card, item.outcome_timestamp
    );
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).to_string()
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Records feedback items for a service; Ok only once every item is stored (or was already).
    async fn put_feedback(&self, service: &str, items: &[Feedback]) -> Result<Stored, StoreError>;
    async fn put_calendar(&self, id: &str, html: Arc<String>) -> Result<(), StoreError>;
    async fn get_calendar(&self, id: &str) -> Result<Option<Arc<String>>, StoreError>;
    async fn health(&self) -> StoreHealth;
    /// A short name for logs and /readyz.
    fn kind(&self) -> &'static str;
}

/// Items in arrival order, and the ids seen.
type FeedbackLog = (Vec<(String, Feedback)>, HashSet<String>);

/// Process memory: bounded, with calendar pages expiring after `calendar_ttl`.
pub struct MemoryStore {
    feedback: Mutex<FeedbackLog>,
    calendars: moka::sync::Cache<String, Arc<String>>,
    max_feedback: usize,
}

impl MemoryStore {
    pub fn new(calendar_ttl: Duration) -> Self {
        MemoryStore {
            feedback: Mutex::new((Vec::new(), HashSet::new())),
            calendars: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(calendar_ttl)
                .build(),
            max_feedback: 100_000,
        }
    }

    /// Feedback stored so far (for tests and the admin view to come).
    pub fn feedback(&self) -> Vec<(String, Feedback)> {
        self.feedback
            .lock()
            .map(|f| f.0.clone())
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn put_feedback(&self, service: &str, items: &[Feedback]) -> Result<Stored, StoreError> {
        let mut guard = self
            .feedback
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned lock".into()))?;
        let (list, seen) = &mut *guard;
        if list.len() + items.len() > self.max_feedback {
            // Refuse rather than drop silently: the EHR retries, nothing is lost unseen.
            return Err(StoreError::Unavailable("in-memory feedback is full".into()));
        }
        let mut stored = Stored::default();
        for i in items {
            if seen.insert(feedback_id(service, i)) {
                list.push((service.to_string(), i.clone()));
                stored.new += 1;
            } else {
                stored.duplicates += 1;
            }
        }
        Ok(stored)
    }

    async fn put_calendar(&self, id: &str, html: Arc<String>) -> Result<(), StoreError> {
        self.calendars.insert(id.to_string(), html);
        Ok(())
    }

    async fn get_calendar(&self, id: &str) -> Result<Option<Arc<String>>, StoreError> {
        Ok(self.calendars.get(id))
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
