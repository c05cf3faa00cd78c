//! JWT verifications per second (signature, claims, replay guard) for ES384 and RS384 tokens.
//! Tokens are minted outside the timed part, each with a fresh jti.
//! Run: `cargo bench --bench auth`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use offramp::auth::replay::MemoryReplayGuard;
use offramp::auth::{AuthSettings, IssuerConfig, Verifier};
use std::sync::Arc;

const ISS: &str = "https://ehr.example.org";
const AUD: &str = "http://127.0.0.1:8080/cds-services/offramp-order-sign";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn keys() -> Vec<(Algorithm, &'static str, EncodingKey)> {
    let ec = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("ec");
    let ec = EncodingKey::from_ec_der(ec.to_pkcs8v1().expect("pkcs8").as_ref());
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).expect("der");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    let rsa = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("pem");
    vec![(Algorithm::ES384, "ec", ec), (Algorithm::RS384, "rsa", rsa)]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys = keys();
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(alg, kid, k)| {
                let mut j = Jwk::from_encoding_key(k, *alg).expect("jwk");
                j.common.key_id = Some((*kid).into());
                j
            })
            .collect(),
    };
    let dir = std::env::temp_dir().join(format!("offramp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    std::fs::write(&file, serde_json::to_string(&set).expect("json")).expect("write");
    let settings = AuthSettings {
        issuers: vec![IssuerConfig {
            iss: ISS.into(),
            algorithms: vec!["ES384".into(), "RS384".into()],
            jwks_url: None,
            jwks_file: Some(file),
            jku_allowlist: vec![],
            fhir_servers: vec![],
            tenant: None,
        }],
        ..AuthSettings::default()
    };
    let v = rt
        .block_on(Verifier::new(
            settings,
            Arc::new(MemoryReplayGuard::default()),
        ))
        .expect("verifier");
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    for (alg, kid, key) in &keys {
        group.bench_function(format!("{alg:?}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let mut h = Header::new(*alg);
                    h.kid = Some((*kid).into());
                    let t = now();
                    let claims = serde_json::json!({"iss": ISS, "aud": AUD, "iat": t, "exp": t + 300, "jti": format!("{kid}-{n}")});
                    format!("Bearer {}", encode(&h, &claims, key).expect("sign"))
                },
                |token| rt.block_on(v.verify(Some(&token), AUD, now())).expect("valid"),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
