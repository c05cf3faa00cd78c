//! MedicationRequest, MedicationDispense and MedicationStatement read leniently into one shape,
//! and the medication they name resolved against the knowledge base.

use super::codes::RxCui;
use super::dose::{Amount, Dosage, read_dosage};
use super::fhir_read::{
    Coding, codings, codings_of_many, date, duration_days, one_or_many, str_field,
};
use super::json::Json;
use super::knowledge::{Knowledge, Medication, TermType};
use chrono::NaiveDate;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Request,
    Dispense,
    Statement,
}

/// Status, normalised across the three resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    Active,
    Completed,
    Stopped,
    OnHold,
    /// cancelled, entered-in-error, declined, not-taken, draft, intended ...: covers nothing.
    Void,
    Unknown,
}

impl RecordStatus {
    fn parse(kind: RecordKind, s: Option<&str>) -> Self {
        match (kind, s.unwrap_or("unknown")) {
            // A dispense being prepared, or halted before hand-over, gave the patient nothing.
            (RecordKind::Dispense, "preparation" | "stopped" | "declined") => Self::Void,
            (_, "active" | "in-progress") => Self::Active,
            (_, "completed") => Self::Completed,
            (_, "stopped") => Self::Stopped,
            (_, "on-hold") => Self::OnHold,
            (
                _,
                "cancelled" | "entered-in-error" | "declined" | "not-taken" | "draft" | "intended",
            ) => Self::Void,
            _ => Self::Unknown,
        }
    }
}

/// The medication as the record names it: codings (from the concept, or from the referenced
/// Medication) and whether a reference could not be followed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MedicationCodes {
    pub codings: Vec<Coding>,
    /// Codings of Medication.ingredient, tried when the product code is unknown.
    pub ingredient_codings: Vec<Coding>,
    pub unresolved_reference: bool,
}

/// One medication record, reduced to what exposure and the rules need.
#[derive(Debug, Clone, PartialEq)]
pub struct MedicationRecord {
    pub kind: RecordKind,
    pub id: Option<String>,
    pub status: RecordStatus,
    pub medication: MedicationCodes,
    /// When the record starts: whenHandedOver, authoredOn, effective start.
    pub start: Option<NaiveDate>,
    /// An explicit end: effectivePeriod.end, dosage bounds end; for a stopped statement
    /// without one, dateAsserted.
    pub end: Option<NaiveDate>,
    /// daysSupply, expectedSupplyDuration, or the dosage's boundsDuration.
    pub supply_days: Option<f64>,
    pub quantity: Option<Amount>,
    pub dosage: Option<Dosage>,
    /// MedicationRequest.category codes (inpatient, outpatient, community, discharge).
    pub category: Vec<String>,
    /// Who prescribed: MedicationRequest.requester (a statement's informationSource).
    pub prescriber: Option<String>,
    /// The order a dispense fills (authorizingPrescription), to find its prescriber.
    pub prescription: Option<String>,
    pub reason_codes: Vec<Coding>,
}

/// Why a resource was skipped: counted, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotAnObject,
    NotAMedicationRecord,
}

/// Medication resources found elsewhere in the record (a Bundle, prefetch), by id.
#[derive(Debug, Clone, Default)]
pub struct MedicationIndex {
    by_id: HashMap<String, MedicationCodes>,
}

impl MedicationIndex {
    pub fn insert(&mut self, medication: &Json) {
        if let Some(id) = str_field(medication, "id") {
            self.by_id
                .insert(id.to_string(), medication_codes(medication));
        }
    }

    fn get(&self, reference: &str) -> Option<&MedicationCodes> {
        self.by_id.get(medication_ref_id(reference)?)
    }
}

/// The id a Medication reference names: relative ("Medication/1"), absolute
/// ("https://ehr/fhir/Medication/1") or versioned ("…/Medication/1/_history/2").
pub fn medication_ref_id(reference: &str) -> Option<&str> {
    let id = match reference.rsplit_once("/Medication/") {
        Some((_, id)) => id,
        None => reference.strip_prefix("Medication/")?,
    };
    id.split("/_history").next()
}

