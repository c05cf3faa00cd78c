//! docs/operations.md stays true to the code it describes: its configuration reference has a row
//! for every key of config/base.toml with exactly its default (and none for a key base.toml lacks),
//! and its metrics table lists every metric the code records (and none it does not), with the
//! type and labels the code gives it. Both sides are read at test time, so adding a key or a
//! metric without documenting it, or changing a default, fails here and names what to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOC: &str = "docs/operations.md";
const BASE: &str = "config/base.toml";

/// The `[[auth.issuers]]` tables: base.toml holds an empty array and a commented example, so
/// the keys an issuer takes (src/auth/mod.rs `IssuerConfig`) are listed here.
const ISSUERS: &str = "auth.issuers[]";
const ISSUER_KEYS: [&str; 7] = [
    "iss",
    "algorithms",
    "jwks_url",
    "jwks_file",
    "jku_allowlist",
    "fhir_servers",
    "tenant",
];

/// The default cell of a key that base.toml only shows commented out (no default value).
const UNSET: &str = "(unset)";
/// The default cell of an issuer key that must be given.
const REQUIRED: &str = "(required)";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text between `<!-- {name}:start -->` and `<!-- {name}:end -->`.
fn between<'a>(text: &'a str, name: &str) -> &'a str {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let from = text
        .find(&start)
        .unwrap_or_else(|| panic!("{DOC}: no {start} marker"))
        + start.len();
    let to = text[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("{DOC}: no {end} marker after {start}"));
    &text[from..from + to]
}

/// The cells of a Markdown table row (`\|` is a pipe inside a cell), or None for any other line,
/// the header separator included.
fn cells(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?;
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                if let Some(s) = out.last_mut() {
                    s.push('|');
                }
                chars.next();
            }
            '|' => out.push(String::new()),
            _ => {
                if let Some(s) = out.last_mut() {
                    s.push(c);
                }
            }
        }
    }
    let out: Vec<String> = out.into_iter().map(|s| s.trim().to_string()).collect();
    let separator = out
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')));
    (!separator).then_some(out)
}

/// A cell without the one pair of backticks around it.
fn unquote(cell: &str) -> &str {
    cell.strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or(cell)
}

/// The line number (from 1) in `doc` where `part`, a slice of it, starts.
fn line_of(doc: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).saturating_sub(doc.as_ptr() as usize);
    doc[..offset.min(doc.len())].matches('\n').count() + 1
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_section(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_key)
}

/// A section named by a TOML header (`[a.b]`, or `[[a.b]]` for an array of tables: "a.b[]").
fn header(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(name) = s.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        return is_section(name.trim()).then(|| format!("{}[]", name.trim()));
    }
    let name = s.strip_prefix('[')?.strip_suffix(']')?.trim();
    is_section(name).then(|| name.to_string())
}

/// Every value of base.toml by section ("" for the top level, "store.redis" for `[store.redis]`).
fn flatten(
    section: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, BTreeMap<String, toml::Value>>,
) {
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => {
                let inner = if section.is_empty() {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                flatten(&inner, t, out);
            }
            v => {
                out.entry(section.to_string())
                    .or_default()
                    .insert(key.clone(), v.clone());
            }
        }
    }
}

/// Keys base.toml shows only in a comment (`# public_base_url = "..."`), by section; a commented
/// header (`# [[auth.issuers]]`) starts a commented section until the next real header.
fn commented_keys(base: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in base.lines() {
        let line = line.trim();
        if let Some(h) = header(line.split('#').next().unwrap_or("")) {
            section = h;
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            continue;
        };
        if let Some(h) = header(comment) {
            section = h;
            continue;
        }
        if let Some((key, value)) = comment.split_once('=')
            && is_key(key.trim())
            && !value.trim().is_empty()
        {
            out.entry(section.clone())
                .or_default()
                .insert(key.trim().to_string());
        }
    }
    out
}

/// One row of the documented configuration reference.
struct Row {
    default: String,
    line: usize,
}

/// The reference's rows by section: each table follows a heading naming its section in backticks
/// (``### `[server]` ``, ``### `[[auth.issuers]]` ``; "top level" for keys outside any table).
fn documented_config(doc: &str) -> (BTreeMap<String, BTreeMap<String, Row>>, Vec<String>) {
    let reference = between(doc, "config-reference");
    let first_line = line_of(doc, reference);
    let mut rows: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut section: Option<String> = None;
    let mut fenced = false;
    for (i, line) in reference.lines().enumerate() {
        let n = first_line + i;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.trim_start().starts_with('#') {
            let heading = line.trim_start_matches('#');
            section = if heading.to_ascii_lowercase().contains("top level") {
                Some(String::new())
            } else {
                heading.split('`').nth(1).and_then(header)
            };
            if section.is_none() {
                problems.push(format!(
                    "{DOC}:{n}: heading {:?} names no section in backticks (e.g. `[server]`)",
                    line.trim()
                ));
            }
            continue;
        }
        let Some(c) = cells(line) else { continue };
        let key = unquote(&c[0]);
        if key == "key" {
            continue; // the header row
        }
        let Some(sec) = &section else {
            problems.push(format!("{DOC}:{n}: row {key:?} before any section heading"));
            continue;
        };
        if !is_key(key) || c.len() < 3 {
            problems.push(format!(
                "{DOC}:{n}: row {:?} is not `key` | default | meaning",
                line.trim()
            ));
            continue;
        }
        let default = unquote(&c[1]).to_string();
        let row = Row { default, line: n };
        if rows
            .entry(sec.clone())
            .or_default()
            .insert(key.to_string(), row)
            .is_some()
        {
            problems.push(format!(
                "{DOC}:{n}: `{}` is documented twice",
                dotted(sec, key)
            ));
        }
    }
    (rows, problems)
}

