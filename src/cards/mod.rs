//! Findings and plans rendered as CDS Hooks cards with FHIR suggestions. Pure.

pub mod handout;
pub mod resources;

use crate::clinical::knowledge::Knowledge;
use crate::clinical::{DrugClass, RxCui};
use crate::plans::schedule::{OffRampPlan, off_ramp_plan};
use crate::protocol::{
    Action, ActionType, Card, Coding, Indicator, Link, LinkType, SelectionBehavior, Source,
    Suggestion, Summary,
};
use crate::rules::{
    CoPrescription, Evaluation, Finding, OffRamp, OnRamp, OpioidGabapentinoid, RiskReason, Severity,
};
use resources::{Origin, fmt_num};
use serde_json::Value;
use std::fmt::Write;

pub const OVERRIDE_SYSTEM: &str = "http://offramp.health/fhir/CodeSystem/override-reason";
/// Every override reason code a card offers (in OVERRIDE_SYSTEM).
pub const OVERRIDE_CODES: [&str; 6] = [
    "short-course",
    "legitimate-use",
    "benefit-documented",
    "already-tapering",
    "palliative",
    "patient-declines",
];

/// Guideline citations shown as each card's source.
struct Cite {
    label: &'static str,
    url: &'static str,
}
const JOINT_2025: Cite = Cite {
    label: "Joint Clinical Practice Guideline on Benzodiazepine Tapering (2025)",
    url: "https://doi.org/10.1007/s11606-025-09499-2",
};
const CDC_2022: Cite = Cite {
    label: "CDC Clinical Practice Guideline for Prescribing Opioids for Pain (2022)",
    url: "https://www.cdc.gov/mmwr/volumes/71/rr/rr7103a1.htm",
};
const BEERS_2023: Cite = Cite {
    label: "AGS Beers Criteria (2023)",
    url: "https://doi.org/10.1111/jgs.18372",
};

fn source(c: &Cite) -> Source {
    Source {
        label: c.label.into(),
        url: Some(c.url.into()),
        icon: None,
        topic: None,
    }
}

fn reason(code: &'static str, display: &str) -> Coding {
    debug_assert!(
        OVERRIDE_CODES.contains(&code),
        "{code} not in OVERRIDE_CODES"
    );
    Coding {
        system: OVERRIDE_SYSTEM.into(),
        code: code.into(),
        display: Some(display.into()),
    }
}

/// Everything rendering needs besides the findings.
pub struct RenderInput<'a> {
    pub kb: &'a Knowledge,
    pub origin: Origin<'a>,
    /// Seeds the card and suggestion uuids, so a retried call gets the same ids.
    pub hook_instance: &'a str,
    /// Each draft's reference ("MedicationRequest/id") and raw resource, by draft index.
    pub drafts: &'a [(Option<String>, Value)],
    /// Where the printable taper calendar will be served, when the caller stores it.
    pub calendar_url: Option<&'a str>,
}

fn uuid(input: &RenderInput<'_>, name: &str) -> String {
    // A fixed namespace for offramp's name-based ids.
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_6672_616d_7000_8000_0000_0000_0001);
    // The patient too: an EHR that reuses a hookInstance must not give two patients' cards one
    // uuid (feedback on one would be attributed to the other).
    let seed = format!("{}/{}/{name}", input.hook_instance, input.origin.patient_id);
    uuid::Uuid::new_v5(&NS, seed.as_bytes()).to_string()
}

fn name(kb: &Knowledge, r: RxCui) -> String {
    kb.ingredient(r)
        .map(|i| i.name.clone())
        .or_else(|| kb.medication(r).map(|m| m.display.clone()))
        .unwrap_or_else(|| r.to_string())
}

fn or_else(s: String, fallback: &str) -> String {
    if s.is_empty() {
        fallback.to_string()
    } else {
        s
    }
}

fn names(kb: &Knowledge, rs: &[RxCui]) -> String {
    let mut v: Vec<String> = rs.iter().map(|r| name(kb, *r)).collect();
    v.dedup();
    v.join(" + ")
}

