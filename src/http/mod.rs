//! The HTTP surface, the only place that knows axum: routes, authentication, error -> status
//! mapping, CORS, limits, request ids. It calls auth, then hooks; nothing else.

use crate::auth::{Principal, Verifier, WWW_AUTHENTICATE};
use crate::clinical::Knowledge;
use crate::hooks::answers::{Answers, ShownCards};
use crate::hooks::{EvalOptions, HookError, drafts_digest, evaluate_request_with, needs_record};
use crate::protocol::{CdsRequest, CdsResponse, Discovery, FeedbackRequest};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub mod conns;

/// Everything a request needs, built once at start.
pub struct AppState {
    pub kb: Knowledge,
    pub catalogue: Discovery,
    pub verifier: Verifier,
    /// The URL EHRs use to reach us (for the JWT aud); None builds it from the Host header.
    pub public_base_url: Option<String>,
    /// Feedback and calendars (memory by default).
    pub store: Arc<dyn crate::store::Store>,
    /// Evaluate as of this day instead of the clock's (tests and demos of fixed examples).
    pub fixed_today: Option<chrono::NaiveDate>,
    /// Fetches what the EHR did not prefetch.
    pub fhir: crate::fhir::FhirClient,
    /// Snooze, run-ahead and card-log periods.
    pub store_settings: crate::store::StoreSettings,
    /// Hashes patient ids in store keys.
    pub hasher: crate::store::PatientHasher,
    /// SHA-256 of the admin bearer token; None turns /admin off.
    pub admin_token: Option<Vec<u8>>,
    /// Slots for the CPU-bound part of a hook call (parse to evaluation). A parsed record is the
    /// bulk of a request's memory; without a bound, requests waiting on Redis each hold one and
    /// the working set outgrows the caches (docs/benchmarks.md).
    pub cpu_slots: Arc<tokio::sync::Semaphore>,
    /// Set on shutdown: /readyz answers 503 so load balancers stop sending.
    pub draining: std::sync::atomic::AtomicBool,
}

/// Two slots a core: one computing while the other waits on a store round trip.
pub fn cpu_slots() -> Arc<tokio::sync::Semaphore> {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    Arc::new(tokio::sync::Semaphore::new(cores * 2))
}

type Slot = Option<tokio::sync::OwnedSemaphorePermit>;

async fn slot(s: &AppState) -> Result<Slot, ApiError> {
    // The semaphore is never closed; an error here is a bug, answered as overload.
    s.cpu_slots
        .clone()
        .acquire_owned()
        .await
        .map(Some)
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the service is shutting down",
            )
        })
}

impl AppState {
    fn answers(&self) -> Answers<'_> {
        Answers {
            store: self.store.as_ref(),
            settings: &self.store_settings,
            hasher: &self.hasher,
        }
    }
}

/// A calendar page stays reachable this long after the card that links to it.
pub const CALENDAR_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// A client that has not sent its headers by then is dropped (slowloris).
    pub header_read_timeout: Duration,
    /// Larger request heads get 431 (hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Requests in flight beyond this get 503 at once.
    pub max_concurrent_requests: usize,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// On shutdown, /readyz answers 503 this long while requests are still taken, so a load
    /// balancer stops sending before the listener closes.
    pub shutdown_grace: Duration,
    /// Open connections beyond this wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    pub cors_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_concurrent_requests: 256,
            drain_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::ZERO,
            max_connections: 1024,
            cors_origins: vec!["*".into()],
        }
    }
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Limits {
            max_body_bytes: c.max_body_bytes,
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            max_header_bytes: c.max_header_bytes,
            max_concurrent_requests: c.max_concurrent_requests,
            drain_timeout: Duration::from_millis(c.drain_timeout_ms),
            shutdown_grace: Duration::from_millis(c.shutdown_grace_ms),
            max_connections: c.max_connections,
            cors_origins: c.cors_origins.clone(),
        }
    }
}

