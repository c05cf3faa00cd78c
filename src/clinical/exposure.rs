//! Exposure: how long and how much. Records become covered intervals, intervals of the same class
//! (and of the same ingredient) merge into episodes across gaps of at most `gap_days`, and the
//! current daily dose gives diazepam equivalents and MME. Pure: `today` is an argument.

use super::codes::{DiazepamMg, DrugClass, Mme, RxCui};
use super::dose::{Amount, DoseUnit, IngredientRate, ingredient_rate, to_product_units};
use super::knowledge::{Knowledge, Medication, Route, Thresholds};
use super::record::{MedicationRecord, RecordKind, RecordStatus, resolve};
use chrono::{Datelike, Days, NaiveDate};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// No single record is taken to cover more than a year: longer supplies are data errors.
const MAX_RECORD_DAYS: i64 = 366;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExposureParams {
    /// Intervals separated by at most this many uncovered days belong to one episode.
    pub gap_days: u32,
    /// An episode is active if its supply covers today or ended at most this many days ago.
    pub grace_days: u32,
    /// Regular use: at least this many days a week on average.
    pub regular_days_per_week: f64,
}

impl ExposureParams {
    pub fn from_thresholds(t: &Thresholds) -> Self {
        ExposureParams {
            gap_days: t.exposure.episode_gap_days.value,
            grace_days: t.exposure.active_grace_days.value,
            regular_days_per_week: t.exposure.regular_use_days_per_week.value,
        }
    }
}

/// What an exposure track follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrackKey {
    Class(DrugClass),
    /// Benzodiazepines and Z-drugs together.
    Bzra,
    Ingredient(RxCui),
}

impl std::fmt::Display for TrackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrackKey::Class(c) => write!(f, "class:{c}"),
            TrackKey::Bzra => f.write_str("bzra"),
            TrackKey::Ingredient(r) => write!(f, "ingredient:{r}"),
        }
    }
}

/// Serialised as "class:benzodiazepine", "bzra", "ingredient:596", so it can key a JSON object.
impl Serialize for TrackKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    pub start: NaiveDate,
    /// Last covered day (inclusive); may lie after today when supply runs on.
    pub end: NaiveDate,
    /// Days covered from start to today (or to the end, if earlier); holes not counted.
    pub covered_days: u32,
    /// Covered days weighted by how often an as-needed supply allows use.
    pub use_days: f64,
    /// Days from start to today or the end, whichever is earlier.
    pub span_days: u32,
    pub active: bool,
    /// At least `regular_days_per_week` days of use a week on average.
    pub regular: bool,
    /// Indices into the records given to [`exposure`].
    pub records: Vec<usize>,
}