fn create(description: &str, resource: Value) -> Action {
    Action {
        kind: ActionType::Create,
        description: description.into(),
        resource: Some(resource),
        resource_id: vec![],
    }
}

/// Renders the findings, in order, as cards.
pub fn render(input: &RenderInput<'_>, ev: &Evaluation) -> Vec<Card> {
    render_indexed(input, ev)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// As [`render`], each card with the index of the finding it shows.
pub fn render_indexed(input: &RenderInput<'_>, ev: &Evaluation) -> Vec<(usize, Card)> {
    ev.findings
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let card = match f {
                Finding::OnRamp(x) => Some(on_ramp(input, x, i)),
                Finding::OffRamp(x) => off_ramp(input, x, i),
                Finding::CoPrescription(x) => Some(co_prescription(input, x, i, ev)),
                Finding::OpioidGabapentinoid(x) => Some(gabapentinoid(input, x, i)),
            };
            card.map(|c| (i, c))
        })
        .collect()
}

fn on_ramp(input: &RenderInput<'_>, f: &OnRamp, i: usize) -> Card {
    let kb = input.kb;
    let t = kb.thresholds();
    let drug = f
        .medications
        .iter()
        .filter_map(|r| kb.medication(*r))
        .map(|m| m.display.clone())
        .collect::<Vec<_>>()
        .join("; ");
    let max_days = t.on_ramp.max_planned_days.value;
    let summary = match (f.older_adult, f.continuing_days) {
        (true, _) => format!(
            "Benzodiazepine/Z-drug at 65+: consider alternatives; if used, ≤{max_days} days, review {}",
            f.follow_up
        ),
        (false, Some(days)) => format!(
            "Benzodiazepine/Z-drug for {days} days: plan the stop before 4 weeks; review {}",
            f.follow_up
        ),
        (false, None) => format!(
            "New benzodiazepine/Z-drug: plan ≤{max_days} days and a follow-up on {}",
            f.follow_up
        ),
    };
    let mut d = String::new();
    let _ = writeln!(d, "**{drug}**\n");
    let _ = writeln!(
        d,
        "- **Why is it used?** Record the indication on the order (insomnia, anxiety, other)."
    );
    let _ = writeln!(
        d,
        "- **Shortest course:** at most {max_days} days, then stop; follow-up on **{}**.",
        f.follow_up
    );
    if let Some(days) = f.planned_days {
        if f.long_course {
            let _ = writeln!(
                d,
                "- **This order covers {days} days.** Courses for insomnia or anxiety planned past 4 weeks are not advised: dependence and withdrawal become likely."
            );
        } else {
            let _ = writeln!(d, "- This order covers {days} days.");
        }
    }
    let _ = writeln!(
        d,
        "- **Success looks like:** the symptom is controlled and the drug stopped by the follow-up, with no falls or daytime drowsiness."
    );
    let _ = writeln!(
        d,
        "- **First-line care without a drug:** CBT for insomnia (CBT-I) for chronic insomnia (ACP 2016); CBT and/or an SSRI/SNRI for anxiety."
    );
    if f.older_adult {
        let _ = writeln!(
            d,
            "- **At 65+** benzodiazepines and Z-drugs raise the risk of falls, fractures, delirium and cognitive impairment: Beers 2023 advises avoiding them."
        );
    }
    let _ = writeln!(
        d,
        "\nFDA boxed warning (2020): abuse, misuse, dependence and withdrawal reactions."
    );
    let z_drug = f.medications.iter().any(|r| {
        kb.medication(*r)
            .is_some_and(|m| m.class == DrugClass::ZDrug)
    });
    if z_drug {
        let _ = writeln!(
            d,
            "Z-drugs: FDA boxed warning (2019) for complex sleep behaviours (sleep-walking, sleep-driving)."
        );
    }
    let mut suggestions = vec![Suggestion {
        label: format!("Book a follow-up on {}", f.follow_up),
        uuid: uuid(input, &format!("{i}/on-ramp/follow-up")),
        is_recommended: Some(true),
        actions: vec![create(
            "Follow-up to review the benzodiazepine course",
            resources::follow_up(
                &input.origin,
                f.follow_up,
                "Review the benzodiazepine / Z-drug course",
            ),
        )],
    }];
    if f.long_course {
        for (n, di) in f.drafts.iter().enumerate() {
            let Some((Some(reference), raw)) = input.drafts.get(*di) else {
                continue;
            };
            suggestions.push(Suggestion {
                label: format!("Limit this order to {max_days} days"),
                uuid: uuid(input, &format!("{i}/on-ramp/limit/{n}")),
                is_recommended: None,
                actions: vec![Action {
                    kind: ActionType::Update,
                    description: format!("Limit {reference} to {max_days} days"),
                    resource: Some(resources::limited_to(raw, max_days)),
                    resource_id: vec![],
                }],
            });
        }
    }
    Card {
        uuid: uuid(input, &format!("{i}/on-ramp")),
        summary: Summary::truncate(&summary),
        detail: Some(d),
        indicator: if f.older_adult {
            Indicator::Warning
        } else {
            Indicator::Info
        },
        source: source(if f.older_adult {
            &BEERS_2023
        } else {
            &JOINT_2025
        }),
        selection_behavior: Some(SelectionBehavior::Any),
        suggestions,
        override_reasons: vec![
            reason("short-course", "Short course of 7 days or less"),
            reason(
                "legitimate-use",
                "Seizure disorder or other long-term indication",
            ),
            reason("benefit-documented", "Benefit outweighs risk, documented"),
        ],
        links: vec![],
    }
}

