//! The knowledge tables checked against their sources, and the loader's validation.

use offramp::clinical::knowledge::{CodeSystem, Route, embedded_files};
use offramp::clinical::{DrugClass, Knowledge, RxCui};
use std::collections::HashSet;

fn kb() -> Knowledge {
    Knowledge::embedded().expect("the built-in tables load")
}

fn rx(n: u32) -> RxCui {
    RxCui::parse(&n.to_string()).expect("rxcui")
}

/// Codes of one value set as committed under cds-hooks/knowledge/valuesets/.
fn value_set(name: &str) -> Vec<(RxCui, String)> {
    let path = format!(
        "{}/cds-hooks/knowledge/valuesets/{name}.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("value set file");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let (code, display) = line.split_once(',').expect("code,display");
        out.push((
            RxCui::parse(code).expect("code"),
            display.trim_matches('"').to_string(),
        ));
    }
    assert!(!out.is_empty(), "{name} is empty");
    out
}

#[test]
fn every_code_of_the_source_value_sets_is_in_the_table_with_its_class() {
    let kb = kb();
    let cases: [(&str, &[DrugClass]); 6] = [
        ("benzodiazepine-medications", &[DrugClass::Benzodiazepine]),
        (
            "opioid-analgesics-with-ambulatory-misuse-potential",
            &[DrugClass::OpioidAnalgesic, DrugClass::OudTreatment],
        ),
        (
            "extended-release-opioid-with-ambulatory-misuse-potential",
            &[DrugClass::OpioidAnalgesic, DrugClass::OudTreatment],
        ),
        (
            "cns-depressant-medications",
            &[
                DrugClass::ZDrug,
                DrugClass::CnsDepressant,
                DrugClass::NotSedating,
            ],
        ),
        (
            "buprenorphine-and-methadone-medications",
            &[DrugClass::OpioidAnalgesic, DrugClass::OudTreatment],
        ),
        (
            "naloxone-medications",
            &[
                DrugClass::Naloxone,
                DrugClass::OudTreatment,
                DrugClass::OpioidAnalgesic,
            ],
        ),
    ];
    let uncoded = uncoded_products();
    let mut total = 0;
    for (name, classes) in cases {
        for (code, display) in value_set(name) {
            if uncoded.contains(&code) {
                continue;
            }
            let med = kb
                .medication(code)
                .unwrap_or_else(|| panic!("{name}: {code} {display} missing"));
            assert_eq!(med.display, display, "{code}");
            assert!(
                classes.contains(&med.class),
                "{name}: {code} {display} is {}",
                med.class
            );
            total += 1;
        }
    }
    assert!(total > 1000, "{total} codes checked");
}

