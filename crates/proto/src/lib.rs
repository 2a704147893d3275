//! veil's wire: the gRPC types and services generated at build time from `proto/veil.proto` by
//! protox and tonic-prost-build (no system `protoc`), the consortium roster every member
//! trusts, and the TLS material that identifies members.
//!
//! Secure aggregation messages are carried as opaque bytes (`RoundPayload.message`) in the
//! protocol crate's own codec; everything else is a protobuf message here.
//!
//! - [`v1`]: generated messages, clients and servers.
//! - [`roster`]: the consortium file: parties (identity keys, certificate fingerprints),
//!   consumers, and conversion to the protocol's [`veil_protocol::Roster`].
//! - [`tls`]: loading certificates and keys, fingerprints, tonic TLS configuration.
//! - [`round`]: a round's parameters and a training job's steps on the wire, both ways.
//! - [`client`]: the consumer's configuration file and connecting to the coordinator.
//! - [`submission`]: jobs signed by their consumer, which parties verify against the roster.

pub mod client;
pub mod roster;
pub mod round;
pub mod submission;
pub mod tls;

/// Version 1 of the wire protocol (generated).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("veil.v1");
}

impl v1::JobState {
    /// The state as people read it: `queued`, `offering`, `running`, `succeeded`, `failed`,
    /// `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            v1::JobState::Unspecified => "unknown",
            v1::JobState::Queued => "queued",
            v1::JobState::Offering => "offering",
            v1::JobState::Running => "running",
            v1::JobState::Succeeded => "succeeded",
            v1::JobState::Failed => "failed",
            v1::JobState::Cancelled => "cancelled",
        }
    }

    /// Whether a job in this state has ended.
    pub fn is_final(self) -> bool {
        matches!(self, v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled)
    }
}

/// The largest message either side accepts, in bytes: room for a 4M-element masked vector.
pub const MAX_MESSAGE_BYTES: usize = 40 << 20;

/// HTTP/2 flow-control window per stream (both sides), in bytes.
pub const STREAM_WINDOW: u32 = 8 << 20;

/// HTTP/2 flow-control window per connection (both sides), in bytes.
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// Errors loading consortium files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })
}
