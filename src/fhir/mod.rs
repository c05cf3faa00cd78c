//! Patient data the EHR did not prefetch, fetched from its FHIR server with the request's
//! fhirAuthorization (CDS Hooks 2.0, "FHIR Resource Access"). This is the edge: HTTP and time
//! live here; what comes back is put into the request's prefetch map so the pure evaluation reads
//! prefetched and fetched data by the same lenient path.
//!
//! reqwest rather than fhir-sdk's client: fhir-sdk parses each Bundle strictly into typed
//! resources, so one resource with a real-world quirk would fail the whole search; here each
//! resource stays JSON and is read on its own. It also gives a byte cap per page, one deadline
//! across every request, and no redirects (the bearer token must not travel).

use crate::clinical::json::Json;
use crate::protocol::{CdsRequest, PrefetchState, prefetch_state};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    /// One budget for all the fetches of a request (EHRs wait a few seconds at most).
    pub deadline_ms: u64,
    pub connect_timeout_ms: u64,
    /// Pages followed per search (the first one included).
    pub max_pages: u32,
    /// Resources kept per search; the rest is not fetched.
    pub max_resources: usize,
    /// Largest response body accepted per page.
    pub max_page_bytes: usize,
    /// Plain http FHIR servers are refused unless this is set (the bearer token would travel in
    /// clear); for tests and closed lab networks only.
    pub allow_plain_http: bool,
    /// PEM file of extra root certificates (a hospital's internal CA), added to the public roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings {
            deadline_ms: 2000,
            connect_timeout_ms: 500,
            max_pages: 10,
            max_resources: 5000,
            max_page_bytes: 16 * 1024 * 1024,
            allow_plain_http: false,
            ca_file: None,
        }
    }
}

/// How one prefetch key ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Sent by the EHR, complete.
    Prefetched,
    /// Fetched from fhirServer, complete.
    Fetched,
    /// Only part of it is known (paging stopped); the reason is a metric label.
    Partial(&'static str),
    /// Not known at all; the reason is a metric label.
    Missing(&'static str),
}

impl Piece {
    pub fn label(&self) -> &'static str {
        match self {
            Piece::Prefetched => "prefetched",
            Piece::Fetched => "fetched",
            Piece::Partial(r) | Piece::Missing(r) => r,
        }
    }
    pub fn is_degraded(&self) -> bool {
        matches!(self, Piece::Partial(_) | Piece::Missing(_))
    }
}

/// What [`FhirClient::gather`] did, for logs, metrics and the evaluation's completeness rules.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub pieces: BTreeMap<String, Piece>,
    /// HTTP requests sent to the FHIR server.
    pub requests: u32,
    pub elapsed: Duration,
}

