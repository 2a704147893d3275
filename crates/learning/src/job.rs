//! Training jobs: the specification a consumer submits, the steps the coordinator runs, what a
//! party puts into each step's secure sum, and how the coordinator turns the sums into the
//! next global model.
//!
//! A job is a sequence of secure aggregation rounds ("steps"):
//!
//! 1. [`Step::Moments`] (when standardising): each party's row count, Σx and Σx², from which the
//!    coordinator derives the standardisation every party then applies;
//! 2. [`Step::Train`] for each round: the party trains the global model it was sent and
//!    contributes its encoded update, followed (without DP) by the evaluation counts of the
//!    model it was sent on its held-out rows, so one sum yields the update and the metrics of
//!    the model before it;
//! 3. [`Step::Evaluate`] (without DP): the final model's evaluation counts.
//!
//! Both sides derive every vector's layout from the specification alone, so a party checks the
//! length it is asked for, and every seed from the job's seed, so a job resumed from a
//! checkpoint repeats exactly what an uninterrupted one would have done.

use ndarray::{Array1, Array2};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use veil_protocol::fixed_point::{WIDE_LIMBS, decode_wide, encode_wide};

use crate::encode::Encoding;
use crate::eval::{EvalCounts, Metrics};
use crate::export::{ModelFile, Provenance};
use crate::model::{Model, ModelSpec, check_labels};
use crate::privacy::{Accountant, DpFedAvg, DpSgd, SampledGaussian, sample_cohort};
use crate::strategy::{Server, Strategy, UpdateEncoding};
use crate::train::{Examples, LocalSettings, Standardizer, train_local};
use crate::{Error, Result};

/// The `kind` of a training specification.
pub const KIND: &str = "train";

/// Most parties whose sums a training job's encodings decode.
pub const MAX_PARTIES: usize = 1024;

/// Most rows one party may train or evaluate on.
pub const MAX_ROWS: usize = 100_000_000;

/// Most rounds one job may ask for: also the most round reports the coordinator stores for
/// one job.
pub const MAX_ROUNDS: u32 = 100_000;

/// Most values a job's checkpoints may hold over the whole job: the coordinator writes the
/// model, the server optimiser's moments and the standardisation after every step, so this
/// bounds what one job makes it write (about 22 bytes a value: some 6 GB at most).
pub const MAX_CHECKPOINTED_VALUES: u64 = 1 << 28;

/// Most feature columns.
pub const MAX_FEATURES: usize = 4096;

/// Most parameters a job's model may have: the global model travels in every round start,
/// which must stay well inside the wire's message limit (16 MiB of parameters).
pub const MAX_JOB_PARAMETERS: usize = 1 << 21;

/// Most rows per local batch.
pub const MAX_BATCH: usize = 1 << 16;

/// Most activations one batch (or one evaluation chunk) may hold in its widest layer.
pub const MAX_ACTIVATIONS: usize = 1 << 24;

/// Rows evaluated at once.
const EVAL_CHUNK: usize = 4096;

/// Exact sums of reals (standardisation moments, evaluation counts): each value scaled by
/// 2^16, rounded, and carried as a wide integer in three limbs, so no count or moment a party
/// can hold overflows the ring.
const EXACT_SCALE: f64 = 65536.0;

/// Largest magnitude of one value in an exact sum: its scaled value stays below 2^100, so sums
/// over [`MAX_PARTIES`] parties stay far inside the wide encoding.
const EXACT_MAX: f64 = 1.9e25;

/// A training job as submitted (TOML or JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Always [`KIND`].
    pub kind: String,
    /// The dataset every party trains on.
    pub dataset: String,
    /// Feature columns, in the model's input order.
    pub features: Vec<String>,
    /// The label column: class indices `0..classes` (0 and 1 for logistic regression), or the
    /// real target of linear regression; or text mapped to classes by `encode.label`.
    pub label: String,
    /// How the parties turn the feature columns into the model's inputs (categorical one-hot,
    /// missing-value indicators) and a text label into classes.
    #[serde(default, skip_serializing_if = "Encoding::is_empty")]
    pub encode: Encoding,
    /// What the model is for, checked against the parties' policies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The model.
    pub model: ModelSpec,
    /// How the coordinator applies each round's mean update.
    #[serde(default = "fedavg")]
    pub strategy: Strategy,
    /// Training rounds.
    pub rounds: u32,
    /// What each party does with the global model in a round.
    pub local: LocalSettings,
    /// Differential privacy: DP-FedAvg (a party is the unit) or DP-SGD (a row is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<TrainPrivacy>,
    /// Held-out rows for federated evaluation.
    #[serde(default)]
    pub evaluation: Evaluation,
    /// Standardise features with statistics from a secure sum of moments.
    #[serde(default = "yes")]
    pub standardize: bool,
    /// Fraction of the accepted parties sampled into each round (at least `min_parties`).
    #[serde(default = "all")]
    pub cohort_fraction: f64,
    /// The fewest parties in any sum.
    #[serde(default = "two")]
    pub min_parties: u32,
    /// Seeds the initial model, cohort sampling, every party's batch order and the held-out
    /// split.
    #[serde(default)]
    pub seed: u64,
    /// Elements of a party's update are clipped to `[-update_bound, update_bound]` (without DP).
    #[serde(default = "ten")]
    pub update_bound: f64,
    /// A trainer program that computes each party's update instead of a built-in model (with
    /// `model = { kind = "program", parameters = N }`); parties run it only if their owners
    /// approved its exact source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerSpec>,
    /// Send updates unmasked: for benchmarks only; parties refuse it unless started with the
    /// dangerous benchmark flag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain: bool,
}

/// A trainer program: its source, which the parties' owners approve by its SHA-256, and the
/// bound veil puts on every update it returns.
///
/// Each round the party runs the program in a sandbox (no network, its rows and its scratch
/// directory only) with the global parameters on its standard input and reads an update of
/// the declared length from its standard output; see `docs/JOBS.md` for the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSpec {
    /// The program's source (the client reads it from the file the job names).
    pub source: String,
    /// L2 bound of one party's update: veil clips what the program returns to it (under
    /// DP-FedAvg, `privacy.clip` bounds it instead).
    pub clip: f64,
}

/// Largest trainer program source: 1 MiB.
pub const MAX_TRAINER_SOURCE: usize = 1 << 20;

/// Whose privacy a differentially private training job protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyUnit {
    /// One party's whole contribution, by DP-FedAvg: for many parties (cross-device), since
    /// the noise must hide a whole party's update.
    #[default]
    Party,
    /// One row, by DP-SGD under secure aggregation: for a few parties with many rows each
    /// (hospitals, banks), where hiding a whole party would drown the model in noise.
    Record,
}

impl PrivacyUnit {
    fn is_party(&self) -> bool {
        *self == Self::Party
    }
}

/// Differential-privacy settings of a training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainPrivacy {
    /// What one unit of privacy is: a party (DP-FedAvg, the default) or a row (DP-SGD).
    #[serde(default, skip_serializing_if = "PrivacyUnit::is_party")]
    pub unit: PrivacyUnit,
    /// L2 bound of one party's update (party unit) or of one row's gradient (record unit).
    pub clip: f64,
    /// Standard deviation of the summed noise, in units of `clip`.
    pub noise_multiplier: f64,
    /// The job's whole zCDP budget ρ (party unit); training stops before it would be exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// The job's budget ε at `delta` (record unit), by Rényi accounting of the sampled
    /// Gaussian; training stops before it would be exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Each row's probability of being sampled into a step (record unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<f64>,
    /// δ at which ε is reported.
    #[serde(default = "delta")]
    pub delta: f64,
    /// Fixed-point bits after the point.
    #[serde(default = "sixteen")]
    pub fractional_bits: u32,
}

/// A training job's differentially private mechanism.
#[derive(Clone, Debug, PartialEq)]
pub enum Dp {
    /// DP-FedAvg: each party's update clipped and noised.
    FedAvg(DpFedAvg),
    /// Record-level DP-SGD: each sampled row's gradient clipped, the sum noised.
    Sgd(DpSgd),
}

/// Federated evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// Fraction of each party's rows held out of training and evaluated every round
    /// (0 turns evaluation off).
    #[serde(default = "fifth")]
    pub holdout: f64,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self { holdout: fifth() }
    }
}

