//! The use case: one call per hook request. Read the record (prefetch, completed by the server's
//! FHIR fetch), evaluate the rules, plan, render. `offramp evaluate` and the server call
//! the same function, so they cannot disagree.

pub mod answers;

use crate::cards::{
    RenderInput, render_indexed, resources::Origin, resources::TAG_GENERATED, resources::TAG_SYSTEM,
};
use crate::clinical::fhir_read::{one_or_many, str_field};
use crate::clinical::history::{read_history, resources};
use crate::clinical::json::Json;
use crate::clinical::knowledge::Knowledge;
use crate::clinical::patient::read_patient;
use crate::clinical::record::{MedicationIndex, read_record, resolve};
use crate::protocol::{
    CdsRequest, CdsResponse, Discovery, OrderContext, PrefetchState, ServiceDescriptor as Service,
    prefetch_state,
};
use crate::rules::quiet::{RiskMark, mark};
use crate::rules::{Completeness, Draft, Evaluation, RuleInput, evaluate};
use chrono::NaiveDate;
use serde_json::Value;
use std::collections::BTreeSet;

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
    /// prefetched or could be fetched.
    #[error("the medication history was neither prefetched nor fetchable")]
    DataUnavailable,
}

/// The rule a card shows and its risk, for snoozes and counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shown {
    pub rule: String,
    pub mark: RiskMark,
}

/// What one evaluation produced, for the response and for logs and metrics.
pub struct Outcome {
    pub response: CdsResponse,
    /// The printable calendar of the first taper plan, when a card links to it.
    pub calendar_html: Option<String>,
    /// What each card in `response` is about, in the same order.
    pub shown: Vec<Shown>,
    /// Nothing of the record was missing or partial (a result worth reusing).
    pub complete: bool,
    pub evaluation: Evaluation,
    pub history_records: usize,
    pub skipped_resources: usize,
}

fn is_ours(resource: &Json<'_>) -> bool {
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
    evaluate_request_with(
        kb,
        catalogue,
        service_id,
        req,
        today,
        EvalOptions::default(),
    )
}

/// What the server adds to a request's evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalOptions<'a> {
    /// The URL the taper calendar will be served at; the card links to it and the outcome
    /// carries the page to store.
    pub calendar_url: Option<&'a str>,
    /// Prefetch keys whose data is only partly known (paging stopped early).
    pub partial: Option<&'a BTreeSet<String>>,
}

/// The service, checked against the request's hook, and the parsed context.
fn service_and_context<'c>(
    catalogue: &'c Discovery,
    service_id: &str,
    req: &CdsRequest,
) -> Result<(&'c Service, OrderContext), HookError> {
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
    Ok((service, ctx))
}

/// [`resources`] over the serde_json drafts, in the same order.
fn value_resources(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(value_resources).collect(),
        Value::Object(_)
            if v.get("resourceType").and_then(Value::as_str).map(str::trim) == Some("Bundle") =>
        {
            match v.get("entry") {
                Some(Value::Array(entries)) => entries
                    .iter()
                    .filter_map(|e| e.get("resource"))
                    .flat_map(value_resources)
                    .collect(),
                Some(Value::Null) | None => Vec::new(),
                Some(one) => one.get("resource").map(value_resources).unwrap_or_default(),
            }
        }
        _ => vec![v],
    }
}

/// The draft resources as the EHR sent them (they go back out in suggestions and make the
/// run-ahead digest), each with its copy in the tree the readers take. Drafts are few.
fn drafts_of(ctx: &OrderContext) -> Vec<(&Value, Json<'static>)> {
    ctx.draft_orders
        .as_ref()
        .map(value_resources)
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v, Json::from(v)))
        .collect()
}

/// Each draft read on its own; Medications in the draft bundle or `others` can be referenced.
fn read_drafts<'k, 'v>(
    kb: &'k Knowledge,
    service: &Service,
    ctx: &'v OrderContext,
    others: &[&'v Json<'_>],
) -> (Vec<Draft<'k>>, Vec<(Option<String>, Value)>) {
    let sent = drafts_of(ctx);
    let mut index = MedicationIndex::default();
    for r in others.iter().copied().chain(sent.iter().map(|(_, v)| v)) {
        if str_field(r, "resourceType") == Some("Medication") {
            index.insert(r);
        }
    }
    let selections = ctx.selections.as_deref();
    let mut drafts = Vec::new();
    let mut raw = Vec::new();
    for (original, v) in &sent {
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
        raw.push((reference, (*original).clone()));
    }
    (drafts, raw)
}

