//! What the clinician's answers change: feedback attributed to its card's rule and prescriber,
//! snoozes that keep an answered rule quiet, and run-ahead (order-select's result served at
//! order-sign). The store calls sit here, at the edge of the use case; the decisions are the
//! pure ones in [`crate::rules::quiet`].
//!
//! Every store failure here fails toward showing the card: a snooze that cannot be read is no
//! snooze, a run-ahead that cannot be read is computed again.

use super::Shown;
use crate::protocol::{Card, Feedback, Outcome as FeedbackOutcome};
use crate::rules::quiet::{RiskMark, Snooze, SnoozeKind, snooze_days, stays_quiet};
use crate::store::{
    CardNote, FeedbackItem, PatientHasher, Store, StoreError, StoreSettings, Stored, offered_reason,
};
use std::time::Duration;

const DAY: i64 = 24 * 3600;

/// The store, its settings and the patient-id hasher, as the handlers use them.
#[derive(Clone, Copy)]
pub struct Answers<'a> {
    pub store: &'a dyn Store,
    pub settings: &'a StoreSettings,
    pub hasher: &'a PatientHasher,
}

/// Cards with what each is about, in the same order; also what run-ahead keeps.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ShownCards {
    pub cards: Vec<Card>,
    pub shown: Vec<Shown>,
}

/// A label value from a bounded set, so a client cannot grow the metric's series.
fn rule_label(rule: &str) -> &'static str {
    match rule {
        "on-ramp" => "on-ramp",
        "off-ramp" => "off-ramp",
        "co-prescription" => "co-prescription",
        "opioid-gabapentinoid" => "opioid-gabapentinoid",
        _ => "unknown",
    }
}

/// When an answer was given: the client's outcomeTimestamp, never later than now (so a retry
/// writes the same snooze instead of extending it).
fn answered_at(fb: &Feedback, now: i64) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&fb.outcome_timestamp)
        .map(|t| t.timestamp().min(now))
        .unwrap_or(now)
}

/// Who a patient is for the store: the id within its issuer and tenant, so two hospitals
/// sharing a deployment never share a patient's snoozes or run-ahead.
pub fn patient_ref(iss: &str, tenant: Option<&str>, patient_id: &str) -> String {
    format!("{iss}\n{}\n{patient_id}", tenant.unwrap_or(""))
}