fn fedavg() -> Strategy {
    Strategy::FedAvg
}
fn yes() -> bool {
    true
}
fn all() -> f64 {
    1.0
}
fn two() -> u32 {
    2
}
fn ten() -> f64 {
    10.0
}
fn delta() -> f64 {
    1e-6
}
fn sixteen() -> u32 {
    16
}
fn fifth() -> f64 {
    0.2
}

/// One secure sum of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Row counts, Σx and Σx² of the training rows.
    Moments,
    /// Training round `round` (from 0).
    Train {
        /// The round.
        round: u32,
    },
    /// The final model's evaluation counts.
    Evaluate,
}

impl Step {
    /// The step's wire code: 0 moments, `1 + round` training, `u32::MAX` evaluation.
    pub fn code(self) -> u32 {
        match self {
            Self::Moments => 0,
            Self::Train { round } => round.saturating_add(1),
            Self::Evaluate => u32::MAX,
        }
    }

    /// The step of a wire code.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Moments,
            u32::MAX => Self::Evaluate,
            c => Self::Train { round: c - 1 },
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Moments => write!(f, "standardisation statistics"),
            Self::Train { round } => write!(f, "round {}", round + 1),
            Self::Evaluate => write!(f, "final evaluation"),
        }
    }
}

impl TrainSpec {
    /// Checks every setting's range and the model's size.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Settings(m));
        if self.kind != KIND {
            return bad(format!("kind must be {KIND:?}, not {:?}", self.kind));
        }
        if self.dataset.is_empty() {
            return bad("dataset is empty".into());
        }
        if self.features.is_empty() || self.features.len() > MAX_FEATURES {
            return bad(format!(
                "1 to {MAX_FEATURES} feature columns, not {}",
                self.features.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in self.features.iter().chain([&self.label]) {
            if f.is_empty() || !seen.insert(f.as_str()) {
                return bad(format!(
                    "column {f:?} is empty or named twice among the features and the label"
                ));
            }
        }
        self.encode.validate(&self.features, &self.label)?;
        if !self.encode.impute_mean.is_empty() && !self.standardize {
            return bad(
                "encode.impute_mean fills missing values with the mean the standardisation computes: set standardize = true".into(),
            );
        }
        // A label map gives classes: as many as the model has (a label's class the model does
        // not have would make the parties holding it decline, telling who holds it).
        if let Some(map) = &self.encode.label {
            let given = map.classes.as_ref().map_or(2, Vec::len);
            if self.model.classes() != Some(given) {
                return bad(format!(
                    "label {:?} maps to {given} classes; the model {}",
                    self.label,
                    match self.model.classes() {
                        Some(k) => format!("has {k}"),
                        None => "takes a numeric label".into(),
                    }
                ));
            }
        }
        if self.inputs().len() > MAX_FEATURES {
            return bad(format!(
                "the features encode into {} inputs; at most {MAX_FEATURES}",
                self.inputs().len()
            ));
        }
        if self.rounds == 0 || self.rounds > MAX_ROUNDS {
            return bad(format!("rounds must be 1 to {MAX_ROUNDS}, not {}", self.rounds));
        }
        if self.min_parties == 0 || self.min_parties as usize > MAX_PARTIES {
            return bad(format!("min_parties must be 1 to {MAX_PARTIES}"));
        }
        if !(self.cohort_fraction > 0.0 && self.cohort_fraction <= 1.0) {
            return bad(format!("cohort_fraction must be in (0, 1], not {}", self.cohort_fraction));
        }
        if !(0.0..0.9).contains(&self.evaluation.holdout) {
            return bad(format!(
                "evaluation.holdout must be in [0, 0.9), not {}",
                self.evaluation.holdout
            ));
        }
        if !(self.update_bound.is_finite() && self.update_bound > 0.0) {
            return bad(format!("update_bound must be positive, not {}", self.update_bound));
        }
        self.local.validate()?;
        self.strategy.validate()?;
        let parameters = self.model.parameter_count(self.inputs().len())?;
        if parameters > MAX_JOB_PARAMETERS {
            return bad(format!(
                "the model has {parameters} parameters; a training job's model has at most {MAX_JOB_PARAMETERS}"
            ));
        }
        let widest = self.model.widths(self.inputs().len()).into_iter().max().unwrap_or(1);
        if self.local.batch_size > MAX_BATCH || self.local.batch_size * widest > MAX_ACTIVATIONS {
            return bad(format!(
                "batch_size {} is too large for layers {widest} wide: at most {MAX_BATCH} rows and {MAX_ACTIVATIONS} activations per batch",
                self.local.batch_size
            ));
        }
        if let Some(p) = &self.privacy {
            self.validate_privacy(p)?;
        } else {
            self.update_encoding()?;
        }
        self.validate_trainer()?;
        let steps = u64::from(self.rounds_to_run()?) + 2;
        let per_step = self.checkpoint_values()?;
        if steps.saturating_mul(per_step) > MAX_CHECKPOINTED_VALUES {
            return bad(format!(
                "the job would checkpoint {per_step} values after each of up to {steps} steps, {} in all; a training job checkpoints at most {MAX_CHECKPOINTED_VALUES}: ask for fewer rounds or a smaller model",
                steps.saturating_mul(per_step)
            ));
        }
        Ok(())
    }

    /// A program's model comes with its trainer, and what veil cannot do for a model it does not
    /// know is refused: evaluating it, and clipping its per-row gradients.
    fn validate_trainer(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Settings(m.into()));
        let program = matches!(self.model, ModelSpec::Program { .. });
        match &self.trainer {
            None if program => bad("a program's model needs a [trainer] with the program"),
            None => Ok(()),
            Some(_) if !program => bad(
                "a job with a trainer program declares its model as { kind = \"program\", parameters = N }",
            ),
            Some(t) => {
                if t.source.is_empty() || t.source.len() > MAX_TRAINER_SOURCE {
                    return bad("the trainer program's source is empty or larger than 1 MiB");
                }
                if !(t.clip.is_finite() && t.clip > 0.0) {
                    return bad("trainer.clip must be positive");
                }
                if self.evaluation.holdout > 0.0 {
                    return bad(
                        "veil cannot evaluate a program's model: set [evaluation] holdout = 0",
                    );
                }
                if self.privacy.as_ref().is_some_and(|p| p.unit == PrivacyUnit::Record) {
                    return bad(
                        "record-level DP clips each row's gradient, which a program's model does not expose to veil: use unit = \"party\"",
                    );
                }
                if self.encode.label.is_some() {
                    return bad("a trainer program takes a numeric label: leave encode.label out");
                }
                Ok(())
            }
        }
    }

    /// Checks the privacy settings: each unit's own budget and settings, and that the budget
    /// pays for at least one round.
    fn validate_privacy(&self, p: &TrainPrivacy) -> Result<()> {
        let bad = |m: &str| Err(Error::Settings(m.into()));
        let positive = |v: Option<f64>| v.is_some_and(|v| v.is_finite() && v > 0.0);
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return bad("privacy.delta must be in (0, 1)");
        }
        match p.unit {
            PrivacyUnit::Party => {
                if !positive(p.rho) {
                    return bad("privacy.rho, the job's zCDP budget, must be positive");
                }
                if p.epsilon.is_some() || p.sample_rate.is_some() {
                    return bad(
                        "privacy.epsilon and privacy.sample_rate are for unit = \"record\"; a party-level job's budget is privacy.rho",
                    );
                }
            }
            PrivacyUnit::Record => {
                if !positive(p.epsilon) || p.sample_rate.is_none() {
                    return bad(
                        "a record-level job needs privacy.epsilon (its budget at privacy.delta) and privacy.sample_rate",
                    );
                }
                if p.rho.is_some() {
                    return bad(
                        "a record-level job's budget is privacy.epsilon; the ρ it charges the owners follows from it",
                    );
                }
                if self.local.epochs != 1 {
                    return bad(
                        "a record-level job takes one DP-SGD step per round: local.epochs must be 1",
                    );
                }
            }
        }
        let accountant = self.accountant()?.expect("the job has privacy settings");
        if accountant.remaining_rounds() == 0 {
            return Err(Error::Budget(format!(
                "one round costs more than the job's budget ({}): raise the noise multiplier or the budget",
                match p.unit {
                    PrivacyUnit::Party => format!("ρ = {}", accountant.budget),
                    PrivacyUnit::Record => format!("ε = {} at δ = {}", accountant.budget, p.delta),
                }
            )));
        }
        Ok(())
    }

