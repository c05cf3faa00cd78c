//! Request authentication: the JWT every CDS client signs (CDS Hooks 2.0 security), checked
//! against configured trusted issuers. The HTTP layer calls [`Verifier::verify`] and answers a bare
//! 401 with `WWW-Authenticate: Bearer` ([`WWW_AUTHENTICATE`]) on any error;
//! [`AuthError::reason`] goes to a metric label and a log line, never the token.

/// The challenge sent with every 401.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"offramp\"";

pub mod aud;
pub mod jwks;
pub mod replay;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use jwks::KeySource;
use replay::ReplayGuard;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One EHR (CDS client) we trust.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub iss: String,
    /// Defaults to ES384 and RS384; ES256, RS256, PS256, PS384 may be added. None and HMAC are
    /// refused at load, whatever the file says.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The issuer's JWKS URL (fetched and cached) ...
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// ... or a JWKS file shipped with the deployment.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// jku header values this issuer may use; any other jku is refused and never fetched.
    #[serde(default)]
    pub jku_allowlist: Vec<String>,
    /// fhirServer base URLs this issuer may name; any other is treated as absent.
    #[serde(default)]
    pub fhir_servers: Vec<String>,
    /// When set, the token's `tenant` claim must equal it.
    #[serde(default)]
    pub tenant: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["ES384".into(), "RS384".into()]
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub issuers: Vec<IssuerConfig>,
    /// Clock-skew leeway for exp, nbf and iat (the sandbox rounds iat up to 0.5 s ahead).
    pub leeway_seconds: u64,
    /// Longest accepted exp - iat.
    pub max_lifetime_seconds: u64,
    /// An unknown kid refreshes an issuer's JWKS at most this often.
    pub jwks_refresh_min_interval_seconds: u64,
    pub jwks_timeout_ms: u64,
    pub max_token_bytes: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuers: Vec::new(),
            leeway_seconds: 5,
            max_lifetime_seconds: 300,
            jwks_refresh_min_interval_seconds: 60,
            jwks_timeout_ms: 2000,
            max_token_bytes: 8192,
        }
    }
}

/// A configuration that cannot be used; stops the start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("issuer {iss:?}: {message}")]
    Issuer { iss: String, message: String },
}

/// Why a token was refused. Every variant is a 401; the reason is for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header")]
    MissingHeader,
    #[error("Authorization scheme is not Bearer")]
    BadScheme,
    #[error("token too large")]
    TooLarge,
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("JOSE header unreadable")]
    BadHeader,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("crit header present")]
    CriticalHeader,
    #[error("issuer not trusted")]
    UnknownIssuer,
    #[error("jku not on the issuer's allowlist")]
    JkuNotAllowed,
    #[error("kid not found in the issuer's keys")]
    UnknownKid,
    #[error("signature invalid")]
    BadSignature,
    #[error("claims unreadable")]
    BadClaims,
    #[error("required claim missing: {0}")]
    MissingClaim(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("iat in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("aud does not match the endpoint")]
    AudMismatch,
    #[error("tenant does not match")]
    TenantMismatch,
    #[error("jti already used")]
    Replayed,
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingHeader => "missing_header",
            AuthError::BadScheme => "bad_scheme",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::BadHeader => "bad_header",
            AuthError::AlgorithmNotAllowed => "alg_not_allowed",
            AuthError::CriticalHeader => "crit_header",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::JkuNotAllowed => "jku_not_allowed",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadClaims => "bad_claims",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "iat_in_future",
            AuthError::LifetimeTooLong => "lifetime_too_long",
            AuthError::AudMismatch => "aud_mismatch",
            AuthError::TenantMismatch => "tenant_mismatch",
            AuthError::Replayed => "replayed",
        }
    }
}

/// Who called, once verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub iss: String,
    pub kid: String,
    pub tenant: Option<String>,
    fhir_servers: Vec<String>,
}

impl Principal {
    /// Whether this issuer may name `url` as fhirServer (normalised comparison).
    pub fn allows_fhir_server(&self, url: &str) -> bool {
        aud::normalise(url).is_some_and(|u| self.fhir_servers.contains(&u))
    }
}

fn starts_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The algorithms we ever accept: asymmetric only.
fn parse_algorithm(s: &str) -> Option<Algorithm> {
    Some(match s {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        _ => return None,
    })
}

struct Issuer {
    cfg: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: KeySource,
    /// One key source per allowlisted jku, fetched only when a token names it.
    jku: HashMap<String, KeySource>,
    fhir_servers: Vec<String>,
}

