//! The Redis store against a real redis-server of the test's own: what is stored and for how
//! long, idempotent feedback, the shared replay guard, and what happens when Redis dies and
//! comes back.

use offramp::auth::replay::ReplayGuard;
use offramp::protocol::Feedback;
use offramp::rules::quiet::{RiskMark, Snooze, SnoozeKind};
use offramp::store::redis::{RedisReplayGuard, RedisSettings, RedisStore};
use offramp::store::stats::summarise;
use offramp::store::{
    Backend, CardNote, FeedbackItem, MemoryStore, Store, StoreHealth, StoreSettings,
};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::app::{Setup, example, spawn_app_with};
use support::redis::RedisServer;
use support::redis_cluster::RedisCluster;

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

/// Feedback attributed to a rule and prescriber, as the handler passes it.
fn item(f: &Feedback) -> FeedbackItem<'_> {
    FeedbackItem {
        feedback: f,
        rule: "off-ramp",
        prescriber: "Practitioner/p1",
    }
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
        .put_feedback("offramp-order-sign", &[item(&a)])
        .await
        .expect("put");
    assert_eq!((first.new, first.duplicates), (1, 0));
    let again = store
        .put_feedback("offramp-order-sign", &[item(&a), item(&b)])
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
    let fb = feedback("card-2", "accepted", "2026-11-23T11:00:00Z");
    for _ in 0..3 {
        assert!(
            store
                .put_feedback("offramp-order-sign", &[item(&fb)])
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
            .put_feedback("offramp-order-sign", &[item(&fb)])
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
        patient_key: offramp::store::Secret("k".repeat(32)),
        ..StoreSettings::default()
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

fn note(rule: &str, prescriber: &str) -> CardNote {
    CardNote {
        rule: rule.into(),
        patient: "0123456789abcdef0123456789abcdef".into(),
        prescriber: Some(prescriber.into()),
        mark: RiskMark {
            level: 1,
            signals: ["drug:6470".to_string()].into_iter().collect(),
            dose: Some(10.0),
            with_opioid: false,
            naloxone_missing: false,
            opioid_ordered: false,
        },
    }
}

/// The same operations on every backend: shown cards noted and counted once, feedback stored
/// and counted once, snoozes of both kinds, run-ahead entries.
async fn contract(store: &dyn Store) {
    let a = note("off-ramp", "Practitioner/p1");
    let b = note("co-prescription", "Practitioner/p2");
    let cards = [("card-a".to_string(), a.clone()), ("card-b".to_string(), b)];
    store
        .note_cards(&cards, Duration::from_secs(DAY))
        .await
        .expect("note");
    // A retried call (or run-ahead served at sign) shows the same cards: not counted again.
    store
        .note_cards(&cards[..1], Duration::from_secs(DAY))
        .await
        .expect("note again");
    assert_eq!(store.card_note("card-a").await.expect("read"), Some(a));
    assert_eq!(store.card_note("card-zzz").await.expect("read"), None);

    let fb = feedback("card-a", "overridden", "2026-11-23T10:00:00Z");
    let items = [item(&fb)];
    let first = store.put_feedback("svc", &items).await.expect("put");
    let again = store.put_feedback("svc", &items).await.expect("retry");
    assert_eq!((first.new, again.duplicates), (1, 1));

    let stats = summarise(&store.counts().await.expect("counts"));
    let off = &stats.rules["off-ramp"];
    assert_eq!(
        (off.tally.shown, off.tally.accepted, off.tally.overridden),
        (1, 0, 1)
    );
    // Counted by the code the card offered.
    assert_eq!(off.override_reasons.get("patient-declines"), Some(&1));
    assert_eq!(stats.rules["co-prescription"].tally.shown, 1);
    let p1 = stats
        .prescribers
        .iter()
        .find(|p| p.prescriber == "Practitioner/p1")
        .expect("p1");
    assert_eq!((p1.tally.shown, p1.tally.overridden), (1, 1));
    assert_eq!(
        stats.prescribers[0].prescriber, "Practitioner/p1",
        "most overrides first"
    );

    // Snoozes: one of each kind per rule and patient; a new one replaces its kind.
    let patient = "fedcba9876543210fedcba9876543210";
    let snooze = |kind, until| Snooze {
        kind,
        mark: note("off-ramp", "x").mark,
        until,
        by: None,
    };
    for (kind, until) in [
        (SnoozeKind::Answered, 100),
        (SnoozeKind::Answered, 200),
        (SnoozeKind::Overridden, 300),
    ] {
        store
            .put_snooze(
                patient,
                "off-ramp",
                &snooze(kind, until),
                Duration::from_secs(DAY),
            )
            .await
            .expect("snooze");
    }
    let found = store
        .snoozes(patient, &["co-prescription", "off-ramp"])
        .await
        .expect("snoozes");
    assert_eq!(found.len(), 2);
    assert!(found[0].is_empty());
    let mut untils: Vec<i64> = found[1].iter().map(|s| s.until).collect();
    untils.sort();
    assert_eq!(untils, vec![200, 300]);
    assert!(
        store
            .snoozes("another-patient", &["off-ramp"])
            .await
            .expect("snoozes")[0]
            .is_empty()
    );

    // Run-ahead entries are opaque bytes (sealed by the caller).
    let entry = [0u8, 1, 2, 255, b'{'];
    store
        .put_run_ahead("p:digest", &entry, Duration::from_secs(60))
        .await
        .expect("run-ahead");
    assert_eq!(
        store.run_ahead("p:digest").await.expect("read").as_deref(),
        Some(&entry[..])
    );
    assert_eq!(store.run_ahead("p:other").await.expect("read"), None);
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract_and_its_expiries() {
    let store = MemoryStore::new(Duration::from_secs(DAY));
    contract(&store).await;
    let s = Snooze {
        kind: SnoozeKind::Answered,
        mark: note("on-ramp", "x").mark,
        until: 1,
        by: None,
    };
    store
        .put_snooze("p", "on-ramp", &s, Duration::from_millis(30))
        .await
        .expect("snooze");
    store
        .put_run_ahead("k", b"x", Duration::from_millis(30))
        .await
        .expect("run-ahead");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(store.snoozes("p", &["on-ramp"]).await.expect("read")[0].is_empty());
    assert_eq!(store.run_ahead("k").await.expect("read"), None);
}

#[tokio::test]
async fn redis_keeps_the_contract_with_its_expiries() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&settings(&redis), Duration::from_secs(DAY)).expect("store");
    contract(&store).await;
    let ttl_of = |pattern: &str| {
        let keys = redis.cli(&["KEYS", pattern]);
        let key = keys.lines().next().expect(pattern).trim().to_string();
        ttl(&redis, &key)
    };
    assert!((DAY as i64 - 5..=DAY as i64).contains(&ttl_of("t:{feedback}:card:*")));
    assert!((DAY as i64 - 5..=DAY as i64).contains(&ttl_of("t:snooze:*:off-ramp:overridden")));
    assert!((55..=60).contains(&ttl_of("t:runahead:*")));
    assert_eq!(ttl(&redis, "t:{feedback}:counts"), -1, "counts are kept");
}

#[tokio::test]
async fn a_redis_cluster_keeps_the_contract_across_nodes() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(
        &RedisSettings {
            cluster_nodes: cluster.urls(),
            key_prefix: "c:".into(),
            // A new cluster's first connections can be slow on a busy machine.
            response_timeout_ms: 1000,
            ..RedisSettings::default()
        },
        Duration::from_secs(DAY),
    )
    .expect("store");
    // The first commands may race the background connection.
    let t = Instant::now();
    while store.health().await != StoreHealth::Ok && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    contract(&store).await;
    // Many patients: their snoozes spread over the nodes, and each patient's MGET still works.
    let mark = note("off-ramp", "x").mark;
    for i in 0..30 {
        let patient = format!("{i:032x}");
        let s = Snooze {
            kind: SnoozeKind::Overridden,
            mark: mark.clone(),
            until: i,
            by: Some("Practitioner/p1".into()),
        };
        store
            .put_snooze(&patient, "off-ramp", &s, Duration::from_secs(60))
            .await
            .expect("snooze");
        let got = store
            .snoozes(&patient, &["off-ramp", "on-ramp"])
            .await
            .expect("mget in one slot");
        assert_eq!(got[0].first().map(|s| s.until), Some(i));
    }
    assert_eq!(cluster.nodes_with_keys(), 3, "keys on every node");
    let entries = cluster.cli(&["XLEN", "c:{feedback}:stream"]);
    assert_eq!(entries.trim(), "1");
    let keys = cluster.keys();
    assert!(keys.iter().all(|k| k.starts_with("c:")), "{keys:?}");
}

