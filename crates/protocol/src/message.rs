//! The protocol's messages and their binary encoding.
//!
//! Every message starts with a version byte ([`WIRE_VERSION`]) and a tag, followed by the
//! session id and the fields in the order they are declared. See docs/PROTOCOL.md for the
//! layout of each message.

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::ids::{PartyId, SessionId, Stage};
use crate::params::{MAX_PARTIES, MAX_VECTOR_LEN};

/// The version byte every encoded message starts with.
pub const WIRE_VERSION: u8 = 1;

/// Bytes of an encrypted share: 72 bytes of plaintext and a 16-byte authentication tag.
pub const SHARE_CIPHERTEXT_LEN: usize = 88;

/// A party's signed ephemeral public keys (stage advertise-keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertiseKeys {
    /// The advertising party.
    pub party: PartyId,
    /// X25519 public key used to derive the pairwise share-encryption keys.
    pub encryption_key: [u8; 32],
    /// X25519 public key used to derive the pairwise masks.
    pub mask_key: [u8; 32],
    /// Ed25519 signature by the party's identity key over the session and both keys.
    pub signature: [u8; 64],
}

/// One encrypted pair of Shamir shares, addressed to one neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedShare {
    /// The other end: the recipient when a party sends it, the sender when the coordinator
    /// delivers it.
    pub peer: PartyId,
    /// ChaCha20-Poly1305 ciphertext of `sender ‖ recipient ‖ mask-key share ‖ self-mask share`.
    pub ciphertext: [u8; SHARE_CIPHERTEXT_LEN],
}

/// A Shamir share revealed in the unmask stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevealedShare {
    /// Whose secret this is a share of.
    pub owner: PartyId,
    /// The share's value, a canonical scalar encoding.
    pub value: [u8; 32],
}

/// What a party sends to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartyMessage {
    /// Stage advertise-keys.
    AdvertiseKeys {
        /// The round.
        session: SessionId,
        /// The keys.
        keys: AdvertiseKeys,
    },
    /// Stage share-keys: one ciphertext per neighbour.
    EncryptedShares {
        /// The round.
        session: SessionId,
        /// The sender.
        party: PartyId,
        /// Ciphertexts, `peer` being the recipient.
        shares: Vec<EncryptedShare>,
    },
    /// Stage masked-input.
    MaskedInput {
        /// The round.
        session: SessionId,
        /// The sender.
        party: PartyId,
        /// The input plus its masks, in Z_2^64.
        vector: Vec<u64>,
    },
    /// Stage consistency-check: a signature over the survivor set.
    ConsistencySignature {
        /// The round.
        session: SessionId,
        /// The signer.
        party: PartyId,
        /// Ed25519 signature over the session and the survivor set.
        signature: [u8; 64],
    },
    /// Stage unmask.
    UnmaskShares {
        /// The round.
        session: SessionId,
        /// The sender.
        party: PartyId,
        /// Shares of survivors' self-mask seeds.
        self_mask: Vec<RevealedShare>,
        /// Shares of dropped parties' mask keys.
        mask_key: Vec<RevealedShare>,
    },
}

/// What the coordinator sends to a party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorMessage {
    /// The advertised keys of the recipient's neighbours (and its own).
    Keys {
        /// The round.
        session: SessionId,
        /// Signed keys.
        keys: Vec<AdvertiseKeys>,
    },
    /// Ciphertexts addressed to the recipient, `peer` being each sender.
    Shares {
        /// The round.
        session: SessionId,
        /// Ciphertexts.
        shares: Vec<EncryptedShare>,
    },
    /// The parties whose masked input arrived.
    Survivors {
        /// The round.
        session: SessionId,
        /// Sorted, distinct.
        survivors: Vec<PartyId>,
    },
    /// Neighbours' signatures over the survivor set.
    Signatures {
        /// The round.
        session: SessionId,
        /// `(signer, signature)` pairs.
        signatures: Vec<(PartyId, [u8; 64])>,
    },
}

const TAG_ADVERTISE: u8 = 1;
const TAG_SHARES: u8 = 2;
const TAG_MASKED: u8 = 3;
const TAG_CONSISTENCY: u8 = 4;
const TAG_UNMASK: u8 = 5;
const TAG_KEYS: u8 = 101;
const TAG_DELIVER_SHARES: u8 = 102;
const TAG_SURVIVORS: u8 = 103;
const TAG_SIGNATURES: u8 = 104;

const ADVERTISE_LEN: usize = 4 + 32 + 32 + 64;

fn header(w: &mut Writer, tag: u8, session: &SessionId) {
    w.u8(WIRE_VERSION);
    w.u8(tag);
    w.bytes(&session.0);
}