/// A client-visible error: a status and a small JSON body that names the problem without
/// echoing the request. 401 is bare, with a WWW-Authenticate challenge.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return (self.status, [(header::WWW_AUTHENTICATE, WWW_AUTHENTICATE)]).into_response();
        }
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<HookError> for ApiError {
    fn from(e: HookError) -> Self {
        match e {
            HookError::UnknownService(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_service", e.to_string())
            }
            HookError::HookMismatch { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hook_mismatch",
                e.to_string(),
            ),
            HookError::BadContext(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_context", e.to_string())
            }
            HookError::DataUnavailable => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "data_unavailable",
                e.to_string(),
            ),
        }
    }
}

pub fn router(state: Arc<AppState>, limits: &Limits) -> Router {
    let cors = {
        let base = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600));
        if limits.cors_origins.iter().any(|o| o == "*") {
            base.allow_origin(AllowOrigin::any())
        } else {
            let origins: Vec<HeaderValue> = limits
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            base.allow_origin(origins)
        }
    };
    let x_request_id = header::HeaderName::from_static("x-request-id");
    let body_idle = limits.header_read_timeout;
    let services: Arc<[String]> = state
        .catalogue
        .services
        .iter()
        .map(|s| s.id.clone())
        .collect();
    Router::new()
        .route("/cds-services", get(discovery))
        .route("/cds-services/{id}", post(hook))
        .route("/cds-services/{id}/feedback", post(feedback))
        .route("/calendar/{id}", get(calendar))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/admin/stats", get(admin_stats))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // A client that stops sending its body is cut off like one that stops sending its
        // headers (408), instead of holding a slot until the request timeout.
        .layer(axum::middleware::map_request(move |req: axum::extract::Request| async move {
            req.map(|b| axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_idle, b)))
        }))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight; retry")
                }))
                .load_shed()
                // One semaphore for the whole router: Router::layer wraps each route apart.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests)),
        )
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limits.request_timeout))
        // Outside the timeout and the load shedding, so their 503s are counted too.
        .layer(axum::middleware::from_fn_with_state(services, count_request))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            // The path only: no query, no headers, no body (no PHI, no tokens).
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        })
        // One line per response with status and latency, inside the request span.
        .on_request(())
        .on_response(
            tower_http::trace::DefaultOnResponse::new()
                .level(tracing::Level::INFO)
                .latency_unit(tower_http::LatencyUnit::Micros),
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(cors)
        .with_state(state)
}

/// Counts every answer by route, service and status, and times it. Labels come from bounded
/// sets: the route table, the catalogue's service ids ("" elsewhere, "unknown" for others).
async fn count_request(
    State(services): State<Arc<[String]>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| route_label(m.as_str()));
    let service = req
        .uri()
        .path()
        .strip_prefix("/cds-services/")
        .map_or("", |rest| {
            let id = rest.split('/').next().unwrap_or("");
            services
                .iter()
                .find(|s| s.as_str() == id)
                .map_or("unknown", String::as_str)
        })
        .to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("offramp_http_requests_total",
        "route" => route, "service" => service.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("offramp_http_request_duration_seconds",
        "route" => route, "service" => service)
    .record(started.elapsed().as_secs_f64());
    response
}

/// The route template as a static label.
fn route_label(matched: &str) -> &'static str {
    const ROUTES: [&str; 9] = [
        "/cds-services",
        "/cds-services/{id}",
        "/cds-services/{id}/feedback",
        "/calendar/{id}",
        "/healthz",
        "/openapi.json",
        "/readyz",
        "/metrics",
        "/admin/stats",
    ];
    ROUTES
        .iter()
        .find(|r| **r == matched)
        .copied()
        .unwrap_or("other")
}

