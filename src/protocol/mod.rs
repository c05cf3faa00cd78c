//! CDS Hooks 2.0 wire types (serde only). Optional fields are omitted, never null; unknown fields
//! (CDS Hooks 3.0 additions) are accepted and ignored.

use crate::clinical::json::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// A request's objects are read from JSON objects only. serde's derived `Deserialize` also fills a
/// struct from a JSON array, by position, so `"overrideReason": [null, null]` would read as an
/// empty reason and a whole feedback item could arrive as a list: a body against the documented
/// schema, accepted. Each request type derives with `#[serde(remote = "Self")]` (the derive then
/// makes inherent `deserialize`/`serialize` functions) and this gives the trait impls, the
/// deserializing one through [`ObjectOnly`].
macro_rules! objects_only {
    ($t:ident $(<$l:lifetime>)?) => {
        impl<'de $(: $l, $l)?> Deserialize<'de> for $t $(<$l>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $t::deserialize(ObjectOnly(d))
            }
        }
    };
    ($t:ident, serialize) => {
        objects_only!($t);
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $t::serialize(self, s)
            }
        }
    };
}

/// Hands a derived struct visitor to `deserialize_map`, which takes a JSON object and refuses
/// anything else (an array included) with serde's usual "invalid type" error.
struct ObjectOnly<D>(D);

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// A card summary: at most 140 characters, checked at construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Summary(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("summary has {0} characters; CDS Hooks allows fewer than 140")]
pub struct SummaryTooLong(pub usize);

impl Summary {
    pub const MAX_CHARS: usize = 140;

    pub fn new(s: impl Into<String>) -> Result<Self, SummaryTooLong> {
        let s = s.into();
        let n = s.chars().count();
        if n > Self::MAX_CHARS {
            Err(SummaryTooLong(n))
        } else {
            Ok(Summary(s))
        }
    }

    /// Shortens with an ellipsis when needed, so a long drug name never breaks a card.
    pub fn truncate(s: &str) -> Self {
        if s.chars().count() <= Self::MAX_CHARS {
            return Summary(s.to_string());
        }
        let mut out: String = s.chars().take(Self::MAX_CHARS - 1).collect();
        out.push('…');
        Summary(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Summary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Summary::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hook call. `context` and `prefetch` stay JSON: each piece is read leniently later. The
/// prefetch borrows its strings from the body it was parsed from (see [`Json`]).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", remote = "Self")]
pub struct CdsRequest<'a> {
    /// The hook of the service called (its `hook` in the discovery document); any other is 422.
    #[schema(value_type = HookName)]
    pub hook: String,
    pub hook_instance: String,
    #[serde(default)]
    pub fhir_server: Option<String>,
    #[serde(default)]
    pub fhir_authorization: Option<FhirAuthorization>,
    /// Read as [`OrderContext`] (400 when it is not one); other fields are ignored.
    #[schema(value_type = OrderContext)]
    pub context: Map<String, Value>,
    /// An object (checked when parsed), or absent.
    #[serde(default, borrow, deserialize_with = "object_or_null")]
    #[schema(value_type = Option<Object>)]
    pub prefetch: Option<Json<'a>>,
}

objects_only!(CdsRequest<'a>);

impl CdsRequest<'_> {
    /// The same request, owning its data (to outlive the body it was read from).
    pub fn into_owned(self) -> CdsRequest<'static> {
        CdsRequest {
            hook: self.hook,
            hook_instance: self.hook_instance,
            fhir_server: self.fhir_server,
            fhir_authorization: self.fhir_authorization,
            context: self.context,
            prefetch: self.prefetch.map(Json::into_owned),
        }
    }

    /// A request from a JSON value (tests, tools).
    pub fn from_value(v: &Value) -> Result<CdsRequest<'static>, serde_json::Error> {
        let text = v.to_string();
        serde_json::from_str::<CdsRequest<'_>>(&text).map(CdsRequest::into_owned)
    }
}

fn object_or_null<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Json<'a>>, D::Error> {
    match Json::deserialize(d)? {
        Json::Null => Ok(None),
        v @ Json::Object(_) => Ok(Some(v)),
        _ => Err(serde::de::Error::invalid_type(
            serde::de::Unexpected::Other("a non-object"),
            &"an object",
        )),
    }
}

/// fhirAuthorization; `Debug` never shows the token.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(remote = "Self")]
pub struct FhirAuthorization {
    pub access_token: String,
    pub token_type: String,
    #[serde(default, deserialize_with = "whole_seconds")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    pub subject: String,
    #[serde(default)]
    pub patient: Option<String>,
}

objects_only!(FhirAuthorization);

/// A count of seconds as JSON Schema's "integer" reads it: 990.0 is one too (an EHR's JSON
/// library may write it so); a fraction or a negative is refused.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom("not a whole number of seconds")),
    }
}

impl fmt::Debug for FhirAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirAuthorization")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The hooks the services handle (documentation only: `CdsRequest::hook` is read as a string, so
/// another hook gets 422 rather than 400).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "kebab-case")]
pub enum HookName {
    OrderSelect,
    OrderSign,
}

