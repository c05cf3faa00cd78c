//! Shared state behind one trait: feedback and the printable calendars. The embedded default
//! keeps them in memory (one replica); [`redis::RedisStore`] shares them between replicas.

pub mod breaker;
pub mod redis;
pub mod stats;

use crate::auth::replay::{MemoryReplayGuard, ReplayGuard};
use crate::protocol::Feedback;
use crate::rules::quiet::{RiskMark, Snooze, SnoozeKind};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[store]`: where shared state lives, and how long what it keeps stays.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: Backend,
    pub redis: redis::RedisSettings,
    /// Keys the hash of patient ids in snooze and run-ahead keys. Required with Redis (the same
    /// on every replica); with memory an empty one is replaced by a random key at start.
    pub patient_key: Secret,
    /// An override with a reason keeps the rule quiet for the patient this long (at most 90
    /// days when an opioid is involved).
    pub snooze_days: u32,
    /// After any answer, the same rule stays quiet for the rest of the ordering session.
    pub answered_quiet_seconds: u64,
    /// An order-select result is served at order-sign for unchanged drafts within this time;
    /// 0 turns run-ahead off.
    pub run_ahead_seconds: u64,
    /// How long a shown card is remembered, so late feedback is still attributed to its rule.
    pub card_log_days: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: Backend::default(),
            redis: redis::RedisSettings::default(),
            patient_key: Secret::default(),
            snooze_days: 90,
            answered_quiet_seconds: 600,
            run_ahead_seconds: 600,
            card_log_days: 30,
        }
    }
}

/// A configured secret: never printed by Debug.
#[derive(Clone, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
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

/// Hashes patient ids with a secret key (HMAC-SHA-256), so no stored key or value carries a
/// raw patient id and the hash cannot be reversed by trying the ids a hospital issues.
#[derive(Clone)]
pub struct PatientHasher(aws_lc_rs::hmac::Key);

impl PatientHasher {
    pub fn new(secret: &[u8]) -> Self {
        PatientHasher(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            secret,
        ))
    }

    /// A random key: hashes that only this process can reproduce (the memory store).
    pub fn random() -> Result<Self, String> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| "no system randomness".to_string())?;
        Ok(Self::new(&secret))
    }

    /// 128 bits of the tag, in hex.
    pub fn hash(&self, patient_id: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.0, patient_id.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A key only someone holding both the secret and the patient id can derive.
    fn sealing_key(&self, patient_id: &str) -> Option<aws_lc_rs::aead::LessSafeKey> {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(b"offramp sealed value\0");
        ctx.update(patient_id.as_bytes());
        let tag = ctx.sign();
        let key =
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, tag.as_ref()).ok()?;
        Some(aws_lc_rs::aead::LessSafeKey::new(key))
    }

    /// Encrypts a value about a patient (AES-256-GCM, random nonce first), so what is stored
    /// (cards name the patient in their suggestions) is unreadable without the id and secret.
    pub fn seal(&self, patient_id: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.sealing_key(patient_id)?;
        let mut nonce = [0u8; aws_lc_rs::aead::NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
            aws_lc_rs::aead::Aad::empty(),
            &mut data,
        )
        .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(out)
    }

    /// The value [`seal`](Self::seal) encrypted; None if tampered with or for another patient.
    pub fn open(&self, patient_id: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let key = self.sealing_key(patient_id)?;
        let (nonce, data) = sealed.split_at_checked(aws_lc_rs::aead::NONCE_LEN)?;
        let nonce = aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = key
            .open_in_place(nonce, aws_lc_rs::aead::Aad::empty(), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// What a shown card was about, remembered by its uuid so its feedback can be counted per rule
/// and prescriber and can snooze the rule for the patient.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CardNote {
    pub rule: String,
    /// [`PatientHasher::hash`] of the patient id.
    pub patient: String,
    /// The EHR's userId (a staff reference, not patient data), when it sent one.
    pub prescriber: Option<String>,
    pub mark: RiskMark,
}

/// One feedback item with what its card was about ("unknown" when the card is not in the log).
#[derive(Debug, Clone, Copy)]
pub struct FeedbackItem<'a> {
    pub feedback: &'a Feedback,
    pub rule: &'a str,
    pub prescriber: &'a str,
}

/// The key of one kind of snooze of a rule for a patient, after the store's own prefix. The
/// patient's hash is the hash tag: one patient's snoozes share a Redis Cluster slot.
pub fn snooze_key(patient: &str, rule: &str, kind: SnoozeKind) -> String {
    format!("snooze:{{{patient}}}:{rule}:{}", kind.as_str())
}

/// Shared counters, as `(field, count)`. A field is `scope␟name␟event`: scope `rule` or
/// `prescriber`, event `shown`, `accepted` or `overridden`; or `reason␟rule␟code` for override
/// reasons ([`offered_reason`]).
pub type Counts = Vec<(String, i64)>;

const SEP: char = '\u{1f}';

pub fn count_field(scope: &str, name: &str, event: &str) -> String {
    format!("{scope}{SEP}{name}{SEP}{event}")
}

/// Splits a counter field back into its three parts.
pub fn split_count_field(field: &str) -> Option<(&str, &str, &str)> {
    let mut it = field.splitn(3, SEP);
    Some((it.next()?, it.next()?, it.next()?))
}

/// The counters a card shown increments.
pub fn shown_fields(note: &CardNote) -> Vec<String> {
    let prescriber = note.prescriber.as_deref().unwrap_or("unknown");
    vec![
        count_field("rule", &note.rule, "shown"),
        count_field("prescriber", prescriber, "shown"),
    ]
}

/// The counters a feedback item increments.
pub fn feedback_fields(item: &FeedbackItem<'_>) -> Vec<String> {
    let event = item.feedback.outcome.as_str();
    let mut f = vec![
        count_field("rule", item.rule, event),
        count_field("prescriber", item.prescriber, event),
    ];
    if let Some(code) = offered_reason(item.feedback) {
        f.push(count_field("reason", item.rule, code));
    }
    f
}

/// An override reason as counted: one of the codes the cards offer, or "other" (so a client
/// cannot grow the counts or the metric series without bound); None when no reason was given.
pub fn offered_reason(item: &Feedback) -> Option<&str> {
    let c = item.override_reason.as_ref()?.reason.as_ref()?;
    let ours = c.system == crate::cards::OVERRIDE_SYSTEM
        && crate::cards::OVERRIDE_CODES.contains(&c.code.as_str());
    Some(if ours { c.code.as_str() } else { "other" })
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Records feedback items for a service and counts them; Ok only once every item is
    /// stored (or was already: a retry is neither stored nor counted twice).
    async fn put_feedback(
        &self,
        service: &str,
        items: &[FeedbackItem<'_>],
    ) -> Result<Stored, StoreError>;
    async fn put_calendar(&self, id: &str, html: Arc<String>) -> Result<(), StoreError>;
    async fn get_calendar(&self, id: &str) -> Result<Option<Arc<String>>, StoreError>;
    /// Remembers shown cards by uuid for `ttl` and counts them; a card already noted (a retried
    /// call, or run-ahead served at order-sign) is not counted again.
    async fn note_cards(
        &self,
        cards: &[(String, CardNote)],
        ttl: Duration,
    ) -> Result<(), StoreError>;
    async fn card_note(&self, uuid: &str) -> Result<Option<CardNote>, StoreError>;
    /// Keeps `rule` quiet for `patient` until `snooze.until` (`ttl` from now), replacing the
    /// snooze of the same kind.
    async fn put_snooze(
        &self,
        patient: &str,
        rule: &str,
        snooze: &Snooze,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// The snoozes (of any kind) of each of `rules` for `patient`, in the same order.
    async fn snoozes(&self, patient: &str, rules: &[&str]) -> Result<Vec<Vec<Snooze>>, StoreError>;
    async fn put_run_ahead(&self, key: &str, entry: &[u8], ttl: Duration)
    -> Result<(), StoreError>;
    async fn run_ahead(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn counts(&self) -> Result<Counts, StoreError>;
    async fn health(&self) -> StoreHealth;
    /// A short name for logs and /readyz.
    fn kind(&self) -> &'static str;
}

/// Items in arrival order, and the ids seen.
type FeedbackLog = (Vec<(String, Feedback)>, HashSet<String>);

/// A value with its own deadline, in a cache whose size in bytes bounds memory.
type Timed<T> = moka::sync::Cache<String, (Instant, T)>;

/// About how many bytes an entry holds, so caches are bounded by memory, not by count: under
/// load the in-memory store is the bulk of the process's memory (docs/benchmarks.md).
trait Weigh {
    fn bytes(&self) -> usize;
}

impl Weigh for RiskMark {
    fn bytes(&self) -> usize {
        48 + self.signals.iter().map(|s| s.len() + 32).sum::<usize>()
    }
}

impl Weigh for CardNote {
    fn bytes(&self) -> usize {
        self.rule.len()
            + self.patient.len()
            + self.prescriber.as_ref().map_or(0, String::len)
            + self.mark.bytes()
    }
}

impl Weigh for Snooze {
    fn bytes(&self) -> usize {
        self.mark.bytes() + self.by.as_ref().map_or(0, String::len) + 16
    }
}

impl Weigh for Arc<Vec<u8>> {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// Per-entry bookkeeping of the cache and the key's allocation, on top of what `Weigh` counts.
const ENTRY_OVERHEAD: usize = 128;

fn weight(key: &str, value_bytes: usize) -> u32 {
    u32::try_from(key.len() + value_bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

fn timed<T: Weigh + Clone + Send + Sync + 'static>(bytes: u64, longest: Duration) -> Timed<T> {
    moka::sync::Cache::builder()
        .max_capacity(bytes)
        .eviction_policy(newest_kept())
        .weigher(|k: &String, (_, v): &(Instant, T)| weight(k, v.bytes()))
        .time_to_live(longest)
        .build()
}

const MIB: u64 = 1024 * 1024;

/// Least recently used goes first. moka's default (TinyLFU) admits a new entry into a full
/// cache only if it was asked for more often than what it would evict: a new calendar, card
/// note or snooze, never read yet, would be turned away.
fn newest_kept() -> moka::policy::EvictionPolicy {
    moka::policy::EvictionPolicy::lru()
}

fn live<T: Clone + Send + Sync + 'static>(cache: &Timed<T>, key: &str) -> Option<T> {
    cache
        .get(key)
        .filter(|(until, _)| *until > Instant::now())
        .map(|(_, v)| v)
}

/// Process memory: bounded, each kind of entry with its expiry.
pub struct MemoryStore {
    feedback: Mutex<FeedbackLog>,
    counts: Mutex<HashMap<String, i64>>,
    calendars: moka::sync::Cache<String, Arc<String>>,
    cards: Timed<CardNote>,
    snoozes: Timed<Snooze>,
    run_ahead: Timed<Arc<Vec<u8>>>,
    max_feedback: usize,
}

impl MemoryStore {
    pub fn new(calendar_ttl: Duration) -> Self {
        const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);
        MemoryStore {
            feedback: Mutex::new((Vec::new(), HashSet::new())),
            counts: Mutex::new(HashMap::new()),
            // One replica's working set; past it the least recently used go first. A deployment that needs
            // more keeps them in Redis.
            calendars: moka::sync::Cache::builder()
                .max_capacity(4 * MIB)
                .eviction_policy(newest_kept())
                .weigher(|k: &String, v: &Arc<String>| weight(k, v.len()))
                .time_to_live(calendar_ttl)
                .build(),
            cards: timed(4 * MIB, YEAR),
            snoozes: timed(8 * MIB, YEAR),
            run_ahead: timed(4 * MIB, Duration::from_secs(24 * 3600)),
            max_feedback: 100_000,
        }
    }

    /// Feedback stored so far (for tests).
    pub fn feedback(&self) -> Vec<(String, Feedback)> {
        self.feedback
            .lock()
            .map(|f| f.0.clone())
            .unwrap_or_default()
    }

    fn count(&self, fields: &[String]) -> Result<(), StoreError> {
        const MAX_FIELDS: usize = 100_000;
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned lock".into()))?;
        for f in fields {
            // Bounded: past the cap only fields already counted grow.
            if let Some(n) = counts.get_mut(f) {
                *n += 1;
            } else if counts.len() < MAX_FIELDS {
                counts.insert(f.clone(), 1);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn put_feedback(
        &self,
        service: &str,
        items: &[FeedbackItem<'_>],
    ) -> Result<Stored, StoreError> {
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
            if seen.insert(feedback_id(service, i.feedback)) {
                list.push((service.to_string(), i.feedback.clone()));
                self.count(&feedback_fields(i))?;
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

    async fn note_cards(
        &self,
        cards: &[(String, CardNote)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        for (uuid, note) in cards {
            if live(&self.cards, uuid).is_none() {
                self.cards
                    .insert(uuid.clone(), (Instant::now() + ttl, note.clone()));
                self.count(&shown_fields(note))?;
            }
        }
        Ok(())
    }

    async fn card_note(&self, uuid: &str) -> Result<Option<CardNote>, StoreError> {
        Ok(live(&self.cards, uuid))
    }

    async fn put_snooze(
        &self,
        patient: &str,
        rule: &str,
        snooze: &Snooze,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.snoozes.insert(
            snooze_key(patient, rule, snooze.kind),
            (Instant::now() + ttl, snooze.clone()),
        );
        Ok(())
    }

    async fn snoozes(&self, patient: &str, rules: &[&str]) -> Result<Vec<Vec<Snooze>>, StoreError> {
        Ok(rules
            .iter()
            .map(|r| {
                SnoozeKind::ALL
                    .iter()
                    .filter_map(|k| live(&self.snoozes, &snooze_key(patient, r, *k)))
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
        self.run_ahead.insert(
            key.to_string(),
            (Instant::now() + ttl, Arc::new(entry.to_vec())),
        );
        Ok(())
    }

    async fn run_ahead(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(live(&self.run_ahead, key).map(|e| e.as_ref().clone()))
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let counts = self
            .counts
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned lock".into()))?;
        let mut v: Counts = counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        Ok(v)
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_sealed_values_open_only_for_their_patient() {
        let a = PatientHasher::new(b"0123456789abcdef0123456789abcdef");
        let b = PatientHasher::new(b"another key, another deployment!");
        assert_eq!(a.hash("pt-1"), a.hash("pt-1"));
        assert_ne!(a.hash("pt-1"), a.hash("pt-2"));
        assert_ne!(a.hash("pt-1"), b.hash("pt-1"), "the secret matters");
        assert_eq!(a.hash("pt-1").len(), 32);

        let sealed = a.seal("pt-1", b"Patient/pt-1 cards").expect("seal");
        assert!(!String::from_utf8_lossy(&sealed).contains("pt-1"));
        assert_eq!(
            a.open("pt-1", &sealed).as_deref(),
            Some(&b"Patient/pt-1 cards"[..])
        );
        assert_eq!(a.open("pt-2", &sealed), None, "another patient");
        assert_eq!(b.open("pt-1", &sealed), None, "another secret");
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert_eq!(a.open("pt-1", &tampered), None);
        assert_eq!(a.open("pt-1", b"short"), None);
    }
}