/// The OpenAPI 3 document of this API (also committed as openapi.json).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    let scheme = utoipa::openapi::security::SecurityScheme::Http(
        utoipa::openapi::security::HttpBuilder::new()
            .scheme(utoipa::openapi::security::HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some("The CDS client's JWT (CDS Hooks 2.0): asymmetric, from a trusted issuer, aud = this endpoint's URL."))
            .build(),
    );
    let admin = utoipa::openapi::security::SecurityScheme::Http(
        utoipa::openapi::security::HttpBuilder::new()
            .scheme(utoipa::openapi::security::HttpAuthScheme::Bearer)
            .description(Some(
                "The operators' token (admin.token in the configuration).",
            ))
            .build(),
    );
    if let Some(c) = doc.components.as_mut() {
        c.add_security_scheme("cds_client_jwt", scheme);
        c.add_security_scheme("admin_token", admin);
    }
    doc
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "offramp",
        description = "CDS Hooks service: benzodiazepine on-ramp / off-ramp plans and opioid + benzodiazepine overdose-risk cards."
    ),
    paths(
        discovery,
        hook,
        feedback,
        healthz,
        ready,
        calendar,
        metrics_text,
        admin_stats
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The body of every error but 401 (which is bare).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code, e.g. invalid_field, body_too_large.
    pub error: String,
    /// What is wrong, naming the field; never the request's own text.
    pub message: String,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/cds-services", responses((status = 200, description = "The CDS Hooks discovery document", body = Discovery)))]
async fn discovery(State(s): State<Arc<AppState>>) -> Json<Discovery> {
    Json(s.catalogue.clone())
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Knowledge loaded; the store's health is reported (degraded still serves)"),
    (status = 503, description = "Shutting down: send no new requests")))]
async fn ready(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    // Degraded still serves hooks (they fail toward showing cards), so it stays ready.
    Json(
        json!({"status": "ready", "knowledge": s.kb.summary().medications,
        "store": s.store.kind(), "store_health": s.store.health().await}),
    )
    .into_response()
}

/// The process-wide Prometheus recorder, installed on first use (one per process: tests start
/// several apps in one).
pub fn metrics_handle() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        // Latency buckets from 1 ms to 10 s (FHIR fetches are bounded by their 2 s budget).
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
        ];
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &buckets,
            )
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; its metrics are then its own.
        let _ = metrics::set_global_recorder(recorder);
        metrics::gauge!("offramp_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        process_metrics().describe();
        handle
    })
}

/// Prometheus text exposition: counts and latencies, no patient data, no ids.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics_text() -> Response {
    let handle = metrics_handle();
    // Memory, CPU, threads and file descriptors, read at each scrape (a few /proc reads).
    process_metrics().collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The standard process_* series (process_resident_memory_bytes, process_open_fds, ...).
fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Our own base URL as the client sees it.
fn base_url(s: &AppState, headers: &HeaderMap) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    crate::auth::aud::expected(s.public_base_url.as_deref(), "http", host, "")
}

/// The printable calendar: no token (a patient or printer opens it), an unguessable id, no name
/// or identifier in it, not cached by intermediaries.
#[utoipa::path(get, path = "/calendar/{id}", params(("id" = String, Path, description = "The id in the card's link")),
    responses((status = 200, description = "The printable taper calendar", content_type = "text/html"),
               (status = 404, description = "Unknown or expired", body = ErrorBody),
               (status = 503, description = "The store cannot be read now", body = ErrorBody)))]
async fn calendar(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.store.get_calendar(&id).await {
        Ok(Some(html)) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            html.as_str().to_string(),
        )
            .into_response(),
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such calendar (it may have expired)",
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the calendar cannot be read now; retry",
        )
        .into_response(),
    }
}

/// The URL the client called, as it should appear in the JWT aud.
fn expected_aud(s: &AppState, headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    crate::auth::aud::expected(s.public_base_url.as_deref(), "http", host, uri.path())
}

async fn authenticate(
    s: &AppState,
    service: &str,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Principal, ApiError> {
    let refused = |reason: &'static str| {
        metrics::counter!("offramp_auth_failures_total", "reason" => reason).increment(1);
        crate::audit::auth_failure(service, reason);
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "")
    };
    let aud = expected_aud(s, headers, uri).ok_or_else(|| refused("no_audience"))?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.verifier
        .verify(authorization, &aud, now())
        .await
        .map_err(|e| refused(e.reason()))
}

