//! The use case: one call per hook request. Gather the record (here: prefetch; the FHIR fallback
//! comes with the server), evaluate the rules, plan, render. `offramp evaluate` and the server call
//! the same function, so they cannot disagree.

use crate::cards::{
    RenderInput, render, resources::Origin, resources::TAG_GENERATED, resources::TAG_SYSTEM,
};
use crate::clinical::fhir_read::{one_or_many, str_field};
use crate::clinical::history::{read_history, resources};
use crate::clinical::knowledge::Knowledge;
use crate::clinical::patient::read_patient;
use crate::clinical::record::{MedicationIndex, read_record, resolve};
use crate::protocol::{CdsRequest, CdsResponse, Discovery, OrderContext};
use crate::rules::{Draft, Evaluation, RuleInput, evaluate};
use chrono::NaiveDate;
use serde_json::Value;

/// A request that cannot be evaluated; each maps to one HTTP status in the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// 404
    #[error("no service with id {0:?}")]
    UnknownService(String),
    /// 422: well-formed but against the spec.
    #[error("hook {got:?} does not match service {service:?}, which handles {expected:?}")]
    HookMismatch {
        service: String,
        expected: String,
        got: String,
    },
    /// 400: a required context field is missing or of the wrong type.
    #[error("context: {0}")]
    BadContext(String),
    /// 412: a medication order needs the patient's medication history, and none of it was
    /// prefetched (fetching from fhirServer comes with the FHIR client).
    #[error("the medication history was neither prefetched nor fetchable")]
    DataUnavailable,
}

/// What one evaluation produced, for the response and for logs and metrics.
pub struct Outcome {
    pub response: CdsResponse,
    /// The printable calendar of the first taper plan, when a card links to it.
    pub calendar_html: Option<String>,
    pub evaluation: Evaluation,
    pub history_records: usize,
    pub skipped_resources: usize,
}

fn is_ours(resource: &Value) -> bool {
    let tagged = resource
        .get("meta")
        .map(|m| one_or_many(m.get("tag")))
        .into_iter()
        .flatten()
        .any(|t| {
            str_field(t, "system") == Some(TAG_SYSTEM)
                && str_field(t, "code") == Some(TAG_GENERATED)
        });
    let identified =
        one_or_many(resource.get("identifier")).any(|i| str_field(i, "system") == Some(TAG_SYSTEM));
    tagged || identified
}

/// Evaluates a hook request for `service_id` with the record taken from prefetch only.
pub fn evaluate_request(
    kb: &Knowledge,
    catalogue: &Discovery,
    service_id: &str,
    req: &CdsRequest,
    today: NaiveDate,
) -> Result<Outcome, HookError> {
    evaluate_request_with(kb, catalogue, service_id, req, today, None)
}

/// As [`evaluate_request`], with the URL the server will serve the taper calendar at; the card
/// links to it and the outcome carries the page to store.
pub fn evaluate_request_with(
    kb: &Knowledge,
    catalogue: &Discovery,
    service_id: &str,
    req: &CdsRequest,
    today: NaiveDate,
    calendar_url: Option<&str>,
) -> Result<Outcome, HookError> {
    let service = catalogue
        .service(service_id)
        .ok_or_else(|| HookError::UnknownService(service_id.to_string()))?;
    if req.hook != service.hook {
        return Err(HookError::HookMismatch {
            service: service.id.clone(),
            expected: service.hook.clone(),
            got: req.hook.clone(),
        });
    }
    let ctx: OrderContext = serde_json::from_value(Value::Object(req.context.clone()))
        .map_err(|e| HookError::BadContext(context_error(&e)))?;
    let prefetch: Vec<&Value> = req
        .prefetch
        .as_ref()
        .map(|p| {
            service
                .prefetch
                .keys()
                .filter_map(|k| p.get(k))
                .filter(|v| !v.is_null())
                .collect()
        })
        .unwrap_or_default();
    let history = read_history(&prefetch);
    let all_resources: Vec<&Value> = prefetch.iter().flat_map(|v| resources(v)).collect();
    let patient = read_patient(kb, &all_resources, today);

    // Drafts: each read on its own; Medications in the draft bundle or prefetch can be referenced.
    let draft_values: Vec<&Value> = ctx.draft_orders.as_ref().map(resources).unwrap_or_default();
    let mut index = MedicationIndex::default();
    for r in all_resources.iter().chain(&draft_values) {
        if str_field(r, "resourceType") == Some("Medication") {
            index.insert(r);
        }
    }
    let selections = ctx.selections.as_deref();
    let mut drafts = Vec::new();
    let mut raw = Vec::new();
    for v in draft_values {
        let Ok(record) = read_record(v, &index) else {
            continue;
        };
        if record.kind != crate::clinical::record::RecordKind::Request {
            continue;
        }
        let reference = record
            .id
            .as_ref()
            .map(|id| format!("MedicationRequest/{id}"));
        let selected = match (service.hook.as_str(), selections) {
            ("order-select", Some(sel)) => reference
                .as_ref()
                .is_some_and(|r| sel.iter().any(|s| s == r)),
            _ => true,
        };
        drafts.push(Draft {
            medication: resolve(kb, &record.medication),
            ours: is_ours(v),
            selected,
            reference: reference.clone(),
            record,
        });
        raw.push((reference, v.clone()));
    }
    // Orders that need a history: in scope for the rules. Without any, no data is required.
    let needs_history = drafts
        .iter()
        .any(|d| d.selected && d.medication.is_some_and(|m| m.opens_episode()));
    let history_keys = [
        "medicationRequests",
        "medicationDispenses",
        "medicationStatements",
    ];
    let has_history = req.prefetch.as_ref().is_some_and(|p| {
        history_keys
            .iter()
            .any(|k| service.prefetch.contains_key(*k) && p.get(*k).is_some_and(|v| !v.is_null()))
    });
    if needs_history && !has_history {
        return Err(HookError::DataUnavailable);
    }
    let user = Some(ctx.user_id.as_str()).filter(|u| !u.is_empty());
    let evaluation = evaluate(&RuleInput {
        kb,
        today,
        patient: &patient,
        history: &history.records,
        drafts: &drafts,
        user,
    });
    let cards = render(
        &RenderInput {
            kb,
            origin: Origin {
                patient_id: &ctx.patient_id,
                user,
                today,
            },
            hook_instance: &req.hook_instance,
            drafts: &raw,
            calendar_url,
        },
        &evaluation,
    );
    let calendar_html = calendar_url.and_then(|_| {
        evaluation.findings.iter().find_map(|f| match f {
            crate::rules::Finding::OffRamp(o) => {
                crate::plans::schedule::off_ramp_plan(kb, o, today)
            }
            _ => None,
        })
    });
    let calendar_html = calendar_html.map(|p| crate::cards::handout::taper_handout(&p));
    Ok(Outcome {
        response: CdsResponse {
            cards,
            system_actions: vec![],
        },
        calendar_html,
        evaluation,
        history_records: history.records.len(),
        skipped_resources: history.skipped,
    })
}

/// Names the field without echoing the parser's text or the body.
fn context_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    for field in [
        "userId",
        "patientId",
        "encounterId",
        "selections",
        "draftOrders",
    ] {
        if msg.contains(field) {
            return format!("field {field} is missing or of the wrong type");
        }
    }
    "userId and patientId are required strings".into()
}
