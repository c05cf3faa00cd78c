//! The off-ramp (taper) plan: from the current daily dose down to a goal (zero by default) in
//! steps the available tablets can make, each a percentage of the current level, never faster
//! than the per-2-weeks ceiling, slower near the end. Pure: no I/O, `start` is an argument, and
//! every input gives a plan or an error, never a panic (this runs on request paths).
//!
//! Representation choices:
//! - Stopping (goal 0) is an explicit last step of 0 mg lasting one day: its date is the first
//!   drug-free day and `TaperPlan::end`. It carries no units and is not a dosing interval, so the
//!   near-end interval rule applies to the dosed steps only.
//! - A goal above zero is the last step, held for one base interval; the clinician reviews then.
//! - When even the first reduction needs the current dose held longer than `step_days`, the first
//!   step starts `hold_current_days` after `start` (the current dose continues until then).
//! - Halves count as half a unit towards `max_units_per_day` (the count is tablet-equivalents).

use chrono::{Days, NaiveDate};
use serde::Serialize;

/// Bounds the dose table: it holds up to C(2n+k, k) doses for k strengths and n units, and it is
/// built on request paths. No benzodiazepine has more oral strengths than this.
pub const MAX_STRENGTHS: usize = 6;
/// Upper bound accepted for `max_units_per_day`, for the same reason.
pub const MAX_UNITS_PER_DAY: u32 = 12;
/// A plan with more steps than this is refused rather than offered.
pub const MAX_STEPS: usize = 200;
/// No level, and no `step_days`, lasts longer than a year: a tighter ceiling than that is an input
/// error, not a plan.
pub const MAX_STEP_DAYS: u32 = 365;
/// Strengths (and current doses) outside this range are data errors, and keeping doses well away
/// from zero keeps the float tolerance meaningful.
pub const MIN_MG: f64 = 0.001;
pub const MAX_STRENGTH_MG: f64 = 1000.0;
/// The ceiling is stated per 2 weeks.
const CEILING_PERIOD_DAYS: f64 = 14.0;
/// Relative float tolerance: doses that differ by less are the same dose.
const EPS: f64 = 1e-9;