fn read_header(r: &mut Reader<'_>) -> Result<(u8, SessionId), DecodeError> {
    let version = r.u8("version")?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let tag = r.u8("tag")?;
    let session = SessionId(r.array("session")?);
    Ok((tag, session))
}

fn write_advertise(w: &mut Writer, k: &AdvertiseKeys) {
    w.u32(k.party.0);
    w.bytes(&k.encryption_key);
    w.bytes(&k.mask_key);
    w.bytes(&k.signature);
}

fn read_advertise(r: &mut Reader<'_>) -> Result<AdvertiseKeys, DecodeError> {
    Ok(AdvertiseKeys {
        party: PartyId(r.u32("party")?),
        encryption_key: r.array("encryption key")?,
        mask_key: r.array("mask key")?,
        signature: r.array("signature")?,
    })
}

fn write_shares(w: &mut Writer, shares: &[EncryptedShare]) {
    w.count(shares.len());
    for s in shares {
        w.u32(s.peer.0);
        w.bytes(&s.ciphertext);
    }
}

fn read_shares(r: &mut Reader<'_>) -> Result<Vec<EncryptedShare>, DecodeError> {
    let n = r.count("shares", MAX_PARTIES, 4 + SHARE_CIPHERTEXT_LEN)?;
    (0..n)
        .map(|_| {
            Ok(EncryptedShare {
                peer: PartyId(r.u32("share peer")?),
                ciphertext: r.array("ciphertext")?,
            })
        })
        .collect()
}

fn write_revealed(w: &mut Writer, shares: &[RevealedShare]) {
    w.count(shares.len());
    for s in shares {
        w.u32(s.owner.0);
        w.bytes(&s.value);
    }
}

