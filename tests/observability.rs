//! What operators see: the audit stream (through the same logging set-up `offramp serve` uses,
//! into a file) and the Prometheus metrics, after real traffic through the HTTP surface.

mod support;

use serde_json::{Value, json};
use support::app::{example, spawn_app_with};

const PATIENT_ID: &str = "mrn-4471-audit";
const FAMILY: &str = "Zzyzxaudit";

/// The opioid + benzo example for a patient with a distinctive id and name, so a leak of
/// either is visible.
fn request() -> String {
    let text = example("order-sign-opioid-with-benzo").replace("pt-1", PATIENT_ID);
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["prefetch"]["patient"]["name"] = json!([{"family": FAMILY, "given": ["Quentin"]}]);
    v.to_string()
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_and_metrics_follow_decisions_feedback_and_refusals() {
    let dir = std::env::temp_dir().join(format!("offramp-audit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let audit_file = dir.join("audit.jsonl");
    offramp::audit::init_logging(&offramp::audit::AuditSettings {
        output: audit_file.display().to_string(),
    })
    .expect("logging");

    let key = "audit-test-patient-key-0123456789abcdef";
    let app = spawn_app_with(support::app::Setup {
        store: offramp::store::StoreSettings {
            patient_key: offramp::store::Secret(key.into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let hook = "/cds-services/offramp-order-sign";
    let body = request();
    let r = app.post(hook, &body, "application/json", true).await;
    assert_eq!(r.status(), 200);
    let cards: Value = r.json().await.expect("cards");
    let cards = cards["cards"].as_array().expect("cards").clone();
    assert!(!cards.is_empty(), "the example gives cards");
    let first = cards[0]["uuid"].as_str().expect("uuid").to_string();
    let reason = cards[0]["overrideReasons"][0].clone();
    let fb = json!({"feedback": [{"card": first, "outcome": "overridden",
        "overrideReason": {"reason": reason}, "outcomeTimestamp": "2026-11-23T10:00:00Z"}]});
    // The feedback, then an EHR's retry of it (audited with new=false).
    for _ in 0..2 {
        let r = app
            .post(
                &format!("{hook}/feedback"),
                &fb.to_string(),
                "application/json",
                true,
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    // A request without a token, a token for another URL, an unknown service, and an
    // exclusion (hospice) that keeps a rule quiet.
    let r = app.post(hook, &body, "application/json", false).await;
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(format!("{}{hook}", app.base))
        .header("content-type", "application/json")
        .header(
            "authorization",
            app.token("/cds-services/offramp-order-select"),
        )
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let r = app
        .post("/cds-services/evil-7c1e", &body, "application/json", true)
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .post(
            hook,
            &example("order-sign-hospice-exclusion"),
            "application/json",
            true,
        )
        .await;
    assert_eq!(r.status(), 200);

    // The audit stream.
    let text = std::fs::read_to_string(&audit_file).expect("audit file");
    for secret in [PATIENT_ID, FAMILY, "Bearer", "eyJ"] {
        assert!(!text.contains(secret), "{secret:?} in the audit stream");
    }
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert!(events.iter().all(|e| e["target"] == offramp::audit::TARGET));
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    let decisions = of("decision");
    assert_eq!(decisions.len(), 2, "{text}");
    let d = decisions[0];
    assert_eq!(d["service"], "offramp-order-sign");
    assert_eq!(d["hook"], "order-sign");
    assert_eq!(d["issuer"], support::app::ISS);
    assert_eq!(d["data"], "complete");
    assert!(d["timestamp"].is_string());
    assert!(d["span"]["request_id"].is_string(), "{d}");
    let patient = d["patient"].as_str().expect("patient hash");
    assert!(patient.len() == 32 && patient.bytes().all(|b| b.is_ascii_hexdigit()));
    // An auditor finds the patient's lines with the deployment's key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_offramp"))
        .args(["hash-patient", "--issuer", support::app::ISS, PATIENT_ID])
        .env("OFFRAMP__STORE__PATIENT_KEY", key)
        .output()
        .expect("offramp hash-patient");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), patient);
    let uuids: Vec<&str> = cards.iter().filter_map(|c| c["uuid"].as_str()).collect();
    assert_eq!(d["cards"], uuids.join(","));
    assert!(
        d["rules"]
            .as_str()
            .expect("rules")
            .contains("co-prescription"),
        "{d}"
    );
    assert!(
        decisions[1]["suppressed"]
            .as_str()
            .expect("suppressed")
            .contains("co-prescription: hospice"),
        "{}",
        decisions[1]
    );
    let feedback = of("feedback");
    assert_eq!(feedback.len(), 2, "{text}");
    assert_eq!(feedback[0]["card"], first.as_str());
    assert_eq!(feedback[0]["outcome"], "overridden");
    assert_eq!(
        feedback[0]["patient"], patient,
        "the same keyed hash as the decision"
    );
    assert_eq!(feedback[0]["new"], true);
    assert_eq!(
        feedback[1]["new"], false,
        "a retry is audited as a duplicate"
    );
    assert!(
        !feedback[0]["override_reason"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    let refused: Vec<&str> = of("auth_failure")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(refused, ["missing_header", "aud_mismatch"], "{text}");

    // The metrics.
    let m = app.get("/metrics").await.text().await.expect("metrics");
    for secret in [PATIENT_ID, FAMILY, "evil-7c1e"] {
        assert!(!m.contains(secret), "{secret:?} in /metrics");
    }
    let hook_ok = [
        ("route", "/cds-services/{id}"),
        ("service", "offramp-order-sign"),
        ("status", "200"),
    ];
    assert_eq!(
        metric(&m, "offramp_http_requests_total", &hook_ok),
        Some(2.0)
    );
    let unauthorized = [("route", "/cds-services/{id}"), ("status", "401")];
    assert_eq!(
        metric(&m, "offramp_http_requests_total", &unauthorized),
        Some(2.0)
    );
    let unknown = [("service", "unknown"), ("status", "404")];
    assert_eq!(
        metric(&m, "offramp_http_requests_total", &unknown),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "offramp_http_request_duration_seconds_count",
            &hook_ok[..2]
        ),
        Some(4.0),
        "every answer of the hook is timed, refusals too"
    );
    assert_eq!(
        metric(
            &m,
            "offramp_auth_failures_total",
            &[("reason", "aud_mismatch")]
        ),
        Some(1.0)
    );
    let shown: f64 = metric(&m, "offramp_cards_shown_total", &[]).expect("cards shown");
    assert_eq!(shown, cards.len() as f64);
    let indicator = cards[0]["indicator"].as_str().expect("indicator");
    assert!(metric(&m, "offramp_cards_shown_total", &[("indicator", indicator)]).is_some());
    assert_eq!(
        metric(
            &m,
            "offramp_card_feedback_total",
            &[("outcome", "overridden")]
        ),
        Some(1.0),
        "the retry is not counted twice"
    );
    assert!(
        metric(
            &m,
            "offramp_rules_suppressed_total",
            &[("rule", "co-prescription")]
        )
        .is_some()
    );
    assert_eq!(
        metric(
            &m,
            "offramp_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let rss = metric(&m, "process_resident_memory_bytes", &[]).expect("process metrics");
    assert!(rss > 1e6, "{rss}");
    assert!(metric(&m, "process_open_fds", &[]).is_some_and(|n| n > 2.0));
}
