//! Every resource a suggestion creates or updates must be one the EHR can store: each parses with
//! fhir-sdk's strict R4B model (wire-compatible with R4 for these resource types).

use chrono::NaiveDate;
use fhir_sdk::r4b::resources::Resource;
use offramp::clinical::Knowledge;
use offramp::hooks::evaluate_request;
use offramp::protocol::{CdsRequest, Discovery};
use std::path::Path;

#[test]
fn every_suggested_resource_parses_strictly() {
    let kb = Knowledge::embedded().expect("kb");
    let d = Discovery::embedded().expect("catalogue");
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cds-hooks/examples/requests");
    let mut checked = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        let path = e.expect("entry").path();
        let name = path.to_string_lossy().to_string();
        if !name.ends_with(".json") || name.ends_with(".expected.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let req: CdsRequest<'_> = serde_json::from_str(&text).expect("request");
        let out = evaluate_request(&kb, &d, &format!("offramp-{}", req.hook), &req, today)
            .expect("evaluate");
        for card in &out.response.cards {
            for s in &card.suggestions {
                for a in &s.actions {
                    let Some(r) = &a.resource else { continue };
                    let parsed: Result<Resource, _> = serde_json::from_value(r.clone());
                    assert!(
                        parsed.is_ok(),
                        "{name}: {}: {:?}\n{}",
                        s.label,
                        parsed.err(),
                        serde_json::to_string_pretty(r).unwrap_or_default()
                    );
                    kinds.insert(r["resourceType"].as_str().unwrap_or_default().to_string());
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 10, "{checked} resources checked");
    assert!(
        kinds.contains("MedicationRequest") && kinds.contains("ServiceRequest"),
        "{kinds:?}"
    );
}

#[test]
fn the_strict_parser_rejects_what_real_clients_send() {
    // The draft as the example EHR sends it (doseAndRate as an object, authoredOn without a
    // zone) is not valid R4: the check above would catch it if a suggestion echoed it unchanged.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cds-hooks/examples/requests/order-sign-new-benzo-start.json");
    let text = std::fs::read_to_string(path).expect("read");
    let req: CdsRequest<'_> = serde_json::from_str(&text).expect("request");
    let raw = req.context["draftOrders"]["entry"][0]["resource"].clone();
    assert!(serde_json::from_value::<Resource>(raw.clone()).is_err());
    let mut fixed = raw;
    offramp::cards::resources::normalise_medication_request(&mut fixed);
    assert!(serde_json::from_value::<Resource>(fixed).is_ok());
}
