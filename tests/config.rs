//! Configuration layers (defaults, file, environment), the shipped sandbox issuer, and
//! `offramp check-config`.

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use offramp::auth::replay::MemoryReplayGuard;
use offramp::auth::{AuthError, Verifier};
use offramp::config::Config;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sandbox_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sandbox.toml")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[test]
fn defaults_are_safe() {
    let c = Config::load(None, &[]).expect("defaults");
    assert!(c.server.bind.ip().is_loopback());
    assert!(c.auth.issuers.is_empty(), "nobody is trusted by default");
    assert!(c.warnings().iter().any(|w| w.contains("no trusted issuer")));
    assert!(!c.fhir.allow_plain_http, "FHIR tokens travel over TLS only");
    assert_eq!(c.fhir.deadline_ms, 2000);
}

#[test]
fn environment_overrides_file_and_defaults() {
    let c = Config::load(
        Some(&sandbox_file()),
        &env(&[
            (
                "OFFRAMP__SERVER__PUBLIC_BASE_URL",
                "https://cds.hospital.example/offramp",
            ),
            ("OFFRAMP__AUTH__LEEWAY_SECONDS", "10"),
            ("UNRELATED", "x"),
        ]),
    )
    .expect("config");
    assert_eq!(
        c.server.public_base_url.as_deref(),
        Some("https://cds.hospital.example/offramp")
    );
    assert_eq!(c.auth.leeway_seconds, 10);
    assert_eq!(c.auth.issuers.len(), 1);
    let f = c.auth.issuers[0].jwks_file.as_ref().expect("file");
    assert!(f.is_file(), "relative to the config file: {}", f.display());
    let c = Config::load(
        None,
        &env(&[(
            "OFFRAMP__AUTH__ISSUERS",
            r#"[{iss="https://ehr.example", jwks_url="https://ehr.example/jwks"}]"#,
        )]),
    )
    .expect("issuers from env");
    assert_eq!(
        c.auth.issuers[0].algorithms,
        ["ES384", "RS384"],
        "default algorithms"
    );
}

#[test]
fn mistakes_are_refused_with_the_key_named() {
    for (k, v, needle) in [
        ("OFFRAMP__SERVER__BINDX", "1", "bindx"),
        ("OFFRAMP__SERVER__BIND", "not-an-address", "bind"),
        (
            "OFFRAMP__SERVER__PUBLIC_BASE_URL",
            "cds.example",
            "public_base_url",
        ),
        (
            "OFFRAMP__AUTH__MAX_LIFETIME_SECONDS",
            "0",
            "max_lifetime_seconds",
        ),
        ("OFFRAMP__FHIR__DEADLINE_MS", "10000", "fhir.deadline_ms"),
        ("OFFRAMP__FHIR__MAX_PAGES", "0", "fhir limits"),
        ("OFFRAMP__FHIR__VERIFY_TLS", "false", "verify_tls"),
        // Shared keys need the same secret on every replica.
        ("OFFRAMP__STORE__BACKEND", "redis", "store.patient_key"),
        ("OFFRAMP__STORE__PATIENT_KEY", "short", "store.patient_key"),
        ("OFFRAMP__ADMIN__TOKEN", "short", "admin.token"),
        ("OFFRAMP__STORE__CARD_LOG_DAYS", "0", "card_log_days"),
    ] {
        let e = Config::load(None, &env(&[(k, v)]))
            .expect_err(k)
            .to_string();
        assert!(e.contains(needle), "{k}: {e}");
    }
    assert!(Config::load(Some(Path::new("/nonexistent.toml")), &[]).is_err());
    let redis = Config::load(
        None,
        &env(&[
            ("OFFRAMP__STORE__BACKEND", "redis"),
            ("OFFRAMP__STORE__PATIENT_KEY", &"k".repeat(32)),
        ]),
    );
    assert!(redis.is_ok(), "{redis:?}");
    // The secret never appears in Debug output (e.g. a logged config).
    assert!(!format!("{redis:?}").contains(&"k".repeat(32)));
}

#[tokio::test]
async fn the_sandbox_issuer_uses_its_shipped_keys_and_never_fetches_its_jku() {
    let c = Config::load(Some(&sandbox_file()), &[]).expect("config");
    let v = Verifier::new(c.auth, Arc::new(MemoryReplayGuard::default()))
        .await
        .expect("verifier");
    // Signed by a key that is not the sandbox's, with the sandbox's kid and jku: the shipped key
    // is used (bad signature), and the internet jku is not fetched (no timeout, no network here).
    let kp = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("key");
    let enc = EncodingKey::from_ec_der(kp.to_pkcs8v1().expect("pkcs8").as_ref());
    let mut h = Header::new(Algorithm::ES384);
    h.kid = Some("44823f3d-0b01-4a6c-a80e-b9d3e8a7226f".into());
    h.jku = Some("https://sandbox.cds-hooks.org/.well-known/jwks.json".into());
    let aud = "http://localhost:8080/cds-services/offramp-order-sign";
    let t = now();
    let claims = json!({"iss": "https://sandbox.cds-hooks.org", "aud": aud, "iat": t, "exp": t + 300, "jti": "j-1"});
    let token = encode(&h, &claims, &enc).expect("sign");
    let started = std::time::Instant::now();
    let r = v.verify(Some(&format!("Bearer {token}")), aud, t).await;
    assert_eq!(r, Err(AuthError::BadSignature));
    assert!(started.elapsed().as_millis() < 500, "no network attempt");
}

#[test]
fn check_config_warns_about_host_based_aud_off_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_offramp"))
        .args(["check-config", "--config"])
        .arg(sandbox_file())
        .env("OFFRAMP__SERVER__BIND", "0.0.0.0:8080")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("public_base_url is not set"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_offramp"))
        .args(["check-config"])
        .env(
            "OFFRAMP__AUTH__ISSUERS",
            r#"[{iss="https://x", algorithms=["HS256"], jwks_url="https://x/j"}]"#,
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HS256"));
}

#[tokio::test]
async fn a_fhir_ca_file_must_hold_a_certificate() {
    let dir = std::env::temp_dir().join(format!("offramp-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("offramp.toml");
    std::fs::write(&file, "[fhir]\nca_file = \"hospital-ca.pem\"\n").expect("write");
    let c = Config::load(Some(&file), &[]).expect("config");
    assert_eq!(
        c.fhir.ca_file.as_deref(),
        Some(dir.join("hospital-ca.pem").as_path())
    );
    let e = offramp::fhir::FhirClient::new(&c.fhir)
        .err()
        .expect("missing file");
    assert!(e.contains("fhir.ca_file"), "{e}");
    std::fs::write(dir.join("hospital-ca.pem"), "not a certificate").expect("write");
    assert!(offramp::fhir::FhirClient::new(&c.fhir).is_err());
}

#[test]
fn the_code_defaults_of_the_server_limits_are_base_toml_s() {
    // Tests and embedders use Limits::default(); the service uses the configuration's.
    let c = Config::load(None, &[]).expect("defaults");
    assert_eq!(
        format!("{:?}", offramp::http::Limits::from(&c.server)),
        format!("{:?}", offramp::http::Limits::default())
    );
}
