//! When a finding stays quiet because the clinician already answered it (clinical-rules.md, rule
//! 7). Pure: the caller loads the snoozes and passes the time in.
//!
//! A card remembers a [`RiskMark`]; a snooze keeps the mark of the card that was answered. A
//! later finding of the same rule for the same patient is quiet only while its risk has not
//! escalated past that mark.

use super::{Draft, Finding, RiskReason, Severity};
use crate::clinical::DrugClass;
use crate::clinical::knowledge::Knowledge;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A dose rise of more than this fraction over the snoozed dose is an escalation.
const DOSE_RISE: f64 = 0.10;

/// With an opioid, reassess at least every 3 months (CDC 2022 Rec 7), whatever the
/// configured snooze.
pub const OPIOID_REASSESS_DAYS: u32 = 90;

/// What a card said about risk, enough to tell later whether it escalated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskMark {
    /// 0 info, 1 warning, 2 critical.
    pub level: u8,
    /// Risk factors and drug ingredients named; a new one is an escalation.
    pub signals: BTreeSet<String>,
    /// MME for opioid rules, diazepam-equivalent mg for the off-ramp.
    pub dose: Option<f64>,
    /// An opioid is part of the finding: reassess at each opioid renewal, at least every 3 months.
    pub with_opioid: bool,
    /// The card offers naloxone, which is never snoozed.
    pub naloxone_missing: bool,
    /// One of this request's drafts is an opioid (a renewal or a start).
    pub opioid_ordered: bool,
}

/// Why a card is quiet now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnoozeKind {
    /// Overridden with a reason: quiet for the configured period.
    Overridden,
    /// Accepted or overridden moments ago: quiet for the rest of the ordering session, so
    /// order-sign does not repeat what order-select showed.
    Answered,
}

impl SnoozeKind {
    pub const ALL: [SnoozeKind; 2] = [SnoozeKind::Overridden, SnoozeKind::Answered];

    pub fn as_str(self) -> &'static str {
        match self {
            SnoozeKind::Overridden => "overridden",
            SnoozeKind::Answered => "answered",
        }
    }
}

/// A rule made quiet for one patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snooze {
    pub kind: SnoozeKind,
    pub mark: RiskMark,
    /// Unix seconds.
    pub until: i64,
    /// Who answered: the session quiet is theirs only; another clinician sees the card.
    #[serde(default)]
    pub by: Option<String>,
}

fn ingredients_of(kb: &Knowledge, products: &[crate::clinical::RxCui]) -> Vec<String> {
    products
        .iter()
        .flat_map(|r| match kb.medication(*r) {
            Some(m) => m.ingredients.iter().map(|i| i.ingredient).collect(),
            None => vec![*r],
        })
        .map(|r| format!("drug:{r}"))
        .collect()
}

/// A risk reason as signals: its name, and for a third CNS drug each drug (another drug is
/// another risk).
fn reason_signals(r: &RiskReason) -> Vec<String> {
    let s = serde_json::to_value(r).ok();
    let name = s
        .as_ref()
        .and_then(|v| v.get("reason"))
        .and_then(|v| v.as_str())
        .unwrap_or("other");
    let mut out = vec![format!("risk:{name}")];
    if let RiskReason::ThirdCnsDrug(drugs) = r {
        out.extend(drugs.iter().map(|d| format!("cns:{d}")));
    }
    out
}