/// Orders the rules look at need the patient's record; others (most orders) need none.
fn needs_history(drafts: &[Draft<'_>]) -> bool {
    drafts
        .iter()
        .any(|d| d.selected && d.medication.is_some_and(|m| m.opens_episode()))
}

/// Whether this request needs the patient's record at all, so the server fetches nothing for
/// an order the rules never look at. Errors as [`evaluate_request`] would give them.
pub fn needs_record(
    kb: &Knowledge,
    catalogue: &Discovery,
    service_id: &str,
    req: &CdsRequest,
) -> Result<bool, HookError> {
    let (service, ctx) = service_and_context(catalogue, service_id, req)?;
    // A draft may name a Medication sent in prefetch.
    let prefetched: Vec<&Json<'_>> = req
        .prefetch
        .iter()
        .flat_map(|p| p.fields().map(|(_, v)| v))
        .flat_map(resources)
        .collect();
    Ok(needs_history(
        &read_drafts(kb, service, &ctx, &prefetched).0,
    ))
}

/// As [`evaluate_request`], with what the server adds ([`EvalOptions`]).
pub fn evaluate_request_with(
    kb: &Knowledge,
    catalogue: &Discovery,
    service_id: &str,
    req: &CdsRequest,
    today: NaiveDate,
    opts: EvalOptions<'_>,
) -> Result<Outcome, HookError> {
    let calendar_url = opts.calendar_url;
    let (service, ctx) = service_and_context(catalogue, service_id, req)?;
    let prefetch: Vec<&Json<'_>> = req
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
    let all_resources: Vec<&Json<'_>> = prefetch.iter().flat_map(|v| resources(v)).collect();
    let patient = read_patient(kb, &all_resources, today);
    let (drafts, raw) = read_drafts(kb, service, &ctx, &all_resources);

    // What is known: a key is missing when absent, null or an OperationOutcome; partial when
    // paging stopped early or an outcome entry reports an error.
    let state = |k: &str| {
        if !service.prefetch.contains_key(k) {
            return PrefetchState::Complete;
        }
        match prefetch_state(req.prefetch.as_ref().and_then(|p| p.get(k))) {
            PrefetchState::Complete if opts.partial.is_some_and(|p| p.contains(k)) => {
                PrefetchState::Partial
            }
            s => s,
        }
    };
    let history_keys = [
        "medicationRequests",
        "medicationDispenses",
        "medicationStatements",
    ];
    let any_history = history_keys
        .iter()
        .any(|k| service.prefetch.contains_key(*k) && state(k) != PrefetchState::Missing);
    if needs_history(&drafts) && !any_history {
        return Err(HookError::DataUnavailable);
    }
    // A record naming a Medication nobody sent is a drug of unknown class: not a complete history.
    let unresolved = history
        .records
        .iter()
        .any(|r| r.medication.unresolved_reference);
    let completeness = Completeness {
        patient_and_conditions: ["patient", "conditions"]
            .iter()
            .all(|k| state(k) == PrefetchState::Complete),
        history: !unresolved
            && history_keys
                .iter()
                .all(|k| state(k) == PrefetchState::Complete),
    };
    let user = Some(ctx.user_id.as_str()).filter(|u| !u.is_empty());
    let evaluation = evaluate(&RuleInput {
        kb,
        today,
        patient: &patient,
        history: &history.records,
        drafts: &drafts,
        user,
        completeness,
    });
    let indexed = render_indexed(
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
    let mut cards = Vec::with_capacity(indexed.len());
    let mut shown = Vec::with_capacity(indexed.len());
    for (i, card) in indexed {
        let f = &evaluation.findings[i];
        shown.push(Shown {
            rule: f.rule().to_string(),
            mark: mark(kb, f, &drafts),
        });
        cards.push(card);
    }
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
        shown,
        complete: completeness.patient_and_conditions && completeness.history,
        evaluation,
        history_records: history.records.len(),
        skipped_resources: history.skipped,
    })
}

/// The identity of a request's orders for run-ahead: a digest of every draft's content, so an
/// order-sign for the same unchanged drafts finds what order-select computed. None at
/// order-select when some drafts are not selected (order-sign would judge them too, so the
/// result could differ).
pub fn drafts_digest(
    catalogue: &Discovery,
    service_id: &str,
    req: &CdsRequest,
) -> Result<Option<String>, HookError> {
    let (service, ctx) = service_and_context(catalogue, service_id, req)?;
    let drafts = drafts_of(&ctx);
    if drafts.is_empty() {
        return Ok(None);
    }
    if service.hook == "order-select"
        && let Some(sel) = ctx.selections.as_deref()
    {
        let all_selected = drafts.iter().all(|(_, d)| {
            let reference = match (str_field(d, "resourceType"), str_field(d, "id")) {
                (Some(t), Some(id)) => format!("{t}/{id}"),
                _ => return false,
            };
            sel.contains(&reference)
        });
        if !all_selected {
            return Ok(None);
        }
    }
    // serde_json keeps object keys sorted, so equal content serialises equally; the order of
    // the drafts does not matter.
    let mut texts: Vec<String> = drafts.iter().map(|(d, _)| d.to_string()).collect();
    texts.sort();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for t in &texts {
        ctx.update(t.as_bytes());
        ctx.update(&[0]);
    }
    let d = ctx.finish();
    Ok(Some(
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
    ))
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
