#!/usr/bin/env python3
"""Builds cds-hooks/knowledge/medications.csv and valuesets/*.csv from public sources.

Inputs (not committed; see cds-hooks/knowledge/SOURCES.md):
  VSDIR  the input/vocabulary/valueset folder of github:cqframework/opioid-cds-r4
Inputs (committed, curated and cross-checked by hand):
  cds-hooks/knowledge/ingredients.csv, cds-hooks/knowledge/extra-products.csv

The product rows are derived from RxNorm's normalised names (SCD/SBD/GPCK/BPCK), whose grammar
is fixed: "[N HR ][N ML ]ingredient strength UNIT / ... DoseForm [Brand]". Any name this script
cannot read stops it, so nothing is guessed. Run:
  python3 tools/knowledge/build_medications.py VSDIR
"""

import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KNOW = ROOT / "cds-hooks" / "knowledge"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# The value sets the issue names, plus the two that hold the OUD and naloxone products.
MEDICATION_VALUE_SETS = [
    "benzodiazepine-medications",
    "opioid-analgesics-with-ambulatory-misuse-potential",
    "extended-release-opioid-with-ambulatory-misuse-potential",
    "cns-depressant-medications",
    "buprenorphine-and-methadone-medications",
    "naloxone-medications",
]

# Ingredients of non-US products in the value sets whose RxCUI no two public sources here confirm.
# Their products are listed in uncoded-products.csv (never guessed); as a partner in a combination
# with a coded drug they are dropped like acetaminophen.
UNCODED = {"halazepam", "lormetazepam", "prazepam", "dextromoramide", "dipipanone", "meptazinol",
           "cyclizine"}

PREFIX = re.compile(
    r"^(?:Abuse-Deterrent |Matrix Delivery )*(?:(?P<hr>\d+) HR )?(?:[\d.]+ (?:ML|ACTUAT) )?"
)
COMPONENT = re.compile(
    r"^(?P<name>[a-z][a-z0-9 ,.\-]*?) (?P<amount>\d+(?:\.\d+)?) (?P<unit>MG|MCG|UNT|MEQ|%)"
    r"(?:/(?P<per>ML|HR|ACTUAT|MG))?(?: (?P<rest>.*))?$"
)


def route_of(form: str) -> str:
    f = form.lower()
    for key, route in [
        ("sublingual", "sublingual"),
        ("buccal", "buccal"),
        ("transdermal", "transdermal"),
        ("nasal", "nasal"),
        ("rectal", "rectal"),
        ("enema", "rectal"),
        ("inject", "injection"),
        ("prefilled syringe", "injection"),
        ("cartridge", "injection"),
        ("auto-injector", "injection"),
        ("implant", "implant"),
        ("inhal", "inhalation"),
        ("mucosal", "mucosal"),
        ("topical", "topical"),
        ("oral", "oral"),
        ("chewable", "oral"),
        ("granules", "oral"),
    ]:
        if key in f:
            return route
    raise ValueError(f"no route for dose form {form!r}")


def parse_display(display: str):
    """Returns (tty, components, dose_form, extended) for one RxNorm product name."""
    brand = re.search(r" \[[^\]]+\]$", display)
    body = display[: brand.start()] if brand else display
    tty = "SBD" if brand else "SCD"
    if body.startswith("{"):
        # A pack: read its first inner product; all packs here repeat one strength or are titration
        # packs of one drug, and none of them opens an episode at a guessed strength (see flags).
        tty = "BPCK" if brand else "GPCK"
        inner = re.match(r"^\{\s*[\d.]+ (?:\([\d.]+ ML\) )?\((?P<p>[^()]*(?:\[[^\]]*\])?)\)", body)
        if not inner:
            raise ValueError(f"unreadable pack {display!r}")
        _, comps, form, ext = parse_display(inner.group("p"))
        return tty, comps, form, ext
    m = PREFIX.match(body)
    extended = bool(m.group("hr"))
    body = body[m.end():]
    parts = body.split(" / ")
    comps = []
    form = None
    for i, part in enumerate(parts):
        c = COMPONENT.match(part)
        if not c:
            raise ValueError(f"unreadable component {part!r} in {display!r}")
        if (c.group("rest") is not None) != (i == len(parts) - 1):
            raise ValueError(f"dose form in the wrong place in {display!r}")
        amount = float(c.group("amount"))
        unit, per = c.group("unit"), c.group("per")
        if unit == "MCG":
            amount, unit = amount / 1000.0, "MG"
        if per == "HR":
            strength_unit = "mcg/hr"
            amount *= 1000.0
        elif per == "ML":
            strength_unit = "mg/mL"
        elif per == "ACTUAT":
            strength_unit = "mg/actuat"
        elif per == "MG":
            strength_unit = "mg/mg"  # gels dosed by weight
        elif per is None:
            strength_unit = "mg"
        else:
            raise ValueError(f"unit {unit}/{per} in {display!r}")
        if unit != "MG":
            strength_unit = None  # % or units: not a dose we compute with
        comps.append((c.group("name"), round(amount, 6), strength_unit))
        if c.group("rest") is not None:
            form = c.group("rest")
    if "Extended Release" in form:
        extended = True
    return tty, comps, form, extended


