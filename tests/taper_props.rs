//! Properties of taper plans that must hold for any dose, strengths and schedule: makeable and
//! strictly falling steps, the per-2-weeks ceiling kept by holding longer, stopping only from the
//! smallest dose, slower near the end, contiguous dates, and errors (never panics) on bad input.

use chrono::{Days, NaiveDate};
use offramp::plans::taper::{
    MAX_STEPS, TaperError, TaperInput, TaperPlan, makeable_doses, plan_taper,
};
use proptest::prelude::*;
use proptest::sample::Index;

const EPS: f64 = 1e-9;

/// The product defaults in thresholds.toml.
const NEAR_END_FRACTION: f64 = 0.25;
const NEAR_END_MAX_DAYS: u32 = 56;

fn tol(x: f64) -> f64 {
    EPS * x.abs().max(1.0)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= tol(a.max(b))
}

fn start_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 2).unwrap_or_default()
}

/// Strengths as the knowledge base has them, or arbitrary ones (which make many more doses).
fn strengths() -> impl Strategy<Value = Vec<f64>> {
    const REAL: [f64; 12] = [
        0.125, 0.25, 0.5, 1.0, 2.0, 2.5, 3.75, 5.0, 7.5, 10.0, 15.0, 20.0,
    ];
    prop_oneof![
        prop::collection::vec(prop::sample::select(&REAL[..]), 1..=4),
        prop::collection::vec(0.125f64..20.0, 1..=4),
    ]
}

/// Valid inputs over the ranges of the brief; the goal is 0 or a makeable dose below current.
fn valid_input() -> impl Strategy<Value = TaperInput> {
    (
        0.125f64..100.0,
        strengths(),
        any::<bool>(),
        prop_oneof![Just(14u32), Just(28u32)],
        0.05f64..0.25,
        prop_oneof![4 => Just(0.25f64), 1 => 0.1f64..=1.0],
        prop_oneof![3 => Just(8u32), 1 => 1u32..=12],
        prop::option::weighted(0.3, any::<Index>()),
        0u64..2000,
    )
        .prop_map(
            |(
                current,
                strengths,
                halves,
                step_days,
                aim,
                ceiling,
                max_units,
                goal_pick,
                offset,
            )| {
                let below: Vec<f64> = makeable_doses(&strengths, halves, max_units)
                    .into_iter()
                    .filter(|&d| d > 0.0 && d < current - tol(current))
                    .collect();
                let goal = match goal_pick {
                    Some(i) if !below.is_empty() => below[i.index(below.len())],
                    _ => 0.0,
                };
                TaperInput {
                    current_mg_per_day: current,
                    strengths_mg: strengths,
                    halves_allowed: halves,
                    goal_mg_per_day: goal,
                    start: start_date() + Days::new(offset),
                    step_days,
                    initial_reduction: aim,
                    max_reduction_per_2_weeks: ceiling,
                    max_units_per_day: max_units,
                    near_end_fraction: NEAR_END_FRACTION,
                    near_end_max_days: NEAR_END_MAX_DAYS,
                }
            },
        )
}

fn plan_of(input: &TaperInput) -> Result<TaperPlan, TestCaseError> {
    plan_taper(input).map_err(|e| TestCaseError::fail(format!("no plan: {e} for {input:?}")))
}

fn is_makeable(doses: &[f64], mg: f64) -> bool {
    doses.iter().any(|&d| close(d, mg))
}

/// The level before step `i`, and how long it lasted.
fn previous(input: &TaperInput, plan: &TaperPlan, i: usize) -> (f64, u32) {
    match i.checked_sub(1).and_then(|j| plan.steps.get(j)) {
        Some(s) => (s.mg_per_day, s.days),
        None => (
            input.current_mg_per_day,
            input.step_days + plan.hold_current_days,
        ),
    }
}

fn is_stop(plan: &TaperPlan, i: usize) -> bool {
    i + 1 == plan.steps.len() && plan.steps[i].mg_per_day == 0.0
}

fn check_makeable_units(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    let doses = makeable_doses(
        &input.strengths_mg,
        input.halves_allowed,
        input.max_units_per_day,
    );
    for s in &plan.steps {
        prop_assert!(
            is_makeable(&doses, s.mg_per_day),
            "{} not makeable",
            s.mg_per_day
        );
        let sum: f64 = s.units.iter().map(|u| u.strength_mg * u.per_day).sum();
        prop_assert!(
            close(sum, s.mg_per_day),
            "units make {sum}, not {}",
            s.mg_per_day
        );
        let count: f64 = s.units.iter().map(|u| u.per_day).sum();
        prop_assert!(count <= f64::from(input.max_units_per_day) + EPS);
        for u in &s.units {
            prop_assert!(u.per_day > 0.0);
            let halves = u.per_day * 2.0;
            prop_assert!(
                halves == halves.round(),
                "{} is not whole or half units",
                u.per_day
            );
            prop_assert!(input.halves_allowed || u.per_day == u.per_day.round());
            prop_assert!(input.strengths_mg.contains(&u.strength_mg));
        }
    }
    Ok(())
}