    /// The job's accountant before any round (`None` without DP).
    pub fn accountant(&self) -> Result<Option<Accountant>> {
        let Some(p) = &self.privacy else { return Ok(None) };
        let parameters = self.parameters()?;
        let missing = |what: &str| Error::Settings(format!("privacy.{what} is missing"));
        Ok(Some(match self.dp().expect("the job has privacy settings") {
            Dp::FedAvg(dp) => Accountant::new(
                dp.rho_per_round(parameters)?,
                p.rho.ok_or_else(|| missing("rho"))?,
                p.delta,
            )?,
            Dp::Sgd(dp) => Accountant::sampled(
                SampledGaussian { sample_rate: dp.sample_rate, sigma: dp.sigma(parameters)? },
                dp.rho_per_step(parameters)?,
                p.epsilon.ok_or_else(|| missing("epsilon"))?,
                p.delta,
            )?,
        }))
    }

    /// Values in one checkpoint of the job: the model's parameters (three times over with an
    /// adaptive server optimiser's two moments) and the standardisation's mean and scale.
    fn checkpoint_values(&self) -> Result<u64> {
        let copies = match self.strategy {
            Strategy::FedAdam(_) | Strategy::FedYogi(_) => 3,
            Strategy::FedAvg | Strategy::FedProx { .. } => 1,
        };
        Ok(copies * self.parameters()? as u64 + 2 * self.inputs().len() as u64)
    }

    /// The mechanism, when the job is differentially private.
    pub fn dp(&self) -> Option<Dp> {
        self.privacy.as_ref().map(|p| match p.unit {
            PrivacyUnit::Party => Dp::FedAvg(DpFedAvg {
                clip: p.clip,
                noise_multiplier: p.noise_multiplier,
                min_parties: self.min_parties,
                fractional_bits: p.fractional_bits,
            }),
            PrivacyUnit::Record => Dp::Sgd(DpSgd {
                clip: p.clip,
                noise_multiplier: p.noise_multiplier,
                sample_rate: p.sample_rate.unwrap_or(0.0),
                min_parties: self.min_parties,
                fractional_bits: p.fractional_bits,
            }),
        })
    }

    /// The model's inputs, named, in order: the features as `encode` turns them into numbers
    /// (a plain numeric feature is one input).
    pub fn inputs(&self) -> Vec<String> {
        self.encode.inputs(&self.features)
    }

    /// Parameters of the model.
    pub fn parameters(&self) -> Result<usize> {
        self.model.parameter_count(self.inputs().len())
    }

    /// The rounds that will run: all of them, or under DP as many as the budget pays for.
    pub fn rounds_to_run(&self) -> Result<u32> {
        Ok(match self.accountant()? {
            Some(a) => self.rounds.min(a.remaining_rounds()),
            None => self.rounds,
        })
    }

    /// The zCDP ρ a party reserves for the whole job (0 without DP).
    pub fn rho_total(&self) -> Result<f64> {
        Ok(match self.accountant()? {
            Some(a) => a.per_round * f64::from(self.rounds_to_run()?),
            None => 0.0,
        })
    }

    /// Whether the standardisation comes from the parties' declared bounds rather than from a
    /// secure sum of moments: so under DP, whose every release must be noised.
    pub fn standardizes_by_bounds(&self) -> bool {
        self.standardize && self.privacy.is_some()
    }

    /// Whether held-out rows are evaluated. Evaluation counts are exact sums, so a
    /// differentially private job releases none.
    pub fn evaluates(&self) -> bool {
        self.evaluation.holdout > 0.0 && self.privacy.is_none()
    }

    /// Whether the model is a classifier (evaluated with accuracy).
    pub fn classifier(&self) -> bool {
        self.model.classes().is_some()
    }

    fn binary(&self) -> bool {
        matches!(self.model, ModelSpec::LogisticRegression)
    }

    /// The fixed-point encoding of updates without DP: as many fractional bits (up to 20) as
    /// the bound leaves room for in sums over [`MAX_PARTIES`] parties of [`MAX_ROWS`] rows.
    fn update_encoding(&self) -> Result<UpdateEncoding> {
        let range = self.update_bound.max(1.0) * MAX_ROWS as f64;
        let room = (2f64.powi(61) / (range * MAX_PARTIES as f64)).log2().floor();
        if room < 8.0 {
            return Err(Error::Settings(format!(
                "update_bound {} is too large to encode with 8 fractional bits: at most about {:.0}",
                self.update_bound,
                2f64.powi(53) / (MAX_ROWS as f64 * MAX_PARTIES as f64)
            )));
        }
        UpdateEncoding::new(self.update_bound, MAX_ROWS, room.min(20.0) as u32, MAX_PARTIES)
    }

    /// Elements of the evaluation counts in the sum (three limbs per count).
    fn eval_len(&self) -> usize {
        WIDE_LIMBS * EvalCounts::vector_len(self.binary())
    }

    /// The length of a step's vector.
    pub fn vector_len(&self, step: Step) -> Result<usize> {
        Ok(match step {
            Step::Moments => WIDE_LIMBS * 3 * self.inputs().len(),
            Step::Train { .. } => {
                // Without DP the update and its weight; DP-FedAvg's update alone; DP-SGD's
                // gradient sum and its weighted row count.
                let update = UpdateEncoding::len(self.parameters()?);
                let update = match self.dp() {
                    Some(Dp::FedAvg(_)) => update - 1,
                    Some(Dp::Sgd(_)) | None => update,
                };
                update + if self.evaluates() { self.eval_len() } else { 0 }
            }
            Step::Evaluate => self.eval_len(),
        })
    }

    /// The seed of a party's local training in a round.
    fn local_seed(&self, round: u32, party: u32) -> [u8; 32] {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8..12].copy_from_slice(&round.to_le_bytes());
        seed[12..16].copy_from_slice(&party.to_le_bytes());
        seed[16..].copy_from_slice(b"veil/local/v1\0\0\0");
        seed
    }
}

/// A party's rows for a job: training and held-out evaluation rows, unstandardised.
#[derive(Clone, Debug)]
pub struct LocalData {
    /// Rows trained on.
    pub train: Examples,
    /// Rows held out for evaluation.
    pub eval: Examples,
}

/// splitmix64: the held-out split's per-row hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl LocalData {
    /// Splits a party's rows (`x`: one row per example in the spec's feature order; `y`: the
    /// label) into training and held-out rows by a seeded hash of the row's position, and
    /// checks the labels against the model.
    pub fn new(spec: &TrainSpec, x: Array2<f64>, y: Array1<f64>) -> Result<Self> {
        let inputs = spec.inputs().len();
        if x.ncols() != inputs || x.nrows() != y.len() {
            return Err(Error::Shape(format!(
                "{} rows of {} inputs and {} labels for a job of {inputs} inputs",
                x.nrows(),
                x.ncols(),
                y.len(),
            )));
        }
        if x.nrows() > MAX_ROWS {
            return Err(Error::Shape(format!("{} rows: at most {MAX_ROWS}", x.nrows())));
        }
        // The reason reaches the coordinator: it names how many labels are wrong, never one.
        if check_labels(&spec.model, y.view(), x.nrows()).is_err() {
            let bad = y
                .iter()
                .filter(|v| {
                    check_labels(&spec.model, ndarray::ArrayView1::from(&[**v][..]), 1).is_err()
                })
                .count();
            let want = match spec.model.classes() {
                Some(c) => format!("class indices 0 to {}", c - 1),
                None => "finite numbers".into(),
            };
            return Err(Error::Shape(format!(
                "{bad} of {} labels in column {:?} are not {want}",
                y.len(),
                spec.label
            )));
        }
        let all = Examples { x, y };
        let cut = (spec.evaluation.holdout * u64::MAX as f64) as u64;
        let (eval, train): (Vec<usize>, Vec<usize>) = (0..all.len())
            .partition(|&i| spec.evaluation.holdout > 0.0 && mix(spec.seed ^ mix(i as u64)) < cut);
        if train.is_empty() {
            return Err(Error::Shape("no rows are left to train on".into()));
        }
        Ok(Self { train: all.select(&train), eval: all.select(&eval) })
    }
}

