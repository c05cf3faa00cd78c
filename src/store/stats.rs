//! The alert-fatigue picture for the admin endpoint: per-rule and per-prescriber counts of cards
//! shown, accepted and overridden, override reasons, and how concentrated overrides are.

use super::{Counts, split_count_field};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Tally {
    pub shown: i64,
    pub accepted: i64,
    pub overridden: i64,
}

impl Tally {
    fn add(&mut self, event: &str, n: i64) {
        match event {
            "shown" => self.shown += n,
            "accepted" => self.accepted += n,
            "overridden" => self.overridden += n,
            _ => {}
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RuleStats {
    #[serde(flatten)]
    pub tally: Tally,
    /// Override reasons given, by code (a code the cards do not offer counts as "other").
    pub override_reasons: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PrescriberStats {
    /// The EHR's userId ("unknown" when it sent none).
    pub prescriber: String,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub rules: BTreeMap<String, RuleStats>,
    /// Most overrides first.
    pub prescribers: Vec<PrescriberStats>,
    /// Share of all overrides made by the tenth of prescribers who override most (at least
    /// one prescriber); None before any override.
    pub top_tenth_override_share: Option<f64>,
}

pub fn summarise(counts: &Counts) -> Stats {
    let mut rules: BTreeMap<String, RuleStats> = BTreeMap::new();
    let mut prescribers: BTreeMap<String, Tally> = BTreeMap::new();
    for (field, n) in counts {
        match split_count_field(field) {
            Some(("rule", rule, event)) => {
                rules.entry(rule.into()).or_default().tally.add(event, *n)
            }
            Some(("prescriber", p, event)) => {
                prescribers.entry(p.into()).or_default().add(event, *n)
            }
            Some(("reason", rule, code)) => {
                *rules
                    .entry(rule.into())
                    .or_default()
                    .override_reasons
                    .entry(code.into())
                    .or_default() += n;
            }
            _ => {}
        }
    }
    let mut prescribers: Vec<PrescriberStats> = prescribers
        .into_iter()
        .map(|(prescriber, tally)| PrescriberStats { prescriber, tally })
        .collect();
    prescribers.sort_by(|a, b| {
        b.tally
            .overridden
            .cmp(&a.tally.overridden)
            .then_with(|| a.prescriber.cmp(&b.prescriber))
    });
    let total: i64 = prescribers.iter().map(|p| p.tally.overridden).sum();
    let top_n = prescribers.len().div_ceil(10).max(1);
    let top: i64 = prescribers
        .iter()
        .take(top_n)
        .map(|p| p.tally.overridden)
        .sum();
    Stats {
        rules,
        prescribers,
        top_tenth_override_share: (total > 0).then(|| top as f64 / total as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::count_field;

    #[test]
    fn counts_become_rules_prescribers_and_the_share_of_the_top_tenth() {
        let mut counts: Counts = vec![
            (count_field("rule", "off-ramp", "shown"), 10),
            (count_field("rule", "off-ramp", "overridden"), 6),
            (count_field("reason", "off-ramp", "s|short-course"), 4),
        ];
        for i in 0..20 {
            let n = if i == 0 { 12 } else { 1 };
            counts.push((
                count_field("prescriber", &format!("Practitioner/{i:02}"), "overridden"),
                n,
            ));
        }
        let s = summarise(&counts);
        let r = &s.rules["off-ramp"];
        assert_eq!((r.tally.shown, r.tally.overridden), (10, 6));
        assert_eq!(r.override_reasons["s|short-course"], 4);
        assert_eq!(s.prescribers[0].prescriber, "Practitioner/00");
        // 20 prescribers: the top 2 made 12 + 1 of 31 overrides.
        let share = s.top_tenth_override_share.expect("share");
        assert!((share - 13.0 / 31.0).abs() < 1e-9, "{share}");
    }
}