fn medication_codes(medication: &Json) -> MedicationCodes {
    MedicationCodes {
        codings: codings(medication.get("code")),
        ingredient_codings: one_or_many(medication.get("ingredient"))
            .flat_map(|i| codings(i.get("itemCodeableConcept")))
            .collect(),
        unresolved_reference: false,
    }
}

fn read_medication(resource: &Json, index: &MedicationIndex) -> MedicationCodes {
    if let Some(concept) = resource
        .get("medicationCodeableConcept")
        .filter(|v| !v.is_null())
    {
        return MedicationCodes {
            codings: codings(Some(concept)),
            ..Default::default()
        };
    }
    let Some(reference) = resource
        .get("medicationReference")
        .and_then(|r| str_field(r, "reference"))
    else {
        return MedicationCodes::default();
    };
    if let Some(local) = reference.strip_prefix('#') {
        let contained = one_or_many(resource.get("contained")).find(|c| {
            str_field(c, "resourceType") == Some("Medication") && str_field(c, "id") == Some(local)
        });
        if let Some(m) = contained {
            return medication_codes(m);
        }
    } else if let Some(found) = index.get(reference) {
        return found.clone();
    }
    MedicationCodes {
        unresolved_reference: true,
        ..Default::default()
    }
}

fn reference(v: Option<&Json>) -> Option<String> {
    one_or_many(v)
        .find_map(|r| str_field(r, "reference"))
        .map(str::to_string)
}

/// Reads one resource; anything but the three medication record types is skipped.
pub fn read_record(
    resource: &Json,
    index: &MedicationIndex,
) -> Result<MedicationRecord, SkipReason> {
    if !resource.is_object() {
        return Err(SkipReason::NotAnObject);
    }
    let kind = match str_field(resource, "resourceType") {
        Some("MedicationRequest") => RecordKind::Request,
        Some("MedicationDispense") => RecordKind::Dispense,
        Some("MedicationStatement") => RecordKind::Statement,
        _ => return Err(SkipReason::NotAMedicationRecord),
    };
    let status = RecordStatus::parse(kind, str_field(resource, "status"));
    let medication = read_medication(resource, index);
    let dosage_field = match kind {
        RecordKind::Statement => resource.get("dosage"),
        _ => resource.get("dosageInstruction"),
    };
    let dosage = read_dosage(dosage_field);
    let bounds_days = dosage.as_ref().and_then(|d| d.bounds_days);
    let bounds_end = dosage.as_ref().and_then(|d| d.bounds_end);
    let (start, mut end, supply_days, quantity, prescriber) = match kind {
        RecordKind::Dispense => (
            date(resource.get("whenHandedOver")).or_else(|| date(resource.get("whenPrepared"))),
            None,
            duration_days(resource.get("daysSupply")),
            Amount::from_quantity(resource.get("quantity")),
            None,
        ),
        RecordKind::Request => {
            let dr = resource.get("dispenseRequest");
            (
                date(resource.get("authoredOn")),
                bounds_end,
                dr.and_then(|d| duration_days(d.get("expectedSupplyDuration")))
                    .or(bounds_days),
                dr.and_then(|d| Amount::from_quantity(d.get("quantity"))),
                reference(resource.get("requester")),
            )
        }
        RecordKind::Statement => {
            let period = resource.get("effectivePeriod");
            let start = period
                .and_then(|p| date(p.get("start")))
                .or_else(|| date(resource.get("effectiveDateTime")));
            (
                start,
                period.and_then(|p| date(p.get("end"))).or(bounds_end),
                bounds_days,
                None,
                reference(resource.get("informationSource")),
            )
        }
    };
    if kind == RecordKind::Statement && end.is_none() {
        // A statement reports use as of when it was asserted; an open period is not a promise.
        end = date(resource.get("dateAsserted")).filter(|_| status != RecordStatus::Unknown);
    }
    let category = one_or_many(resource.get("category"))
        .flat_map(|c| codings(Some(c)))
        .map(|c| c.code)
        .collect();
    let reason_codes = codings_of_many(resource.get("reasonCode"));
    Ok(MedicationRecord {
        kind,
        id: str_field(resource, "id").map(str::to_string),
        status,
        medication,
        start,
        end,
        supply_days,
        quantity,
        dosage,
        category,
        prescriber,
        prescription: reference(resource.get("authorizingPrescription")),
        reason_codes,
    })
}