/// What every POST shares, in order: a known service (404), a valid token (401), a JSON
/// content type (415), a readable body within the limit (413).
async fn admit(
    s: &AppState,
    id: &str,
    headers: &HeaderMap,
    uri: &Uri,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(Principal, Bytes), ApiError> {
    if s.catalogue.service(id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_service",
            format!("no service with id {id:?}"),
        ));
    }
    let principal = authenticate(s, id, headers, uri).await?;
    require_json(headers)?;
    Ok((principal, body_or_error(body)?))
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json")
        || mime.eq_ignore_ascii_case("application/fhir+json")
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ))
    }
}

/// Parses a body, naming the offending field but never echoing the body or the parser's text.
fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // The body is checked as UTF-8 once, not string by string as from_slice would. Tracking the
    // path costs on every value of a large body: only a refused body pays for it.
    let text = std::str::from_utf8(body).map_err(|_| refusal::<T>(body))?;
    serde_json::from_str(text).map_err(|_| refusal::<T>(body))
}

fn refusal<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> ApiError {
    let malformed = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON",
        )
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let Err(e) = serde_path_to_error::deserialize::<_, T>(de) else {
        // Only trailing characters after a valid value get here.
        return malformed();
    };
    let path = e.path().to_string();
    if e.inner().is_syntax() || e.inner().is_eof() {
        malformed()
    } else if path == "." {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "a required field is missing or the body has the wrong shape",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("field {path} is missing or of the wrong type"),
        )
    }
}

/// The body read failed because the client stopped sending (the body idle timeout).
fn stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn body_or_error(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if stalled(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body stopped arriving before it was complete",
            )
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is larger than the configured limit",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the body could not be read",
            )
        }
    })
}

#[utoipa::path(post, path = "/cds-services/{id}",
    params(("id" = String, Path, description = "offramp-order-select or offramp-order-sign")),
    request_body(content = CdsRequest, content_type = "application/json"),
    security(("cds_client_jwt" = [])),
    responses(
        (status = 200, description = "Cards (possibly none)", body = crate::protocol::CdsResponse),
        (status = 400, description = "Malformed JSON or a field of the wrong type", body = ErrorBody),
        (status = 401, description = "Missing or invalid JWT (bare, with WWW-Authenticate)",
            headers(("WWW-Authenticate" = String, description = "Bearer realm=\"offramp\""))),
        (status = 404, description = "Unknown service", body = ErrorBody),
        (status = 412, description = "A medication order needs the history, and none was prefetched or could be fetched from fhirServer", body = ErrorBody),
        (status = 408, description = "The body stopped arriving", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Well-formed but against the spec (hook does not match the service)", body = ErrorBody),
        (status = 503, description = "Overloaded or timed out", body = ErrorBody),
    ))]
