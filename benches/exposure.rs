//! Exposure on synthetic histories of 300 and 5,000 records (and the sizes between), to show the
//! cost grows about linearly. Run: `cargo bench --bench exposure`.

use chrono::NaiveDate;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use offramp::clinical::history::read_history;
use offramp::clinical::{ExposureParams, Knowledge, exposure};
use std::hint::black_box;

mod common;
use common::history;

fn bench(c: &mut Criterion) {
    let kb = Knowledge::embedded().expect("knowledge");
    let params = ExposureParams::from_thresholds(kb.thresholds());
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let mut group = c.benchmark_group("exposure");
    for n in [300usize, 1_000, 5_000] {
        let bundle = offramp::clinical::json::Json::from(&history(n, today));
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
