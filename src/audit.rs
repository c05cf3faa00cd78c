//! The audit stream: one JSON line per decision, per feedback item and per refused token, on
//! its own tracing target so it can be shipped and kept apart from the operational log. It
//! names patients only by their keyed hash (the store's), never a name, an id or a token.

use serde::Deserialize;
use std::path::PathBuf;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The tracing target of audit events.
pub const TARGET: &str = "offramp::audit";

/// `[audit]`: where the audit stream goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// "stdout", "stderr", "off", or a file path appended to.
    pub output: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            output: "stdout".into(),
        }
    }
}

/// Where audit lines are written.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stdout,
    Stderr,
    Off,
    File(PathBuf),
}

impl AuditSettings {
    pub fn output(&self) -> Result<Output, String> {
        match self.output.trim() {
            "stdout" => Ok(Output::Stdout),
            "stderr" => Ok(Output::Stderr),
            "off" => Ok(Output::Off),
            "" => Err("audit.output is empty (stdout, stderr, off or a file path)".into()),
            path => Ok(Output::File(PathBuf::from(path))),
        }
    }
}

/// One hook call's decision.
pub struct Decision<'a> {
    pub service: &'a str,
    pub hook: &'a str,
    pub hook_instance: &'a str,
    pub issuer: &'a str,
    pub tenant: Option<&'a str>,
    /// Keyed hash of the patient (as the store keys it).
    pub patient: &'a str,
    /// context.userId: the clinician, not the patient.
    pub prescriber: Option<&'a str>,
    /// The rules of the cards returned, in order.
    pub rules: &'a [&'a str],
    pub cards: &'a [&'a str],
    /// Rules kept quiet by a snooze or an earlier answer.
    pub quiet: &'a [&'a str],
    /// Rules kept quiet by an exclusion or missing data: "rule: reason".
    pub suppressed: &'a [String],
    pub run_ahead: bool,
    /// "complete", "partial", or "not-needed" (no order the rules look at).
    pub data: &'a str,
}

pub fn decision(d: &Decision<'_>) {
    tracing::info!(target: TARGET,
        event = "decision",
        service = d.service,
        hook = d.hook,
        hook_instance = %uuid_or_invalid(d.hook_instance),
        issuer = d.issuer,
        tenant = d.tenant.unwrap_or(""),
        patient = d.patient,
        prescriber = d.prescriber.unwrap_or(""),
        rules = %d.rules.join(","),
        cards = %d.cards.join(","),
        quiet = %d.quiet.join(","),
        suppressed = %d.suppressed.join("; "),
        run_ahead = d.run_ahead,
        data = d.data,
    );
}

/// One feedback item as stored.
pub struct FeedbackEvent<'a> {
    pub service: &'a str,
    pub card: &'a str,
    pub rule: &'a str,
    pub outcome: &'a str,
    pub override_reason: Option<&'a str>,
    /// Keyed hash of the patient the card was shown for ("" when the card is unknown).
    pub patient: &'a str,
    pub prescriber: &'a str,
    /// false: an EHR's retry of feedback already stored.
    pub new: bool,
}

pub fn feedback(f: &FeedbackEvent<'_>) {
    tracing::info!(target: TARGET,
        event = "feedback",
        service = f.service,
        card = %uuid_or_invalid(f.card),
        rule = f.rule,
        outcome = f.outcome,
        override_reason = f.override_reason.unwrap_or(""),
        patient = f.patient,
        prescriber = f.prescriber,
        new = f.new,
    );
}

/// A refused token: the reason only (the token and its claims stay out).
pub fn auth_failure(service: &str, reason: &str) {
    tracing::info!(target: TARGET, event = "auth_failure", service, reason);
}

/// Client-given ids go in only when they are what they claim to be (a UUID), so nothing else
/// a client writes there reaches the audit stream.
fn uuid_or_invalid(s: &str) -> String {
    uuid::Uuid::parse_str(s).map_or_else(|_| "invalid".into(), |u| u.to_string())
}

/// Installs the process's subscriber: the operational log (JSON on stdout, filtered by RUST_LOG
/// and capped for crates that log URLs) without audit events, and the audit stream on its own
/// writer, whatever RUST_LOG says.
pub fn init_logging(audit: &AuditSettings) -> Result<(), String> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // HTTP client and server crates log URLs at debug, and FHIR URLs hold patient ids.
    for d in [
        "reqwest=info",
        "hyper=info",
        "hyper_util=info",
        "h2=info",
        "rustls=info",
        "offramp::audit=off",
    ] {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let ops = tracing_subscriber::fmt::layer().json().with_filter(filter);
    let audit_layer = match audit.output()? {
        Output::Off => None,
        Output::Stdout => Some(layer(std::io::stdout).boxed()),
        Output::Stderr => Some(layer(std::io::stderr).boxed()),
        Output::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("audit.output {}: {e}", p.display()))?;
            Some(layer(std::sync::Mutex::new(f)).boxed())
        }
    };
    tracing_subscriber::registry()
        .with(ops)
        .with(audit_layer)
        .try_init()
        .map_err(|e| e.to_string())
}

/// The audit layer on any writer: flat JSON lines of the audit target only.
pub fn layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
        // The request span too, so a line carries its request id (to find the operational log).
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target() == TARGET || (m.is_span() && m.target() == "offramp::http")
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_named_or_a_path() {
        let out = |s: &str| AuditSettings { output: s.into() }.output();
        assert_eq!(out("stdout"), Ok(Output::Stdout));
        assert_eq!(out("stderr"), Ok(Output::Stderr));
        assert_eq!(out("off"), Ok(Output::Off));
        assert_eq!(
            out("/var/log/offramp/audit.jsonl"),
            Ok(Output::File("/var/log/offramp/audit.jsonl".into()))
        );
        assert!(out(" ").is_err());
        assert_eq!(AuditSettings::default().output(), Ok(Output::Stdout));
    }

    #[test]
    fn client_ids_reach_the_stream_only_as_uuids() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(uuid_or_invalid(id), id);
        assert_eq!(uuid_or_invalid("Patient/123 Jane Doe"), "invalid");
    }
}