fn plan_table(plan: &OffRampPlan<'_>) -> String {
    let strength = plan.strength_mg();
    let mut t =
        String::from("| Step | From | To | mg a day | Tablets a day |\n|---|---|---|---|---|\n");
    for (n, s) in plan.taper.steps.iter().enumerate() {
        if s.mg_per_day <= 0.0 {
            let _ = writeln!(t, "| {} | {} | | **stop** | none |", n + 1, s.start);
            continue;
        }
        let tabs = plan.tablets(s.mg_per_day);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} × {} mg |",
            n + 1,
            s.start,
            s.end,
            fmt_num(s.mg_per_day),
            fmt_num(tabs),
            fmt_num(strength)
        );
    }
    t
}

fn off_ramp(input: &RenderInput<'_>, f: &OffRamp, i: usize) -> Option<Card> {
    let kb = input.kb;
    let today = input.origin.today;
    let plan = off_ramp_plan(kb, f, today);
    let drugs = names(kb, &f.uses.iter().map(|u| u.ingredient).collect::<Vec<_>>());
    let drugs = if drugs.is_empty() {
        "benzodiazepine".to_string()
    } else {
        drugs
    };
    let summary = if f.older_adult && f.regular {
        format!("{drugs} at 65+: offer a gradual taper (plan attached); never stop abruptly")
    } else if f.older_adult {
        format!("{drugs} at 65+, intermittent use: agree to stop (Beers 2023)")
    } else {
        format!(
            "{drugs} for {} days: offer a gradual taper (plan attached)",
            f.covered_days
        )
    };
    let mut d = String::new();
    let older = if f.older_adult { ", age 65+" } else { "" };
    if f.regular {
        let _ = writeln!(
            d,
            "Regular use for **{} days** in the current episode{older}.",
            f.covered_days
        );
    } else {
        let _ = writeln!(
            d,
            "Intermittent use (fewer than 4 days a week) over {} days{older}: withdrawal is unlikely, so no taper is needed; agree to stop, or to use less often, with a follow-up.",
            f.covered_days
        );
    }
    if let Some((lo, hi)) = f.diazepam_mg {
        let _ = writeln!(
            d,
            "Current dose ≈ **{}–{} mg diazepam a day** (equivalences are approximate; sources differ up to twofold).",
            fmt_num(lo),
            fmt_num(hi)
        );
    }
    let _ = writeln!(
        d,
        "\nRisks of continuing: falls and fractures, cognitive impairment, dependence; FDA boxed warning (2020). Stopping abruptly risks withdrawal and seizures.\n"
    );
    let mut suggestions = Vec::new();
    if let Some(p) = &plan {
        let _ = writeln!(
            d,
            "**Offered plan: {}** from {} mg a day, steps of about 10% every {} days, never more than 25% per 2 weeks, slower near the end. Dates are provisional: hold a step, slow down, or return to the last tolerated dose if withdrawal symptoms appear.\n",
            p.ingredient_name,
            fmt_num(p.current_mg_per_day),
            p.step_days
        );
        d.push_str(&plan_table(p));
        let _ = writeln!(
            d,
            "\nFollow-up: {} (1–2 weeks after each reduction{}).",
            p.follow_ups
                .iter()
                .take(4)
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
                + if p.follow_ups.len() > 4 { ", …" } else { "" },
            if f.with_opioid {
                "; every 2 weeks with an opioid"
            } else {
                ""
            }
        );
        if !p.others.is_empty() {
            let _ = writeln!(
                d,
                "\nAlso in use: {}. Taper one drug at a time.",
                p.others.join(", ")
            );
        }
        let note = format!(
            "offramp taper plan for {}: dates provisional; pause or slow on withdrawal symptoms.",
            p.ingredient_name
        );
        let mut actions = vec![create(
            "Taper plan as one order with dated steps",
            resources::taper_request(&input.origin, p.product, &p.taper, &note),
        )];
        // The plan replaces the renewal being drafted, so the patient is not given both.
        for di in &f.drafts {
            if let Some((Some(reference), _)) = input.drafts.get(*di) {
                actions.push(delete_draft(reference));
            }
        }
        if let Some(first) = p.follow_ups.first() {
            actions.push(create(
                "Follow-up after the first reduction",
                resources::follow_up(
                    &input.origin,
                    *first,
                    "Taper follow-up: check withdrawal symptoms and the next step",
                ),
            ));
        }
        suggestions.push(Suggestion {
            label: format!(
                "Start the {} taper ({} steps, ends {})",
                p.ingredient_name,
                p.taper.steps.len(),
                p.taper.end
            ),
            uuid: uuid(input, &format!("{i}/off-ramp/taper")),
            is_recommended: Some(true),
            actions,
        });
        if let Some(s) = &p.switch {
            let _ = writeln!(
                d,
                "\n*Option:* switch to diazepam ({}–{} mg a day by the equivalence range; the plan uses the lower figure, {} mg), converting over 1–2 weeks, then taper.",
                fmt_num(s.range.0),
                fmt_num(s.range.1),
                fmt_num(s.diazepam_mg_per_day)
            );
            let note = format!(
                "offramp: switch from {} to diazepam over 1-2 weeks, then taper; dates provisional.",
                p.ingredient_name
            );
            suggestions.push(Suggestion {
                label: format!(
                    "Switch to diazepam {} mg a day, then taper",
                    fmt_num(s.diazepam_mg_per_day)
                ),
                uuid: uuid(input, &format!("{i}/off-ramp/switch")),
                is_recommended: Some(false),
                actions: vec![create(
                    "Diazepam taper plan",
                    resources::taper_request(&input.origin, s.product, &s.taper, &note),
                )],
            });
        }
    } else {
        let _ = writeln!(
            d,
            "The current dose could not be read from the record: agree the dose with the patient, then reduce by 5–10% every 2–4 weeks (never more than 25% per 2 weeks)."
        );
    }
    let _ = writeln!(
        d,
        "\nTreat the underlying condition at the same time (CBT-I for insomnia, CBT or an SSRI/SNRI for anxiety). In pregnancy, tell the infant's clinician."
    );
    Some(Card {
        uuid: uuid(input, &format!("{i}/off-ramp")),
        summary: Summary::truncate(&summary),
        detail: Some(d),
        indicator: Indicator::Warning,
        source: source(&JOINT_2025),
        selection_behavior: (!suggestions.is_empty()).then_some(SelectionBehavior::AtMostOne),
        suggestions,
        override_reasons: vec![
            reason("already-tapering", "Already tapering or plan in place"),
            reason(
                "legitimate-use",
                "Seizure disorder or other long-term indication",
            ),
            reason("palliative", "Palliative or end-of-life care"),
            reason("patient-declines", "Patient declines after discussion"),
        ],
        links: match (&plan, input.calendar_url) {
            (Some(_), Some(url)) => vec![Link {
                label: "Printable taper calendar for the patient".into(),
                url: url.to_string(),
                kind: LinkType::Absolute,
                app_context: None,
            }],
            _ => vec![],
        },
    })
}

