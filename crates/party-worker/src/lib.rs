//! The veil party worker.
//!
//! A party runs beside its data. It dials out to the coordinator and holds one stream
//! ([`worker`]); for every job it is offered, it checks the specification against the datasets
//! it serves, computes its local vector from its own rows ([`data`]) and, if it accepts, takes
//! part in the secure round: only its masked vector and the protocol's shares ever leave.
//! Whether it takes part in a job is decided with no I/O ([`admission`]). Its configuration
//! is a TOML file ([`config`]).

pub mod admission;
pub mod config;
pub mod data;
mod jobs;
pub mod store;
#[cfg(test)]
mod testing;
pub mod trainer;
pub mod worker;

pub use config::{PartyConfig, PartyFile};
pub use worker::{Fault, WorkerError, WorkerOptions, run};
