//! Findings from (patient, history, draft orders, today), as ../shared/docs/clinical-rules.md lists
//! them. Pure: no I/O, no clock. One finding per rule per request, whatever the number of drafts,
//! so several drafts give one coherent set of cards.

pub mod quiet;

use crate::clinical::exposure::{Exposure, ExposureParams, Rate, TrackKey, exposure};
use crate::clinical::knowledge::{Knowledge, Medication};
use crate::clinical::patient::{PatientFacts, groups_of};
use crate::clinical::record::{MedicationRecord, RecordStatus, resolve};
use crate::clinical::{DrugClass, RxCui};
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::BTreeSet;

/// Condition groups under which a benzodiazepine is a legitimate long-term treatment.
pub const LEGITIMATE_USE_GROUPS: [&str; 5] = [
    "seizure-disorder",
    "alcohol-withdrawal",
    "rem-sleep-behaviour-disorder",
    "spasticity",
    "catatonia",
];
/// CDC 2022 Rec 11 exclusions for the co-prescription rule; palliative care silences BZRA cards too.
pub const COPRESCRIPTION_EXCLUSIONS: [&str; 4] = [
    "hospice-terminal",
    "palliative-care",
    "cancer",
    "sickle-cell",
];
const END_OF_LIFE: [&str; 2] = ["hospice-terminal", "palliative-care"];
const CLOBAZAM: u32 = 21241;
const CLONAZEPAM: u32 = 2598;
const BUPRENORPHINE: u32 = 1819;
const METHADONE: u32 = 6813;

/// One draft order as the rules see it.
#[derive(Debug, Clone)]
pub struct Draft<'k> {
    /// "MedicationRequest/id", as selections name it.
    pub reference: Option<String>,
    pub record: MedicationRecord,
    pub medication: Option<&'k Medication>,
    /// Made by one of our own suggestions (loop guard).
    pub ours: bool,
    /// order-select: in context.selections (order-sign: always true).
    pub selected: bool,
}

pub struct RuleInput<'a, 'k> {
    pub kb: &'k Knowledge,
    pub today: NaiveDate,
    pub patient: &'a PatientFacts,
    pub history: &'a [MedicationRecord],
    pub drafts: &'a [Draft<'k>],
    /// The clinician ordering now (context.userId), to compare prescribers.
    pub user: Option<&'a str>,
    pub completeness: Completeness,
}

/// What of the patient's record is known. Missing data must not raise a false alarm: without the
/// patient (age) or the conditions (end of life, legitimate uses, OUD) nothing is said; with part
/// of the history a "new start" or a taper's starting dose could be wrong, so only the
/// co-prescription cards stay (the drugs they name are in hand either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completeness {
    pub patient_and_conditions: bool,
    pub history: bool,
}

