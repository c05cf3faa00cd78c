//! The Redis store against a real redis-server of the test's own: what is stored and for how
//! long, idempotent feedback, the shared replay guard, and what happens when Redis dies and
//! comes back.

use offramp::auth::replay::ReplayGuard;
use offramp::protocol::Feedback;
use offramp::store::redis::{RedisReplayGuard, RedisSettings, RedisStore};
use offramp::store::{Backend, Store, StoreHealth, StoreSettings};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::app::{Setup, example, spawn_app_with};
use support::redis::RedisServer;

const DAY: u64 = 24 * 3600;

fn settings(redis: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: redis.url(),
        key_prefix: "t:".into(),
        breaker_cooldown_ms: 200,
        ..RedisSettings::default()
    }
}

fn feedback(card: &str, outcome: &str, ts: &str) -> Feedback {
    serde_json::from_value(json!({"card": card, "outcome": outcome, "outcomeTimestamp": ts,
        "overrideReason": {"reason": {"system": "http://offramp.health/fhir/CodeSystem/override-reason",
            "code": "patient-declines"}, "userComment": "Mrs Example said no"}}))
    .expect("feedback")
}

fn ttl(redis: &RedisServer, key: &str) -> i64 {
    redis.cli(&["TTL", key]).trim().parse().unwrap_or(-3)
}

#[tokio::test]
async fn each_item_is_stored_with_its_expiry_and_feedback_once() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&settings(&redis), Duration::from_secs(30 * DAY)).expect("store");
    assert_eq!(store.health().await, StoreHealth::Ok);

    store
        .put_calendar("cal-1", Arc::new("<html>plan</html>".into()))
        .await
        .expect("calendar");
    assert_eq!(
        store
            .get_calendar("cal-1")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("<html>plan</html>")
    );
    assert_eq!(store.get_calendar("nope").await.expect("get"), None);
    let t = ttl(&redis, "t:calendar:cal-1");
    assert!(
        (30 * DAY as i64 - 5..=30 * DAY as i64).contains(&t),
        "calendar ttl {t}"
    );

    // Replay guard: once, for the token's remaining lifetime.
    let now = 1_900_000_000;
    assert!(
        store
            .first_use("iss|jti-1", now + 120, now)
            .await
            .expect("first")
    );
    assert!(
        !store
            .first_use("iss|jti-1", now + 120, now)
            .await
            .expect("second")
    );
    let keys = redis.cli(&["KEYS", "t:replay:*"]);
    let key = keys.lines().next().expect("replay key").trim().to_string();
    assert!(!key.contains("jti-1"), "the jti is hashed: {key}");
    let t = ttl(&redis, &key);
    assert!((115..=120).contains(&t), "replay ttl {t}");

    // Feedback: an EHR's retry is not counted twice; a different outcome is another item.
    let a = feedback("card-1", "overridden", "2026-11-23T10:00:00Z");
    let b = feedback("card-1", "accepted", "2026-11-23T10:05:00Z");
    let first = store
        .put_feedback("offramp-order-sign", std::slice::from_ref(&a))
        .await
        .expect("put");
    assert_eq!((first.new, first.duplicates), (1, 0));
    let again = store
        .put_feedback("offramp-order-sign", &[a, b])
        .await
        .expect("put");
    assert_eq!((again.new, again.duplicates), (1, 1));
    assert_eq!(redis.cli(&["XLEN", "t:{feedback}:stream"]).trim(), "2");
    let entries = redis.cli(&["XRANGE", "t:{feedback}:stream", "-", "+"]);
    assert!(entries.contains("patient-declines"), "{entries}");
    assert!(
        !entries.contains("Mrs Example"),
        "free text is not stored: {entries}"
    );
    let seen = redis.cli(&["KEYS", "t:{feedback}:seen:*"]);
    let seen_key = seen.lines().next().expect("seen key").trim().to_string();
    assert!(ttl(&redis, &seen_key) > 89 * DAY as i64);
}

