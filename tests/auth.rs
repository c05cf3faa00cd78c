//! Request authentication against a real JWKS server on loopback: at least 30 attacks and
//! mistakes, each a refusal with no outbound request, and the good paths (ES384, RS384, Epic
//! style, key rotation). Keys are generated here; nothing secret is in the repository.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use offramp::auth::replay::MemoryReplayGuard;
use offramp::auth::{AuthError, AuthSettings, IssuerConfig, Verifier};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::{Key, jwks};

const ISS: &str = "https://ehr.example.org";
const AUD: &str = "https://cds.example.org/cds-services/offramp-order-sign";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A JWKS endpoint on 127.0.0.1 that counts its requests.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
}

async fn jwks_server(body: String) -> JwksServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(Mutex::new(body));
    let (h, b) = (hits.clone(), body.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let b = b.lock().map(|s| s.clone()).unwrap_or_default();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    JwksServer {
        url: format!("http://{addr}/jwks.json"),
        hits,
        body,
    }
}

fn claims() -> Value {
    let t = now();
    json!({"iss": ISS, "aud": AUD, "exp": t + 240, "iat": t, "jti": uuid::Uuid::new_v4().to_string()})
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

/// A token with a hand-made header and payload text, signed by `key` (for header attacks).
fn raw_signed(key: &Key, header_json: &str, payload_json: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(header_json);
    let p = URL_SAFE_NO_PAD.encode(payload_json);
    let msg = format!("{h}.{p}");
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key.enc, key.alg).expect("sign");
    format!("{msg}.{sig}")
}