/// What the coordinator sends with a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInput<'a> {
    /// The step.
    pub step: Step,
    /// The global model's parameters (training and evaluation steps).
    pub parameters: &'a [f64],
    /// The standardisation (when the job standardises, after the moments step).
    pub standardizer: Option<&'a Standardizer>,
}

/// A party's vector for a step. `party` seeds its local training (with the job's seed), so
/// a repeated step is repeated exactly; `rng` supplies stochastic rounding and, under DP, the
/// noise, and must then be unpredictable.
pub fn party_vector(
    spec: &TrainSpec,
    input: &StepInput<'_>,
    data: &LocalData,
    party: u32,
    rng: &mut impl RngCore,
) -> Result<Vec<u64>> {
    let standardized = |e: &Examples| standardized(spec, input, e);
    let model = || {
        Model::from_parameters(spec.model.clone(), spec.inputs().len(), input.parameters.to_vec())
    };
    let vector = match input.step {
        Step::Moments => encode_exact(
            &Standardizer::local_moments(data.train.x.view()),
            "the features' moments",
        )?,
        Step::Train { .. } if spec.trainer.is_some() => {
            return Err(Error::Settings(
                "a trainer program computes this step's update: see program_vector".into(),
            ));
        }
        Step::Train { round } => {
            let global = model()?;
            let train = standardized(&data.train)?;
            let local_update = || {
                train_local(
                    &global,
                    &train,
                    &spec.local,
                    spec.local.rate_at(round, spec.rounds),
                    spec.strategy.proximal_mu(),
                    spec.local_seed(round, party),
                )
            };
            let mut v = match spec.dp() {
                // One DP-SGD step: the rows sampled with the party's own randomness.
                Some(Dp::Sgd(dp)) => {
                    let batch = train.select(&dp.sample(train.len(), rng));
                    let sum =
                        global.clipped_gradient_sum(batch.x.view(), batch.y.view(), dp.clip)?;
                    dp.encode(&sum, MAX_PARTIES, rng)?
                }
                // A model that makes local training diverge (one crafted to overflow on some
                // rows) yields a zero update rather than a failed step, whose absence would
                // tell which rows the party holds without any noise.
                Some(Dp::FedAvg(dp)) => {
                    let delta = match local_update() {
                        Ok(update) => update.delta,
                        Err(Error::Diverged(_)) => vec![0.0; input.parameters.len()],
                        Err(e) => return Err(e),
                    };
                    dp.encode(&delta, MAX_PARTIES, rng)?.0
                }
                None => spec.update_encoding()?.encode(&local_update()?, rng)?,
            };
            if spec.evaluates() {
                v.extend(eval_vector(spec, &global, &standardized(&data.eval)?)?);
            }
            v
        }
        Step::Evaluate => eval_vector(spec, &model()?, &standardized(&data.eval)?)?,
    };
    debug_assert_eq!(vector.len(), spec.vector_len(input.step).unwrap_or(0));
    Ok(vector)
}

/// The rows a party trains on in a step, standardised as the step says.
pub fn training_rows(
    spec: &TrainSpec,
    input: &StepInput<'_>,
    data: &LocalData,
) -> Result<Examples> {
    standardized(spec, input, &data.train)
}

/// `rows` standardised as the step says.
fn standardized(spec: &TrainSpec, input: &StepInput<'_>, rows: &Examples) -> Result<Examples> {
    let mut rows = rows.clone();
    match (spec.standardize, input.standardizer) {
        (true, Some(s)) => s.apply(&mut rows.x)?,
        (true, None) => {
            return Err(Error::Settings("the step comes without the standardisation".into()));
        }
        (false, _) => {}
    }
    Ok(rows)
}

/// A party's vector for a training step whose update a trainer program computed: the update
/// (new parameters minus the global ones, of the model's length) clipped to the trainer's
/// bound, or to `privacy.clip` and noised under DP-FedAvg, then encoded as a built-in model's.
pub fn program_vector(
    spec: &TrainSpec,
    step: Step,
    update: &[f64],
    rows: usize,
    rng: &mut impl RngCore,
) -> Result<Vec<u64>> {
    let Some(trainer) = &spec.trainer else {
        return Err(Error::Settings("the job has no trainer program".into()));
    };
    if !matches!(step, Step::Train { .. }) {
        return Err(Error::Settings(format!("a trainer program computes no {step}")));
    }
    let parameters = spec.parameters()?;
    if update.len() != parameters {
        return Err(Error::Shape(format!(
            "the trainer program returned {} values; the job's model has {parameters}",
            update.len()
        )));
    }
    if update.iter().any(|v| !v.is_finite()) {
        return Err(Error::Diverged("the trainer program returned a non-finite value".into()));
    }
    let vector = match spec.dp() {
        Some(Dp::FedAvg(dp)) => dp.encode(update, MAX_PARTIES, rng)?.0,
        Some(Dp::Sgd(_)) => {
            return Err(Error::Settings("record-level DP does not apply to programs".into()));
        }
        None => {
            let mut delta = update.to_vec();
            crate::strategy::clip_l2(&mut delta, trainer.clip);
            let update = crate::train::LocalUpdate { delta, rows, loss: 0.0 };
            spec.update_encoding()?.encode(&update, rng)?
        }
    };
    debug_assert_eq!(vector.len(), spec.vector_len(step).unwrap_or(0));
    Ok(vector)
}

/// A party's evaluation counts of `model` on its (standardised) held-out rows, in chunks so
/// that no forward pass holds more than [`EVAL_CHUNK`] rows, encoded exactly.
fn eval_vector(spec: &TrainSpec, model: &Model, eval: &Examples) -> Result<Vec<u64>> {
    let mut counts = EvalCounts::default();
    let mut at = 0;
    while at < eval.len() {
        let end = (at + EVAL_CHUNK).min(eval.len());
        let chunk = eval.select(&(at..end).collect::<Vec<_>>());
        counts.add(&EvalCounts::of(model, chunk.x.view(), chunk.y.view())?);
        at = end;
    }
    let mut v = counts.to_vector();
    v.resize(EvalCounts::vector_len(spec.binary()), 0.0);
    encode_exact(&v, "the evaluation counts")
}

/// Values as exact wide integers (scaled by 2^16 and rounded), three limbs each.
fn encode_exact(values: &[f64], what: &str) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(values.len() * WIDE_LIMBS);
    for v in values {
        if !(v.is_finite() && v.abs() < EXACT_MAX) {
            return Err(Error::Shape(format!(
                "{what} are not finite or exceed ±{EXACT_MAX:e}: rescale the columns"
            )));
        }
        out.extend(encode_wide((v * EXACT_SCALE).round() as i128));
    }
    Ok(out)
}

/// The reals of an exact sum.
fn decode_exact(sum: &[u64]) -> Result<Vec<f64>> {
    if sum.len() % WIDE_LIMBS != 0 {
        return Err(Error::Shape(format!("an exact sum of {} limbs", sum.len())));
    }
    Ok(sum
        .chunks_exact(WIDE_LIMBS)
        .map(|c| {
            let limbs: [u64; WIDE_LIMBS] = [c[0], c[1], c[2]];
            decode_wide(&limbs) as f64 / EXACT_SCALE
        })
        .collect())
}

/// One finished training round, as reported to the consumer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// The round (from 0).
    pub round: u32,
    /// Parties whose update is in the sum.
    pub contributors: u32,
    /// Rows trained on in all (without DP; a DP sum carries no row count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Evaluation of the model the round started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// ε at the job's δ spent so far (DP jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// The round was interrupted by a coordinator restart after the parties had contributed to
    /// it, and no result of it was kept: parties contribute to a step once, so it is skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

/// A job's finished rounds as its state holds them: how many, the last one's report, and the
/// reports not yet taken out to be stored. The coordinator takes the new reports out after
/// every step ([`History::take_unsaved`]) and appends them to a table of their own in the
/// transaction that writes the checkpoint, so a checkpoint stays the same size however many
/// rounds ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredHistory")]
pub struct History {
    /// Finished rounds, lost ones included.
    finished: u32,
    /// The last finished round's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<RoundReport>,
    /// Reports of the last finished rounds not yet taken out, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unsaved: Vec<RoundReport>,
}

impl History {
    /// Finished rounds, lost ones included.
    pub fn len(&self) -> usize {
        self.finished as usize
    }