async fn hook(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (principal, body) = admit(&s, &id, &headers, &uri, body).await?;
    let mut cpu = slot(&s).await?;
    let mut req: CdsRequest<'_> = parse(&body)?;
    // A fhirServer the issuer may not name is treated as absent: never contacted.
    if req
        .fhir_server
        .as_deref()
        .is_some_and(|f| !principal.allows_fhir_server(f))
    {
        tracing::warn!(iss = %principal.iss, "fhirServer not on the issuer's allowlist; ignored");
        metrics::counter!("offramp_fhir_server_refused_total").increment(1);
        req.fhir_server = None;
        req.fhir_authorization = None;
    }
    let today = s
        .fixed_today
        .unwrap_or_else(|| chrono::Local::now().date_naive());
    let answers = s.answers();
    let patient_id = crate::hooks::answers::patient_ref(
        &principal.iss,
        principal.tenant.as_deref(),
        context_str(&req, "patientId").unwrap_or_default(),
    );
    let patient = answers.patient(&patient_id);
    let prescriber = context_str(&req, "userId")
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let needs = needs_record(&s.kb, &s.catalogue, &id, &req)?;
    // Run-ahead: order-select keeps its result, order-sign of the same drafts reuses it.
    let run_ahead = if needs && s.store_settings.run_ahead_seconds > 0 {
        // The prescriber too: "different prescribers" is a risk factor of its own.
        let user = prescriber.as_deref().unwrap_or("");
        drafts_digest(&s.catalogue, &id, &req)?
            .map(|d| answers.patient(&format!("{patient_id}\n{user}\n{d}")))
    } else {
        None
    };
    let reused = match (&run_ahead, req.hook.as_str()) {
        (Some(key), "order-sign") => {
            // A store round trip holds no CPU slot.
            drop(cpu.take());
            let r = answers.run_ahead(&patient_id, key).await;
            if r.is_none() {
                cpu = slot(&s).await?;
            }
            r
        }
        _ => None,
    };
    let reused_run_ahead = reused.is_some();
    let (mut shown, data, suppressed) = match reused {
        Some(r) => {
            req.prefetch = None;
            drop(cpu.take());
            (r, "complete", Vec::new())
        }
        None => {
            let fresh = evaluate_fresh(&s, &id, &mut req, &headers, needs, today, &mut cpu).await?;
            // Only a result from the whole record is reused: one made while data was missing
            // may lack cards a complete record gives.
            if let (Some(key), "order-select", true) =
                (&run_ahead, req.hook.as_str(), fresh.complete)
            {
                answers.keep_run_ahead(&patient_id, key, &fresh.shown).await;
            }
            let data = match (needs, fresh.complete) {
                (false, _) => "not-needed",
                (true, true) => "complete",
                (true, false) => "partial",
            };
            (fresh.shown, data, fresh.suppressed)
        }
    };
    let quiet = answers
        .drop_quiet(&patient, prescriber.as_deref(), &mut shown, now())
        .await;
    answers
        .note_shown(&patient, prescriber.as_deref(), &shown)
        .await;
    let rules: Vec<&str> = shown.shown.iter().map(|x| x.rule.as_str()).collect();
    let cards: Vec<&str> = shown.cards.iter().map(|c| c.uuid.as_str()).collect();
    let quiet: Vec<&str> = quiet.iter().map(String::as_str).collect();
    tracing::info!(service = %id, hook = %req.hook, cards = shown.cards.len(), rules = ?rules,
        quiet = quiet.len(), run_ahead = reused_run_ahead, "evaluated");
    crate::audit::decision(&crate::audit::Decision {
        service: &id,
        hook: &req.hook,
        hook_instance: &req.hook_instance,
        issuer: &principal.iss,
        tenant: principal.tenant.as_deref(),
        patient: &patient,
        prescriber: prescriber.as_deref(),
        rules: &rules,
        cards: &cards,
        quiet: &quiet,
        suppressed: &suppressed,
        run_ahead: reused_run_ahead,
        data,
    });
    Ok(Json(CdsResponse {
        cards: shown.cards,
        system_actions: vec![],
    })
    .into_response())
}

fn context_str<'r>(req: &'r CdsRequest, field: &str) -> Option<&'r str> {
    req.context.get(field).and_then(serde_json::Value::as_str)
}