#[tokio::test]
async fn rediss_is_verified_and_a_private_ca_can_be_given() {
    let tls = support::TlsFiles::new();
    let (dir, cert) = (&tls.dir, &tls.cert);
    let redis = RedisServer::start_tls(cert, &tls.key);
    assert!(redis.url().starts_with("rediss://"));

    // The private CA given: the whole store works over TLS.
    let trusting = RedisStore::new(
        &RedisSettings {
            ca_file: Some(cert.clone()),
            ..settings(&redis)
        },
        Duration::from_secs(DAY),
    )
    .expect("store");
    assert_eq!(trusting.health().await, StoreHealth::Ok);
    contract(&trusting).await;
    assert_eq!(redis.cli(&["XLEN", "t:{feedback}:stream"]).trim(), "1");

    // Without it the certificate is not trusted: no command gets through, hook calls would
    // see a degraded store, never a plain-text fallback.
    let strict = RedisStore::new(&settings(&redis), Duration::from_secs(DAY)).expect("store");
    assert_eq!(strict.health().await, StoreHealth::Degraded);
    assert!(strict.get_calendar("x").await.is_err());

    // A CA beside a plain redis:// URL is a mistake, refused at start (and by check-config).
    let plain = RedisSettings {
        url: "redis://127.0.0.1:6379/0".into(),
        ca_file: Some(cert.clone()),
        ..RedisSettings::default()
    };
    let refused = RedisStore::new(&plain, Duration::from_secs(DAY)).err();
    assert!(refused.is_some_and(|e| e.contains("rediss://")));
    let toml = dir.join("offramp.toml");
    std::fs::write(
        &toml,
        "[store]\nbackend = \"redis\"\npatient_key = \"patient-key-for-tests-0123456789abcdef\"\n\
         [store.redis]\nurl = \"redis://127.0.0.1:6379/0\"\nca_file = \"ca.pem\"\n",
    )
    .expect("write");
    let check = |extra: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_offramp"))
            .args(["check-config", "--config"])
            .arg(&toml)
            .envs(extra.iter().copied())
            .output()
            .expect("offramp")
    };
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rediss://"));
    // The same file with a rediss:// URL: ca_file is found beside the config file.
    let out = check(&[("OFFRAMP__STORE__REDIS__URL", redis.url().as_str())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