fn check_strictly_falling(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    prop_assert!(!plan.steps.is_empty());
    let mut prev = input.current_mg_per_day;
    for s in &plan.steps {
        prop_assert!(
            s.mg_per_day < prev - tol(prev),
            "{} after {prev}",
            s.mg_per_day
        );
        prop_assert!(s.mg_per_day >= 0.0);
        prev = s.mg_per_day;
    }
    Ok(())
}

/// The ceiling, and that the hold is lengthened only as far as the ceiling or the base needs.
fn check_ceiling(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    let ceiling = input.max_reduction_per_2_weeks;
    for (i, s) in plan.steps.iter().enumerate() {
        let (prev_mg, prev_days) = previous(input, plan, i);
        let r = s.reduction_from_previous;
        prop_assert!((0.0..=1.0).contains(&r));
        prop_assert!(close(r, (prev_mg - s.mg_per_day) / prev_mg));
        prop_assert!(
            r <= ceiling * f64::from(prev_days) / 14.0 + EPS,
            "step {i}: {r} after {prev_days} days at {prev_mg}"
        );
        // One day less and the ceiling would break, or the level is at its base length.
        let base = if i == 0 {
            input.step_days
        } else if plan.steps[i - 1].mg_per_day
            <= input.near_end_fraction * input.current_mg_per_day + tol(input.current_mg_per_day)
        {
            input
                .step_days
                .max((2 * input.step_days).min(input.near_end_max_days))
        } else {
            input.step_days
        };
        prop_assert!(
            prev_days == base || r > ceiling * f64::from(prev_days - 1) / 14.0 - EPS,
            "step {i}: held {prev_days} days (base {base}) for a {r} reduction"
        );
    }
    Ok(())
}

fn check_zero_only_from_smallest(
    input: &TaperInput,
    plan: &TaperPlan,
) -> Result<(), TestCaseError> {
    let doses = makeable_doses(
        &input.strengths_mg,
        input.halves_allowed,
        input.max_units_per_day,
    );
    let smallest = doses.get(1).copied().unwrap_or(f64::INFINITY);
    for (i, s) in plan.steps.iter().enumerate() {
        if s.mg_per_day == 0.0 {
            prop_assert!(is_stop(plan, i), "0 mg before the end");
            let (prev, _) = previous(input, plan, i);
            prop_assert!(
                prev <= smallest + tol(smallest),
                "stop from {prev} > {smallest}"
            );
            prop_assert!(s.units.is_empty());
            prop_assert_eq!(s.days, 1);
        }
    }
    Ok(())
}

fn check_slower_near_end(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    let near_end = (2 * input.step_days).min(input.near_end_max_days);
    let start_mg = input.current_mg_per_day;
    for (i, s) in plan.steps.iter().enumerate() {
        if is_stop(plan, i) {
            continue;
        }
        prop_assert!(s.days >= input.step_days);
        if s.mg_per_day <= input.near_end_fraction * start_mg + tol(start_mg) {
            prop_assert!(
                s.days >= near_end,
                "{} mg for only {} days",
                s.mg_per_day,
                s.days
            );
        }
    }
    Ok(())
}

fn check_dates(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    prop_assert!(plan.steps.len() <= MAX_STEPS);
    let first = plan.steps.first().map(|s| s.start);
    prop_assert_eq!(
        first,
        input
            .start
            .checked_add_days(Days::new(plan.hold_current_days.into()))
    );
    let mut expected_start = first;
    for s in &plan.steps {
        prop_assert_eq!(Some(s.start), expected_start);
        prop_assert!(s.end >= s.start);
        prop_assert_eq!(i64::from(s.days), (s.end - s.start).num_days() + 1);
        expected_start = s.end.checked_add_days(Days::new(1));
    }
    prop_assert_eq!(Some(plan.end), plan.steps.last().map(|s| s.end));
    let last = plan.steps.last().map_or(f64::NAN, |s| s.mg_per_day);
    prop_assert!(close(last, input.goal_mg_per_day), "ends at {last}");
    Ok(())
}