fn dotted(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// A documented default as a TOML value.
fn parse_value(cell: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(&format!("v = {cell}"))
        .ok()?
        .remove("v")
}

#[test]
fn config_reference_documents_every_key_of_base_toml_with_its_default() {
    let base_text = read(BASE);
    let base: toml::Table = toml::from_str(&base_text).unwrap_or_else(|e| panic!("{BASE}: {e}"));
    let mut values = BTreeMap::new();
    flatten("", &base, &mut values);
    let mut commented = commented_keys(&base_text);
    commented
        .entry(ISSUERS.to_string())
        .or_default()
        .extend(ISSUER_KEYS.iter().map(|k| k.to_string()));
    let (documented, mut problems) = documented_config(&read(DOC));
    let row = |section: &str, key: &str| documented.get(section).and_then(|r| r.get(key));

    for (section, keys) in &values {
        for (key, value) in keys {
            let name = dotted(section, key);
            let want = value.to_string();
            match row(section, key) {
                None => problems.push(format!(
                    "`{name}` (default {want}) is in {BASE} but has no row in the {DOC} configuration reference"
                )),
                Some(r) if parse_value(&r.default).as_ref() != Some(value) => problems.push(format!(
                    "{DOC}:{}: the default of `{name}` is documented as {:?}, but {BASE} has {want}",
                    r.line, r.default
                )),
                Some(_) => {}
            }
        }
    }
    for (section, keys) in &commented {
        for key in keys {
            let name = dotted(section, key);
            let real = values.get(section).is_some_and(|v| v.contains_key(key));
            let why = if section == ISSUERS {
                "a key of [[auth.issuers]]"
            } else {
                "shown commented out"
            };
            match row(section, key) {
                None if !real => problems.push(format!(
                    "`{name}` ({why} in {BASE}) has no row in the {DOC} configuration reference"
                )),
                Some(r) if !real && section != ISSUERS && r.default != UNSET => {
                    problems.push(format!(
                        "{DOC}:{}: `{name}` has no default in {BASE} (commented out): its default cell must be {UNSET}, not {:?}",
                        r.line, r.default
                    ))
                }
                _ => {}
            }
        }
    }
    for (section, rows) in &documented {
        for (key, r) in rows {
            let name = dotted(section, key);
            let real = values.get(section).is_some_and(|v| v.contains_key(key));
            let shown = commented.get(section).is_some_and(|c| c.contains(key));
            if !real && !shown {
                problems.push(format!(
                    "{DOC}:{}: `{name}` is documented, but {BASE} has no such key",
                    r.line
                ));
            } else if section == ISSUERS
                && r.default != UNSET
                && r.default != REQUIRED
                && parse_value(&r.default).is_none()
            {
                problems.push(format!(
                    "{DOC}:{}: the default of `{name}` ({:?}) is neither a TOML value, {UNSET} nor {REQUIRED}",
                    r.line, r.default
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the configuration reference and {BASE} disagree:\n- {}",
        problems.join("\n- ")
    );
}

/// A metric as the code records it.
#[derive(Default)]
struct Recorded {
    kinds: BTreeSet<&'static str>,
    labels: BTreeSet<String>,
    files: BTreeSet<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_metric_name(s: &str) -> bool {
    s.strip_prefix("offramp_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// The arguments of the macro call whose opening delimiter is at `text[open]`, and the string
/// literals in them, each with whether `=>` follows it (a label key).
fn macro_args(text: &str, open: usize) -> Vec<(String, bool)> {
    let bytes = text.as_bytes();
    let close = match bytes[open] {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    };
    let mut depth = 0usize;
    let mut literals = Vec::new();
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let literal = text[start..i.min(text.len())].to_string();
                let label = text[(i + 1).min(text.len())..]
                    .trim_start()
                    .starts_with("=>");
                literals.push((literal, label));
            }
            b if b == bytes[open] => depth += 1,
            b if b == close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        i += 1;
    }
    literals
}

/// Every `offramp_*` metric recorded with `counter!`, `histogram!` or `gauge!` (as
/// `metrics::counter!` or imported) in src/, with its kinds and label keys.
fn recorded_metrics() -> BTreeMap<String, Recorded> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut out: BTreeMap<String, Recorded> = BTreeMap::new();
    for file in files {
        let raw =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Commented-out calls record nothing.
        let text: String = raw
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let rel = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for kind in ["counter", "histogram", "gauge"] {
            let call = format!("{kind}!");
            for (at, _) in text.match_indices(&call) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue; // describe_counter! and the like
                }
                let after = at + call.len();
                let Some(open) = text[after..]
                    .find(|c: char| !c.is_whitespace())
                    .map(|o| after + o)
                    .filter(|o| matches!(text.as_bytes()[*o], b'(' | b'[' | b'{'))
                else {
                    continue;
                };
                let literals = macro_args(&text, open);
                let names: Vec<&String> = literals
                    .iter()
                    .filter(|(l, label)| !label && is_metric_name(l))
                    .map(|(l, _)| l)
                    .collect();
                for name in names {
                    let m = out.entry(name.clone()).or_default();
                    m.kinds.insert(kind);
                    m.files.insert(rel.clone());
                    m.labels
                        .extend(literals.iter().filter(|(_, l)| *l).map(|(k, _)| k.clone()));
                }
            }
        }
    }
    out
}

/// A documented metric: its type and label keys as the table gives them.
struct DocMetric {
    kind: String,
    labels: BTreeSet<String>,
    line: usize,
}

/// The metrics table: `name` | type | labels | meaning, between the metrics-reference markers.
fn documented_metrics(doc: &str) -> (BTreeMap<String, DocMetric>, Vec<String>) {
    let table = between(doc, "metrics-reference");
    let first_line = line_of(doc, table);
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, line) in table.lines().enumerate() {
        let n = first_line + i;
        let Some(c) = cells(line) else { continue };
        let name = unquote(&c[0]);
        if !name.starts_with("offramp_") {
            continue; // the header row, and other processes' series (process_*)
        }
        if !is_metric_name(name) || c.len() < 4 {
            problems.push(format!(
                "{DOC}:{n}: row {:?} is not `name` | type | labels | meaning",
                line.trim()
            ));
            continue;
        }
        let labels = c[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let m = DocMetric {
            kind: c[1].trim().to_ascii_lowercase(),
            labels,
            line: n,
        };
        if out.insert(name.to_string(), m).is_some() {
            problems.push(format!("{DOC}:{n}: `{name}` is documented twice"));
        }
    }
    (out, problems)
}

/// The metric a Prometheus series name belongs to (a histogram's `_bucket`, `_sum`, `_count`).
fn metric_of<'a>(series: &'a str, known: &BTreeMap<String, Recorded>) -> &'a str {
    if known.contains_key(series) {
        return series;
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| series.strip_suffix(s))
        .find(|base| {
            known
                .get(*base)
                .is_some_and(|m| m.kinds.contains("histogram"))
        })
        .unwrap_or(series)
}

#[test]
fn metrics_table_lists_every_metric_the_code_records() {
    let recorded = recorded_metrics();
    assert!(
        recorded.contains_key("offramp_http_requests_total"),
        "the scan of src/ found no metric: is the macro scan broken?"
    );
    let doc = read(DOC);
    let (documented, mut problems) = documented_metrics(&doc);
    for (name, m) in &recorded {
        let files: Vec<&str> = m.files.iter().map(String::as_str).collect();
        let Some(d) = documented.get(name) else {
            problems.push(format!(
                "`{name}` is recorded in {} but missing from the {DOC} metrics table",
                files.join(", ")
            ));
            continue;
        };
        if m.kinds.len() != 1 || !m.kinds.contains(d.kind.as_str()) {
            problems.push(format!(
                "{DOC}:{}: `{name}` is documented as a {:?}, but {} records it as {:?}",
                d.line,
                d.kind,
                files.join(", "),
                m.kinds
            ));
        }
        if d.labels != m.labels {
            problems.push(format!(
                "{DOC}:{}: `{name}` is documented with labels {:?}, but {} gives it {:?}",
                d.line,
                d.labels,
                files.join(", "),
                m.labels
            ));
        }
    }
    for (name, d) in &documented {
        if !recorded.contains_key(name) {
            problems.push(format!(
                "{DOC}:{}: `{name}` is in the metrics table but nothing in src/ records it",
                d.line
            ));
        }
    }
    // Alerts and prose may name series too (`..._bucket`): each must be a real one (a bare
    // "offramp_" prefix is not a name; a table row already reported is not repeated).
    for (i, line) in doc.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("offramp_") {
            let word: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + word.len()..];
            let series = metric_of(&word, &recorded);
            if is_metric_name(&word)
                && !recorded.contains_key(series)
                && !documented.contains_key(series)
            {
                problems.push(format!(
                    "{DOC}:{}: `{word}` is named, but nothing in src/ records such a metric",
                    i + 1
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the metrics table and src/ disagree:\n- {}",
        problems.join("\n- ")
    );
}