#[tokio::test]
async fn a_dead_redis_is_skipped_and_the_store_comes_back_by_itself() {
    let mut redis = RedisServer::start();
    let store =
        Arc::new(RedisStore::new(&settings(&redis), Duration::from_secs(DAY)).expect("store"));
    let guard = RedisReplayGuard::new(store.clone());
    let now = 1_900_000_000;
    assert!(guard.first_use("iss|a", now + 60, now).await);
    redis.kill();

    // Feedback is refused (the EHR retries) rather than acknowledged and lost.
    let item = feedback("card-2", "accepted", "2026-11-23T11:00:00Z");
    for _ in 0..3 {
        assert!(
            store
                .put_feedback("offramp-order-sign", std::slice::from_ref(&item))
                .await
                .is_err()
        );
    }
    assert!(store.circuit_open(), "three failures open the circuit");
    // While open, Redis is not asked at all.
    let t = Instant::now();
    for _ in 0..1000 {
        assert!(store.get_calendar("x").await.is_err());
    }
    eprintln!("1000 calls with the circuit open: {:?}", t.elapsed());
    assert_eq!(store.health().await, StoreHealth::Degraded);
    // The replay guard falls back to this replica's memory: still one use per token.
    assert!(guard.first_use("iss|b", now + 60, now).await);
    assert!(!guard.first_use("iss|b", now + 60, now).await);
    assert!(
        !guard.first_use("iss|a", now + 60, now).await,
        "remembered locally too"
    );

    redis.restart();
    let t = Instant::now();
    let mut back = false;
    while t.elapsed() < Duration::from_secs(10) {
        if store
            .put_feedback("offramp-order-sign", std::slice::from_ref(&item))
            .await
            .is_ok()
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "reconnected without a restart of the service");
    assert_eq!(store.health().await, StoreHealth::Ok);
    assert_eq!(redis.cli(&["XLEN", "t:{feedback}:stream"]).trim(), "1");
}

#[tokio::test]
async fn replicas_share_the_replay_guard_and_keep_answering_without_redis() {
    let mut redis = RedisServer::start();
    let store = StoreSettings {
        backend: Backend::Redis,
        redis: settings(&redis),
    };
    let setup = || Setup {
        store: store.clone(),
        ..Setup::default()
    };
    let a = spawn_app_with(setup()).await;
    let b = spawn_app_with(setup()).await;
    let body = example("order-sign-opioid-with-benzo");
    let path = "/cds-services/offramp-order-sign";
    // The same token to two replicas (their aud differs by port, so sign one for each
    // replica with the same jti).
    let jti = uuid::Uuid::new_v4().to_string();
    let signed = |app: &support::app::App| {
        let t = support::app::now();
        let claims = json!({"iss": support::app::ISS, "aud": format!("{}{path}", app.base),
            "iat": t, "exp": t + 60, "jti": jti});
        format!("Bearer {}", app.key.sign(&claims))
    };
    let post = |app: &support::app::App, auth: String| {
        app.client
            .post(format!("{}{path}", app.base))
            .header("content-type", "application/json")
            .header("authorization", auth)
            .body(body.clone())
            .send()
    };
    assert_eq!(
        post(&a, signed(&a)).await.expect("send").status(),
        StatusCode::OK
    );
    assert_eq!(
        post(&b, signed(&b)).await.expect("send").status(),
        StatusCode::UNAUTHORIZED,
        "a jti used at one replica is refused at the other"
    );

    // Redis down: hooks still answered, feedback refused with 503 (never acknowledged and lost).
    redis.kill();
    for _ in 0..5 {
        let r = a.post(path, &body, "application/json", true).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let fb = json!({"feedback": [{"card": "c-1", "outcome": "accepted",
        "outcomeTimestamp": "2026-11-23T12:00:00Z"}]})
    .to_string();
    let r = a
        .post(&format!("{path}/feedback"), &fb, "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: serde_json::Value = a.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["store_health"], json!("degraded"));

    redis.restart();
    let t = Instant::now();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    while t.elapsed() < Duration::from_secs(10) && status != StatusCode::OK {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = a
            .post(&format!("{path}/feedback"), &fb, "application/json", true)
            .await
            .status();
    }
    assert_eq!(status, StatusCode::OK);
    assert_eq!(redis.cli(&["XLEN", "t:{feedback}:stream"]).trim(), "1");
}
