//! The crate's error type.

use crate::ids::{PartyId, SessionId, Stage};

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
    /// The message tag is unknown.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A length prefix exceeds its limit.
    #[error("{field} has {len} entries, more than the limit of {max}")]
    TooLong {
        /// The field being read.
        field: &'static str,
        /// The declared length.
        len: u64,
        /// The limit for that field.
        max: u64,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Errors of the secure aggregation protocol.
///
/// Errors caused by another participant (a party or the coordinator) are their own variants;
/// [`Error::is_fatal`] says whether the round can continue after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The round parameters are unsafe or inconsistent.
    #[error("invalid round parameters: {0}")]
    InvalidParameters(String),
    /// A fixed-point configuration cannot represent the declared range without wrapping.
    #[error("invalid fixed-point encoding: {0}")]
    InvalidEncoding(String),
    /// The local input vector does not have the round's length.
    #[error("input has {got} elements, the round expects {expected}")]
    WrongLength {
        /// Elements given.
        got: usize,
        /// Elements the round is configured for.
        expected: usize,
    },
    /// The local input was provided twice.
    #[error("the input was already provided")]
    InputAlreadyProvided,
    /// A message arrived that belongs to another stage (a duplicate or out-of-order delivery).
    /// The message is ignored; the round continues.
    #[error("unexpected {got} message while in stage {expected}")]
    UnexpectedMessage {
        /// The stage the role is in.
        expected: &'static str,
        /// The stage the message belongs to.
        got: Stage,
    },
    /// A message carries another round's session id (a replay).
    #[error("message for session {got} replayed into session {expected}")]
    WrongSession {
        /// This round's session.
        expected: SessionId,
        /// The session the message names.
        got: SessionId,
    },
    /// A party sent a second message for the same stage. The duplicate is ignored.
    #[error("duplicate {stage} message from {party}")]
    Duplicate {
        /// The sender.
        party: PartyId,
        /// The stage.
        stage: Stage,
    },
    /// A party that is not part of this round, or not a neighbour where one is required.
    #[error("{0} is not a participant this message may name")]
    UnexpectedParty(PartyId),
    /// A message claims to come from a party other than the authenticated sender.
    #[error("message from {sender} claims to be from {claimed}")]
    ImpersonatedSender {
        /// The authenticated sender.
        sender: PartyId,
        /// The sender named in the message.
        claimed: PartyId,
    },
    /// A signature does not verify against the roster's identity key.
    #[error("signature of {0} does not verify against its roster key")]
    BadSignature(PartyId),
    /// A party's roster key is missing.
    #[error("{0} has no identity key in the roster")]
    NotInRoster(PartyId),
    /// A public key is of low order or repeats another party's key.
    #[error("{0} advertised an invalid or repeated public key")]
    BadPublicKey(PartyId),
    /// An encrypted share fails authentication or carries wrong fields.
    #[error("encrypted share from {0} is invalid")]
    BadShare(PartyId),
    /// A message is malformed in a way the decoder cannot see (lengths, sets, ranges).
    #[error("malformed message from {party}: {reason}")]
    Malformed {
        /// The sender.
        party: PartyId,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes that do not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// Too few parties remain for the threshold.
    #[error("only {alive} parties remain at stage {stage}; the round needs {needed}")]
    TooFewSurvivors {
        /// Stage at which the count fell short.
        stage: Stage,
        /// Parties still in the round.
        alive: usize,
        /// Parties needed.
        needed: usize,
    },
    /// The survivor set is smaller than the configured minimum cohort.
    #[error("cohort of {size} parties is below the minimum of {minimum}")]
    CohortTooSmall {
        /// Survivors.
        size: usize,
        /// Configured minimum.
        minimum: usize,
    },
    /// The survivor set the coordinator announced is inconsistent with what this party saw, or
    /// other parties signed a different set.
    #[error("inconsistent survivor set: {0}")]
    InconsistentSurvivors(&'static str),
    /// The survivors fall apart into pieces of the neighbour graph, which would let the
    /// coordinator unmask a piece's sum on its own.
    #[error(
        "the survivor set is not connected in the neighbour graph; its pieces' sums could be unmasked separately"
    )]
    SurvivorsDisconnected,
    /// The party was asked to reveal both the self-mask share and the mask-key share of a peer.
    #[error("refusing to reveal both shares of {0}")]
    DoubleReveal(PartyId),
    /// A secret reconstructed by the coordinator does not match its public key.
    #[error("shares of {0} reconstruct a secret that does not match its public key")]
    BadReconstruction(PartyId),
    /// The coordinator sent something no honest coordinator sends.
    #[error("coordinator message rejected: {0}")]
    BadCoordinatorMessage(&'static str),
    /// The round has ended (finished or aborted) and accepts no more messages.
    #[error("the round has ended")]
    RoundEnded,
}

impl Error {
    /// Whether this error ended the round at the party that returned it. Non-fatal errors
    /// (duplicates, out-of-order or replayed deliveries) leave the party's state as it was.
    /// At the coordinator no error from one party's message is fatal: the message is discarded
    /// and the party counts as silent for that stage; the round's own end is reported by
    /// [`crate::CoordinatorEvent`].
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::UnexpectedMessage { .. }
                | Error::InputAlreadyProvided
                | Error::Duplicate { .. }
                | Error::WrongSession { .. }
                | Error::RoundEnded
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