/// Value-set products left out because their ingredient has no confirmed code: few, all non-US.
fn uncoded_products() -> HashSet<RxCui> {
    let path = format!(
        "{}/cds-hooks/knowledge/uncoded-products.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).expect("uncoded-products.csv");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .collect();
    assert!(rows.len() <= 12, "{} uncoded products", rows.len());
    let non_us = [
        "halazepam",
        "lormetazepam",
        "prazepam",
        "dextromoramide",
        "dipipanone",
        "meptazinol",
        "cyclizine",
    ];
    rows.iter()
        .map(|l| {
            assert!(non_us.iter().any(|n| l.contains(n)), "{l}");
            RxCui::parse(l.split(',').next().unwrap_or("")).expect("code")
        })
        .collect()
}

#[test]
fn extended_release_value_set_is_extended_release_in_the_table() {
    let kb = kb();
    for (code, display) in value_set("extended-release-opioid-with-ambulatory-misuse-potential") {
        let med = kb.medication(code).expect("in table");
        if display.starts_with("methadone") {
            // The CDC set is "extended-release or long-acting": methadone tablets are long-acting
            // by pharmacology, immediate-release by formulation, and the table records formulation.
            continue;
        }
        assert_eq!(
            med.release,
            offramp::clinical::knowledge::Release::Extended,
            "{code} {display}"
        );
    }
}

#[test]
fn cns_value_set_stimulants_and_gases_are_not_sedating() {
    let kb = kb();
    for (code, display) in value_set("cns-depressant-medications") {
        let med = kb.medication(code).expect("in table");
        let d = display.to_lowercase();
        let stimulant_only = [
            "phentermine",
            "methamphetamine",
            "benzphetamine",
            "diethylpropion",
            "phendimetrazine",
        ]
        .iter()
        .any(|s| d.contains(s))
            && !d.contains("topiramate");
        let gas = ["desflurane", "isoflurane", "sevoflurane"]
            .iter()
            .any(|s| d.contains(s));
        if stimulant_only || gas {
            assert_eq!(med.class, DrugClass::NotSedating, "{code} {display}");
        }
        if d.starts_with("zolpidem") || d.contains(" zolpidem") || d.starts_with("zaleplon") {
            assert_eq!(med.class, DrugClass::ZDrug, "{code} {display}");
        }
    }
}

#[test]
fn oud_treatment_is_decided_by_product_before_the_opioid_class() {
    let kb = kb();
    let class = |n: u32| kb.medication(rx(n)).map(|m| m.class);
    // Suboxone film, Zubsolv, Bunavail (buprenorphine/naloxone): OUD treatment.
    for n in [1010604, 1010606, 1431104, 1544856] {
        assert_eq!(class(n), Some(DrugClass::OudTreatment), "{n}");
    }
    // Sublocade depot injection: OUD treatment.
    assert_eq!(class(1996189), Some(DrugClass::OudTreatment));
    // Belbuca (buccal) and Butrans (patch) are pain products.
    assert_eq!(class(1716079), Some(DrugClass::OpioidAnalgesic));
    assert_eq!(class(904882), Some(DrugClass::OpioidAnalgesic));
    // Buprenex 0.3 mg/mL injection: analgesic, procedural.
    let buprenex = kb.medication(rx(205533)).expect("buprenex");
    assert_eq!(buprenex.class, DrugClass::OpioidAnalgesic);
    assert!(buprenex.procedural && !buprenex.opens_episode());
    // Mono buprenorphine sublingual tablets and dispersible methadone: OUD treatment.
    for m in kb.medications() {
        let d = m.display.to_lowercase();
        if d.starts_with("buprenorphine") && d.contains("sublingual tablet") {
            assert_eq!(m.class, DrugClass::OudTreatment, "{}", m.display);
        }
        if d.starts_with("methadone") && d.contains("tablet for oral suspension") {
            assert_eq!(m.class, DrugClass::OudTreatment, "{}", m.display);
        }
    }
}

#[test]
fn combination_products_keep_the_opioid_and_its_strength() {
    let kb = kb();
    // acetaminophen 325 MG / hydrocodone bitartrate 5 MG Oral Tablet
    let m = kb.medication(rx(857002)).expect("hydrocodone/apap");
    assert_eq!(m.class, DrugClass::OpioidAnalgesic);
    assert_eq!(m.ingredients.len(), 1, "acetaminophen is not kept");
    assert_eq!(m.ingredients[0].ingredient, rx(5489));
    let s = m.ingredients[0].strength.expect("strength");
    assert_eq!(s.amount, 5.0);
    // 72 HR fentanyl 0.025 MG/HR patch: 25 mcg/hr.
    let p = kb.medication(rx(245134)).expect("patch");
    assert_eq!(p.route, Route::Transdermal);
    assert_eq!(p.ingredients[0].strength.map(|s| s.amount), Some(25.0));
}

#[test]
fn procedural_and_rescue_forms_never_open_an_episode() {
    let kb = kb();
    let mut seen = 0;
    for m in kb
        .medications()
        .filter(|m| m.class == DrugClass::Benzodiazepine)
    {
        let f = m.dose_form.to_lowercase();
        let rescue_or_procedural = [
            "inject",
            "syringe",
            "cartridge",
            "auto-injector",
            "rectal",
            "enema",
            "nasal",
        ]
        .iter()
        .any(|k| f.contains(k))
            || m.display.starts_with("midazolam")
            || m.display.contains(" midazolam")
            || m.display.starts_with("remimazolam");
        if rescue_or_procedural {
            assert!(!m.opens_episode(), "{}", m.display);
            seen += 1;
        } else if m.tty != offramp::clinical::knowledge::TermType::Ingredient {
            assert!(m.opens_episode(), "{}", m.display);
        }
    }
    assert!(seen >= 30, "{seen}");
    // Valtoco nasal diazepam pack, Diastat rectal gel.
    for n in [2272622, 801958] {
        assert!(
            !kb.medication(rx(n)).expect("in table").opens_episode(),
            "{n}"
        );
    }
}

/// CDC Clinical Practice Guideline for Prescribing Opioids for Pain 2022 (MMWR Recomm Rep
/// 2022;71(3)), table of MME conversion factors; ingredient RxCUIs as in OMTKData.cql.
const CDC_2022: [(u32, &str, f64); 10] = [
    (2670, "codeine", 0.15),
    (4337, "fentanyl transdermal (per mcg/hr)", 2.4),
    (5489, "hydrocodone", 1.0),
    (3423, "hydromorphone", 5.0),
    (6813, "methadone", 4.7),
    (7052, "morphine", 1.0),
    (7804, "oxycodone", 1.5),
    (7814, "oxymorphone", 3.0),
    (787390, "tapentadol", 0.4),
    (10689, "tramadol", 0.2),
];

#[test]
fn mme_factors_are_the_cdc_2022_factors() {
    let kb = kb();
    for (code, name, factor) in CDC_2022 {
        let route = if code == 4337 {
            Route::Transdermal
        } else {
            Route::Oral
        };
        let f = kb
            .mme_factor(rx(code), route)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f.factor, factor, "{name}");
        assert!(f.source.contains("2022"), "{name}: {}", f.source);
    }
    assert_eq!(
        kb.mme_factors().count(),
        CDC_2022.len(),
        "no factor beyond the CDC 2022 table"
    );
    // CDC 2022 gives none for buprenorphine or for fentanyl other than the patch.
    assert!(kb.mme_factor(rx(1819), Route::Sublingual).is_none());
    assert!(kb.mme_factor(rx(4337), Route::Buccal).is_none());
}