/// Each step is the aim (a fraction of the level) rounded down to a makeable dose below the
/// level, except: an unmakeable current dose goes to the nearest makeable dose below; never
/// below the goal; and zero is replaced by the smallest dose while the level is above it.
fn check_aim(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    let doses = makeable_doses(
        &input.strengths_mg,
        input.halves_allowed,
        input.max_units_per_day,
    );
    let smallest = doses.get(1).copied().unwrap_or(f64::INFINITY);
    let current_makeable = is_makeable(&doses, input.current_mg_per_day);
    // A goal within float tolerance of a makeable dose is that dose.
    let goal = doses
        .iter()
        .copied()
        .find(|&d| close(d, input.goal_mg_per_day))
        .unwrap_or(input.goal_mg_per_day);
    for (i, s) in plan.steps.iter().enumerate() {
        let (level, _) = previous(input, plan, i);
        let target = if i == 0 && !current_makeable {
            level
        } else {
            level * (1.0 - input.initial_reduction)
        };
        let rounded = doses
            .iter()
            .copied()
            .filter(|&d| d <= target + tol(target) && d < level - tol(level))
            .fold(0.0, f64::max);
        let mut expected = rounded.max(goal);
        if expected == 0.0 && level > smallest + tol(smallest) {
            expected = smallest;
        }
        prop_assert!(
            close(s.mg_per_day, expected),
            "step {i}: {} not {expected}",
            s.mg_per_day
        );
    }
    Ok(())
}

fn check_units_needed(plan: &TaperPlan) -> Result<(), TestCaseError> {
    let mut strengths: Vec<f64> = plan
        .steps
        .iter()
        .flat_map(|s| s.units.iter().map(|u| u.strength_mg))
        .collect();
    strengths.sort_by(f64::total_cmp);
    strengths.dedup();
    prop_assert_eq!(plan.units_needed.len(), strengths.len());
    for need in &plan.units_needed {
        let total: f64 = plan
            .steps
            .iter()
            .flat_map(|s| {
                s.units
                    .iter()
                    .filter(|u| u.strength_mg == need.strength_mg)
                    .map(|u| u.per_day * f64::from(s.days))
            })
            .sum();
        prop_assert_eq!(need.per_day, total.ceil());
    }
    Ok(())
}

fn check_all(input: &TaperInput, plan: &TaperPlan) -> Result<(), TestCaseError> {
    check_makeable_units(input, plan)?;
    check_strictly_falling(input, plan)?;
    check_ceiling(input, plan)?;
    check_zero_only_from_smallest(input, plan)?;
    check_slower_near_end(input, plan)?;
    check_dates(input, plan)?;
    check_aim(input, plan)?;
    check_units_needed(plan)
}

/// Every sum of at most `max_units` units (in half-units when allowed), by brute force.
fn brute_force_doses(strengths: &[f64], halves: bool, max_units: u32) -> Vec<f64> {
    let budget = 2 * max_units;
    let stride = if halves { 1 } else { 2 };
    let mut out = Vec::new();
    let mut counts = vec![0u32; strengths.len()];
    loop {
        let used: u32 = counts.iter().sum();
        if used <= budget {
            out.push(
                strengths
                    .iter()
                    .zip(&counts)
                    .map(|(s, &c)| s * f64::from(c) / 2.0)
                    .sum::<f64>(),
            );
        }
        // Odometer over half-unit counts 0..=budget per strength.
        let mut j = 0;
        loop {
            if j == counts.len() {
                out.sort_by(f64::total_cmp);
                out.dedup_by(|a, b| close(*a, *b));
                return out;
            }
            counts[j] += stride;
            if counts[j] <= budget {
                break;
            }
            counts[j] = 0;
            j += 1;
        }
    }
}

/// Any f64, with the awkward values over-represented.
fn any_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        -1.0f64..200.0,
        0.0f64..1.5,
        prop::sample::select(vec![
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            1e-300,
            1e300,
            0.0005,
            1000.0,
            1000.5,
        ]),
    ]
}

