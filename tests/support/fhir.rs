//! A real FHIR R4 server for tests: tests/support/fhir-server (Medplum's fhir-router in memory,
//! with paging, a bearer-token check and fault endpoints), one Node process per test.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct FhirServer {
    /// http://127.0.0.1:<port>
    pub origin: String,
    pub token: String,
    child: Child,
    http: reqwest::Client,
}

impl FhirServer {
    /// Starts the server; every /fhir request must carry `Bearer <token>`.
    pub fn start(token: &str) -> FhirServer {
        Self::launch(token, None, &[])
    }

    /// As [`FhirServer::start`], at most `n` matches a page whatever `_count` asks.
    pub fn start_paged(token: &str, n: usize) -> FhirServer {
        Self::launch(token, None, &["--max-count", &n.to_string()])
    }

    /// As [`FhirServer::start`], serving https with this certificate and key (PEM files).
    pub fn start_tls(token: &str, cert: &Path, key: &Path) -> FhirServer {
        Self::launch(token, Some((cert, key)), &[])
    }

    fn launch(token: &str, tls: Option<(&Path, &Path)>, args: &[&str]) -> FhirServer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fhir-server");
        assert!(
            dir.join("node_modules/@medplum/fhir-router").is_dir(),
            "the test FHIR server is not installed: run `npm ci` in {}",
            dir.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs").arg("--token").arg(token).args(args);
        let mut http = reqwest::Client::builder();
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
            let pem = std::fs::read(cert).expect("cert");
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"));
        }
        let mut child = cmd
            .current_dir(&dir)
            // The server exits when its stdin closes, so a crashed test leaves nothing behind.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node server.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("LISTENING line");
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the FHIR server: {line:?}"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        FhirServer {
            origin: format!("{scheme}://127.0.0.1:{port}"),
            token: token.into(),
            child,
            http: http.build().expect("client"),
        }
    }

    /// The FHIR base URL, or the base of a fault endpoint ("401", "hang", "slow/300" ...).
    pub fn base(&self, fault: Option<&str>) -> String {
        match fault {
            None => format!("{}/fhir", self.origin),
            Some(f) => format!("{}/fault/{f}/fhir", self.origin),
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}/_admin/{path}", self.origin));
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.expect("admin request");
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.expect("admin json")
    }

    /// Empties the repository and the request log.
    pub async fn reset(&self) {
        self.admin(reqwest::Method::POST, "reset", None).await;
    }

    /// Stores resources with their ids (a Bundle or an array); returns how many.
    pub async fn load(&self, resources: &Value) -> u64 {
        self.admin(reqwest::Method::POST, "load", Some(resources))
            .await
            .get("loaded")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// Requests received under /fhir, /fault and /elsewhere since the last reset.
    pub async fn requests(&self) -> Vec<Value> {
        let v = self.admin(reqwest::Method::GET, "requests", None).await;
        v.get("requests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// A FHIR GET with the token, as the EHR would run a prefetch template.
    pub async fn get(&self, relative: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/{relative}", self.base(None)))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("FHIR GET");
        assert!(
            resp.status().is_success(),
            "GET {relative}: {}",
            resp.status()
        );
        resp.json().await.expect("FHIR json")
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
