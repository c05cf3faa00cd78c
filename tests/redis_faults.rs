//! Fault test: redis-server is killed (SIGKILL) during a bounded load of hook calls and feedback
//! posts, then restarted on the same port. Counts hook responses that were not 200 (goal 0) and
//! feedback acknowledged (200) but missing from the stream afterwards (must be 0).
//!
//! The load is bounded in count (WORKERS x ITERATIONS hook calls and as many feedback items, each
//! retried at most MAX_ATTEMPTS times) and in time (OVERALL). The redis-server is persistent (an
//! append-only file fsynced before each reply), as a production one must be for an
//! acknowledgement to mean anything after a crash.

use offramp::store::redis::RedisSettings;
use offramp::store::{Backend, StoreSettings};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod support;
use support::app::{App, Setup, example, spawn_app_with};
use support::redis::RedisServer;

const WORKERS: usize = 6;
const ITERATIONS: usize = 50;
const HOOKS: usize = WORKERS * ITERATIONS;
/// Between iterations of a worker, so the load spans the outage.
const PACE: Duration = Duration::from_millis(20);
/// An EHR's retries of one feedback item after a 503, with a doubling backoff up to MAX_BACKOFF.
const MAX_ATTEMPTS: u32 = 40;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(400);
/// Redis stays down at least this long, and until half the hook calls are made.
const MIN_DOWN: Duration = Duration::from_millis(1200);
/// Everything (load, kill, restart, retries) stops by then.
const OVERALL: Duration = Duration::from_secs(60);

const SERVICE: &str = "offramp-order-sign";
const HOOK: &str = "/cds-services/offramp-order-sign";
const FEEDBACK: &str = "/cds-services/offramp-order-sign/feedback";

/// Where the fault stood when a response arrived.
const BEFORE: usize = 0;
const DOWN: usize = 1;
const AFTER: usize = 2;

struct Shared {
    phase: AtomicUsize,
    hooks_done: AtomicUsize,
}

impl Shared {
    fn phase(&self) -> usize {
        self.phase.load(Ordering::SeqCst)
    }
}

/// One feedback item, as the stream should hold it: (card, outcome, outcome_timestamp).
type Key = (String, String, String);

struct Pending {
    key: Key,
    body: String,
    attempts: u32,
    due: Instant,
}

#[derive(Default)]
struct Report {
    hooks: [usize; 3],
    hooks_not_ok: Vec<(StatusCode, usize)>,
    hook_max: Duration,
    sent: usize,
    acked: Vec<(Key, usize)>,
    unavailable: [usize; 3],
    other: Vec<StatusCode>,
    gave_up: Vec<Key>,
}

impl Report {
    fn add(&mut self, o: Report) {
        for p in 0..3 {
            self.hooks[p] += o.hooks[p];
            self.unavailable[p] += o.unavailable[p];
        }
        self.hooks_not_ok.extend(o.hooks_not_ok);
        self.hook_max = self.hook_max.max(o.hook_max);
        self.sent += o.sent;
        self.acked.extend(o.acked);
        self.other.extend(o.other);
        self.gave_up.extend(o.gave_up);
    }

    fn acked_in(&self, phase: usize) -> usize {
        self.acked.iter().filter(|(_, p)| *p == phase).count()
    }
}

/// A unique card and timestamp per (worker, iteration); every other one overridden with a reason.
fn item(worker: usize, i: usize) -> Pending {
    let card = uuid::Uuid::new_v4().to_string();
    let n = (worker * ITERATIONS + i) as i64;
    let ts = (chrono::DateTime::parse_from_rfc3339("2026-11-23T09:00:00Z").expect("ts")
        + chrono::Duration::milliseconds(n * 1001))
    .to_utc()
    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let outcome = if i.is_multiple_of(2) {
        "accepted"
    } else {
        "overridden"
    };
    let mut fb = json!({"card": card, "outcome": outcome, "outcomeTimestamp": ts});
    if outcome == "overridden" {
        fb["overrideReason"] = json!({"reason": {
            "system": "http://offramp.health/fhir/CodeSystem/override-reason",
            "code": "patient-declines"}});
    }
    Pending {
        key: (card, outcome.into(), ts),
        body: json!({ "feedback": [fb] }).to_string(),
        attempts: 0,
        due: Instant::now(),
    }
}

