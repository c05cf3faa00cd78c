//! Golden tests: every example request in cds-hooks/examples/requests/ against the expected cards
//! in the `.expected.json` beside it (indicator, source, summary, suggestions, actions, taper
//! dates and doses). A change in output is a visible diff; after reviewing one, rewrite the files
//! with `OFFRAMP_BLESS=1 cargo test --test evaluate_golden`.

use chrono::NaiveDate;
use offramp::clinical::Knowledge;
use offramp::clinical::json::Json;
use offramp::hooks::{HookError, evaluate_request};
use offramp::protocol::{ActionType, CdsRequest, CdsResponse, Discovery};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const TODAY: &str = "2026-11-23";

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cds-hooks/examples/requests");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    v.sort();
    v
}

fn today() -> NaiveDate {
    NaiveDate::parse_from_str(TODAY, "%Y-%m-%d").expect("date")
}

fn load(path: &Path) -> CdsRequest<'static> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_json::from_str::<CdsRequest<'_>>(&text)
        .expect("request")
        .into_owned()
}

fn run(req: &CdsRequest) -> CdsResponse {
    let kb = Knowledge::embedded().expect("kb");
    let d = Discovery::embedded().expect("catalogue");
    evaluate_request(&kb, &d, &format!("offramp-{}", req.hook), req, today())
        .expect("evaluates")
        .response
}

/// The parts of a response a reviewer checks.
fn projection(resp: &CdsResponse) -> Value {
    let cards: Vec<Value> = resp
        .cards
        .iter()
        .map(|c| {
            let suggestions: Vec<Value> = c
                .suggestions
                .iter()
                .map(|s| {
                    let actions: Vec<Value> = s
                        .actions
                        .iter()
                        .map(|a| {
                            let r = a.resource.as_ref();
                            let steps: Vec<Value> = r
                                .and_then(|r| r.get("dosageInstruction"))
                                .and_then(Value::as_array)
                                .map(|v| {
                                    v.iter()
                                        .filter_map(|d| {
                                            let b = d.pointer("/timing/repeat/boundsPeriod")?;
                                            Some(json!([b.get("start")?, b.get("end")?, d.pointer("/doseAndRate/0/doseQuantity/value")?]))
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            json!({
                                "type": a.kind,
                                "resourceType": r.and_then(|r| r.get("resourceType")),
                                "medication": r.and_then(|r| r.pointer("/medicationCodeableConcept/coding/0/code")),
                                "occurrence": r.and_then(|r| r.get("occurrenceDateTime")),
                                "resourceId": a.resource_id,
                                "steps": steps,
                            })
                        })
                        .collect();
                    json!({"label": s.label, "recommended": s.is_recommended, "actions": actions})
                })
                .collect();
            json!({
                "indicator": c.indicator,
                "source": c.source.label,
                "summary": c.summary.as_str(),
                "selectionBehavior": c.selection_behavior,
                "suggestions": suggestions,
                "overrideReasons": c.override_reasons.iter().map(|o| o.code.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"cards": cards})
}

#[test]
fn every_example_matches_its_expected_cards() {
    let bless = std::env::var_os("OFFRAMP_BLESS").is_some();
    let all = examples();
    assert!(all.len() >= 10, "{} examples", all.len());
    for path in all {
        let got = projection(&run(&load(&path)));
        let expected_path = path.with_extension("expected.json");
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write");
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
                panic!(
                    "{} has no .expected.json; review the output and bless it",
                    path.display()
                )
            }),
        )
        .expect("expected json");
        assert_eq!(
            serde_json::to_string_pretty(&got).expect("json"),
            serde_json::to_string_pretty(&expected).expect("json"),
            "{}",
            path.display()
        );
    }
}

fn example(name: &str) -> CdsRequest<'static> {
    load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("cds-hooks/examples/requests/{name}.json")),
    )
}

fn rules_fired(resp: &CdsResponse) -> Vec<String> {
    resp.cards.iter().map(|c| c.source.label.clone()).collect()
}

#[test]
fn no_card_for_a_non_cns_medication() {
    let mut req = example("order-sign-new-benzo-start");
    // amoxicillin 500 MG Oral Capsule: not in any of our tables.
    let draft = req.context["draftOrders"]
        .pointer_mut("/entry/0/resource/medicationCodeableConcept")
        .expect("draft");
    *draft = json!({"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "308191"}]});
    assert!(run(&req).cards.is_empty());
}

#[test]
fn no_co_prescription_card_under_each_exclusion() {
    let base = example("order-sign-opioid-with-benzo");
    assert!(
        rules_fired(&run(&base)).iter().any(|s| s.contains("CDC")),
        "fires without exclusion"
    );
    for (system, code) in [
        ("http://snomed.info/sct", "170935008"), // full care by hospice
        ("http://snomed.info/sct", "103735009"), // palliative care
        ("http://hl7.org/fhir/sid/icd-10-cm", "C34.90"), // lung cancer
        ("http://hl7.org/fhir/sid/icd-10-cm", "D57.00"), // sickle cell crisis
    ] {
        let mut req = base.clone();
        let conditions = req
            .prefetch
            .as_mut()
            .and_then(|p| p.get_mut("conditions"))
            .expect("conditions");
        let Some(Json::Array(entries)) = conditions.get_mut("entry") else {
            panic!("entries");
        };
        entries.push(Json::from(&json!({"resource": {
            "resourceType": "Condition", "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": system, "code": code}]}}})));
        let resp = run(&req);
        assert!(
            !resp.cards.iter().any(|c| c.source.label.contains("CDC")),
            "co-prescription card despite {code}"
        );
    }
}