    /// Whether no round has finished.
    pub fn is_empty(&self) -> bool {
        self.finished == 0
    }

    /// The last finished round's report.
    pub fn last(&self) -> Option<&RoundReport> {
        self.last.as_ref()
    }

    /// Reports not yet taken out, oldest first.
    pub fn unsaved(&self) -> &[RoundReport] {
        &self.unsaved
    }

    /// Takes out the reports of the rounds finished since the last call, oldest first.
    pub fn take_unsaved(&mut self) -> Vec<RoundReport> {
        std::mem::take(&mut self.unsaved)
    }

    fn push(&mut self, report: RoundReport) {
        debug_assert_eq!(report.round, self.finished, "rounds finish in order");
        self.finished += 1;
        self.last = Some(report.clone());
        self.unsaved.push(report);
    }
}

/// A history as a checkpoint holds it.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredHistory {
    /// How many rounds finished, the last report and those not yet stored elsewhere.
    Summary {
        finished: u32,
        #[serde(default)]
        last: Option<RoundReport>,
        #[serde(default)]
        unsaved: Vec<RoundReport>,
    },
    /// Every report: checkpoints written before the reports were stored apart. They are all
    /// unsaved, so the coordinator stores them at its next checkpoint.
    Whole(Vec<RoundReport>),
}

impl TryFrom<StoredHistory> for History {
    type Error = String;

    fn try_from(stored: StoredHistory) -> std::result::Result<Self, String> {
        let (finished, last, unsaved) = match stored {
            StoredHistory::Summary { finished, last, unsaved } => (finished, last, unsaved),
            StoredHistory::Whole(reports) => {
                let finished = u32::try_from(reports.len())
                    .map_err(|_| format!("a history of {} rounds", reports.len()))?;
                (finished, reports.last().cloned(), reports)
            }
        };
        let first_unsaved = u64::from(finished).checked_sub(unsaved.len() as u64);
        let numbered = unsaved
            .iter()
            .zip(first_unsaved.unwrap_or(0)..)
            .all(|(r, round)| u64::from(r.round) == round);
        let last_matches = match (&last, finished) {
            (None, 0) => true,
            (Some(l), n) if n > 0 => l.round == n - 1 && unsaved.last().is_none_or(|u| u == l),
            _ => false,
        };
        if first_unsaved.is_none() || !numbered || !last_matches {
            return Err(format!(
                "a history of {finished} rounds whose last report or unsaved reports do not match it"
            ));
        }
        Ok(Self { finished, last, unsaved })
    }
}

/// The coordinator's state of a training job: everything a checkpoint holds. Of the finished
/// rounds' reports it keeps only the last and those not yet stored (see [`History`]), so its
/// size does not grow with the rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// The global model and the server optimiser.
    pub server: Server,
    /// The standardisation, once computed.
    pub standardizer: Option<Standardizer>,
    /// The privacy spent (DP jobs).
    pub accountant: Option<Accountant>,
    /// Finished rounds.
    pub history: History,
    /// The final model's evaluation.
    pub final_metrics: Option<Metrics>,
    /// Whether the final evaluation step ran (or was lost).
    #[serde(default)]
    pub evaluated: bool,
    /// Why training stopped before its rounds, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
    /// The noisy counts of rows sampled into the DP-SGD steps so far (record-level jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_rows: Option<SampledRows>,
}

/// A record-level job's noisy batch sizes: the expected batch, by which each step's gradient
/// sum is divided, is their mean, which sharpens as the steps go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampledRows {
    /// Σ of the noisy counts.
    pub total: f64,
    /// Steps counted.
    pub steps: u32,
}

impl SampledRows {
    /// Adds a step's noisy count and returns the expected batch (at least one row).
    pub fn add(&mut self, count: f64) -> f64 {
        self.total += count;
        self.steps += 1;
        (self.total / f64::from(self.steps)).max(1.0)
    }
}

impl Training {
    /// A job's starting state: the initial model from the job's seed.
    pub fn new(spec: &TrainSpec) -> Result<Self> {
        spec.validate()?;
        let mut rng = ChaCha20Rng::seed_from_u64(spec.seed);
        let model = Model::new(spec.model.clone(), spec.inputs().len(), &mut rng)?;
        let accountant = spec.accountant()?;
        Ok(Self {
            server: Server::new(model, spec.strategy.clone())?,
            standardizer: None,
            accountant,
            history: History::default(),
            final_metrics: None,
            evaluated: false,
            stopped_early: None,
            sampled_rows: None,
        })
    }

    /// The next step, or `None` when the job is done.
    pub fn next_step(&self, spec: &TrainSpec) -> Option<Step> {
        if spec.standardize && self.standardizer.is_none() && spec.privacy.is_none() {
            return Some(Step::Moments);
        }
        let done = self.history.finished;
        let budget_left = self.accountant.as_ref().is_none_or(|a| a.remaining_rounds() > 0);
        if self.stopped_early.is_none() && done < spec.rounds && budget_left {
            return Some(Step::Train { round: done });
        }
        if spec.evaluates() && !self.evaluated {
            return Some(Step::Evaluate);
        }
        None
    }

    /// Skips the steps the parties already contributed to before a coordinator restart
    /// (`next_code` is the first step code they still accept): a lost training round is
    /// recorded as such (and under DP charged, since its noisy sum may have been seen), a lost
    /// evaluation leaves no metrics; a lost standardisation cannot be skipped. Returns the
    /// steps skipped.
    pub fn skip_lost(&mut self, spec: &TrainSpec, next_code: u64) -> Result<Vec<Step>> {
        let mut skipped = Vec::new();
        while let Some(step) = self.next_step(spec) {
            if u64::from(step.code()) >= next_code {
                break;
            }
            match step {
                Step::Moments => {
                    return Err(Error::Cohort(
                        "the standardisation step was interrupted after the parties contributed to it, and each step runs once: submit the job again".into(),
                    ));
                }
                Step::Train { round } => {
                    if let Some(a) = self.accountant.as_mut() {
                        a.charge()?;
                    }
                    self.history.push(RoundReport {
                        round,
                        contributors: 0,
                        rows: None,
                        metrics: None,
                        epsilon: self.accountant.as_ref().map(Accountant::epsilon),
                        lost: true,
                    });
                }
                Step::Evaluate => self.evaluated = true,
            }
            skipped.push(step);
        }
        Ok(skipped)
    }

    /// The parties of a step: every available one, except that training rounds sample
    /// `cohort_fraction` of them with the job's seed.
    pub fn cohort(&self, spec: &TrainSpec, step: Step, available: &[u32]) -> Result<Vec<u32>> {
        let min = spec.min_parties as usize;
        match step {
            Step::Train { round } if spec.cohort_fraction < 1.0 => {
                let mut rng = ChaCha20Rng::seed_from_u64(mix(spec.seed ^ mix(u64::from(round))));
                sample_cohort(available, spec.cohort_fraction, min, &mut rng)
            }
            _ if available.len() < min => Err(Error::Cohort(format!(
                "{} parties remain, the job needs at least {min}",
                available.len()
            ))),
            _ => Ok(available.to_vec()),
        }
    }

