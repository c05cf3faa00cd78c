//! Inputs for the load runs, made before the clock starts so the load generator only sends.
//!
//!   benchkit keys <dir>                          ES384 and RS384 keys (PKCS#8 PEM) + jwks.json
//!   benchkit tokens <dir> <ES384|RS384> <n> <aud> <out>   n tokens, each with its own jti
//!   benchkit body <history> <out> [--selections]  an order-sign request with a prefetched history
//!
//! Tokens are signed on every core (RSA signing is the slow part) and live 300 s, the longest
//! lifetime offramp accepts, so they are minted right before each run.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use chrono::NaiveDate;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

#[path = "../../../benches/common/mod.rs"]
mod common;

pub const ISS: &str = "https://ehr.bench.invalid";
/// Replaced per request by the load generator, so every request is a new hook instance.
const HOOK_INSTANCE: &str = "00000000-0000-4000-8000-000000000000";

type Result<T> = std::result::Result<T, String>;

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn kid(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS384 => "bench-rs384",
        _ => "bench-es384",
    }
}

fn encoding_key(dir: &Path, alg: Algorithm) -> Result<EncodingKey> {
    let file = dir.join(format!("{}.pem", kid(alg)));
    let text = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    match alg {
        Algorithm::RS384 => EncodingKey::from_rsa_pem(&text),
        _ => EncodingKey::from_ec_pem(&text),
    }
    .map_err(|e| format!("{}: {e}", file.display()))
}

fn keys(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let ec = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(|e| e.to_string())?;
    let ec_der = ec.to_pkcs8v1().map_err(|e| e.to_string())?;
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| e.to_string())?;
    let rsa_der = AsDer::<Pkcs8V1Der>::as_der(&rsa).map_err(|e| e.to_string())?;
    let mut set = JwkSet { keys: vec![] };
    for (alg, der) in [
        (Algorithm::ES384, ec_der.as_ref()),
        (Algorithm::RS384, rsa_der.as_ref()),
    ] {
        let file = dir.join(format!("{}.pem", kid(alg)));
        std::fs::write(&file, pem(der)).map_err(|e| e.to_string())?;
        let mut jwk =
            Jwk::from_encoding_key(&encoding_key(dir, alg)?, alg).map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid(alg).into());
        set.keys.push(jwk);
    }
    let json = serde_json::to_string_pretty(&set).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("jwks.json"), json).map_err(|e| e.to_string())
}

fn tokens(dir: &Path, alg: &str, n: usize, aud: &str, out: &Path) -> Result<()> {
    let alg = match alg {
        "ES384" => Algorithm::ES384,
        "RS384" => Algorithm::RS384,
        other => return Err(format!("unknown algorithm {other}")),
    };
    let key = encoding_key(dir, alg)?;
    let now = chrono::Utc::now().timestamp();
    // Unique across runs of the same server too, and across runs started in the same
    // microsecond (the reliability suite mints for several audiences at once).
    let run = format!(
        "{}-{}",
        chrono::Utc::now().timestamp_micros(),
        std::process::id()
    );
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let key = &key;
                let run = &run;
                s.spawn(move || {
                    let mut header = Header::new(alg);
                    header.kid = Some(kid(alg).into());
                    (w..n)
                        .step_by(workers)
                        .map(|i| {
                            let claims = json!({"iss": ISS, "aud": aud, "iat": now,
                                "exp": now + 300, "jti": format!("{run}-{i}")});
                            encode(&header, &claims, key).map_err(|e| e.to_string())
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "signer panicked".to_string())?)
            .collect()
    });
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(|e| e.to_string())?);
    for chunk in chunks {
        for t in chunk? {
            writeln!(file, "{t}").map_err(|e| e.to_string())?;
        }
    }
    file.flush().map_err(|e| e.to_string())
}

/// The order-sign example (oxycodone draft; benzodiazepine, fentanyl and COPD in the record) with
/// `history` extra prefetched records. `selections` adds an order-select style selection, which
/// the Node sandbox's price check needs before it does any work.
fn body(history: usize, out: &Path, selections: bool) -> Result<()> {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cds-hooks/examples/requests/order-sign-opioid-with-benzo.json"
    );
    let text = std::fs::read_to_string(example).map_err(|e| format!("{example}: {e}"))?;
    let mut req: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).ok_or("date")?;
    req["prefetch"]["medicationStatements"] = common::history(history, today);
    req["hookInstance"] = json!(HOOK_INSTANCE);
    if selections {
        req["context"]["selections"] = json!(["MedicationRequest/draft-1"]);
    }
    std::fs::write(out, serde_json::to_vec(&req).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

fn run(args: &[String]) -> Result<()> {
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match arg(0)? {
        "keys" => keys(Path::new(arg(1)?)),
        "tokens" => tokens(
            Path::new(arg(1)?),
            arg(2)?,
            arg(3)?.parse().map_err(|_| "count")?,
            arg(4)?,
            Path::new(arg(5)?),
        ),
        "body" => body(
            arg(1)?.parse().map_err(|_| "history size")?,
            Path::new(arg(2)?),
            args.get(3).is_some_and(|a| a == "--selections"),
        ),
        other => Err(format!("unknown command {other}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchkit: {e}");
            ExitCode::FAILURE
        }
    }
}
