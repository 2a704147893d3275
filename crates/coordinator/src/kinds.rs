//! What the coordinator needs of each job kind, so that the driver never matches on kinds.
//!
//! A kind that runs as one secure round implements [`RoundKind`]: whether its round's session
//! is fixed at the offer, whether its vectors go unmasked, how long the vectors are, what it
//! charges, and how its answer is read off the sum. Training runs its own multi-round driver.
//! Adding a one-round kind is a module here and a line in [`of`]; docs/JOBS.md shows one.

mod columns;
mod synthetic;

use veil_analytics::{Job, JoinSpec, PsiSpec};
use veil_learning::job::TrainSpec;
use veil_protocol::Aggregate;

/// Why a job cannot be run as its kind says, or its answer not be read off its sum.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KindError(pub String);

/// A job kind that runs as one round.
pub trait RoundKind: Send + Sync {
    /// Whether the round's session is fixed at the offer, so that parties advertise their
    /// round keys with their acceptance.
    fn session_at_offer(&self) -> bool {
        !self.plain()
    }

    /// Whether parties send their vectors unmasked (benchmark jobs only; parties refuse them
    /// unless started for benchmarks).
    fn plain(&self) -> bool {
        false
    }

    /// Elements of every party's vector.
    fn vector_len(&self) -> Result<usize, KindError>;

    /// The zCDP ρ charged to every budget involved.
    fn rho(&self) -> f64 {
        0.0
    }

    /// The answer, as JSON, from the sum over the contributors.
    fn answer(&self, aggregate: &Aggregate) -> Result<String, KindError>;
}

/// A job's behaviour.
pub enum Kind<'a> {
    /// One round, and the answer from its sum.
    Round(Box<dyn RoundKind + 'a>),
    /// Federated training, with its own driver.
    Train(&'a TrainSpec),
    /// A private set intersection between two parties, relayed by its own driver.
    Psi(&'a PsiSpec),
    /// A private join: an exchange between the group side and each value party, then a
    /// secure round over their shares.
    Join(&'a JoinSpec),
}

impl Kind<'_> {
    /// Whether the round's session is fixed at the offer.
    pub fn session_at_offer(&self) -> bool {
        match self {
            Kind::Round(k) => k.session_at_offer(),
            Kind::Train(_) | Kind::Psi(_) | Kind::Join(_) => false,
        }
    }

    /// The zCDP ρ charged to every budget involved.
    pub fn rho(&self) -> Result<f64, KindError> {
        match self {
            Kind::Round(k) => Ok(k.rho()),
            Kind::Train(spec) => spec.rho_total().map_err(|e| KindError(e.to_string())),
            Kind::Psi(spec) => Ok(spec.privacy.as_ref().map_or(0.0, |p| p.rho)),
            Kind::Join(_) => Ok(0.0),
        }
    }
}

/// A join's round: the sides' shares add up to a column job's vector over the joined rows,
/// so the round and the answer are that column job's.
pub fn join_round(spec: &JoinSpec) -> Result<Box<dyn RoundKind + '_>, KindError> {
    Ok(Box::new(columns::Columns::new(&spec.aggregate)?))
}

/// Each job kind's behaviour: the one place that matches on kinds.
pub fn of(job: &Job) -> Result<Kind<'_>, KindError> {
    match job {
        Job::Columns(spec) => Ok(Kind::Round(Box::new(columns::Columns::new(spec)?))),
        Job::Synthetic(spec) => Ok(Kind::Round(Box::new(synthetic::Synthetic(spec)))),
        Job::Train(spec) => Ok(Kind::Train(spec)),
        Job::Psi(spec) => Ok(Kind::Psi(spec)),
        Job::Join(spec) => Ok(Kind::Join(spec)),
        Job::Sql(_) => Err(KindError("a SQL query runs only as the job it is planned into".into())),
    }
}
