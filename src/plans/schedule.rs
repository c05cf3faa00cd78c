//! The off-ramp plan for a patient: which drug to taper first, from which tablets, how fast, and
//! when to follow up. Pure; the taper arithmetic is in `taper`.

use super::taper::{TaperInput, TaperPlan, TaperStep, UnitCount, plan_taper};
use crate::clinical::exposure::add_days;
use crate::clinical::knowledge::{Knowledge, Medication};
use crate::clinical::{DrugClass, RxCui};
use crate::rules::OffRamp;
use chrono::NaiveDate;

const DIAZEPAM: u32 = 3322;

/// mg in one unit of a single-ingredient product (0 when unknown).
pub fn strength_of(m: &Medication) -> f64 {
    m.ingredients
        .first()
        .and_then(|i| i.strength)
        .map_or(0.0, |s| s.amount)
}

#[derive(Debug, Clone)]
pub struct OffRampPlan<'k> {
    pub ingredient: RxCui,
    pub ingredient_name: String,
    pub current_mg_per_day: f64,
    /// The one product the plan is made from (one orderable request).
    pub product: &'k Medication,
    pub taper: TaperPlan,
    pub step_days: u32,
    pub follow_ups: Vec<NaiveDate>,
    /// Other BZRAs in use: taper one drug at a time.
    pub others: Vec<String>,
    /// The diazepam-switch option, when allowed for this drug and patient.
    pub switch: Option<SwitchOption<'k>>,
}

#[derive(Debug, Clone)]
pub struct SwitchOption<'k> {
    /// Diazepam mg/day from the lower diazepam figure, rounded down to a makeable dose.
    pub diazepam_mg_per_day: f64,
    /// The range across sources (lower, higher diazepam figure) before rounding.
    pub range: (f64, f64),
    pub product: &'k Medication,
    pub taper: TaperPlan,
}

/// The product a plan is made from: the smallest strength that makes the current dose in at
/// most `max_units` tablets a day, so every step is one prescription of one tablet.
fn pick_product(kb: &Knowledge, ingredient: RxCui, mg: f64, max_units: u32) -> Option<&Medication> {
    let units = kb.oral_units_of(ingredient);
    units.iter().copied().find(|m| {
        m.ingredients[0]
            .strength
            .is_some_and(|s| mg / s.amount <= f64::from(max_units))
    })
}

/// Plans a taper from `mg` with one product; the plan starts at `start` on the current dose when
/// the planner needs it held before the first cut, so the order covers every day.
fn taper_with(
    kb: &Knowledge,
    product: &Medication,
    mg: f64,
    start: NaiveDate,
    step_days: u32,
) -> Option<TaperPlan> {
    let t = &kb.thresholds().taper;
    let strength = product.ingredients.first()?.strength?.amount;
    let mut plan = plan_taper(&TaperInput {
        current_mg_per_day: mg,
        strengths_mg: vec![strength],
        // RxNorm does not say which tablets are scored: whole tablets only until a source does.
        halves_allowed: false,
        goal_mg_per_day: 0.0,
        start,
        step_days,
        initial_reduction: t.start_reduction_percent_high.value / 100.0,
        max_reduction_per_2_weeks: t.max_reduction_percent_per_2_weeks.value / 100.0,
        max_units_per_day: t.max_units_per_day.value,
        near_end_fraction: t.near_end_percent_of_start.value / 100.0,
        near_end_max_days: t.near_end_max_step_days.value,
    })
    .ok()?;
    if plan.hold_current_days > 0 {
        let per_day = mg / strength;
        // Only a dose the tablets make can be ordered as a hold.
        if (per_day - per_day.round()).abs() < 1e-9 {
            let hold_end = add_days(start, plan.hold_current_days - 1);
            plan.steps.insert(
                0,
                TaperStep {
                    start,
                    end: hold_end,
                    days: plan.hold_current_days,
                    mg_per_day: mg,
                    units: vec![UnitCount {
                        strength_mg: strength,
                        per_day,
                    }],
                    reduction_from_previous: 0.0,
                },
            );
            let held = per_day * f64::from(plan.hold_current_days);
            add_units(&mut plan, strength, held);
        }
    }
    plan.steps
        .iter()
        .any(|s| s.mg_per_day > 0.0)
        .then_some(plan)
}

fn add_units(plan: &mut TaperPlan, strength: f64, n: f64) {
    match plan
        .units_needed
        .iter_mut()
        .find(|u| (u.strength_mg - strength).abs() < 1e-9)
    {
        Some(u) => u.per_day += n,
        None => plan.units_needed.push(UnitCount {
            strength_mg: strength,
            per_day: n,
        }),
    }
}