/// Mostly plausible values so that some plans come out, with arbitrary ones mixed in.
fn any_input() -> impl Strategy<Value = TaperInput> {
    let fraction = || prop_oneof![3 => 0.001f64..=1.0, 1 => any_number()];
    (
        prop_oneof![3 => 0.001f64..200.0, 1 => any_number()],
        prop::collection::vec(prop_oneof![6 => 0.05f64..30.0, 1 => any_number()], 0..8),
        any::<bool>(),
        prop_oneof![3 => Just(0.0), 1 => any_number()],
        prop_oneof![
            1 => Just(NaiveDate::MAX),
            1 => Just(NaiveDate::MIN),
            4 => (0i32..4_000_000)
                .prop_map(|d| NaiveDate::from_num_days_from_ce_opt(d).unwrap_or_default()),
        ],
        prop_oneof![3 => 0u32..400, 1 => any::<u32>()],
        fraction(),
        fraction(),
        prop_oneof![3 => 0u32..16, 1 => any::<u32>()],
    )
        .prop_map(
            |(current, strengths, halves, goal, start, step_days, aim, ceiling, max_units)| {
                TaperInput {
                    current_mg_per_day: current,
                    strengths_mg: strengths,
                    halves_allowed: halves,
                    goal_mg_per_day: goal,
                    start,
                    step_days,
                    initial_reduction: aim,
                    max_reduction_per_2_weeks: ceiling,
                    max_units_per_day: max_units,
                    near_end_fraction: NEAR_END_FRACTION,
                    near_end_max_days: NEAR_END_MAX_DAYS,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn steps_are_makeable_and_units_add_up(input in valid_input()) {
        check_makeable_units(&input, &plan_of(&input)?)?;
    }

    #[test]
    fn every_step_is_strictly_lower(input in valid_input()) {
        check_strictly_falling(&input, &plan_of(&input)?)?;
    }

    #[test]
    fn ceiling_is_kept_by_holding_longer_and_no_longer_than_needed(input in valid_input()) {
        check_ceiling(&input, &plan_of(&input)?)?;
    }

    #[test]
    fn stop_only_from_the_smallest_makeable_dose(input in valid_input()) {
        let plan = plan_of(&input)?;
        check_zero_only_from_smallest(&input, &plan)?;
        if input.goal_mg_per_day == 0.0 && input.max_reduction_per_2_weeks == 0.25 {
            // The 100% stop needs the smallest dose for 14 / 0.25 = 56 days.
            let n = plan.steps.len();
            prop_assert!(n >= 2 || plan.hold_current_days + input.step_days >= 56);
            if n >= 2 {
                prop_assert!(plan.steps[n - 2].days >= 56);
            }
        }
    }

    #[test]
    fn slower_near_the_end(input in valid_input()) {
        check_slower_near_end(&input, &plan_of(&input)?)?;
    }

    #[test]
    fn finite_with_contiguous_dates_ending_at_the_goal(input in valid_input()) {
        check_dates(&input, &plan_of(&input)?)?;
    }

    #[test]
    fn each_step_is_the_aim_rounded_down(input in valid_input()) {
        check_aim(&input, &plan_of(&input)?)?;
    }

    #[test]
    fn units_needed_cover_the_plan(input in valid_input()) {
        check_units_needed(&plan_of(&input)?)?;
    }

    #[test]
    fn makeable_doses_are_every_sum_of_allowed_units(
        strengths in prop::collection::vec(prop_oneof![
            prop::sample::select(vec![0.25, 0.5, 1.0, 2.0, 5.0, 10.0]),
            0.125f64..20.0,
        ], 1..=3),
        halves in any::<bool>(),
        max_units in 1u32..=5,
    ) {
        let got = makeable_doses(&strengths, halves, max_units);
        let want = brute_force_doses(&strengths, halves, max_units);
        prop_assert_eq!(got.first().copied(), Some(0.0));
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(got.len(), want.len(), "{:?} vs {:?}", got, want);
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(close(*g, *w), "{} vs {}", g, w);
        }
    }

    #[test]
    fn any_input_gives_a_sound_plan_or_an_error(input in any_input()) {
        if let Ok(plan) = plan_taper(&input) {
            check_all(&input, &plan)?;
        }
    }

    #[test]
    fn invalid_input_is_an_error(
        input in valid_input(),
        which in 0usize..9,
        bad in prop::sample::select(vec![f64::NAN, f64::INFINITY, -1.0, 0.0, 1.5]),
    ) {
        let mut input = input;
        match which {
            0 => input.current_mg_per_day = if bad > 0.0 && bad.is_finite() { -bad } else { bad },
            1 => input.strengths_mg.clear(),
            2 => input.strengths_mg.push(if bad > 0.0 && bad.is_finite() { 0.0 } else { bad }),
            3 => input.step_days = 0,
            4 => input.initial_reduction = bad,
            5 => input.max_reduction_per_2_weeks = bad,
            6 => input.goal_mg_per_day = input.current_mg_per_day + bad.abs(),
            7 => input.max_units_per_day = 0,
            _ => input.goal_mg_per_day = if bad < 0.0 { bad } else { f64::NAN },
        }
        let result = plan_taper(&input);
        match which {
            1 => prop_assert_eq!(result, Err(TaperError::NoStrengths)),
            6 if input.goal_mg_per_day.is_finite() => {
                prop_assert_eq!(result, Err(TaperError::GoalNotBelowCurrent))
            }
            _ => prop_assert!(
                matches!(result, Err(TaperError::InvalidInput(_))),
                "{:?} accepted", input
            ),
        }
    }
}