/// The mark of a finding, given the request's drafts.
pub fn mark(kb: &Knowledge, f: &Finding, drafts: &[Draft<'_>]) -> RiskMark {
    let opioid_ordered = drafts.iter().any(|d| {
        d.selected
            && d.medication
                .is_some_and(|m| m.class == DrugClass::OpioidAnalgesic)
    });
    let mut signals = BTreeSet::new();
    let mut m = RiskMark {
        level: 1,
        signals: BTreeSet::new(),
        dose: None,
        with_opioid: false,
        naloxone_missing: false,
        opioid_ordered,
    };
    match f {
        Finding::OnRamp(x) => {
            m.level = 0;
            signals.extend(ingredients_of(kb, &x.medications));
            if x.older_adult {
                signals.insert("risk:older-adult".into());
            }
            if x.long_course {
                signals.insert("risk:long-course".into());
            }
        }
        Finding::OffRamp(x) => {
            signals.extend(x.uses.iter().map(|u| format!("drug:{}", u.ingredient)));
            if x.older_adult {
                signals.insert("risk:older-adult".into());
            }
            if x.with_opioid {
                signals.insert("risk:with-opioid".into());
            }
            if x.regular {
                signals.insert("risk:regular-use".into());
            }
            m.dose = x.diazepam_mg.map(|(_, hi)| hi);
            m.with_opioid = x.with_opioid;
        }
        Finding::CoPrescription(x) => {
            m.level = match x.severity {
                Severity::Warning => 1,
                Severity::Critical => 2,
            };
            signals.extend(x.reasons.iter().flat_map(reason_signals));
            signals.extend(
                x.opioids
                    .iter()
                    .chain(&x.bzras)
                    .map(|r| format!("drug:{r}")),
            );
            m.dose = x.mme;
            m.with_opioid = true;
            m.naloxone_missing = !x.naloxone_on_hand;
        }
        Finding::OpioidGabapentinoid(x) => {
            signals.insert("risk:older-adult".into());
            let products: Vec<crate::clinical::RxCui> = x
                .drafts
                .iter()
                .filter_map(|i| drafts.get(*i)?.medication.map(|m| m.rxcui))
                .collect();
            signals.extend(ingredients_of(kb, &products));
            m.with_opioid = true;
            // The card always offers naloxone (it does not know whether some is on hand).
            m.naloxone_missing = true;
        }
    }
    m.signals = signals;
    m
}

/// Whether `now` carries more risk than the answered `then`: a higher level, a risk factor or
/// drug not named then, or a dose more than 10% higher.
pub fn escalates(now: &RiskMark, then: &RiskMark) -> bool {
    let dose_rose = match (now.dose, then.dose) {
        (Some(n), Some(t)) => n > t * (1.0 + DOSE_RISE),
        // A dose unknown when answered cannot vouch for the one known now.
        (Some(_), None) => true,
        (None, _) => false,
    };
    now.level > then.level || !now.signals.is_subset(&then.signals) || dose_rose
}

/// Whether a finding with mark `now`, for `prescriber`, stays quiet under `snooze` at time
/// `now_unix`. A missing naloxone prompt is never quiet; an opioid order ends an override's
/// snooze (reassess at each renewal); the session quiet is the answering clinician's only.
pub fn stays_quiet(
    now: &RiskMark,
    snooze: &Snooze,
    now_unix: i64,
    prescriber: Option<&str>,
) -> bool {
    if now_unix >= snooze.until || escalates(now, &snooze.mark) || now.naloxone_missing {
        return false;
    }
    match snooze.kind {
        SnoozeKind::Answered => snooze.by.as_deref() == prescriber,
        SnoozeKind::Overridden => !now.opioid_ordered,
    }
}

/// How long an override with a reason keeps a rule quiet: the configured period, at most 3
/// months when an opioid is involved.
pub fn snooze_days(mark: &RiskMark, configured_days: u32) -> u32 {
    if mark.with_opioid {
        configured_days.min(OPIOID_REASSESS_DAYS)
    } else {
        configured_days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(level: u8, signals: &[&str], dose: Option<f64>) -> RiskMark {
        RiskMark {
            level,
            signals: signals.iter().map(|s| s.to_string()).collect(),
            dose,
            with_opioid: false,
            naloxone_missing: false,
            opioid_ordered: false,
        }
    }

    fn snooze(kind: SnoozeKind, mark: RiskMark) -> Snooze {
        Snooze {
            kind,
            mark,
            until: 1000,
            by: Some("dr".into()),
        }
    }

    const DR: Option<&str> = Some("dr");

    #[test]
    fn the_same_or_less_risk_stays_quiet_until_the_end() {
        let then = m(2, &["drug:1", "risk:older-adult"], Some(60.0));
        let s = snooze(SnoozeKind::Overridden, then.clone());
        assert!(stays_quiet(&then, &s, 999, None));
        assert!(stays_quiet(&m(1, &["drug:1"], Some(40.0)), &s, 10, DR));
        assert!(stays_quiet(&m(2, &["drug:1"], Some(66.0)), &s, 10, DR));
        assert!(!stays_quiet(&then, &s, 1000, DR), "expired");
    }

    #[test]
    fn escalation_ends_the_quiet() {
        let then = m(1, &["drug:1"], Some(40.0));
        let s = snooze(SnoozeKind::Answered, then);
        let quiet = |now: RiskMark| stays_quiet(&now, &s, 0, DR);
        assert!(!quiet(m(2, &["drug:1"], Some(40.0))), "level");
        assert!(
            !quiet(m(1, &["drug:1", "risk:prior-overdose"], Some(40.0))),
            "new risk factor"
        );
        assert!(!quiet(m(1, &["drug:2"], Some(40.0))), "new drug");
        assert!(!quiet(m(1, &["drug:1"], Some(44.5))), "dose +11%");
        assert!(quiet(m(1, &["drug:1"], Some(44.0))), "dose +10%");
        assert!(quiet(m(1, &["drug:1"], None)), "dose unknown now");
        let unknown_then = snooze(SnoozeKind::Answered, m(1, &["drug:1"], None));
        assert!(
            !stays_quiet(&m(1, &["drug:1"], Some(5.0)), &unknown_then, 0, DR),
            "dose newly known"
        );
    }

    #[test]
    fn naloxone_is_never_quiet_and_an_opioid_order_ends_an_override() {
        let then = m(1, &["drug:1"], None);
        let mut naloxone = then.clone();
        naloxone.naloxone_missing = true;
        for kind in SnoozeKind::ALL {
            assert!(!stays_quiet(&naloxone, &snooze(kind, then.clone()), 0, DR));
        }
        let mut renewal = then.clone();
        renewal.opioid_ordered = true;
        let overridden = snooze(SnoozeKind::Overridden, then.clone());
        assert!(!stays_quiet(&renewal, &overridden, 0, DR));
        assert!(stays_quiet(&then, &overridden, 0, DR));
        // The session quiet covers the same orders being signed, opioid or not.
        assert!(stays_quiet(
            &renewal,
            &snooze(SnoozeKind::Answered, then),
            0,
            DR
        ));
    }

    #[test]
    fn the_session_quiet_is_the_answering_clinicians_only() {
        let then = m(1, &["drug:1"], None);
        let s = snooze(SnoozeKind::Answered, then.clone());
        assert!(stays_quiet(&then, &s, 0, DR));
        assert!(!stays_quiet(&then, &s, 0, Some("another")));
        assert!(!stays_quiet(&then, &s, 0, None));
        let o = snooze(SnoozeKind::Overridden, then.clone());
        assert!(
            stays_quiet(&then, &o, 0, Some("another")),
            "an override is the patient's"
        );
    }

    #[test]
    fn opioid_snoozes_last_at_most_three_months() {
        let mut mark = m(1, &[], None);
        assert_eq!(snooze_days(&mark, 180), 180);
        mark.with_opioid = true;
        assert_eq!(snooze_days(&mark, 180), 90);
        assert_eq!(snooze_days(&mark, 30), 30);
    }
}