/// One attempt; a 503 is retried later (as an EHR would) until MAX_ATTEMPTS.
async fn post_feedback(
    app: &App,
    shared: &Shared,
    mut p: Pending,
    report: &mut Report,
    pending: &mut Vec<Pending>,
) {
    p.attempts += 1;
    let r = app.post(FEEDBACK, &p.body, "application/json", true).await;
    let status = r.status();
    let _ = r.bytes().await;
    let phase = shared.phase();
    match status {
        StatusCode::OK => report.acked.push((p.key, phase)),
        StatusCode::SERVICE_UNAVAILABLE => {
            report.unavailable[phase] += 1;
            if p.attempts >= MAX_ATTEMPTS {
                report.gave_up.push(p.key);
            } else {
                let backoff = (FIRST_BACKOFF * 2u32.pow(p.attempts.min(8) - 1)).min(MAX_BACKOFF);
                p.due = Instant::now() + backoff;
                pending.push(p);
            }
        }
        other => report.other.push(other),
    }
}

async fn worker(app: Arc<App>, shared: Arc<Shared>, w: usize) -> Report {
    let body = example("order-sign-opioid-with-benzo");
    let mut report = Report::default();
    let mut pending: Vec<Pending> = Vec::new();
    for i in 0..ITERATIONS {
        let t = Instant::now();
        let r = app.post(HOOK, &body, "application/json", true).await;
        let status = r.status();
        let _ = r.bytes().await;
        report.hook_max = report.hook_max.max(t.elapsed());
        let phase = shared.phase();
        report.hooks[phase] += 1;
        if status != StatusCode::OK {
            report.hooks_not_ok.push((status, phase));
        }
        shared.hooks_done.fetch_add(1, Ordering::SeqCst);

        report.sent += 1;
        post_feedback(&app, &shared, item(w, i), &mut report, &mut pending).await;
        let now = Instant::now();
        let due: Vec<Pending> = pending.extract_if(.., |p| p.due <= now).collect();
        for p in due {
            post_feedback(&app, &shared, p, &mut report, &mut pending).await;
        }
        tokio::time::sleep(PACE).await;
    }
    // The hook calls are done; the retries go on until each item is acknowledged or given up.
    while let Some(next) = pending.iter().map(|p| p.due).min() {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        let due: Vec<Pending> = pending.extract_if(.., |p| p.due <= now).collect();
        for p in due {
            post_feedback(&app, &shared, p, &mut report, &mut pending).await;
        }
    }
    report
}

