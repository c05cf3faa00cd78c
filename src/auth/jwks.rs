//! An issuer's keys: a JWKS file, or a URL fetched and cached. An unknown kid triggers one refresh,
//! at most once per interval, so key rotation works and a stream of bogus kids cannot make us
//! hammer the EHR.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// A JWKS larger than this is not a key set.
const MAX_JWKS_BYTES: usize = 256 * 1024;

pub struct KeySource {
    url: Option<String>,
    keys: RwLock<HashMap<String, Jwk>>,
    /// When a fetch was last attempted; serialises refreshes.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

fn index(set: JwkSet) -> HashMap<String, Jwk> {
    set.keys
        .into_iter()
        .filter_map(|k| Some((k.common.key_id.clone()?, k)))
        .collect()
}

fn is_loopback(host: &str) -> bool {
    let host = host.split(':').next().unwrap_or(host);
    host == "localhost" || host == "127.0.0.1" || host == "[::1]" || host.starts_with("127.")
}

impl KeySource {
    /// A JWKS URL: https, or http on loopback only (tests and local demos).
    pub fn url(url: &str) -> Result<Self, String> {
        let normal =
            super::aud::normalise(url).ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
        if let Some(rest) = normal.strip_prefix("http://")
            && !is_loopback(rest.split('/').next().unwrap_or(rest))
        {
            return Err(format!("{url:?}: JWKS must be fetched over https"));
        }
        Ok(KeySource {
            url: Some(url.to_string()),
            keys: RwLock::default(),
            last_refresh: Default::default(),
        })
    }

    pub fn from_jwks_json(text: &str) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = index(set);
        if keys.is_empty() {
            return Err("no key with a kid".into());
        }
        Ok(KeySource {
            url: None,
            keys: RwLock::new(keys),
            last_refresh: Default::default(),
        })
    }

    /// The key if it is already known; never fetches.
    pub fn cached(&self, kid: &str) -> Option<Jwk> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// Fetches the set now (callers rate-limit). Replaces the keys only on success.
    pub async fn refresh(&self, http: &reqwest::Client) -> Result<usize, String> {
        let Some(url) = &self.url else { return Ok(0) };
        *self.last_refresh.lock().await = Some(Instant::now());
        self.fetch(http, url).await
    }

    async fn fetch(&self, http: &reqwest::Client, url: &str) -> Result<usize, String> {
        let resp = http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_JWKS_BYTES)
        {
            return Err("JWKS too large".into());
        }
        let body = resp.bytes().await.map_err(|e| format!("read: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("JWKS too large".into());
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = index(set);
        let n = keys.len();
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
        Ok(n)
    }

    /// The key for `kid`, refreshing the set once if it is unknown and the last refresh is older
    /// than `min_interval`.
    pub async fn key(
        &self,
        kid: &str,
        http: &reqwest::Client,
        min_interval: Duration,
    ) -> Option<Jwk> {
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        let url = self.url.as_deref()?;
        let mut last = self.last_refresh.lock().await;
        // Another request may have refreshed while we waited for the lock.
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        if last.is_some_and(|t| t.elapsed() < min_interval) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch(http, url).await {
            tracing::warn!(error = %e, "JWKS refresh failed");
        }
        self.cached(kid)
    }
}