/// order-select and order-sign context (order-sign has no selections).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderContext {
    pub user_id: String,
    pub patient_id: String,
    #[serde(default)]
    pub encounter_id: Option<String>,
    #[serde(default)]
    pub selections: Option<Vec<String>>,
    /// A Bundle; absent when a client re-fires the hook with nothing drafted. Read leniently: a
    /// list of resources or a lone resource is read too, and any other value holds no drafts.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub draft_orders: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CdsResponse {
    pub cards: Vec<Card>,
    #[serde(
        default,
        rename = "systemActions",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub system_actions: Vec<Action>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Indicator {
    Info,
    Warning,
    Critical,
}

impl Indicator {
    /// As on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Indicator::Info => "info",
            Indicator::Warning => "warning",
            Indicator::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub uuid: String,
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub indicator: Indicator,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<Suggestion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_behavior: Option<SelectionBehavior>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_reasons: Vec<Coding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Source {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Coding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SelectionBehavior {
    AtMostOne,
    Any,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suggestion {
    pub label: String,
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_recommended: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionType {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: ActionType,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub resource: Option<Value>,
    /// Relative references ("MedicationRequest/123"), for delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_id: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(remote = "Self")]
pub struct Coding {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkType {
    Absolute,
    Smart,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub label: String,
    pub url: String,
    #[serde(rename = "type")]
    pub kind: LinkType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_context: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(remote = "Self")]
pub struct FeedbackRequest {
    pub feedback: Vec<Feedback>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Accepted,
    Overridden,
}

impl Outcome {
    /// As on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Overridden => "overridden",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", remote = "Self")]
pub struct Feedback {
    pub card: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_suggestions: Vec<AcceptedSuggestion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<OverrideReason>,
    pub outcome_timestamp: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(remote = "Self")]
pub struct AcceptedSuggestion {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", remote = "Self")]
pub struct OverrideReason {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Coding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_comment: Option<String>,
}

objects_only!(FeedbackRequest, serialize);
objects_only!(Feedback, serialize);
objects_only!(AcceptedSuggestion, serialize);
objects_only!(OverrideReason, serialize);
objects_only!(Coding, serialize);

/// GET /cds-services, as served from cds-hooks/services.json.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Discovery {
    pub services: Vec<ServiceDescriptor>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDescriptor {
    pub hook: String,
    pub id: String,
    pub title: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub prefetch: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_requirements: Option<String>,
}

/// The service catalogue compiled into the binary.
pub const SERVICES_JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/cds-hooks/services.json"
));

/// Prefetch tokens CDS Hooks 2.0 defines; templates may use nothing else.
pub const STU2_TOKENS: [&str; 3] = [
    "{{context.patientId}}",
    "{{context.userId}}",
    "{{context.encounterId}}",
];

impl Discovery {
    pub fn embedded() -> Result<Self, serde_json::Error> {
        serde_json::from_str(SERVICES_JSON)
    }

    pub fn service(&self, id: &str) -> Option<&ServiceDescriptor> {
        self.services.iter().find(|s| s.id == id)
    }
}

/// What a prefetch value gives: CDS Hooks 2.0 lets a client send null or an OperationOutcome for
/// a prefetch it could not get; a searchset may still have pages to follow (`next`) or carry an
/// error outcome entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchState {
    Missing,
    Partial,
    Complete,
}

/// A Bundle's `next` link (the link object: its url may be missing or malformed).
pub fn next_link<'v, 'a>(bundle: &'v Json<'a>) -> Option<&'v Json<'a>> {
    if bundle.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return None;
    }
    bundle
        .get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Json::as_str) == Some("next"))
}

pub fn prefetch_state(v: Option<&Json>) -> PrefetchState {
    fn kind<'v>(v: &'v Json<'_>) -> Option<&'v str> {
        v.get("resourceType").and_then(Json::as_str)
    }
    let Some(v) = v.filter(|v| v.is_object()) else {
        return PrefetchState::Missing;
    };
    match kind(v) {
        Some("OperationOutcome") | None => PrefetchState::Missing,
        Some("Bundle") => {
            let has_next = next_link(v).is_some();
            let entries = v.get("entry").and_then(Json::as_array);
            let has_error = entries.into_iter().flatten().any(|e| {
                e.get("resource").is_some_and(|r| {
                    kind(r) == Some("OperationOutcome")
                        && r.get("issue").and_then(Json::as_array).is_some_and(|is| {
                            is.iter().any(|i| {
                                matches!(
                                    i.get("severity").and_then(Json::as_str),
                                    Some("error" | "fatal")
                                )
                            })
                        })
                })
            });
            if has_next || has_error {
                PrefetchState::Partial
            } else {
                PrefetchState::Complete
            }
        }
        Some(_) => PrefetchState::Complete,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_objects_are_not_read_from_arrays() {
        use super::{CdsRequest, Coding, FeedbackRequest};
        let ok = r#"{"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "t",
            "overrideReason": {"reason": {"system": "s", "code": "x"}}, "acceptedSuggestions": []}]}"#;
        let fb: FeedbackRequest = serde_json::from_str(ok).expect("objects");
        assert_eq!(
            serde_json::to_value(&fb).expect("serialises")["feedback"][0]["overrideReason"]["reason"]
                ["code"],
            "x"
        );
        for bad in [
            r#"{"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "t", "overrideReason": [null, null]}]}"#,
            r#"{"feedback": [["c", "accepted", [], null, "t"]]}"#,
            r#"{"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "t", "acceptedSuggestions": [["a"]]}]}"#,
            r#"[[]]"#,
        ] {
            assert!(
                serde_json::from_str::<FeedbackRequest>(bad).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<Coding>(r#"["s", "c"]"#).is_err());
        let auth = |expires: &str| {
            serde_json::from_str::<super::FhirAuthorization>(&format!(
                r#"{{"access_token": "t", "token_type": "Bearer", "subject": "s", "expires_in": {expires}}}"#
            ))
            .map(|a| a.expires_in)
        };
        assert_eq!(auth("990").ok(), Some(Some(990)));
        assert_eq!(auth("990.0").ok(), Some(Some(990)), "JSON Schema's integer");
        assert_eq!(auth("null").ok(), Some(None));
        for bad in ["990.5", "-1", "-1.0", "1e300", "\"990\""] {
            assert!(auth(bad).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_str::<CdsRequest>(r#"["order-sign", "i", null, null, {}, null]"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<CdsRequest>(
                r#"{"hook": "order-sign", "hookInstance": "i", "context": {},
                "fhirAuthorization": ["t", "Bearer", 1, null, "s", null]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn prefetch_states() {
        use super::{PrefetchState::*, prefetch_state};
        use serde_json::json;
        let st =
            |v: serde_json::Value| prefetch_state(Some(&crate::clinical::json::Json::from(&v)));
        assert_eq!(prefetch_state(None), Missing);
        assert_eq!(st(json!(null)), Missing);
        assert_eq!(
            st(json!({"resourceType": "OperationOutcome", "issue": []})),
            Missing
        );
        assert_eq!(st(json!({"resourceType": "Patient"})), Complete);
        assert_eq!(st(json!({"resourceType": "Bundle", "entry": []})), Complete);
        assert_eq!(
            st(json!({"resourceType": "Bundle", "link": [{"relation": "next", "url": "x"}]})),
            Partial
        );
        let outcome = |sev: &str| {
            json!({"resourceType": "Bundle", "entry": [{"search": {"mode": "outcome"},
            "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": sev}]}}]})
        };
        assert_eq!(st(outcome("error")), Partial);
        assert_eq!(st(outcome("warning")), Complete);
    }

    use super::*;

    #[test]
    fn summary_limit_counts_characters() {
        assert!(Summary::new("x".repeat(140)).is_ok());
        assert_eq!(Summary::new("x".repeat(141)), Err(SummaryTooLong(141)));
        assert!(
            Summary::new("é".repeat(140)).is_ok(),
            "characters, not bytes"
        );
        let t = Summary::truncate(&"y".repeat(300));
        assert_eq!(t.as_str().chars().count(), 140);
        assert!(serde_json::from_str::<Summary>(&format!("\"{}\"", "z".repeat(141))).is_err());
    }

    #[test]
    fn optional_fields_are_omitted() {
        let card = Card {
            uuid: "u".into(),
            summary: Summary::truncate("s"),
            detail: None,
            indicator: Indicator::Info,
            source: Source {
                label: "l".into(),
                url: None,
                icon: None,
                topic: None,
            },
            suggestions: vec![],
            selection_behavior: None,
            override_reasons: vec![],
            links: vec![],
        };
        let v = serde_json::to_value(CdsResponse {
            cards: vec![card],
            system_actions: vec![],
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"cards": [{"uuid": "u", "summary": "s", "indicator": "info", "source": {"label": "l"}}]})
        );
    }

    #[test]
    fn token_is_not_in_debug() {
        let a: FhirAuthorization = serde_json::from_value(serde_json::json!({
            "access_token": "secret-token", "token_type": "Bearer", "subject": "cds", "scope": "patient/*.read"
        }))
        .expect("auth");
        assert!(!format!("{a:?}").contains("secret-token"));
    }

    #[test]
    fn catalogue_uses_stu2_tokens_only() {
        let d = Discovery::embedded().expect("services.json");
        let ids: Vec<&str> = d.services.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["offramp-order-select", "offramp-order-sign"]);
        for s in &d.services {
            assert_eq!(s.hook, s.id.trim_start_matches("offramp-"));
            for (key, t) in &s.prefetch {
                let t = t.as_str().expect("template string");
                let mut rest = t;
                while let Some(i) = rest.find("{{") {
                    let end = rest[i..].find("}}").expect("closed token") + i + 2;
                    assert!(
                        STU2_TOKENS.contains(&&rest[i..end]),
                        "{key}: {}",
                        &rest[i..end]
                    );
                    rest = &rest[end..];
                }
            }
        }
    }
}
