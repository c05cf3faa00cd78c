//! Full offline evaluation of an order-sign request (opioid draft, benzodiazepine and fentanyl in
//! the history, COPD) with extra history records, through the same function the server calls.
//! The `scaling` group is bench/run's evaluation time vs history size (it must grow about
//! linearly). Run: `cargo bench --bench evaluate`.

use chrono::NaiveDate;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use offramp::clinical::Knowledge;
use offramp::hooks::evaluate_request;
use offramp::protocol::{CdsRequest, Discovery};
use std::hint::black_box;

// As in the service binary, so the times are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::history;

fn bench(c: &mut Criterion) {
    let kb = Knowledge::embedded().expect("knowledge");
    let catalogue = Discovery::embedded().expect("catalogue");
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/cds-hooks/examples/requests/order-sign-opioid-with-benzo.json"
    );
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("json");
    let mut group = c.benchmark_group("scaling");
    for n in [100usize, 300, 1_000, 5_000, 20_000] {
        if n >= 5_000 {
            group.sample_size(10);
        }
        let mut req = base.clone();
        // Extra history as MedicationStatements in their own prefetch Bundle.
        req["prefetch"]["medicationStatements"] = history(n, today);
        let body = serde_json::to_vec(&req).expect("body");
        group.bench_with_input(
            BenchmarkId::new("order_sign_parse_and_evaluate", n),
            &body,
            |b, body| {
                b.iter(|| {
                    let r: CdsRequest = serde_json::from_slice(black_box(body)).expect("request");
                    evaluate_request(&kb, &catalogue, "offramp-order-sign", &r, today)
                        .expect("ok")
                        .response
                        .cards
                        .len()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
