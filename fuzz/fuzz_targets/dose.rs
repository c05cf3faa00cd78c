//! Dose parsing: a dosageInstruction / Dosage (array or object) through `read_dosage`, a Quantity
//! through `Amount::from_quantity`, a unit string through `DoseUnit::parse`, and what it gives
//! through `to_product_units` / `ingredient_rate` for every product of the knowledge base.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offramp::clinical::dose::{
    Amount, DoseUnit, IngredientRate, ingredient_rate, read_dosage, to_product_units,
};
use offramp::clinical::json::Json;
use offramp::clinical::knowledge::Medication;
use offramp_fuzz::kb;
use std::sync::OnceLock;

fn products() -> &'static [&'static Medication] {
    static P: OnceLock<Vec<&'static Medication>> = OnceLock::new();
    P.get_or_init(|| kb().medications().collect())
}

/// An amount the readers give is a positive, finite number.
fn check_amount(a: Amount, what: &str) {
    assert!(
        a.value.is_finite() && a.value > 0.0,
        "{what}: {} is not a positive finite amount",
        a.value
    );
}

fn convert(a: Amount, patches: Option<f64>) {
    for med in products() {
        if let Some(u) = to_product_units(a, med) {
            assert!(!u.is_nan(), "product units of {} are NaN", med.rxcui);
        }
        for i in 0..med.ingredients.len() {
            match ingredient_rate(med, i, a, patches) {
                Some(IngredientRate::MgPerDay(x) | IngredientRate::McgPerHr(x)) => {
                    assert!(!x.is_nan(), "ingredient rate of {} is NaN", med.rxcui);
                }
                None => {}
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<Json<'_>>(data) else {
        return;
    };
    if let Json::String(s) = &json {
        let _ = DoseUnit::parse(s);
    }
    if let Some(a) = Amount::from_quantity(Some(&json)) {
        check_amount(a, "quantity");
        convert(a, None);
    }
    if let Some(d) = read_dosage(Some(&json)) {
        for (a, what) in [
            (d.per_day, "per_day"),
            (d.per_dose, "per_dose"),
            (d.max_per_day, "max_per_day"),
        ] {
            if let Some(a) = a {
                check_amount(a, what);
            }
        }
        if let Some(b) = d.bounds_days {
            assert!(b.is_finite() && b > 0.0, "bounds_days {b}");
        }
        let patches = d.per_dose.map(|a| a.value);
        for a in [d.per_day, d.max_per_day, d.per_dose].into_iter().flatten() {
            convert(a, patches);
        }
    }
});
