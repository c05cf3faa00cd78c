//! Newtypes for values where a mix-up is a bug.

use serde::Serialize;
use std::fmt;

/// An RxNorm concept unique identifier (digits only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RxCui(u32);

impl RxCui {
    /// Parses a code as it appears in a Coding; RxCUIs are decimal digits.
    pub fn parse(code: &str) -> Option<Self> {
        let code = code.trim();
        if code.is_empty() || code.len() > 9 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        code.parse().ok().filter(|n| *n > 0).map(RxCui)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for RxCui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milligrams of oral diazepam per day.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct DiazepamMg(pub f64);

/// Morphine milligram equivalents per day.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Mme(pub f64);

/// The product classes offramp reasons about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrugClass {
    Benzodiazepine,
    ZDrug,
    OpioidAnalgesic,
    OudTreatment,
    CnsDepressant,
    Naloxone,
    /// In a source value set but not sedating (stimulants, anaesthetic gases).
    NotSedating,
}

impl DrugClass {
    pub const ALL: [DrugClass; 7] = [
        DrugClass::Benzodiazepine,
        DrugClass::ZDrug,
        DrugClass::OpioidAnalgesic,
        DrugClass::OudTreatment,
        DrugClass::CnsDepressant,
        DrugClass::Naloxone,
        DrugClass::NotSedating,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DrugClass::Benzodiazepine => "benzodiazepine",
            DrugClass::ZDrug => "z-drug",
            DrugClass::OpioidAnalgesic => "opioid-analgesic",
            DrugClass::OudTreatment => "oud-treatment",
            DrugClass::CnsDepressant => "cns-depressant",
            DrugClass::Naloxone => "naloxone",
            DrugClass::NotSedating => "not-sedating",
        }
    }

    /// Benzodiazepine receptor agonists: benzodiazepines and Z-drugs.
    pub fn is_bzra(self) -> bool {
        matches!(self, DrugClass::Benzodiazepine | DrugClass::ZDrug)
    }
}

impl fmt::Display for DrugClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rxcui_rejects_non_codes() {
        for bad in ["", " ", "abc", "12a", "-5", "0", "1234567890", "1.5"] {
            assert_eq!(RxCui::parse(bad), None, "{bad:?}");
        }
        assert_eq!(RxCui::parse(" 596 ").map(RxCui::get), Some(596));
    }

    #[test]
    fn class_names_round_trip() {
        for c in DrugClass::ALL {
            assert_eq!(DrugClass::parse(c.as_str()), Some(c));
        }
        assert_eq!(DrugClass::parse("opioid"), None);
    }
}