    /// Takes a step's sum over `contributors` parties; returns the round's report for
    /// training steps.
    pub fn absorb(
        &mut self,
        spec: &TrainSpec,
        step: Step,
        sum: &[u64],
        contributors: usize,
    ) -> Result<Option<RoundReport>> {
        let want = spec.vector_len(step)?;
        if sum.len() != want {
            return Err(Error::Shape(format!("a sum of {} elements, expected {want}", sum.len())));
        }
        if contributors < spec.min_parties as usize {
            return Err(Error::Cohort(format!(
                "a sum over {contributors} parties; the job needs at least {}",
                spec.min_parties
            )));
        }
        // No metrics when no party held out a row.
        let metrics = |v: &[u64]| -> Result<Option<Metrics>> {
            let counts = EvalCounts::from_vector(&decode_exact(v)?, spec.binary())?;
            Ok((counts.rows >= 1.0).then(|| counts.metrics(spec.classifier())))
        };
        match step {
            Step::Moments => {
                self.standardizer = Some(Standardizer::from_moments(&decode_exact(sum)?)?);
                Ok(None)
            }
            Step::Train { round } => {
                let update_len = want - if spec.evaluates() { spec.eval_len() } else { 0 };
                let (update, eval) = sum.split_at(update_len);
                let (mean, rows) = match (spec.dp(), self.accountant.as_mut()) {
                    (Some(Dp::FedAvg(dp)), Some(accountant)) => {
                        accountant.charge()?;
                        (dp.decode(update, contributors, MAX_PARTIES)?, None)
                    }
                    (Some(Dp::Sgd(dp)), Some(accountant)) => {
                        accountant.charge()?;
                        let (gradient, count) = dp.decode(update, contributors, MAX_PARTIES)?;
                        let batch = self.sampled_rows.get_or_insert_default().add(count);
                        (self.sgd_step(spec, round, &gradient, batch), None)
                    }
                    _ => {
                        let (mean, rows) = spec.update_encoding()?.decode(update, contributors)?;
                        (mean, Some(rows as u64))
                    }
                };
                self.server.apply(&mean)?;
                let report = RoundReport {
                    round,
                    contributors: contributors as u32,
                    rows,
                    metrics: if spec.evaluates() { metrics(eval)? } else { None },
                    lost: false,
                    epsilon: self.accountant.as_ref().map(Accountant::epsilon),
                };
                self.history.push(report.clone());
                Ok(Some(report))
            }
            Step::Evaluate => {
                self.final_metrics = metrics(sum)?;
                self.evaluated = true;
                Ok(None)
            }
        }
    }

    /// A DP-SGD step as an update for the server's strategy: minus the learning rate times the
    /// mean clipped gradient over the expected batch, plus the L2 penalty's gradient (which
    /// depends on the public model alone).
    fn sgd_step(&self, spec: &TrainSpec, round: u32, gradient: &[f64], batch: f64) -> Vec<f64> {
        let rate = spec.local.rate_at(round, spec.rounds);
        gradient
            .iter()
            .zip(&self.server.model.parameters)
            .map(|(g, w)| -rate * (g / batch + spec.local.l2 * w))
            .collect()
    }

