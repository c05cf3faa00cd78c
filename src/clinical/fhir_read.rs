//! Lenient readers for the FHIR JSON shapes real EHRs send: a field that should be an array may be
//! a single object, dateTimes may lack a timezone, fields may be null. Each reader returns None for
//! what it cannot understand; nothing here fails a whole resource.

use super::json::Json;
use chrono::NaiveDate;

/// Iterates a value that should be an array but may be a single item, null or absent.
pub fn one_or_many<'v, 'a>(v: Option<&'v Json<'a>>) -> impl Iterator<Item = &'v Json<'a>> {
    let (single, many): (Option<&'v Json<'a>>, &'v [Json<'a>]) = match v {
        Some(Json::Array(a)) => (None, a.as_slice()),
        Some(Json::Null) | None => (None, &[]),
        Some(other) => (Some(other), &[]),
    };
    single.into_iter().chain(many.iter())
}

pub fn str_field<'a>(v: &'a Json, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Json::as_str)
        .map(trim)
        .filter(|s| !s.is_empty())
}

/// `str::trim`, skipped when both ends are visible ASCII (nearly every FHIR string): it walks
/// Unicode whitespace tables for every field read.
pub fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// A number that may arrive as a JSON number or, from some EHRs, as a numeric string.
pub fn num(v: Option<&Json>) -> Option<f64> {
    let n = match v? {
        Json::Number(n) => *n,
        Json::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// The calendar date of a FHIR date or dateTime, with or without time and timezone
/// ("2024-03-05", "2024-03-05T10:00:00", "2024-03-05T10:00:00+02:00", "2024-03"). The date is
/// taken as written: day granularity is all exposure needs, and converting a timezone-less value
/// would be a guess.
pub fn date(v: Option<&Json>) -> Option<NaiveDate> {
    let s = trim(v?.as_str()?);
    let b = s.as_bytes();
    match b.get(10) {
        None | Some(b'T' | b' ') if b.len() >= 10 => ymd(&b[..10]),
        None if b.len() == 7 => ymd(&[&b[..7], b"-01".as_slice()].concat()),
        _ => None,
    }
}

/// YYYY-MM-DD, digits only. Hand-read: chrono's format parser took a tenth of the time spent
/// reading a history (docs/benchmarks.md).
fn ymd(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(n(&b[..4])? as i32, n(&b[5..7])?, n(&b[8..])?)
}

/// A Coding reduced to what we match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coding {
    pub system: Option<String>,
    pub code: String,
}

/// The codings of a CodeableConcept (coding as array or single object).
pub fn codings(concept: Option<&Json>) -> Vec<Coding> {
    let Some(concept) = concept else {
        return Vec::new();
    };
    one_or_many(concept.get("coding"))
        .filter_map(|c| {
            Some(Coding {
                system: str_field(c, "system").map(str::to_string),
                code: str_field(c, "code")?.to_string(),
            })
        })
        .collect()
}

/// Codings of a field that holds one or several CodeableConcepts.
pub fn codings_of_many(v: Option<&Json>) -> Vec<Coding> {
    one_or_many(v).flat_map(|c| codings(Some(c))).collect()
}

/// A duration in days from a FHIR Duration/Quantity with a time unit.
pub fn duration_days(v: Option<&Json>) -> Option<f64> {
    let v = v?;
    let value = num(v.get("value"))?;
    let unit = str_field(v, "code")
        .or_else(|| str_field(v, "unit"))
        .unwrap_or("d");
    let days = value * unit_days(unit)?;
    (days.is_finite() && days > 0.0).then_some(days)
}

/// Days in one of the time units FHIR uses (UCUM codes and common spellings).
pub fn unit_days(unit: &str) -> Option<f64> {
    Some(match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" | "seconds" => 1.0 / 86_400.0,
        "min" | "minute" | "minutes" => 1.0 / 1440.0,
        "h" | "hr" | "hour" | "hours" => 1.0 / 24.0,
        "d" | "day" | "days" => 1.0,
        "wk" | "week" | "weeks" => 7.0,
        "mo" | "month" | "months" => 30.0,
        "a" | "yr" | "year" | "years" => 365.0,
        _ => return None,
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

    #[test]
    fn dates_with_and_without_timezone() {
        let d = NaiveDate::from_ymd_opt(2024, 3, 5);
        for s in [
            "2024-03-05",
            "2024-03-05T10:00:00",
            "2024-03-05T10:00:00Z",
            "2024-03-05T23:30:00-05:00",
            "2024-03-05T10:00:00.123+02:00",
        ] {
            assert_eq!(date(Some(&json!(s))), d, "{s}");
        }
        assert_eq!(
            date(Some(&json!("2024-03"))),
            NaiveDate::from_ymd_opt(2024, 3, 1)
        );
        for bad in [
            json!("2024"),
            json!("05/03/2024"),
            json!(null),
            json!(20240305),
            json!("2024-02-30"),
            json!("2024-3-05"),
            json!("2024-03-05x"),
            json!("2024-03-0"),
            json!("2024-0a"),
            json!("２０２４-03-05"),
        ] {
            assert_eq!(date(Some(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn trim_matches_str_trim() {
        for s in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\u{a0}a",
            "a\u{2003}",
            "é",
            " é ",
            "a b",
            "\ta\n",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn arrays_objects_and_nulls() {
        assert_eq!(one_or_many(Some(&json!([1, 2]))).count(), 2);
        assert_eq!(one_or_many(Some(&json!({"a": 1}))).count(), 1);
        assert_eq!(one_or_many(Some(&json!(null))).count(), 0);
        assert_eq!(one_or_many(None).count(), 0);
        let c = codings(Some(&json!({"coding": {"system": "s", "code": " 1 "}})));
        assert_eq!(
            c,
            vec![Coding {
                system: Some("s".into()),
                code: "1".into()
            }]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration_days(Some(&json!({"value": 30, "code": "d"}))),
            Some(30.0)
        );
        assert_eq!(
            duration_days(Some(&json!({"value": 2, "unit": "weeks"}))),
            Some(14.0)
        );
        assert_eq!(duration_days(Some(&json!({"value": "30"}))), Some(30.0));
        assert_eq!(duration_days(Some(&json!({"value": 0, "code": "d"}))), None);
        assert_eq!(
            duration_days(Some(&json!({"value": 3, "code": "furlong"}))),
            None
        );
    }
}
