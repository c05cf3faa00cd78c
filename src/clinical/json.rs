//! The patient record as JSON, borrowed from the request body: strings without escapes point into
//! the body and objects are short vectors. serde_json's `Value` copies every key and string and
//! keeps each object in a B-tree; for a 300-record history that tree cost more to build and free
//! than the whole evaluation (docs/benchmarks.md). Readers get the same lenient view either way.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A JSON value. Numbers are f64: nothing clinical needs more digits, and ids are strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Json<'a> {
    #[default]
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Keys in body order; a repeated key is read as its last value, as serde_json does.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json<'a>> {
        match self {
            Json::Object(fields) => fields
                .iter_mut()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key`, replacing every earlier value of it.
    pub fn insert(&mut self, key: &str, value: Json<'a>) {
        if !self.is_object() {
            *self = Json::Object(Vec::new());
        }
        if let Json::Object(fields) = self {
            fields.retain(|(k, _)| k != key);
            fields.push((Cow::Owned(key.to_string()), value));
        }
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: &str) {
        if let Json::Object(fields) = self {
            fields.retain(|(k, _)| k != key);
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The fields of an object (last value of a repeated key only), in body order. Linear: a
    /// client's object with many repeated keys must not cost quadratic time.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        let all: &[(Cow<'a, str>, Json<'a>)] = match self {
            Json::Object(f) => f,
            _ => &[],
        };
        let mut seen = std::collections::HashSet::with_capacity(all.len());
        let mut keep: Vec<usize> = (0..all.len())
            .rev()
            .filter(|&i| seen.insert(all[i].0.as_ref()))
            .collect();
        keep.reverse();
        keep.into_iter()
            .map(move |i| (all[i].0.as_ref(), &all[i].1))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    /// The same value, owning its strings (to outlive the body it was read from).
    pub fn into_owned(self) -> Json<'static> {
        let own = |s: Cow<'a, str>| Cow::Owned(s.into_owned());
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(n),
            Json::String(s) => Json::String(own(s)),
            Json::Array(a) => Json::Array(a.into_iter().map(Json::into_owned).collect()),
            Json::Object(f) => Json::Object(
                f.into_iter()
                    .map(|(k, v)| (own(k), v.into_owned()))
                    .collect(),
            ),
        }
    }
}

impl From<&serde_json::Value> for Json<'static> {
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            // A number beyond f64 becomes null, as a value the readers cannot use.
            Value::Number(n) => n.as_f64().map_or(Json::Null, Json::Number),
            Value::String(s) => Json::String(Cow::Owned(s.clone())),
            Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            Value::Object(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| (Cow::Owned(k.clone()), Json::from(v)))
                    .collect(),
            ),
        }
    }
}

impl From<&Json<'_>> for serde_json::Value {
    fn from(v: &Json<'_>) -> Self {
        use serde_json::Value;
        match v {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => {
                // Integral values go back as integers, so a resource reads as it was sent.
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    Value::from(*n as i64)
                } else {
                    serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
                }
            }
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(a) => Value::Array(a.iter().map(Value::from).collect()),
            Json::Object(_) => Value::Object(
                v.fields()
                    .map(|(k, v)| (k.to_string(), Value::from(v)))
                    .collect(),
            ),
        }
    }
}

/// `v["key"]`: the value, or null when absent (as serde_json).
impl<'a> std::ops::Index<&str> for Json<'a> {
    type Output = Json<'a>;
    fn index(&self, key: &str) -> &Json<'a> {
        const NULL: Json<'static> = Json::Null;
        self.get(key).unwrap_or(&NULL)
    }
}

/// As JSON text.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        serde_json::Value::from(self).fmt(f)
    }
}

/// Entries and items of the containers being read, as a stack: a container's own entries are
/// on top when it ends, and move into a vector of exactly their number. One allocation per
/// object or array, no regrowth, no spare capacity (a record's many one- and two-field objects
/// would otherwise each keep room for eight).
#[derive(Default)]
struct Scratch<'de> {
    fields: Vec<(Cow<'de, str>, Json<'de>)>,
    items: Vec<Json<'de>>,
}

struct Seed<'s, 'de>(&'s mut Scratch<'de>);

impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_, 'de> {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, 'de> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n as f64))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n as f64))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let scratch = self.0;
        let start = scratch.items.len();
        while let Some(v) = seq.next_element_seed(Seed(&mut *scratch))? {
            scratch.items.push(v);
        }
        Ok(Json::Array(scratch.items.drain(start..).collect()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let scratch = self.0;
        let start = scratch.fields.len();
        while let Some(k) = map.next_key::<Key<'de>>()? {
            let v = map.next_value_seed(Seed(&mut *scratch))?;
            scratch.fields.push((k.0, v));
        }
        Ok(Json::Object(scratch.fields.drain(start..).collect()))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Seed(&mut Scratch::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn borrows_plain_strings_and_owns_escaped_ones() {
        let text = r#"{"a": "plain", "b": "esc\"aped", "n": 2.5, "l": [1, null, true]}"#;
        let v: Json<'_> = serde_json::from_str(text).expect("json");
        assert!(matches!(
            v.get("a"),
            Some(Json::String(Cow::Borrowed("plain")))
        ));
        assert!(matches!(v.get("b"), Some(Json::String(Cow::Owned(s))) if s == "esc\"aped"));
        assert_eq!(v.get("n").and_then(Json::as_f64), Some(2.5));
        assert_eq!(v.get("l").and_then(Json::as_array).map(<[_]>::len), Some(3));
        assert_eq!(v.get("missing"), None);
        // Containers hold exactly their entries: no spare room kept per object.
        let Json::Object(fields) = &v else {
            panic!("object")
        };
        assert_eq!(fields.capacity(), 4);
        assert!(matches!(v.get("l"), Some(Json::Array(a)) if a.capacity() == 3));
    }

    #[test]
    fn repeated_keys_read_as_the_last_like_serde_json() {
        let text = r#"{"k": 1, "k": 2, "j": 3}"#;
        let v: Json<'_> = serde_json::from_str(text).expect("json");
        let reference: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(v.get("k").and_then(Json::as_f64), Some(2.0));
        assert_eq!(serde_json::Value::from(&v), reference);
        assert_eq!(v.fields().count(), 2);
        assert_eq!(
            v.fields().map(|(k, _)| k).collect::<Vec<_>>(),
            ["k", "j"],
            "body order, each key once"
        );
        let many = format!(
            "{{{}}}",
            (0..50_000)
                .map(|i| format!("\"k{}\": {i}", i % 100))
                .collect::<Vec<_>>()
                .join(",")
        );
        let wide: Json<'_> = serde_json::from_str(&many).expect("json");
        assert_eq!(wide.fields().count(), 100);
    }

    #[test]
    fn round_trips_through_serde_json() {
        let value = json!({"resourceType": "Bundle", "entry": [{"resource": {"id": "1",
            "quantity": {"value": 60, "unit": "tablet"}, "dose": 0.5, "flag": false}}], "x": null});
        let lean = Json::from(&value);
        assert_eq!(serde_json::Value::from(&lean), value);
        let text = value.to_string();
        let parsed: Json<'_> = serde_json::from_str(&text).expect("json");
        assert_eq!(parsed, lean);
        assert_eq!(parsed.clone().into_owned(), lean);
    }

    #[test]
    fn insert_replaces_and_deep_nesting_is_refused_not_overflowed() {
        let mut v = Json::from(&json!({"a": 1, "b": 2}));
        v.insert("a", Json::Bool(true));
        assert_eq!(v.get("a"), Some(&Json::Bool(true)));
        assert_eq!(v.fields().count(), 2);
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(serde_json::from_str::<Json<'_>>(&deep).is_err());
    }
}
