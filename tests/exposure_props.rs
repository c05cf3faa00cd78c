//! Properties of episodes that must hold for any history.

use chrono::NaiveDate;
use offramp::clinical::dose::{Amount, Dosage, DoseUnit};
use offramp::clinical::exposure::Episode;
use offramp::clinical::fhir_read::Coding;
use offramp::clinical::record::{MedicationCodes, RecordKind, RecordStatus};
use offramp::clinical::{Exposure, ExposureParams, Knowledge, MedicationRecord, exposure};
use proptest::prelude::*;
use std::sync::OnceLock;

fn kb() -> &'static Knowledge {
    static KB: OnceLock<Knowledge> = OnceLock::new();
    KB.get_or_init(|| Knowledge::embedded().expect("knowledge"))
}

const TODAY: &str = "2026-11-23";
/// alprazolam 0.5 mg, lorazepam 1 mg, zolpidem 10 mg, oxycodone 5 mg, temazepam 15 mg tablets.
const CODES: [&str; 5] = ["308048", "197901", "854873", "1049621", "198241"];

fn today() -> NaiveDate {
    NaiveDate::parse_from_str(TODAY, "%Y-%m-%d").expect("date")
}

fn record() -> impl Strategy<Value = MedicationRecord> {
    (
        0..CODES.len(),
        0u64..700,
        1u32..120,
        prop_oneof![
            Just(RecordKind::Dispense),
            Just(RecordKind::Request),
            Just(RecordKind::Statement)
        ],
        prop_oneof![4 => Just(RecordStatus::Completed), 2 => Just(RecordStatus::Active),
            1 => Just(RecordStatus::Stopped), 1 => Just(RecordStatus::Void)],
        prop::option::of(1u32..5),
        any::<bool>(),
    )
        .prop_map(|(code, days_back, supply, kind, status, per_day, prn)| {
            let start = today() - chrono::Days::new(days_back);
            let unit = |v: f64| Amount {
                value: v,
                unit: DoseUnit::Unit,
            };
            MedicationRecord {
                kind,
                id: None,
                status,
                medication: MedicationCodes {
                    codings: vec![Coding {
                        system: Some("http://www.nlm.nih.gov/research/umls/rxnorm".into()),
                        code: CODES[code].into(),
                    }],
                    ..Default::default()
                },
                start: Some(start),
                end: None,
                supply_days: Some(f64::from(supply)),
                quantity: Some(unit(f64::from(supply) * 0.5)),
                dosage: per_day.map(|n| Dosage {
                    per_day: Some(unit(f64::from(n))),
                    per_dose: Some(unit(1.0)),
                    as_needed: prn,
                    ..Default::default()
                }),
                category: vec![],
                prescriber: None,
                prescription: None,
                reason_codes: vec![],
            }
        })
}

fn params(gap: u32) -> ExposureParams {
    ExposureParams {
        gap_days: gap,
        grace_days: 7,
        regular_days_per_week: 4.0,
    }
}

fn run(records: &[MedicationRecord], gap: u32) -> Exposure {
    exposure(kb(), records, today(), &params(gap))
}

