//! The store in Redis, shared by every replica: calendars (with an expiry), feedback (a stream,
//! idempotent per item), and the JWT replay guard (SET NX with the token's remaining lifetime).
//! Short timeouts and a circuit breaker: a dead Redis costs microseconds per request, and the
//! connection manager reconnects by itself when it returns.

use super::breaker::Breaker;
use super::{Store, StoreError, StoreHealth, Stored, feedback_id};
use crate::auth::replay::{MemoryReplayGuard, ReplayGuard};
use crate::protocol::Feedback;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// redis://[user:password@]host:port/db, or rediss:// for TLS.
    pub url: String,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    /// Longest wait for one command; a hook call never waits longer on Redis.
    pub response_timeout_ms: u64,
    /// Failures in a row that open the circuit, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
    /// Feedback stream length kept (approximate trimming); older entries are dropped.
    pub feedback_stream_max: u64,
    /// How long a feedback item's id is remembered to ignore an EHR's retry.
    pub feedback_dedup_seconds: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "offramp:".into(),
            connect_timeout_ms: 250,
            response_timeout_ms: 150,
            breaker_failures: 3,
            breaker_cooldown_ms: 1000,
            feedback_stream_max: 1_000_000,
            feedback_dedup_seconds: 90 * 24 * 3600,
        }
    }
}

/// Adds a feedback item to the stream unless its id was seen; both keys share a hash tag so the
/// script also runs on a Redis Cluster.
const PUT_FEEDBACK: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
";

pub struct RedisStore {
    conn: ConnectionManager,
    breaker: Breaker,
    calendar_ttl: Duration,
    settings: RedisSettings,
    put_feedback: redis::Script,
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start delays nothing, and is retried.
    pub fn new(settings: &RedisSettings, calendar_ttl: Duration) -> Result<RedisStore, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("store.redis.url: {e}"))?;
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(settings.breaker_cooldown_ms));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("store.redis: {e}"))?;
        Ok(RedisStore {
            conn,
            breaker: Breaker::new(
                settings.breaker_failures,
                Duration::from_millis(settings.breaker_cooldown_ms),
            ),
            calendar_ttl,
            settings: settings.clone(),
            put_feedback: redis::Script::new(PUT_FEEDBACK),
        })
    }

    pub fn key(&self, parts: &str) -> String {
        format!("{}{parts}", self.settings.key_prefix)
    }

    /// One Redis call through the breaker and a deadline. Errors name no key (keys may carry
    /// hashed identifiers; messages stay generic).
    async fn call<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allows() {
            return Err(StoreError::Unavailable("redis circuit open".into()));
        }
        // The manager's own timeout covers a command; this one also covers a reconnect.
        let budget = Duration::from_millis(self.settings.response_timeout_ms) * 2;
        match tokio::time::timeout(budget, f(self.conn.clone())).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.breaker.failure();
                metrics::counter!("offramp_redis_errors_total", "kind" => "error").increment(1);
                Err(StoreError::Unavailable(format!("redis: {:?}", e.kind())))
            }
            Err(_) => {
                self.breaker.failure();
                metrics::counter!("offramp_redis_errors_total", "kind" => "timeout").increment(1);
                Err(StoreError::Unavailable("redis: timeout".into()))
            }
        }
    }

    /// Records `key` until `expires_at` (unix seconds); Ok(false) if it was already there.
    pub async fn first_use(
        &self,
        key: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
        let k = self.key(&format!("replay:{id}"));
        let ttl = (expires_at - now).max(1);
        let set: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Whether the circuit is open now (for /readyz and metrics).
    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn put_feedback(&self, service: &str, items: &[Feedback]) -> Result<Stored, StoreError> {
        let mut stored = Stored::default();
        let stream = self.key("{feedback}:stream");
        for item in items {
            let id = feedback_id(service, item);
            let seen = self.key(&format!("{{feedback}}:seen:{id}"));
            let (system, code) = item
                .override_reason
                .as_ref()
                .and_then(|r| r.reason.as_ref())
                .map(|c| (c.system.as_str(), c.code.as_str()))
                .unwrap_or(("", ""));
            let accepted: Vec<&str> = item
                .accepted_suggestions
                .iter()
                .map(|a| a.id.as_str())
                .collect();
            // The reason code only: a free-text comment may name the patient.
            let fields = [
                ("id", id.as_str()),
                ("service", service),
                ("card", item.card.as_str()),
                ("outcome", item.outcome.as_str()),
                ("outcome_timestamp", item.outcome_timestamp.as_str()),
                ("override_system", system),
                ("override_code", code),
                ("accepted", &accepted.join(",")),
            ];
            let mut inv = self.put_feedback.prepare_invoke();
            inv.key(&seen)
                .key(&stream)
                .arg(self.settings.feedback_dedup_seconds)
                .arg(self.settings.feedback_stream_max);
            for (k, v) in fields {
                inv.arg(k).arg(v);
            }
            let added: i64 = self
                .call(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            if added == 1 {
                stored.new += 1;
            } else {
                stored.duplicates += 1;
            }
        }
        Ok(stored)
    }

    async fn put_calendar(&self, id: &str, html: Arc<String>) -> Result<(), StoreError> {
        let k = self.key(&format!("calendar:{id}"));
        let ttl = self.calendar_ttl.as_secs().max(1);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(html.as_str())
                .arg("EX")
                .arg(ttl)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn get_calendar(&self, id: &str) -> Result<Option<Arc<String>>, StoreError> {
        let k = self.key(&format!("calendar:{id}"));
        let page: Option<String> = self
            .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await?;
        Ok(page.map(Arc::new))
    }

    async fn health(&self) -> StoreHealth {
        let pong: Result<String, _> = self
            .call(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await;
        if pong.is_ok() {
            StoreHealth::Ok
        } else {
            StoreHealth::Degraded
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The replay guard across replicas; while Redis is unavailable each replica keeps its own, so
/// hook calls keep being answered (a replay to another replica is then possible: logged and
/// counted, and bounded by the token lifetime cap).
pub struct RedisReplayGuard {
    store: Arc<RedisStore>,
    fallback: MemoryReplayGuard,
}

impl RedisReplayGuard {
    pub fn new(store: Arc<RedisStore>) -> Self {
        RedisReplayGuard {
            store,
            fallback: MemoryReplayGuard::default(),
        }
    }
}

#[async_trait::async_trait]
impl ReplayGuard for RedisReplayGuard {
    async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> bool {
        // Remembered locally too, so a replay within this replica is caught during an outage.
        let local = self.fallback.first_use(key, expires_at, now).await;
        match self.store.first_use(key, expires_at, now).await {
            Ok(shared) => shared && local,
            Err(_) => {
                metrics::counter!("offramp_replay_guard_fallback_total").increment(1);
                local
            }
        }
    }
}