const RXNORM_SYSTEMS: [&str; 3] = [
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "https://www.nlm.nih.gov/research/umls/rxnorm",
    "urn:oid:2.16.840.1.113883.6.88",
];

fn is_rxnorm(c: &Coding) -> bool {
    c.system.as_deref().is_some_and(|s| {
        // The spelling nearly every record uses, before the case-blind comparisons.
        s == RXNORM_SYSTEMS[0]
            || RXNORM_SYSTEMS
                .iter()
                .any(|r| s.trim_end_matches('/').eq_ignore_ascii_case(r))
    })
}

/// Finds the medication in the knowledge base: any RxNorm coding among several; a product code
/// wins over an ingredient-level one; Medication.ingredient codes are the last resort. Unknown
/// codes resolve to None ("unclassified"), never an error.
pub fn resolve<'k>(kb: &'k Knowledge, codes: &MedicationCodes) -> Option<&'k Medication> {
    // Called for every record more than once: no allocation.
    fn known<'a, 'k>(
        kb: &'k Knowledge,
        list: &'a [Coding],
    ) -> impl Iterator<Item = &'k Medication> + use<'a, 'k> {
        list.iter()
            .filter(|c| is_rxnorm(c))
            .filter_map(|c| RxCui::parse(&c.code))
            .filter_map(move |r| kb.medication(r))
    }
    let mut first = None;
    for m in known(kb, &codes.codings) {
        if m.tty != TermType::Ingredient {
            return Some(m);
        }
        first = first.or(Some(m));
    }
    first.or_else(|| known(kb, &codes.ingredient_codings).next())
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The readers take the borrowed tree; tests write serde_json literals.
    macro_rules! json {
        ($($t:tt)+) => {
            Json::from(&serde_json::json!($($t)+))
        };
    }

    #[test]
    fn skips_what_is_not_a_medication_record() {
        let idx = MedicationIndex::default();
        assert_eq!(read_record(&json!("x"), &idx), Err(SkipReason::NotAnObject));
        assert_eq!(
            read_record(&json!({"resourceType": "Condition"}), &idx),
            Err(SkipReason::NotAMedicationRecord)
        );
    }

    #[test]
    fn statement_ends_at_period_end_or_when_asserted() {
        let idx = MedicationIndex::default();
        let r = read_record(
            &json!({"resourceType": "MedicationStatement", "status": "stopped",
                "effectivePeriod": {"start": "2024-01-01", "end": "2024-02-01T00:00:00"}}),
            &idx,
        )
        .expect("record");
        assert_eq!(r.end, NaiveDate::from_ymd_opt(2024, 2, 1));
        let r = read_record(
            &json!({"resourceType": "MedicationStatement", "status": "active",
                "effectiveDateTime": "2024-01-01", "dateAsserted": "2024-03-01"}),
            &idx,
        )
        .expect("record");
        assert_eq!(r.start, NaiveDate::from_ymd_opt(2024, 1, 1));
        assert_eq!(r.end, NaiveDate::from_ymd_opt(2024, 3, 1));
    }

    #[test]
    fn follows_absolute_references() {
        let mut idx = MedicationIndex::default();
        idx.insert(&json!({"resourceType": "Medication", "id": "m1",
            "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197321"}]}}));
        let r = read_record(
            &json!({"resourceType": "MedicationRequest", "status": "active",
                "medicationReference": {"reference": "https://ehr.example/fhir/Medication/m1/_history/2"}}),
            &idx,
        )
        .expect("record");
        assert_eq!(r.medication.codings.len(), 1);
        assert!(!r.medication.unresolved_reference);
        for found in ["Medication/m1", "Medication/m1/_history/2"] {
            assert_eq!(medication_ref_id(found), Some("m1"));
            assert!(idx.get(found).is_some(), "{found}");
        }
        for other in ["#m1", "Substance/m1", "OtherMedication/m1"] {
            assert!(idx.get(other).is_none(), "{other}");
        }
        let r = read_record(
            &json!({"resourceType": "MedicationRequest", "medicationReference": {"reference": "Medication/zz"}}),
            &idx,
        )
        .expect("record");
        assert!(r.medication.unresolved_reference);
    }
}