async fn verifier(server: &JwksServer, jku_ok: &str, refresh_secs: u64) -> Verifier {
    let settings = AuthSettings {
        issuers: vec![IssuerConfig {
            iss: ISS.into(),
            algorithms: vec!["ES384".into(), "RS384".into()],
            jwks_url: Some(server.url.clone()),
            jwks_file: None,
            jku_allowlist: vec![jku_ok.into()],
            fhir_servers: vec!["https://ehr.example.org/fhir/".into()],
            tenant: None,
        }],
        jwks_refresh_min_interval_seconds: refresh_secs,
        ..AuthSettings::default()
    };
    Verifier::new(settings, Arc::new(MemoryReplayGuard::default()))
        .await
        .expect("verifier")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn attacks_and_mistakes_are_refused_without_outbound_requests() {
    let es = Key::es384("ec-1");
    let rs = Key::rsa("rsa-1", Algorithm::RS384);
    let server = jwks_server(jwks(&[&es, &rs])).await;
    let evil = jwks_server(jwks(&[&Key::es384("evil")])).await;
    let v = verifier(&server, "https://ehr.example.org/jwks-allowed.json", 3600).await;
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "one fetch at start");

    let good = |c: &Value| es.sign(c);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        good(&c)
    };
    let other_key_same_kid = Key::es384("ec-1");
    let ps = Key::rsa("rsa-1", Algorithm::PS384);
    let public_jwk = serde_json::to_string(&es.jwk()).expect("jwk");
    let hs = encode(
        &Header {
            alg: Algorithm::HS256,
            kid: Some("ec-1".into()),
            ..Header::default()
        },
        &claims(),
        &EncodingKey::from_secret(public_jwk.as_bytes()),
    )
    .expect("hs256");
    let c = claims();
    let payload = serde_json::to_string(&c).expect("json");
    let valid = good(&c);
    let (vh, vp, vs) = {
        let p: Vec<&str> = valid.split('.').collect();
        (p[0].to_string(), p[1].to_string(), p[2].to_string())
    };
    let mut flipped = vs.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("utf8");
    let unsigned = |alg: &str| format!("{}.{vp}.AAAA", b64(&json!({"alg": alg, "kid": "ec-1"})));
    let dup_claim = {
        let t = now();
        format!(
            r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"iat":{t},"jti":"d-1","iss":"https://attacker.example"}}"#,
            t + 60
        )
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("wrong scheme", Some(format!("Basic {valid}"))),
        ("empty bearer", Some("Bearer ".into())),
        ("garbage", Some(bearer("garbage"))),
        ("two segments", Some(bearer(&format!("{vh}.{vp}")))),
        ("four segments", Some(bearer(&format!("{valid}.{vs}")))),
        (
            "non-base64url characters",
            Some(bearer(&format!("{vh}.{vp}.{vs}+/="))),
        ),
        ("alg none", Some(bearer(&unsigned("none")))),
        ("alg None", Some(bearer(&unsigned("None")))),
        ("alg NONE", Some(bearer(&unsigned("NONE")))),
        ("HS256 with the public key as secret", Some(bearer(&hs))),
        (
            "alg not allowed for the issuer (PS384)",
            Some(bearer(&ps.sign(&claims()))),
        ),
        (
            "unknown kid",
            Some(bearer(&Key::es384("nope").sign(&claims()))),
        ),
        (
            "kid path traversal",
            Some(bearer(&Key::es384("../../../etc/passwd").sign(&claims()))),
        ),
        (
            "jku not on the allowlist",
            Some(bearer(&raw_signed(
                &es,
                &format!(r#"{{"alg":"ES384","kid":"ec-1","jku":"{}"}}"#, evil.url),
                &payload,
            ))),
        ),
        (
            "wrong signature",
            Some(bearer(&format!("{vh}.{vp}.{flipped}"))),
        ),
        (
            "another key with the same kid",
            Some(bearer(&other_key_same_kid.sign(&claims()))),
        ),
        (
            "truncated signature",
            Some(bearer(&format!("{vh}.{vp}.{}", &vs[..vs.len() / 2]))),
        ),
        (
            "EC signature presented as RS384",
            Some(bearer(&raw_signed(
                &es,
                r#"{"alg":"RS384","kid":"ec-1"}"#,
                &payload,
            ))),
        ),
        (
            "expired",
            Some(bearer(&with(&|c| {
                c["exp"] = json!(now() - 100);
                c["iat"] = json!(now() - 200);
            }))),
        ),
        (
            "iat in the future",
            Some(bearer(&with(&|c| {
                c["iat"] = json!(now() + 60);
                c["exp"] = json!(now() + 120);
            }))),
        ),
        (
            "nbf in the future",
            Some(bearer(&with(&|c| c["nbf"] = json!(now() + 60)))),
        ),
        (
            "lifetime too long",
            Some(bearer(&with(&|c| c["exp"] = json!(now() + 3600)))),
        ),
        (
            "missing exp",
            Some(bearer(&with(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }))),
        ),
        (
            "missing iat",
            Some(bearer(&with(&|c| {
                c.as_object_mut().map(|o| o.remove("iat"));
            }))),
        ),
        (
            "missing jti",
            Some(bearer(&with(&|c| {
                c.as_object_mut().map(|o| o.remove("jti"));
            }))),
        ),
        (
            "missing iss",
            Some(bearer(&with(&|c| {
                c.as_object_mut().map(|o| o.remove("iss"));
            }))),
        ),
        (
            "missing aud",
            Some(bearer(&with(&|c| {
                c.as_object_mut().map(|o| o.remove("aud"));
            }))),
        ),
        (
            "untrusted iss",
            Some(bearer(&with(&|c| {
                c["iss"] = json!("https://attacker.example")
            }))),
        ),
        (
            "aud of another service",
            Some(bearer(&with(&|c| {
                c["aud"] = json!("https://cds.example.org/cds-services/offramp-order-select")
            }))),
        ),
        (
            "aud with another host",
            Some(bearer(&with(&|c| {
                c["aud"] = json!("https://evil.example.org/cds-services/offramp-order-sign")
            }))),
        ),
        (
            "token over 8 KB",
            Some(bearer(&with(&|c| c["pad"] = json!("x".repeat(9000))))),
        ),
        (
            "header JSON not an object",
            Some(bearer(&raw_signed(&es, "[\"ES384\"]", &payload))),
        ),
        (
            "duplicate claim",
            Some(bearer(&raw_signed(
                &es,
                r#"{"alg":"ES384","kid":"ec-1"}"#,
                &dup_claim,
            ))),
        ),
        (
            "crit header",
            Some(bearer(&raw_signed(
                &es,
                r#"{"alg":"ES384","kid":"ec-1","crit":["exp"],"exp":1}"#,
                &payload,
            ))),
        ),
    ];
    let expected: std::collections::HashMap<&str, &str> = [
        ("missing header", "missing_header"),
        ("wrong scheme", "bad_scheme"),
        ("empty bearer", "bad_scheme"),
        ("garbage", "malformed"),
        ("two segments", "malformed"),
        ("four segments", "malformed"),
        ("non-base64url characters", "malformed"),
        ("alg none", "alg_not_allowed"),
        ("alg None", "alg_not_allowed"),
        ("alg NONE", "alg_not_allowed"),
        ("HS256 with the public key as secret", "alg_not_allowed"),
        ("alg not allowed for the issuer (PS384)", "alg_not_allowed"),
        ("unknown kid", "unknown_kid"),
        ("kid path traversal", "unknown_kid"),
        ("jku not on the allowlist", "jku_not_allowed"),
        ("wrong signature", "bad_signature"),
        ("another key with the same kid", "bad_signature"),
        ("truncated signature", "bad_signature"),
        ("EC signature presented as RS384", "alg_not_allowed"),
        ("expired", "expired"),
        ("iat in the future", "iat_in_future"),
        ("nbf in the future", "not_yet_valid"),
        ("lifetime too long", "lifetime_too_long"),
        ("missing exp", "missing_claim"),
        ("missing iat", "missing_claim"),
        ("missing jti", "missing_claim"),
        ("missing iss", "missing_claim"),
        ("missing aud", "missing_claim"),
        ("untrusted iss", "unknown_issuer"),
        ("aud of another service", "aud_mismatch"),
        ("aud with another host", "aud_mismatch"),
        ("token over 8 KB", "too_large"),
        ("header JSON not an object", "bad_header"),
        ("duplicate claim", "bad_claims"),
        ("crit header", "crit_header"),
    ]
    .into_iter()
    .collect();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    assert_eq!(cases.len(), expected.len());
    for (name, header) in &cases {
        let r = v.verify(header.as_deref(), AUD, now()).await;
        // Each refused for its own reason, not by accident of an earlier check.
        assert_eq!(
            r.as_ref().err().map(|e| e.reason()),
            expected.get(name).copied(),
            "{name}"
        );
    }
    // Replay: the first use passes, the second is refused.
    assert!(
        v.verify(Some(&bearer(&valid)), AUD, now()).await.is_ok(),
        "the valid token passes once"
    );
    assert_eq!(
        v.verify(Some(&bearer(&valid)), AUD, now()).await,
        Err(AuthError::Replayed)
    );
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "no attack made us fetch the JWKS again"
    );
    assert_eq!(
        evil.hits.load(Ordering::SeqCst),
        0,
        "a jku off the allowlist is never fetched"
    );
}

