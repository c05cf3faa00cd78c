//! The knowledge base: drug tables, equivalences, MME factors, condition codes and thresholds,
//! parsed from the text of the files in cds-hooks/knowledge/ and validated once at start.
//!
//! Pure: callers hand in file names and contents (embedded at build time, or read by the edge).

use super::codes::{DrugClass, RxCui};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// The files the knowledge base is made of, in load order.
pub const FILES: [&str; 7] = [
    "ingredients.csv",
    "medications.csv",
    "diazepam-equivalents.csv",
    "mme-factors.csv",
    "conditions.csv",
    "conditions-extra.csv",
    "thresholds.toml",
];

/// The knowledge files compiled into the binary, so `offramp` runs with no files beside it.
pub fn embedded_files() -> Vec<(&'static str, &'static str)> {
    macro_rules! file {
        ($name:literal) => {
            (
                $name,
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/cds-hooks/knowledge/",
                    $name
                )),
            )
        };
    }
    vec![
        file!("ingredients.csv"),
        file!("medications.csv"),
        file!("diazepam-equivalents.csv"),
        file!("mme-factors.csv"),
        file!("conditions.csv"),
        file!("conditions-extra.csv"),
        file!("thresholds.toml"),
    ]
}

/// A table that cannot be trusted: names the file and line so the deployer can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: {message}")]
pub struct KnowledgeError {
    pub file: String,
    pub line: u64,
    pub message: String,
}