    /// The trained model as a model file.
    pub fn model_file(&self, spec: &TrainSpec, parties: u32) -> Result<ModelFile> {
        let metrics = self
            .final_metrics
            .as_ref()
            .or_else(|| self.history.last().and_then(|r| r.metrics.as_ref()));
        let mut named = Vec::new();
        if let Some(m) = metrics {
            named.push(("loss".to_string(), m.loss));
            named.extend(m.accuracy.map(|a| ("accuracy".to_string(), a)));
            named.extend(m.auc.map(|a| ("auc".to_string(), a)));
        }
        let provenance = Provenance {
            dataset: spec.dataset.clone(),
            rounds: self.history.finished,
            strategy: serde_json::to_string(&spec.strategy).unwrap_or_default(),
            parties,
            epsilon: self.accountant.as_ref().map(Accountant::epsilon),
            delta: spec.privacy.as_ref().map(|p| p.delta),
            metrics: named,
        };
        let mut file = ModelFile::new(
            &self.server.model,
            spec.inputs(),
            spec.label.clone(),
            if spec.standardize { self.standardizer.clone() } else { None },
            provenance,
        )?;
        if !spec.encode.is_empty() {
            file.encode = Some(crate::export::FileEncoding {
                columns: spec.features.clone(),
                encoding: spec.encode.clone(),
                bounds: Default::default(),
            });
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Optimizer;

    fn spec() -> TrainSpec {
        TrainSpec {
            kind: KIND.into(),
            dataset: "d".into(),
            features: vec!["a".into(), "b".into()],
            label: "y".into(),
            encode: Encoding::default(),
            purpose: String::new(),
            model: ModelSpec::LogisticRegression,
            strategy: Strategy::FedAvg,
            rounds: 6,
            local: LocalSettings {
                epochs: 1,
                batch_size: 8,
                learning_rate: 0.5,
                schedule: crate::train::Schedule::Constant,
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                l2: 0.0,
            },
            privacy: None,
            evaluation: Evaluation::default(),
            standardize: true,
            cohort_fraction: 1.0,
            min_parties: 2,
            seed: 3,
            update_bound: 10.0,
            trainer: None,
            plain: false,
        }
    }

    /// Separable rows around a shifted centre, so standardisation matters.
    fn party_data(spec: &TrainSpec, offset: f64, rows: usize) -> LocalData {
        let mut x = Array2::zeros((rows, 2));
        let mut y = Array1::zeros(rows);
        for i in 0..rows {
            let t = (i as f64 * 0.37).sin();
            x[[i, 0]] = 100.0 + 10.0 * t + offset;
            x[[i, 1]] = (i as f64 * 1.3).cos();
            y[i] = f64::from(t > 0.0);
        }
        LocalData::new(spec, x, y).unwrap()
    }

    /// Runs up to `stop_after` steps; returns the round reports taken out after each step, as
    /// the coordinator takes them out to store them.
    fn run(
        spec: &TrainSpec,
        parties: &[LocalData],
        state: &mut Training,
        stop_after: usize,
    ) -> Vec<RoundReport> {
        let mut steps = 0;
        let mut stored = Vec::new();
        while let Some(step) = state.next_step(spec) {
            if steps == stop_after {
                break;
            }
            let params = state.server.model.parameters.clone();
            let input =
                StepInput { step, parameters: &params, standardizer: state.standardizer.as_ref() };
            let mut sum = vec![0u64; spec.vector_len(step).unwrap()];
            for (i, d) in parties.iter().enumerate() {
                let mut rng = ChaCha20Rng::seed_from_u64(u64::from(step.code()) << 8 | i as u64);
                let v = party_vector(spec, &input, d, i as u32, &mut rng).unwrap();
                assert_eq!(v.len(), sum.len(), "{step}");
                sum.iter_mut().zip(v).for_each(|(s, x)| *s = s.wrapping_add(x));
            }
            state.absorb(spec, step, &sum, parties.len()).unwrap();
            stored.extend(state.history.take_unsaved());
            steps += 1;
        }
        stored
    }

    #[test]
    fn a_job_standardises_trains_and_evaluates() {
        let s = spec();
        let parties = [party_data(&s, 0.0, 200), party_data(&s, 5.0, 150)];
        let mut state = Training::new(&s).unwrap();
        assert_eq!(state.next_step(&s), Some(Step::Moments));
        let history = run(&s, &parties, &mut state, usize::MAX);
        let mean = &state.standardizer.as_ref().unwrap().mean;
        assert!((mean[0] - 102.0).abs() < 2.0, "{mean:?}");
        assert_eq!(state.history.len(), 6);
        assert_eq!(history.iter().map(|r| r.round).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(state.history.last(), history.last());
        assert_eq!(history[0].rows, Some((parties[0].train.len() + parties[1].train.len()) as u64));
        let last = state.final_metrics.as_ref().unwrap();
        assert!(last.accuracy.unwrap() > 0.85, "{last:?}");
        let first = history[0].metrics.as_ref().unwrap();
        assert!(first.loss > last.loss, "training lowers the held-out loss");
        assert_eq!(state.next_step(&s), None);
        let file = state.model_file(&s, 2).unwrap();
        assert_eq!(file.provenance.rounds, 6);
    }

    /// A job resumed from a serialised checkpoint ends exactly where an uninterrupted one does.
    #[test]
    fn a_resumed_job_repeats_the_uninterrupted_one() {
        let s = spec();
        let parties = [party_data(&s, 0.0, 120), party_data(&s, 1.0, 90)];
        let mut whole = Training::new(&s).unwrap();
        let whole_history = run(&s, &parties, &mut whole, usize::MAX);
        let mut part = Training::new(&s).unwrap();
        let mut history = run(&s, &parties, &mut part, 3);
        let checkpoint = serde_json::to_string(&part).unwrap();
        let mut resumed: Training = serde_json::from_str(&checkpoint).unwrap();
        assert_eq!(resumed, part);
        history.extend(run(&s, &parties, &mut resumed, usize::MAX));
        assert_eq!(resumed.server.model.parameters, whole.server.model.parameters);
        assert_eq!(history, whole_history);
    }

    /// The checkpointed state keeps no per-round list: after 500 steps it is as large as after
    /// 50, give or take the digits of its numbers, while every report was taken out to be
    /// stored.
    #[test]
    fn a_checkpoint_does_not_grow_with_the_rounds() {
        let s = TrainSpec { rounds: 1000, ..spec() };
        let parties = [party_data(&s, 0.0, 40), party_data(&s, 1.0, 40)];
        let checkpoint_after = |steps: usize| {
            let mut state = Training::new(&s).unwrap();
            let stored = run(&s, &parties, &mut state, steps);
            // The first step is the standardisation; every other one finished a round.
            assert_eq!(stored.len(), steps - 1);
            assert!(stored.iter().zip(0..).all(|(r, round)| r.round == round));
            assert_eq!(state.history.len(), steps - 1);
            serde_json::to_string(&state).unwrap().len()
        };
        let (short, long) = (checkpoint_after(50), checkpoint_after(500));
        assert!(long < short + 256, "{short} bytes after 50 steps, {long} after 500");
    }

    /// A checkpoint written while the state still held every report resumes with all of them
    /// unsaved, so they are stored at the next checkpoint; a history that contradicts itself
    /// is refused.
    #[test]
    fn a_checkpoint_holding_every_report_resumes_with_them_unsaved() {
        let s = spec();
        let parties = [party_data(&s, 0.0, 80), party_data(&s, 1.0, 80)];
        let mut state = Training::new(&s).unwrap();
        let history = run(&s, &parties, &mut state, 4);
        let mut old = serde_json::to_value(&state).unwrap();
        old["history"] = serde_json::to_value(&history).unwrap();
        let mut resumed: Training = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(resumed.history.len(), 3);
        assert_eq!(resumed.history.last(), history.last());
        assert_eq!(resumed.history.take_unsaved(), history);
        assert_eq!(resumed, state);

        old["history"] = serde_json::json!({ "finished": 5, "last": history[2] });
        assert!(serde_json::from_value::<Training>(old.clone()).is_err());
        old["history"] =
            serde_json::json!({ "finished": 2, "last": history[1], "unsaved": history });
        assert!(serde_json::from_value::<Training>(old).is_err());
    }

    #[test]
    fn dp_jobs_stop_at_their_budget_and_release_no_counts() {
        let mut s = spec();
        s.privacy = Some(TrainPrivacy {
            unit: PrivacyUnit::Party,
            clip: 1.0,
            noise_multiplier: 2.0,
            rho: Some(0.4),
            epsilon: None,
            sample_rate: None,
            delta: 1e-6,
            fractional_bits: 10,
        });
        s.rounds = 50;
        s.validate().unwrap();
        let per_round = s.accountant().unwrap().unwrap().per_round;
        let affordable = s.rounds_to_run().unwrap();
        assert!(affordable < 50 && affordable > 0, "{affordable} rounds of ρ {per_round}");
        assert!(s.rho_total().unwrap() <= 0.4 + 1e-12);
        assert!(!s.evaluates());
        assert_eq!(s.vector_len(Step::Train { round: 0 }).unwrap(), 3);
        let parties = [party_data(&s, 0.0, 100), party_data(&s, 0.0, 100)];
        let mut state = Training::new(&s).unwrap();
        assert!(s.standardizes_by_bounds());
        state.standardizer =
            Some(Standardizer::from_bounds(&[(80.0, 130.0), (-1.0, 1.0)]).unwrap());
        let history = run(&s, &parties, &mut state, usize::MAX);
        assert_eq!(state.history.len() as u32, affordable);
        assert_eq!(history.len() as u32, affordable);
        let eps = state.history.last().unwrap().epsilon.unwrap();
        assert!(eps.is_finite() && eps > 0.0);
        assert_eq!(state.next_step(&s), None);
        // A budget smaller than one round is refused outright.
        s.privacy.as_mut().unwrap().rho = Some(per_round / 2.0);
        assert!(matches!(s.validate(), Err(Error::Budget(_))));
    }

    fn record_level(epsilon: f64, sample_rate: f64) -> TrainPrivacy {
        TrainPrivacy {
            unit: PrivacyUnit::Record,
            clip: 1.0,
            noise_multiplier: 1.5,
            rho: None,
            epsilon: Some(epsilon),
            sample_rate: Some(sample_rate),
            delta: 1e-5,
            fractional_bits: 16,
        }
    }

    /// A record-level job takes DP-SGD steps: its vector is the gradient sum and the weighted
    /// row count, it stops when the Rényi accountant's ε at δ would pass its budget, reports
    /// that ε, charges the owners the unamplified ρ per round, and still learns.
    #[test]
    fn record_level_jobs_take_dp_sgd_steps_until_their_epsilon() {
        let mut s = spec();
        s.local.epochs = 1;
        s.local.learning_rate = 1.0;
        s.rounds = 10_000;
        s.privacy = Some(record_level(4.0, 0.1));
        s.validate().unwrap();
        let accountant = s.accountant().unwrap().unwrap();
        let mechanism = accountant.sampled.clone().unwrap();
        // The sensitivity counts the weighted count and the rounding: σ a little below 1.5.
        assert!(mechanism.sigma < 1.5 && mechanism.sigma > 1.45, "{mechanism:?}");
        let rounds = s.rounds_to_run().unwrap();
        let eps = |t: u32| crate::rdp::epsilon(0.1, mechanism.sigma, u64::from(t), 1e-5).unwrap().0;
        assert!(rounds > 50 && eps(rounds) <= 4.0 && eps(rounds + 1) > 4.0, "{rounds}");
        assert_eq!(s.rho_total().unwrap(), accountant.per_round * f64::from(rounds));
        assert!((accountant.per_round - 1.0 / (2.0 * mechanism.sigma.powi(2))).abs() < 1e-12);
        assert_eq!(s.vector_len(Step::Train { round: 0 }).unwrap(), 3 + 1);
        assert!(!s.evaluates());

        let parties = [party_data(&s, 0.0, 400), party_data(&s, 0.0, 400)];
        let mut state = Training::new(&s).unwrap();
        state.standardizer =
            Some(Standardizer::from_bounds(&[(80.0, 130.0), (-1.0, 1.0)]).unwrap());
        let history = run(&s, &parties, &mut state, usize::MAX);
        assert_eq!(history.len() as u32, rounds);
        let last = history.last().unwrap();
        assert!((last.epsilon.unwrap() - eps(rounds)).abs() < 1e-12);
        assert_eq!(state.next_step(&s), None);
        // A tenth of the 2 × 320 training rows are in each step.
        let sampled = state.sampled_rows.as_ref().unwrap();
        let batch = sampled.total / f64::from(sampled.steps);
        assert!((batch - 64.0).abs() < 6.0, "{batch}");
        // The label is the sign of the first feature's wave: the model finds it.
        let eval = parties[0].eval.clone();
        let mut x = eval.x.clone();
        state.standardizer.as_ref().unwrap().apply(&mut x).unwrap();
        let p = state.server.model.predict(x.view()).unwrap();
        let right =
            p.column(0).into_iter().zip(&eval.y).filter(|(p, y)| (**p >= 0.5) == (**y == 1.0));
        assert!(right.count() as f64 >= 0.85 * eval.len() as f64);

        // Each unit takes its own budget and settings.
        let mut wrong = s.clone();
        wrong.privacy.as_mut().unwrap().rho = Some(1.0);
        assert!(matches!(wrong.validate(), Err(Error::Settings(_))));
        wrong.privacy = Some(TrainPrivacy { sample_rate: None, ..record_level(3.0, 0.5) });
        assert!(matches!(wrong.validate(), Err(Error::Settings(_))));
        wrong.privacy = Some(record_level(3.0, 1.5));
        assert!(matches!(wrong.validate(), Err(Error::Settings(_))));
        wrong.privacy = Some(record_level(1e-3, 0.5));
        assert!(matches!(wrong.validate(), Err(Error::Budget(_))), "{:?}", wrong.validate());
        wrong.privacy = Some(record_level(3.0, 0.5));
        wrong.local.epochs = 2;
        assert!(matches!(wrong.validate(), Err(Error::Settings(_))));
        let mut party = s.clone();
        party.privacy.as_mut().unwrap().unit = PrivacyUnit::Party;
        assert!(matches!(party.validate(), Err(Error::Settings(_))));
        // The default unit is the party, and a party-level job's form is unchanged.
        let json = serde_json::to_value(TrainPrivacy {
            unit: PrivacyUnit::Party,
            rho: Some(1.0),
            epsilon: None,
            sample_rate: None,
            ..record_level(1.0, 1.0)
        })
        .unwrap();
        assert!(json.get("unit").is_none() && json.get("epsilon").is_none(), "{json}");
    }

    /// A program's model: veil checks the job, bounds what the program returns and sums it
    /// like a built-in model's update, and refuses what it cannot do for a model it does not
    /// know.
    #[test]
    fn trainer_program_updates_are_checked_bounded_and_summed() {
        let program = TrainSpec {
            model: ModelSpec::Program { parameters: 3 },
            trainer: Some(TrainerSpec { source: "print()".into(), clip: 0.5 }),
            evaluation: Evaluation { holdout: 0.0 },
            ..spec()
        };
        program.validate().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let step = Step::Train { round: 0 };
        // An update of length 5 along the first axis is clipped to the trainer's 0.5.
        let v = program_vector(&program, step, &[5.0, 0.0, 0.0], 10, &mut rng).unwrap();
        // Two parties' identical updates: the mean moves the model by the clipped update.
        let sum: Vec<u64> = v.iter().zip(&v).map(|(a, b)| a.wrapping_add(*b)).collect();
        let mut state = Training::new(&program).unwrap();
        state.absorb(&program, step, &sum, 2).unwrap();
        let w = &state.server.model.parameters;
        assert!((w[0] - 0.5).abs() < 1e-3 && w[1].abs() < 1e-3, "{w:?}");
        assert!(matches!(
            program_vector(&program, step, &[1.0, 2.0], 10, &mut rng),
            Err(Error::Shape(_))
        ));
        assert!(program_vector(&program, step, &[f64::NAN, 0.0, 0.0], 10, &mut rng).is_err());
        assert!(program_vector(&program, Step::Evaluate, &[0.0; 3], 10, &mut rng).is_err());
        let parties = [party_data(&program, 0.0, 20)];
        let input = StepInput { step, parameters: &[0.0; 3], standardizer: None };
        assert!(party_vector(&program, &input, &parties[0], 0, &mut rng).is_err());
        assert!(
            Model::new(program.model.clone(), 2, &mut rng)
                .unwrap()
                .predict(Array2::zeros((1, 2)).view())
                .is_err()
        );
        let refused = [
            TrainSpec { trainer: None, ..program.clone() },
            TrainSpec { evaluation: Evaluation { holdout: 0.2 }, ..program.clone() },
            TrainSpec { model: ModelSpec::LogisticRegression, ..program.clone() },
            TrainSpec {
                trainer: Some(TrainerSpec { source: String::new(), clip: 0.5 }),
                ..program.clone()
            },
            TrainSpec { privacy: Some(record_level(4.0, 0.1)), ..program.clone() },
        ];
        for s in refused {
            assert!(matches!(s.validate(), Err(Error::Settings(_))), "{:?}", s.validate());
        }
    }

    /// Missing values to impute take the mean of every party's present values, from the
    /// secure sum of moments: the same as imputing the pooled rows' mean, then standardising.
    #[test]
    fn imputed_means_come_from_the_parties_present_values() {
        let mut s = spec();
        s.encode.impute_mean = vec!["a".into()];
        s.encode.missing_indicator = vec!["a".into()];
        s.validate().unwrap();
        assert_eq!(s.inputs(), ["a", "a=(missing)", "b"]);
        let cells = |a: Option<f64>, b: f64| {
            let mut out = Vec::new();
            let a = a.map_or(crate::encode::Cell::Null, crate::encode::Cell::Number);
            s.encode
                .push_inputs(&s.features, &[a, crate::encode::Cell::Number(b)], &mut out)
                .unwrap();
            out
        };
        let party = |rows: &[(Option<f64>, f64)]| {
            let x: Vec<f64> = rows.iter().flat_map(|(a, b)| cells(*a, *b)).collect();
            let x = Array2::from_shape_vec((rows.len(), 3), x).unwrap();
            let y = Array1::from_iter((0..rows.len()).map(|i| (i % 2) as f64));
            LocalData {
                train: Examples { x, y: y.clone() },
                eval: Examples { x: Array2::zeros((0, 3)), y: Array1::zeros(0) },
            }
        };
        let parties = [
            party(&[(Some(1.0), 0.0), (None, 1.0), (Some(3.0), 2.0)]),
            party(&[(Some(8.0), 3.0), (None, 4.0)]),
        ];
        let mut state = Training::new(&s).unwrap();
        run(&s, &parties, &mut state, 1);
        let st = state.standardizer.clone().unwrap();
        // The pooled present values of a: 1, 3 and 8.
        assert!((st.mean[0] - 4.0).abs() < 1e-3, "{:?}", st.mean);
        assert!((st.scale[0] - 13f64.sqrt()).abs() < 1e-3, "{:?}", st.scale);
        let input =
            StepInput { step: Step::Train { round: 0 }, parameters: &[], standardizer: Some(&st) };
        let rows = training_rows(&s, &input, &parties[1]).unwrap();
        assert!(rows.x[[1, 0]].abs() < 1e-12 && rows.x[[1, 1]] > 0.0, "{:?}", rows.x);
        assert!(rows.x.iter().all(|v| v.is_finite()));
        // Without a standardisation there is no mean to impute.
        let unstandardised = TrainSpec { standardize: false, ..s.clone() };
        assert!(matches!(unstandardised.validate(), Err(Error::Settings(_))));
    }

    /// Steps the parties already contributed to before a restart are skipped: a lost round is
    /// recorded (and charged under DP), a lost standardisation cannot be skipped.
    #[test]
    fn lost_steps_are_skipped_and_recorded() {
        let s = spec();
        let parties = [party_data(&s, 0.0, 80), party_data(&s, 1.0, 80)];
        let mut state = Training::new(&s).unwrap();
        let mut history = run(&s, &parties, &mut state, 3);
        assert_eq!(state.next_step(&s), Some(Step::Train { round: 2 }));
        let skipped = state.skip_lost(&s, Step::Train { round: 2 }.code().into()).unwrap();
        assert!(skipped.is_empty());
        let skipped = state.skip_lost(&s, Step::Train { round: 3 }.code().into()).unwrap();
        assert_eq!(skipped, vec![Step::Train { round: 2 }]);
        let lost = state.history.last().unwrap();
        assert!(lost.round == 2 && lost.lost && lost.contributors == 0);
        history.extend(run(&s, &parties, &mut state, usize::MAX));
        assert_eq!(state.history.len(), 6);
        assert_eq!(history.len(), 6);
        assert!(history[2].lost && history.iter().filter(|r| r.lost).count() == 1);
        let mut fresh = Training::new(&s).unwrap();
        assert!(matches!(fresh.skip_lost(&s, 1), Err(Error::Cohort(_))));
    }

    #[test]
    fn bad_specifications_are_refused() {
        let bad = [
            TrainSpec { rounds: 0, ..spec() },
            TrainSpec { features: vec![], ..spec() },
            TrainSpec { label: "a".into(), ..spec() },
            TrainSpec { cohort_fraction: 0.0, ..spec() },
            TrainSpec { evaluation: Evaluation { holdout: 0.95 }, ..spec() },
            TrainSpec { kind: "columns".into(), ..spec() },
            TrainSpec { min_parties: 0, ..spec() },
            TrainSpec { update_bound: 1e9, ..spec() },
            TrainSpec { model: ModelSpec::Mlp { hidden: vec![4096, 4096], classes: 2 }, ..spec() },
            // 5,122 parameters checkpointed after each of 100,002 steps.
            TrainSpec {
                model: ModelSpec::Mlp { hidden: vec![1024], classes: 2 },
                rounds: MAX_ROUNDS,
                ..spec()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
        let wider = TrainSpec {
            model: ModelSpec::Mlp { hidden: vec![1024], classes: 2 },
            rounds: 10_000,
            ..spec()
        };
        wider.validate().unwrap();
        TrainSpec { rounds: MAX_ROUNDS, ..spec() }.validate().unwrap();
        let s = spec();
        let wrong_labels =
            LocalData::new(&s, Array2::zeros((3, 2)), Array1::from(vec![0.0, 2.0, 1.0]));
        assert!(wrong_labels.is_err());
        assert!(LocalData::new(&s, Array2::zeros((3, 3)), Array1::zeros(3)).is_err());
        for code in [0, 1, 7, u32::MAX] {
            assert_eq!(Step::from_code(code).code(), code);
        }
    }
}