#[tokio::test]
async fn reasons_are_specific() {
    let es = Key::es384("ec-1");
    let server = jwks_server(jwks(&[&es])).await;
    let v = verifier(&server, "https://x.example/j", 3600).await;
    let check = |c: Value| bearer(&es.sign(&c));
    let mut c = claims();
    c["exp"] = json!(now() - 100);
    c["iat"] = json!(now() - 200);
    assert_eq!(
        v.verify(Some(&check(c)), AUD, now()).await,
        Err(AuthError::Expired)
    );
    let mut c = claims();
    c["aud"] = json!("https://cds.example.org/cds-services/other");
    assert_eq!(
        v.verify(Some(&check(c)), AUD, now()).await,
        Err(AuthError::AudMismatch)
    );
    assert_eq!(
        v.verify(None, AUD, now()).await.map_err(|e| e.reason()),
        Err("missing_header")
    );
}

#[tokio::test]
async fn good_tokens_pass() {
    let es = Key::es384("ec-1");
    let rs = Key::rsa("rsa-1", Algorithm::RS384);
    // Epic-style kid with '+' and '='.
    let epic = Key::rsa("Ab+cD/ef=", Algorithm::RS384);
    let server = jwks_server(jwks(&[&es, &rs, &epic])).await;
    let v = verifier(&server, "https://x.example/j", 3600).await;
    let p = v
        .verify(Some(&bearer(&es.sign(&claims()))), AUD, now())
        .await
        .expect("ES384");
    assert_eq!(p.iss, ISS);
    assert!(p.allows_fhir_server("https://EHR.example.org/fhir"));
    assert!(!p.allows_fhir_server("https://other.example.org/fhir"));
    v.verify(Some(&bearer(&rs.sign(&claims()))), AUD, now())
        .await
        .expect("RS384");
    // Epic: nbf a few minutes before iat.
    let mut c = claims();
    c["nbf"] = json!(now() - 240);
    v.verify(Some(&bearer(&epic.sign(&c))), AUD, now())
        .await
        .expect("Epic style");
    // The sandbox rounds iat up to 0.5 s ahead; aud typed with a trailing slash and capitals.
    let mut c = claims();
    c["iat"] = json!(now() as f64 + 0.5);
    c["aud"] = json!("HTTPS://cds.example.org/cds-services/offramp-order-sign/");
    v.verify(Some(&bearer(&es.sign(&c))), AUD, now())
        .await
        .expect("leeway and aud normalisation");
    // aud as a list.
    let mut c = claims();
    c["aud"] = json!(["https://other.example", AUD]);
    v.verify(Some(&bearer(&es.sign(&c))), AUD, now())
        .await
        .expect("aud list");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_refreshes_are_rate_limited() {
    let old = Key::es384("2026-01");
    let server = jwks_server(jwks(&[&old])).await;
    let v = verifier(&server, "https://x.example/j", 0).await;
    let new = Key::es384("2026-06");
    *server.body.lock().expect("lock") = jwks(&[&old, &new]);
    v.verify(Some(&bearer(&new.sign(&claims()))), AUD, now())
        .await
        .expect("rotated key");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "start + one refresh");
    v.verify(Some(&bearer(&new.sign(&claims()))), AUD, now())
        .await
        .expect("cached");
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        2,
        "no refresh for a known kid"
    );

    // With the default interval, a stream of unknown kids costs at most one fetch a minute.
    let limited = verifier(&server, "https://x.example/j", 60).await;
    let before = server.hits.load(Ordering::SeqCst);
    for i in 0..20 {
        let bogus = Key::es384(&format!("bogus-{i}"));
        assert_eq!(
            limited
                .verify(Some(&bearer(&bogus.sign(&claims()))), AUD, now())
                .await,
            Err(AuthError::UnknownKid)
        );
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        before,
        "refreshed at start, so none within the minute"
    );
}

#[tokio::test]
async fn none_and_hmac_cannot_be_configured() {
    for alg in ["none", "HS256", "HS384", "RS1"] {
        let settings = AuthSettings {
            issuers: vec![IssuerConfig {
                iss: ISS.into(),
                algorithms: vec![alg.into()],
                jwks_url: None,
                jwks_file: Some("/nonexistent".into()),
                jku_allowlist: vec![],
                fhir_servers: vec![],
                tenant: None,
            }],
            ..AuthSettings::default()
        };
        assert!(
            Verifier::new(settings, Arc::new(MemoryReplayGuard::default()))
                .await
                .is_err(),
            "{alg}"
        );
    }
}