impl Report {
    /// Keys whose data is only partly known.
    pub fn partial(&self) -> BTreeSet<String> {
        self.pieces
            .iter()
            .filter(|(_, p)| matches!(p, Piece::Partial(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Why a GET gave nothing usable; each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Unauthorized,
    NotFound,
    ServerError,
    Status,
    Timeout,
    Transport,
    TooLarge,
    InvalidJson,
    NotFhir,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Unauthorized => "unauthorized",
            Failure::NotFound => "not_found",
            Failure::ServerError => "server_error",
            Failure::Status => "unexpected_status",
            Failure::Timeout => "timeout",
            Failure::Transport => "transport",
            Failure::TooLarge => "too_large",
            Failure::InvalidJson => "invalid_json",
            Failure::NotFhir => "not_fhir",
        }
    }
}

/// One HTTP client for every request (connection pooling), built from the settings.
#[derive(Clone)]
pub struct FhirClient {
    http: reqwest::Client,
    settings: FhirSettings,
}

/// Where fetches go and with what token; built only for an allowed fhirServer.
struct Target {
    base: Url,
    token: String,
}

impl Target {
    fn run(&self, client: &FhirClient, deadline: Instant) -> Run {
        Run {
            client: client.clone(),
            base: self.base.clone(),
            token: self.token.clone(),
            deadline,
        }
    }
}

impl FhirClient {
    pub fn new(settings: &FhirSettings) -> Result<FhirClient, String> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.allow_plain_http)
            .user_agent(concat!("offramp/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("fhir.ca_file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("fhir.ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("fhir.ca_file {}: no certificate", path.display()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| format!("FHIR client: {e}"))?;
        Ok(FhirClient {
            http,
            settings: settings.clone(),
        })
    }

    /// Fills in what `templates` (the service's prefetch) asks for and the request lacks: a key
    /// that is absent or null is fetched from fhirServer, and a prefetched Bundle with a `next`
    /// link is followed. The caller has already removed a fhirServer the issuer may not name.
    /// Never fails: what cannot be had is reported, and the evaluation decides what it can say.
    pub async fn gather(&self, templates: &Map<String, Value>, req: &mut CdsRequest<'_>) -> Report {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.settings.deadline_ms);
        let target = self.target(req);
        let prefetch = req.prefetch.get_or_insert_with(|| Json::Object(Vec::new()));
        let mut report = Report::default();
        let mut jobs = tokio::task::JoinSet::new();
        for (key, template) in templates {
            let state = prefetch_state(prefetch.get(key));
            let start = match (state, &target) {
                (PrefetchState::Complete, _) => {
                    report.pieces.insert(key.clone(), Piece::Prefetched);
                    continue;
                }
                (PrefetchState::Partial, Ok(_)) => {
                    match prefetch.get(key).and_then(prefetch_next) {
                        Some(next) => Start::Continue(next),
                        None => {
                            report
                                .pieces
                                .insert(key.clone(), Piece::Partial("outcome_error"));
                            continue;
                        }
                    }
                }
                (PrefetchState::Partial, Err(why)) => {
                    report.pieces.insert(key.clone(), Piece::Partial(why));
                    continue;
                }
                (PrefetchState::Missing, Err(why)) => {
                    report.pieces.insert(key.clone(), Piece::Missing(why));
                    continue;
                }
                (PrefetchState::Missing, Ok(_)) => {
                    match template.as_str().and_then(|t| render(t, &req.context)) {
                        Some(relative) => Start::Fresh(relative),
                        None => {
                            report
                                .pieces
                                .insert(key.clone(), Piece::Missing("template"));
                            continue;
                        }
                    }
                }
            };
            if let Ok(t) = &target {
                let run = t.run(self, deadline);
                let key = key.clone();
                jobs.spawn(async move { (key, run.fetch(start).await) });
            }
        }
        while let Some(joined) = jobs.join_next().await {
            let Ok((key, fetched)) = joined else {
                continue; // a panicked task: its key stays as it was (reported missing below)
            };
            report.requests += fetched.requests;
            let existing = prefetch
                .get_mut(&key)
                .filter(|v| prefetch_state(Some(v)) != PrefetchState::Missing);
            let piece = match (fetched.result, existing) {
                (Ok(Got::Resource(v)), _) => {
                    prefetch.insert(&key, Json::from(&v));
                    Piece::Fetched
                }
                (Ok(Got::Entries(entries, stop)), existing) => {
                    match existing {
                        Some(bundle) => append_entries(bundle, entries),
                        None => {
                            prefetch.insert(&key, Json::from(&searchset(entries)));
                        }
                    }
                    stop.map_or(Piece::Fetched, Piece::Partial)
                }
                (Err(f), Some(_)) => Piece::Partial(f.label()),
                (Err(f), None) => Piece::Missing(f.label()),
            };
            report.pieces.insert(key, piece);
        }
        if let Ok(t) = &target {
            self.fetch_medications(t, deadline, prefetch, &mut report)
                .await;
        }
        for key in templates.keys() {
            report
                .pieces
                .entry(key.clone())
                .or_insert(Piece::Missing("internal"));
        }
        report.elapsed = started.elapsed();
        report
    }

    /// Medications that records reference and no search included (a server may ignore
    /// `_include`): read one by one, within the same deadline. Without them those records would
    /// be drugs of unknown class.
    async fn fetch_medications(
        &self,
        target: &Target,
        deadline: Instant,
        prefetch: &mut Json<'_>,
        report: &mut Report,
    ) {
        let missing = missing_medications(prefetch);
        let mut jobs = tokio::task::JoinSet::new();
        for (id, key) in missing.into_iter().take(MAX_MEDICATION_READS) {
            let run = target.run(self, deadline);
            jobs.spawn(async move {
                let got = run.fetch(Start::Fresh(format!("Medication/{id}"))).await;
                (key, got)
            });
        }
        while let Some(joined) = jobs.join_next().await {
            let Ok((key, fetched)) = joined else { continue };
            report.requests += fetched.requests;
            match fetched.result {
                Ok(Got::Resource(m))
                    if m.get("resourceType") == Some(&Value::from("Medication")) =>
                {
                    if let Some(bundle) = prefetch.get_mut(&key) {
                        append_entries(bundle, vec![serde_json::json!({"resource": m})]);
                    }
                }
                _ => {
                    report
                        .pieces
                        .insert(key, Piece::Partial("medication_unavailable"));
                }
            }
        }
    }

    /// Where fetches may go, or why none may: CDS Hooks 2.0 allows FHIR access only with both
    /// fhirServer and fhirAuthorization.
    fn target(&self, req: &CdsRequest) -> Result<Target, &'static str> {
        let server = req.fhir_server.as_deref().ok_or("no_fhir_server")?;
        let base = crate::auth::aud::normalise(server).ok_or("bad_fhir_server")?;
        let base = Url::parse(&format!("{base}/")).map_err(|_| "bad_fhir_server")?;
        if base.scheme() != "https" && !self.settings.allow_plain_http {
            return Err("plain_http_refused");
        }
        let auth = req.fhir_authorization.as_ref().ok_or("no_authorization")?;
        if !auth.token_type.eq_ignore_ascii_case("bearer") {
            return Err("not_bearer");
        }
        // A token for another patient: something upstream is wrong; mix nothing.
        let patient = req.context.get("patientId").and_then(Value::as_str);
        if auth.patient.as_deref().is_some_and(|p| Some(p) != patient) {
            return Err("patient_mismatch");
        }
        Ok(Target {
            base,
            token: auth.access_token.clone(),
        })
    }
}

/// Medication reads after the searches, at most.
const MAX_MEDICATION_READS: usize = 50;

/// Ids of Medications referenced as `Medication/<id>` (relative, absolute or versioned) that no
/// value in `prefetch` holds, each with the key that references it first.
fn missing_medications(prefetch: &Json<'_>) -> BTreeMap<String, String> {
    let mut have = BTreeSet::new();
    let mut wanted = BTreeMap::new();
    // In key order, as fetched keys arrive in whatever order the network gives.
    let by_key: BTreeMap<&str, &Json<'_>> = prefetch.fields().collect();
    for (key, v) in by_key {
        for r in crate::clinical::history::resources(v) {
            if r.get("resourceType").and_then(Json::as_str) == Some("Medication")
                && let Some(id) = r.get("id").and_then(Json::as_str)
            {
                have.insert(id.to_string());
            }
            let reference = r
                .get("medicationReference")
                .and_then(|m| m.get("reference"))
                .and_then(Json::as_str);
            if let Some(id) = reference.and_then(medication_id) {
                wanted
                    .entry(id.to_string())
                    .or_insert_with(|| key.to_string());
            }
        }
    }
    wanted.retain(|id, _| !have.contains(id));
    wanted
}

/// The referenced id, only when it is a FHIR id (it goes into a URL).
fn medication_id(reference: &str) -> Option<&str> {
    crate::clinical::record::medication_ref_id(reference).filter(|id| is_fhir_id(id))
}

enum Start {
    /// A relative URL from a template, under the base.
    Fresh(String),
    /// The `next` link of a prefetched Bundle.
    Continue(String),
}

enum Got {
    /// A read (Patient/123).
    Resource(Value),
    /// A search's entries, and why paging stopped early if it did.
    Entries(Vec<Value>, Option<&'static str>),
}

struct Fetched {
    result: Result<Got, Failure>,
    requests: u32,
}

/// One fetch job: a read, or a search followed page by page.
struct Run {
    client: FhirClient,
    base: Url,
    token: String,
    deadline: Instant,
}

impl Run {
    async fn fetch(&self, start: Start) -> Fetched {
        let s = &self.client.settings;
        let mut requests = 0;
        let (mut url, mut entries, mut pages) = match start {
            Start::Fresh(relative) => {
                let Ok(url) = self.base.join(&relative) else {
                    return Fetched {
                        result: Err(Failure::NotFhir),
                        requests,
                    };
                };
                requests += 1;
                let first = match self.get(url).await {
                    Ok(v) => v,
                    Err(f) => {
                        return Fetched {
                            result: Err(f),
                            requests,
                        };
                    }
                };
                if !is_bundle(&first) {
                    return Fetched {
                        result: Ok(Got::Resource(first)),
                        requests,
                    };
                }
                let next = next_link(&first);
                (next, take_entries(first), 1)
            }
            Start::Continue(next) => (Some(next), Vec::new(), 1),
        };
        let mut stop = None;
        while let Some(next) = url.take() {
            if entries.len() >= s.max_resources {
                stop = Some("resource_limit");
                break;
            }
            if pages >= s.max_pages {
                stop = Some("page_limit");
                break;
            }
            // A next link elsewhere would send the token to a server nobody allowed.
            let Some(next) = self.under_base(&next) else {
                stop = Some("next_off_base");
                break;
            };
            requests += 1;
            pages += 1;
            match self.get(next).await {
                Ok(page) if is_bundle(&page) => {
                    url = next_link(&page);
                    entries.extend(take_entries(page));
                }
                Ok(_) => stop = Some(Failure::NotFhir.label()),
                Err(f) => stop = Some(f.label()),
            }
        }
        if entries.len() > s.max_resources {
            entries.truncate(s.max_resources);
            stop = stop.or(Some("resource_limit"));
        }
        Fetched {
            result: Ok(Got::Entries(entries, stop)),
            requests,
        }
    }

    fn under_base(&self, link: &str) -> Option<Url> {
        let url = Url::parse(link).ok()?;
        // Credentials in a link would travel as a second Authorization.
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let same_origin = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        (same_origin && url.path().starts_with(self.base.path())).then_some(url)
    }

    async fn get(&self, url: Url) -> Result<Value, Failure> {
        let rb = self
            .client
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/fhir+json")
            .bearer_auth(&self.token);
        let limit = self.client.settings.max_page_bytes;
        let work = async {
            let mut resp = rb.send().await.map_err(|_| Failure::Transport)?;
            match resp.status().as_u16() {
                200 => {}
                401 | 403 => return Err(Failure::Unauthorized),
                404 | 410 => return Err(Failure::NotFound),
                500..=599 => return Err(Failure::ServerError),
                _ => return Err(Failure::Status),
            }
            if resp.content_length().is_some_and(|n| n as usize > limit) {
                return Err(Failure::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|_| Failure::Transport)? {
                if body.len() + chunk.len() > limit {
                    return Err(Failure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            let v: Value = serde_json::from_slice(&body).map_err(|_| Failure::InvalidJson)?;
            match v.get("resourceType").and_then(Value::as_str) {
                Some("OperationOutcome") | None => Err(Failure::NotFhir),
                Some(_) => Ok(v),
            }
        };
        tokio::time::timeout_at(self.deadline, work)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// Fills the STU2 prefetch tokens. None when a token's value is missing or is not a FHIR id
/// (an id is put into a URL path or query and must not change its meaning).
pub fn render(template: &str, context: &Map<String, Value>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after.find("}}")?;
        let field = after[..j].trim().strip_prefix("context.")?;
        if !matches!(field, "patientId" | "userId" | "encounterId") {
            return None;
        }
        let value = context.get(field)?.as_str()?;
        // userId is "Practitioner/123": type and id, each checked; the others are bare ids.
        let ok = match field {
            "userId" => value.split('/').count() <= 2 && value.split('/').all(is_fhir_id),
            _ => is_fhir_id(value),
        };
        if !ok {
            return None;
        }
        out.push_str(value);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// FHIR R4 id: [A-Za-z0-9\-\.]{1,64}.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s != "."
        && s != ".."
}

fn is_bundle(v: &Value) -> bool {
    v.get("resourceType").and_then(Value::as_str) == Some("Bundle")
}

/// The `next` url of a fetched page (read in place: a page can be megabytes).
fn next_link(v: &Value) -> Option<String> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    v.get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")?
        .as_str()
        .map(str::to_string)
}

/// The `next` url of a prefetched Bundle.
fn prefetch_next(v: &Json<'_>) -> Option<String> {
    crate::protocol::next_link(v)?
        .get("url")?
        .as_str()
        .map(str::to_string)
}

fn take_entries(mut bundle: Value) -> Vec<Value> {
    match bundle.get_mut("entry").map(Value::take) {
        Some(Value::Array(entries)) => entries,
        _ => Vec::new(),
    }
}

fn append_entries(bundle: &mut Json<'_>, entries: Vec<Value>) {
    if !bundle.is_object() {
        return;
    }
    // Paging is done: the link must not be followed again downstream.
    bundle.remove("link");
    // A single entry object (read as a one-entry list elsewhere) is kept, as the first entry.
    match bundle.get("entry") {
        Some(Json::Array(_)) => {}
        None | Some(Json::Null) => bundle.insert("entry", Json::Array(Vec::new())),
        Some(one) => {
            let one = one.clone();
            bundle.insert("entry", Json::Array(vec![one]));
        }
    }
    if let Some(Json::Array(a)) = bundle.get_mut("entry") {
        for e in &entries {
            a.push(Json::from(e));
        }
    }
}

fn searchset(entries: Vec<Value>) -> Value {
    serde_json::json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_stu2_tokens() {
        let c = ctx(json!({"patientId": "pt-1", "userId": "Practitioner/dr.9"}));
        assert_eq!(
            render(
                "MedicationRequest?subject=Patient/{{context.patientId}}&_count=5",
                &c
            )
            .as_deref(),
            Some("MedicationRequest?subject=Patient/pt-1&_count=5")
        );
        assert_eq!(
            render("PractitionerRole?practitioner={{ context.userId }}", &c).as_deref(),
            Some("PractitionerRole?practitioner=Practitioner/dr.9")
        );
    }

    #[test]
    fn refuses_ids_that_would_change_the_url() {
        for bad in [
            "../admin", "a&b=c", "x y", "", "a/b/c", "a/b", "..", "p?x", "p#x",
        ] {
            let c = ctx(json!({"patientId": bad}));
            assert_eq!(render("Patient/{{context.patientId}}", &c), None, "{bad}");
        }
        let c = ctx(json!({"patientId": "pt-1"}));
        assert_eq!(render("Patient/{{context.encounterId}}", &c), None);
        assert_eq!(render("Patient/{{context.other}}", &c), None);
        assert_eq!(render("Patient/{{patient.id}}", &c), None);
        assert_eq!(render("Patient/{{context.patientId", &c), None);
    }

    #[test]
    fn medication_ids_from_references() {
        assert_eq!(medication_id("Medication/m-1"), Some("m-1"));
        assert_eq!(
            medication_id("https://ehr.example/fhir/Medication/m-1/_history/3"),
            Some("m-1")
        );
        for none in [
            "#m-1",
            "OtherMedication/m-1",
            "Medication/",
            "Medication/a b",
        ] {
            assert_eq!(medication_id(none), None, "{none}");
        }
        let prefetch = ctx(json!({
            "medicationRequests": {"resourceType": "Bundle", "entry": [
                {"resource": {"resourceType": "MedicationRequest", "medicationReference": {"reference": "Medication/a"}}},
                {"resource": {"resourceType": "MedicationRequest", "medicationReference": {"reference": "Medication/b"}}},
                {"resource": {"resourceType": "Medication", "id": "a"}}]},
            "medicationDispenses": {"resourceType": "Bundle", "entry": [
                {"resource": {"resourceType": "MedicationDispense", "medicationReference": {"reference": "Medication/c"}}}]}
        }));
        let missing = missing_medications(&Json::from(&Value::Object(prefetch)));
        assert_eq!(
            missing.into_iter().collect::<Vec<_>>(),
            [
                ("b".to_string(), "medicationRequests".to_string()),
                ("c".to_string(), "medicationDispenses".to_string())
            ]
        );
    }

    #[test]
    fn next_links_are_found_only_in_bundles() {
        let b = json!({"resourceType": "Bundle", "link": [
            {"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}]});
        assert_eq!(next_link(&b).as_deref(), Some("b"));
        assert_eq!(
            next_link(&json!({"resourceType": "Patient", "link": []})),
            None
        );
        let mut single =
            Json::from(&json!({"resourceType": "Bundle", "entry": {"resource": {"id": "kept"}}}));
        append_entries(&mut single, vec![json!({"resource": {"id": "new"}})]);
        assert_eq!(
            single["entry"].as_array().map(<[_]>::len),
            Some(2),
            "the single entry is kept"
        );
        let mut b2 = Json::from(&b);
        append_entries(&mut b2, vec![json!({"resource": {}})]);
        assert_eq!(prefetch_next(&b2), None);
        assert_eq!(
            b2.get("entry").and_then(Json::as_array).map(<[_]>::len),
            Some(1)
        );
    }

    #[test]
    fn next_links_must_stay_under_the_base() {
        let Ok(client) = FhirClient::new(&FhirSettings {
            allow_plain_http: true,
            ..FhirSettings::default()
        }) else {
            panic!("client");
        };
        let run = Run {
            client,
            base: Url::parse("http://h:8080/fhir/").expect("url"),
            token: String::new(),
            deadline: Instant::now(),
        };
        assert!(
            run.under_base("http://h:8080/fhir/Condition?page=2")
                .is_some()
        );
        for off in [
            "http://h:8080/other/fhir/Condition",
            "http://h:8080/fhir/../admin",
            "https://h:8080/fhir/Condition",
            "http://h:8081/fhir/Condition",
            "http://evil/fhir/Condition",
            "http://h:8080@evil/fhir/Condition",
            "http://user:pw@h:8080/fhir/Condition",
            "/fhir/Condition",
        ] {
            assert!(run.under_base(off).is_none(), "{off}");
        }
    }
}