/// An exposure with record indices left out, which do depend on order.
fn shape(e: &Exposure) -> String {
    let strip = |ep: &Episode| {
        format!(
            "{}..{} c{} u{:.6} s{} a{} r{}",
            ep.start, ep.end, ep.covered_days, ep.use_days, ep.span_days, ep.active, ep.regular
        )
    };
    let mut out = String::new();
    for (k, t) in &e.tracks {
        out += &format!(
            "{k:?}: {:?} unknown {}\n",
            t.episodes.iter().map(strip).collect::<Vec<_>>(),
            t.unknown_records.len()
        );
    }
    let mut current: Vec<String> = e
        .current
        .iter()
        .map(|u| format!("{} {} {:?}", u.medication, u.ingredient, u.rate))
        .collect();
    current.sort();
    out += &format!(
        "{current:?} {:?} {:?}",
        e.diazepam.as_ref().map(|d| (d.low.0, d.high.0)),
        e.mme.as_ref().map(|m| m.total.0)
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn result_does_not_depend_on_record_order(
        (records, perm) in prop::collection::vec(record(), 0..40)
            .prop_flat_map(|r| { let n = r.len(); (Just(r), Just((0..n).collect::<Vec<_>>()).prop_shuffle()) })
    ) {
        let shuffled: Vec<MedicationRecord> = perm.iter().map(|i| records[*i].clone()).collect();
        prop_assert_eq!(shape(&run(&records, 30)), shape(&run(&shuffled, 30)));
    }

    #[test]
    fn widening_the_gap_never_splits_an_episode(
        records in prop::collection::vec(record(), 0..40), g1 in 0u32..60, extra in 0u32..60
    ) {
        let narrow = run(&records, g1);
        let wide = run(&records, g1 + extra);
        for (key, t) in &narrow.tracks {
            let w = &wide.tracks[key];
            prop_assert!(w.episodes.len() <= t.episodes.len());
            for e in &t.episodes {
                prop_assert!(
                    w.episodes.iter().any(|we| we.start <= e.start && e.end <= we.end
                        && e.records.iter().all(|r| we.records.contains(r))),
                    "{:?} episode {}..{} split when the gap widened", key, e.start, e.end
                );
            }
        }
    }

    #[test]
    fn covered_days_never_exceed_the_span(records in prop::collection::vec(record(), 0..60), gap in 0u32..90) {
        for t in run(&records, gap).tracks.values() {
            for e in &t.episodes {
                prop_assert!(e.covered_days <= e.span_days, "{} > {}", e.covered_days, e.span_days);
                prop_assert!(e.use_days <= f64::from(e.covered_days) + 1e-9);
                prop_assert!(e.start <= e.end);
                prop_assert!(e.days_per_week() <= 7.0 + 1e-9);
            }
        }
    }

    #[test]
    fn void_or_future_records_are_never_active(records in prop::collection::vec(record(), 0..30)) {
        let none_taken: Vec<MedicationRecord> = records.into_iter().map(|mut r| {
            if r.start.is_some_and(|s| s.day() % 2 == 0) {
                r.status = RecordStatus::Void;
            } else {
                r.start = Some(today() + chrono::Days::new(1 + u64::from(r.start.map_or(0, |s| s.day()))));
            }
            r
        }).collect();
        let e = run(&none_taken, 30);
        prop_assert!(e.tracks.values().all(|t| t.current().is_none()));
        prop_assert!(e.current.is_empty() && e.diazepam.is_none() && e.mme.is_none());
    }
}

#[test]
fn an_empty_history_is_never_active() {
    for gap in [0, 30, 365] {
        let e = run(&[], gap);
        assert!(e.tracks.is_empty() && e.current.is_empty());
        assert!(e.diazepam.is_none() && e.mme.is_none());
    }
}

use chrono::Datelike;

/// Arbitrary JSON, including values shaped like medication resources with wrong types, nulls
/// and odd dates: reading and exposure must never panic, and a malformed resource is skipped.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        prop_oneof![
            Just("2026-11-01".to_string()),
            Just("2026-02-30".to_string()),
            Just("2026-11-01T10:00:00".to_string()),
            Just("308048".to_string()),
            Just("http://www.nlm.nih.gov/research/umls/rxnorm".to_string()),
            Just("mg".to_string()),
            Just("BID".to_string()),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        let keys = prop_oneof![
            Just("resourceType"),
            Just("status"),
            Just("medicationCodeableConcept"),
            Just("coding"),
            Just("system"),
            Just("code"),
            Just("dosageInstruction"),
            Just("doseAndRate"),
            Just("doseQuantity"),
            Just("timing"),
            Just("repeat"),
            Just("value"),
            Just("unit"),
            Just("daysSupply"),
            Just("whenHandedOver"),
            Just("authoredOn"),
            Just("quantity"),
            Just("effectivePeriod"),
            Just("start"),
            Just("end"),
            Just("dispenseRequest"),
            Just("medicationReference"),
            Just("reference"),
            Just("contained"),
            Just("entry"),
            Just("resource"),
            Just("frequency"),
            Just("period"),
            Just("periodUnit"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((keys, inner), 0..6).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(v in json_value(), kind in 0usize..3) {
        let mut v = v;
        if let serde_json::Value::Object(m) = &mut v {
            let t = ["MedicationRequest", "MedicationDispense", "MedicationStatement"][kind];
            m.insert("resourceType".into(), serde_json::Value::String(t.into()));
        }
        let bundle = serde_json::json!({"resourceType": "Bundle", "entry": [{"resource": v}, {"resource": 7}]});
        let h = offramp::clinical::history::read_history(&[&offramp::clinical::json::Json::from(&bundle)]);
        prop_assert!(h.skipped >= 1, "the numeric entry is counted as skipped");
        let _ = run(&h.records, 30);
    }
}