fn tol(x: f64) -> f64 {
    EPS * x.abs().max(1.0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaperInput {
    /// The patient's current daily dose of the drug, mg.
    pub current_mg_per_day: f64,
    /// Oral unit strengths available (tablets/capsules), mg each.
    pub strengths_mg: Vec<f64>,
    /// True only when tablets are scored: half a unit may be used.
    pub halves_allowed: bool,
    /// 0.0 = stop (default); or an agreed lower dose, which must be makeable.
    pub goal_mg_per_day: f64,
    /// First day of the first reduced step (later by `TaperPlan::hold_current_days` if the
    /// ceiling needs the current dose held longer).
    pub start: NaiveDate,
    /// Base interval: 14, or 28 for older adults / > 1 year of use / with an opioid.
    pub step_days: u32,
    /// Fraction of the current level to aim for each step, e.g. 0.10.
    pub initial_reduction: f64,
    /// The hard ceiling per 2 weeks, e.g. 0.25.
    pub max_reduction_per_2_weeks: f64,
    /// No step asks for more tablets a day than this (halves count as 0.5).
    pub max_units_per_day: u32,
    /// "Smaller steps near the end": at or below this fraction of the starting dose, intervals
    /// are at least twice `step_days`, capped at `near_end_max_days` (thresholds.toml).
    pub near_end_fraction: f64,
    pub near_end_max_days: u32,
}

/// How many units of one strength. In `TaperStep::units`, per day (0.5 steps when halves are
/// allowed); in `TaperPlan::units_needed`, whole tablets for the whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitCount {
    pub strength_mg: f64,
    pub per_day: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaperStep {
    /// Inclusive.
    pub start: NaiveDate,
    /// Inclusive.
    pub end: NaiveDate,
    /// `end - start + 1`.
    pub days: u32,
    pub mg_per_day: f64,
    /// How to make `mg_per_day`: fewest units, then fewest split tablets, then fewest strengths.
    pub units: Vec<UnitCount>,
    /// Fraction of the previous level (of the current dose for the first step), 0..=1.
    pub reduction_from_previous: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaperPlan {
    /// Strictly decreasing; the last has `mg_per_day == goal` (a one-day 0 mg step = stop).
    pub steps: Vec<TaperStep>,
    /// The last step's end: the stop date for goal 0.
    pub end: NaiveDate,
    /// Whole tablets of each strength for all steps (`per_day` holds the total). Excludes the
    /// current dose before the first step, which the patient already has.
    pub units_needed: Vec<UnitCount>,
    /// Extra days at the current dose after `start` before the first step (normally 0).
    pub hold_current_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaperError {
    #[error("no unit strengths are available")]
    NoStrengths,
    #[error("invalid taper input: {0}")]
    InvalidInput(&'static str),
    #[error("the goal dose is not below the current dose")]
    GoalNotBelowCurrent,
}

/// One way to make a daily dose: half-units of each strength (in the table's strength order).
#[derive(Debug, Clone, Copy)]
struct Combo {
    mg: f64,
    halves: [u16; MAX_STRENGTHS],
}

impl Combo {
    /// Ordering of preference among combos that make the same dose.
    fn cost(&self) -> (u32, u32, u32) {
        let units = self.halves.iter().map(|&h| u32::from(h)).sum();
        let split = self.halves.iter().filter(|&&h| h % 2 == 1).count() as u32;
        let kinds = self.halves.iter().filter(|&&h| h > 0).count() as u32;
        (units, split, kinds)
    }

    fn units(&self, strengths: &[f64]) -> Vec<UnitCount> {
        strengths
            .iter()
            .zip(self.halves)
            .filter(|&(_, h)| h > 0)
            .map(|(&s, h)| UnitCount {
                strength_mg: s,
                per_day: f64::from(h) / 2.0,
            })
            .collect()
    }
}

/// Every makeable daily dose, ascending, each with its preferred combo; the first is 0 mg.
struct DoseTable {
    strengths: Vec<f64>,
    combos: Vec<Combo>,
}

impl DoseTable {
    /// Callers pass cleaned strengths (at most MAX_STRENGTHS) and a capped unit count.
    fn build(strengths: Vec<f64>, halves_allowed: bool, max_units: u32) -> Self {
        let budget = max_units.min(MAX_UNITS_PER_DAY) as u16 * 2;
        let stride = if halves_allowed { 1 } else { 2 };
        let mut combos = vec![Combo {
            mg: 0.0,
            halves: [0; MAX_STRENGTHS],
        }];
        for (j, &s) in strengths.iter().enumerate().take(MAX_STRENGTHS) {
            let mut next = Vec::with_capacity(combos.len() * (usize::from(budget) + 1));
            for c in &combos {
                let used: u16 = c.halves.iter().sum();
                let mut k = 0u16;
                while used + k <= budget {
                    let mut halves = c.halves;
                    halves[j] = k;
                    next.push(Combo {
                        mg: c.mg + s * f64::from(k) / 2.0,
                        halves,
                    });
                    k += stride;
                }
            }
            combos = merge_same_doses(next);
        }
        DoseTable { strengths, combos }
    }

    fn smallest_nonzero(&self) -> Option<&Combo> {
        self.combos.get(1)
    }

    /// The combo for exactly this dose, if makeable.
    fn find(&self, mg: f64) -> Option<&Combo> {
        let i = self.combos.partition_point(|c| c.mg < mg - tol(mg));
        self.combos.get(i).filter(|c| (c.mg - mg).abs() <= tol(mg))
    }

    /// The highest dose at most `target` and strictly below `level`. Index 0 (0 mg) qualifies
    /// whenever `level` is above the tolerance, which the caller ensures.
    fn highest_at_most_below(&self, target: f64, level: f64) -> Combo {
        let at_most = self
            .combos
            .partition_point(|c| c.mg <= target + tol(target));
        let below = self.combos.partition_point(|c| c.mg < level - tol(level));
        let i = at_most.min(below).saturating_sub(1);
        self.combos.get(i).copied().unwrap_or(Combo {
            mg: 0.0,
            halves: [0; MAX_STRENGTHS],
        })
    }
}

/// Sorts by dose and keeps the preferred combo of each run of equal doses.
fn merge_same_doses(mut v: Vec<Combo>) -> Vec<Combo> {
    v.sort_by(|a, b| a.mg.total_cmp(&b.mg));
    let mut out: Vec<Combo> = Vec::with_capacity(v.len());
    for c in v {
        match out.last_mut() {
            Some(last) if (c.mg - last.mg).abs() <= tol(last.mg) => {
                if c.cost() < last.cost() {
                    *last = c;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn valid_strength(s: f64) -> bool {
    s.is_finite() && (MIN_MG..=MAX_STRENGTH_MG).contains(&s)
}

/// Valid strengths, ascending, duplicates (IR and ER of one strength, say) removed.
fn distinct_strengths(strengths: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = strengths
        .iter()
        .copied()
        .filter(|&s| valid_strength(s))
        .collect();
    v.sort_by(f64::total_cmp);
    v.dedup_by(|a, b| (*a - *b).abs() <= tol(*b));
    v
}

/// All daily doses makeable from the strengths with at most `max_units_per_day` units (halves
/// count 0.5 and are used only if allowed), ascending, including 0. To stay bounded on any input
/// it ignores strengths outside 0.001..=1000 mg, uses at most the `MAX_STRENGTHS` smallest distinct
/// strengths and at most `MAX_UNITS_PER_DAY` units; `plan_taper` rejects inputs beyond those.
pub fn makeable_doses(
    strengths_mg: &[f64],
    halves_allowed: bool,
    max_units_per_day: u32,
) -> Vec<f64> {
    let mut strengths = distinct_strengths(strengths_mg);
    strengths.truncate(MAX_STRENGTHS);
    DoseTable::build(strengths, halves_allowed, max_units_per_day)
        .combos
        .iter()
        .map(|c| c.mg)
        .collect()
}

fn fraction_ok(x: f64) -> bool {
    x > 0.0 && x <= 1.0
}

fn validate(input: &TaperInput) -> Result<Vec<f64>, TaperError> {
    use TaperError::InvalidInput;
    let current = input.current_mg_per_day;
    if !(current.is_finite() && current > 0.0) {
        return Err(InvalidInput("current_mg_per_day must be a positive number"));
    }
    if current < MIN_MG {
        return Err(InvalidInput("current_mg_per_day is below 0.001 mg"));
    }
    if input.strengths_mg.is_empty() {
        return Err(TaperError::NoStrengths);
    }
    if input
        .strengths_mg
        .iter()
        .any(|&s| !(s.is_finite() && s > 0.0))
    {
        return Err(InvalidInput("strengths_mg must be positive numbers"));
    }
    if input.strengths_mg.iter().any(|&s| !valid_strength(s)) {
        return Err(InvalidInput("strengths_mg must be within 0.001..=1000 mg"));
    }
    let strengths = distinct_strengths(&input.strengths_mg);
    if strengths.len() > MAX_STRENGTHS {
        return Err(InvalidInput("more than 6 distinct strengths"));
    }
    if input.max_units_per_day == 0 || input.max_units_per_day > MAX_UNITS_PER_DAY {
        return Err(InvalidInput("max_units_per_day must be within 1..=12"));
    }
    if input.step_days == 0 || input.step_days > MAX_STEP_DAYS {
        return Err(InvalidInput("step_days must be within 1..=365"));
    }
    if !fraction_ok(input.initial_reduction) {
        return Err(InvalidInput("initial_reduction must be within (0, 1]"));
    }
    if !fraction_ok(input.near_end_fraction) {
        return Err(InvalidInput("near_end_fraction must be within (0, 1]"));
    }
    if input.near_end_max_days == 0 || input.near_end_max_days > MAX_STEP_DAYS {
        return Err(InvalidInput("near_end_max_days must be within 1..=365"));
    }
    if !fraction_ok(input.max_reduction_per_2_weeks) {
        return Err(InvalidInput(
            "max_reduction_per_2_weeks must be within (0, 1]",
        ));
    }
    let goal = input.goal_mg_per_day;
    if !(goal.is_finite() && goal >= 0.0) {
        return Err(InvalidInput(
            "goal_mg_per_day must be zero or a positive number",
        ));
    }
    if goal >= current - tol(current) {
        return Err(TaperError::GoalNotBelowCurrent);
    }
    Ok(strengths)
}

fn reduction(prev: f64, next: f64) -> f64 {
    ((prev - next) / prev).clamp(0.0, 1.0)
}

/// Days the level before a reduction of `r` must last so that `r` stays within the ceiling.
fn days_needed_for(r: f64, ceiling: f64) -> Result<u32, TaperError> {
    // EPS absorbs float noise so that exactly-at-ceiling reductions need exactly the period.
    let days = (CEILING_PERIOD_DAYS * r / ceiling - EPS).ceil().max(1.0);
    if days > f64::from(MAX_STEP_DAYS) {
        return Err(TaperError::InvalidInput(
            "max_reduction_per_2_weeks is too low: a level would need more than a year",
        ));
    }
    Ok(days as u32)
}

fn add_days(d: NaiveDate, n: u32) -> Result<NaiveDate, TaperError> {
    d.checked_add_days(Days::new(u64::from(n)))
        .ok_or(TaperError::InvalidInput("plan dates out of range"))
}

/// The dose levels after `current`, down to the goal: each aims `initial_reduction` below the
/// level and rounds down to a makeable dose; see the module docs for the ends.
fn dose_levels(
    input: &TaperInput,
    table: &DoseTable,
    goal: Combo,
) -> Result<Vec<Combo>, TaperError> {
    let current = input.current_mg_per_day;
    let smallest = table
        .smallest_nonzero()
        .copied()
        .ok_or(TaperError::InvalidInput(
            "no dose can be made from the strengths",
        ))?;
    let current_makeable = table.find(current).is_some();
    let mut levels: Vec<Combo> = Vec::new();
    let mut level = current;
    while level > goal.mg + tol(goal.mg) {
        if levels.len() >= MAX_STEPS {
            return Err(TaperError::InvalidInput(
                "the plan would need more than 200 steps",
            ));
        }
        // An unmakeable current dose first goes to the nearest makeable dose below it.
        let target = if levels.is_empty() && !current_makeable {
            level
        } else {
            level * (1.0 - input.initial_reduction)
        };
        let mut next = table.highest_at_most_below(target, level);
        if next.mg < goal.mg {
            next = goal;
        }
        // Stopping only ever happens from the smallest makeable dose.
        if next.mg == 0.0 && level > smallest.mg + tol(smallest.mg) {
            next = smallest;
        }
        level = next.mg;
        levels.push(next);
    }
    Ok(levels)
}

/// Plans the taper; see the module docs for how the stop, holds and units are represented.
pub fn plan_taper(input: &TaperInput) -> Result<TaperPlan, TaperError> {
    let strengths = validate(input)?;
    let table = DoseTable::build(strengths, input.halves_allowed, input.max_units_per_day);
    let goal = table
        .find(input.goal_mg_per_day)
        .copied()
        .ok_or(TaperError::InvalidInput(
            "goal_mg_per_day cannot be made from the strengths",
        ))?;
    let levels = dose_levels(input, &table, goal)?;

    let current = input.current_mg_per_day;
    let ceiling = input.max_reduction_per_2_weeks;
    let near_end_days = input
        .step_days
        .max((2 * input.step_days).min(input.near_end_max_days));
    let base_days = |mg: f64| {
        if mg <= input.near_end_fraction * current + tol(current) {
            near_end_days
        } else {
            input.step_days
        }
    };

    let first_mg = levels.first().map_or(goal.mg, |c| c.mg);
    let hold_current_days =
        days_needed_for(reduction(current, first_mg), ceiling)?.saturating_sub(input.step_days);

    let mut steps = Vec::with_capacity(levels.len());
    let mut totals_half_units = vec![0u64; table.strengths.len()];
    let mut start = add_days(input.start, hold_current_days)?;
    let mut prev = current;
    for (i, combo) in levels.iter().enumerate() {
        let days = match levels.get(i + 1) {
            // Hold longer rather than break the ceiling on the next reduction.
            Some(next) => {
                base_days(combo.mg).max(days_needed_for(reduction(combo.mg, next.mg), ceiling)?)
            }
            None if combo.mg == 0.0 => 1,
            None => base_days(combo.mg),
        };
        let end = add_days(start, days - 1)?;
        for (total, &h) in totals_half_units.iter_mut().zip(&combo.halves) {
            *total += u64::from(h) * u64::from(days);
        }
        steps.push(TaperStep {
            start,
            end,
            days,
            mg_per_day: combo.mg,
            units: combo.units(&table.strengths),
            reduction_from_previous: reduction(prev, combo.mg),
        });
        prev = combo.mg;
        start = add_days(end, 1)?;
    }

    let end = steps
        .last()
        .map(|s| s.end)
        .ok_or(TaperError::GoalNotBelowCurrent)?;
    let units_needed = table
        .strengths
        .iter()
        .zip(&totals_half_units)
        .filter(|&(_, &h)| h > 0)
        .map(|(&s, &h)| UnitCount {
            strength_mg: s,
            // A split tablet's other half is used the next day; an odd total needs one more.
            per_day: h.div_ceil(2) as f64,
        })
        .collect();
    Ok(TaperPlan {
        steps,
        end,
        units_needed,
        hold_current_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_default()
    }

    fn input(current: f64, strengths: &[f64], halves: bool) -> TaperInput {
        TaperInput {
            current_mg_per_day: current,
            strengths_mg: strengths.to_vec(),
            halves_allowed: halves,
            goal_mg_per_day: 0.0,
            start: date("2026-01-05"),
            step_days: 14,
            initial_reduction: 0.10,
            max_reduction_per_2_weeks: 0.25,
            max_units_per_day: 8,
            near_end_fraction: 0.25,
            near_end_max_days: 56,
        }
    }

    /// (mg, start, end) of each step, for compact assertions.
    fn outline(plan: &TaperPlan) -> Vec<(f64, String, String)> {
        plan.steps
            .iter()
            .map(|s| (s.mg_per_day, s.start.to_string(), s.end.to_string()))
            .collect()
    }

    fn row(mg: f64, start: &str, end: &str) -> (f64, String, String) {
        (mg, start.to_string(), end.to_string())
    }

    #[test]
    fn alprazolam_1_5_mg_unscored_14_day_steps() {
        let plan = plan_taper(&input(1.5, &[0.25, 0.5, 1.0], false));
        let Ok(plan) = plan else {
            panic!("expected a plan, got {plan:?}")
        };
        // 10% aims round down to quarter-mg doses; 0.75 -> 0.5 (33%) needs 19 days at 0.75,
        // 0.5 -> 0.25 (50%) 28 days, and the stop (100%) 56 days at 0.25.
        assert_eq!(
            outline(&plan),
            vec![
                row(1.25, "2026-01-05", "2026-01-18"),
                row(1.0, "2026-01-19", "2026-02-01"),
                row(0.75, "2026-02-02", "2026-02-20"),
                row(0.5, "2026-02-21", "2026-03-20"),
                row(0.25, "2026-03-21", "2026-05-15"),
                row(0.0, "2026-05-16", "2026-05-16"),
            ]
        );
        assert_eq!(plan.end, date("2026-05-16"));
        assert_eq!(plan.hold_current_days, 0);
        assert_eq!(
            plan.steps[0].units,
            vec![
                UnitCount {
                    strength_mg: 0.25,
                    per_day: 1.0
                },
                UnitCount {
                    strength_mg: 1.0,
                    per_day: 1.0
                },
            ]
        );
        assert!(plan.steps[5].units.is_empty());
        // 0.25 mg tablets: 14 (1.25) + 19 (0.75) + 56 (0.25); 0.5 mg: 19 + 28; 1 mg: 14 + 14.
        assert_eq!(
            plan.units_needed,
            vec![
                UnitCount {
                    strength_mg: 0.25,
                    per_day: 89.0
                },
                UnitCount {
                    strength_mg: 0.5,
                    per_day: 47.0
                },
                UnitCount {
                    strength_mg: 1.0,
                    per_day: 28.0
                },
            ]
        );
    }

    #[test]
    fn lorazepam_2_mg_unscored() {
        let Ok(plan) = plan_taper(&input(2.0, &[0.5, 1.0, 2.0], false)) else {
            panic!("expected a plan")
        };
        assert_eq!(
            outline(&plan),
            vec![
                row(1.5, "2026-01-05", "2026-01-23"),
                row(1.0, "2026-01-24", "2026-02-20"),
                row(0.5, "2026-02-21", "2026-04-17"),
                row(0.0, "2026-04-18", "2026-04-18"),
            ]
        );
        let reductions: Vec<f64> = plan
            .steps
            .iter()
            .map(|s| s.reduction_from_previous)
            .collect();
        assert_eq!(reductions, vec![0.25, 1.0 / 3.0, 0.5, 1.0]);
    }

    #[test]
    fn diazepam_20_mg_with_halves_falls_by_shrinking_steps() {
        let Ok(plan) = plan_taper(&input(20.0, &[2.0, 5.0, 10.0], true)) else {
            panic!("expected a plan")
        };
        let doses: Vec<f64> = plan.steps.iter().map(|s| s.mg_per_day).collect();
        assert_eq!(
            doses,
            vec![
                18.0, 16.0, 14.0, 12.5, 11.0, 9.5, 8.5, 7.5, 6.5, 5.5, 4.5, 4.0, 3.5, 3.0, 2.5,
                2.0, 1.0, 0.0
            ]
        );
        assert_eq!(plan.steps[0].start, date("2026-01-05"));
        // 5 mg = 25% of the start: from 4.5 mg on, 28-day intervals; 1 mg is half a 2 mg tablet.
        let days: Vec<u32> = plan.steps.iter().map(|s| s.days).collect();
        assert_eq!(&days[..10], &[14; 10]);
        assert_eq!(&days[10..16], &[28; 6]);
        assert_eq!(days[16], 56);
        assert_eq!(
            plan.steps[16].units,
            vec![UnitCount {
                strength_mg: 2.0,
                per_day: 0.5
            }]
        );
        assert_eq!(
            plan.steps[3].units,
            vec![
                UnitCount {
                    strength_mg: 5.0,
                    per_day: 0.5
                },
                UnitCount {
                    strength_mg: 10.0,
                    per_day: 1.0
                },
            ]
        );
    }

    #[test]
    fn unmakeable_current_goes_to_nearest_makeable_below() {
        let Ok(plan) = plan_taper(&input(1.4, &[0.5], false)) else {
            panic!("expected a plan")
        };
        assert_eq!(plan.steps[0].mg_per_day, 1.0);
        // 1.4 -> 1.0 is 29%: 16 days at 1.4 mg, 2 more than the assumed 14.
        assert_eq!(plan.hold_current_days, 2);
        assert_eq!(plan.steps[0].start, date("2026-01-07"));
    }

    #[test]
    fn too_large_first_drop_holds_the_current_dose() {
        // Only 1 mg tablets and 0.75 mg/day: the only dose below is stopping (100%), which needs
        // 56 days at 25% per 2 weeks, 42 more than the assumed 14.
        let Ok(plan) = plan_taper(&input(0.75, &[1.0], false)) else {
            panic!("expected a plan")
        };
        assert_eq!(plan.hold_current_days, 42);
        assert_eq!(outline(&plan), vec![row(0.0, "2026-02-16", "2026-02-16")]);
    }

    #[test]
    fn agreed_goal_ends_on_that_dose() {
        let mut i = input(2.0, &[0.5, 1.0, 2.0], false);
        i.goal_mg_per_day = 1.0;
        let Ok(plan) = plan_taper(&i) else {
            panic!("expected a plan")
        };
        let doses: Vec<f64> = plan.steps.iter().map(|s| s.mg_per_day).collect();
        assert_eq!(doses, vec![1.5, 1.0]);
        assert_eq!(plan.steps[1].days, 14);
    }

    #[test]
    fn bad_input_is_an_error() {
        let ok = input(2.0, &[0.5, 1.0], false);
        let with = |f: &dyn Fn(&mut TaperInput)| {
            let mut i = ok.clone();
            f(&mut i);
            plan_taper(&i).err()
        };
        assert_eq!(
            with(&|i| i.strengths_mg.clear()),
            Some(TaperError::NoStrengths)
        );
        assert_eq!(
            with(&|i| i.goal_mg_per_day = 2.0),
            Some(TaperError::GoalNotBelowCurrent)
        );
        for bad in [
            with(&|i| i.current_mg_per_day = f64::NAN),
            with(&|i| i.current_mg_per_day = -1.0),
            with(&|i| i.strengths_mg.push(0.0)),
            with(&|i| i.strengths_mg.push(f64::INFINITY)),
            with(&|i| i.step_days = 0),
            with(&|i| i.initial_reduction = 0.0),
            with(&|i| i.max_reduction_per_2_weeks = 1.5),
            with(&|i| i.max_units_per_day = 0),
            with(&|i| i.goal_mg_per_day = 0.7),
            with(&|i| i.max_reduction_per_2_weeks = 0.01),
        ] {
            assert!(matches!(bad, Some(TaperError::InvalidInput(_))), "{bad:?}");
        }
    }

    #[test]
    fn makeable_doses_with_and_without_halves() {
        assert_eq!(
            makeable_doses(&[1.0, 0.5], false, 2),
            vec![0.0, 0.5, 1.0, 1.5, 2.0]
        );
        assert_eq!(
            makeable_doses(&[2.0], true, 2),
            vec![0.0, 1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(makeable_doses(&[f64::NAN, -1.0], true, 4), vec![0.0]);
    }
}
