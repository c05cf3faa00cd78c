//! FHIR R4 resources our suggestions create. Each carries our tag, so an order made from a
//! suggestion never re-fires the card that made it (the loop guard in hooks).

use crate::clinical::knowledge::Medication;
use crate::plans::taper::TaperPlan;
use chrono::NaiveDate;
use serde_json::{Value, json};

pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// offramp's own code systems (tags and override reasons).
pub const TAG_SYSTEM: &str = "http://offramp.health/fhir/CodeSystem/tag";
pub const TAG_GENERATED: &str = "offramp-generated";
const UCUM: &str = "http://unitsofmeasure.org";

/// Who and when, shared by every resource of one response.
pub struct Origin<'a> {
    pub patient_id: &'a str,
    pub user: Option<&'a str>,
    pub today: NaiveDate,
}

fn tag() -> Value {
    json!({"tag": [{"system": TAG_SYSTEM, "code": TAG_GENERATED, "display": "Created from an offramp suggestion"}]})
}

fn medication_concept(m: &Medication) -> Value {
    json!({"coding": [{"system": RXNORM, "code": m.rxcui.to_string(), "display": m.display}], "text": m.display})
}

fn base_request(o: &Origin<'_>, m: &Medication) -> serde_json::Map<String, Value> {
    let mut r = serde_json::Map::new();
    r.insert("resourceType".into(), json!("MedicationRequest"));
    r.insert("meta".into(), tag());
    r.insert("status".into(), json!("draft"));
    r.insert("intent".into(), json!("order"));
    r.insert(
        "category".into(),
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "code": "community"}]}]),
    );
    r.insert("medicationCodeableConcept".into(), medication_concept(m));
    r.insert(
        "subject".into(),
        json!({"reference": format!("Patient/{}", o.patient_id)}),
    );
    r.insert("authoredOn".into(), json!(o.today.to_string()));
    if let Some(u) = o.user {
        r.insert("requester".into(), json!({"reference": u}));
    }
    r
}

fn tablets(n: f64) -> Value {
    json!({"value": n, "unit": "tablet", "system": UCUM, "code": "{tbl}"})
}

/// The taper as ONE orderable MedicationRequest: a dosage instruction per step (sequence, dates,
/// daily dose), and the tablets the whole plan needs.
pub fn taper_request(o: &Origin<'_>, product: &Medication, plan: &TaperPlan, note: &str) -> Value {
    let mut r = base_request(o, product);
    let strength = crate::plans::schedule::strength_of(product);
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .filter(|s| s.mg_per_day > 0.0)
        .enumerate()
        .map(|(i, s)| {
            let per_day = crate::plans::schedule::tablets_of(product, s.mg_per_day);
            json!({
                "sequence": i + 1,
                "text": format!("{} to {}: {} mg a day ({} tablet{} of {} mg a day, split as before)",
                    s.start, s.end, fmt_num(s.mg_per_day), fmt_num(per_day),
                    if (per_day - 1.0).abs() < 1e-9 { "" } else { "s" }, fmt_num(strength)),
                "timing": {"repeat": {
                    "boundsPeriod": {"start": s.start.to_string(), "end": s.end.to_string()},
                    "frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": tablets(per_day)}]
            })
        })
        .collect();
    let total: f64 = plan.units_needed.iter().map(|u| u.per_day).sum();
    let days = (plan.end - o.today).num_days().max(1);
    r.insert("dosageInstruction".into(), json!(steps));
    r.insert(
        "dispenseRequest".into(),
        json!({"quantity": tablets(total.ceil()),
               "expectedSupplyDuration": {"value": days, "unit": "days", "system": UCUM, "code": "d"}}),
    );
    r.insert("note".into(), json!([{"text": note}]));
    Value::Object(r)
}

