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
    let mut body = body.clone();
    body["hookInstance"] = json!(uuid::Uuid::new_v4().to_string());
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

async fn answer(app: &App, service_path: &str, card: &str, outcome: &str, reason: Option<&str>) {
    let mut item = json!({"card": card, "outcome": outcome,
        "outcomeTimestamp": chrono::Utc::now().to_rfc3339()});
    if let Some(code) = reason {
        item["overrideReason"] = json!({"reason": {"code": code,
            "system": "http://offramp.health/fhir/CodeSystem/override-reason"}});
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
    answer(
        &app,
        SIGN,
        &uuid_of(&cards[1]),
        "overridden",
        Some("patient-declines"),
    )
    .await;
    answer(&app, SIGN, &uuid_of(&cards[0]), "accepted", None).await;
    // A retry of the same answer is not counted twice.
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
    assert_eq!(
        co["override_reasons"]["http://offramp.health/fhir/CodeSystem/override-reason|patient-declines"],
        json!(1)
    );
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
    let a = spawn_app_with(redis_setup(&redis)).await;
    let b = spawn_app_with(redis_setup(&redis)).await;
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
