//! Synthetic patient histories shared by the benches.

use chrono::{Days, NaiveDate};
use serde_json::{Value, json};

const RX: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// Alprazolam, lorazepam, zolpidem, oxycodone, hydrocodone/APAP, fentanyl patch, and an
/// unclassified code, in the mix of a long outpatient record.
const CODES: [&str; 7] = [
    "308048", "197901", "854873", "1049621", "857002", "245134", "310965",
];

/// A history of `n` records: monthly dispenses, requests and statements spread over the years
/// before `today`, with realistic dosage instructions.
pub fn history(n: usize, today: NaiveDate) -> Value {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            let code = CODES[i % CODES.len()];
            let start = today - Days::new(((i * 37) % 3000) as u64);
            let med = json!({"coding": [{"system": RX, "code": code}]});
            let dosage = json!([{"timing": {"code": {"coding": [{"code": "BID"}]}},
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}]);
            let resource = match i % 3 {
                0 => json!({"resourceType": "MedicationDispense", "id": format!("hd{i}"),
                    "status": "completed", "medicationCodeableConcept": med,
                    "whenHandedOver": start.to_string(), "daysSupply": {"value": 30, "code": "d"},
                    "quantity": {"value": 60, "unit": "tablet"}, "dosageInstruction": dosage}),
                1 => json!({"resourceType": "MedicationRequest", "id": format!("hr{i}"),
                    "status": "active", "intent": "order", "medicationCodeableConcept": med,
                    "authoredOn": format!("{start}T10:00:00"), "dosageInstruction": dosage,
                    "dispenseRequest": {"quantity": {"value": 60, "unit": "tablet"}}}),
                _ => json!({"resourceType": "MedicationStatement", "id": format!("hs{i}"),
                    "status": "active", "medicationCodeableConcept": med,
                    "effectivePeriod": {"start": start.to_string()},
                    "dateAsserted": (start + Days::new(20)).to_string(), "dosage": dosage}),
            };
            json!({"resource": resource})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})
}
