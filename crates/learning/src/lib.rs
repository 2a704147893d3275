//! Federated training, with no I/O: models with exact gradients, local training, the
//! server's strategies, how updates enter the secure sum, and evaluation counts that add up.
//!
//! A round: the server's [`model::Model`] goes to the parties; each runs
//! [`train::train_local`] on its own rows and puts `rows·Δ` and `rows` into the secure sum
//! ([`strategy::UpdateEncoding`]); the server decodes only the weighted mean and applies it
//! with its [`strategy::Strategy`]. Evaluation is another sum, of [`eval::EvalCounts`].
//! [`privacy`] holds DP-FedAvg's clipping and distributed noise, the accountant and cohort
//! sampling.

pub mod encode;
pub mod eval;
pub mod export;
pub mod job;
pub mod model;
pub mod privacy;
pub mod rdp;
pub mod strategy;
pub mod train;

/// What can go wrong in training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Data or parameters of the wrong shape, or labels a model cannot take.
    #[error("shape: {0}")]
    Shape(String),
    /// Settings out of range.
    #[error("settings: {0}")]
    Settings(String),
    /// The privacy budget does not pay for another round.
    #[error("budget: {0}")]
    Budget(String),
    /// Too few parties for a round.
    #[error("cohort: {0}")]
    Cohort(String),
    /// Training produced non-finite values.
    #[error("diverged: {0}")]
    Diverged(String),
}

/// Training results.
pub type Result<T> = std::result::Result<T, Error>;
