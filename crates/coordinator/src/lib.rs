//! The veil coordinator.
//!
//! It is trusted for liveness only: it schedules jobs, offers them to the parties that hold the
//! named dataset, relays the secure aggregation round it cannot read, turns the unmasked sum
//! into the answer and stores it. Parties dial out to it and hold one stream each
//! ([`gateway`]); consumers submit and watch jobs ([`jobs`]); administrators list parties
//! ([`admin`]). Each job runs in its own task ([`driver`]) that feeds the protocol crate's
//! coordinator state machine; its offer and who the answer covers are pure ([`offer`]), and
//! what each kind of job does is its [`kinds`] entry's. The services and drivers share one hub
//! (connections, job inboxes, status broadcasts); state lives in SQLite ([`store`]).
//!
//! [`serve`] takes its listener and a shutdown future, so tests bind `127.0.0.1:0` and stop it
//! cleanly.

pub mod admin;
pub mod config;
pub mod consortium;
pub mod driver;
pub mod gateway;
mod hub;
pub mod jobs;
pub mod kinds;
pub mod offer;
mod serve;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use veil_proto::roster::RosterFile;
use veil_proto::tls::TlsMaterial;
use veil_protocol::PartyId;

pub use config::CoordinatorFile;

/// Called with every envelope a party sends, as encoded on the wire (a diagnostics hook:
/// tests use it to check what the coordinator can see).
pub type InboundTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// How the coordinator runs.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// Signs the audit log.
    pub identity: ed25519_dalek::SigningKey,
    /// The SQLite database file.
    pub database: PathBuf,
    /// The consortium roster.
    pub roster: RosterFile,
    /// TLS material; `None` serves plain text, only with the dangerous flag.
    pub tls: Option<TlsMaterial>,
    /// A party silent for this long in a round stage is a dropout.
    pub stage_timeout: Duration,
    /// How long parties have to accept or refuse a job.
    pub offer_timeout: Duration,
    /// The collusion bound `c` every round tolerates.
    pub max_corrupt: usize,
    /// Sees every inbound party envelope.
    pub inbound_tap: Option<InboundTap>,
}

impl std::fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("database", &self.database)
            .field("tls", &self.tls.is_some())
            .field("stage_timeout", &self.stage_timeout)
            .finish()
    }
}

/// Errors starting or running the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The roster is invalid.
    #[error("invalid roster: {0}")]
    Roster(String),
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A configuration file is invalid.
    #[error(transparent)]
    Config(#[from] veil_proto::ConfigError),
}

/// What a job's driver is told.
#[derive(Debug)]
pub(crate) enum JobInput {
    /// A party answered the offer.
    Reply(Box<offer::Reply>),
    /// An intersection's result, from the party that computed it.
    PsiResult { from: PartyId, result: veil_proto::v1::PsiResult },
    /// A round message from a party, with its audit log head when it sent one.
    Round { from: PartyId, bytes: Vec<u8>, head: Option<veil_governance::audit::Head> },
    /// A party's connection closed.
    Departed(PartyId),
    /// The consumer cancelled.
    Cancel,
}

pub(crate) use hub::{Connection, ProgressWrite, Shared, lock, next_connection_id, now_ms};
pub use serve::serve;