/// The plan for an off-ramp finding, or None when no current dose or no oral tablet is known.
pub fn off_ramp_plan<'k>(
    kb: &'k Knowledge,
    f: &OffRamp,
    today: NaiveDate,
) -> Option<OffRampPlan<'k>> {
    let t = &kb.thresholds().taper;
    // Intermittent use rarely causes withdrawal: no taper (Joint guideline 2025, Table 2).
    if !f.regular {
        return None;
    }
    // Taper first the drug with the largest diazepam-equivalent dose.
    let dz = |ing: RxCui, mg: f64| {
        kb.diazepam_equivalent(ing)
            .map_or(mg, |e| e.diazepam_range(mg).0)
    };
    let mut known: Vec<(RxCui, f64)> = f
        .uses
        .iter()
        .filter_map(|u| u.mg_per_day.filter(|v| *v > 0.0).map(|v| (u.ingredient, v)))
        .collect();
    known.sort_by(|a, b| dz(b.0, b.1).total_cmp(&dz(a.0, a.1)).then(a.0.cmp(&b.0)));
    let &(ingredient, mg) = known.first()?;
    let slow = f.older_adult || f.with_opioid || f.covered_days > t.slow_after_use_days.value;
    let step_days = if slow {
        t.slow_step_days.value
    } else {
        t.step_days.value
    };
    let product = pick_product(kb, ingredient, mg, t.max_units_per_day.value)?;
    let start = add_days(today, 1);
    let taper = taper_with(kb, product, mg, start, step_days)?;
    let follow_every = if f.with_opioid {
        t.follow_up_with_opioid_days.value
    } else {
        t.follow_up_after_reduction_days.value
    };
    let follow_ups = follow_up_dates(&taper, follow_every);
    let name = |r: RxCui| {
        kb.ingredient(r)
            .map_or_else(|| r.to_string(), |i| i.name.clone())
    };
    let others = known.iter().skip(1).map(|(r, _)| name(*r)).collect();
    let switch = switch_option(kb, f, ingredient, mg, start, step_days);
    Some(OffRampPlan {
        ingredient,
        ingredient_name: name(ingredient),
        current_mg_per_day: mg,
        product,
        taper,
        step_days,
        follow_ups,
        others,
        switch,
    })
}

impl OffRampPlan<'_> {
    /// mg in one tablet of the product the plan is made from.
    pub fn strength_mg(&self) -> f64 {
        strength_of(self.product)
    }

    /// Tablets a day of that product for a daily dose.
    pub fn tablets(&self, mg_per_day: f64) -> f64 {
        tablets_of(self.product, mg_per_day)
    }
}

/// Tablets a day of `product` for a daily dose (0 if its strength is unknown).
pub fn tablets_of(product: &Medication, mg_per_day: f64) -> f64 {
    let s = strength_of(product);
    if s > 0.0 { mg_per_day / s } else { 0.0 }
}

/// A contact a week after each reduction, then every `every` days while the step lasts, and one
/// two weeks after the last.
fn follow_up_dates(plan: &TaperPlan, every: u32) -> Vec<NaiveDate> {
    let mut out = Vec::new();
    for s in plan.steps.iter().filter(|s| s.mg_per_day > 0.0) {
        let mut d = add_days(s.start, 7);
        while d <= s.end {
            out.push(d);
            d = add_days(d, every.max(1));
        }
    }
    out.push(add_days(plan.end, 14));
    out.dedup();
    out
}

fn switch_option<'k>(
    kb: &'k Knowledge,
    f: &OffRamp,
    ingredient: RxCui,
    mg: f64,
    start: NaiveDate,
    step_days: u32,
) -> Option<SwitchOption<'k>> {
    let eq = kb.diazepam_equivalent(ingredient)?;
    if !eq.switch_to_diazepam || f.switch_contraindicated {
        return None;
    }
    let diazepam = RxCui::parse(&DIAZEPAM.to_string())?;
    kb.ingredient(diazepam)?;
    let range = eq.diazepam_range(mg);
    // The smallest strength that reaches at least 90% of the lower figure in whole tablets within
    // the daily limit (finer steps later); else the one that gets closest without passing it.
    let max_units = f64::from(kb.thresholds().taper.max_units_per_day.value);
    let candidates: Vec<(&Medication, f64)> = kb
        .oral_units_of(diazepam)
        .into_iter()
        .filter(|m| m.class == DrugClass::Benzodiazepine)
        .filter_map(|m| {
            let s = strength_of(m);
            let r = (range.0 / s).floor() * s;
            (r > 0.0).then_some((m, r))
        })
        .collect();
    let (product, rounded) = candidates
        .iter()
        .copied()
        .find(|(m, r)| *r >= 0.9 * range.0 && r / strength_of(m) <= max_units)
        .or_else(|| {
            candidates
                .iter()
                .copied()
                .max_by(|a, b| a.1.total_cmp(&b.1))
        })?;
    // The switch itself takes 1 to 2 weeks at the full equivalent dose; the taper starts after it.
    let switch_days = 14;
    let mut taper = taper_with(
        kb,
        product,
        rounded,
        add_days(start, switch_days),
        step_days,
    )?;
    let strength = strength_of(product);
    let per_day = rounded / strength;
    taper.steps.insert(
        0,
        TaperStep {
            start,
            end: add_days(start, switch_days - 1),
            days: switch_days,
            mg_per_day: rounded,
            units: vec![UnitCount {
                strength_mg: strength,
                per_day,
            }],
            reduction_from_previous: 0.0,
        },
    );
    add_units(&mut taper, strength, per_day * f64::from(switch_days));
    Some(SwitchOption {
        diazepam_mg_per_day: rounded,
        range,
        product,
        taper,
    })
}
