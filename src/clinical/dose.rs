//! Daily dose from FHIR dosageInstruction: doseQuantity or doseRange (doseAndRate as an array or a
//! single object), timing.repeat frequency/period or a timing code (BID, Q6H, QHS ...), asNeeded
//! with maxDosePerPeriod, and doses in tablets, mL, mg or mcg. What cannot be understood is None.

use super::fhir_read::{num, one_or_many, str_field, unit_days};
use super::json::Json;
use super::knowledge::{Medication, StrengthUnit};

/// The unit a dose or a dispensed quantity is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoseUnit {
    /// Tablets, capsules, patches, films, suppositories, actuations: one unit of the product.
    Unit,
    Mg,
    Ml,
}

impl DoseUnit {
    /// Reads a Quantity's code or unit; UCUM and the spellings EHRs send.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s
            .trim()
            .trim_matches(|c| c == '{' || c == '}')
            .to_ascii_lowercase();
        let s = s.trim_end_matches('s');
        Some(match s {
            "mg" | "milligram" => DoseUnit::Mg,
            "ml" | "milliliter" | "millilitre" => DoseUnit::Ml,
            "tab" | "tablet" | "tbl" | "cap" | "capsule" | "patch" | "film" | "each" | "ea"
            | "1" | "spray" | "actuation" | "actuat" | "puff" | "suppository" | "lozenge"
            | "troche" | "unit" | "dose" | "applicator" | "system" | "disc" => DoseUnit::Unit,
            _ => return None,
        })
    }
}

/// An amount in a unit: per administration, per day, or dispensed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amount {
    pub value: f64,
    pub unit: DoseUnit,
}

impl Amount {
    /// An amount to pass on: positive and finite. A product or sum of figures that are each
    /// readable can overflow to infinity (1e308 tablets four times a day) or underflow to zero,
    /// and neither is a dose anything can be computed from.
    fn checked(value: f64, unit: DoseUnit) -> Option<Self> {
        (value.is_finite() && value > 0.0).then_some(Amount { value, unit })
    }

    /// Reads a FHIR Quantity (value + code/unit); mcg is turned into mg.
    pub fn from_quantity(q: Option<&Json>) -> Option<Self> {
        let q = q?;
        let value = num(q.get("value"))?;
        if value.is_nan() || value <= 0.0 {
            return None;
        }
        let unit_text = str_field(q, "code")
            .or_else(|| str_field(q, "unit"))
            .unwrap_or("1");
        let lower = unit_text.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "mcg" | "ug" | "µg" | "microgram" | "micrograms"
        ) {
            return Some(Amount {
                value: value / 1000.0,
                unit: DoseUnit::Mg,
            });
        }
        let unit = DoseUnit::parse(unit_text)
            .or_else(|| str_field(q, "unit").and_then(DoseUnit::parse))?;
        Some(Amount { value, unit })
    }
}

/// One patient's dosing, reduced to what exposure needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dosage {
    /// Scheduled amount per day (for PRN orders: the most the instructions allow).
    pub per_day: Option<Amount>,
    /// Amount per administration.
    pub per_dose: Option<Amount>,
    pub as_needed: bool,
    /// From maxDosePerPeriod, per day.
    pub max_per_day: Option<Amount>,
    /// Days the instructions say the course lasts (timing.repeat.boundsDuration).
    pub bounds_days: Option<f64>,
    /// End of the course (timing.repeat.boundsPeriod.end), as written.
    pub bounds_end: Option<chrono::NaiveDate>,
}

/// Administrations a day for a timing code of the HL7 GTS abbreviation table.
fn code_per_day(code: &str) -> Option<f64> {
    Some(match code.trim().to_ascii_uppercase().as_str() {
        "QD" | "DAILY" | "QAM" | "QPM" | "AM" | "PM" | "QHS" | "HS" | "BED" | "QNOON" => 1.0,
        "BID" | "Q12H" => 2.0,
        "TID" | "Q8H" => 3.0,
        "QID" | "Q6H" => 4.0,
        "Q4H" => 6.0,
        "Q3H" => 8.0,
        "Q2H" => 12.0,
        "Q1H" | "QH" => 24.0,
        "QOD" | "Q48H" => 0.5,
        "Q72H" => 1.0 / 3.0,
        "WK" | "QWK" => 1.0 / 7.0,
        _ => return None,
    })
}