fn reason_text(kb: &Knowledge, r: &RiskReason) -> String {
    match r {
        RiskReason::HighMme(m) => format!("total **{} MME/day** (≥ 50)", fmt_num(*m)),
        RiskReason::ThirdCnsDrug(v) => format!("a third CNS-active drug: {}", names(kb, v)),
        RiskReason::OlderAdult(a) => format!("age {a}"),
        RiskReason::RespiratoryDisease => "COPD or sleep apnoea".into(),
        RiskReason::PriorOverdose => "a prior overdose".into(),
        RiskReason::SubstanceUseDisorder => "a substance or alcohol use disorder".into(),
        RiskReason::KidneyImpairment => "kidney impairment".into(),
        RiskReason::LiverImpairment => "liver impairment".into(),
        RiskReason::Pregnancy => "pregnancy".into(),
        RiskReason::DifferentPrescribers => {
            "the opioid and the benzodiazepine come from different prescribers".into()
        }
    }
}

/// Withdraw-the-draft suggestions for the drafts the rules marked withdrawable (new starts only,
/// never a renewal of a drug in use, never OUD treatment).
fn withdraw(input: &RenderInput<'_>, drafts: &[usize], key: &str) -> Vec<Suggestion> {
    drafts
        .iter()
        .enumerate()
        .filter_map(|(n, di)| {
            let (Some(reference), raw) = input.drafts.get(*di)? else {
                return None;
            };
            let med = crate::clinical::record::read_record(
                &crate::clinical::json::Json::from(raw),
                &Default::default(),
            )
            .ok()
            .and_then(|r| crate::clinical::record::resolve(input.kb, &r.medication))?;
            if med.class == DrugClass::OudTreatment {
                return None;
            }
            Some(Suggestion {
                label: format!("Withdraw the new {} order", med.display),
                uuid: uuid(input, &format!("{key}/withdraw/{n}")),
                is_recommended: None,
                actions: vec![delete_draft(reference)],
            })
        })
        .collect()
}

