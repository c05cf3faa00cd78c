//! Exposure on synthetic histories of 300 and 5,000 records (and the sizes between), to show the
//! cost grows about linearly. Run: `cargo bench --bench exposure`.

use chrono::{Days, NaiveDate};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use offramp::clinical::history::read_history;
use offramp::clinical::{ExposureParams, Knowledge, exposure};
use serde_json::{Value, json};
use std::hint::black_box;

const RX: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// Alprazolam, lorazepam, zolpidem, oxycodone, hydrocodone/APAP, fentanyl patch, and an
/// unclassified code, in the mix of a long outpatient record.
const CODES: [&str; 7] = [
    "308048", "197901", "854873", "1049621", "857002", "245134", "310965",
];

/// A history of `n` records: monthly dispenses, requests and statements spread over the years
/// before `today`, with realistic dosage instructions.
fn history(n: usize, today: NaiveDate) -> Value {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            let code = CODES[i % CODES.len()];
            let start = today - Days::new(((i * 37) % 3000) as u64);
            let med = json!({"coding": [{"system": RX, "code": code}]});
            let dosage = json!([{"timing": {"code": {"coding": [{"code": "BID"}]}},
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}]);
            let resource = match i % 3 {
                0 => json!({"resourceType": "MedicationDispense", "id": format!("d{i}"),
                    "status": "completed", "medicationCodeableConcept": med,
                    "whenHandedOver": start.to_string(), "daysSupply": {"value": 30, "code": "d"},
                    "quantity": {"value": 60, "unit": "tablet"}, "dosageInstruction": dosage}),
                1 => json!({"resourceType": "MedicationRequest", "id": format!("r{i}"),
                    "status": "active", "intent": "order", "medicationCodeableConcept": med,
                    "authoredOn": format!("{start}T10:00:00"), "dosageInstruction": dosage,
                    "dispenseRequest": {"quantity": {"value": 60, "unit": "tablet"}}}),
                _ => json!({"resourceType": "MedicationStatement", "id": format!("s{i}"),
                    "status": "active", "medicationCodeableConcept": med,
                    "effectivePeriod": {"start": start.to_string()},
                    "dateAsserted": (start + Days::new(20)).to_string(), "dosage": dosage}),
            };
            json!({"resource": resource})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})
}

fn bench(c: &mut Criterion) {
    let kb = Knowledge::embedded().expect("knowledge");
    let params = ExposureParams::from_thresholds(kb.thresholds());
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let mut group = c.benchmark_group("exposure");
    for n in [300usize, 1_000, 5_000] {
        let bundle = history(n, today);
        let records = read_history(&[&bundle]).records;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("episodes_and_doses", n),
            &records,
            |b, r| {
                b.iter(|| exposure(&kb, black_box(r), today, &params));
            },
        );
        group.bench_with_input(BenchmarkId::new("read_only", n), &bundle, |b, v| {
            b.iter(|| read_history(&[black_box(v)]));
        });
        group.bench_with_input(BenchmarkId::new("read_and_expose", n), &bundle, |b, v| {
            b.iter(|| {
                let h = read_history(&[black_box(v)]);
                exposure(&kb, &h.records, today, &params)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
