//! One training step computed by a trainer program the owner approved.
//!
//! The party writes the step's rows (the job's inputs after its encoding and standardisation,
//! then the label) to `rows.csv` in a fresh scratch directory, runs the program there
//! confined ([`veil_sandbox`]: no network, that directory and the interpreter's files only),
//! writes one JSON object to its standard input and reads one from its standard output:
//!
//! ```text
//! in:  {"protocol": "veil-trainer/1", "round": 0, "rounds": 20, "seed": 7,
//!       "parameters": [...], "rows": "rows.csv", "features": [...], "label": "target",
//!       "local": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1, ...}}
//! out: {"update": [...]}     (new parameters minus the given ones, as many values)
//! ```
//!
//! veil then bounds the update, adds the job's noise and masks it like a built-in model's
//! ([`veil_learning::job::program_vector`]). Why a program failed (its exit status, its
//! standard error, what it printed instead of an update) stays in this party's log: the
//! program chooses all of it and sees the rows, so the coordinator gets only one fixed
//! sentence, [`TrainerError::Failed`], whatever went wrong.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use veil_learning::job::TrainSpec;
use veil_learning::train::{Examples, LocalSettings};
use veil_sandbox::{Confinement, Limits, SYSTEM_READ_ONLY, Sandbox};

use crate::config::TrainersConfig;

/// The protocol's name, first in every input.
pub const PROTOCOL: &str = "veil-trainer/1";

/// What a program reads on its standard input.
#[derive(Debug, Serialize)]
struct Input<'a> {
    protocol: &'static str,
    round: u32,
    rounds: u32,
    seed: u64,
    parameters: &'a [f64],
    rows: &'static str,
    features: Vec<String>,
    label: &'a str,
    local: &'a LocalSettings,
}

/// What a program writes on its standard output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    update: Vec<f64>,
}

/// Why a step's program gave no update. Neither message holds anything the program chose.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The program could not be started (no sandbox, scratch directory or interpreter): the
    /// party's own setup, before the program saw any row.
    #[error("the trainer program could not run: {0}")]
    Setup(String),
    /// The program ran and gave no update: it failed, was stopped at a limit, or printed
    /// something else. The details are in this party's log.
    #[error(
        "the trainer program failed (it exited with an error, ran past a limit or printed no update); the details are in the log of the party that ran it"
    )]
    Failed,
}

/// Runs the program of `spec` for training round `round` on `rows`, from the global
/// `parameters`; returns its update (of any length: the caller checks it against the job).
pub fn run_step(
    config: &TrainersConfig,
    confined: bool,
    spec: &TrainSpec,
    round: u32,
    parameters: &[f64],
    rows: &Examples,
) -> Result<Vec<f64>, TrainerError> {
    let trainer = spec
        .trainer
        .as_ref()
        .ok_or_else(|| TrainerError::Setup("the job has no trainer program".into()))?;
    let setup = |e: std::io::Error| TrainerError::Setup(e.to_string());
    let scratch = tempfile::Builder::new().prefix("veil-trainer-").tempdir().map_err(setup)?;
    std::fs::write(scratch.path().join("trainer.py"), &trainer.source).map_err(setup)?;
    write_rows(&scratch.path().join("rows.csv"), spec, rows).map_err(setup)?;
    let input = Input {
        protocol: PROTOCOL,
        round,
        rounds: spec.rounds,
        seed: spec.seed,
        parameters,
        rows: "rows.csv",
        features: spec.inputs(),
        label: &spec.label,
        local: &spec.local,
    };
    let mut stdin = serde_json::to_vec(&input).map_err(|e| TrainerError::Setup(e.to_string()))?;
    stdin.push(b'\n');
    let mut read_only: Vec<PathBuf> = SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect();
    read_only.extend(config.read_paths.iter().cloned());
    let sandbox = Sandbox {
        program: config.interpreter.clone(),
        args: vec!["trainer.py".into()],
        read_only,
        scratch: scratch.path().to_path_buf(),
        env: vec![
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("OMP_NUM_THREADS".into(), "1".into()),
            ("VEIL_TRAINER_PROTOCOL".into(), PROTOCOL.into()),
        ],
        limits: Limits {
            wall: Duration::from_secs(config.timeout_seconds),
            cpu_seconds: config.timeout_seconds.saturating_mul(2),
            memory_bytes: config.memory_mib.saturating_mul(1 << 20),
            // The update as JSON: at most about 25 bytes a value.
            output_bytes: 64 + 25 * parameters.len().max(1),
            ..Limits::default()
        },
    };
    let confinement = if confined { Confinement::Sandboxed } else { Confinement::None };
    let output = match sandbox.run(&stdin, confinement) {
        Ok(output) => output,
        Err(e @ (veil_sandbox::Error::Spawn { .. } | veil_sandbox::Error::Unsupported(_))) => {
            return Err(TrainerError::Setup(e.to_string()));
        }
        Err(e) => {
            tracing::warn!(round, error = %e, "the trainer program was stopped");
            return Err(TrainerError::Failed);
        }
    };
    if !output.status.success() {
        tracing::warn!(
            round,
            status = %output.status,
            stderr = %String::from_utf8_lossy(&output.stderr_tail),
            "the trainer program failed"
        );
        return Err(TrainerError::Failed);
    }
    match serde_json::from_slice::<Reply>(&output.stdout) {
        Ok(reply) => Ok(reply.update),
        Err(e) => {
            tracing::warn!(
                round,
                error = %e,
                "the trainer program printed no {{\"update\": [...]}} object on its standard output"
            );
            Err(TrainerError::Failed)
        }
    }
}

/// The rows as CSV: the job's inputs by name, then the label.
fn write_rows(path: &std::path::Path, spec: &TrainSpec, rows: &Examples) -> std::io::Result<()> {
    let mut out = csv::Writer::from_path(path)?;
    let mut header = spec.inputs();
    header.push(spec.label.clone());
    out.write_record(&header)?;
    let mut line = Vec::with_capacity(header.len());
    for (x, y) in rows.x.rows().into_iter().zip(&rows.y) {
        line.clear();
        line.extend(x.iter().chain([y]).map(f64::to_string));
        out.write_record(&line)?;
    }
    out.flush()
}