/// Codes of every medication an action touches, including the drafts it deletes.
fn acted_on(resp: &CdsResponse, req: &CdsRequest) -> Vec<String> {
    let mut out = Vec::new();
    for c in &resp.cards {
        for s in &c.suggestions {
            for a in &s.actions {
                if let Some(code) = a
                    .resource
                    .as_ref()
                    .and_then(|r| r.pointer("/medicationCodeableConcept/coding/0/code"))
                {
                    out.push(code.as_str().unwrap_or_default().to_string());
                }
                if a.kind == ActionType::Delete {
                    for id in &a.resource_id {
                        let drafts = req.context["draftOrders"]["entry"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        for e in drafts {
                            let reference = format!(
                                "MedicationRequest/{}",
                                e["resource"]["id"].as_str().unwrap_or("")
                            );
                            let code =
                                e["resource"].pointer("/medicationCodeableConcept/coding/0/code");
                            if let Some(code) = code.filter(|_| reference == *id) {
                                out.push(code.as_str().unwrap_or_default().to_string());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn oud_medication_is_never_in_any_action() {
    let kb = Knowledge::embedded().expect("kb");
    let is_oud = |code: &str| {
        offramp::clinical::RxCui::parse(code)
            .and_then(|r| kb.medication(r))
            .is_some_and(|m| m.class == offramp::clinical::DrugClass::OudTreatment)
    };
    // History on buprenorphine/naloxone with a new benzodiazepine draft; and the OUD drug as the draft.
    let req = example("order-sign-oud-with-new-benzo");
    let resp = run(&req);
    assert!(resp.cards.iter().any(|c| {
        c.detail
            .as_deref()
            .is_some_and(|d| d.contains("Continue the opioid use disorder treatment"))
    }));
    assert!(!acted_on(&resp, &req).iter().any(|c| is_oud(c)));
    let mut req2 = example("order-sign-opioid-with-benzo");
    *req2.context["draftOrders"]
        .pointer_mut("/entry/0/resource/medicationCodeableConcept")
        .expect("draft") = json!({"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1010604"}]});
    let resp2 = run(&req2);
    assert!(!resp2.cards.is_empty(), "benzo + OUD treatment still warns");
    assert!(
        resp2
            .cards
            .iter()
            .all(|c| c.indicator != offramp::protocol::Indicator::Critical
                || !c.source.label.contains("CDC"))
    );
    assert!(!acted_on(&resp2, &req2).iter().any(|c| is_oud(c)));
}

#[test]
fn medication_reference_behaves_like_a_code() {
    let req = example("order-select-long-term-alprazolam");
    let mut by_ref = req.clone();
    let draft = by_ref.context["draftOrders"]
        .pointer_mut("/entry/0/resource")
        .expect("draft");
    let concept = draft["medicationCodeableConcept"].take();
    draft
        .as_object_mut()
        .expect("object")
        .remove("medicationCodeableConcept");
    draft["contained"] = json!([{"resourceType": "Medication", "id": "m", "code": concept}]);
    draft["medicationReference"] = json!({"reference": "#m"});
    assert_eq!(projection(&run(&req)), projection(&run(&by_ref)));
}

#[test]
fn only_the_selected_draft_counts_at_order_select() {
    let req = example("order-select-two-drafts-one-selected");
    let resp = run(&req);
    assert_eq!(
        resp.cards.len(),
        1,
        "on-ramp for the selected benzodiazepine only"
    );
    assert!(
        !resp.cards.iter().any(|c| c.source.label.contains("CDC")),
        "the unselected opioid is not paired"
    );
    let mut both = req.clone();
    both.context.insert(
        "selections".into(),
        json!(["MedicationRequest/draft-1", "MedicationRequest/draft-2"]),
    );
    assert!(
        run(&both)
            .cards
            .iter()
            .any(|c| c.source.label.contains("CDC")),
        "both selected: co-prescription"
    );
}

#[test]
fn our_own_taper_order_does_not_re_fire_the_off_ramp() {
    let req = example("order-select-long-term-alprazolam");
    let resp = run(&req);
    let taper = resp.cards[0].suggestions[0].actions[0]
        .resource
        .clone()
        .expect("taper resource");
    let mut again = req.clone();
    let mut draft = taper;
    draft["id"] = json!("draft-1");
    again.context["draftOrders"]["entry"][0]["resource"] = draft;
    assert!(
        run(&again).cards.is_empty(),
        "the accepted plan is not warned about"
    );
}

#[test]
fn spec_violations_are_errors_not_cards() {
    let kb = Knowledge::embedded().expect("kb");
    let d = Discovery::embedded().expect("catalogue");
    let req = example("order-sign-new-benzo-start");
    assert!(matches!(
        evaluate_request(&kb, &d, "offramp-order-select", &req, today()),
        Err(HookError::HookMismatch { .. })
    ));
    assert!(matches!(
        evaluate_request(&kb, &d, "nope", &req, today()),
        Err(HookError::UnknownService(_))
    ));
    let mut bad = req.clone();
    bad.context.remove("patientId");
    let e = evaluate_request(&kb, &d, "offramp-order-sign", &bad, today())
        .err()
        .expect("error");
    assert_eq!(
        e,
        HookError::BadContext("field patientId is missing or of the wrong type".into())
    );
    // No draftOrders at all (a re-clicked tab): no cards, no error.
    let mut none = req.clone();
    none.context.remove("draftOrders");
    assert!(run(&none).cards.is_empty());
}

#[test]
fn summaries_fit_and_uuids_are_stable() {
    for path in examples() {
        let req = load(&path);
        let a = run(&req);
        let b = run(&req);
        assert_eq!(a, b, "{}: same request, same response", path.display());
        for c in &a.cards {
            assert!(c.summary.as_str().chars().count() <= 140);
            assert!(uuid::Uuid::parse_str(&c.uuid).is_ok());
            if !c.suggestions.is_empty() {
                assert!(
                    c.selection_behavior.is_some(),
                    "selectionBehavior is required with suggestions"
                );
            }
        }
    }
}

#[test]
fn the_handout_is_printable_and_names_nobody() {
    let kb = Knowledge::embedded().expect("kb");
    let d = Discovery::embedded().expect("catalogue");
    let req = example("order-select-long-term-alprazolam");
    let url = "https://cds.example.org/calendar/abc";
    let out = offramp::hooks::evaluate_request_with(
        &kb,
        &d,
        "offramp-order-select",
        &req,
        today(),
        offramp::hooks::EvalOptions {
            calendar_url: Some(url),
            partial: None,
        },
    )
    .expect("ok");
    let html = out
        .calendar_html
        .as_ref()
        .expect("a calendar for the taper");
    assert_eq!(
        out.response.cards[0].links.first().map(|l| l.url.as_str()),
        Some(url),
        "the card links to it"
    );
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg") && html.contains("</svg>")
    );
    let steps = out.response.cards[0].suggestions[0].actions[0]
        .resource
        .as_ref()
        .expect("taper")["dosageInstruction"]
        .as_array()
        .expect("steps")
        .len();
    // One row per dosing step plus the stop row.
    assert_eq!(html.matches("<tr><td>").count(), steps + 1);
    assert!(html.contains("27 in"), "the EMPOWER figure");
    let patient = &req.prefetch.as_ref().expect("prefetch")["patient"];
    for secret in [
        req.context["patientId"].as_str().expect("id"),
        patient["birthDate"].as_str().expect("dob"),
        "Patient/",
    ] {
        assert!(!html.contains(secret), "handout contains {secret}");
    }
}

/// Data the EHR could not give must not raise a false alarm (rules::Completeness).
#[test]
fn missing_or_partial_data_silences_what_it_could_make_wrong() {
    let kb = Knowledge::embedded().expect("kb");
    let d = Discovery::embedded().expect("catalogue");
    let rules_of = |req: &CdsRequest, partial: Option<&std::collections::BTreeSet<String>>| {
        let out = offramp::hooks::evaluate_request_with(
            &kb,
            &d,
            &format!("offramp-{}", req.hook),
            req,
            today(),
            offramp::hooks::EvalOptions {
                calendar_url: None,
                partial,
            },
        )
        .expect("evaluates");
        let mut r: Vec<&str> = out.evaluation.findings.iter().map(|f| f.rule()).collect();
        r.sort_unstable();
        r
    };
    for name in [
        "order-sign-opioid-with-benzo",
        "order-sign-oud-with-new-benzo",
    ] {
        let full = example(name);
        let all = rules_of(&full, None);
        assert_eq!(all.len(), 2, "{name}: {all:?}");
        assert!(all.contains(&"co-prescription"));
        // Part of the history: a new start or a taper dose could be wrong; the co-prescription
        // is in hand either way.
        let partial = ["medicationDispenses".to_string()].into();
        assert_eq!(
            rules_of(&full, Some(&partial)),
            ["co-prescription"],
            "{name}"
        );
        // ... and no draft is offered for withdrawal as a "new start": it may be a renewal.
        let out = offramp::hooks::evaluate_request_with(
            &kb,
            &d,
            &format!("offramp-{}", full.hook),
            &full,
            today(),
            offramp::hooks::EvalOptions {
                calendar_url: None,
                partial: Some(&partial),
            },
        )
        .expect("evaluates");
        for f in &out.evaluation.findings {
            if let offramp::rules::Finding::CoPrescription(c) = f {
                assert!(c.withdrawable.is_empty(), "{name}");
            }
        }
        let mut no_statements = full.clone();
        if let Some(p) = no_statements.prefetch.as_mut() {
            p.insert("medicationStatements", Json::Null);
        }
        assert_eq!(
            rules_of(&no_statements, None),
            ["co-prescription"],
            "{name}"
        );
        // No conditions or no patient: exclusions and age unknown, nothing is said.
        for key in ["conditions", "patient"] {
            let mut r = full.clone();
            if let Some(p) = r.prefetch.as_mut() {
                p.remove(key);
            }
            assert!(rules_of(&r, None).is_empty(), "{name} without {key}");
        }
    }
}
