//! What both parties agree on before an exchange: the session, the mode, how keys are
//! normalised, and the batch size.

use std::fmt;

use crate::error::{Error, Result};

/// The most keys a message carries, and the default batch size.
pub const MAX_BATCH: u32 = 1 << 16;

/// The most keys a side may hold. Positions in a set are `u32`.
pub const MAX_SET_SIZE: u64 = u32::MAX as u64;

/// A job's 32-byte session. Every key is hashed to the group under a label that includes it,
/// so blinded keys from one job are unrelated to those of another, even under the same
/// scalars; every message names it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Session(pub [u8; 32]);

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({self})")
    }
}

/// What the client (party A) learns.
///
/// In both modes the server (party B) learns the client's set size and nothing else, and the
/// client learns the server's set size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The client learns the size of the intersection only. The server returns the client's
    /// double-blinded keys in a uniformly random order, so the client cannot tell which of
    /// its keys they belong to.
    #[default]
    SizeOnly,
    /// The client learns which of its own keys are in the intersection. The server returns
    /// the client's double-blinded keys in the client's order.
    IntersectionToClient,
}

impl Mode {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Mode::SizeOnly => 0,
            Mode::IntersectionToClient => 1,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Mode::SizeOnly),
            1 => Some(Mode::IntersectionToClient),
            _ => None,
        }
    }
}

/// How a key is normalised before it is hashed. Both parties must use the same policy; the
/// client announces its own and the server refuses another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyPolicy {
    /// Remove leading and trailing whitespace (Unicode `White_Space`). On by default.
    pub trim: bool,
    /// Map the key to lower case (Unicode, `str::to_lowercase`). Off by default.
    pub case_fold: bool,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { trim: true, case_fold: false }
    }
}

impl KeyPolicy {
    pub(crate) fn to_byte(self) -> u8 {
        u8::from(self.trim) | (u8::from(self.case_fold) << 1)
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        (b <= 3).then_some(Self { trim: b & 1 != 0, case_fold: b & 2 != 0 })
    }
}

/// The parameters of one exchange, the same at both parties (they come with the job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PsiParams {
    session: Session,
    mode: Mode,
    policy: KeyPolicy,
    batch_size: u32,
}

impl PsiParams {
    /// Parameters for `session` in `mode`, with the default key policy and batches of
    /// [`MAX_BATCH`] keys.
    pub fn new(session: Session, mode: Mode) -> Self {
        Self { session, mode, policy: KeyPolicy::default(), batch_size: MAX_BATCH }
    }

    /// The same parameters with another key policy.
    pub fn with_policy(self, policy: KeyPolicy) -> Self {
        Self { policy, ..self }
    }

    /// The same parameters with batches of `batch_size` keys, between 1 and [`MAX_BATCH`].
    /// The batch size bounds what a party holds of one stream at a time; it is local to the
    /// sender (a receiver takes any batch up to [`MAX_BATCH`]).
    pub fn with_batch_size(self, batch_size: u32) -> Result<Self> {
        if batch_size == 0 || batch_size > MAX_BATCH {
            return Err(Error::InvalidParameters("the batch size must be in 1..=65536"));
        }
        Ok(Self { batch_size, ..self })
    }

    /// The job's session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// What the client learns.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How keys are normalised.
    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    /// Keys per batch this party sends.
    pub fn batch_size(&self) -> u32 {
        self.batch_size
    }
}