/// Gathers the record (orders the rules never look at cost no FHIR request), evaluates, and
/// stores the printable calendar.
async fn evaluate_fresh(
    s: &AppState,
    id: &str,
    req: &mut CdsRequest<'_>,
    headers: &HeaderMap,
    needs: bool,
    today: chrono::NaiveDate,
    cpu: &mut Slot,
) -> Result<Fresh, ApiError> {
    let report = if needs && let Some(service) = s.catalogue.service(id) {
        // A fetch waits on the network: it holds no CPU slot meanwhile.
        let fetching = req.fhir_server.is_some();
        if fetching {
            *cpu = None;
        }
        let r = s.fhir.gather(&service.prefetch, req).await;
        if fetching {
            *cpu = slot(s).await?;
        }
        record_fetch(id, &r);
        Some(r)
    } else {
        None
    };
    let partial = report.as_ref().map(crate::fhir::Report::partial);
    let calendar_id = uuid::Uuid::new_v4().to_string();
    let calendar_url = base_url(s, headers).map(|b| format!("{b}/calendar/{calendar_id}"));
    let out = evaluate_request_with(
        &s.kb,
        &s.catalogue,
        id,
        req,
        today,
        EvalOptions {
            calendar_url: calendar_url.as_deref(),
            partial: partial.as_ref(),
        },
    )?;
    // The parsed history is the bulk of a request's memory: it goes before any wait on the store,
    // so requests waiting on Redis do not each hold one.
    req.prefetch = None;
    *cpu = None;
    if let Some(html) = out.calendar_html
        && let Err(e) = s.store.put_calendar(&calendar_id, Arc::new(html)).await
    {
        // The cards are still right; only the printable page is missing.
        tracing::warn!(error = %e, "calendar not stored");
    }
    let suppressed = out
        .evaluation
        .suppressed
        .iter()
        .map(|q| {
            metrics::counter!("offramp_rules_suppressed_total", "rule" => q.rule, "reason" => q.reason)
                .increment(1);
            format!("{}: {}", q.rule, q.reason)
        })
        .collect();
    Ok(Fresh {
        shown: ShownCards {
            cards: out.response.cards,
            shown: out.shown,
        },
        complete: out.complete,
        suppressed,
    })
}

/// A result computed for this request.
struct Fresh {
    shown: ShownCards,
    /// Nothing of the record was missing or partial.
    complete: bool,
    /// Rules kept quiet by an exclusion or missing data, "rule: reason".
    suppressed: Vec<String>,
}

/// Logs and counts how each piece of the record was had; never the URL (it holds the patient id)
/// nor the token.
fn record_fetch(service: &str, r: &crate::fhir::Report) {
    for (key, piece) in &r.pieces {
        metrics::counter!("offramp_fhir_pieces_total", "piece" => key.clone(), "outcome" => piece.label())
            .increment(1);
        if piece.is_degraded() {
            tracing::warn!(service, piece = %key, outcome = piece.label(), "patient data degraded");
        }
    }
    if r.requests > 0 {
        metrics::counter!("offramp_fhir_requests_total").increment(r.requests as u64);
        metrics::histogram!("offramp_fhir_fetch_seconds").record(r.elapsed.as_secs_f64());
        tracing::info!(
            service,
            requests = r.requests,
            elapsed_ms = r.elapsed.as_millis() as u64,
            "fetched from FHIR server"
        );
    }
}

#[utoipa::path(post, path = "/cds-services/{id}/feedback",
    params(("id" = String, Path, description = "The service the cards came from")),
    request_body(content = FeedbackRequest, content_type = "application/json"),
    security(("cds_client_jwt" = [])),
    responses(
        (status = 200, description = "Stored"),
        (status = 400, description = "Invalid feedback", body = ErrorBody),
        (status = 401, description = "Missing or invalid JWT (bare, with WWW-Authenticate)",
            headers(("WWW-Authenticate" = String, description = "Bearer realm=\"offramp\""))),
        (status = 404, description = "Unknown service", body = ErrorBody),
        (status = 408, description = "The body stopped arriving", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "Not stored (store unavailable): retry", body = ErrorBody),
    ))]
async fn feedback(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (_, body) = admit(&s, &id, &headers, &uri, body).await?;
    let fb: FeedbackRequest = parse(&body)?;
    let n = fb.feedback.len();
    // Acknowledged only once stored; otherwise 503 so the EHR retries.
    let answers = s.answers();
    let stored = answers
        .record_feedback(&id, &fb.feedback, now())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "feedback not stored");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "feedback could not be stored; retry",
            )
        })?;
    tracing::info!(service = %id, items = n, new = stored.new, duplicates = stored.duplicates, "feedback stored");
    Ok(Json(json!({})).into_response())
}

fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[utoipa::path(get, path = "/admin/stats",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Cards shown, accepted and overridden per rule and per prescriber, across replicas", body = crate::store::stats::Stats),
        (status = 401, description = "Missing or wrong admin token (bare, with WWW-Authenticate)",
            headers(("WWW-Authenticate" = String, description = "Bearer realm=\"offramp\""))),
        (status = 404, description = "No admin token configured: admin endpoints are off", body = ErrorBody),
        (status = 503, description = "The store cannot be read now", body = ErrorBody),
    ))]
async fn admin_stats(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(expected) = &s.admin_token else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Digests compared in constant time: neither the token nor its length leaks by timing.
    let ok = given.is_some_and(|g| {
        aws_lc_rs::constant_time::verify_slices_are_equal(&sha256(g.as_bytes()), expected).is_ok()
    });
    if !ok {
        metrics::counter!("offramp_auth_failures_total", "reason" => "admin_token").increment(1);
        crate::audit::auth_failure("admin", "admin_token");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", ""));
    }
    let counts = s.store.counts().await.map_err(|e| {
        tracing::warn!(error = %e, "counts unreadable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store cannot be read now; retry",
        )
    })?;
    Ok(Json(crate::store::stats::summarise(&counts)).into_response())
}

/// Builds the state from a validated configuration: knowledge tables, catalogue, issuers.
pub async fn build_state(config: &crate::config::Config) -> Result<AppState, String> {
    let kb =
        crate::knowledge_files::load(config.knowledge_dir.as_deref()).map_err(|e| e.to_string())?;
    let catalogue = Discovery::embedded().map_err(|e| format!("service catalogue: {e}"))?;
    let crate::store::Built { store, replay } = crate::store::build(&config.store, CALENDAR_TTL)?;
    let verifier = Verifier::new(config.auth.clone(), replay)
        .await
        .map_err(|e| e.to_string())?;
    let fhir = crate::fhir::FhirClient::new(&config.fhir)?;
    let secret = &config.store.patient_key.0;
    // With memory, snoozes die with the process, so a random key loses nothing.
    let hasher = if secret.is_empty() {
        crate::store::PatientHasher::random()?
    } else {
        crate::store::PatientHasher::new(secret.as_bytes())
    };
    let admin = &config.admin.token.0;
    let admin_token = (!admin.is_empty()).then(|| sha256(admin.as_bytes()));
    metrics_handle();
    Ok(AppState {
        kb,
        catalogue,
        verifier,
        public_base_url: config.server.public_base_url.clone(),
        store,
        fixed_today: None,
        fhir,
        store_settings: config.store.clone(),
        hasher,
        admin_token,
        cpu_slots: cpu_slots(),
        draining: std::sync::atomic::AtomicBool::new(false),
    })
}

/// Serves until `shutdown` completes; then /readyz turns 503 while requests are still served for
/// `shutdown_grace`, the listener closes and in-flight requests get `drain_timeout` to finish.
/// Connections are served by hyper directly so header size and header read time are bounded, and
/// at most `max_connections` are open at once (see [`conns`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::Service;
    let app = router(state.clone(), &limits);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = conns::Connections::new(limits.max_connections);
    let shutdown = async move {
        shutdown.await;
        state
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(limits.shutdown_grace).await;
    };
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // One accepted connection at most waits here for a slot; the rest stay in the kernel's
        // backlog.
        let guard = tokio::select! {
            g = connections.admit() => match g {
                Some(g) => g,
                None => continue,
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let seen = guard.conn();
        let svc =
            hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                seen.proven();
                app.clone().call(req)
            });
        let conn =
            graceful.watch(http1.serve_connection(hyper_util::rt::TokioIo::new(stream), svc));
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = guard.evicted() => tracing::debug!("connection closed to make room"),
            }
            drop(guard);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout: closing remaining connections");
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received: draining");
}
