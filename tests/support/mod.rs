//! Test keys: generated per test run; nothing secret is committed.
#![allow(dead_code)]

pub mod app;
pub mod fhir;
pub mod redis;
pub mod redis_cluster;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::Value;

pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    pub enc: EncodingKey,
}

impl Key {
    pub fn es384(kid: &str) -> Key {
        let kp = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("ec key");
        let der = kp.to_pkcs8v1().expect("pkcs8");
        Key {
            kid: kid.into(),
            alg: Algorithm::ES384,
            enc: EncodingKey::from_ec_der(der.as_ref()),
        }
    }

    pub fn rsa(kid: &str, alg: Algorithm) -> Key {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key");
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).expect("der");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der.as_ref())
        );
        Key {
            kid: kid.into(),
            alg,
            enc: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("pem"),
        }
    }

    pub fn jwk(&self) -> Jwk {
        let mut j = Jwk::from_encoding_key(&self.enc, self.alg).expect("jwk");
        j.common.key_id = Some(self.kid.clone());
        j
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.enc).expect("sign")
    }
}

/// A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files in a
/// temporary directory of their own, removed on drop.
pub struct TlsFiles {
    pub dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        let dir = std::env::temp_dir().join(format!("offramp-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let (cert, key) = (dir.join("ca.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
        TlsFiles { dir, cert, key }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn jwks(keys: &[&Key]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    })
    .expect("jwks")
}