/// Every entry of the feedback stream, by (card, outcome, outcome_timestamp).
async fn stream_entries(redis: &RedisServer, stream: &str) -> HashMap<Key, usize> {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("xrange");
    let mut by_key = HashMap::new();
    for (_, fields) in entries {
        let f: HashMap<&str, &str> = fields
            .chunks(2)
            .map(|kv| (kv[0].as_str(), kv[1].as_str()))
            .collect();
        assert_eq!(f.get("service"), Some(&SERVICE), "{f:?}");
        let key = (
            f["card"].to_string(),
            f["outcome"].to_string(),
            f["outcome_timestamp"].to_string(),
        );
        *by_key.entry(key).or_insert(0) += 1;
    }
    by_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_redis_under_load_loses_no_acknowledged_feedback_and_no_hook_call() {
    let redis = RedisServer::start_persistent();
    let prefix = format!("faults-{}:", uuid::Uuid::new_v4());
    let stream = format!("{prefix}{{feedback}}:stream");
    let app = Arc::new(
        spawn_app_with(Setup {
            store: StoreSettings {
                backend: Backend::Redis,
                redis: RedisSettings {
                    url: redis.url(),
                    key_prefix: prefix,
                    breaker_cooldown_ms: 200,
                    ..RedisSettings::default()
                },
                ..StoreSettings::default()
            },
            ..Setup::default()
        })
        .await,
    );
    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(BEFORE),
        hooks_done: AtomicUsize::new(0),
    });

    let start = Instant::now();
    let run = async {
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            workers.spawn(worker(app.clone(), shared.clone(), w));
        }
        let done = || shared.hooks_done.load(Ordering::SeqCst);
        // Kill a quarter of the way through the hook calls.
        while done() < HOOKS / 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed_at = start.elapsed();
        let mut redis = tokio::task::spawn_blocking(move || {
            let mut redis = redis;
            redis.kill();
            redis
        })
        .await
        .expect("kill");
        shared.phase.store(DOWN, Ordering::SeqCst);
        // Down for a while, under load, and until half the hook calls are made.
        let down = Instant::now();
        while down.elapsed() < MIN_DOWN || done() < HOOKS / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let metrics_down = app.get("/metrics").await.text().await.expect("metrics");
        redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .expect("restart");
        shared.phase.store(AFTER, Ordering::SeqCst);
        let down_for = down.elapsed();
        let mut report = Report::default();
        while let Some(r) = workers.join_next().await {
            report.add(r.expect("worker"));
        }
        let metrics_after = app.get("/metrics").await.text().await.expect("metrics");
        (
            redis,
            report,
            killed_at,
            down_for,
            [metrics_down, metrics_after],
        )
    };
    let (redis, report, killed_at, down_for, [metrics_down, metrics_after]) =
        tokio::time::timeout(OVERALL, run)
            .await
            .expect("the fault test finishes within its time bound");
    let duration = start.elapsed();
    // What an operator's dashboard showed: Redis down and the breaker open while it was dead,
    // both back once it was restarted and answered.
    let gauge = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    assert_eq!(
        gauge(&metrics_down, "offramp_redis_up"),
        Some(0.0),
        "{metrics_down}"
    );
    assert_eq!(
        gauge(&metrics_down, "offramp_redis_breaker_open"),
        Some(1.0)
    );
    assert_eq!(gauge(&metrics_after, "offramp_redis_up"), Some(1.0));
    assert_eq!(
        gauge(&metrics_after, "offramp_redis_breaker_open"),
        Some(0.0)
    );

    let stored = stream_entries(&redis, &stream).await;
    let missing: Vec<&Key> = report
        .acked
        .iter()
        .filter(|(k, _)| !stored.contains_key(k))
        .map(|(k, _)| k)
        .collect();
    let missing_acked_before_kill = report
        .acked
        .iter()
        .filter(|(k, p)| *p == BEFORE && !stored.contains_key(k))
        .count();
    let duplicates: Vec<(&Key, &usize)> = stored.iter().filter(|(_, n)| **n > 1).collect();
    let acked: std::collections::HashSet<&Key> = report.acked.iter().map(|(k, _)| k).collect();
    let gave_up: std::collections::HashSet<&Key> = report.gave_up.iter().collect();
    let unknown = stored
        .keys()
        .filter(|k| !acked.contains(k) && !gave_up.contains(k))
        .count();
    let hooks: usize = report.hooks.iter().sum();
    let unavailable: usize = report.unavailable.iter().sum();
    println!(
        "redis_faults: hooks {hooks} (non-200 {}; before/down/after {:?}; slowest {:?}), \
         feedback sent {}, acknowledged {} (before/down/after {}/{}/{}), 503s {unavailable} \
         (before/down/after {:?}), other statuses {}, gave up {}, stream entries {}, \
         missing {} (acknowledged before the kill {missing_acked_before_kill}), \
         duplicates {}, unknown {unknown}, killed at {killed_at:?}, down {down_for:?}, \
         duration {duration:?}",
        report.hooks_not_ok.len(),
        report.hooks,
        report.hook_max,
        report.sent,
        report.acked.len(),
        report.acked_in(BEFORE),
        report.acked_in(DOWN),
        report.acked_in(AFTER),
        report.unavailable,
        report.other.len(),
        report.gave_up.len(),
        stored.len(),
        missing.len(),
        duplicates.len(),
    );

    // The load was bounded and complete.
    assert_eq!(hooks, HOOKS);
    assert_eq!(report.sent, HOOKS);
    // The kill happened in the middle of the load, not before or after it.
    assert!(report.hooks[BEFORE] > 0, "hook calls before the kill");
    assert!(report.hooks[DOWN] > 0, "hook calls while Redis was down");
    assert!(report.hooks[AFTER] > 0, "hook calls after the restart");
    assert!(
        report.acked_in(BEFORE) > 0,
        "feedback stored before the kill"
    );
    assert!(
        report.unavailable[DOWN] > 0,
        "feedback refused while Redis was down"
    );
    assert!(
        report.acked_in(AFTER) > 0,
        "feedback stored after the restart"
    );
    // Hook calls never depend on Redis.
    assert_eq!(
        report.hooks_not_ok,
        vec![],
        "hook responses that were not 200"
    );
    // Feedback is acknowledged only once stored, and then kept, once.
    assert_eq!(missing, Vec::<&Key>::new(), "acknowledged but missing");
    assert_eq!(duplicates, vec![], "stored more than once");
    assert_eq!(unknown, 0, "stream entries this test did not send");
    assert_eq!(
        report.other,
        Vec::<StatusCode>::new(),
        "feedback answers other than 200/503"
    );
    // Redis came back, so every retried item was eventually acknowledged.
    assert_eq!(report.gave_up, Vec::<Key>::new(), "feedback given up");
    assert_eq!(report.acked.len(), HOOKS);
    assert_eq!(stored.len(), HOOKS);
}
