//! The service on a loopback port, with a test issuer whose key signs every request.

use super::{Key, jwks};
use offramp::auth::{AuthSettings, IssuerConfig};
use offramp::config::Config;
use offramp::fhir::FhirSettings;
use offramp::http::{Limits, build_state, run};
use offramp::store::{Backend, StoreSettings};
use serde_json::json;
use std::path::Path;

pub const ISS: &str = "https://ehr.example.org";

pub struct App {
    pub base: String,
    pub store: std::sync::Arc<offramp::store::MemoryStore>,
    pub key: Key,
    pub client: reqwest::Client,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub async fn spawn_app(limits: Limits) -> App {
    spawn_app_with(Setup {
        limits,
        ..Setup::default()
    })
    .await
}

/// What a test changes from the defaults.
#[derive(Default)]
pub struct Setup {
    pub limits: Limits,
    /// fhirServer base URLs the test issuer may name.
    pub fhir_servers: Vec<String>,
    pub fhir: FhirSettings,
    /// Memory (the default: the test reads it through `App::store`) or Redis.
    pub store: StoreSettings,
    /// The admin bearer token; empty leaves /admin off.
    pub admin_token: String,
}

pub async fn spawn_app_with(setup: Setup) -> App {
    let limits = setup.limits;
    let key = Key::es384("test-1");
    let dir = std::env::temp_dir().join(format!("offramp-http-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&key])).expect("jwks");
    let config = Config {
        server: Config::load(None, &[]).expect("defaults").server,
        auth: AuthSettings {
            issuers: vec![IssuerConfig {
                iss: ISS.into(),
                algorithms: vec!["ES384".into()],
                jwks_url: None,
                jwks_file: Some(jwks_file),
                jku_allowlist: vec![],
                fhir_servers: setup.fhir_servers,
                tenant: None,
            }],
            ..AuthSettings::default()
        },
        fhir: setup.fhir,
        store: setup.store.clone(),
        admin: offramp::config::AdminSettings {
            token: offramp::store::Secret(setup.admin_token),
        },
        audit: offramp::audit::AuditSettings::default(),
        knowledge_dir: None,
    };
    let mut state = build_state(&config).await.expect("state");
    // The example histories are dated: evaluate them on the day their expected cards were made.
    state.fixed_today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23);
    let store = std::sync::Arc::new(offramp::store::MemoryStore::new(
        offramp::http::CALENDAR_TTL,
    ));
    if setup.store.backend == Backend::Memory {
        state.store = store.clone();
    }
    let state = std::sync::Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, state, limits, async {
        let _ = rx.await;
    }));
    App {
        base,
        store,
        key,
        client: reqwest::Client::new(),
        stop: Some(tx),
        task,
    }
}

impl App {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("send")
    }

    pub fn token(&self, path: &str) -> String {
        let t = now();
        let claims = json!({"iss": ISS, "aud": format!("{}{path}", self.base), "iat": t, "exp": t + 60,
                            "jti": uuid::Uuid::new_v4().to_string()});
        format!("Bearer {}", self.key.sign(&claims))
    }

    pub async fn post(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
        auth: bool,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_string());
        if auth {
            r = r.header("authorization", self.token(path));
        }
        r.send().await.expect("send")
    }
}

pub fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("cds-hooks/examples/requests/{name}.json")),
    )
    .expect("example")
}
