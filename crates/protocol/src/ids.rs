//! Identifiers shared by every role.

use std::fmt;

/// A party's identifier within a consortium. It is stable across rounds, appears in the roster
/// next to the party's identity key, and doubles as the party's Shamir evaluation point (`id + 1`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartyId(pub u32);

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "party {}", self.0)
    }
}

impl fmt::Debug for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

/// A round's identifier. Every signed statement and every derived key binds it, so a message
/// replayed from another round fails verification.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub [u8; 32]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The protocol's stages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Each party advertises two signed ephemeral X25519 public keys.
    AdvertiseKeys,
    /// Each party sends encrypted Shamir shares of its secrets to its neighbours.
    ShareKeys,
    /// Each party sends its masked input vector.
    MaskedInput,
    /// Each party signs the survivor set it was told.
    ConsistencyCheck,
    /// Each party reveals the shares the coordinator needs to remove the masks.
    Unmask,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [
        Stage::AdvertiseKeys,
        Stage::ShareKeys,
        Stage::MaskedInput,
        Stage::ConsistencyCheck,
        Stage::Unmask,
    ];
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::AdvertiseKeys => "advertise-keys",
            Stage::ShareKeys => "share-keys",
            Stage::MaskedInput => "masked-input",
            Stage::ConsistencyCheck => "consistency-check",
            Stage::Unmask => "unmask",
        })
    }
}
