//! A medication history document (as `offramp exposure` reads each file, and as each prefetch
//! value is read) through the history reader and the exposure computation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offramp::clinical::exposure::Rate;
use offramp::clinical::history::read_history;
use offramp::clinical::json::Json;
use offramp::clinical::{ExposureParams, exposure};
use offramp_fuzz::{kb, today};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<Json<'_>>(data) else {
        return;
    };
    let history = read_history(&[&json]);
    let kb = kb();
    let params = ExposureParams::from_thresholds(kb.thresholds());
    let exp = exposure(kb, &history.records, today(), &params);

    // What the cards print and the rules compare: finite figures, episodes that make sense.
    for (key, track) in &exp.tracks {
        for e in &track.episodes {
            assert!(e.start <= e.end, "{key}: episode ends before it starts");
            assert!(e.covered_days <= e.span_days, "{key}: covered > span");
            assert!(
                e.use_days.is_finite() && e.use_days >= 0.0,
                "{key}: use_days {}",
                e.use_days
            );
            assert!(
                e.use_days <= f64::from(e.covered_days) + 1e-6,
                "{key}: use_days {} > covered_days {}",
                e.use_days,
                e.covered_days
            );
            assert!(e.records.iter().all(|&i| i < history.records.len()));
        }
    }
    for u in &exp.current {
        if let Some(Rate::MgPerDay(x) | Rate::McgPerHr(x)) = u.rate {
            assert!(x.is_finite() && x >= 0.0, "rate {x} of {}", u.medication);
        }
    }
    if let Some(d) = &exp.diazepam {
        assert!(
            d.low.0.is_finite() && d.high.0.is_finite() && d.low.0 <= d.high.0 + 1e-9,
            "diazepam {d:?}"
        );
    }
    if let Some(m) = &exp.mme {
        assert!(m.total.0.is_finite() && m.total.0 >= 0.0, "mme {m:?}");
    }

    // `offramp exposure` prints it: it must serialise.
    let out = serde_json::json!({
        "records": history.records.len(),
        "skipped": history.skipped,
        "exposure": exp,
    });
    serde_json::to_string(&out).expect("exposure serialises");
    // The owned copy (what a request keeps past its body) reads the same.
    let owned = json.clone().into_owned();
    assert_eq!(read_history(&[&owned]).records.len(), history.records.len());
});