/// Administrations per day from a Timing.
fn timing_per_day(timing: &Json) -> Option<f64> {
    if let Some(repeat) = timing.get("repeat") {
        let freq = num(repeat.get("frequencyMax")).or_else(|| num(repeat.get("frequency")));
        let period = num(repeat.get("periodMax")).or_else(|| num(repeat.get("period")));
        let unit = str_field(repeat, "periodUnit");
        match (freq, period, unit) {
            (f, Some(p), Some(u)) if p > 0.0 => {
                let days = p * unit_days(u)?;
                return Some(f.unwrap_or(1.0) / days);
            }
            _ => {}
        }
        let whens = one_or_many(repeat.get("when")).count();
        if whens > 0 {
            return Some(whens as f64 * freq.unwrap_or(1.0));
        }
    }
    let code = timing.get("code")?;
    one_or_many(code.get("coding"))
        .filter_map(|c| str_field(c, "code"))
        .chain(str_field(code, "text"))
        .find_map(code_per_day)
}

/// The amount per administration from doseAndRate (array or object) or an old-style doseQuantity;
/// the top of a range, so exposure is never underestimated.
fn dose_of(d: &Json) -> Option<Amount> {
    let from = |dr: &Json| {
        Amount::from_quantity(dr.get("doseQuantity")).or_else(|| {
            let range = dr.get("doseRange")?;
            Amount::from_quantity(range.get("high"))
                .or_else(|| Amount::from_quantity(range.get("low")))
        })
    };
    one_or_many(d.get("doseAndRate"))
        .find_map(from)
        .or_else(|| from(d))
}

fn max_per_day(d: &Json) -> Option<Amount> {
    one_or_many(d.get("maxDosePerPeriod")).find_map(|ratio| {
        let n = Amount::from_quantity(ratio.get("numerator"))?;
        let den = ratio.get("denominator");
        let days = den.and_then(|q| {
            let v = num(q.get("value")).unwrap_or(1.0);
            let u = str_field(q, "code")
                .or_else(|| str_field(q, "unit"))
                .unwrap_or("d");
            Some(v * unit_days(u)?)
        })?;
        (days > 0.0)
            .then(|| Amount::checked(n.value / days, n.unit))
            .flatten()
    })
}

fn read_one(d: &Json) -> Dosage {
    let as_needed = d
        .get("asNeededBoolean")
        .and_then(Json::as_bool)
        .unwrap_or(false)
        || d.get("asNeededCodeableConcept")
            .is_some_and(|v| !v.is_null());
    let per_dose = dose_of(d);
    let timing = d.get("timing");
    let per_day_count = timing.and_then(timing_per_day);
    let per_day = match (per_dose, per_day_count) {
        (Some(a), Some(n)) if n > 0.0 => Amount::checked(a.value * n, a.unit),
        _ => None,
    };
    let repeat = timing.and_then(|t| t.get("repeat"));
    let bounds_days = repeat.and_then(|r| super::fhir_read::duration_days(r.get("boundsDuration")));
    let bounds_end = repeat
        .and_then(|r| r.get("boundsPeriod"))
        .and_then(|p| super::fhir_read::date(p.get("end")));
    Dosage {
        per_day,
        per_dose,
        as_needed,
        max_per_day: max_per_day(d),
        bounds_days,
        bounds_end,
    }
}

/// Reads dosageInstruction (array or object). Instructions with different `sequence` numbers run
/// one after another (the first is the current one); instructions without, or with the same,
/// sequence run together and their daily amounts add up when their units agree.
pub fn read_dosage(v: Option<&Json>) -> Option<Dosage> {
    let all: Vec<&Json> = one_or_many(v).filter(|d| d.is_object()).collect();
    let first_seq = all
        .iter()
        .filter_map(|d| num(d.get("sequence")))
        .reduce(f64::min);
    let current: Vec<Dosage> = all
        .iter()
        .filter(|d| match (first_seq, num(d.get("sequence"))) {
            (Some(f), Some(s)) => s == f,
            _ => true,
        })
        .map(|d| read_one(d))
        .collect();
    let mut it = current.into_iter();
    let mut acc = it.next()?;
    for d in it {
        acc.as_needed |= d.as_needed;
        acc.per_day = match (acc.per_day, d.per_day) {
            (Some(a), Some(b)) if a.unit == b.unit => Amount::checked(a.value + b.value, a.unit),
            _ => None,
        };
        acc.max_per_day = match (acc.max_per_day, d.max_per_day) {
            (Some(a), Some(b)) if a.unit == b.unit => Amount::checked(a.value + b.value, a.unit),
            (a, None) => a,
            _ => None,
        };
        if acc.per_dose.map(|a| a.unit) != d.per_dose.map(|a| a.unit) {
            acc.per_dose = None;
        }
        acc.bounds_days = acc.bounds_days.or(d.bounds_days);
        acc.bounds_end = acc.bounds_end.or(d.bounds_end);
    }
    Some(acc)
}

