//! The store in Redis, shared by every replica: calendars (with an expiry), feedback (a stream,
//! idempotent per item), and the JWT replay guard (SET NX with the token's remaining lifetime).
//! Short timeouts and a circuit breaker: a dead Redis costs microseconds per request, and the
//! connection manager reconnects by itself when it returns.

use super::breaker::Breaker;
use super::{
    CardNote, Counts, FeedbackItem, Store, StoreError, StoreHealth, Stored, feedback_fields,
    feedback_id, shown_fields, snooze_key,
};
use crate::auth::replay::{MemoryReplayGuard, ReplayGuard};
use crate::rules::quiet::{Snooze, SnoozeKind};
use redis::RedisFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use serde::Deserialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// redis://[user:password@]host:port/db, or rediss:// for TLS.
    pub url: String,
    /// Redis Cluster seed nodes (redis:// or rediss:// URLs); when set, `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// Root certificates (PEM) for a rediss:// Redis signed by a private CA, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
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
            cluster_nodes: vec![],
            ca_file: None,
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

/// Adds a feedback item to the stream and counts it, unless its id was seen. Every key shares
/// the `{feedback}` hash tag so the script also runs on a Redis Cluster.
/// KEYS: seen, stream, counts. ARGV: dedup seconds, stream max, n, n count fields, then the
/// stream's field/value pairs.
/// The stream write comes before the seen mark: were it ever refused, a retry is not mistaken
/// for a duplicate.
const PUT_FEEDBACK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4 + n))
for i = 4, 3 + n do redis.call('HINCRBY', KEYS[3], ARGV[i], 1) end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
";

/// Remembers shown cards and counts each the first time only.
/// KEYS: counts, then one key per card. ARGV: seconds, then per card its note and two count
/// fields.
const NOTE_CARDS: &str = r"
for i = 2, #KEYS do
  local a = 2 + (i - 2) * 3
  if redis.call('SET', KEYS[i], ARGV[a], 'NX', 'EX', ARGV[1]) then
    redis.call('HINCRBY', KEYS[1], ARGV[a + 1], 1)
    redis.call('HINCRBY', KEYS[1], ARGV[a + 2], 1)
  end
end
return 1
";

/// Shown and answered counts (a hash; the `{feedback}` tag keeps it in the feedback script's
/// slot).
const COUNTS: &str = "{feedback}:counts";

/// One Redis or a Cluster, behind the same commands.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The CA of `ca_file`, for rediss:// URLs only: a CA beside a plain redis:// URL would
/// suggest an encryption that is not there.
fn tls_roots(settings: &RedisSettings) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(path) = &settings.ca_file else {
        return Ok(None);
    };
    let urls: Vec<&str> = if settings.cluster_nodes.is_empty() {
        vec![settings.url.as_str()]
    } else {
        settings.cluster_nodes.iter().map(String::as_str).collect()
    };
    if urls.iter().any(|u| !u.starts_with("rediss://")) {
        return Err(
            "store.redis.ca_file is set, but the Redis URLs are not all rediss:// (TLS)".into(),
        );
    }
    let pem =
        std::fs::read(path).map_err(|e| format!("store.redis.ca_file {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "store.redis.ca_file {}: no PEM certificate",
            path.display()
        ));
    }
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

