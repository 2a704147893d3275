//! The `veil` command.
//!
//! - `veil demo`: a coordinator and three hospitals on loopback with mutual TLS compute joint
//!   statistics over the bundled sample data, and the answer is printed beside the pooled one.
//! - `veil init`: create a consortium (CA, certificates, identity keys, roster, configs).
//! - `veil coordinator`, `veil party`: run the services.
//! - `veil submit`, `veil query`, `veil psi`, `veil jobs`, `veil result`, `veil cancel`,
//!   `veil parties`: consumer and administrator commands.
//! - `veil bench secagg`, `veil bench rounds`: performance.

mod bench;
mod bench_train;
mod client;
mod demo;
mod governance;
mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use veil_protocol::Stage;

#[derive(Parser)]
#[command(name = "veil", version, about = "Privacy-preserving joint computation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The options of the consumer's listing commands.
#[derive(clap::Args)]
struct Listing {
    #[arg(long, short, env = "VEIL_CONSUMER")]
    config: PathBuf,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    dangerous_plaintext: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a joint computation over the bundled sample data on loopback and compare it with
    /// the pooled answer.
    Demo,
    /// Create a consortium: CA, certificates, party identity keys, roster and config files.
    Init {
        /// An empty directory to create it in.
        dir: PathBuf,
        /// The consortium's name.
        #[arg(long, default_value = "veil")]
        name: String,
        /// Party names, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "party-a,party-b,party-c")]
        parties: Vec<String>,
        /// Consumer names, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "analyst")]
        consumers: Vec<String>,
        /// Administrator names, comma separated (consumers who may also list parties).
        #[arg(long, value_delimiter = ',', default_value = "operator")]
        admins: Vec<String>,
        /// The coordinator's address.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
    },
    /// Run the coordinator.
    Coordinator {
        /// Its configuration (coordinator.toml from `veil init`).
        #[arg(long, short)]
        config: PathBuf,
        /// Serve without TLS. Anyone reaching the port can submit jobs and impersonate parties.
        #[arg(long)]
        dangerous_plaintext: bool,
    },
    /// Run a party beside its data.
    Party {
        /// Its configuration (party.toml from `veil init`, with its datasets added).
        #[arg(long, short)]
        config: PathBuf,
        /// Connect without TLS.
        #[arg(long)]
        dangerous_plaintext: bool,
        /// Accept synthetic benchmark jobs, including plain unmasked rounds.
        #[arg(long)]
        dangerous_benchmark: bool,
        /// Fault drill: exit right after sending the round message of this stage.
        #[arg(long, value_parser = parse_stage)]
        dangerous_exit_after: Option<Stage>,
    },
    /// Submit a job and follow it to its answer.
    Submit {
        /// The job specification (TOML or JSON).
        spec: PathBuf,
        /// The consumer's configuration (consumer.toml from `veil init`).
        #[arg(long, short, env = "VEIL_CONSUMER")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Return as soon as the job is accepted.
        #[arg(long)]
        detach: bool,
        /// Fail rather than answer over fewer than every party that serves the dataset.
        #[arg(long)]
        require_all: bool,
        /// Training jobs: write the model file (JSON) here.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Training jobs: write the weights in the safetensors format here.
        #[arg(long)]
        safetensors: Option<PathBuf>,
        /// Connect without TLS.
        #[arg(long)]
        dangerous_plaintext: bool,
    },
    /// Count the keys two parties' datasets share (a private set intersection), e.g.
    /// `veil psi jfk_flights.tailnum planes.tailnum`: the first side's party computes the size;
    /// neither sees the other's keys.
    Psi {
        /// The side that computes the result, as `<dataset>.<key column>`.
        client: String,
        /// The other side, as `<dataset>.<key column>`.
        server: String,
        #[arg(long, short, env = "VEIL_CONSUMER")]
        config: PathBuf,
        /// Match keys regardless of case (they are always trimmed).
        #[arg(long)]
        case_fold: bool,
        /// Release the size with discrete Gaussian noise at this zCDP ρ (a positive number).
        #[arg(long, value_parser = parse_rho, allow_hyphen_values = true)]
        rho: Option<f64>,
        /// Also give the first side's party the intersection itself (its keys the other side
        /// holds), which it keeps; the other side's policy must name it in
        /// `reveal_membership_to`.
        #[arg(long, conflicts_with = "rho")]
        intersection: bool,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        dangerous_plaintext: bool,
    },
    /// Run a SQL aggregate query over a dataset the parties serve, and print the table.
    Query {
        /// The query, e.g. "SELECT carrier, COUNT(*), AVG(dep_delay) FROM flights GROUP BY carrier".
        sql: String,
        #[arg(long, short, env = "VEIL_CONSUMER")]
        config: PathBuf,
        /// Answer with differential privacy at this zCDP ρ (a positive number).
        #[arg(long, value_parser = parse_rho, allow_hyphen_values = true)]
        rho: Option<f64>,
        /// What the answer is for.
        #[arg(long, default_value = "")]
        purpose: String,
        /// Suppress groups and bins counting fewer.
        #[arg(long)]
        k_threshold: Option<u64>,
        /// The fewest parties.
        #[arg(long, default_value_t = 2)]
        min_parties: u32,
        /// Fail rather than answer over fewer than every party that serves the dataset.
        #[arg(long)]
        require_all: bool,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        dangerous_plaintext: bool,
    },
    /// What the connected parties serve: each dataset's columns, types, declared bounds and
    /// domains, and the parties serving it.
    Datasets(Listing),
    /// List your jobs (all jobs for an administrator).
    Jobs(Listing),
    /// Fetch a job's result.
    Result {
        /// The job id.
        id: String,
        #[arg(long, short, env = "VEIL_CONSUMER")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Training jobs: write the model file (JSON) here.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Training jobs: write the weights in the safetensors format here.
        #[arg(long)]
        safetensors: Option<PathBuf>,
        #[arg(long)]
        dangerous_plaintext: bool,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[arg(long, short, env = "VEIL_CONSUMER")]
        config: PathBuf,
        #[arg(long)]
        dangerous_plaintext: bool,
    },
    /// List the parties and whether they are connected (administrators).
    Parties(Listing),
    /// Propose column tags for a CSV file (counts and reasons, never values).
    Catalog {
        #[command(subcommand)]
        what: CatalogCommand,
    },
    /// A party's spent and remaining privacy budget.
    Budget {
        /// The party's configuration.
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Rebuild the budget ledger from the party's signed audit log, after the party
        /// refused to start because the two disagree (take a copy of the database first).
        #[arg(long)]
        repair_ledger: bool,
    },
    /// Release receipts: a party's (party.toml) or a consumer's (consumer.toml).
    Receipts {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Export or verify audit logs.
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// Score a local CSV file with a model file (format `veil-model/1`); nothing leaves this
    /// machine. Writes CSV to standard output: the predicted class and its probabilities, or
    /// the predicted value.
    Predict {
        /// The model file.
        #[arg(long)]
        model: PathBuf,
        /// Rows with the model's feature columns (by name; other columns are ignored).
        data: PathBuf,
    },
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        what: bench::BenchTarget,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Scan a CSV file.
    Scan {
        /// The file.
        csv: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print a log as JSON: a party's (party.toml) or the coordinator's (an administrator's
    /// consumer.toml).
    Export {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a log's chain and signatures against the roster, and its cross-references with
    /// another log; names the first entry that fails.
    Verify {
        /// The exported log.
        log: PathBuf,
        /// The consortium roster.
        #[arg(long)]
        roster: PathBuf,
        /// Another party's or the coordinator's exported log to cross-check with.
        #[arg(long)]
        against: Option<PathBuf>,
    },
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::ALL
        .into_iter()
        .find(|st| st.to_string() == s)
        .ok_or_else(|| format!("unknown stage {s:?}; one of advertise-keys, share-keys, masked-input, consistency-check, unmask"))
}

/// A zCDP ρ given on the command line: a positive finite number. NaN, infinities, zero and
/// negatives are refused here, before anything is sent.
fn parse_rho(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rho) if rho.is_finite() && rho > 0.0 => Ok(rho),
        _ => Err(format!("--rho must be a positive finite number (a zCDP ρ such as 0.5), got {s}")),
    }
}

fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output::colour_logs())
        .try_init();
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Usage errors are clap's (status 2); any other failure is one `error: …` line on standard
/// error and status 1, never a backtrace; a closed output pipe ends the command quietly with
/// status 0 (see [`output`]).
fn main() -> ExitCode {
    output::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            output::report(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo => {
            logging("error");
            demo::run().await
        }
        Command::Init { dir, name, parties, consumers, admins, listen } => {
            let mut all: Vec<(String, bool)> = consumers.into_iter().map(|c| (c, false)).collect();
            all.extend(admins.into_iter().map(|a| (a, true)));
            let layout = veil_coordinator::consortium::create(
                &dir,
                &veil_coordinator::consortium::ConsortiumSpec {
                    name,
                    parties,
                    consumers: all,
                    coordinator: listen,
                },
            )?;
            println!("created consortium in {}", layout.root.display());
            println!("  roster:      {}", layout.roster.display());
            println!(
                "  coordinator: veil coordinator --config {}",
                layout.coordinator_config.display()
            );
            for p in &layout.party_configs {
                println!(
                    "  party:       veil party --config {}  (add its [[datasets]] first)",
                    p.display()
                );
            }
            for c in &layout.consumer_configs {
                println!("  consumer:    veil submit job.toml --config {}", c.display());
            }
            Ok(())
        }
        Command::Coordinator { config, dangerous_plaintext } => {
            logging("info");
            let file = veil_coordinator::CoordinatorFile::load(&config)?;
            let listen = file.listen;
            let config = file.into_config(dangerous_plaintext)?;
            if dangerous_plaintext {
                tracing::warn!(
                    "serving WITHOUT TLS: anyone reaching the port can submit jobs and pose as a party"
                );
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(%listen, "coordinator listening");
            veil_coordinator::serve(config, listener, ctrl_c()).await?;
            Ok(())
        }
        Command::Party {
            config,
            dangerous_plaintext,
            dangerous_benchmark,
            dangerous_exit_after,
        } => {
            logging("info");
            let mut file = veil_party_worker::PartyFile::load(&config)?;
            if dangerous_plaintext {
                file.coordinator = file.coordinator.replacen("https://", "http://", 1);
            }
            let config = file.into_config(dangerous_plaintext)?;
            for d in &config.datasets {
                if !d.path.exists() {
                    tracing::warn!(dataset = %d.name, path = %d.path.display(), "dataset file not found; jobs on it will be refused");
                }
            }
            let options = veil_party_worker::WorkerOptions {
                dangerous_benchmark,
                fault: dangerous_exit_after.map(veil_party_worker::Fault::ExitAfter),
            };
            veil_party_worker::run(config, options, ctrl_c()).await?;
            Ok(())
        }
        Command::Submit {
            spec,
            config,
            json,
            detach,
            require_all,
            model,
            safetensors,
            dangerous_plaintext,
        } => {
            logging("warn");
            let exports = client::Exports { model, safetensors };
            client::submit(&config, &spec, json, detach, &exports, dangerous_plaintext, require_all)
                .await
        }
        Command::Query {
            sql,
            config,
            rho,
            purpose,
            k_threshold,
            min_parties,
            require_all,
            json,
            dangerous_plaintext,
        } => {
            logging("warn");
            let mut options = serde_json::json!({ "min_parties": min_parties });
            if !purpose.is_empty() {
                options["purpose"] = purpose.into();
            }
            if let Some(r) = rho {
                options["privacy"] = serde_json::json!({ "rho": r });
            }
            if let Some(k) = k_threshold {
                options["k_threshold"] = k.into();
            }
            client::query(&config, &sql, options, json, dangerous_plaintext, require_all).await
        }
        Command::Psi {
            client,
            server,
            config,
            case_fold,
            rho,
            intersection,
            json,
            dangerous_plaintext,
        } => {
            let options = client::PsiOptions { case_fold, rho, intersection };
            logging("warn");
            client::psi(&config, &client, &server, options, json, dangerous_plaintext).await
        }
        Command::Datasets(Listing { config, json, dangerous_plaintext }) => {
            logging("warn");
            client::datasets(&config, json, dangerous_plaintext).await
        }
        Command::Jobs(Listing { config, json, dangerous_plaintext }) => {
            logging("warn");
            client::jobs(&config, json, dangerous_plaintext).await
        }
        Command::Result { id, config, json, model, safetensors, dangerous_plaintext } => {
            logging("warn");
            let exports = client::Exports { model, safetensors };
            client::result(&config, &id, json, &exports, dangerous_plaintext).await
        }
        Command::Cancel { id, config, dangerous_plaintext } => {
            logging("warn");
            client::cancel(&config, &id, dangerous_plaintext).await
        }
        Command::Parties(Listing { config, json, dangerous_plaintext }) => {
            logging("warn");
            client::parties(&config, json, dangerous_plaintext).await
        }
        Command::Catalog { what: CatalogCommand::Scan { csv, json } } => {
            governance::scan(&csv, json)
        }
        Command::Budget { config, repair_ledger: true, .. } => governance::repair_ledger(&config),
        Command::Budget { config, json, .. } => governance::budget(&config, json),
        Command::Receipts { config, json } => {
            logging("warn");
            governance::receipts(&config, json).await
        }
        Command::Audit { what: AuditCommand::Export { config } } => {
            logging("warn");
            governance::export(&config).await
        }
        Command::Audit { what: AuditCommand::Verify { log, roster, against } } => {
            governance::verify(&log, &roster, against.as_deref())
        }
        Command::Predict { model, data } => {
            veil_cli::predict::predict(&model, &data, &mut std::io::stdout().lock())
        }
        Command::Bench { what } => {
            logging("warn");
            bench::run(what).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_with_rho(rho: &str) -> Result<Option<f64>, String> {
        let args = ["veil", "query", "SELECT COUNT(*) FROM d", "--config", "c.toml", "--rho", rho];
        match Cli::try_parse_from(args) {
            Ok(Cli { command: Command::Query { rho, .. } }) => Ok(rho),
            Ok(_) => Err("not a query".to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `--rho` takes a positive finite number and refuses anything else at parsing, with a
    /// message naming the option and the value.
    #[test]
    fn rho_must_be_a_positive_finite_number() {
        assert_eq!(query_with_rho("0.5"), Ok(Some(0.5)));
        assert_eq!(query_with_rho("1e-3"), Ok(Some(0.001)));
        for bad in ["NaN", "nan", "inf", "-inf", "0", "-0", "-0.5", "half"] {
            let e = query_with_rho(bad).unwrap_err();
            assert!(
                e.contains(&format!(
                    "--rho must be a positive finite number (a zCDP ρ such as 0.5), got {bad}"
                )),
                "{bad}: {e}"
            );
        }
    }
}