fn delete_draft(reference: &str) -> Action {
    Action {
        kind: ActionType::Delete,
        description: format!("Remove the draft {reference}"),
        resource: None,
        resource_id: vec![reference.to_string()],
    }
}

fn naloxone(input: &RenderInput<'_>, key: &str) -> Option<Suggestion> {
    let m = input.kb.preferred_naloxone()?;
    Some(Suggestion {
        label: format!("Prescribe naloxone ({})", m.display),
        uuid: uuid(input, &format!("{key}/naloxone")),
        is_recommended: Some(true),
        actions: vec![create(
            "Naloxone for overdose rescue",
            resources::naloxone_request(&input.origin, m),
        )],
    })
}

fn co_prescription(input: &RenderInput<'_>, f: &CoPrescription, i: usize, ev: &Evaluation) -> Card {
    let kb = input.kb;
    let key = format!("{i}/co-prescription");
    let mme = f
        .mme
        .map(|m| format!(", {} MME/day", fmt_num(m)))
        .unwrap_or_default();
    let summary = format!(
        "Opioid + benzodiazepine: overdose risk{mme}; offer naloxone, reduce one at a time"
    );
    let mut d = String::new();
    let _ = writeln!(
        d,
        "**{}** with **{}**: together they multiply the risk of fatal respiratory depression (FDA boxed warning 2016; CDC 2022 Rec 11).\n",
        or_else(names(kb, &f.opioids), "An opioid"),
        or_else(names(kb, &f.bzras), "a benzodiazepine")
    );
    if f.reasons.is_empty() {
        let _ = writeln!(d, "No additional risk factor found in the record.");
    } else {
        let _ = writeln!(d, "Higher risk because of:");
        for r in &f.reasons {
            let _ = writeln!(d, "- {}", reason_text(kb, r));
        }
    }
    let _ = writeln!(
        d,
        "\n- **Offer naloxone** to everyone co-prescribed (CDC 2022 Rec 8){}.",
        if f.naloxone_on_hand {
            " — the record shows naloxone already"
        } else {
            ""
        }
    );
    let _ = writeln!(
        d,
        "- Consider alternatives: non-opioid and non-drug pain care; CBT or an SSRI/SNRI for anxiety, CBT-I for insomnia."
    );
    let _ = writeln!(
        d,
        "- If both continue: decide with the patient which drug to reduce first, one at a time, and never stop either abruptly."
    );
    if ev.findings.iter().any(|x| matches!(x, Finding::OffRamp(_))) {
        let _ = writeln!(
            d,
            "- A benzodiazepine taper plan is offered on the card above."
        );
    }
    if f.oud_treatment {
        let _ = writeln!(
            d,
            "\n**Continue the opioid use disorder treatment** (buprenorphine or methadone must not be withheld because of a benzodiazepine: FDA 2017). Coordinate with the OUD prescriber."
        );
    }
    let mut suggestions = Vec::new();
    if !f.naloxone_on_hand {
        suggestions.extend(naloxone(input, &key));
    }
    suggestions.extend(withdraw(input, &f.withdrawable, &key));
    Card {
        uuid: uuid(input, &key),
        summary: Summary::truncate(&summary),
        detail: Some(d),
        indicator: if f.severity == Severity::Critical {
            Indicator::Critical
        } else {
            Indicator::Warning
        },
        source: source(&CDC_2022),
        selection_behavior: (!suggestions.is_empty()).then_some(SelectionBehavior::Any),
        suggestions,
        override_reasons: vec![
            reason("already-tapering", "Already tapering or plan in place"),
            reason("palliative", "Palliative or end-of-life care"),
            reason("short-course", "Short course of 7 days or less"),
            reason("benefit-documented", "Benefit outweighs risk, documented"),
        ],
        links: vec![],
    }
}

fn gabapentinoid(input: &RenderInput<'_>, f: &OpioidGabapentinoid, i: usize) -> Card {
    let key = format!("{i}/opioid-gabapentinoid");
    let mut suggestions = Vec::new();
    suggestions.extend(naloxone(input, &key));
    suggestions.extend(withdraw(input, &f.withdrawable, &key));
    Card {
        uuid: uuid(input, &key),
        summary: Summary::truncate(&format!(
            "Opioid + gabapentinoid at age {}: avoid; risk of sedation and respiratory depression",
            f.age
        )),
        detail: Some(
            "Beers 2023 advises avoiding an opioid with gabapentin or pregabalin at 65+ except when switching from an opioid to a gabapentinoid or using one to limit opioid dose. If both are needed, use the lowest doses, watch for sedation, and offer naloxone.\n"
                .to_string(),
        ),
        indicator: Indicator::Warning,
        source: source(&BEERS_2023),
        selection_behavior: (!suggestions.is_empty()).then_some(SelectionBehavior::Any),
        suggestions,
        override_reasons: vec![
            reason("benefit-documented", "Benefit outweighs risk, documented"),
            reason("palliative", "Palliative or end-of-life care"),
        ],
        links: vec![],
    }
}