fn err(file: &str, line: u64, message: impl Into<String>) -> KnowledgeError {
    KnowledgeError {
        file: file.to_string(),
        line,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngredientRole {
    Benzodiazepine,
    ZDrug,
    Opioid,
    CnsDepressant,
    NotSedating,
    OpioidAntagonist,
}

impl IngredientRole {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "benzodiazepine" => Self::Benzodiazepine,
            "z-drug" => Self::ZDrug,
            "opioid" => Self::Opioid,
            "cns-depressant" => Self::CnsDepressant,
            "not-sedating" => Self::NotSedating,
            "opioid-antagonist" => Self::OpioidAntagonist,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Ingredient {
    pub rxcui: RxCui,
    pub name: String,
    pub role: IngredientRole,
    /// Sub-group of CNS-active drugs (gabapentinoid, barbiturate, ...), empty when not relevant.
    pub group: String,
}

impl Ingredient {
    pub fn is_gabapentinoid(&self) -> bool {
        self.group == "gabapentinoid"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrengthUnit {
    /// Per tablet, capsule, film, suppository.
    Mg,
    MgPerMl,
    /// Patches: the delivery rate.
    McgPerHr,
    MgPerActuation,
    MgPerMg,
}

impl StrengthUnit {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mg" => Self::Mg,
            "mg/mL" => Self::MgPerMl,
            "mcg/hr" => Self::McgPerHr,
            "mg/actuat" => Self::MgPerActuation,
            "mg/mg" => Self::MgPerMg,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Strength {
    pub amount: f64,
    pub unit: StrengthUnit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngredientStrength {
    pub ingredient: RxCui,
    /// None only for ingredient-level (IN) codes.
    pub strength: Option<Strength>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Oral,
    Sublingual,
    Buccal,
    Transdermal,
    Nasal,
    Rectal,
    Injection,
    Implant,
    Inhalation,
    Mucosal,
    Topical,
    /// Ingredient-level codes carry no route.
    Unspecified,
}

impl Route {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "oral" => Self::Oral,
            "sublingual" => Self::Sublingual,
            "buccal" => Self::Buccal,
            "transdermal" => Self::Transdermal,
            "nasal" => Self::Nasal,
            "rectal" => Self::Rectal,
            "injection" => Self::Injection,
            "implant" => Self::Implant,
            "inhalation" => Self::Inhalation,
            "mucosal" => Self::Mucosal,
            "topical" => Self::Topical,
            "" => Self::Unspecified,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Immediate,
    Extended,
    Unspecified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermType {
    Scd,
    Sbd,
    Gpck,
    Bpck,
    Ingredient,
}

#[derive(Debug, Clone)]
pub struct Medication {
    pub rxcui: RxCui,
    pub tty: TermType,
    pub display: String,
    pub class: DrugClass,
    /// The clinically relevant ingredients only (combination partners such as acetaminophen are
    /// not kept).
    pub ingredients: Vec<IngredientStrength>,
    pub dose_form: String,
    pub route: Route,
    pub release: Release,
    /// Injectable or anaesthetic forms used in procedures.
    pub procedural: bool,
    /// Rescue forms (rectal/nasal benzodiazepines, naloxone).
    pub rescue: bool,
}

impl Medication {
    /// Procedural and rescue forms never open an exposure episode; nor do naloxone and the
    /// non-sedating products of the source value sets.
    pub fn opens_episode(&self) -> bool {
        !self.procedural
            && !self.rescue
            && !matches!(self.class, DrugClass::Naloxone | DrugClass::NotSedating)
    }
}

#[derive(Debug, Clone)]
pub struct DiazepamEquivalent {
    pub ingredient: RxCui,
    /// Oral mg of this drug equivalent to 10 mg oral diazepam, lowest and highest figure across
    /// sources.
    pub equiv_low_mg: f64,
    pub equiv_high_mg: f64,
    pub switch_to_diazepam: bool,
    pub source: String,
}

impl DiazepamEquivalent {
    /// Diazepam mg for `mg` of this drug: (figure from the highest equivalent dose, i.e. the lower
    /// diazepam figure; figure from the lowest equivalent dose).
    pub fn diazepam_range(&self, mg: f64) -> (f64, f64) {
        (
            mg * 10.0 / self.equiv_high_mg,
            mg * 10.0 / self.equiv_low_mg,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MmeForm {
    Any,
    Transdermal,
}

#[derive(Debug, Clone)]
pub struct MmeFactor {
    pub ingredient: RxCui,
    pub form: MmeForm,
    pub factor: f64,
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeSystem {
    Snomed,
    Icd10Cm,
}

impl CodeSystem {
    pub fn from_uri(uri: &str) -> Option<Self> {
        match uri.trim_end_matches('/') {
            "http://snomed.info/sct" => Some(Self::Snomed),
            "http://hl7.org/fhir/sid/icd-10-cm" | "http://hl7.org/fhir/sid/icd-10" => {
                Some(Self::Icd10Cm)
            }
            _ => None,
        }
    }
}

/// Code lists for a condition group (hospice, cancer, copd, ...).
#[derive(Debug, Clone, Default)]
pub struct ConditionGroup {
    exact: HashSet<(CodeSystem, String)>,
    /// ICD-10-CM category prefixes (J44 covers J44.9).
    prefixes: Vec<String>,
}

impl ConditionGroup {
    pub fn contains(&self, system: CodeSystem, code: &str) -> bool {
        let code = code.trim();
        if self.exact.contains(&(system, code.to_string())) {
            return true;
        }
        if system == CodeSystem::Icd10Cm {
            let upper = code.to_ascii_uppercase();
            let dotless = upper.replace('.', "");
            return self.prefixes.iter().any(|p| {
                upper.starts_with(p.as_str()) || dotless.starts_with(&p.replace('.', ""))
            });
        }
        false
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A number with the unit and the source it comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sourced<T> {
    pub value: T,
    pub unit: String,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposureThresholds {
    pub episode_gap_days: Sourced<u32>,
    pub active_grace_days: Sourced<u32>,
    pub regular_use_days_per_week: Sourced<f64>,
    pub long_term_days: Sourced<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeThresholds {
    pub adult_years: Sourced<u32>,
    pub older_adult_years: Sourced<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpioidThresholds {
    pub high_mme: Sourced<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnRampThresholds {
    pub max_planned_days: Sourced<u32>,
    pub flag_course_days: Sourced<u32>,
    pub follow_up_days: Sourced<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaperThresholds {
    pub start_reduction_percent_low: Sourced<f64>,
    pub start_reduction_percent_high: Sourced<f64>,
    pub max_reduction_percent_per_2_weeks: Sourced<f64>,
    pub step_days: Sourced<u32>,
    pub slow_step_days: Sourced<u32>,
    pub slow_after_use_days: Sourced<u32>,
    pub follow_up_after_reduction_days: Sourced<u32>,
    pub follow_up_with_opioid_days: Sourced<u32>,
    pub max_units_per_day: Sourced<u32>,
    pub near_end_percent_of_start: Sourced<f64>,
    pub near_end_max_step_days: Sourced<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NaloxoneDefaults {
    /// The naloxone product offered on co-prescription cards.
    pub preferred_rxcui: Sourced<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozeThresholds {
    pub override_snooze_days: Sourced<u32>,
    pub opioid_reassess_days: Sourced<u32>,
}

/// Every threshold and default of clinical-rules.md, each with its source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub exposure: ExposureThresholds,
    pub age: AgeThresholds,
    pub opioid: OpioidThresholds,
    pub on_ramp: OnRampThresholds,
    pub taper: TaperThresholds,
    pub snooze: SnoozeThresholds,
    pub naloxone: NaloxoneDefaults,
}

impl Thresholds {
    /// Numbers that must be positive, by name, for validation.
    fn numbers(&self) -> Vec<(&'static str, f64)> {
        let e = &self.exposure;
        let t = &self.taper;
        vec![
            ("exposure.episode_gap_days", e.episode_gap_days.value.into()),
            (
                "exposure.active_grace_days",
                e.active_grace_days.value.into(),
            ),
            (
                "exposure.regular_use_days_per_week",
                e.regular_use_days_per_week.value,
            ),
            ("exposure.long_term_days", e.long_term_days.value.into()),
            ("age.adult_years", self.age.adult_years.value.into()),
            (
                "age.older_adult_years",
                self.age.older_adult_years.value.into(),
            ),
            ("opioid.high_mme", self.opioid.high_mme.value),
            (
                "on_ramp.max_planned_days",
                self.on_ramp.max_planned_days.value.into(),
            ),
            (
                "on_ramp.flag_course_days",
                self.on_ramp.flag_course_days.value.into(),
            ),
            (
                "on_ramp.follow_up_days",
                self.on_ramp.follow_up_days.value.into(),
            ),
            (
                "taper.start_reduction_percent_low",
                t.start_reduction_percent_low.value,
            ),
            (
                "taper.start_reduction_percent_high",
                t.start_reduction_percent_high.value,
            ),
            (
                "taper.max_reduction_percent_per_2_weeks",
                t.max_reduction_percent_per_2_weeks.value,
            ),
            ("taper.step_days", t.step_days.value.into()),
            ("taper.slow_step_days", t.slow_step_days.value.into()),
            (
                "taper.slow_after_use_days",
                t.slow_after_use_days.value.into(),
            ),
            (
                "taper.follow_up_after_reduction_days",
                t.follow_up_after_reduction_days.value.into(),
            ),
            (
                "taper.follow_up_with_opioid_days",
                t.follow_up_with_opioid_days.value.into(),
            ),
            (
                "snooze.override_snooze_days",
                self.snooze.override_snooze_days.value.into(),
            ),
            (
                "snooze.opioid_reassess_days",
                self.snooze.opioid_reassess_days.value.into(),
            ),
        ]
    }
}

/// The loaded, validated knowledge base.
#[derive(Debug, Clone)]
pub struct Knowledge {
    ingredients: HashMap<RxCui, Ingredient>,
    medications: HashMap<RxCui, Medication>,
    equivalents: HashMap<RxCui, DiazepamEquivalent>,
    mme: HashMap<(RxCui, MmeForm), MmeFactor>,
    conditions: HashMap<String, ConditionGroup>,
    thresholds: Thresholds,
}

impl Knowledge {
    /// Loads the tables compiled into the binary.
    pub fn embedded() -> Result<Self, KnowledgeError> {
        Self::from_files(&embedded_files())
    }

    /// Parses and validates the knowledge files given as (file name, contents).
    pub fn from_files(files: &[(&str, &str)]) -> Result<Self, KnowledgeError> {
        let get = |name: &str| {
            files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| *c)
                .ok_or_else(|| err(name, 0, "file missing"))
        };
        let ingredients = parse_ingredients("ingredients.csv", get("ingredients.csv")?)?;
        let medications =
            parse_medications("medications.csv", get("medications.csv")?, &ingredients)?;
        let equivalents = parse_equivalents(
            "diazepam-equivalents.csv",
            get("diazepam-equivalents.csv")?,
            &ingredients,
        )?;
        let mme = parse_mme("mme-factors.csv", get("mme-factors.csv")?, &ingredients)?;
        let mut conditions = HashMap::new();
        for name in ["conditions.csv", "conditions-extra.csv"] {
            parse_conditions(name, get(name)?, &mut conditions)?;
        }
        let thresholds = parse_thresholds("thresholds.toml", get("thresholds.toml")?)?;
        let naloxone = thresholds.naloxone.preferred_rxcui.value;
        let is_naloxone = RxCui::parse(&naloxone.to_string())
            .and_then(|r| medications.get(&r))
            .is_some_and(|m| m.class == DrugClass::Naloxone);
        if !is_naloxone {
            return Err(err(
                "thresholds.toml",
                0,
                format!(
                    "naloxone.preferred_rxcui {naloxone} is not a naloxone product in medications.csv"
                ),
            ));
        }
        Ok(Knowledge {
            ingredients,
            medications,
            equivalents,
            mme,
            conditions,
            thresholds,
        })
    }

    pub fn medication(&self, rxcui: RxCui) -> Option<&Medication> {
        self.medications.get(&rxcui)
    }

    pub fn ingredient(&self, rxcui: RxCui) -> Option<&Ingredient> {
        self.ingredients.get(&rxcui)
    }

    pub fn medications(&self) -> impl Iterator<Item = &Medication> {
        self.medications.values()
    }

    pub fn ingredients(&self) -> impl Iterator<Item = &Ingredient> {
        self.ingredients.values()
    }

    pub fn diazepam_equivalent(&self, ingredient: RxCui) -> Option<&DiazepamEquivalent> {
        self.equivalents.get(&ingredient)
    }

    /// The CDC 2022 factor for this ingredient in this product, if the guideline gives one.
    pub fn mme_factor(&self, ingredient: RxCui, route: Route) -> Option<&MmeFactor> {
        if route == Route::Transdermal {
            self.mme.get(&(ingredient, MmeForm::Transdermal))
        } else {
            self.mme.get(&(ingredient, MmeForm::Any))
        }
    }

    pub fn mme_factors(&self) -> impl Iterator<Item = &MmeFactor> {
        self.mme.values()
    }

    pub fn condition_group(&self, group: &str) -> Option<&ConditionGroup> {
        self.conditions.get(group)
    }

    pub fn condition_groups(&self) -> impl Iterator<Item = (&str, &ConditionGroup)> {
        self.conditions.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The naloxone product offered on cards (validated at load to be a naloxone product).
    pub fn preferred_naloxone(&self) -> Option<&Medication> {
        RxCui::parse(&self.thresholds.naloxone.preferred_rxcui.value.to_string())
            .and_then(|r| self.medications.get(&r))
    }

    /// Oral immediate-release single-ingredient tablets and capsules (SCD) of an ingredient: the
    /// products a taper can be made from.
    pub fn oral_units_of(&self, ingredient: RxCui) -> Vec<&Medication> {
        let mut out: Vec<&Medication> = self
            .medications
            .values()
            .filter(|m| {
                m.tty == TermType::Scd
                    && m.route == Route::Oral
                    && m.release == Release::Immediate
                    && m.opens_episode()
                    && m.ingredients.len() == 1
                    && m.ingredients[0].ingredient == ingredient
                    && m.ingredients[0]
                        .strength
                        .is_some_and(|s| s.unit == StrengthUnit::Mg)
                    && (m.dose_form.ends_with("Oral Tablet")
                        || m.dose_form.ends_with("Oral Capsule"))
            })
            .collect();
        out.sort_by(|a, b| {
            let s = |m: &Medication| m.ingredients[0].strength.map_or(0.0, |s| s.amount);
            s(a).total_cmp(&s(b)).then(a.rxcui.cmp(&b.rxcui))
        });
        out
    }

    /// A one-line summary for `offramp check-knowledge`.
    pub fn summary(&self) -> KnowledgeSummary {
        let mut by_class: Vec<(DrugClass, usize)> = DrugClass::ALL
            .iter()
            .map(|c| {
                (
                    *c,
                    self.medications.values().filter(|m| m.class == *c).count(),
                )
            })
            .collect();
        by_class.retain(|(_, n)| *n > 0);
        let mut groups: Vec<(String, usize)> = self
            .conditions
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        groups.sort();
        KnowledgeSummary {
            medications: self.medications.len(),
            by_class,
            ingredients: self.ingredients.len(),
            equivalents: self.equivalents.len(),
            mme_factors: self.mme.len(),
            condition_groups: groups,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KnowledgeSummary {
    pub medications: usize,
    pub by_class: Vec<(DrugClass, usize)>,
    pub ingredients: usize,
    pub equivalents: usize,
    pub mme_factors: usize,
    pub condition_groups: Vec<(String, usize)>,
}

impl fmt::Display for KnowledgeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} medications (", self.medications)?;
        for (i, (c, n)) in self.by_class.iter().enumerate() {
            write!(f, "{}{c} {n}", if i > 0 { ", " } else { "" })?;
        }
        write!(
            f,
            "), {} ingredients, {} diazepam equivalents, {} MME factors, condition groups: ",
            self.ingredients, self.equivalents, self.mme_factors
        )?;
        for (i, (g, n)) in self.condition_groups.iter().enumerate() {
            write!(f, "{}{g} {n}", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

/// Reads a CSV with a header, '#' comment lines, and calls `row` with each record and its line.
fn read_csv(
    file: &str,
    text: &str,
    columns: &[&str],
    mut row: impl FnMut(&csv::StringRecord, u64) -> Result<(), KnowledgeError>,
) -> Result<(), KnowledgeError> {
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| err(file, 1, e.to_string()))?
        .clone();
    let found: Vec<&str> = headers.iter().collect();
    if found != columns {
        return Err(err(
            file,
            1,
            format!("expected columns {columns:?}, found {found:?}"),
        ));
    }
    let mut any = false;
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            err(file, line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        row(&record, line)?;
        any = true;
    }
    if !any {
        return Err(err(file, 1, "no rows"));
    }
    Ok(())
}

fn rxcui_field(file: &str, line: u64, what: &str, s: &str) -> Result<RxCui, KnowledgeError> {
    RxCui::parse(s).ok_or_else(|| err(file, line, format!("{what} {s:?} is not an RxCUI")))
}

fn positive(file: &str, line: u64, what: &str, s: &str) -> Result<f64, KnowledgeError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(err(
            file,
            line,
            format!("{what} {s:?} must be a positive number"),
        )),
    }
}

fn parse_ingredients(file: &str, text: &str) -> Result<HashMap<RxCui, Ingredient>, KnowledgeError> {
    let mut out = HashMap::new();
    let mut names = HashSet::new();
    read_csv(
        file,
        text,
        &[
            "rxcui", "name", "role", "group", "salts", "source_a", "source_b",
        ],
        |r, line| {
            let rxcui = rxcui_field(file, line, "rxcui", &r[0])?;
            let role = IngredientRole::parse(&r[2])
                .ok_or_else(|| err(file, line, format!("unknown role {:?}", &r[2])))?;
            if r[1].is_empty() || !names.insert(r[1].to_string()) {
                return Err(err(
                    file,
                    line,
                    format!("empty or duplicate name {:?}", &r[1]),
                ));
            }
            if r[5].is_empty() {
                return Err(err(file, line, "source_a is required"));
            }
            let ing = Ingredient {
                rxcui,
                name: r[1].to_string(),
                role,
                group: r[3].to_string(),
            };
            if out.insert(rxcui, ing).is_some() {
                return Err(err(file, line, format!("duplicate code {rxcui}")));
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn parse_medications(
    file: &str,
    text: &str,
    ingredients: &HashMap<RxCui, Ingredient>,
) -> Result<HashMap<RxCui, Medication>, KnowledgeError> {
    let mut out = HashMap::new();
    read_csv(
        file,
        text,
        &[
            "rxcui",
            "tty",
            "display",
            "class",
            "ingredients",
            "dose_form",
            "route",
            "release",
            "flags",
            "sources",
        ],
        |r, line| {
            let rxcui = rxcui_field(file, line, "rxcui", &r[0])?;
            let tty = match &r[1] {
                "SCD" => TermType::Scd,
                "SBD" => TermType::Sbd,
                "GPCK" => TermType::Gpck,
                "BPCK" => TermType::Bpck,
                "IN" => TermType::Ingredient,
                other => return Err(err(file, line, format!("unknown tty {other:?}"))),
            };
            let class = DrugClass::parse(&r[3])
                .ok_or_else(|| err(file, line, format!("unknown class {:?}", &r[3])))?;
            let mut ings = Vec::new();
            for part in r[4].split(';').filter(|p| !p.is_empty()) {
                let mut it = part.split(':');
                let code = rxcui_field(file, line, "ingredient", it.next().unwrap_or(""))?;
                if !ingredients.contains_key(&code) {
                    return Err(err(
                        file,
                        line,
                        format!("ingredient {code} not in ingredients.csv"),
                    ));
                }
                let strength = match (it.next(), it.next()) {
                    (Some(a), Some(u)) => Some(Strength {
                        amount: positive(file, line, "strength", a)?,
                        unit: StrengthUnit::parse(u)
                            .ok_or_else(|| err(file, line, format!("unknown unit {u:?}")))?,
                    }),
                    (None, None) => None,
                    _ => return Err(err(file, line, format!("bad ingredient {part:?}"))),
                };
                if strength.is_none() && tty != TermType::Ingredient {
                    return Err(err(
                        file,
                        line,
                        format!("missing strength for ingredient {code}"),
                    ));
                }
                ings.push(IngredientStrength {
                    ingredient: code,
                    strength,
                });
            }
            if ings.is_empty() && class != DrugClass::NotSedating {
                return Err(err(file, line, "missing strength: no ingredient listed"));
            }
            let route = Route::parse(&r[6])
                .ok_or_else(|| err(file, line, format!("unknown route {:?}", &r[6])))?;
            let release = match &r[7] {
                "immediate" => Release::Immediate,
                "extended" => Release::Extended,
                "" => Release::Unspecified,
                other => return Err(err(file, line, format!("unknown release {other:?}"))),
            };
            let (mut procedural, mut rescue) = (false, false);
            for flag in r[8].split(';').filter(|f| !f.is_empty()) {
                match flag {
                    "procedural" => procedural = true,
                    "rescue" => rescue = true,
                    other => return Err(err(file, line, format!("unknown flag {other:?}"))),
                }
            }
            let med = Medication {
                rxcui,
                tty,
                display: r[2].to_string(),
                class,
                ingredients: ings,
                dose_form: r[5].to_string(),
                route,
                release,
                procedural,
                rescue,
            };
            if out.insert(rxcui, med).is_some() {
                return Err(err(file, line, format!("duplicate code {rxcui}")));
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn parse_equivalents(
    file: &str,
    text: &str,
    ingredients: &HashMap<RxCui, Ingredient>,
) -> Result<HashMap<RxCui, DiazepamEquivalent>, KnowledgeError> {
    let mut out = HashMap::new();
    read_csv(
        file,
        text,
        &[
            "ingredient_rxcui",
            "ingredient",
            "equiv_low_mg",
            "equiv_high_mg",
            "switch_to_diazepam",
            "source",
            "notes",
        ],
        |r, line| {
            let ingredient = rxcui_field(file, line, "ingredient_rxcui", &r[0])?;
            match ingredients.get(&ingredient) {
                Some(i)
                    if matches!(
                        i.role,
                        IngredientRole::Benzodiazepine | IngredientRole::ZDrug
                    ) => {}
                _ => {
                    return Err(err(
                        file,
                        line,
                        format!("{ingredient} is not a BZRA ingredient"),
                    ));
                }
            }
            let low = positive(file, line, "equiv_low_mg", &r[2])?;
            let high = positive(file, line, "equiv_high_mg", &r[3])?;
            if low > high {
                return Err(err(file, line, "equiv_low_mg is above equiv_high_mg"));
            }
            let switch_to_diazepam = match &r[4] {
                "true" => true,
                "false" => false,
                other => return Err(err(file, line, format!("switch_to_diazepam {other:?}"))),
            };
            if r[5].is_empty() {
                return Err(err(file, line, "source is required"));
            }
            let eq = DiazepamEquivalent {
                ingredient,
                equiv_low_mg: low,
                equiv_high_mg: high,
                switch_to_diazepam,
                source: r[5].to_string(),
            };
            if out.insert(ingredient, eq).is_some() {
                return Err(err(file, line, format!("duplicate code {ingredient}")));
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn parse_mme(
    file: &str,
    text: &str,
    ingredients: &HashMap<RxCui, Ingredient>,
) -> Result<HashMap<(RxCui, MmeForm), MmeFactor>, KnowledgeError> {
    let mut out = HashMap::new();
    read_csv(
        file,
        text,
        &[
            "ingredient_rxcui",
            "ingredient",
            "form",
            "factor",
            "dose_unit",
            "source",
            "notes",
        ],
        |r, line| {
            let ingredient = rxcui_field(file, line, "ingredient_rxcui", &r[0])?;
            if ingredients.get(&ingredient).map(|i| i.role) != Some(IngredientRole::Opioid) {
                return Err(err(
                    file,
                    line,
                    format!("{ingredient} is not an opioid ingredient"),
                ));
            }
            let (form, unit) = match &r[2] {
                "any" => (MmeForm::Any, "mg/day"),
                "transdermal" => (MmeForm::Transdermal, "mcg/hr"),
                other => return Err(err(file, line, format!("unknown form {other:?}"))),
            };
            if &r[4] != unit {
                return Err(err(
                    file,
                    line,
                    format!("dose_unit must be {unit} for form {}", &r[2]),
                ));
            }
            let factor = positive(file, line, "factor", &r[3])?;
            if r[5].is_empty() {
                return Err(err(file, line, "source is required"));
            }
            let f = MmeFactor {
                ingredient,
                form,
                factor,
                source: r[5].to_string(),
            };
            if out.insert((ingredient, form), f).is_some() {
                return Err(err(
                    file,
                    line,
                    format!("duplicate code {ingredient} ({})", &r[2]),
                ));
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn parse_conditions(
    file: &str,
    text: &str,
    out: &mut HashMap<String, ConditionGroup>,
) -> Result<(), KnowledgeError> {
    read_csv(
        file,
        text,
        &["group", "system", "code", "match", "display", "source"],
        |r, line| {
            let group = &r[0];
            if group.is_empty() || !group.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                return Err(err(file, line, format!("bad group name {group:?}")));
            }
            let system = CodeSystem::from_uri(&r[1])
                .ok_or_else(|| err(file, line, format!("unknown system {:?}", &r[1])))?;
            let code = r[2].to_string();
            if code.is_empty() {
                return Err(err(file, line, "empty code"));
            }
            if r[5].is_empty() {
                return Err(err(file, line, "source is required"));
            }
            let g = out.entry(group.to_string()).or_default();
            let fresh = match &r[3] {
                "exact" => g.exact.insert((system, code.clone())),
                "prefix" if system == CodeSystem::Icd10Cm => {
                    let p = code.to_ascii_uppercase();
                    let fresh = !g.prefixes.contains(&p);
                    g.prefixes.push(p);
                    fresh
                }
                other => {
                    return Err(err(
                        file,
                        line,
                        format!("bad match {other:?} for this system"),
                    ));
                }
            };
            if !fresh {
                return Err(err(
                    file,
                    line,
                    format!("duplicate code {code} in group {group}"),
                ));
            }
            Ok(())
        },
    )
}

fn parse_thresholds(file: &str, text: &str) -> Result<Thresholds, KnowledgeError> {
    let t: Thresholds = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].matches('\n').count() as u64 + 1
        });
        err(file, line, e.message().to_string())
    })?;
    for (name, value) in t.numbers() {
        if !(value.is_finite() && value > 0.0) {
            let line = text
                .lines()
                .position(|l| l.contains(name.rsplit('.').next().unwrap_or(name)))
                .map_or(0, |i| i as u64 + 1);
            return Err(err(file, line, format!("{name} must be positive")));
        }
    }
    if t.age.older_adult_years.value <= t.age.adult_years.value {
        return Err(err(
            file,
            0,
            "age.older_adult_years must exceed age.adult_years",
        ));
    }
    if t.exposure.regular_use_days_per_week.value > 7.0 {
        return Err(err(
            file,
            0,
            "exposure.regular_use_days_per_week cannot exceed 7",
        ));
    }
    Ok(t)
}
