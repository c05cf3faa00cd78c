//! Golden tests: realistic histories from cds-hooks/examples/, with the expected exposure worked
//! out by hand in the comments (today is 2026-11-23 throughout).

use chrono::NaiveDate;
use offramp::clinical::exposure::{Episode, Rate};
use offramp::clinical::history::read_history;
use offramp::clinical::{
    DrugClass, Exposure, ExposureParams, Knowledge, RxCui, TrackKey, exposure,
};

const ALPRAZOLAM: u32 = 596;
const LORAZEPAM: u32 = 6470;
const ZOLPIDEM: u32 = 39993;
const OXYCODONE: u32 = 7804;
const FENTANYL: u32 = 4337;
const CLONAZEPAM: u32 = 2598;
const DIAZEPAM: u32 = 3322;
const TEMAZEPAM: u32 = 10355;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

fn rx(n: u32) -> RxCui {
    RxCui::parse(&n.to_string()).expect("rxcui")
}

struct Run {
    exp: Exposure,
    skipped: usize,
    records: usize,
    kb: Knowledge,
}

fn run(example: &str) -> Run {
    let path = format!(
        "{}/cds-hooks/examples/{example}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("example file");
    let v: offramp::clinical::json::Json<'_> = serde_json::from_str(&text).expect("json");
    let kb = Knowledge::embedded().expect("knowledge");
    let h = read_history(&[&v]);
    let params = ExposureParams::from_thresholds(kb.thresholds());
    let exp = exposure(&kb, &h.records, d("2026-11-23"), &params);
    Run {
        exp,
        skipped: h.skipped,
        records: h.records.len(),
        kb,
    }
}

fn episodes(exp: &Exposure, key: TrackKey) -> Vec<&Episode> {
    exp.track(key)
        .map(|t| t.episodes.iter().collect())
        .unwrap_or_default()
}

fn mg_per_day(exp: &Exposure, ingredient: u32) -> f64 {
    let uses: Vec<_> = exp
        .current
        .iter()
        .filter(|u| u.ingredient == rx(ingredient))
        .collect();
    assert!(!uses.is_empty(), "no current use of {ingredient}");
    uses.iter()
        .map(|u| match u.rate {
            Some(Rate::MgPerDay(v)) => v,
            other => panic!("unexpected rate {other:?}"),
        })
        .sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// Diazepam figures from the equivalence table itself, so the test checks the arithmetic.
fn diazepam_range(kb: &Knowledge, ingredient: u32, mg: f64) -> (f64, f64) {
    kb.diazepam_equivalent(rx(ingredient))
        .expect("equivalent")
        .diazepam_range(mg)
}

#[test]
fn monthly_refills_with_a_late_one_stay_one_long_regular_episode() {
    let r = run("history-monthly-refills-late");
    // Request 05-01 (30 days), dispenses 05-04 ... 08-02 contiguous, 09-15 after a 14-day hole
    // (within the 30-day gap), 10-15, 11-14 (covers to 12-13).
    let eps = episodes(&r.exp, TrackKey::Ingredient(rx(ALPRAZOLAM)));
    assert_eq!(eps.len(), 1);
    let e = eps[0];
    assert_eq!((e.start, e.end), (d("2026-05-01"), d("2026-12-13")));
    assert_eq!(e.span_days, 207, "05-01 to 11-23 inclusive");
    assert_eq!(
        e.covered_days, 193,
        "span minus the 14 uncovered days 09-01..09-14"
    );
    assert!(e.active && e.regular);
    assert!(r.exp.is_active(TrackKey::Bzra));
    // Current: the 11-14 dispense, 1 tablet TID of 0.5 mg.
    assert!(close(mg_per_day(&r.exp, ALPRAZOLAM), 1.5));
    let dz = r.exp.diazepam.as_ref().expect("diazepam");
    let (low, high) = diazepam_range(&r.kb, ALPRAZOLAM, 1.5);
    assert!(close(dz.low.0, low) && close(dz.high.0, high));
    assert!(dz.low.0 <= dz.high.0 && dz.incomplete.is_empty());
    assert!(r.exp.mme.is_none());
}

#[test]
fn stopped_and_erroneous_records_do_not_make_anything_active() {
    let r = run("history-stopped-drug");
    let zol = episodes(&r.exp, TrackKey::Ingredient(rx(ZOLPIDEM)));
    assert_eq!(zol.len(), 1);
    assert_eq!(
        (zol[0].start, zol[0].end),
        (d("2026-03-01"), d("2026-09-30"))
    );
    assert_eq!(zol[0].covered_days, 214);
    assert!(!zol[0].active, "ended 54 days ago, beyond the 7-day grace");
    // The stopped oxycodone order counts its first day only, not its 10-day supply.
    let oxy = episodes(&r.exp, TrackKey::Ingredient(rx(OXYCODONE)));
    assert_eq!(oxy.len(), 1);
    assert_eq!(
        (oxy[0].start, oxy[0].end, oxy[0].covered_days),
        (d("2026-11-01"), d("2026-11-01"), 1)
    );
    assert!(!r.exp.is_active(TrackKey::Class(DrugClass::OpioidAnalgesic)));
    // Entered in error: no trace at all.
    assert!(r.exp.track(TrackKey::Ingredient(rx(LORAZEPAM))).is_none());
    assert!(r.exp.current.is_empty() && r.exp.diazepam.is_none() && r.exp.mme.is_none());
}

#[test]
fn dispense_gaps_over_30_days_split_episodes() {
    let r = run("history-dispense-gap");
    let eps = episodes(&r.exp, TrackKey::Class(DrugClass::Benzodiazepine));
    let spans: Vec<_> = eps
        .iter()
        .map(|e| (e.start, e.end, e.covered_days, e.active))
        .collect();
    assert_eq!(
        spans,
        vec![
            (d("2026-03-01"), d("2026-04-29"), 60, false),
            (d("2026-06-20"), d("2026-08-18"), 60, false),
            (d("2026-11-10"), d("2026-12-09"), 14, true),
        ]
    );
    let current = r
        .exp
        .track(TrackKey::Bzra)
        .and_then(|t| t.current())
        .expect("current");
    assert!(current.regular);
    assert!(
        current.covered_days < 28,
        "the current episode is short: earlier ones do not count"
    );
    assert!(close(mg_per_day(&r.exp, LORAZEPAM), 2.0));
}

#[test]
fn mixed_request_dispense_statement_give_mme_and_diazepam() {
    let r = run("history-mixed-opioid-benzo");
    assert_eq!(r.skipped, 1, "the string entry");
    assert_eq!(r.records, 4);
    assert_eq!(r.exp.unclassified, 1, "RxCUI 1234567 is not in the table");
    // Oxycodone PRN: 60 tablets over 15 days = 4 a day = 20 mg, not the PRN maximum.
    assert!(close(mg_per_day(&r.exp, OXYCODONE), 20.0));
    // Clonazepam 0.5 mg BID, dose written in mg.
    assert!(close(mg_per_day(&r.exp, CLONAZEPAM), 1.0));
    // Fentanyl 25 mcg/hr, reported active on 11-20: within the grace period.
    let fent = r
        .exp
        .current
        .iter()
        .find(|u| u.ingredient == rx(FENTANYL))
        .expect("fentanyl");
    assert_eq!(fent.rate, Some(Rate::McgPerHr(25.0)));
    let mme = r.exp.mme.as_ref().expect("mme");
    let oxy_f =
        r.kb.mme_factor(rx(OXYCODONE), offramp::clinical::knowledge::Route::Oral)
            .expect("factor");
    let fent_f =
        r.kb.mme_factor(
            rx(FENTANYL),
            offramp::clinical::knowledge::Route::Transdermal,
        )
        .expect("factor");
    assert!(close(
        mme.total.0,
        20.0 * oxy_f.factor + 25.0 * fent_f.factor
    ));
    assert!(
        close(mme.total.0, 90.0),
        "CDC 2022: 20 mg oxycodone x 1.5 + 25 mcg/hr x 2.4"
    );
    assert!(mme.without_factor.is_empty() && mme.unknown_dose.is_empty());
    assert!(
        r.exp.is_active(TrackKey::Bzra)
            && r.exp.is_active(TrackKey::Class(DrugClass::OpioidAnalgesic))
    );
    let oxy = r
        .exp
        .current
        .iter()
        .find(|u| u.ingredient == rx(OXYCODONE))
        .expect("oxycodone");
    assert_eq!(oxy.prescriber.as_deref(), Some("Practitioner/dr-a"));
    let clon = r
        .exp
        .current
        .iter()
        .find(|u| u.ingredient == rx(CLONAZEPAM))
        .expect("clonazepam");
    assert_eq!(
        clon.prescription.as_deref(),
        Some("MedicationRequest/rx-clon")
    );
}

#[test]
fn contained_and_referenced_medications_resolve() {
    let r = run("history-contained-medication");
    // Diazepam via a contained Medication (NDC first, RxNorm second): 60 tablets at 2 a day.
    let dz = episodes(&r.exp, TrackKey::Ingredient(rx(DIAZEPAM)));
    assert_eq!(dz.len(), 1);
    assert_eq!((dz[0].start, dz[0].end), (d("2026-11-10"), d("2026-12-09")));
    assert!(close(mg_per_day(&r.exp, DIAZEPAM), 10.0));
    // Temazepam via Medication/m-tem: PRN, 10 capsules for 30 days: intermittent.
    let tem = r
        .exp
        .track(TrackKey::Ingredient(rx(TEMAZEPAM)))
        .and_then(|t| t.current())
        .expect("temazepam");
    assert!(!tem.regular, "{} days a week", tem.days_per_week());
    assert!(close(tem.use_days, 23.0 / 3.0));
    assert!(close(mg_per_day(&r.exp, TEMAZEPAM), 5.0));
    // Together: 9 days at a third, then 14 full days, over 23 days: regular BZRA use.
    let bzra = r
        .exp
        .track(TrackKey::Bzra)
        .and_then(|t| t.current())
        .expect("bzra");
    assert!(close(bzra.use_days, 9.0 / 3.0 + 14.0));
    assert!(bzra.regular);
    let total = r.exp.diazepam.as_ref().expect("diazepam");
    let (tl, th) = diazepam_range(&r.kb, TEMAZEPAM, 5.0);
    assert!(close(total.low.0, 10.0 + tl) && close(total.high.0, 10.0 + th));
}
