//! Typed, layered configuration: embedded config/base.toml, then an optional file, then
//! OFFRAMP__* environment variables. Validated before anything listens.

use crate::auth::AuthSettings;
use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const BASE_TOML: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/base.toml"));

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    #[serde(default)]
    pub public_base_url: Option<String>,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_concurrent_requests: usize,
    pub drain_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub max_connections: usize,
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthSettings,
    #[serde(default)]
    pub fhir: crate::fhir::FhirSettings,
    #[serde(default)]
    pub store: crate::store::StoreSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub audit: crate::audit::AuditSettings,
    /// A deployment's own knowledge tables instead of the built-in ones.
    #[serde(default)]
    pub knowledge_dir: Option<PathBuf>,
}

/// `[admin]`: the operators' endpoints.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for /admin/*; empty turns them off (404). Set it from a secret
    /// (OFFRAMP__ADMIN__TOKEN), at least 32 characters.
    pub token: crate::store::Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the layers. `env` is the process environment, passed in so tests can give their own.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(BASE_TOML));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "{}: no such file",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Each OFFRAMP__A__B=value becomes a layer { a = { b = value } }, values read as TOML
        // when they parse (numbers, booleans, arrays, inline tables) and as strings otherwise.
        for (k, v) in env.iter().filter(|(k, _)| k.starts_with("OFFRAMP__")) {
            let path: Vec<String> = k["OFFRAMP__".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Invalid(format!("{k}: empty key segment")));
            }
            let mut value = parse_env_value(v);
            for part in path.iter().rev() {
                let mut t = toml::Table::new();
                t.insert(part.clone(), value);
                value = toml::Value::Table(t);
            }
            let text =
                toml::to_string(&value).map_err(|e| ConfigError::Invalid(format!("{k}: {e}")))?;
            fig = fig.merge(Toml::string(&text));
        }
        let mut config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // Relative files (JWKS, CAs) are relative to the file that names them.
        if let Some(dir) = file.and_then(Path::parent) {
            let beside = |p: &mut Option<PathBuf>| {
                if let Some(joined) = p
                    .as_deref()
                    .filter(|p| p.is_relative())
                    .map(|p| dir.join(p))
                {
                    *p = Some(joined);
                }
            };
            for i in &mut config.auth.issuers {
                beside(&mut i.jwks_file);
            }
            beside(&mut config.fhir.ca_file);
            beside(&mut config.store.redis.ca_file);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.server.public_base_url
            && crate::auth::aud::normalise(u).is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "server.public_base_url {u:?} is not an http(s) URL"
            )));
        }
        let srv = &self.server;
        if srv.max_body_bytes < 1024
            || srv.max_concurrent_requests == 0
            || srv.max_connections == 0
            || srv.request_timeout_ms == 0
            || srv.header_read_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "server limits must be positive (max_body_bytes at least 1024)".into(),
            ));
        }
        let f = &self.fhir;
        if f.deadline_ms == 0 || f.max_pages == 0 || f.max_resources == 0 || f.max_page_bytes == 0 {
            return Err(ConfigError::Invalid("fhir limits must be positive".into()));
        }
        // A JWKS refresh and the fetch budget may both fall in one request.
        if f.deadline_ms + self.auth.jwks_timeout_ms + 1000 > srv.request_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "fhir.deadline_ms ({}) + auth.jwks_timeout_ms ({}) + 1000 must not exceed server.request_timeout_ms ({}): evaluation needs time after the fetch",
                f.deadline_ms, self.auth.jwks_timeout_ms, srv.request_timeout_ms
            )));
        }
        let st = &self.store;
        if st.backend == crate::store::Backend::Redis && st.patient_key.0.len() < 32 {
            return Err(ConfigError::Invalid(
                "store.patient_key must be set (at least 32 characters, the same on every replica) when store.backend is redis: it keys the hash of patient ids in shared keys".into(),
            ));
        }
        if !st.patient_key.0.is_empty() && st.patient_key.0.len() < 32 {
            return Err(ConfigError::Invalid(
                "store.patient_key must have at least 32 characters".into(),
            ));
        }
        if st.card_log_days == 0 {
            return Err(ConfigError::Invalid(
                "store.card_log_days must be positive".into(),
            ));
        }
        let admin = &self.admin.token.0;
        if !admin.is_empty() && admin.len() < 32 {
            return Err(ConfigError::Invalid(
                "admin.token must have at least 32 characters".into(),
            ));
        }
        self.audit.output().map_err(ConfigError::Invalid)?;
        if self.auth.leeway_seconds > 300 {
            return Err(ConfigError::Invalid(
                "auth.leeway_seconds above 300 is not a leeway".into(),
            ));
        }
        if self.auth.max_lifetime_seconds == 0 || self.auth.max_lifetime_seconds > 3600 {
            return Err(ConfigError::Invalid(
                "auth.max_lifetime_seconds must be within 1..=3600".into(),
            ));
        }
        Ok(())
    }

    /// Warnings a deployer must see (the service still starts).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.server.public_base_url.is_none() && !self.server.bind.ip().is_loopback() {
            w.push(format!(
                "server.public_base_url is not set while binding {}: the expected JWT aud is built from the request's Host header, which is only safe on loopback; set it to the URL EHRs use",
                self.server.bind
            ));
        }
        if self.auth.issuers.is_empty() {
            w.push("no trusted issuer is configured: every hook call will get 401".into());
        }
        if self.audit.output.trim() == "off" {
            w.push(
                "audit.output is off: decisions, feedback and refused tokens are not audited"
                    .into(),
            );
        }
        if self.fhir.allow_plain_http {
            w.push(
                "fhir.allow_plain_http is set: FHIR access tokens may travel unencrypted".into(),
            );
        }
        for i in &self.auth.issuers {
            if i.iss == "https://sandbox.cds-hooks.org" {
                w.push("the public CDS Hooks sandbox is trusted: its private key is public, for demos only".into());
            }
        }
        w
    }
}

/// An environment value as TOML when it parses (numbers, booleans, arrays, inline tables), else
/// as a string.
fn parse_env_value(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}