/// Joint Clinical Practice Guideline on Benzodiazepine Tapering 2025, table of approximate
/// equivalents to 10 mg oral diazepam (its two columns: VA/DoD 2021 and Ashton 2002), as the
/// range (low, high) in mg of each drug.
const JOINT_2025: [(u32, &str, f64, f64); 10] = [
    (596, "alprazolam", 0.5, 1.0),
    (2356, "chlordiazepoxide", 25.0, 25.0),
    (2598, "clonazepam", 0.5, 1.0),
    (2353, "clorazepate", 15.0, 15.0),
    (3322, "diazepam", 10.0, 10.0),
    (6470, "lorazepam", 1.0, 2.0),
    (7781, "oxazepam", 20.0, 30.0),
    (10355, "temazepam", 15.0, 20.0),
    (10767, "triazolam", 0.25, 0.5),
    (4501, "flurazepam", 15.0, 30.0),
];

#[test]
fn diazepam_equivalents_match_the_joint_guideline_table() {
    let kb = kb();
    for (code, name, low, high) in JOINT_2025 {
        let e = kb
            .diazepam_equivalent(rx(code))
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((e.equiv_low_mg, e.equiv_high_mg), (low, high), "{name}");
        assert_eq!(kb.ingredient(rx(code)).map(|i| i.name.as_str()), Some(name));
        assert_eq!(e.switch_to_diazepam, name != "diazepam", "{name}");
    }
    // No switch for Z-drugs, clobazam or midazolam (clinical-rules.md).
    for code in [39993, 21241, 6960] {
        if let Some(e) = kb.diazepam_equivalent(rx(code)) {
            assert!(!e.switch_to_diazepam, "{code}");
        }
    }
    // The range gives the lower diazepam figure first: 1 mg alprazolam is 10 to 20 mg.
    let alp = kb.diazepam_equivalent(rx(596)).expect("alprazolam");
    assert_eq!(alp.diazepam_range(1.0), (10.0, 20.0));
}