def load_ingredients():
    by_name = {}
    rows = {}
    with open(KNOW / "ingredients.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows[row["rxcui"]] = row
            for n in [row["name"]] + [s for s in row["salts"].split("|") if s]:
                if n in by_name:
                    raise ValueError(f"ingredient name {n!r} listed twice")
                by_name[n] = row
    return by_name, rows


def classify(ings, form, route, comps):
    names = {i["name"] for i in ings}
    roles = {i["role"] for i in ings}
    # OUD treatment is decided first, by product (clinical-rules.md, Drug classes).
    if "buprenorphine" in names:
        if "naloxone" in names:
            return "oud-treatment"
        if route == "sublingual" or form == "Drug Implant":
            return "oud-treatment"
        strength = next(a for (n, a, u) in comps if n == "buprenorphine")
        if route == "injection" and strength >= 50:  # Sublocade/Brixadi depots; Buprenex is 0.3 mg/mL
            return "oud-treatment"
    if "methadone" in names and form == "Tablet for Oral Suspension":
        return "oud-treatment"
    for role, cls in [
        ("opioid", "opioid-analgesic"),
        ("benzodiazepine", "benzodiazepine"),
        ("z-drug", "z-drug"),
        ("cns-depressant", "cns-depressant"),
    ]:
        if role in roles:
            return cls
    if "naloxone" in names:
        return "naloxone"
    return "not-sedating"


def flags_of(cls, route, names, display):
    flags = []
    # OUD depot injections and implants are ongoing treatment, not procedures: they must stay
    # visible as OUD treatment (clinical-rules.md, rule 5).
    if cls == "oud-treatment":
        return flags
    if route in ("injection", "inhalation") or "ACTUAT fentanyl" in display:
        flags.append("procedural")
    if cls == "benzodiazepine" and ({"midazolam", "remimazolam"} & names):
        # Oral midazolam syrup is pre-procedural sedation; no outpatient course exists.
        if "procedural" not in flags:
            flags.append("procedural")
    if cls == "benzodiazepine" and route in ("nasal", "rectal"):
        flags.append("rescue")
    if cls == "naloxone":
        flags.append("rescue")
    return flags


# Condition groups from the opioid-cds-r4 value sets (the rest are in conditions-extra.csv).
CONDITION_VALUE_SETS = {
    "hospice-terminal": [
        "conditions-likely-terminal-for-opioid-prescribing",
        "hospice-finding",
        "hospice-procedure",
        "limited-life-expectancy-conditions",
    ],
    "palliative-care": ["therapies-indicating-end-of-life-care"],
    "cancer": ["cdc-malignant-cancer-conditions"],
    "sickle-cell": ["sickle-cell-diseases"],
    "oud": ["opioid-misuse-disorders"],
    "sleep-apnea": ["conditions-documenting-sleep-disordered-breathing"],
    "substance-use-disorder": ["conditions-documenting-substance-misuse"],
}


def is_poisoning(system, code, display):
    d = display.lower()
    return ("poisoning" in d or "overdose" in d) or (system.endswith("icd-10-cm") and code.startswith("T40"))


def build_conditions(vsdir: Path):
    rows = []
    seen = set()
    for group, sets in CONDITION_VALUE_SETS.items():
        for vs in sets:
            d = json.loads((vsdir / f"{vs}.json").read_text())
            for c in d["expansion"]["contains"]:
                system = c.get("system")
                if not system:
                    continue  # grouping entries of the expansion carry no code system
                g = group
                # The misuse-disorder set also lists opioid poisonings: those are overdoses, not OUD.
                if group == "oud" and is_poisoning(system, c["code"], c.get("display", "")):
                    g = "opioid-overdose"
                key = (g, system, c["code"])
                if key in seen:
                    continue
                seen.add(key)
                rows.append([g, system, c["code"], "exact", c.get("display", "").replace(",", ";"), d["url"]])
    rows.sort()
    with open(KNOW / "conditions.csv", "w", newline="") as f:
        f.write("# Generated by tools/knowledge/build_medications.py from github:cqframework/opioid-cds-r4 value sets.\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["group", "system", "code", "match", "display", "source"])
        w.writerows(rows)
    print(f"{len(rows)} condition codes")


def main(vsdir: Path):
    build_conditions(vsdir)
    by_name, ing_rows = load_ingredients()
    products = {}  # rxcui -> (display, set of value sets)
    vs_out = KNOW / "valuesets"
    vs_out.mkdir(exist_ok=True)
    for vs in MEDICATION_VALUE_SETS:
        d = json.loads((vsdir / f"{vs}.json").read_text())
        exp = d["expansion"]
        with open(vs_out / f"{vs}.csv", "w", newline="") as f:
            f.write(f"# {d['url']} expansion {exp.get('timestamp', '')}\n")
            f.write("# github:cqframework/opioid-cds-r4 input/vocabulary/valueset; codes only\n")
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["code", "display"])
            for c in sorted(exp["contains"], key=lambda c: int(c["code"])):
                assert c["system"] == RXNORM, c
                w.writerow([c["code"], c["display"]])
                entry = products.setdefault(c["code"], [c["display"], []])
                if entry[0] != c["display"]:
                    raise ValueError(f"{c['code']} has two displays")
                entry[1].append(vs)
    with open(KNOW / "extra-products.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["rxcui"] in products:
                raise ValueError(f"extra product {row['rxcui']} is already in a value set")
            products[row["rxcui"]] = [row["display"], ["extra-products"]]

    out = []
    uncoded = []
    for rxcui, (display, sources) in products.items():
        tty, comps, form, extended = parse_display(display)
        route = route_of(form)
        coded = [c for c in comps if c[0] not in UNCODED]
        dropped = [c[0] for c in comps if c[0] in UNCODED]
        if dropped and not any(by_name.get(n) and by_name[n]["role"] != "not-sedating" for n, _, _ in coded):
            uncoded.append([rxcui, display, ";".join(sources),
                            f"ingredient RxCUI not confirmed in two public sources: {' and '.join(dropped)}"])
            continue
        comps = coded
        ings, keep = [], []
        for name, amount, unit in comps:
            row = by_name.get(name)
            if row is None:
                raise ValueError(f"ingredient {name!r} of {rxcui} {display!r} not in ingredients.csv")
            ings.append(row)
            if row["role"] != "not-sedating":
                if unit is None:
                    raise ValueError(f"{rxcui} {display!r}: no usable strength for {name}")
                keep.append(f"{row['rxcui']}:{amount:g}:{unit}")
        comps_by_base = [(by_name[n]["name"], a, u) for (n, a, u) in comps]
        cls = classify(ings, form, route, comps_by_base)
        names = {i["name"] for i in ings}
        release = "extended" if extended or route == "transdermal" else "immediate"
        flags = flags_of(cls, route, names, display)
        out.append([rxcui, tty, display, cls, ";".join(keep), form, route, release,
                    ";".join(flags), ";".join(sources)])
    # Ingredient-level codes: an order coded at IN level still tells the class (not the strength).
    for rxcui, row in ing_rows.items():
        if row["role"] == "not-sedating" or (
            row["role"] == "opioid-antagonist" and row["name"] != "naloxone"
        ):
            continue
        if rxcui in products:
            raise ValueError(f"ingredient {rxcui} is also a product")
        cls = classify([row], "", "", [(row["name"], 0.0, "mg")])
        flags = ";".join(flags_of(cls, "", {row["name"]}, row["name"]))
        out.append([rxcui, "IN", row["name"], cls, rxcui, "", "", "", flags, "ingredients"])
    uncoded.sort()
    with open(KNOW / "uncoded-products.csv", "w", newline="") as f:
        f.write("# Value-set products left out of medications.csv: non-US products whose ingredient code\n")
        f.write("# could not be confirmed. They resolve as unclassified. Generated; do not edit.\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["rxcui", "display", "valuesets", "reason"])
        w.writerows(uncoded)
    out.sort(key=lambda r: (r[3], r[2]))
    with open(KNOW / "medications.csv", "w", newline="") as f:
        f.write("# Generated by tools/knowledge/build_medications.py; see SOURCES.md. Do not edit by hand.\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["rxcui", "tty", "display", "class", "ingredients", "dose_form", "route",
                    "release", "flags", "sources"])
        w.writerows(out)
    counts = {}
    for r in out:
        counts[r[3]] = counts.get(r[3], 0) + 1
    print(f"{len(out)} rows: {counts}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
