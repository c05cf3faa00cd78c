//! The `offramp` command: thin; parses arguments and calls the library.

use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use offramp::clinical::history::read_history;
use offramp::clinical::{ExposureParams, exposure};
use offramp::knowledge_files;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "offramp",
    version,
    about = "Benzodiazepine and opioid co-prescription CDS Hooks service"
)]
struct Cli {
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
    let kb = match knowledge_files::load(cli.knowledge.as_deref()) {
        Ok(kb) => kb,
        Err(e) => {
            eprintln!("offramp: knowledge tables rejected: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckKnowledge => {
            println!("knowledge ok: {}", kb.summary());
            ExitCode::SUCCESS
        }
        Command::Exposure { files, today } => {
            let mut docs = Vec::new();
            for f in &files {
                let parsed = std::fs::read_to_string(f)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok(v) => docs.push(v),
                    Err(e) => {
                        eprintln!("offramp: {}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                }
            }
            let refs: Vec<&serde_json::Value> = docs.iter().collect();
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
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("offramp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
