//! The crate's error type.
//!
//! No error carries a key or anything derived from one: keys are the parties' private data,
//! and errors end up in logs and in the answers other parties see. Errors name counts,
//! batch numbers and positions in a batch only.

use crate::params::{KeyPolicy, Mode, Session};

/// Why a byte string is not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("message truncated: needed {needed} more bytes for {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes remained after the last field.
    #[error("{0} unexpected bytes after the end of the message")]
    TrailingBytes(usize),
    /// The version byte is not one this build speaks.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The message tag is unknown, or belongs to the other role's messages.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A count exceeds its limit.
    #[error("{field} is {len}, more than the limit of {max}")]
    TooLong {
        /// The field being read.
        field: &'static str,
        /// The declared value.
        len: u64,
        /// The limit for that field.
        max: u64,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Errors of private set intersection.
///
/// The first group is about the local input and configuration and comes from constructors.
/// The rest are faults of the other party (see [`Error::is_peer_fault`]); all of them but
/// [`Error::WrongSession`] end the exchange at the party that saw them (see
/// [`Error::is_fatal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Keys that are empty once normalised. A key set with any is refused.
    #[error("{count} keys are empty after normalisation")]
    EmptyKeys {
        /// How many keys are empty.
        count: u64,
    },
    /// Keys that repeat an earlier key once normalised. A key set with any is refused: the
    /// other party would see the repetition, and the intersection would not be a set's.
    #[error("{count} keys repeat an earlier key after normalisation")]
    DuplicateKeys {
        /// How many keys repeat an earlier one (the set's length minus its distinct keys).
        count: u64,
    },
    /// More keys than the protocol's limit ([`crate::MAX_SET_SIZE`]).
    #[error("{count} keys, more than the limit of {max}")]
    TooManyKeys {
        /// Keys given.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// Parameters outside their domain.
    #[error("invalid parameters: {0}")]
    InvalidParameters(&'static str),
    /// The key set was normalised under another policy than the job's parameters name.
    #[error("the key set was normalised under {keys:?}, the job's policy is {params:?}")]
    KeySetPolicy {
        /// The key set's policy.
        keys: KeyPolicy,
        /// The parameters' policy.
        params: KeyPolicy,
    },

    /// A message did not decode.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// A message names another job's session. It is ignored; the exchange continues.
    #[error("message for session {got} in session {expected}")]
    WrongSession {
        /// This exchange's session.
        expected: Session,
        /// The session the message names.
        got: Session,
    },
    /// The client asked for another mode than the one this party agreed to.
    #[error("the peer runs mode {theirs:?}, this party agreed to {ours:?}")]
    ModeMismatch {
        /// This party's mode.
        ours: Mode,
        /// The peer's.
        theirs: Mode,
    },
    /// The client normalises keys under another policy than this party.
    #[error("the peer normalises keys under {theirs:?}, this party under {ours:?}")]
    PolicyMismatch {
        /// This party's policy.
        ours: KeyPolicy,
        /// The peer's.
        theirs: KeyPolicy,
    },
    /// A message arrived that the current stage does not expect.
    #[error("unexpected {got} message while {expected}")]
    UnexpectedMessage {
        /// What this party waits for.
        expected: &'static str,
        /// The message that came.
        got: &'static str,
    },
    /// A batch arrived out of order (batches are numbered from zero in each stream).
    #[error("batch {got} of {stream} arrived, expected batch {expected}")]
    OutOfOrder {
        /// The stream.
        stream: &'static str,
        /// The batch expected next.
        expected: u32,
        /// The batch that came.
        got: u32,
    },
    /// A stream carried more items than announced (or, for replies, than were sent).
    #[error("{stream} carries more than the {announced} items announced")]
    TooManyItems {
        /// The stream.
        stream: &'static str,
        /// The number announced.
        announced: u64,
    },
    /// A point is not the canonical encoding of a Ristretto255 element other than the
    /// identity.
    #[error("invalid point at position {index} of batch {batch} of {stream}")]
    InvalidPoint {
        /// The stream.
        stream: &'static str,
        /// The batch.
        batch: u32,
        /// The position in the batch.
        index: u32,
    },
    /// Two of the server's double-blinded replies are equal: an honest server never sends
    /// them, since the client's keys are distinct.
    #[error("the peer's replies repeat a value {count} times")]
    DuplicateReplies {
        /// How many replies repeat an earlier one.
        count: u64,
    },
    /// Two of the server's blinded keys match the same client key: an honest server never
    /// sends them, since its keys are distinct.
    #[error("the peer's blinded keys repeat a key in batch {batch}")]
    DuplicatePeerKey {
        /// The batch in which the repetition showed.
        batch: u32,
    },
    /// The value side of a join expects another number of values per key or of groups.
    #[error("the other side expects {theirs:?} (values per key, groups), this side {ours:?}")]
    JoinShape {
        /// This side's (values per key, groups).
        ours: (u32, u32),
        /// The other side's.
        theirs: (u32, u32),
    },
    /// The exchange is over (finished or aborted); the message is ignored.
    #[error("the exchange is over")]
    Ended,
}

impl Error {
    /// Whether the other party caused this error (by what it sent).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Error::Decode(_)
                | Error::WrongSession { .. }
                | Error::ModeMismatch { .. }
                | Error::PolicyMismatch { .. }
                | Error::UnexpectedMessage { .. }
                | Error::OutOfOrder { .. }
                | Error::TooManyItems { .. }
                | Error::InvalidPoint { .. }
                | Error::DuplicateReplies { .. }
                | Error::DuplicatePeerKey { .. }
                | Error::JoinShape { .. }
        )
    }

    /// Whether the exchange ends at this party. A message for another session, or one after
    /// the end, is ignored and leaves the state as it was; every other fault ends it.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Error::WrongSession { .. } | Error::Ended)
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
