//! The `offramp` command: thin; parses arguments and calls the library.

use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use offramp::clinical::history::read_history;
use offramp::clinical::{ExposureParams, exposure};
use offramp::knowledge_files;
use std::path::PathBuf;
use std::process::ExitCode;

// Parsing a request allocates thousands of small JSON values, all freed together at its end;
// glibc malloc spent a third of the request's CPU there (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "offramp",
    version,
    about = "Benzodiazepine and opioid co-prescription CDS Hooks service"
)]
struct Cli {
    /// Configuration file layered over the built-in defaults (then OFFRAMP__* variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of knowledge tables to use instead of the ones built in.
    #[arg(long, global = true, value_name = "DIR")]
    knowledge: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate the knowledge tables, then print what they hold.
    CheckKnowledge,
    /// Load and validate the configuration (issuers and their keys included); print warnings.
    CheckConfig,
    /// Run the CDS Hooks service.
    Serve {
        /// Address to listen on (overrides server.bind); port 0 picks a free port.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print the keyed hash a patient has in the audit stream and the store (needs the
    /// deployment's store.patient_key), to find a patient's decisions in the audit log.
    HashPatient {
        /// The issuer (iss) of the EHR that sent the patient's hook calls.
        #[arg(long)]
        issuer: String,
        /// The issuer's tenant, when its configuration names one.
        #[arg(long)]
        tenant: Option<String>,
        /// context.patientId as the EHR sends it.
        patient_id: String,
    },
    /// Probe a running service's /healthz (for container probes); exit 0 when healthy.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Evaluate a CDS Hooks request file offline (prefetch only) and print the response JSON.
    Evaluate {
        /// A CDS Hooks request (order-select or order-sign) with prefetch.
        request: PathBuf,
        /// The day to evaluate on (YYYY-MM-DD); defaults to today.
        #[arg(long)]
        today: Option<NaiveDate>,
        /// Service id; defaults to offramp-<hook>.
        #[arg(long)]
        service: Option<String>,
        /// Print the printable patient handout (HTML) of the taper plan instead of the response.
        #[arg(long)]
        handout: bool,
    },
    /// Print the medication exposure computed from FHIR JSON files (Bundles or resources).
    Exposure {
        /// FHIR JSON files: Bundles, arrays of resources, or single resources.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The day to evaluate on (YYYY-MM-DD); defaults to today.
        #[arg(long)]
        today: Option<NaiveDate>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::CheckConfig => return check_config(cli.config.as_deref()),
        Command::Serve { listen } => return serve(cli.config.as_deref(), *listen),
        Command::Healthcheck { url } => return healthcheck(url),
        Command::HashPatient {
            issuer,
            tenant,
            patient_id,
        } => return hash_patient(cli.config.as_deref(), issuer, tenant.as_deref(), patient_id),
        _ => {}
    }
    let kb = match knowledge_files::load(cli.knowledge.as_deref()) {
        Ok(kb) => kb,
        Err(e) => {
            eprintln!("offramp: knowledge tables rejected: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig
        | Command::Serve { .. }
        | Command::Healthcheck { .. }
        | Command::HashPatient { .. } => ExitCode::SUCCESS,
        Command::CheckKnowledge => print_out(&format!("knowledge ok: {}", kb.summary())),
        Command::Evaluate {
            request,
            today,
            service,
            handout,
        } => evaluate(&kb, &request, today, service, handout),
        Command::Exposure { files, today } => {
            let mut docs = Vec::new();
            for f in &files {
                let parsed = std::fs::read_to_string(f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        serde_json::from_str::<offramp::clinical::json::Json<'_>>(&t)
                            .map(offramp::clinical::json::Json::into_owned)
                            .map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok(v) => docs.push(v),
                    Err(e) => {
                        eprintln!("offramp: {}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                }
            }
            let refs: Vec<&offramp::clinical::json::Json<'_>> = docs.iter().collect();
            let history = read_history(&refs);
            let today = today.unwrap_or_else(|| chrono::Local::now().date_naive());
            let params = ExposureParams::from_thresholds(kb.thresholds());
            let exp = exposure(&kb, &history.records, today, &params);
            let out = serde_json::json!({
                "today": today,
                "records": history.records.len(),
                "skipped": history.skipped,
                "exposure": exp,
            });
            match serde_json::to_string_pretty(&out) {
                Ok(s) => print_out(&s),
                Err(e) => {
                    eprintln!("offramp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn evaluate(
    kb: &offramp::clinical::Knowledge,
    path: &std::path::Path,
    today: Option<NaiveDate>,
    service: Option<String>,
    handout: bool,
) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("offramp: {}: {msg}", path.display());
        ExitCode::from(2)
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let req: offramp::protocol::CdsRequest = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => return fail(format!("not a CDS Hooks request: {e}")),
    };
    let catalogue = match offramp::protocol::Discovery::embedded() {
        Ok(c) => c,
        Err(e) => return fail(format!("service catalogue: {e}")),
    };
    let service = service.unwrap_or_else(|| format!("offramp-{}", req.hook));
    let today = today.unwrap_or_else(|| chrono::Local::now().date_naive());
    // Offline there is no server to link to; the page is printed instead.
    let calendar = handout.then_some("offline:calendar");
    let opts = offramp::hooks::EvalOptions {
        calendar_url: calendar,
        partial: None,
    };
    match offramp::hooks::evaluate_request_with(kb, &catalogue, &service, &req, today, opts) {
        Ok(out) if handout => match &out.calendar_html {
            Some(html) => print_out(html),
            None => fail("no taper plan in this response".into()),
        },
        Ok(out) => match serde_json::to_string_pretty(&out.response) {
            Ok(s) => print_out(&s),
            Err(e) => fail(e.to_string()),
        },
        Err(e) => fail(e.to_string()),
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
fn print_out(s: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("offramp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration from its layers and the process environment; exit 2 with the reason.
fn load_config(file: Option<&std::path::Path>) -> Result<offramp::config::Config, ExitCode> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    offramp::config::Config::load(file, &env).map_err(|e| {
        eprintln!("offramp: {e}");
        ExitCode::from(2)
    })
}

fn check_config(file: Option<&std::path::Path>) -> ExitCode {
    let config = match load_config(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let replay = std::sync::Arc::new(offramp::auth::replay::MemoryReplayGuard::default());
    if let Err(e) = runtime.block_on(offramp::auth::Verifier::new(config.auth.clone(), replay)) {
        eprintln!("offramp: configuration: {e}");
        return ExitCode::from(2);
    }
    // What serve builds at start from the settings alone (Redis URLs and TLS roots, the FHIR
    // client's CA); nothing waits for Redis or a FHIR server.
    let built = runtime.block_on(async {
        offramp::store::build(&config.store, std::time::Duration::from_secs(1))?;
        offramp::fhir::FhirClient::new(&config.fhir).map(|_| ())
    });
    if let Err(e) = built {
        eprintln!("offramp: configuration: {e}");
        return ExitCode::from(2);
    }
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    print_out(&format!(
        "config ok: bind {}, public base URL {}, {} trusted issuer(s)",
        config.server.bind,
        config
            .server
            .public_base_url
            .as_deref()
            .unwrap_or("(none: aud from the Host header)"),
        config.auth.issuers.len()
    ))
}

fn hash_patient(
    file: Option<&std::path::Path>,
    issuer: &str,
    tenant: Option<&str>,
    patient_id: &str,
) -> ExitCode {
    let config = match load_config(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = &config.store.patient_key.0;
    if key.is_empty() {
        // A random key per process: nothing this command prints would match.
        eprintln!(
            "offramp: store.patient_key is not set (OFFRAMP__STORE__PATIENT_KEY): the service hashes with a random key per process"
        );
        return ExitCode::from(2);
    }
    let hasher = offramp::store::PatientHasher::new(key.as_bytes());
    let reference = offramp::hooks::answers::patient_ref(issuer, tenant, patient_id);
    print_out(&hasher.hash(&reference))
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("offramp: {e}"))
        .ok()
}

fn serve(file: Option<&std::path::Path>, listen: Option<std::net::SocketAddr>) -> ExitCode {
    let config = match load_config(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = offramp::audit::init_logging(&config.audit) {
        eprintln!("offramp: logging: {e}");
        return ExitCode::from(2);
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    // The configured limits, not the defaults: the server section is what hospital IT tunes.
    let limits = offramp::http::Limits::from(&config.server);
    rt.block_on(async move {
        let state = match offramp::http::build_state(&config).await {
            Ok(s) => std::sync::Arc::new(s),
            Err(e) => {
                eprintln!("offramp: {e}");
                return ExitCode::from(2);
            }
        };
        let addr = listen.unwrap_or(config.server.bind);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("offramp: cannot listen on {addr}: {e}");
                return ExitCode::from(2);
            }
        };
        let bound = listener
            .local_addr()
            .map_or_else(|_| addr.to_string(), |a| a.to_string());
        tracing::info!(address = %bound, "listening");
        match offramp::http::run(listener, state, limits, offramp::http::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("offramp: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn healthcheck(url: &str) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let client = match reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
        {
            Ok(c) => c,
            Err(_) => return ExitCode::FAILURE,
        };
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
            Ok(r) => {
                eprintln!("offramp: unhealthy: {}", r.status());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("offramp: unreachable: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