pub struct Verifier {
    settings: AuthSettings,
    issuers: HashMap<String, Issuer>,
    replay: Arc<dyn ReplayGuard>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    jku: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// `aud` may be one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

impl Verifier {
    /// Builds the verifier: validates each issuer, loads JWKS files, fetches JWKS URLs once (a
    /// failure there is logged and retried on demand, so a briefly unreachable EHR does not stop
    /// the start).
    pub async fn new(
        settings: AuthSettings,
        replay: Arc<dyn ReplayGuard>,
    ) -> Result<Self, AuthConfigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.jwks_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthConfigError::Issuer {
                iss: String::new(),
                message: format!("http client: {e}"),
            })?;
        let mut issuers = HashMap::new();
        for cfg in &settings.issuers {
            let bad = |message: String| AuthConfigError::Issuer {
                iss: cfg.iss.clone(),
                message,
            };
            let mut algorithms = Vec::new();
            for a in &cfg.algorithms {
                algorithms.push(parse_algorithm(a).ok_or_else(|| {
                    bad(format!("algorithm {a:?} is not allowed (asymmetric ES256/ES384/RS256/RS384/PS256/PS384 only)"))
                })?);
            }
            if algorithms.is_empty() {
                return Err(bad("no algorithms".into()));
            }
            let keys = match (&cfg.jwks_url, &cfg.jwks_file) {
                (Some(url), None) => {
                    let src = KeySource::url(url).map_err(bad)?;
                    if let Err(e) = src.refresh(&http).await {
                        tracing::warn!(iss = %cfg.iss, error = %e, "JWKS not fetched at start; will retry on demand");
                    }
                    src
                }
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| bad(format!("jwks_file {}: {e}", path.display())))?;
                    KeySource::from_jwks_json(&text)
                        .map_err(|e| bad(format!("jwks_file {}: {e}", path.display())))?
                }
                _ => {
                    return Err(bad(
                        "exactly one of jwks_url and jwks_file is required".into()
                    ));
                }
            };
            let mut jku = HashMap::new();
            for u in &cfg.jku_allowlist {
                let n = aud::normalise(u)
                    .ok_or_else(|| bad(format!("jku {u:?} is not an http(s) URL")))?;
                jku.insert(n, KeySource::url(u).map_err(bad)?);
            }
            let mut fhir_servers = Vec::new();
            for u in &cfg.fhir_servers {
                fhir_servers.push(
                    aud::normalise(u)
                        .ok_or_else(|| bad(format!("fhir server {u:?} is not an http(s) URL")))?,
                );
            }
            let issuer = Issuer {
                cfg: cfg.clone(),
                algorithms,
                keys,
                jku,
                fhir_servers,
            };
            if issuers.insert(cfg.iss.clone(), issuer).is_some() {
                return Err(bad("listed twice".into()));
            }
        }
        Ok(Verifier {
            settings,
            issuers,
            replay,
            http,
        })
    }

    /// Verifies the Authorization header value for a call whose URL is `expected_aud`, at `now`
    /// (unix seconds). A refusal is logged with its reason only: never the token or its claims.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        expected_aud: &str,
        now: i64,
    ) -> Result<Principal, AuthError> {
        let result = self.check(authorization, expected_aud, now).await;
        if let Err(e) = &result {
            tracing::info!(reason = e.reason(), "JWT refused");
        }
        result
    }

    async fn check(
        &self,
        authorization: Option<&str>,
        expected_aud: &str,
        now: i64,
    ) -> Result<Principal, AuthError> {
        let value = authorization.ok_or(AuthError::MissingHeader)?.trim();
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::BadScheme)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::BadScheme);
        }
        let token = token.trim();
        if token.len() > self.settings.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(AuthError::Malformed);
        };
        let b64 = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !(b64(h) && b64(p) && b64(s)) {
            return Err(AuthError::Malformed);
        }
        let header_bytes = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| AuthError::Malformed)?;
        // Objects only: serde would also fill a struct from a JSON array, by position.
        if !starts_object(&header_bytes) {
            return Err(AuthError::BadHeader);
        }
        let header: RawHeader =
            serde_json::from_slice(&header_bytes).map_err(|_| AuthError::BadHeader)?;
        if header.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        let alg = parse_algorithm(&header.alg).ok_or(AuthError::AlgorithmNotAllowed)?;
        // The issuer is read from the unverified payload only to pick its keys and rules.
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| AuthError::Malformed)?;
        if !starts_object(&payload) {
            return Err(AuthError::BadClaims);
        }
        let unverified: Claims =
            serde_json::from_slice(&payload).map_err(|_| AuthError::BadClaims)?;
        let iss = unverified
            .iss
            .as_deref()
            .ok_or(AuthError::MissingClaim("iss"))?;
        let issuer = self.issuers.get(iss).ok_or(AuthError::UnknownIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(AuthError::UnknownKid)?;
        let min_interval = Duration::from_secs(self.settings.jwks_refresh_min_interval_seconds);
        // The issuer's own keys come first: a jku on the allowlist (the sandbox sends one that
        // points to the internet) is fetched only when the key is not already there.
        let jwk = match header.jku.as_deref() {
            None => issuer.keys.key(&kid, &self.http, min_interval).await,
            Some(j) => {
                let allowed = aud::normalise(j)
                    .and_then(|n| issuer.jku.get(&n))
                    .ok_or(AuthError::JkuNotAllowed)?;
                match issuer.keys.cached(&kid) {
                    Some(k) => Some(k),
                    None => allowed.key(&kid, &self.http, min_interval).await,
                }
            }
        }
        .ok_or(AuthError::UnknownKid)?;
        // A key published for one algorithm is not used for another.
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| a.to_string() != header.alg)
        {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| AuthError::UnknownKid)?;
        let mut validation = Validation::new(alg);
        // Time, iss and aud are checked below against our own clock and normalisation.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                jsonwebtoken::errors::ErrorKind::Json(_) => AuthError::BadClaims,
                _ => AuthError::BadSignature,
            })?
            .claims;
        let until = self.check_claims(issuer, &claims, expected_aud, now)?;
        // The guard keeps the jti as long as the token could still be accepted.
        let jti = claims.jti.as_deref().unwrap_or_default();
        if !self
            .replay
            .first_use(&format!("{}|{jti}", issuer.cfg.iss), until, now)
            .await
        {
            return Err(AuthError::Replayed);
        }
        Ok(Principal {
            iss: issuer.cfg.iss.clone(),
            kid,
            tenant: claims.tenant,
            fhir_servers: issuer.fhir_servers.clone(),
        })
    }

    fn check_claims(
        &self,
        issuer: &Issuer,
        c: &Claims,
        expected_aud: &str,
        now: i64,
    ) -> Result<i64, AuthError> {
        let now = now as f64;
        let leeway = self.settings.leeway_seconds as f64;
        if c.iss.as_deref() != Some(issuer.cfg.iss.as_str()) {
            return Err(AuthError::UnknownIssuer);
        }
        let exp = c
            .exp
            .filter(|x| x.is_finite())
            .ok_or(AuthError::MissingClaim("exp"))?;
        let iat = c
            .iat
            .filter(|x| x.is_finite())
            .ok_or(AuthError::MissingClaim("iat"))?;
        c.jti
            .as_deref()
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(AuthError::MissingClaim("jti"))?;
        let aud = c.aud.as_ref().ok_or(AuthError::MissingClaim("aud"))?;
        if exp + leeway < now {
            return Err(AuthError::Expired);
        }
        if iat > now + leeway {
            return Err(AuthError::IssuedInFuture);
        }
        if let Some(nbf) = c.nbf
            && (!nbf.is_finite() || nbf > now + leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if exp - iat > self.settings.max_lifetime_seconds as f64 {
            return Err(AuthError::LifetimeTooLong);
        }
        let expected = aud::normalise(expected_aud).ok_or(AuthError::AudMismatch)?;
        let matches = |a: &String| aud::normalise(a).as_deref() == Some(expected.as_str());
        let ok = match aud {
            Audience::One(a) => matches(a),
            Audience::Many(v) => v.iter().any(matches),
        };
        if !ok {
            let received: Vec<&str> = match aud {
                Audience::One(a) => vec![a.as_str()],
                Audience::Many(v) => v.iter().map(String::as_str).collect(),
            };
            tracing::warn!(iss = %issuer.cfg.iss, expected = %expected, received = ?received, "aud mismatch");
            return Err(AuthError::AudMismatch);
        }
        if let Some(t) = &issuer.cfg.tenant
            && c.tenant.as_deref() != Some(t.as_str())
        {
            return Err(AuthError::TenantMismatch);
        }
        Ok((exp + leeway).ceil() as i64)
    }
}
