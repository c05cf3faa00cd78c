//! What the clinician's answers change, through the HTTP API: snoozes after an override, the
//! session quiet after any answer, run-ahead from order-select to order-sign, the admin counts,
//! and (with Redis) that nothing stored names the patient and a dead Redis shows every card.

use offramp::store::redis::RedisSettings;
use offramp::store::{Backend, Secret, StoreSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod support;
use support::app::{App, Setup, example, spawn_app_with};
use support::redis::RedisServer;

const SIGN: &str = "/cds-services/offramp-order-sign";
const SELECT: &str = "/cds-services/offramp-order-select";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";

fn setup(answered_quiet_seconds: u64) -> Setup {
    Setup {
        store: StoreSettings {
            answered_quiet_seconds,
            ..StoreSettings::default()
        },
        admin_token: ADMIN_TOKEN.into(),
        ..Setup::default()
    }
}

fn redis_setup(redis: &RedisServer) -> Setup {
    Setup {
        store: StoreSettings {
            backend: Backend::Redis,
            redis: RedisSettings {
                url: redis.url(),
                key_prefix: "a:".into(),
                breaker_cooldown_ms: 200,
                ..RedisSettings::default()
            },
            patient_key: Secret("patient-key-for-tests-0123456789abcdef".into()),
            ..StoreSettings::default()
        },
        admin_token: ADMIN_TOKEN.into(),
        ..Setup::default()
    }
}

/// A hook call; the body with a fresh hookInstance, so uuids are new unless reused.
async fn call(app: &App, path: &str, body: &Value) -> Vec<Value> {
    call_as(app, path, body, &uuid::Uuid::new_v4().to_string()).await
}

async fn call_as(app: &App, path: &str, body: &Value, hook_instance: &str) -> Vec<Value> {
    let mut body = body.clone();
    body["hookInstance"] = json!(hook_instance);
    let r = app
        .post(path, &body.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    v["cards"].as_array().cloned().unwrap_or_default()
}

fn body(name: &str) -> Value {
    serde_json::from_str(&example(name)).expect("example")
}

fn uuid_of(card: &Value) -> String {
    card["uuid"].as_str().expect("uuid").to_string()
}

const OURS: &str = "http://offramp.health/fhir/CodeSystem/override-reason";

async fn answer(app: &App, service_path: &str, card: &str, outcome: &str, reason: Option<&str>) {
    let at = chrono::Utc::now().to_rfc3339();
    answer_at(
        app,
        service_path,
        card,
        outcome,
        reason.map(|r| (OURS, r)),
        &at,
    )
    .await;
}

async fn answer_at(
    app: &App,
    service_path: &str,
    card: &str,
    outcome: &str,
    reason: Option<(&str, &str)>,
    at: &str,
) {
    let mut item = json!({"card": card, "outcome": outcome, "outcomeTimestamp": at});
    if let Some((system, code)) = reason {
        item["overrideReason"] = json!({"reason": {"code": code, "system": system}});
    }
    let fb = json!({"feedback": [item]}).to_string();
    let r = app
        .post(
            &format!("{service_path}/feedback"),
            &fb,
            "application/json",
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

fn with_patient(mut b: Value, id: &str, birth: Option<&str>) -> Value {
    b["context"]["patientId"] = json!(id);
    b["prefetch"]["patient"]["id"] = json!(id);
    if let Some(d) = birth {
        b["prefetch"]["patient"]["birthDate"] = json!(d);
    }
    b
}

#[tokio::test]
async fn an_override_with_a_reason_snoozes_the_rule_for_the_patient_until_the_risk_escalates() {
    // No session quiet: only the override's snooze acts.
    let app = spawn_app_with(setup(0)).await;
    let start = body("order-sign-new-benzo-start");
    let cards = call(&app, SIGN, &start).await;
    assert_eq!(cards.len(), 1);
    answer(
        &app,
        SIGN,
        &uuid_of(&cards[0]),
        "overridden",
        Some("short-course"),
    )
    .await;
    assert!(call(&app, SIGN, &start).await.is_empty(), "snoozed");

    // Another patient is not snoozed.
    let other = with_patient(start.clone(), "pt-2", None);
    let cards = call(&app, SIGN, &other).await;
    assert_eq!(cards.len(), 1);
    // An override without a reason does not snooze.
    answer(&app, SIGN, &uuid_of(&cards[0]), "overridden", None).await;
    assert_eq!(call(&app, SIGN, &other).await.len(), 1);

    // The same patient at 65+ (a new risk factor): the risk escalated, the card is back.
    let older = with_patient(start, "pt-1", Some("1950-01-01"));
    let cards = call(&app, SIGN, &older).await;
    assert_eq!(cards.len(), 1, "escalation ends the snooze");
    assert!(cards[0]["summary"].as_str().unwrap_or("").contains("65+"));
}

#[tokio::test]
async fn the_naloxone_prompt_and_an_opioid_renewal_are_never_snoozed() {
    let app = spawn_app_with(setup(0)).await;
    let b = body("order-sign-opioid-with-benzo");
    let cards = call(&app, SIGN, &b).await;
    assert_eq!(cards.len(), 2);
    for c in &cards {
        answer(
            &app,
            SIGN,
            &uuid_of(c),
            "overridden",
            Some("patient-declines"),
        )
        .await;
    }
    // The draft is the opioid (a renewal: reassess) and no naloxone is on hand.
    assert_eq!(call(&app, SIGN, &b).await.len(), 2);
}

#[tokio::test]
async fn order_sign_reuses_order_select_and_never_repeats_an_answered_card() {
    let app = spawn_app_with(setup(600)).await;
    let select = body("order-select-long-term-alprazolam");
    let cards = call(&app, SELECT, &select).await;
    assert_eq!(cards.len(), 1);
    let shown = uuid_of(&cards[0]);

    // The same drafts at order-sign: order-select's result (same card uuid; a new
    // evaluation would derive new uuids from the new hookInstance).
    let mut sign = select.clone();
    sign["hook"] = json!("order-sign");
    if let Some(ctx) = sign["context"].as_object_mut() {
        ctx.remove("selections");
    }
    let again = call(&app, SIGN, &sign).await;
    assert_eq!(again.len(), 1);
    assert_eq!(uuid_of(&again[0]), shown, "served from run-ahead");

    // A changed draft is evaluated again.
    let mut changed = sign.clone();
    changed["context"]["draftOrders"]["entry"][0]["resource"]["dispenseRequest"]["quantity"]["value"] =
        json!(10);
    let fresh = call(&app, SIGN, &changed).await;
    assert_eq!(fresh.len(), 1);
    assert_ne!(uuid_of(&fresh[0]), shown, "new drafts, new evaluation");

    // Once answered, the card is not shown again in the session, whichever way it is reached.
    answer(&app, SELECT, &shown, "accepted", None).await;
    assert!(call(&app, SIGN, &sign).await.is_empty());
    assert!(call(&app, SIGN, &changed).await.is_empty());
    assert!(call(&app, SELECT, &select).await.is_empty());

    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("offramp_run_ahead_total{result=\"hit\"}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_counts_need_the_token_and_show_rules_and_prescribers() {
    let app = spawn_app_with(setup(600)).await;
    let cards = call(&app, SIGN, &body("order-sign-opioid-with-benzo")).await;
    assert_eq!(cards.len(), 2);
    let at = chrono::Utc::now().to_rfc3339();
    let reason = Some((OURS, "patient-declines"));
    answer_at(&app, SIGN, &uuid_of(&cards[1]), "overridden", reason, &at).await;
    // A retry of the same answer is not counted twice.
    answer_at(&app, SIGN, &uuid_of(&cards[1]), "overridden", reason, &at).await;
    answer(&app, SIGN, &uuid_of(&cards[0]), "accepted", None).await;
    let get = |token: Option<&str>| {
        let mut r = app.client.get(format!("{}/admin/stats", app.base));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    let r = get(None).await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.expect("body").is_empty(), "a bare 401");
    let r = get(Some("admin-token-for-tests-0123456789abcdeX"))
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = get(Some(ADMIN_TOKEN)).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let stats: Value = r.json().await.expect("json");
    let co = &stats["rules"]["co-prescription"];
    assert_eq!(
        (co["shown"].as_i64(), co["overridden"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(co["override_reasons"]["patient-declines"], json!(1));
    let off = &stats["rules"]["off-ramp"];
    assert_eq!(
        (off["shown"].as_i64(), off["accepted"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        stats["prescribers"][0]["prescriber"],
        json!("Practitioner/dr-me")
    );
    assert_eq!(stats["prescribers"][0]["shown"], json!(2));
    assert_eq!(stats["top_tenth_override_share"], json!(1.0));

    // Without a configured token the admin endpoints do not exist.
    let plain = spawn_app_with(Setup::default()).await;
    let r = plain.get("/admin/stats").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Every key and value in the Redis, as text.
fn dump(redis: &RedisServer) -> String {
    let mut out = String::new();
    for key in redis.cli(&["--scan"]).lines() {
        out.push_str(key);
        out.push('\n');
        let value = match redis.cli(&["TYPE", key]).trim() {
            "string" => redis.cli(&["GET", key]),
            "hash" => redis.cli(&["HGETALL", key]),
            "stream" => redis.cli(&["XRANGE", key, "-", "+"]),
            other => format!("(unread type {other})"),
        };
        out.push_str(&value);
    }
    out
}

#[tokio::test]
async fn with_redis_replicas_share_snoozes_and_nothing_stored_names_the_patient() {
    let mut redis = RedisServer::start();
    // No session quiet: the override's snooze alone must be shared.
    let setup = || {
        let mut s = redis_setup(&redis);
        s.store.answered_quiet_seconds = 0;
        s
    };
    let a = spawn_app_with(setup()).await;
    let b = spawn_app_with(setup()).await;
    let patient = "patient-7f3e9c-raw-id";
    let select = with_patient(body("order-select-long-term-alprazolam"), patient, None);
    let cards = call(&a, SELECT, &select).await;
    assert_eq!(cards.len(), 1);
    let mut sign = select.clone();
    sign["hook"] = json!("order-sign");
    // Run-ahead is shared: the sign call reaches the other replica.
    let again = call(&b, SIGN, &sign).await;
    assert_eq!(uuid_of(&again[0]), uuid_of(&cards[0]));
    answer(
        &b,
        SIGN,
        &uuid_of(&cards[0]),
        "overridden",
        Some("patient-declines"),
    )
    .await;
    assert!(
        call(&a, SIGN, &sign).await.is_empty(),
        "snoozed on every replica"
    );

    let all = dump(&redis);
    assert!(all.contains("snooze:{"), "{all}");
    assert!(all.contains("runahead:"), "{all}");
    assert!(
        !all.contains(patient),
        "no key or value names the patient:\n{all}"
    );

    // A dead Redis: the snooze cannot be read, so the card is shown (never hidden by a fault).
    redis.kill();
    let cards = call(&a, SIGN, &sign).await;
    assert_eq!(cards.len(), 1, "fails toward showing the card");
}

#[tokio::test]
async fn only_a_complete_order_select_is_reused_at_order_sign() {
    let app = spawn_app_with(setup(0)).await;
    let full = body("order-select-long-term-alprazolam");
    let mut partial = full.clone();
    partial["prefetch"]["conditions"] = Value::Null;
    assert!(
        call(&app, SELECT, &partial).await.is_empty(),
        "conditions unknown: quiet"
    );
    let mut sign = full.clone();
    sign["hook"] = json!("order-sign");
    assert_eq!(
        call(&app, SIGN, &sign).await.len(),
        1,
        "the incomplete select result was not reused"
    );
}

#[tokio::test]
async fn cards_of_two_patients_never_share_a_uuid_and_answers_stay_with_their_patient() {
    let app = spawn_app_with(setup(0)).await;
    let a = body("order-sign-new-benzo-start");
    let b = with_patient(a.clone(), "pt-2", None);
    // An EHR that reuses a hookInstance.
    let instance = uuid::Uuid::new_v4().to_string();
    let card_a = call_as(&app, SIGN, &a, &instance).await;
    let card_b = call_as(&app, SIGN, &b, &instance).await;
    assert_ne!(uuid_of(&card_a[0]), uuid_of(&card_b[0]));
    answer(
        &app,
        SIGN,
        &uuid_of(&card_b[0]),
        "overridden",
        Some("short-course"),
    )
    .await;
    assert!(call(&app, SIGN, &b).await.is_empty());
    assert_eq!(
        call(&app, SIGN, &a).await.len(),
        1,
        "A is not snoozed by B's answer"
    );
}

#[tokio::test]
async fn a_naloxone_prompt_another_systems_reason_and_another_clinician_are_not_silenced() {
    let app = spawn_app_with(setup(0)).await;
    // Opioid + gabapentinoid always offers naloxone: an override does not snooze it.
    let gaba = body("order-sign-gabapentinoid-older");
    let cards = call(&app, SIGN, &gaba).await;
    assert_eq!(cards.len(), 1);
    answer(
        &app,
        SIGN,
        &uuid_of(&cards[0]),
        "overridden",
        Some("benefit-documented"),
    )
    .await;
    assert_eq!(call(&app, SIGN, &gaba).await.len(), 1);

    // A reason the card did not offer (another code system) does not snooze.
    let start = body("order-sign-new-benzo-start");
    let cards = call(&app, SIGN, &start).await;
    let at = chrono::Utc::now().to_rfc3339();
    let foreign = Some(("http://ehr.example.org/reasons", "short-course"));
    answer_at(&app, SIGN, &uuid_of(&cards[0]), "overridden", foreign, &at).await;
    assert_eq!(call(&app, SIGN, &start).await.len(), 1);

    // The session quiet is the answering clinician's: a colleague still sees the card.
    let session = spawn_app_with(setup(600)).await;
    let cards = call(&session, SIGN, &start).await;
    answer(&session, SIGN, &uuid_of(&cards[0]), "accepted", None).await;
    assert!(call(&session, SIGN, &start).await.is_empty());
    let mut colleague = start.clone();
    colleague["context"]["userId"] = json!("Practitioner/dr-other");
    assert_eq!(call(&session, SIGN, &colleague).await.len(), 1);
}
