//! What the fuzz targets share: the embedded knowledge base and service catalogue (loaded once),
//! the fixed day they evaluate on, and a JWT verifier that trusts a fuzz-only ES384 key.

use offramp::clinical::Knowledge;
use offramp::protocol::Discovery;
use std::sync::OnceLock;

/// The embedded knowledge tables, as the service loads them without a `--knowledge` directory.
pub fn kb() -> &'static Knowledge {
    static KB: OnceLock<Knowledge> = OnceLock::new();
    KB.get_or_init(|| offramp::knowledge_files::load(None).expect("embedded knowledge"))
}

/// The embedded service catalogue (cds-hooks/services.json).
pub fn catalogue() -> &'static Discovery {
    static D: OnceLock<Discovery> = OnceLock::new();
    D.get_or_init(|| Discovery::embedded().expect("embedded catalogue"))
}

/// The day every evaluation runs on: the golden tests' day, so the examples' dates mean what they
/// mean there. A fixed day keeps a crash reproducible.
pub fn today() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
}

pub mod jwt {
    //! A [`Verifier`] as the server builds one: two issuers reading a JWKS file, one with a jku
    //! allowlist (a loopback URL nothing listens on) and one with a tenant and fhirServers, and an
    //! in-memory replay guard that forgets everything between inputs (so an input's outcome does
    //! not depend on the inputs before it).
    //!
    //! The key in `fuzz/keys/fuzz-es384.pem` exists for fuzzing only: no configuration trusts it.

    use async_trait::async_trait;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey};
    use offramp::auth::replay::{MemoryReplayGuard, ReplayGuard};
    use offramp::auth::{AuthError, AuthSettings, IssuerConfig, Principal, Verifier};
    use std::sync::{Arc, Mutex, OnceLock};

    pub const ISS: &str = "https://ehr.example.org";
    /// Requires `tenant` = "t1"; may name https://fhir.example.org/r4 as fhirServer.
    pub const ISS_TENANT: &str = "https://ehr2.example.org/fhir";
    pub const TENANT: &str = "t1";
    pub const FHIR_SERVER: &str = "https://fhir.example.org/r4";
    pub const JKU: &str = "http://127.0.0.1:9/jwks.json";
    pub const AUD: &str = "https://cds.example.org/cds-services/offramp-order-sign";
    pub const KID: &str = "fuzz-es384";
    /// 2023-11-14T22:13:20Z: tokens are checked at this instant.
    pub const NOW: i64 = 1_700_000_000;
    pub const KEY_PEM: &str = include_str!("../keys/fuzz-es384.pem");

    /// The replay guard of the server (memory), replaced by a fresh one before each input.
    #[derive(Default)]
    struct FreshGuard(Mutex<Arc<MemoryReplayGuard>>);

    impl FreshGuard {
        fn reset(&self) {
            if let Ok(mut g) = self.0.lock() {
                *g = Arc::default();
            }
        }
    }

    #[async_trait]
    impl ReplayGuard for FreshGuard {
        async fn first_use(&self, key: &str, expires_at: i64, now: i64) -> bool {
            let inner = match self.0.lock() {
                Ok(g) => Arc::clone(&g),
                Err(p) => Arc::clone(&p.into_inner()),
            };
            inner.first_use(key, expires_at, now).await
        }
    }

    pub struct Fixture {
        rt: tokio::runtime::Runtime,
        verifier: Verifier,
        guard: Arc<FreshGuard>,
        signer: EcdsaKeyPair,
        rng: SystemRandom,
    }

    fn pkcs8_der() -> Vec<u8> {
        let body: String = KEY_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        STANDARD.decode(body).expect("key pem")
    }

    impl Fixture {
        /// Built once per process.
        pub fn get() -> &'static Fixture {
            static F: OnceLock<Fixture> = OnceLock::new();
            F.get_or_init(Fixture::build)
        }

        fn build() -> Fixture {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let der = pkcs8_der();
            let signer =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der).expect("key");
            let enc = EncodingKey::from_ec_der(&der);
            let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES384).expect("jwk");
            jwk.common.key_id = Some(KID.into());
            let set = JwkSet { keys: vec![jwk] };
            let dir = std::env::temp_dir().join(format!("offramp-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let file = dir.join("jwks.json");
            std::fs::write(&file, serde_json::to_string(&set).expect("json")).expect("write");
            let settings = AuthSettings {
                issuers: vec![
                    IssuerConfig {
                        iss: ISS.into(),
                        algorithms: vec!["ES384".into(), "RS384".into()],
                        jwks_url: None,
                        jwks_file: Some(file.clone()),
                        jku_allowlist: vec![JKU.into()],
                        fhir_servers: vec![],
                        tenant: None,
                    },
                    IssuerConfig {
                        iss: ISS_TENANT.into(),
                        algorithms: vec!["ES384".into(), "ES256".into(), "PS256".into()],
                        jwks_url: None,
                        jwks_file: Some(file),
                        jku_allowlist: vec![],
                        fhir_servers: vec![FHIR_SERVER.into()],
                        tenant: Some(TENANT.into()),
                    },
                ],
                // One fetch of the (unreachable) jku per process at most.
                jwks_refresh_min_interval_seconds: 86_400,
                jwks_timeout_ms: 200,
                ..AuthSettings::default()
            };
            let guard = Arc::new(FreshGuard::default());
            let verifier = rt
                .block_on(Verifier::new(settings, guard.clone()))
                .expect("verifier");
            let _ = std::fs::remove_dir_all(&dir);
            Fixture {
                rt,
                verifier,
                guard,
                signer,
                rng: SystemRandom::new(),
            }
        }

        /// `Verifier::verify` of an Authorization header value for [`AUD`] at [`NOW`], with a
        /// replay guard that has seen nothing yet.
        pub fn verify(&self, authorization: &str) -> Result<Principal, AuthError> {
            self.guard.reset();
            self.verify_again(authorization)
        }

        /// As [`Fixture::verify`], keeping what the replay guard has seen.
        pub fn verify_again(&self, authorization: &str) -> Result<Principal, AuthError> {
            self.rt
                .block_on(self.verifier.verify(Some(authorization), AUD, NOW))
        }

        /// A compact JWS of these header and payload bytes, signed ES384 with the trusted key.
        pub fn sign(&self, header: &[u8], payload: &[u8]) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let sig = self.signer.sign(&self.rng, input.as_bytes()).expect("sign");
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }

    /// What any verification outcome must satisfy.
    pub fn check_outcome(r: &Result<Principal, AuthError>) {
        match r {
            Ok(p) => {
                assert!(
                    p.iss == ISS || p.iss == ISS_TENANT,
                    "unknown issuer accepted"
                );
                assert_eq!(p.kid, KID);
                if p.iss == ISS_TENANT {
                    assert_eq!(p.tenant.as_deref(), Some(TENANT), "tenant not enforced");
                    assert!(p.allows_fhir_server(FHIR_SERVER));
                }
                assert!(!p.allows_fhir_server("https://evil.example.org/r4"));
            }
            Err(e) => {
                // Every refusal has a metric label.
                assert!(!e.reason().is_empty());
            }
        }
    }
}