/// Converts an amount of `med` to product units (tablets, patches, mL ...) using its strength, so a
/// quantity in tablets and a dose in mg can be compared. None if the strength cannot tell.
pub fn to_product_units(amount: Amount, med: &Medication) -> Option<f64> {
    match amount.unit {
        DoseUnit::Unit | DoseUnit::Ml => Some(amount.value),
        DoseUnit::Mg => {
            // A dose in mg refers to the drug the product is classified by; only meaningful when
            // one ingredient carries a per-unit or per-mL strength.
            let [ing] = med.ingredients.as_slice() else {
                return None;
            };
            let s = ing.strength?;
            match s.unit {
                StrengthUnit::Mg | StrengthUnit::MgPerMl | StrengthUnit::MgPerActuation => {
                    Some(amount.value / s.amount).filter(|u| u.is_finite())
                }
                StrengthUnit::McgPerHr | StrengthUnit::MgPerMg => None,
            }
        }
    }
}

/// Ingredient amount per day: mg/day, or for patches the delivery rate in mcg/hr.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IngredientRate {
    MgPerDay(f64),
    McgPerHr(f64),
}

/// The daily amount of one ingredient of `med` when the patient takes `units_per_day` product
/// units (or mL for liquids). Patches: the dose is how many patches are worn at once.
pub fn ingredient_rate(
    med: &Medication,
    ingredient_index: usize,
    per_day: Amount,
    patches_worn: Option<f64>,
) -> Option<IngredientRate> {
    let s = med.ingredients.get(ingredient_index)?.strength?;
    // A huge (yet finite) amount times a strength can overflow: no rate then.
    let rate = match (s.unit, per_day.unit) {
        (StrengthUnit::McgPerHr, _) => Some(IngredientRate::McgPerHr(s.amount * patches_worn?)),
        (StrengthUnit::Mg | StrengthUnit::MgPerActuation, DoseUnit::Unit) => {
            Some(IngredientRate::MgPerDay(per_day.value * s.amount))
        }
        (StrengthUnit::MgPerMl, DoseUnit::Ml) => {
            Some(IngredientRate::MgPerDay(per_day.value * s.amount))
        }
        (_, DoseUnit::Mg) if med.ingredients.len() == 1 => {
            Some(IngredientRate::MgPerDay(per_day.value))
        }
        _ => None,
    };
    rate.filter(|r| match r {
        IngredientRate::MgPerDay(x) | IngredientRate::McgPerHr(x) => x.is_finite(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The readers take the borrowed tree; tests write serde_json literals.
    macro_rules! json {
        ($($t:tt)+) => {
            Json::from(&serde_json::json!($($t)+))
        };
    }

    fn per_day(v: Json<'_>) -> Option<(f64, DoseUnit)> {
        read_dosage(Some(&v))
            .and_then(|d| d.per_day)
            .map(|a| (a.value, a.unit))
    }

    #[test]
    fn frequency_and_period() {
        let d = json!([{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}]);
        assert_eq!(per_day(d), Some((2.0, DoseUnit::Unit)));
        let every_6h = json!({"timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
            "doseAndRate": {"doseQuantity": {"value": 5, "unit": "mg"}}});
        assert_eq!(per_day(every_6h), Some((20.0, DoseUnit::Mg)));
    }

    #[test]
    fn timing_codes() {
        for (code, n) in [
            ("QD", 1.0),
            ("BID", 2.0),
            ("TID", 3.0),
            ("QID", 4.0),
            ("Q4H", 6.0),
            ("Q6H", 4.0),
            ("Q8H", 3.0),
            ("QHS", 1.0),
        ] {
            let d = json!({"timing": {"code": {"coding": [{"code": code}]}},
                "doseAndRate": [{"doseQuantity": {"value": 0.5, "code": "{tbl}"}}]});
            assert_eq!(per_day(d), Some((0.5 * n, DoseUnit::Unit)), "{code}");
        }
    }

    #[test]
    fn range_takes_the_top_and_mcg_becomes_mg() {
        let d = json!({"timing": {"code": {"coding": [{"code": "BID"}]}},
            "doseAndRate": [{"doseRange": {"low": {"value": 1, "unit": "tablet"},
                "high": {"value": 2, "unit": "tablet"}}}]});
        assert_eq!(per_day(d), Some((4.0, DoseUnit::Unit)));
        let d = json!({"timing": {"code": {"coding": [{"code": "QD"}]}},
            "doseAndRate": [{"doseQuantity": {"value": 500, "unit": "mcg"}}]});
        assert_eq!(per_day(d), Some((0.5, DoseUnit::Mg)));
    }

    #[test]
    fn prn_keeps_the_max_apart() {
        let d = json!({"asNeededBoolean": true,
            "timing": {"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
            "maxDosePerPeriod": {"numerator": {"value": 3, "unit": "tablet"},
                "denominator": {"value": 1, "code": "d"}}});
        let dosage = read_dosage(Some(&d)).expect("dosage");
        assert!(dosage.as_needed);
        assert_eq!(
            dosage.max_per_day,
            Some(Amount {
                value: 3.0,
                unit: DoseUnit::Unit
            })
        );
    }

    #[test]
    fn concurrent_lines_add_and_sequenced_lines_take_the_first() {
        let am_hs = json!([
            {"timing": {"code": {"coding": [{"code": "QAM"}]}}, "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]},
            {"timing": {"code": {"coding": [{"code": "QHS"}]}}, "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "tablet"}}]}
        ]);
        assert_eq!(per_day(am_hs), Some((3.0, DoseUnit::Unit)));
        let taper = json!([
            {"sequence": 2, "timing": {"code": {"coding": [{"code": "QD"}]}}, "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]},
            {"sequence": 1, "timing": {"code": {"coding": [{"code": "BID"}]}}, "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}
        ]);
        assert_eq!(per_day(taper), Some((2.0, DoseUnit::Unit)));
    }

    /// Fuzzing (the invariants fuzz/fuzz_targets/dose.rs checks): figures that are each finite
    /// multiplied or added up to an infinite (or zero) daily amount, which then gave infinite
    /// exposure figures. Such an amount is now unknown, as an unreadable one is.
    #[test]
    fn overflowing_figures_are_unknown_not_infinite() {
        let huge_frequency = json!({"timing": {"repeat": {"frequency": 1e308, "period": 1e-300, "periodUnit": "h"}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "mg"}}]});
        assert_eq!(per_day(huge_frequency), None);
        let huge_dose = json!({"timing": {"code": {"coding": [{"code": "QID"}]}},
            "doseAndRate": [{"doseQuantity": {"value": 1e308, "unit": "tablet"}}]});
        assert_eq!(per_day(huge_dose), None);
        let two_lines = json!([
            {"timing": {"code": {"coding": [{"code": "QD"}]}}, "doseAndRate": [{"doseQuantity": {"value": 1.5e308, "unit": "tablet"}}]},
            {"timing": {"code": {"coding": [{"code": "QD"}]}}, "doseAndRate": [{"doseQuantity": {"value": 1.5e308, "unit": "tablet"}}]}
        ]);
        assert_eq!(per_day(two_lines), None);
        let max = json!({"asNeededBoolean": true, "maxDosePerPeriod": {"numerator": {"value": 1e308, "unit": "tablet"},
            "denominator": {"value": 1e-310, "code": "d"}}});
        assert_eq!(read_dosage(Some(&max)).and_then(|d| d.max_per_day), None);
        let underflow = json!({"timing": {"repeat": {"frequency": 1e-300, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 1e-300, "unit": "tablet"}}]});
        assert_eq!(per_day(underflow), None, "zero is not a daily amount");
        let kb = crate::clinical::Knowledge::embedded().expect("kb");
        let big = Amount {
            value: f64::MAX,
            unit: DoseUnit::Unit,
        };
        for med in kb.medications() {
            for i in 0..med.ingredients.len() {
                if let Some(IngredientRate::MgPerDay(x) | IngredientRate::McgPerHr(x)) =
                    ingredient_rate(med, i, big, Some(f64::MAX))
                {
                    assert!(x.is_finite(), "{}", med.rxcui);
                }
            }
            let mg = Amount {
                value: f64::MAX,
                unit: DoseUnit::Mg,
            };
            assert!(to_product_units(mg, med).is_none_or(f64::is_finite));
        }
    }

    #[test]
    fn nonsense_is_unknown_not_an_error() {
        for v in [
            json!(null),
            json!([]),
            json!("take one"),
            json!([{"text": "as directed"}]),
            json!({"doseAndRate": [{"doseQuantity": {"value": -1, "unit": "mg"}}], "timing": {"code": {"coding": [{"code": "QD"}]}}}),
            json!({"doseAndRate": [{"doseQuantity": {"value": 1, "unit": "furlong"}}], "timing": {"code": {"coding": [{"code": "QD"}]}}}),
        ] {
            assert_eq!(per_day(v.clone()), None, "{v}");
        }
    }
}
