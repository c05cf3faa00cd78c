//! Black-box tests of the HTTP surface: the real router on port 0, called as an EHR would, with
//! JWTs minted here; and one smoke test of the compiled binary (serve + healthcheck + SIGTERM).

use offramp::http::Limits;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;

mod support;
use support::app::{App, example, spawn_app};

#[tokio::test]
async fn discovery_needs_no_token_and_lists_both_services() {
    let app = spawn_app(Limits::default()).await;
    for auth in [None, Some("Bearer whatever")] {
        let mut r = app.client.get(format!("{}/cds-services", app.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = resp.json().await.expect("json");
        let ids: Vec<&str> = v["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, ["offramp-order-select", "offramp-order-sign"]);
        assert!(v["services"][0]["prefetch"]["patient"].is_string());
    }
}

#[tokio::test]
async fn every_example_gets_the_same_cards_as_the_cli() {
    let app = spawn_app(Limits::default()).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cds-hooks/examples/requests");
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("dir") {
        let path = e.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if !name.ends_with(".json") || name.ends_with(".expected.json") {
            continue;
        }
        let body = std::fs::read_to_string(&path).expect("read");
        let hook = serde_json::from_str::<Value>(&body).expect("json")["hook"]
            .as_str()
            .expect("hook")
            .to_string();
        let resp = app
            .post(
                &format!("/cds-services/offramp-{hook}"),
                &body,
                "application/json",
                true,
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        let got: Value = resp.json().await.expect("json");
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(path.with_extension("expected.json")).expect("expected"),
        )
        .expect("json");
        let summaries = |v: &Value| -> Vec<String> {
            v["cards"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| c["summary"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let indicators = |v: &Value| -> Vec<String> {
            v["cards"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| c["indicator"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            indicators(&got),
            indicators(&expected),
            "{name}: {:?}",
            summaries(&got)
        );
        n += 1;
    }
    assert!(n >= 10);
}

#[tokio::test]
async fn errors_have_the_right_status_and_say_which_field() {
    let app = spawn_app(Limits {
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    })
    .await;
    let sign = "/cds-services/offramp-order-sign";
    let good = example("order-sign-new-benzo-start");

    let r = app.post(sign, &good, "application/json", false).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer"))
    );
    assert!(r.text().await.expect("body").is_empty(), "401 is bare");

    let r = app
        .post("/cds-services/nope", &good, "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = app
        .client
        .get(format!("{}{sign}", app.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    let r = app.post(sign, &good, "text/plain", true).await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let r = app
        .post(
            sign,
            "{\"hook\": \"order-sign\", secret-patient-name",
            "application/json",
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let text = r.text().await.expect("body");
    assert!(
        !text.contains("secret-patient-name"),
        "the body is never echoed: {text}"
    );

    let mut wrong: Value = serde_json::from_str(&good).expect("json");
    wrong["context"]["patientId"] = json!(12345);
    let r = app
        .post(sign, &wrong.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["message"].as_str().unwrap_or("").contains("patientId"),
        "{v}"
    );

    let mut mismatch: Value = serde_json::from_str(&good).expect("json");
    mismatch["hook"] = json!("order-select");
    let r = app
        .post(sign, &mismatch.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024));
    let r = app.post(sign, &huge, "application/json", true).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = r.json().await.expect("json error body");
    assert_eq!(v["error"], "body_too_large");

    // A medication order with none of the medication history prefetched (and no FHIR fetch): 412.
    let mut no_data: Value = serde_json::from_str(&good).expect("json");
    no_data.as_object_mut().expect("obj").remove("prefetch");
    let r = app
        .post(sign, &no_data.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // Part missing (null) is evaluated with what is there.
    let mut part: Value = serde_json::from_str(&good).expect("json");
    part["prefetch"]["medicationDispenses"] = Value::Null;
    let r = app
        .post(sign, &part.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Real clients send no draftOrders, or a draft without a medication yet: 200, no cards.
    let mut none: Value = serde_json::from_str(&good).expect("json");
    none["context"]
        .as_object_mut()
        .expect("ctx")
        .remove("draftOrders");
    let r = app
        .post(sign, &none.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"cards": []}));
}

#[tokio::test]
async fn the_same_token_cannot_be_replayed() {
    let app = spawn_app(Limits::default()).await;
    let path = "/cds-services/offramp-order-sign";
    let token = app.token(path);
    let body = example("order-sign-new-benzo-start");
    let send = || {
        app.client
            .post(format!("{}{path}", app.base))
            .header("content-type", "application/json")
            .header("authorization", token.clone())
            .body(body.clone())
            .send()
    };
    assert_eq!(send().await.expect("send").status(), StatusCode::OK);
    assert_eq!(
        send().await.expect("send").status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn feedback_is_validated_and_acknowledged() {
    let app = spawn_app(Limits::default()).await;
    let path = "/cds-services/offramp-order-sign/feedback";
    let fb = json!({"feedback": [{"card": "c1", "outcome": "overridden",
        "overrideReason": {"reason": {"system": "http://offramp.health/fhir/CodeSystem/override-reason", "code": "short-course"}},
        "outcomeTimestamp": "2026-11-23T10:00:00Z"}]});
    let r = app
        .post(path, &fb.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let stored = app.store.feedback();
    assert_eq!(stored.len(), 1, "acknowledged means stored");
    assert_eq!(stored[0].0, "offramp-order-sign");
    let reason = stored[0]
        .1
        .override_reason
        .as_ref()
        .and_then(|r| r.reason.as_ref());
    assert_eq!(reason.map(|c| c.code.as_str()), Some("short-course"));
    let bad = json!({"feedback": [{"card": "c1", "outcome": "maybe", "outcomeTimestamp": "x"}]});
    let r = app
        .post(path, &bad.to_string(), "application/json", true)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.store.feedback().len(),
        1,
        "nothing stored from a refused request"
    );
    let r = app
        .post(path, &fb.to_string(), "application/json", false)
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cors_preflight_and_request_ids() {
    let app = spawn_app(Limits::default()).await;
    let r = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/cds-services/offramp-order-sign", app.base),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("send");
    assert!(r.status().is_success());
    let allow = r
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        allow.contains("authorization") && allow.contains("content-type"),
        "{allow}"
    );
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-42")
    );
    let r = app.get("/healthz").await;
    assert!(
        r.headers().get("x-request-id").is_some(),
        "one is made when none is sent"
    );
}

#[tokio::test]
async fn shutdown_stops_the_server_cleanly() {
    let mut app = spawn_app(Limits::default()).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    if let Some(stop) = app.stop.take() {
        let _ = stop.send(());
    }
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), &mut app.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "server ended cleanly");
    assert!(
        app.client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[test]
fn the_binary_serves_and_answers_its_healthcheck() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_offramp");
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut addr = None;
    for line in std::io::BufReader::new(stdout).lines().take(50) {
        let line = line.expect("line");
        if let Some(a) = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["fields"]["address"].as_str().map(String::from))
        {
            addr = Some(a);
            break;
        }
    }
    let addr = addr.expect("the bound address is logged");
    let ok = std::process::Command::new(bin)
        .args(["healthcheck", "--url", &format!("http://{addr}/healthz")])
        .status()
        .expect("healthcheck");
    assert!(ok.success());
    // SIGTERM: a clean exit.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let down = std::process::Command::new(bin)
        .args(["healthcheck", "--url", &format!("http://{addr}/healthz")])
        .status()
        .expect("healthcheck");
    assert!(!down.success(), "healthcheck fails when nothing listens");
}

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw(app: &App) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

async fn read_some(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = spawn_app(Limits {
        header_read_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut s = raw(&app).await;
    s.write_all(b"POST /cds-services/offramp-order-sign HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let got = read_some(&mut s, std::time::Duration::from_secs(3)).await;
    assert!(
        got.is_some(),
        "the server closed the connection (or answered) instead of waiting forever"
    );
    // The server is still serving others.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_one_megabyte_header_is_refused() {
    let app = spawn_app(Limits::default()).await;
    let mut s = raw(&app).await;
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let _ = s.write_all(head.as_bytes()).await;
    let got = read_some(&mut s, std::time::Duration::from_secs(3))
        .await
        .unwrap_or_default();
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
}

#[tokio::test]
async fn a_saturated_server_answers_503_at_once() {
    let app = spawn_app(Limits {
        max_concurrent_requests: 1,
        ..Limits::default()
    })
    .await;
    // One request holds the only slot: its body never completes.
    let mut s = raw(&app).await;
    s.write_all(b"POST /cds-services/offramp-order-sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "overloaded");
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let mut app = spawn_app(Limits::default()).await;
    let mut s = raw(&app).await;
    let body = "{}";
    s.write_all(format!("POST /cds-services/offramp-order-sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{", body.len()).as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    if let Some(stop) = app.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    s.write_all(b"}")
        .await
        .expect("the connection is still open during the drain");
    let got = read_some(&mut s, std::time::Duration::from_secs(3))
        .await
        .unwrap_or_default();
    assert!(
        got.starts_with("HTTP/1.1 401"),
        "the in-flight request got its answer: {got:?}"
    );
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), &mut app.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))));
}

/// The printable calendar behind the off-ramp card, served by the real server and rendered by
/// headless Chromium (Debian's package; .ci/run installs it): the rendered DOM has the dose chart
/// with one level per taper step, and the screenshot is not blank.
// Multi-threaded: the server runs in this runtime while the test waits for Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calendar_page_renders_in_chromium() {
    let app = spawn_app(Limits::default()).await;
    let body = example("order-select-long-term-alprazolam");
    let r = app
        .post(
            "/cds-services/offramp-order-select",
            &body,
            "application/json",
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let resp: Value = r.json().await.expect("json");
    let card = &resp["cards"][0];
    let url = card["links"][0]["url"]
        .as_str()
        .expect("calendar link")
        .to_string();
    assert!(url.starts_with(&app.base), "{url}");
    let steps = card["suggestions"][0]["actions"][0]["resource"]["dosageInstruction"]
        .as_array()
        .expect("steps")
        .len();
    // The page needs no token, names nobody, and is not cached by intermediaries.
    let page = app.client.get(&url).send().await.expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let html = page.text().await.expect("html");
    assert!(!html.contains("pt-1"));
    let unknown = app
        .client
        .get(format!("{}/calendar/{}", app.base, uuid::Uuid::new_v4()))
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is installed (apt-get install chromium; .ci/run does)");
    let profile = std::env::temp_dir().join(format!("offramp-chromium-{}", uuid::Uuid::new_v4()));
    let shot = profile.join("calendar.png");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ];
    let run = |extra: Vec<String>| {
        let mut cmd = std::process::Command::new(chromium);
        cmd.args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url);
        cmd.output().expect("chromium runs")
    };
    let dom = String::from_utf8_lossy(&run(vec!["--dump-dom".into()]).stdout).to_string();
    let path = dom
        .split("<path d=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .expect("the chart's path in the rendered DOM");
    // The path starts at the current dose, then two points (start, end) per level, the stop included.
    let points = path.matches('L').count();
    assert_eq!(points, 2 * (steps + 1), "{path}");
    run(vec![
        format!("--screenshot={}", shot.display()),
        "--window-size=800,1200".into(),
    ]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.len() > 20_000,
        "a blank page compresses to a few KB; got {} bytes",
        png.len()
    );
    let _ = std::fs::remove_dir_all(&profile);
}

#[tokio::test]
async fn the_committed_openapi_document_is_the_served_one() {
    let generated = serde_json::to_value(offramp::http::openapi()).expect("json");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("OFFRAMP_BLESS").is_some() {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&generated).expect("json") + "\n",
        )
        .expect("write");
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("openapi.json is committed"))
            .expect("json");
    assert_eq!(
        committed, generated,
        "regenerate with OFFRAMP_BLESS=1 cargo test --test http openapi"
    );
    let app = spawn_app(Limits::default()).await;
    let served: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(served, generated);
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    for p in [
        "/cds-services",
        "/cds-services/{id}",
        "/cds-services/{id}/feedback",
        "/healthz",
        "/readyz",
        "/calendar/{id}",
    ] {
        assert!(served["paths"][p].is_object(), "{p} documented");
    }
}

/// A body that stops arriving is cut off like headers that do (408), not held until the request
/// timeout.
#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let app = spawn_app(Limits {
        header_read_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let path = "/cds-services/offramp-order-sign";
    let mut s = raw(&app).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"hoo\r\n",
        app.base.trim_start_matches("http://"),
        app.token(path)
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let t = std::time::Instant::now();
    let got = read_some(&mut s, std::time::Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.contains("body_timeout"), "{got:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
}

/// On shutdown, /readyz turns 503 at once while requests are still served for the grace period
/// (the load balancer's time to stop sending); then the listener closes.
#[tokio::test]
async fn shutdown_turns_readyz_503_and_keeps_serving_for_the_grace_period() {
    let mut app = spawn_app(Limits {
        shutdown_grace: std::time::Duration::from_millis(800),
        ..Limits::default()
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    if let Some(stop) = app.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // New connections are still taken during the grace period.
    let fresh = reqwest::Client::new();
    let r = fresh
        .post(format!("{}/cds-services/offramp-order-sign", app.base))
        .header("content-type", "application/json")
        .header(
            "authorization",
            app.token("/cds-services/offramp-order-sign"),
        )
        .body(example("order-sign-opioid-with-benzo"))
        .send()
        .await
        .expect("served during the grace period");
    assert_eq!(r.status(), StatusCode::OK);
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), &mut app.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))));
    assert!(
        tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .is_err(),
        "the listener is closed after the grace period"
    );
}