#[test]
fn bzra_ingredients_have_their_rxnorm_codes() {
    let kb = kb();
    for (code, name) in [
        (596, "alprazolam"),
        (2356, "chlordiazepoxide"),
        (21241, "clobazam"),
        (2598, "clonazepam"),
        (2353, "clorazepate"),
        (3322, "diazepam"),
        (6470, "lorazepam"),
        (6960, "midazolam"),
        (7781, "oxazepam"),
        (10355, "temazepam"),
        (10767, "triazolam"),
        (39993, "zolpidem"),
        (74667, "zaleplon"),
        (461016, "eszopiclone"),
    ] {
        let i = kb
            .ingredient(rx(code))
            .unwrap_or_else(|| panic!("{name} {code} missing"));
        assert_eq!(i.name, name);
        let m = kb
            .medication(rx(code))
            .unwrap_or_else(|| panic!("IN row for {name}"));
        assert!(m.class.is_bzra(), "{name}");
    }
    for (code, name) in [
        (25480, "gabapentin"),
        (187832, "pregabalin"),
        (2101, "carisoprodol"),
    ] {
        let i = kb
            .ingredient(rx(code))
            .unwrap_or_else(|| panic!("{name} {code} missing"));
        assert_eq!(i.name, name);
        assert_eq!(
            kb.medication(rx(code)).map(|m| m.class),
            Some(DrugClass::CnsDepressant)
        );
    }
    assert!(
        kb.ingredient(rx(25480))
            .is_some_and(|i| i.is_gabapentinoid())
    );
}

#[test]
fn condition_groups_cover_the_rules() {
    let kb = kb();
    for group in [
        "hospice-terminal",
        "palliative-care",
        "cancer",
        "sickle-cell",
        "oud",
        "copd",
        "sleep-apnea",
        "opioid-overdose",
        "substance-use-disorder",
        "pregnancy",
        "kidney-impairment",
        "liver-impairment",
        "seizure-disorder",
        "alcohol-withdrawal",
    ] {
        let g = kb
            .condition_group(group)
            .unwrap_or_else(|| panic!("{group} missing"));
        assert!(!g.is_empty(), "{group}");
    }
    let g = |n: &str| kb.condition_group(n).expect("group");
    assert!(
        g("copd").contains(CodeSystem::Icd10Cm, "J44.9"),
        "J44 category"
    );
    assert!(
        g("copd").contains(CodeSystem::Icd10Cm, "J449"),
        "dotless form"
    );
    assert!(
        !g("copd").contains(CodeSystem::Icd10Cm, "J45.909"),
        "asthma is not COPD"
    );
    assert!(g("sickle-cell").contains(CodeSystem::Icd10Cm, "D57.00"));
    assert!(g("palliative-care").contains(CodeSystem::Snomed, "103735009"));
    assert!(g("opioid-overdose").contains(CodeSystem::Icd10Cm, "T40.2X1A"));
    // Poisonings in the misuse-disorder value set are overdoses, not OUD.
    assert!(!g("oud").contains(CodeSystem::Snomed, "1148649003"));
    assert!(g("opioid-overdose").contains(CodeSystem::Snomed, "1148649003"));
}

// ---- validation: a bad table stops the start with its file and line ----

fn with_edit(
    file: &str,
    edit: impl Fn(&str) -> String,
) -> Result<Knowledge, offramp::clinical::KnowledgeError> {
    let files: Vec<(&str, String)> = embedded_files()
        .into_iter()
        .map(|(n, t)| (n, if n == file { edit(t) } else { t.to_string() }))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Knowledge::from_files(&refs)
}

/// The 1-based line of the first line containing `needle`.
fn line_of(file: &str, needle: &str) -> u64 {
    let text = embedded_files()
        .into_iter()
        .find(|(n, _)| *n == file)
        .expect("file")
        .1;
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle") as u64
        + 1
}

