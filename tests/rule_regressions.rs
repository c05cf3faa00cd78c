//! Regressions for clinical-logic defects found in review: each builds a variant of an example
//! request and checks what the spec (clinical-rules.md) requires.

use chrono::NaiveDate;
use offramp::clinical::Knowledge;
use offramp::hooks::evaluate_request;
use offramp::protocol::{ActionType, CdsRequest, CdsResponse, Discovery, Indicator};
use serde_json::{Value, json};

const RX: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

fn example(name: &str) -> Value {
    let path = format!(
        "{}/cds-hooks/examples/requests/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("json")
}

fn run(v: &Value) -> CdsResponse {
    let req = CdsRequest::from_value(v).expect("request");
    let kb = Knowledge::embedded().expect("kb");
    let d = Discovery::embedded().expect("catalogue");
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    evaluate_request(&kb, &d, &format!("offramp-{}", req.hook), &req, today)
        .expect("evaluates")
        .response
}

fn med(code: &str) -> Value {
    json!({"coding": [{"system": RX, "code": code}]})
}

fn set_draft_med(v: &mut Value, code: &str) {
    v["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = med(code);
}

fn push(v: &mut Value, prefetch_key: &str, resource: Value) {
    v["prefetch"][prefetch_key]["entry"]
        .as_array_mut()
        .expect("entries")
        .push(json!({"resource": resource}));
}

fn condition(system: &str, code: &str) -> Value {
    json!({"resourceType": "Condition", "clinicalStatus": {"coding": [{"code": "active"}]},
           "code": {"coding": [{"system": system, "code": code}]}})
}

fn dispense(code: &str, date: &str, qty: u32, days: u32, timing: &str, dose: f64) -> Value {
    json!({"resourceType": "MedicationDispense", "status": "completed", "medicationCodeableConcept": med(code),
           "whenHandedOver": date, "quantity": {"value": qty, "unit": "tablet"}, "daysSupply": {"value": days, "code": "d"},
           "dosageInstruction": [{"timing": {"code": {"coding": [{"code": timing}]}},
                                  "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "tablet"}}]}]})
}

fn deletes(resp: &CdsResponse) -> Vec<String> {
    resp.cards
        .iter()
        .flat_map(|c| &c.suggestions)
        .flat_map(|s| &s.actions)
        .filter(|a| a.kind == ActionType::Delete)
        .flat_map(|a| a.resource_id.clone())
        .collect()
}

fn co_card(resp: &CdsResponse) -> Option<&offramp::protocol::Card> {
    resp.cards.iter().find(|c| c.source.label.contains("CDC"))
}

#[test]
fn methadone_for_a_patient_with_oud_is_oud_treatment() {
    // On alprazolam long term, OUD diagnosed, methadone drafted.
    let mut v = example("order-select-long-term-alprazolam");
    set_draft_med(&mut v, "864706"); // methadone hydrochloride 10 MG Oral Tablet
    push(
        &mut v,
        "conditions",
        condition("http://hl7.org/fhir/sid/icd-10-cm", "F11.20"),
    );
    let resp = run(&v);
    let card = co_card(&resp).expect("co-prescription card");
    assert_eq!(
        card.indicator,
        Indicator::Warning,
        "OUD treatment keeps the card at warning"
    );
    assert!(
        card.detail
            .as_deref()
            .is_some_and(|d| d.contains("Continue the opioid use disorder treatment"))
    );
    assert!(
        deletes(&resp).is_empty(),
        "nothing acts on the methadone order: {:?}",
        deletes(&resp)
    );
}

#[test]
fn a_depot_buprenorphine_in_the_history_is_seen() {
    let mut v = example("order-sign-new-benzo-start");
    push(
        &mut v,
        "medicationDispenses",
        dispense("1996189", "2026-11-10", 1, 30, "QD", 1.0),
    ); // Sublocade
    let resp = run(&v);
    let card = co_card(&resp).expect("co-prescription card for benzo + OUD treatment");
    assert_eq!(card.indicator, Indicator::Warning);
}

#[test]
fn a_renewal_of_a_drug_in_use_is_never_offered_for_withdrawal() {
    let mut v = example("order-sign-opioid-with-benzo");
    // Oxycodone already in use: the draft is a renewal.
    push(
        &mut v,
        "medicationDispenses",
        dispense("1049621", "2026-11-10", 60, 15, "Q6H", 1.0),
    );
    let resp = run(&v);
    assert!(co_card(&resp).is_some());
    assert!(deletes(&resp).is_empty(), "{:?}", deletes(&resp));
    // The long-term alprazolam renewal: the taper replaces it, nothing offers a bare stop.
    let resp = run(&example("order-select-long-term-alprazolam"));
    for s in resp.cards.iter().flat_map(|c| &c.suggestions) {
        let deletes = s.actions.iter().any(|a| a.kind == ActionType::Delete);
        let creates = s.actions.iter().any(|a| a.kind == ActionType::Create);
        assert!(
            !deletes || creates,
            "{}: a delete without a replacing plan",
            s.label
        );
    }
}

#[test]
fn legitimate_long_term_use_in_the_history_gets_no_taper() {
    let mut v = example("order-sign-opioid-with-benzo");
    push(
        &mut v,
        "conditions",
        condition("http://hl7.org/fhir/sid/icd-10-cm", "G40.909"),
    );
    let resp = run(&v);
    assert!(
        !resp
            .cards
            .iter()
            .any(|c| c.source.label.contains("Tapering")),
        "no off-ramp for clonazepam in epilepsy"
    );
    assert!(
        co_card(&resp).is_some(),
        "the overdose-risk card still fires"
    );
}

#[test]
fn naloxone_in_the_same_orders_is_not_offered_again() {
    let mut v = example("order-sign-opioid-with-benzo");
    let naloxone = json!({"resourceType": "MedicationRequest", "id": "draft-2", "status": "draft", "intent": "order",
        "medicationCodeableConcept": med("1725059")});
    v["context"]["draftOrders"]["entry"]
        .as_array_mut()
        .expect("entries")
        .push(json!({"resource": naloxone}));
    let resp = run(&v);
    let card = co_card(&resp).expect("card");
    assert!(
        !card
            .suggestions
            .iter()
            .any(|s| s.label.contains("naloxone"))
    );
}

#[test]
fn the_limited_order_we_suggest_does_not_re_fire() {
    let v = example("order-sign-new-benzo-start");
    let resp = run(&v);
    let limited = resp.cards[0]
        .suggestions
        .iter()
        .find(|s| s.label.starts_with("Limit"))
        .and_then(|s| s.actions[0].resource.clone())
        .expect("limit suggestion");
    let mut again = v.clone();
    again["context"]["draftOrders"]["entry"][0]["resource"] = limited;
    assert!(run(&again).cards.is_empty());
}

#[test]
fn a_renewal_at_another_strength_is_not_counted_twice() {
    let mut v = example("order-sign-opioid-with-benzo");
    // Oxycodone 5 mg QID in use (30 MME); the draft renews it as 10 mg (1049683) BID (30 MME).
    push(
        &mut v,
        "medicationDispenses",
        dispense("1049621", "2026-11-10", 60, 15, "QID", 1.0),
    );
    let draft = &mut v["context"]["draftOrders"]["entry"][0]["resource"];
    draft["medicationCodeableConcept"] = med("1049683");
    draft["dosageInstruction"] = json!([{"timing": {"code": {"coding": [{"code": "BID"}]}},
        "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}]);
    let resp = run(&v);
    let summary = co_card(&resp).expect("card").summary.as_str().to_string();
    // Fentanyl 25 mcg/hr (60) + oxycodone 20 mg (30) = 90, not 120.
    assert!(summary.contains("90 MME"), "{summary}");
}

#[test]
fn a_quantity_only_draft_is_flagged_as_a_long_course() {
    let mut v = example("order-sign-new-benzo-start");
    v["context"]["draftOrders"]["entry"][0]["resource"]["dispenseRequest"] =
        json!({"quantity": {"value": 60, "unit": "tablet"}});
    let resp = run(&v);
    assert!(
        resp.cards[0]
            .suggestions
            .iter()
            .any(|s| s.label.starts_with("Limit")),
        "60 tablets at 2 a day is 30 days"
    );
}

#[test]
fn odd_characters_in_dates_do_not_crash() {
    let mut v = example("order-sign-new-benzo-start");
    v["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"] =
        json!("2026-11-23T10:05:0éx");
    let resp = run(&v);
    assert!(!resp.cards.is_empty());
}

#[test]
fn intermittent_use_at_65_gets_no_taper_order() {
    let mut v = example("order-sign-older-adult-zolpidem");
    // Zolpidem as needed: 10 tablets over 30 days, twice in a row.
    for d in ["2026-10-01", "2026-10-31"] {
        let mut r = dispense("854873", d, 10, 30, "QHS", 1.0);
        r["dosageInstruction"][0]["asNeededBoolean"] = json!(true);
        push(&mut v, "medicationDispenses", r);
    }
    let resp = run(&v);
    let card = resp
        .cards
        .iter()
        .find(|c| c.summary.as_str().contains("intermittent"))
        .expect("off-ramp card");
    assert!(
        card.suggestions.iter().all(|s| !s.label.contains("taper")),
        "no taper for intermittent use"
    );
}