impl Episode {
    pub fn days_per_week(&self) -> f64 {
        if self.span_days == 0 {
            0.0
        } else {
            self.use_days * 7.0 / f64::from(self.span_days)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Track {
    /// Oldest first.
    pub episodes: Vec<Episode>,
    /// Records of this track whose supply cannot be known: exposure "unknown", not guessed.
    pub unknown_records: Vec<usize>,
}

impl Track {
    /// The active episode, if any.
    pub fn current(&self) -> Option<&Episode> {
        self.episodes.last().filter(|e| e.active)
    }
}

/// One product in current use, with its ingredient's daily amount if the dose could be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrentUse {
    pub class: DrugClass,
    pub medication: RxCui,
    pub ingredient: RxCui,
    pub rate: Option<Rate>,
    pub record: usize,
    pub prescriber: Option<String>,
    /// For a dispense, the order it fills.
    pub prescription: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    MgPerDay(f64),
    McgPerHr(f64),
}

impl From<IngredientRate> for Rate {
    fn from(r: IngredientRate) -> Self {
        match r {
            IngredientRate::MgPerDay(v) => Rate::MgPerDay(v),
            IngredientRate::McgPerHr(v) => Rate::McgPerHr(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiazepamExposure {
    /// Computed with the lower diazepam figure of each drug's equivalence range.
    pub low: DiazepamMg,
    pub high: DiazepamMg,
    /// BZRA ingredients in use whose dose or equivalence is unknown (the sum leaves them out).
    pub incomplete: Vec<RxCui>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MmeExposure {
    pub total: Mme,
    /// Opioids in use with no CDC 2022 factor (buprenorphine, non-patch fentanyl ...).
    pub without_factor: Vec<RxCui>,
    /// Opioids in use whose dose could not be read.
    pub unknown_dose: Vec<RxCui>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Exposure {
    pub tracks: BTreeMap<TrackKey, Track>,
    /// Products in use now (active episodes), one entry per product and ingredient.
    pub current: Vec<CurrentUse>,
    /// Present when a BZRA is in use.
    pub diazepam: Option<DiazepamExposure>,
    /// Present when an opioid analgesic is in use.
    pub mme: Option<MmeExposure>,
    /// Records whose medication is not in the knowledge base.
    pub unclassified: usize,
}

impl Exposure {
    pub fn track(&self, key: TrackKey) -> Option<&Track> {
        self.tracks.get(&key)
    }

    pub fn is_active(&self, key: TrackKey) -> bool {
        self.track(key).is_some_and(|t| t.current().is_some())
    }
}

/// A record after resolution, with its covered interval in day numbers [start, end).
struct Covered<'k> {
    index: usize,
    med: &'k Medication,
    start: i64,
    end: i64,
    /// Fraction of covered days the supply allows use on (1 for scheduled daily use).
    use_fraction: f64,
    per_day: Option<Amount>,
    patches_worn: Option<f64>,
    kind: RecordKind,
}

fn day(d: NaiveDate) -> i64 {
    i64::from(d.num_days_from_ce())
}

fn date_of(n: i64) -> NaiveDate {
    i32::try_from(n)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .unwrap_or(NaiveDate::MIN)
}

/// The covered interval and use pattern of one record, or None when it cannot be known.
fn cover<'k>(index: usize, r: &MedicationRecord, med: &'k Medication) -> Option<Covered<'k>> {
    let start = day(r.start?);
    let dosage = r.dosage.as_ref();
    let per_dose_units = dosage
        .and_then(|d| d.per_dose)
        .and_then(|a| to_product_units(a, med));
    let scheduled_units = dosage
        .and_then(|d| d.per_day.or(d.max_per_day))
        .and_then(|a| to_product_units(a, med));
    let quantity_units = r.quantity.and_then(|q| to_product_units(q, med));
    let supply = r
        .supply_days
        .or_else(|| match (quantity_units, scheduled_units) {
            (Some(q), Some(d)) if d > 0.0 => Some(q / d),
            _ => None,
        });
    let supply_end = supply.map(|s| start + (s.ceil() as i64).clamp(1, MAX_RECORD_DAYS));
    let explicit_end = r.end.map(|e| day(e) + 1).filter(|e| *e > start);
    let mut end = match (supply_end, explicit_end) {
        (Some(s), Some(e)) => Some(s.min(e)),
        (s, e) => s.or(e),
    };
    if r.status == RecordStatus::Stopped {
        // Stopped: covered up to the known stop; with none, the record shows use on its first
        // day only, and its supply is not assumed to have been taken.
        let stop = explicit_end.unwrap_or(start + 1);
        end = Some(end.map_or(stop, |e| e.min(stop)));
    }
    let end = end?;
    let end = end.min(start + MAX_RECORD_DAYS);
    let as_needed = dosage.is_some_and(|d| d.as_needed);
    // PRN: the expected daily amount is what was supplied over the days it must last, not the max.
    let prn_per_day = match (as_needed, r.quantity, r.supply_days) {
        // A supply of a split second would give an infinite amount.
        (true, Some(q), Some(s)) if s > 0.0 && (q.value / s).is_finite() => Some(Amount {
            value: q.value / s,
            unit: q.unit,
        }),
        _ => None,
    };
    let per_day = if as_needed {
        prn_per_day
    } else {
        dosage.and_then(|d| d.per_day)
    };
    let transdermal = med.route == Route::Transdermal;
    let administrations_per_day = match (
        per_day.and_then(|a| to_product_units(a, med)),
        per_dose_units,
    ) {
        (Some(d), Some(p)) if p > 0.0 => Some(d / p),
        _ => None,
    };
    let use_fraction = if transdermal {
        1.0
    } else {
        administrations_per_day.map_or(1.0, |a| a.clamp(0.0, 1.0))
    };
    Some(Covered {
        index,
        med,
        start,
        end,
        use_fraction,
        per_day,
        patches_worn: if transdermal {
            per_dose_units.or(Some(1.0))
        } else {
            None
        },
        kind: r.kind,
    })
}

/// Merges covered intervals into episodes.
fn episodes(mut items: Vec<&Covered<'_>>, today: i64, p: &ExposureParams) -> Vec<Episode> {
    items.sort_by(|a, b| {
        (a.start, a.end)
            .cmp(&(b.start, b.end))
            .then(a.use_fraction.total_cmp(&b.use_fraction))
    });
    let mut groups: Vec<Vec<&Covered<'_>>> = Vec::new();
    let mut group_end = i64::MIN;
    for c in items {
        match groups.last_mut() {
            Some(g) if c.start - group_end <= i64::from(p.gap_days) => {
                g.push(c);
                group_end = group_end.max(c.end);
            }
            _ => {
                groups.push(vec![c]);
                group_end = c.end;
            }
        }
    }
    groups.into_iter().map(|g| episode(g, today, p)).collect()
}

fn episode(group: Vec<&Covered<'_>>, today: i64, p: &ExposureParams) -> Episode {
    let start = group.iter().map(|c| c.start).min().unwrap_or(today);
    let end = group.iter().map(|c| c.end).max().unwrap_or(start + 1);
    let horizon = end.min(today + 1);
    // Sweep the interval boundaries, keeping the use fractions of the records covering each
    // stretch; a stretch counts at the best fraction among them. Fractions are non-negative, so
    // their bit patterns order like the numbers.
    let mut events: Vec<(i64, bool, u64)> = group
        .iter()
        .flat_map(|c| {
            [
                (c.start, true, c.use_fraction.to_bits()),
                (c.end, false, c.use_fraction.to_bits()),
            ]
        })
        .collect();
    events.sort_unstable();
    let mut open: BTreeMap<u64, u32> = BTreeMap::new();
    let (mut covered, mut used) = (0i64, 0f64);
    let mut prev = start;
    for (pos, is_start, frac) in events {
        if let Some((&best, _)) = open.last_key_value() {
            let len = pos.min(horizon) - prev.min(horizon);
            if len > 0 {
                covered += len;
                used += f64::from_bits(best) * len as f64;
            }
        }
        prev = pos;
        if is_start {
            *open.entry(frac).or_insert(0) += 1;
        } else if let Some(n) = open.get_mut(&frac) {
            *n -= 1;
            if *n == 0 {
                open.remove(&frac);
            }
        }
    }
    let span = (horizon - start).max(0);
    let last = end - 1;
    let active = start <= today && today <= last + i64::from(p.grace_days);
    let mut records: Vec<usize> = group.iter().map(|c| c.index).collect();
    records.sort_unstable();
    records.dedup();
    let regular = span > 0 && used * 7.0 / span as f64 >= p.regular_days_per_week;
    Episode {
        start: date_of(start),
        end: date_of(last),
        covered_days: u32::try_from(covered).unwrap_or(u32::MAX),
        use_days: used,
        span_days: u32::try_from(span).unwrap_or(u32::MAX),
        active,
        regular,
        records,
    }
}

/// Computes exposure for every class, for BZRAs together, and for every ingredient.
pub fn exposure(
    kb: &Knowledge,
    records: &[MedicationRecord],
    today: NaiveDate,
    p: &ExposureParams,
) -> Exposure {
    let today_n = day(today);
    let mut out = Exposure::default();
    let mut covered: Vec<Covered<'_>> = Vec::new();
    let mut unknown: Vec<(usize, &Medication)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.status == RecordStatus::Void {
            continue;
        }
        let Some(med) = resolve(kb, &r.medication) else {
            out.unclassified += 1;
            continue;
        };
        if !med.opens_episode() {
            continue;
        }
        match cover(i, r, med) {
            // Planned courses that have not begun are not exposure yet.
            Some(c) if c.start <= today_n => covered.push(c),
            Some(_) => {}
            None => unknown.push((i, med)),
        }
    }
    let keys_of = |med: &Medication| {
        let mut keys = vec![TrackKey::Class(med.class)];
        if med.class.is_bzra() {
            keys.push(TrackKey::Bzra);
        }
        keys.extend(
            med.ingredients
                .iter()
                .map(|i| TrackKey::Ingredient(i.ingredient)),
        );
        keys
    };
    let mut by_key: BTreeMap<TrackKey, Vec<&Covered<'_>>> = BTreeMap::new();
    for c in &covered {
        for k in keys_of(c.med) {
            by_key.entry(k).or_default().push(c);
        }
    }
    for (k, items) in by_key {
        out.tracks.entry(k).or_default().episodes = episodes(items, today_n, p);
    }
    for (i, med) in unknown {
        for k in keys_of(med) {
            out.tracks.entry(k).or_default().unknown_records.push(i);
        }
    }
    out.current = current_use(&out.tracks, &covered, records, today_n, p.grace_days);
    out.diazepam = diazepam(kb, &out.current);
    out.mme = mme(kb, &out.current, &covered);
    out
}

/// The products in use in each active class episode: those whose supply covers today or ended
/// within the grace period; for each product its latest record (a dispense over an order on the
/// same day). Per ingredient only the newest prescription counts, preferring one that covers today,
/// so a renewal at another strength is not counted twice.
fn current_use(
    tracks: &BTreeMap<TrackKey, Track>,
    covered: &[Covered<'_>],
    records: &[MedicationRecord],
    today: i64,
    grace: u32,
) -> Vec<CurrentUse> {
    let by_index: HashMap<usize, &Covered<'_>> = covered.iter().map(|c| (c.index, c)).collect();
    let mut out = Vec::new();
    for (key, track) in tracks {
        let TrackKey::Class(class) = key else {
            continue;
        };
        let Some(ep) = track.current() else { continue };
        let mut latest: BTreeMap<RxCui, &Covered<'_>> = BTreeMap::new();
        for c in ep.records.iter().filter_map(|i| by_index.get(i)) {
            if c.start > today || c.end - 1 + i64::from(grace) < today {
                continue;
            }
            // Latest first, a dispense over an order, a readable dose over none, then the larger
            // dose, so the choice never depends on record order.
            let rank = |c: &Covered<'_>| {
                let dose = c.per_day.map(|a| a.value.to_bits());
                (c.start, c.kind == RecordKind::Dispense, dose, c.end)
            };
            let slot = latest.entry(c.med.rxcui).or_insert(c);
            if rank(c) > rank(slot) {
                *slot = c;
            }
        }
        let covers_today = |c: &Covered<'_>| c.start <= today && today < c.end;
        // Per ingredient, the newest prescription supersedes older ones (a renewal at another
        // strength is a change of dose, not a second drug); products covering today come first.
        let mut newest: HashMap<RxCui, (bool, i64)> = HashMap::new();
        for c in latest.values() {
            for i in &c.med.ingredients {
                let key = (covers_today(c), c.start);
                let slot = newest.entry(i.ingredient).or_insert(key);
                if key > *slot {
                    *slot = key;
                }
            }
        }
        for c in latest.values() {
            for (idx, ing) in c.med.ingredients.iter().enumerate() {
                if newest.get(&ing.ingredient) != Some(&(covers_today(c), c.start)) {
                    continue;
                }
                let rate = c
                    .per_day
                    .and_then(|a| ingredient_rate(c.med, idx, a, c.patches_worn))
                    .or_else(|| {
                        // A patch's rate needs no daily amount.
                        c.patches_worn.and_then(|n| {
                            ingredient_rate(
                                c.med,
                                idx,
                                Amount {
                                    value: n,
                                    unit: DoseUnit::Unit,
                                },
                                Some(n),
                            )
                        })
                    })
                    .map(Rate::from);
                let record = records.get(c.index);
                out.push(CurrentUse {
                    class: *class,
                    medication: c.med.rxcui,
                    ingredient: ing.ingredient,
                    rate,
                    record: c.index,
                    prescriber: record.and_then(|r| r.prescriber.clone()),
                    prescription: record.and_then(|r| r.prescription.clone()),
                });
            }
        }
    }
    out
}

fn diazepam(kb: &Knowledge, current: &[CurrentUse]) -> Option<DiazepamExposure> {
    let bzra: Vec<&CurrentUse> = current.iter().filter(|u| u.class.is_bzra()).collect();
    if bzra.is_empty() {
        return None;
    }
    let (mut low, mut high, mut incomplete) = (0.0, 0.0, Vec::new());
    for u in bzra {
        match (u.rate, kb.diazepam_equivalent(u.ingredient)) {
            (Some(Rate::MgPerDay(mg)), Some(eq)) => {
                let (l, h) = eq.diazepam_range(mg);
                // A figure too large to add up is as unknown as a missing one.
                if (low + l).is_finite() && (high + h).is_finite() {
                    low += l;
                    high += h;
                } else {
                    incomplete.push(u.ingredient);
                }
            }
            _ => incomplete.push(u.ingredient),
        }
    }
    incomplete.sort_unstable();
    incomplete.dedup();
    Some(DiazepamExposure {
        low: DiazepamMg(low),
        high: DiazepamMg(high),
        incomplete,
    })
}

fn mme(kb: &Knowledge, current: &[CurrentUse], covered: &[Covered<'_>]) -> Option<MmeExposure> {
    let opioids: Vec<&CurrentUse> = current
        .iter()
        .filter(|u| u.class == DrugClass::OpioidAnalgesic)
        .collect();
    if opioids.is_empty() {
        return None;
    }
    let route_of = |u: &CurrentUse| {
        covered
            .iter()
            .find(|c| c.index == u.record)
            .map_or(Route::Unspecified, |c| c.med.route)
    };
    let (mut total, mut without_factor, mut unknown_dose) = (0.0, Vec::new(), Vec::new());
    for u in opioids {
        let Some(factor) = kb.mme_factor(u.ingredient, route_of(u)) else {
            without_factor.push(u.ingredient);
            continue;
        };
        match u.rate {
            Some(Rate::MgPerDay(v)) | Some(Rate::McgPerHr(v))
                if (total + v * factor.factor).is_finite() =>
            {
                total += v * factor.factor
            }
            // None, or a figure too large to add up.
            _ => unknown_dose.push(u.ingredient),
        }
    }
    for v in [&mut without_factor, &mut unknown_dose] {
        v.sort_unstable();
        v.dedup();
    }
    Some(MmeExposure {
        total: Mme(total),
        without_factor,
        unknown_dose,
    })
}

/// Adds days to a date, saturating.
pub fn add_days(d: NaiveDate, n: u32) -> NaiveDate {
    d.checked_add_days(Days::new(u64::from(n)))
        .unwrap_or(NaiveDate::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clinical::history::read_history;
    use crate::clinical::json::Json;

    fn dispense(rxcui: &str, per_dose: f64, extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({
            "resourceType": "MedicationDispense", "status": "completed",
            "medicationCodeableConcept": {"coding": [
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxcui}]},
            "whenHandedOver": "2026-11-20", "quantity": {"value": 30, "unit": "tablet"},
            "daysSupply": {"value": 30, "unit": "d"},
            "dosageInstruction": [{"timing": {"code": {"coding": [{"code": "QD"}]}},
                "doseAndRate": [{"doseQuantity": {"value": per_dose, "unit": "tablet"}}]}]
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    /// Fuzzing (the invariants fuzz/fuzz_targets/history.rs checks): readable but absurd figures
    /// (a huge dose, a supply lasting a split second) gave infinite rates and infinite diazepam
    /// and MME totals, shown on cards as "inf". Such a figure is now unknown, as a missing one is.
    #[test]
    fn overflowing_figures_are_unknown_not_infinite() {
        let kb = Knowledge::embedded().expect("kb");
        let bundle = serde_json::json!([
            // lorazepam 1 mg: 1e308 mg/day is finite, its diazepam figure is not.
            dispense("197901", 1e308, serde_json::json!({})),
            // alprazolam 0.5 mg, as needed, 60 tablets to last 1e-300 days.
            dispense(
                "308048",
                1.0,
                serde_json::json!({
                "dosageInstruction": [{"asNeededBoolean": true}],
                "quantity": {"value": 60, "unit": "tablet"},
                "daysSupply": {"value": 1e-300, "unit": "d"}})
            ),
            // oxycodone 5 mg: 1.5e308 mg/day is finite, its MME is not.
            dispense("1049621", 3e307, serde_json::json!({})),
        ]);
        let json = Json::from(&bundle);
        let h = read_history(&[&json]);
        assert_eq!(h.records.len(), 3);
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
        let exp = exposure(
            &kb,
            &h.records,
            today,
            &ExposureParams::from_thresholds(kb.thresholds()),
        );
        for u in &exp.current {
            if let Some(Rate::MgPerDay(x) | Rate::McgPerHr(x)) = u.rate {
                assert!(x.is_finite(), "{u:?}");
            }
        }
        let dz = exp.diazepam.expect("a BZRA is in use");
        assert!(dz.low.0.is_finite() && dz.high.0.is_finite(), "{dz:?}");
        assert!(
            !dz.incomplete.is_empty(),
            "the unusable figures are unknown"
        );
        let mme = exp.mme.expect("an opioid is in use");
        assert!(mme.total.0.is_finite(), "{mme:?}");
        assert!(!mme.unknown_dose.is_empty());
    }
}