#[test]
fn a_duplicate_code_is_rejected_with_file_and_line() {
    let row = "308048,SCD,alprazolam 0.5 MG Oral Tablet";
    let e = with_edit("medications.csv", |t| {
        let line = t
            .lines()
            .find(|l| l.starts_with(row))
            .expect("row")
            .to_string();
        format!("{t}{line}\n")
    })
    .expect_err("duplicate");
    assert_eq!(e.file, "medications.csv");
    let lines = embedded_files()
        .into_iter()
        .find(|(n, _)| *n == "medications.csv")
        .expect("f")
        .1
        .lines()
        .count();
    assert_eq!(e.line, lines as u64 + 1);
    assert!(e.message.contains("duplicate code 308048"), "{e}");
}

#[test]
fn an_unknown_class_is_rejected() {
    let e = with_edit("medications.csv", |t| {
        t.replacen(",benzodiazepine,", ",benzo,", 1)
    })
    .expect_err("class");
    assert!(e.message.contains("unknown class"), "{e}");
    assert!(e.line > 1 && e.to_string().starts_with("medications.csv line "));
}

#[test]
fn a_missing_strength_is_rejected() {
    let e = with_edit("medications.csv", |t| {
        t.replacen(",596:0.5:mg,", ",596,", 1)
    })
    .expect_err("strength");
    assert!(e.message.contains("missing strength"), "{e}");
    assert_eq!(e.line, line_of("medications.csv", ",596:0.5:mg,"));
}

#[test]
fn a_non_positive_factor_is_rejected() {
    for bad in ["0", "-1.5", "abc"] {
        let e = with_edit("mme-factors.csv", |t| {
            t.replacen(",oxycodone,any,1.5,", &format!(",oxycodone,any,{bad},"), 1)
        })
        .expect_err("factor");
        assert_eq!(e.file, "mme-factors.csv");
        assert_eq!(e.line, line_of("mme-factors.csv", ",oxycodone,any,1.5,"));
        assert!(e.message.contains("positive"), "{e}");
    }
    let e = with_edit("diazepam-equivalents.csv", |t| {
        t.replacen("596,alprazolam,0.5,1,", "596,alprazolam,0,1,", 1)
    })
    .expect_err("equivalent");
    assert!(e.message.contains("positive"), "{e}");
}

#[test]
fn a_threshold_that_is_not_positive_is_rejected() {
    let e = with_edit("thresholds.toml", |t| {
        t.replacen(
            "[exposure.episode_gap_days]\nvalue = 30",
            "[exposure.episode_gap_days]\nvalue = 0",
            1,
        )
    })
    .expect_err("threshold");
    assert_eq!(e.file, "thresholds.toml");
    assert!(e.message.contains("episode_gap_days"), "{e}");
    let e = with_edit("thresholds.toml", |t| {
        t.replacen("source = ", "sauce = ", 1)
    })
    .expect_err("field");
    assert!(e.line > 0, "{e}");
}

#[test]
fn every_threshold_names_its_source() {
    let text = embedded_files()
        .into_iter()
        .find(|(n, _)| *n == "thresholds.toml")
        .expect("f")
        .1;
    let tables = text.lines().filter(|l| l.starts_with('[')).count();
    let sources = text
        .lines()
        .filter(|l| l.starts_with("source = \"") && l.len() > 20)
        .count();
    assert_eq!(tables, sources);
    let kb = kb();
    assert_eq!(kb.thresholds().exposure.episode_gap_days.value, 30);
    assert_eq!(kb.thresholds().opioid.high_mme.value, 50.0);
    assert_eq!(kb.thresholds().age.older_adult_years.value, 65);
}

#[test]
fn no_duplicate_rxcui_across_products_and_ingredients() {
    let kb = kb();
    let mut seen = HashSet::new();
    for m in kb.medications() {
        assert!(seen.insert(m.rxcui), "{}", m.rxcui);
    }
}