pub struct RedisStore {
    conn: Conn,
    breaker: Breaker,
    calendar_ttl: Duration,
    settings: RedisSettings,
    put_feedback: redis::Script,
    note_cards: redis::Script,
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start delays nothing, and is retried.
    pub fn new(settings: &RedisSettings, calendar_ttl: Duration) -> Result<RedisStore, String> {
        if settings.key_prefix.contains(['{', '}']) {
            return Err("store.redis.key_prefix must not contain { or }: they would change the Cluster hash slot of every key".into());
        }
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        let roots = tls_roots(settings)?;
        let conn = if settings.cluster_nodes.is_empty() {
            let client = match roots {
                Some(certs) => redis::Client::build_with_tls(settings.url.as_str(), certs),
                None => redis::Client::open(settings.url.as_str()),
            }
            .map_err(|e| format!("store.redis.url: {e}"))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(settings.breaker_cooldown_ms));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| format!("store.redis: {e}"))?,
            )
        } else {
            let mut builder =
                redis::cluster::ClusterClientBuilder::new(settings.cluster_nodes.clone())
                    .retries(1);
            if let Some(certs) = roots {
                builder = builder.certs(certs);
            }
            let client = builder
                .build()
                .map_err(|e| format!("store.redis.cluster_nodes: {e}"))?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(response_timeout);
            // Pending: nodes are connected in the background, and again after a failure.
            Conn::Cluster(client.get_pending_async_connection_with_config(config))
        };
        Ok(RedisStore {
            conn,
            breaker: Breaker::new(
                settings.breaker_failures,
                Duration::from_millis(settings.breaker_cooldown_ms),
            ),
            calendar_ttl,
            settings: settings.clone(),
            put_feedback: redis::Script::new(PUT_FEEDBACK),
            note_cards: redis::Script::new(NOTE_CARDS),
        })
    }

    pub fn key(&self, parts: &str) -> String {
        format!("{}{parts}", self.settings.key_prefix)
    }

    fn card_key(&self, uuid: &str) -> String {
        self.key(&format!("{{feedback}}:card:{uuid}"))
    }

    /// One Redis call through the breaker and a deadline. Errors name no key (keys may carry
    /// hashed identifiers; messages stay generic).
    async fn call<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allows() {
            return Err(StoreError::Unavailable("redis circuit open".into()));
        }
        // The manager's own timeout covers a command; this one also covers a reconnect.
        let budget = Duration::from_millis(self.settings.response_timeout_ms) * 2;
        let result = match tokio::time::timeout(budget, f(self.conn.clone())).await {
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
        };
        // The state as of the last call; the breaker's gauge stays 1 while it refuses calls.
        metrics::gauge!("offramp_redis_up").set(if result.is_ok() { 1.0 } else { 0.0 });
        metrics::gauge!("offramp_redis_breaker_open").set(if self.breaker.is_open() {
            1.0
        } else {
            0.0
        });
        result
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
    async fn put_feedback(
        &self,
        service: &str,
        items: &[FeedbackItem<'_>],
    ) -> Result<Stored, StoreError> {
        let mut stored = Stored::default();
        let stream = self.key("{feedback}:stream");
        let counts = self.key(COUNTS);
        for item in items {
            let fb = item.feedback;
            let id = feedback_id(service, fb);
            let seen = self.key(&format!("{{feedback}}:seen:{id}"));
            let (system, code) = fb
                .override_reason
                .as_ref()
                .and_then(|r| r.reason.as_ref())
                .map(|c| (c.system.as_str(), c.code.as_str()))
                .unwrap_or(("", ""));
            let accepted: Vec<&str> = fb
                .accepted_suggestions
                .iter()
                .map(|a| a.id.as_str())
                .collect();
            // The reason code only: a free-text comment may name the patient.
            let fields = [
                ("id", id.as_str()),
                ("service", service),
                ("card", fb.card.as_str()),
                ("rule", item.rule),
                ("prescriber", item.prescriber),
                ("outcome", fb.outcome.as_str()),
                ("outcome_timestamp", fb.outcome_timestamp.as_str()),
                ("override_system", system),
                ("override_code", code),
                ("accepted", &accepted.join(",")),
            ];
            let count = feedback_fields(item);
            let mut inv = self.put_feedback.prepare_invoke();
            inv.key(&seen)
                .key(&stream)
                .key(&counts)
                .arg(self.settings.feedback_dedup_seconds)
                .arg(self.settings.feedback_stream_max)
                .arg(count.len());
            for f in &count {
                inv.arg(f);
            }
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

    async fn note_cards(
        &self,
        cards: &[(String, CardNote)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if cards.is_empty() {
            return Ok(());
        }
        let mut inv = self.note_cards.prepare_invoke();
        inv.key(self.key(COUNTS)).arg(ttl.as_secs().max(1));
        for (uuid, note) in cards {
            let json = serde_json::to_string(note)
                .map_err(|e| StoreError::Unavailable(format!("card note: {e}")))?;
            inv.key(self.card_key(uuid)).arg(json);
            for f in shown_fields(note) {
                inv.arg(f);
            }
        }
        self.call(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    async fn card_note(&self, uuid: &str) -> Result<Option<CardNote>, StoreError> {
        let k = self.card_key(uuid);
        let note: Option<String> = self
            .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await?;
        // An unreadable note (another version's format) counts as unknown, not an error.
        Ok(note.and_then(|n| serde_json::from_str(&n).ok()))
    }

    async fn put_snooze(
        &self,
        patient: &str,
        rule: &str,
        snooze: &Snooze,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.key(&snooze_key(patient, rule, snooze.kind));
        let json = serde_json::to_string(snooze)
            .map_err(|e| StoreError::Unavailable(format!("snooze: {e}")))?;
        let secs = ttl.as_secs().max(1);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(json)
                .arg("EX")
                .arg(secs)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn snoozes(&self, patient: &str, rules: &[&str]) -> Result<Vec<Vec<Snooze>>, StoreError> {
        if rules.is_empty() {
            return Ok(vec![]);
        }
        // One slot per patient (hash tag), so one MGET also works on a Cluster.
        let kinds = SnoozeKind::ALL;
        let keys: Vec<String> = rules
            .iter()
            .flat_map(|r| kinds.iter().map(|k| self.key(&snooze_key(patient, r, *k))))
            .collect();
        let values: Vec<Option<String>> = self
            .call(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await })
            .await?;
        Ok(values
            .chunks(kinds.len())
            .map(|per_rule| {
                per_rule
                    .iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str(v).ok())
                    .collect()
            })
            .collect())
    }

    async fn put_run_ahead(
        &self,
        key: &str,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.key(&format!("runahead:{key}"));
        let secs = ttl.as_secs().max(1);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(entry)
                .arg("EX")
                .arg(secs)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn run_ahead(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.key(&format!("runahead:{key}"));
        self.call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let k = self.key(COUNTS);
        let mut counts: Counts = self
            .call(|mut c| async move { redis::cmd("HGETALL").arg(&k).query_async(&mut c).await })
            .await?;
        counts.sort();
        Ok(counts)
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