pub fn naloxone_request(o: &Origin<'_>, m: &Medication) -> Value {
    let mut r = base_request(o, m);
    r.insert(
        "dosageInstruction".into(),
        json!([{
            "text": "For suspected opioid overdose: spray once into one nostril; call emergency services; \
                     repeat every 2 to 3 minutes in the other nostril with a new device if there is no response.",
            "asNeededCodeableConcept": {"text": "suspected opioid overdose"},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "spray", "system": UCUM, "code": "{spray}"}}]
        }]),
    );
    r.insert(
        "dispenseRequest".into(),
        json!({"quantity": {"value": 2, "unit": "device", "system": UCUM, "code": "{device}"}}),
    );
    Value::Object(r)
}

/// A dated follow-up: a ServiceRequest for a follow-up encounter.
pub fn follow_up(o: &Origin<'_>, when: NaiveDate, why: &str) -> Value {
    let mut r = json!({
        "resourceType": "ServiceRequest",
        "meta": tag(),
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "390906007", "display": "Follow-up encounter (procedure)"}],
                 "text": why},
        "subject": {"reference": format!("Patient/{}", o.patient_id)},
        "occurrenceDateTime": when.to_string(),
        "authoredOn": o.today.to_string()
    });
    if let Some(u) = o.user {
        r["requester"] = json!({"reference": u});
    }
    r
}

/// Makes a client's MedicationRequest valid R4 before we send it back: single objects where R4
/// wants arrays, dateTimes with a time but no timezone cut to the date (the zone is unknown),
/// nulls removed. An update the EHR cannot store would be a defect.
pub fn normalise_medication_request(r: &mut Value) {
    fn wrap(v: &mut Value, key: &str) {
        if let Some(x) = v.get_mut(key).filter(|x| x.is_object()) {
            *x = Value::Array(vec![x.take()]);
        }
    }
    fn strip_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    fn fix_date_time(v: &mut Value, key: &str) {
        if let Some(Value::String(s)) = v.get_mut(key) {
            let has_zone = s.ends_with('Z') || s.get(19..).is_some_and(|t| t.contains(['+', '-']));
            if s.len() > 10 && !has_zone {
                s.truncate(10);
            }
        }
    }
    strip_nulls(r);
    for key in [
        "category",
        "reasonCode",
        "reasonReference",
        "dosageInstruction",
        "identifier",
        "note",
        "basedOn",
        "insurance",
    ] {
        wrap(r, key);
    }
    fix_date_time(r, "authoredOn");
    if let Some(Value::Array(ds)) = r.get_mut("dosageInstruction") {
        for d in ds {
            wrap(d, "doseAndRate");
            wrap(d, "additionalInstruction");
        }
    }
    if let Some(vp) = r.pointer_mut("/dispenseRequest/validityPeriod") {
        fix_date_time(vp, "start");
        fix_date_time(vp, "end");
    }
}

/// A draft with a shorter supply: the same order limited to `days`.
pub fn limited_to(draft: &Value, days: u32) -> Value {
    let mut r = draft.clone();
    normalise_medication_request(&mut r);
    // Tagged, so the limited order is recognised as ours and does not re-fire the card.
    if let Value::Object(m) = &mut r {
        let meta = m.entry("meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        let tags = meta
            .as_object_mut()
            .map(|o| o.entry("tag").or_insert_with(|| json!([])));
        if let Some(t) = tags {
            if !t.is_array() {
                *t = json!([]);
            }
            if let Value::Array(a) = t {
                a.push(json!({"system": TAG_SYSTEM, "code": TAG_GENERATED}));
            }
        }
    }
    if let Value::Object(m) = &mut r {
        let dr = m.entry("dispenseRequest").or_insert_with(|| json!({}));
        if !dr.is_object() {
            *dr = json!({});
        }
        dr["expectedSupplyDuration"] =
            json!({"value": days, "unit": "days", "system": UCUM, "code": "d"});
    }
    r
}

/// Numbers as people write them: 1.5, 0.25, 10.
pub fn fmt_num(v: f64) -> String {
    let s = format!("{:.3}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}