impl Answers<'_> {
    pub fn patient(&self, patient_ref: &str) -> String {
        self.hasher.hash(patient_ref)
    }

    /// The mark as stored: its signals (risk factors such as pregnancy or a substance use
    /// disorder, and drugs) keyed-hashed, so they are not readable in the store while the
    /// subset test of escalation still works.
    fn blind(&self, mark: &RiskMark) -> RiskMark {
        RiskMark {
            signals: mark.signals.iter().map(|s| self.hasher.hash(s)).collect(),
            ..mark.clone()
        }
    }

    /// Drops the cards whose rule is quiet for the patient; the rules dropped. A store failure
    /// keeps every card.
    pub async fn drop_quiet(
        &self,
        patient: &str,
        prescriber: Option<&str>,
        shown: &mut ShownCards,
        now: i64,
    ) -> Vec<String> {
        if shown.cards.is_empty() {
            return Vec::new();
        }
        let rules: Vec<&str> = shown.shown.iter().map(|s| s.rule.as_str()).collect();
        let snoozes = match self.store.snoozes(patient, &rules).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "snoozes unreadable; every card shown");
                metrics::counter!("offramp_snooze_read_errors_total").increment(1);
                return Vec::new();
            }
        };
        let keep: Vec<bool> = snoozes
            .iter()
            .zip(&shown.shown)
            .map(|(snoozes, s)| {
                let mark = self.blind(&s.mark);
                let Some(z) = snoozes
                    .iter()
                    .find(|z| stays_quiet(&mark, z, now, prescriber))
                else {
                    return true;
                };
                metrics::counter!("offramp_cards_quiet_total",
                    "rule" => rule_label(&s.rule), "kind" => z.kind.as_str())
                .increment(1);
                false
            })
            .collect();
        let pairs = std::mem::take(&mut shown.cards)
            .into_iter()
            .zip(std::mem::take(&mut shown.shown));
        let mut dropped = Vec::new();
        (shown.cards, shown.shown) = pairs
            .zip(keep.into_iter().chain(std::iter::repeat(true)))
            .filter_map(|(pair, keep)| {
                if !keep {
                    dropped.push(pair.1.rule.clone());
                }
                keep.then_some(pair)
            })
            .unzip();
        dropped
    }

    /// Remembers the cards being shown, so their feedback can be attributed and counted.
    pub async fn note_shown(&self, patient: &str, prescriber: Option<&str>, shown: &ShownCards) {
        let notes: Vec<(String, CardNote)> = shown
            .cards
            .iter()
            .zip(&shown.shown)
            .map(|(c, s)| {
                (
                    c.uuid.clone(),
                    CardNote {
                        rule: s.rule.clone(),
                        patient: patient.to_string(),
                        prescriber: prescriber.map(str::to_string),
                        mark: self.blind(&s.mark),
                    },
                )
            })
            .collect();
        for (c, s) in shown.cards.iter().zip(&shown.shown) {
            metrics::counter!("offramp_cards_shown_total", "rule" => rule_label(&s.rule),
                "indicator" => c.indicator.as_str())
            .increment(1);
        }
        let ttl = Duration::from_secs(u64::from(self.settings.card_log_days) * DAY as u64);
        if let Err(e) = self.store.note_cards(&notes, ttl).await {
            // The cards are right; their later feedback will count as "unknown" rule.
            tracing::warn!(error = %e, "shown cards not noted");
        }
    }

    /// Records feedback: each item attributed to its card, snoozing the rule when it was
    /// answered. Ok only once every item is stored; any failure is the client's to retry, and
    /// a retry repeats only idempotent steps.
    pub async fn record_feedback(
        &self,
        service: &str,
        items: &[Feedback],
        now: i64,
    ) -> Result<Stored, StoreError> {
        let mut total = Stored::default();
        for fb in items {
            let note = self.store.card_note(&fb.card).await?;
            // The snooze is written first: if the feedback write then fails, the retry writes
            // the same snooze again, whereas the other order would lose it.
            if let Some(note) = &note {
                self.snooze(note, fb, now).await?;
            }
            let rule = note.as_ref().map_or("unknown", |n| n.rule.as_str());
            let prescriber = note
                .as_ref()
                .and_then(|n| n.prescriber.as_deref())
                .unwrap_or("unknown");
            let stored = self
                .store
                .put_feedback(
                    service,
                    &[FeedbackItem {
                        feedback: fb,
                        rule,
                        prescriber,
                    }],
                )
                .await?;
            crate::audit::feedback(&crate::audit::FeedbackEvent {
                service,
                card: &fb.card,
                rule,
                outcome: fb.outcome.as_str(),
                override_reason: offered_reason(fb),
                patient: note.as_ref().map_or("", |n| n.patient.as_str()),
                prescriber,
                new: stored.new > 0,
            });
            if stored.new > 0 {
                metrics::counter!("offramp_card_feedback_total", "rule" => rule_label(rule),
                    "outcome" => fb.outcome.as_str())
                .increment(1);
                if let Some(reason) = offered_reason(fb) {
                    metrics::counter!("offramp_card_override_reasons_total",
                        "rule" => rule_label(rule), "reason" => reason.to_string())
                    .increment(1);
                }
            }
            total.new += stored.new;
            total.duplicates += stored.duplicates;
        }
        Ok(total)
    }

    /// Any answer quiets the rule for the rest of the session; an override with a reason also
    /// for the snooze period.
    async fn snooze(&self, note: &CardNote, fb: &Feedback, now: i64) -> Result<(), StoreError> {
        let mut snoozes = vec![(
            SnoozeKind::Answered,
            i64::try_from(self.settings.answered_quiet_seconds).unwrap_or(DAY),
        )];
        // Only a reason the card offered snoozes (another system's code may mean anything).
        let offered = offered_reason(fb).is_some_and(|r| r != "other");
        if fb.outcome == FeedbackOutcome::Overridden && offered {
            let days = snooze_days(&note.mark, self.settings.snooze_days);
            snoozes.push((SnoozeKind::Overridden, i64::from(days) * DAY));
        }
        let at = answered_at(fb, now);
        for (kind, seconds) in snoozes.into_iter().filter(|(_, s)| *s > 0) {
            let until = at + seconds;
            if until <= now {
                continue;
            }
            let snooze = Snooze {
                kind,
                mark: note.mark.clone(),
                until,
                by: note.prescriber.clone(),
            };
            let ttl = Duration::from_secs((until - now).unsigned_abs());
            self.store
                .put_snooze(&note.patient, &note.rule, &snooze, ttl)
                .await?;
        }
        Ok(())
    }

    /// The order-select result for these drafts, if still kept. Unreadable means computed again.
    pub async fn run_ahead(&self, patient_id: &str, key: &str) -> Option<ShownCards> {
        let found = match self.store.run_ahead(key).await {
            Ok(Some(sealed)) => self
                .hasher
                .open(patient_id, &sealed)
                .and_then(|plain| serde_json::from_slice(&plain).ok()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "run-ahead unreadable; computing");
                None
            }
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("offramp_run_ahead_total", "result" => result).increment(1);
        found
    }

    /// Keeps an order-select result, encrypted: its cards name the patient.
    pub async fn keep_run_ahead(&self, patient_id: &str, key: &str, shown: &ShownCards) {
        let ttl = Duration::from_secs(self.settings.run_ahead_seconds);
        let sealed = serde_json::to_vec(shown)
            .ok()
            .and_then(|plain| self.hasher.seal(patient_id, &plain));
        let stored = match sealed {
            Some(entry) => self.store.put_run_ahead(key, &entry, ttl).await,
            None => Err(StoreError::Unavailable("run-ahead not sealed".into())),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "run-ahead not kept");
        }
    }
}