fn read_revealed(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Vec<RevealedShare>, DecodeError> {
    let n = r.count(field, MAX_PARTIES, 36)?;
    (0..n)
        .map(|_| {
            Ok(RevealedShare {
                owner: PartyId(r.u32("share owner")?),
                value: r.array("share value")?,
            })
        })
        .collect()
}

impl PartyMessage {
    /// The round this message belongs to.
    pub fn session(&self) -> SessionId {
        match self {
            PartyMessage::AdvertiseKeys { session, .. }
            | PartyMessage::EncryptedShares { session, .. }
            | PartyMessage::MaskedInput { session, .. }
            | PartyMessage::ConsistencySignature { session, .. }
            | PartyMessage::UnmaskShares { session, .. } => *session,
        }
    }

    /// The party that claims to have sent it.
    pub fn party(&self) -> PartyId {
        match self {
            PartyMessage::AdvertiseKeys { keys, .. } => keys.party,
            PartyMessage::EncryptedShares { party, .. }
            | PartyMessage::MaskedInput { party, .. }
            | PartyMessage::ConsistencySignature { party, .. }
            | PartyMessage::UnmaskShares { party, .. } => *party,
        }
    }

    /// The stage it belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            PartyMessage::AdvertiseKeys { .. } => Stage::AdvertiseKeys,
            PartyMessage::EncryptedShares { .. } => Stage::ShareKeys,
            PartyMessage::MaskedInput { .. } => Stage::MaskedInput,
            PartyMessage::ConsistencySignature { .. } => Stage::ConsistencyCheck,
            PartyMessage::UnmaskShares { .. } => Stage::Unmask,
        }
    }

    /// The stable binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PartyMessage::AdvertiseKeys { session, keys } => {
                let mut w = Writer::with_capacity(34 + ADVERTISE_LEN);
                header(&mut w, TAG_ADVERTISE, session);
                write_advertise(&mut w, keys);
                w.finish()
            }
            PartyMessage::EncryptedShares { session, party, shares } => {
                let mut w = Writer::with_capacity(42 + shares.len() * (4 + SHARE_CIPHERTEXT_LEN));
                header(&mut w, TAG_SHARES, session);
                w.u32(party.0);
                write_shares(&mut w, shares);
                w.finish()
            }
            PartyMessage::MaskedInput { session, party, vector } => {
                let mut w = Writer::with_capacity(42 + vector.len() * 8);
                header(&mut w, TAG_MASKED, session);
                w.u32(party.0);
                w.u64s(vector);
                w.finish()
            }
            PartyMessage::ConsistencySignature { session, party, signature } => {
                let mut w = Writer::with_capacity(38 + 64);
                header(&mut w, TAG_CONSISTENCY, session);
                w.u32(party.0);
                w.bytes(signature);
                w.finish()
            }
            PartyMessage::UnmaskShares { session, party, self_mask, mask_key } => {
                let mut w = Writer::with_capacity(46 + (self_mask.len() + mask_key.len()) * 36);
                header(&mut w, TAG_UNMASK, session);
                w.u32(party.0);
                write_revealed(&mut w, self_mask);
                write_revealed(&mut w, mask_key);
                w.finish()
            }
        }
    }

    /// Decodes a message, rejecting anything that is not exactly one well-formed message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let (tag, session) = read_header(&mut r)?;
        let msg = match tag {
            TAG_ADVERTISE => PartyMessage::AdvertiseKeys { session, keys: read_advertise(&mut r)? },
            TAG_SHARES => PartyMessage::EncryptedShares {
                session,
                party: PartyId(r.u32("party")?),
                shares: read_shares(&mut r)?,
            },
            TAG_MASKED => PartyMessage::MaskedInput {
                session,
                party: PartyId(r.u32("party")?),
                vector: r.u64s("vector", MAX_VECTOR_LEN)?,
            },
            TAG_CONSISTENCY => PartyMessage::ConsistencySignature {
                session,
                party: PartyId(r.u32("party")?),
                signature: r.array("signature")?,
            },
            TAG_UNMASK => PartyMessage::UnmaskShares {
                session,
                party: PartyId(r.u32("party")?),
                self_mask: read_revealed(&mut r, "self-mask shares")?,
                mask_key: read_revealed(&mut r, "mask-key shares")?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl CoordinatorMessage {
    /// The round this message belongs to.
    pub fn session(&self) -> SessionId {
        match self {
            CoordinatorMessage::Keys { session, .. }
            | CoordinatorMessage::Shares { session, .. }
            | CoordinatorMessage::Survivors { session, .. }
            | CoordinatorMessage::Signatures { session, .. } => *session,
        }
    }

    /// The stage whose input it carries: the stage the recipient answers in.
    pub fn stage(&self) -> Stage {
        match self {
            CoordinatorMessage::Keys { .. } => Stage::ShareKeys,
            CoordinatorMessage::Shares { .. } => Stage::MaskedInput,
            CoordinatorMessage::Survivors { .. } => Stage::ConsistencyCheck,
            CoordinatorMessage::Signatures { .. } => Stage::Unmask,
        }
    }

    /// The stable binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            CoordinatorMessage::Keys { session, keys } => {
                let mut w = Writer::with_capacity(38 + keys.len() * ADVERTISE_LEN);
                header(&mut w, TAG_KEYS, session);
                w.count(keys.len());
                for k in keys {
                    write_advertise(&mut w, k);
                }
                w.finish()
            }
            CoordinatorMessage::Shares { session, shares } => {
                let mut w = Writer::with_capacity(38 + shares.len() * (4 + SHARE_CIPHERTEXT_LEN));
                header(&mut w, TAG_DELIVER_SHARES, session);
                write_shares(&mut w, shares);
                w.finish()
            }
            CoordinatorMessage::Survivors { session, survivors } => {
                let mut w = Writer::with_capacity(38 + survivors.len() * 4);
                header(&mut w, TAG_SURVIVORS, session);
                w.count(survivors.len());
                for p in survivors {
                    w.u32(p.0);
                }
                w.finish()
            }
            CoordinatorMessage::Signatures { session, signatures } => {
                let mut w = Writer::with_capacity(38 + signatures.len() * 68);
                header(&mut w, TAG_SIGNATURES, session);
                w.count(signatures.len());
                for (p, s) in signatures {
                    w.u32(p.0);
                    w.bytes(s);
                }
                w.finish()
            }
        }
    }

    /// Decodes a message, rejecting anything that is not exactly one well-formed message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let (tag, session) = read_header(&mut r)?;
        let msg = match tag {
            TAG_KEYS => {
                let n = r.count("keys", MAX_PARTIES, ADVERTISE_LEN)?;
                let keys = (0..n).map(|_| read_advertise(&mut r)).collect::<Result<_, _>>()?;
                CoordinatorMessage::Keys { session, keys }
            }
            TAG_DELIVER_SHARES => {
                CoordinatorMessage::Shares { session, shares: read_shares(&mut r)? }
            }
            TAG_SURVIVORS => {
                let n = r.count("survivors", MAX_PARTIES, 4)?;
                let survivors =
                    (0..n).map(|_| Ok(PartyId(r.u32("survivor")?))).collect::<Result<_, _>>()?;
                CoordinatorMessage::Survivors { session, survivors }
            }
            TAG_SIGNATURES => {
                let n = r.count("signatures", MAX_PARTIES, 68)?;
                let signatures = (0..n)
                    .map(|_| Ok((PartyId(r.u32("signer")?), r.array("signature")?)))
                    .collect::<Result<_, _>>()?;
                CoordinatorMessage::Signatures { session, signatures }
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn party() -> impl Strategy<Value = PartyId> {
        any::<u32>().prop_map(PartyId)
    }

    fn session() -> impl Strategy<Value = SessionId> {
        any::<[u8; 32]>().prop_map(SessionId)
    }

    fn advertise() -> impl Strategy<Value = AdvertiseKeys> {
        (party(), any::<[u8; 32]>(), any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 64))
            .prop_map(|(party, encryption_key, mask_key, sig)| AdvertiseKeys {
                party,
                encryption_key,
                mask_key,
                signature: sig.try_into().unwrap(),
            })
    }

    fn shares() -> impl Strategy<Value = Vec<EncryptedShare>> {
        proptest::collection::vec(
            (party(), proptest::collection::vec(any::<u8>(), SHARE_CIPHERTEXT_LEN)),
            0..6,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(peer, c)| EncryptedShare { peer, ciphertext: c.try_into().unwrap() })
                .collect()
        })
    }

    fn revealed() -> impl Strategy<Value = Vec<RevealedShare>> {
        proptest::collection::vec((party(), any::<[u8; 32]>()), 0..6).prop_map(|v| {
            v.into_iter().map(|(owner, value)| RevealedShare { owner, value }).collect()
        })
    }

    fn signature() -> impl Strategy<Value = [u8; 64]> {
        proptest::collection::vec(any::<u8>(), 64).prop_map(|v| v.try_into().unwrap())
    }

    pub(crate) fn party_message() -> impl Strategy<Value = PartyMessage> {
        prop_oneof![
            (session(), advertise())
                .prop_map(|(session, keys)| PartyMessage::AdvertiseKeys { session, keys }),
            (session(), party(), shares()).prop_map(|(session, party, shares)| {
                PartyMessage::EncryptedShares { session, party, shares }
            }),
            (session(), party(), proptest::collection::vec(any::<u64>(), 0..50)).prop_map(
                |(session, party, vector)| PartyMessage::MaskedInput { session, party, vector }
            ),
            (session(), party(), signature()).prop_map(|(session, party, signature)| {
                PartyMessage::ConsistencySignature { session, party, signature }
            }),
            (session(), party(), revealed(), revealed()).prop_map(
                |(session, party, self_mask, mask_key)| {
                    PartyMessage::UnmaskShares { session, party, self_mask, mask_key }
                }
            ),
        ]
    }

    pub(crate) fn coordinator_message() -> impl Strategy<Value = CoordinatorMessage> {
        prop_oneof![
            (session(), proptest::collection::vec(advertise(), 0..5))
                .prop_map(|(session, keys)| CoordinatorMessage::Keys { session, keys }),
            (session(), shares())
                .prop_map(|(session, shares)| CoordinatorMessage::Shares { session, shares }),
            (session(), proptest::collection::vec(party(), 0..20)).prop_map(
                |(session, survivors)| CoordinatorMessage::Survivors { session, survivors }
            ),
            (session(), proptest::collection::vec((party(), signature()), 0..5)).prop_map(
                |(session, signatures)| CoordinatorMessage::Signatures { session, signatures }
            ),
        ]
    }

    proptest! {
        #[test]
        fn party_messages_round_trip(m in party_message()) {
            let bytes = m.encode();
            prop_assert_eq!(PartyMessage::decode(&bytes).unwrap(), m);
            // Any strict prefix, and any extension, is rejected.
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                prop_assert!(PartyMessage::decode(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(PartyMessage::decode(&longer), Err(DecodeError::TrailingBytes(1)));
        }

        #[test]
        fn coordinator_messages_round_trip(m in coordinator_message()) {
            let bytes = m.encode();
            prop_assert_eq!(CoordinatorMessage::decode(&bytes).unwrap(), m);
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                prop_assert!(CoordinatorMessage::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PartyMessage::decode(&bytes);
            let _ = CoordinatorMessage::decode(&bytes);
        }
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_allocating() {
        let mut bytes = vec![WIRE_VERSION, TAG_MASKED];
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            PartyMessage::decode(&bytes),
            Err(DecodeError::TooLong { field: "vector", .. })
        ));
        let mut bytes = vec![WIRE_VERSION, TAG_MASKED];
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(PartyMessage::decode(&bytes), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn unknown_versions_and_tags_are_named() {
        let mut bytes = PartyMessage::ConsistencySignature {
            session: SessionId([0; 32]),
            party: PartyId(1),
            signature: [0; 64],
        }
        .encode();
        bytes[0] = 9;
        assert_eq!(PartyMessage::decode(&bytes), Err(DecodeError::UnsupportedVersion(9)));
        bytes[0] = WIRE_VERSION;
        bytes[1] = 77;
        assert_eq!(PartyMessage::decode(&bytes), Err(DecodeError::UnknownTag(77)));
        assert_eq!(CoordinatorMessage::decode(&bytes), Err(DecodeError::UnknownTag(77)));
    }
}