impl Default for Completeness {
    fn default() -> Self {
        Completeness {
            patient_and_conditions: true,
            history: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BzraUse {
    pub ingredient: RxCui,
    pub medication: RxCui,
    pub mg_per_day: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OnRamp {
    pub drafts: Vec<usize>,
    pub medications: Vec<RxCui>,
    pub older_adult: bool,
    /// Days the draft supplies, when it says (order-select drafts often do not).
    pub planned_days: Option<u32>,
    /// Planned past the flag threshold (4 weeks) for a new start.
    pub long_course: bool,
    pub follow_up: NaiveDate,
    /// Days already covered when use is not new (regular use under 4 weeks, or intermittent).
    pub continuing_days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OffRamp {
    pub drafts: Vec<usize>,
    pub uses: Vec<BzraUse>,
    /// Days covered in the current BZRA episode.
    pub covered_days: u32,
    pub regular: bool,
    pub older_adult: bool,
    pub with_opioid: bool,
    pub diazepam_mg: Option<(f64, f64)>,
    /// Liver disease or respiratory compromise: no switch to diazepam by default.
    pub switch_contraindicated: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "reason", content = "detail", rename_all = "kebab-case")]
pub enum RiskReason {
    HighMme(f64),
    ThirdCnsDrug(Vec<RxCui>),
    OlderAdult(u32),
    RespiratoryDisease,
    PriorOverdose,
    SubstanceUseDisorder,
    KidneyImpairment,
    LiverImpairment,
    Pregnancy,
    DifferentPrescribers,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CoPrescription {
    pub drafts: Vec<usize>,
    pub severity: Severity,
    pub reasons: Vec<RiskReason>,
    pub mme: Option<f64>,
    /// An OUD treatment is in use or drafted: continue it (FDA 2017); nothing acts on it.
    pub oud_treatment: bool,
    pub naloxone_on_hand: bool,
    pub opioids: Vec<RxCui>,
    pub bzras: Vec<RxCui>,
    /// Drafts that are new starts (not renewals, not OUD treatment): the only ones a card may
    /// offer to withdraw, since stopping a drug in use abruptly is never advised.
    pub withdrawable: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpioidGabapentinoid {
    pub drafts: Vec<usize>,
    pub age: u32,
    pub withdrawable: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Finding {
    OnRamp(OnRamp),
    OffRamp(OffRamp),
    CoPrescription(CoPrescription),
    OpioidGabapentinoid(OpioidGabapentinoid),
}

impl Finding {
    pub fn rule(&self) -> &'static str {
        match self {
            Finding::OnRamp(_) => "on-ramp",
            Finding::OffRamp(_) => "off-ramp",
            Finding::CoPrescription(_) => "co-prescription",
            Finding::OpioidGabapentinoid(_) => "opioid-gabapentinoid",
        }
    }
}

/// Why a rule stayed quiet (for logs and metrics, never shown as a card).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Suppressed {
    pub rule: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    /// Off-ramp first: for long-term benzo + opioid the plan leads, not only a warning.
    pub findings: Vec<Finding>,
    pub suppressed: Vec<Suppressed>,
    /// Exposure from the history alone (what the patient was taking before these orders).
    #[serde(skip)]
    pub history_exposure: Exposure,
    /// Exposure with the considered drafts taken as starting today.
    #[serde(skip)]
    pub combined_exposure: Exposure,
    pub drafts_considered: usize,
    pub drafts_unclassified: usize,
}

/// A draft in scope: classified, outpatient or discharge, not procedural or rescue, not ours.
fn in_scope(d: &Draft<'_>) -> Option<&'static str> {
    let Some(med) = d.medication else {
        return Some("unclassified medication");
    };
    if d.ours {
        return Some("made by an offramp suggestion");
    }
    if d.record
        .category
        .iter()
        .any(|c| c.eq_ignore_ascii_case("inpatient"))
    {
        return Some("inpatient order");
    }
    if !med.opens_episode() {
        return Some("procedural, rescue or non-sedating product");
    }
    None
}

/// The draft as a record starting today, so the combined exposure counts it as current.
fn as_started(d: &Draft<'_>, today: NaiveDate) -> MedicationRecord {
    let mut r = d.record.clone();
    r.status = RecordStatus::Active;
    r.start = Some(today);
    r.end = None;
    // Drafts often carry no duration yet: they are current today, nothing more is assumed.
    r.supply_days = Some(f64::from(draft_days(d).unwrap_or(1)));
    r
}

fn has_any(p: &PatientFacts, groups: &[&str]) -> bool {
    groups.iter().any(|g| p.has(g))
}

/// Days a draft supplies: its stated duration, else quantity / daily dose.
fn draft_days(d: &Draft<'_>) -> Option<u32> {
    let days = d.record.supply_days.or_else(|| {
        let med = d.medication?;
        let q = crate::clinical::dose::to_product_units(d.record.quantity?, med)?;
        let per_day = d.record.dosage.as_ref()?.per_day?;
        let per_day = crate::clinical::dose::to_product_units(per_day, med)?;
        (per_day > 0.0).then(|| q / per_day)
    })?;
    (days.is_finite() && days > 0.0).then(|| days.ceil().min(3650.0) as u32)
}

/// OUD treatment: by product, or buprenorphine / methadone with an active OUD condition.
pub fn is_oud_treatment(m: &Medication, patient: &PatientFacts) -> bool {
    m.class == DrugClass::OudTreatment
        || (patient.has("oud")
            && m.ingredients
                .iter()
                .any(|i| matches!(i.ingredient.get(), BUPRENORPHINE | METHADONE)))
}

pub fn evaluate(input: &RuleInput<'_, '_>) -> Evaluation {
    let kb = input.kb;
    let t = kb.thresholds();
    let params = ExposureParams::from_thresholds(t);
    let older = t.age.older_adult_years.value;
    let mut ev = Evaluation::default();
    let quiet = |ev: &mut Evaluation, rule, reason| ev.suppressed.push(Suppressed { rule, reason });

    if input
        .patient
        .age_years
        .is_some_and(|a| a < t.age.adult_years.value)
    {
        quiet(&mut ev, "all", "patient under 18");
        return ev;
    }
    let mut considered: Vec<usize> = Vec::new();
    for (i, d) in input.drafts.iter().enumerate() {
        if !d.selected {
            continue;
        }
        match in_scope(d) {
            None => considered.push(i),
            Some("unclassified medication") => ev.drafts_unclassified += 1,
            Some(reason) => quiet(&mut ev, "all", reason),
        }
    }
    ev.drafts_considered = considered.len();
    ev.history_exposure = exposure(kb, input.history, input.today, &params);
    let mut all: Vec<MedicationRecord> = input.history.to_vec();
    all.extend(
        considered
            .iter()
            .map(|i| as_started(&input.drafts[*i], input.today)),
    );
    ev.combined_exposure = exposure(kb, &all, input.today, &params);
    if considered.is_empty() {
        return ev;
    }
    let class_of = |i: &usize| input.drafts[*i].medication.map(|m| m.class);
    let drafts_of = |pred: &dyn Fn(DrugClass) -> bool| -> Vec<usize> {
        considered
            .iter()
            .copied()
            .filter(|i| class_of(i).is_some_and(pred))
            .collect()
    };
    let is_oud = |i: &usize| {
        input.drafts[*i]
            .medication
            .is_some_and(|m| is_oud_treatment(m, input.patient))
    };
    let bzra_drafts = drafts_of(&|c| c.is_bzra());
    let opioid_drafts: Vec<usize> = drafts_of(&|c| c == DrugClass::OpioidAnalgesic)
        .into_iter()
        .filter(|i| !is_oud(i))
        .collect();
    let oud_drafts: Vec<usize> = considered.iter().copied().filter(is_oud).collect();
    let gabapentinoid_drafts: Vec<usize> = considered
        .iter()
        .copied()
        .filter(|i| {
            input.drafts[*i]
                .medication
                .is_some_and(|m| is_gabapentinoid(kb, m))
        })
        .collect();

    // A copy, so suppressions can be recorded while the history is read.
    let hist_owned = ev.history_exposure.clone();
    let hist = &hist_owned;
    let age = input.patient.age_years;
    let is_older = age.is_some_and(|a| a >= older);
    let end_of_life = has_any(input.patient, &END_OF_LIFE);
    let hist_bzra = hist
        .track(TrackKey::Bzra)
        .and_then(|t| t.current())
        .cloned();
    let oud_in_use = |u: &crate::clinical::exposure::CurrentUse| {
        kb.medication(u.medication)
            .is_some_and(|m| is_oud_treatment(m, input.patient))
    };
    let opioid_active = hist
        .current
        .iter()
        .any(|u| u.class == DrugClass::OpioidAnalgesic && !oud_in_use(u));
    let oud_active = hist.current.iter().any(oud_in_use);
    // A naloxone order in this session (ours or the clinician's) counts as naloxone on hand.
    let naloxone_drafted = input
        .drafts
        .iter()
        .any(|d| d.medication.is_some_and(|m| m.class == DrugClass::Naloxone));
    // Our own accepted plan is in the drafts: the BZRA cards have done their job.
    let our_bzra_plan = input
        .drafts
        .iter()
        .any(|d| d.ours && d.medication.is_some_and(|m| m.class.is_bzra()));
    // New starts only may be withdrawn: a draft renewing a drug in use, or OUD treatment, never.
    let in_use: BTreeSet<RxCui> = hist.current.iter().map(|u| u.ingredient).collect();
    let withdrawable = |ds: &[usize]| -> Vec<usize> {
        ds.iter()
            .copied()
            .filter(|i| !is_oud(i))
            .filter(|i| {
                input.drafts[*i].medication.is_some_and(|m| {
                    m.ingredients
                        .iter()
                        .all(|x| !in_use.contains(&x.ingredient))
                })
            })
            .collect()
    };

    // BZRA on-ramp / off-ramp.
    let mut findings = Vec::new();
    let legit: Vec<usize> = bzra_drafts
        .iter()
        .copied()
        .filter(|i| legitimate_use(kb, input, *i))
        .collect();
    let taper_candidates: Vec<usize> = bzra_drafts
        .iter()
        .copied()
        .filter(|i| !legit.contains(i))
        .collect();
    if !legit.is_empty() {
        quiet(
            &mut ev,
            "on-ramp/off-ramp",
            "legitimate long-term use (seizures, alcohol withdrawal, RBD, spasticity, catatonia)",
        );
    }
    let long_term = hist_bzra
        .as_ref()
        .is_some_and(|e| e.regular && e.covered_days >= t.exposure.long_term_days.value);
    let with_opioid =
        opioid_active || oud_active || !opioid_drafts.is_empty() || !oud_drafts.is_empty();
    let bzra_in_use: Vec<RxCui> = hist
        .current
        .iter()
        .filter(|u| u.class.is_bzra())
        .map(|u| u.ingredient)
        .collect();
    let legit_history = !bzra_in_use.is_empty()
        && bzra_in_use
            .iter()
            .all(|r| legitimate_ingredient(kb, input.patient, &[], *r));
    if end_of_life && (!bzra_drafts.is_empty() || with_opioid) {
        quiet(
            &mut ev,
            "on-ramp/off-ramp",
            "palliative or end-of-life care",
        );
    } else if our_bzra_plan {
        quiet(
            &mut ev,
            "on-ramp/off-ramp",
            "an offramp plan is already in the orders",
        );
    } else if legit_history && taper_candidates.is_empty() {
        quiet(
            &mut ev,
            "off-ramp",
            "legitimate long-term use in the history",
        );
    } else if hist_bzra.is_some()
        && (long_term || is_older)
        && (!taper_candidates.is_empty() || !opioid_drafts.is_empty() || !oud_drafts.is_empty())
    {
        // Regular use past 4 weeks, or any current use at 65+: offer the taper, also when the
        // order is an opioid (the plan leads; a warning alone rarely changes anything).
        findings.push(Finding::OffRamp(off_ramp(
            input,
            &ev,
            taper_candidates.clone(),
            is_older,
            with_opioid,
        )));
    } else if !taper_candidates.is_empty() {
        // A new start, intermittent use, or regular use under 4 weeks: plan the shortest course.
        let planned_days = taper_candidates
            .iter()
            .filter_map(|i| draft_days(&input.drafts[*i]))
            .max();
        findings.push(Finding::OnRamp(OnRamp {
            medications: taper_candidates
                .iter()
                .filter_map(|i| input.drafts[*i].medication.map(|m| m.rxcui))
                .collect(),
            drafts: taper_candidates.clone(),
            older_adult: is_older,
            planned_days,
            long_course: planned_days.is_some_and(|d| d > t.on_ramp.flag_course_days.value),
            follow_up: crate::clinical::exposure::add_days(
                input.today,
                t.on_ramp.follow_up_days.value,
            ),
            continuing_days: hist_bzra.as_ref().map(|e| e.covered_days),
        }));
    }

    // Opioid + BZRA, in either direction (OUD treatment counts as the opioid side).
    let bzra_side = !bzra_drafts.is_empty() || hist_bzra.is_some();
    let opioid_side = with_opioid || oud_active || !oud_drafts.is_empty();
    let draft_involved =
        !bzra_drafts.is_empty() || !opioid_drafts.is_empty() || !oud_drafts.is_empty();
    if bzra_side && opioid_side && draft_involved {
        if has_any(input.patient, &COPRESCRIPTION_EXCLUSIONS) {
            quiet(
                &mut ev,
                "co-prescription",
                "hospice, palliative care, active cancer or sickle cell disease (CDC 2022 Rec 11)",
            );
        } else {
            let mut drafts: Vec<usize> = bzra_drafts
                .iter()
                .chain(&opioid_drafts)
                .chain(&oud_drafts)
                .copied()
                .collect();
            drafts.sort_unstable();
            let w = withdrawable(&drafts);
            let mut f = co_prescription(input, &ev, drafts, oud_active || !oud_drafts.is_empty());
            f.withdrawable = w;
            f.naloxone_on_hand |= naloxone_drafted;
            findings.push(Finding::CoPrescription(f));
        }
    }

    // Opioid + gabapentinoid at 65+ (Beers 2023), when no co-prescription card already covers it.
    let gaba_active = ev.history_exposure.current.iter().any(|u| {
        kb.ingredient(u.ingredient)
            .is_some_and(|i| i.is_gabapentinoid())
    });
    let gaba_pair = (!opioid_drafts.is_empty()
        && (gaba_active || !gabapentinoid_drafts.is_empty()))
        || (!gabapentinoid_drafts.is_empty() && opioid_active);
    if let Some(a) = age.filter(|_| is_older && gaba_pair) {
        if findings
            .iter()
            .any(|f| matches!(f, Finding::CoPrescription(_)))
        {
            quiet(
                &mut ev,
                "opioid-gabapentinoid",
                "covered by the co-prescription card",
            );
        } else if end_of_life {
            quiet(
                &mut ev,
                "opioid-gabapentinoid",
                "palliative or end-of-life care",
            );
        } else {
            let mut drafts: Vec<usize> = opioid_drafts
                .iter()
                .chain(&gabapentinoid_drafts)
                .copied()
                .collect();
            drafts.sort_unstable();
            let withdrawable = withdrawable(&drafts);
            findings.push(Finding::OpioidGabapentinoid(OpioidGabapentinoid {
                drafts,
                age: a,
                withdrawable,
            }));
        }
    }
    let c = input.completeness;
    if !c.history {
        // A draft may renew a drug the missing part of the history shows: never offer to
        // withdraw it as a new start.
        for f in &mut findings {
            match f {
                Finding::CoPrescription(x) => x.withdrawable.clear(),
                Finding::OpioidGabapentinoid(x) => x.withdrawable.clear(),
                _ => {}
            }
        }
    }
    findings.retain(|f| {
        let reason = if !c.patient_and_conditions {
            "patient or conditions unavailable"
        } else if !c.history && matches!(f, Finding::OnRamp(_) | Finding::OffRamp(_)) {
            "medication history incomplete"
        } else {
            return true;
        };
        quiet(&mut ev, f.rule(), reason);
        false
    });
    ev.findings = findings;
    ev
}

fn is_gabapentinoid(kb: &Knowledge, m: &Medication) -> bool {
    m.ingredients.iter().any(|i| {
        kb.ingredient(i.ingredient)
            .is_some_and(|x| x.is_gabapentinoid())
    })
}

/// Clobazam always; clonazepam for seizures; any BZRA when the order's reason or an active
/// condition is one of the legitimate long-term uses.
fn legitimate_use(kb: &Knowledge, input: &RuleInput<'_, '_>, i: usize) -> bool {
    let d = &input.drafts[i];
    let Some(m) = d.medication else { return false };
    m.ingredients
        .iter()
        .any(|x| legitimate_ingredient(kb, input.patient, &d.record.reason_codes, x.ingredient))
}

fn legitimate_ingredient(
    kb: &Knowledge,
    patient: &PatientFacts,
    reason_codes: &[crate::clinical::fhir_read::Coding],
    ingredient: RxCui,
) -> bool {
    let reasons = groups_of(kb, reason_codes);
    let any = |g: &str| reasons.contains(g) || patient.has(g);
    ingredient.get() == CLOBAZAM
        || (ingredient.get() == CLONAZEPAM && any("seizure-disorder"))
        || LEGITIMATE_USE_GROUPS.iter().any(|g| any(g))
}

fn off_ramp(
    input: &RuleInput<'_, '_>,
    ev: &Evaluation,
    drafts: Vec<usize>,
    older_adult: bool,
    with_opioid: bool,
) -> OffRamp {
    let hist = &ev.history_exposure;
    let ep = hist.track(TrackKey::Bzra).and_then(|t| t.current());
    let mut uses: Vec<BzraUse> = hist
        .current
        .iter()
        .filter(|u| u.class.is_bzra())
        .map(|u| BzraUse {
            ingredient: u.ingredient,
            medication: u.medication,
            mg_per_day: match u.rate {
                Some(Rate::MgPerDay(v)) => Some(v),
                _ => None,
            },
        })
        .collect();
    uses.sort_by_key(|u| (u.ingredient, u.medication));
    OffRamp {
        drafts,
        uses,
        covered_days: ep.map_or(0, |e| e.covered_days),
        regular: ep.is_some_and(|e| e.regular),
        older_adult,
        with_opioid,
        diazepam_mg: hist.diazepam.as_ref().map(|d| (d.low.0, d.high.0)),
        switch_contraindicated: older_adult
            || has_any(input.patient, &["liver-impairment", "copd", "sleep-apnea"]),
    }
}

fn co_prescription(
    input: &RuleInput<'_, '_>,
    ev: &Evaluation,
    drafts: Vec<usize>,
    oud: bool,
) -> CoPrescription {
    let kb = input.kb;
    let t = kb.thresholds();
    let combined = &ev.combined_exposure;
    let p = input.patient;
    let mut reasons = Vec::new();
    let mme = combined.mme.as_ref().map(|m| m.total.0);
    if let Some(m) = mme.filter(|m| *m >= t.opioid.high_mme.value) {
        reasons.push(RiskReason::HighMme(m));
    }
    let third: BTreeSet<RxCui> = combined
        .current
        .iter()
        .filter(|u| u.class == DrugClass::CnsDepressant)
        .map(|u| u.ingredient)
        .collect();
    if !third.is_empty() {
        reasons.push(RiskReason::ThirdCnsDrug(third.into_iter().collect()));
    }
    if let Some(a) = p.age_years.filter(|a| *a >= t.age.older_adult_years.value) {
        reasons.push(RiskReason::OlderAdult(a));
    }
    for (groups, reason) in [
        (&["copd", "sleep-apnea"][..], RiskReason::RespiratoryDisease),
        (&["opioid-overdose"][..], RiskReason::PriorOverdose),
        (
            &["substance-use-disorder", "oud"][..],
            RiskReason::SubstanceUseDisorder,
        ),
        (&["kidney-impairment"][..], RiskReason::KidneyImpairment),
        (&["liver-impairment"][..], RiskReason::LiverImpairment),
        (&["pregnancy"][..], RiskReason::Pregnancy),
    ] {
        if has_any(p, groups) {
            reasons.push(reason);
        }
    }
    if different_prescribers(input, ev, &drafts) {
        reasons.push(RiskReason::DifferentPrescribers);
    }
    let ingredients = |pred: &dyn Fn(DrugClass) -> bool| -> Vec<RxCui> {
        let s: BTreeSet<RxCui> = combined
            .current
            .iter()
            .filter(|u| pred(u.class))
            .map(|u| u.ingredient)
            .collect();
        s.into_iter().collect()
    };
    let naloxone_on_hand = input.history.iter().any(|r| {
        r.status != RecordStatus::Void
            && resolve(kb, &r.medication).is_some_and(|m| m.class == DrugClass::Naloxone)
    });
    CoPrescription {
        drafts,
        // OUD treatment keeps the card at warning: the message is to continue it (FDA 2017).
        severity: if reasons.is_empty() || oud {
            Severity::Warning
        } else {
            Severity::Critical
        },
        reasons,
        mme,
        oud_treatment: oud,
        naloxone_on_hand,
        opioids: ingredients(&|c| {
            matches!(c, DrugClass::OpioidAnalgesic | DrugClass::OudTreatment)
        }),
        bzras: ingredients(&|c| c.is_bzra()),
        withdrawable: vec![],
    }
}

/// The opioid and the BZRA come from different prescribers: the ordering clinician versus the
/// prescriber of the active drug of the other class (or two different prescribers in history).
fn different_prescribers(input: &RuleInput<'_, '_>, ev: &Evaluation, drafts: &[usize]) -> bool {
    let hist = &ev.history_exposure;
    let prescriber_of = |u: &crate::clinical::exposure::CurrentUse| -> Option<String> {
        u.prescriber.clone().or_else(|| {
            let order = u.prescription.as_deref()?;
            input.history.iter().find_map(|r| {
                let id = r.id.as_deref()?;
                (order.ends_with(&format!("MedicationRequest/{id}")))
                    .then(|| r.prescriber.clone())
                    .flatten()
            })
        })
    };
    let by_class = |pred: &dyn Fn(DrugClass) -> bool| -> BTreeSet<String> {
        hist.current
            .iter()
            .filter(|u| pred(u.class))
            .filter_map(prescriber_of)
            .collect()
    };
    let hist_opioid = by_class(&|c| c == DrugClass::OpioidAnalgesic);
    let hist_bzra = by_class(&|c| c.is_bzra());
    let user = input.user.map(|u| u.to_string());
    let mut sides = Vec::new();
    for i in drafts {
        let d = &input.drafts[*i];
        let who = d.record.prescriber.clone().or_else(|| user.clone());
        let other = match d.medication.map(|m| m.class) {
            Some(c) if c.is_bzra() => &hist_opioid,
            Some(DrugClass::OpioidAnalgesic) => &hist_bzra,
            _ => continue,
        };
        if let Some(w) = who {
            sides.push(!other.is_empty() && !other.contains(&w));
        }
    }
    if sides.iter().any(|s| *s) {
        return true;
    }
    !hist_opioid.is_empty() && !hist_bzra.is_empty() && hist_opioid.is_disjoint(&hist_bzra)
}
