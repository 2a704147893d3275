//! Secure aggregation for veil, with no I/O.
//!
//! This crate is the protocol core: the secure aggregation of Bonawitz et al. (CCS 2017) over
//! the sparse neighbour graph of SecAgg+ (Bell et al., CCS 2020), as two state machines, one
//! per role. It performs no networking, reads no clock and draws no OS randomness: messages
//! come in through `handle_*`, go out through `poll_*`, and time (`Instant`) and a CSPRNG are
//! arguments. The coordinator and party services drive these machines over gRPC; the testkit
//! drives them in memory.
//!
//! Layout:
//! - [`params`]: round parameters, the conditions they must satisfy, the neighbour graph.
//! - [`party`] and [`coordinator`]: the two roles.
//! - [`message`]: the messages and their strict binary encoding.
//! - [`crypto`]: X25519 agreement, HKDF, share encryption (ChaCha20-Poly1305), Ed25519 roster.
//! - [`shamir`]: threshold sharing over the Ed25519 scalar field.
//! - [`prg`]: AES-128-CTR mask expansion and the Z_2^64 vector kernels.
//! - [`fixed_point`]: encoding reals and integers into Z_2^64 without wrap-around.
//! - [`dp`]: exact discrete Gaussian and discrete Laplace samplers, and a fast CSPRNG for them.

mod codec;
pub mod coordinator;
pub mod crypto;
pub mod dp;
mod error;
pub mod fixed_point;
mod ids;
pub mod message;
pub mod params;
pub mod party;
pub mod prg;
pub mod shamir;

pub use coordinator::{Aggregate, Coordinator, CoordinatorEvent};
pub use crypto::{IdentityKey, Roster};
pub use error::{DecodeError, Error, Result};
pub use fixed_point::{FixedPoint, IntegerRange, decode_wide, encode_wide};
pub use ids::{PartyId, SessionId, Stage};
pub use message::{CoordinatorMessage, PartyMessage};
pub use params::{RoundConfig, RoundParams};
pub use party::{Party, PartyStatus, RoundKeys};
