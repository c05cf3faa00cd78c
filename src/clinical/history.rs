//! A patient's medication history from whatever shape the EHR sends: a Bundle (searchset or
//! collection), an array of resources, or single resources. Each resource is read on its own;
//! one that cannot be read is counted and skipped, never fatal.

use super::fhir_read::{one_or_many, str_field};
use super::json::Json;
use super::record::{MedicationIndex, MedicationRecord, SkipReason, read_record};

#[derive(Debug, Clone, Default)]
pub struct History {
    pub records: Vec<MedicationRecord>,
    /// Medication records that could not be read at all.
    pub skipped: usize,
    /// Resources of other types (Patient, Condition, Medication ...), left to other readers.
    pub other: usize,
}

/// Every resource in `v`: a Bundle's entries, an array's items, or `v` itself.
pub fn resources<'v, 'a>(v: &'v Json<'a>) -> Vec<&'v Json<'a>> {
    match v {
        Json::Array(items) => items.iter().flat_map(resources).collect(),
        Json::Object(_) if str_field(v, "resourceType") == Some("Bundle") => {
            one_or_many(v.get("entry"))
                .filter_map(|e| e.get("resource"))
                .flat_map(resources)
                .collect()
        }
        // Anything else is passed on, so a malformed entry is counted rather than lost silently.
        _ => vec![v],
    }
}

/// Reads the medication records of all `sources` (Medication resources in any of them can be
/// referenced from any other).
pub fn read_history(sources: &[&Json]) -> History {
    let all: Vec<&Json> = sources.iter().flat_map(|s| resources(s)).collect();
    let mut index = MedicationIndex::default();
    for r in &all {
        if str_field(r, "resourceType") == Some("Medication") {
            index.insert(r);
        }
    }
    let mut h = History::default();
    for r in all {
        match read_record(r, &index) {
            Ok(rec) => h.records.push(rec),
            Err(SkipReason::NotAMedicationRecord) => h.other += 1,
            Err(SkipReason::NotAnObject) => h.skipped += 1,
        }
    }
    h
}
