//! Patient facts the rules need: age on `today`, and the condition groups of active conditions
//! (and of an order's reasonCode). Lenient like everything that reads EHR data.

use super::fhir_read::{Coding, codings, date, one_or_many, str_field};
use super::json::Json;
use super::knowledge::{CodeSystem, Knowledge};
use chrono::{Datelike, NaiveDate};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatientFacts {
    /// Whole years on `today`; None when the Patient or its birthDate is missing.
    pub age_years: Option<u32>,
    /// Groups (cds-hooks/knowledge condition groups) of the patient's active conditions.
    pub condition_groups: BTreeSet<String>,
    /// Conditions read and skipped (not active, or unreadable), for metrics.
    pub conditions_read: usize,
}

impl PatientFacts {
    pub fn has(&self, group: &str) -> bool {
        self.condition_groups.contains(group)
    }
}

/// Whole years between `birth` and `today`.
pub fn age_on(birth: NaiveDate, today: NaiveDate) -> Option<u32> {
    let mut years = today.year() - birth.year();
    if (today.month(), today.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// The groups any of these codings belong to.
pub fn groups_of(kb: &Knowledge, codes: &[Coding]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in codes {
        let Some(system) = c.system.as_deref().and_then(CodeSystem::from_uri) else {
            continue;
        };
        for (name, group) in kb.condition_groups() {
            if group.contains(system, &c.code) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn first_code(v: Option<&Json>) -> Option<String> {
    codings(v).into_iter().next().map(|c| c.code)
}

/// A Condition counts when it is active (or its status is not given and it has not abated) and
/// has not been refuted or entered in error.
fn is_active(condition: &Json) -> bool {
    let verification = first_code(condition.get("verificationStatus"));
    if matches!(
        verification.as_deref(),
        Some("refuted" | "entered-in-error")
    ) {
        return false;
    }
    match first_code(condition.get("clinicalStatus")).as_deref() {
        Some("active" | "recurrence" | "relapse") => true,
        Some(_) => false,
        None => {
            condition.get("abatementDateTime").is_none_or(Json::is_null)
                && condition.get("abatementPeriod").is_none_or(Json::is_null)
        }
    }
}

/// Reads the Patient (any resource of that type among `resources`) and the active Conditions.
pub fn read_patient(kb: &Knowledge, resources: &[&Json], today: NaiveDate) -> PatientFacts {
    let mut facts = PatientFacts::default();
    for r in resources {
        match str_field(r, "resourceType") {
            Some("Patient") if facts.age_years.is_none() => {
                facts.age_years = date(r.get("birthDate")).and_then(|b| age_on(b, today));
            }
            Some("Condition") => {
                facts.conditions_read += 1;
                if is_active(r) {
                    let codes = codings(r.get("code"));
                    facts.condition_groups.extend(groups_of(kb, &codes));
                }
            }
            _ => {}
        }
    }
    facts
}

/// The codings of every CodeableConcept in a field (for reasonCode as object or array).
pub fn concept_codings(v: Option<&Json>) -> Vec<Coding> {
    one_or_many(v).flat_map(|c| codings(Some(c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn age_counts_whole_years() {
        assert_eq!(age_on(d("1961-11-23"), d("2026-11-23")), Some(65));
        assert_eq!(age_on(d("1961-11-24"), d("2026-11-23")), Some(64));
        assert_eq!(age_on(d("2030-01-01"), d("2026-11-23")), None);
    }

    #[test]
    fn active_conditions_only() {
        let kb = Knowledge::embedded().expect("kb");
        let copd = |status: Option<&str>, verification: Option<&str>| {
            let mut c = serde_json::json!({"resourceType": "Condition",
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J44.9"}]}});
            if let Some(s) = status {
                c["clinicalStatus"] = serde_json::json!({"coding": [{"code": s}]});
            }
            if let Some(v) = verification {
                c["verificationStatus"] = serde_json::json!({"coding": [{"code": v}]});
            }
            c
        };
        let today = d("2026-11-23");
        for (c, expected) in [
            (copd(Some("active"), None), true),
            (copd(None, None), true),
            (copd(Some("resolved"), None), false),
            (copd(Some("active"), Some("refuted")), false),
        ] {
            let f = read_patient(&kb, &[&crate::clinical::json::Json::from(&c)], today);
            assert_eq!(f.has("copd"), expected, "{c}");
        }
    }
}
