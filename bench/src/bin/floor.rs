//! The floor: the least any CDS service on this stack must do for the benchmark's request. It
//! verifies the bearer JWT (signature, exp, iss, aud) with the same library and parses the same
//! JSON body, then answers with no cards. offramp's full path is reported as a share of it.
//!
//!   floor <bind addr> <jwks.json> <iss> <aud prefix>

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

// The same allocator as offramp, so the ratio measures work done, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    keys: HashMap<String, DecodingKey>,
    iss: String,
    aud_prefix: String,
}

fn verify(floor: &Floor, headers: &HeaderMap, aud: &str) -> Option<()> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let head = decode_header(token).ok()?;
    let key = floor.keys.get(head.kid.as_deref()?)?;
    let mut validation = Validation::new(head.alg);
    validation.set_issuer(&[&floor.iss]);
    validation.set_audience(&[aud]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    decode::<Value>(token, key, &validation).ok().map(|_| ())
}

async fn hook(
    State(floor): State<Arc<Floor>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let aud = format!("{}/cds-services/{id}", floor.aud_prefix);
    if verify(&floor, &headers, &aud).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"cards":[]}"#,
        )
            .into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bind, jwks, iss, aud_prefix] = args.as_slice() else {
        return Err("usage: floor <bind> <jwks.json> <iss> <aud prefix>".into());
    };
    let text = std::fs::read_to_string(jwks).map_err(|e| format!("{jwks}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().ok_or("a key without kid")?;
        keys.insert(kid, DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?);
    }
    let floor = Arc::new(Floor {
        keys,
        iss: iss.clone(),
        aud_prefix: aud_prefix.trim_end_matches('/').to_string(),
    });
    let app = Router::new()
        .route("/cds-services/{id}", post(hook))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("{bind}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
