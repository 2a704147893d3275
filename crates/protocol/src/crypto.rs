//! Key agreement, key derivation, share encryption and signatures.
//!
//! Every derived key and every signed statement carries a domain-separation label and the
//! session id, so nothing computed for one purpose or one round is valid for another. The
//! survivor statement and every derived key also carry the round's digest (the hash of its
//! whole configuration, [`crate::params::RoundParams::digest`]), so parties given different
//! parameters under one session cannot complete a round together. Key advertisements bind the
//! session alone: a party may make them with its acceptance of a job, before the round's
//! parties are known, and they are fresh per session and carry nothing about its data.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::ids::{PartyId, SessionId};

const LABEL_ADVERTISE: &[u8] = b"veil/secagg/v2/advertise";
const LABEL_SURVIVORS: &[u8] = b"veil/secagg/v2/survivors";
const LABEL_SHARE_KEY: &[u8] = b"veil/secagg/v2/share-key";
const LABEL_PAIR_MASK: &[u8] = b"veil/secagg/v2/pair-mask";
const LABEL_SELF_MASK: &[u8] = b"veil/secagg/v2/self-mask";

/// A uniformly random scalar from a CSPRNG.
pub(crate) fn random_scalar(rng: &mut impl CryptoRngCore) -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    rng.fill_bytes(wide.as_mut());
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// Parses a canonical scalar encoding.
pub(crate) fn scalar_from_bytes(bytes: [u8; 32]) -> Option<Scalar> {
    Option::from(Scalar::from_canonical_bytes(bytes))
}

/// An ephemeral X25519 secret. The scalar is also what gets Shamir-shared, so a secret
/// reconstructed from shares is the same key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AgreementSecret(Scalar);

impl fmt::Debug for AgreementSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgreementSecret([redacted])")
    }
}

impl AgreementSecret {
    /// A fresh secret.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(random_scalar(rng))
    }

    pub(crate) fn from_scalar(s: Scalar) -> Self {
        Self(s)
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.0
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        MontgomeryPoint::mul_base_clamped(self.0.to_bytes()).to_bytes()
    }

    /// X25519 with a peer's public key. A low-order peer key (all-zero output) is rejected.
    pub(crate) fn agree(&self, peer: &[u8; 32], peer_id: PartyId) -> Result<Zeroizing<[u8; 32]>> {
        let shared =
            Zeroizing::new(MontgomeryPoint(*peer).mul_clamped(self.0.to_bytes()).to_bytes());
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return Err(Error::BadPublicKey(peer_id));
        }
        Ok(shared)
    }
}

/// A party's long-term Ed25519 identity key.
pub struct IdentityKey(SigningKey);

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityKey([redacted])")
    }
}

impl IdentityKey {
    /// A fresh identity key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// An identity key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storage by the caller.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half, as listed in the roster.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// The consortium roster: every party's identity key, configured out of band. Parties verify
/// every advertised key against it, so the coordinator cannot substitute keys.
#[derive(Clone, Debug, Default)]
pub struct Roster {
    keys: BTreeMap<PartyId, VerifyingKey>,
}

impl Roster {
    /// An empty roster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a party's identity key.
    pub fn insert(&mut self, party: PartyId, key: VerifyingKey) {
        self.keys.insert(party, key);
    }

    /// A party's identity key.
    pub fn key(&self, party: PartyId) -> Option<&VerifyingKey> {
        self.keys.get(&party)
    }

    /// Number of parties listed.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no party is listed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies many signatures at once (Ed25519 batch verification, with coefficients derived
    /// deterministically from the batch). When the batch fails, each is checked on its own and
    /// the first signer whose signature fails is named.
    pub(crate) fn verify_all(&self, items: &[(PartyId, Vec<u8>, [u8; 64])]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(items.len());
        for (party, _, _) in items {
            keys.push(*self.key(*party).ok_or(Error::NotInRoster(*party))?);
        }
        let messages: Vec<&[u8]> = items.iter().map(|(_, m, _)| m.as_slice()).collect();
        let signatures: Vec<Signature> =
            items.iter().map(|(_, _, s)| Signature::from_bytes(s)).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return Ok(());
        }
        for (party, message, signature) in items {
            self.verify(*party, message, signature)?;
        }
        // The batch equation failed although each signature verifies alone, which takes
        // crafted small-order components: refused as well.
        Err(Error::BadSignature(items[0].0))
    }

    pub(crate) fn verify(
        &self,
        party: PartyId,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<()> {
        let key = self.key(party).ok_or(Error::NotInRoster(party))?;
        key.verify(message, &Signature::from_bytes(signature))
            .map_err(|_| Error::BadSignature(party))
    }
}

/// The statement a party signs when advertising its keys.
pub(crate) fn advertise_statement(
    session: &SessionId,
    party: PartyId,
    encryption_key: &[u8; 32],
    mask_key: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_ADVERTISE.len() + 32 + 4 + 64);
    m.extend_from_slice(LABEL_ADVERTISE);
    m.extend_from_slice(&session.0);
    m.extend_from_slice(&party.0.to_le_bytes());
    m.extend_from_slice(encryption_key);
    m.extend_from_slice(mask_key);
    m
}

/// The hash of one survivor set under the round's digest: what every signer of the set signs.
/// Hashed once per party, so a quorum's statements stay short however many parties survive.
pub(crate) fn survivors_hash(round: &Round, survivors: &[PartyId]) -> [u8; 32] {
    let mut h = sha2::Sha256::new()
        .chain_update(LABEL_SURVIVORS)
        .chain_update(round.session.0)
        .chain_update(round.digest)
        .chain_update((survivors.len() as u64).to_le_bytes());
    for p in survivors {
        h.update(p.0.to_le_bytes());
    }
    h.finalize().into()
}

/// The statement a party signs in the consistency check: the one survivor set it agrees to
/// (by [`survivors_hash`]), and itself.
pub(crate) fn survivors_statement(set: &[u8; 32], signer: PartyId) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_SURVIVORS.len() + 36);
    m.extend_from_slice(LABEL_SURVIVORS);
    m.extend_from_slice(set);
    m.extend_from_slice(&signer.0.to_le_bytes());
    m
}

/// What binds a derived key or a signed statement to one round: its session and its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Round {
    pub(crate) session: SessionId,
    pub(crate) digest: [u8; 32],
}

impl Round {
    pub(crate) fn of(params: &crate::params::RoundParams) -> Self {
        Self { session: params.session(), digest: params.digest() }
    }
}

fn hkdf(ikm: &[u8], label: &[u8], round: &Round, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(&round.session.0), ikm);
    let mut info =
        Vec::with_capacity(label.len() + 32 + parts.iter().map(|p| p.len()).sum::<usize>());
    info.extend_from_slice(label);
    info.extend_from_slice(&round.digest);
    for p in parts {
        info.extend_from_slice(p);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(&info, out.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The key that encrypts the one message `from` sends to `to`. Each direction has its own key,
/// so a fixed nonce is never reused under one key.
pub(crate) fn share_key(
    shared: &[u8; 32],
    round: &Round,
    from: PartyId,
    to: PartyId,
) -> Zeroizing<[u8; 32]> {
    hkdf(shared, LABEL_SHARE_KEY, round, &[&from.0.to_le_bytes(), &to.0.to_le_bytes()])
}

/// The seed of the pairwise mask between two parties (symmetric in the pair). It names the
/// pair: X25519 ignores a key's top bit, so a colluder can advertise a byte-distinct copy of
/// another party's mask key and share one secret with a victim; with the pair in the seed, the
/// two masks are different streams and cannot cancel each other in the victim's input.
pub(crate) fn pair_mask_seed(
    shared: &[u8; 32],
    round: &Round,
    a: PartyId,
    b: PartyId,
) -> Zeroizing<[u8; 32]> {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    hkdf(shared, LABEL_PAIR_MASK, round, &[&low.0.to_le_bytes(), &high.0.to_le_bytes()])
}

/// The seed of a party's self mask, from its Shamir-shared scalar.
pub(crate) fn self_mask_seed(secret: &Scalar, round: &Round) -> Zeroizing<[u8; 32]> {
    let bytes = Zeroizing::new(secret.to_bytes());
    hkdf(bytes.as_ref(), LABEL_SELF_MASK, round, &[])
}

fn share_aad(session: &SessionId, from: PartyId, to: PartyId) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..32].copy_from_slice(&session.0);
    aad[32..36].copy_from_slice(&from.0.to_le_bytes());
    aad[36..].copy_from_slice(&to.0.to_le_bytes());
    aad
}

/// Encrypts one share plaintext under a single-use directional key.
pub(crate) fn seal(
    key: &[u8; 32],
    session: &SessionId,
    from: PartyId,
    to: PartyId,
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let aad = share_aad(session, from, to);
    cipher
        .encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: plaintext, aad: &aad })
        .expect("ChaCha20-Poly1305 encryption of a short buffer cannot fail")
}

/// Decrypts and authenticates one share.
pub(crate) fn open(
    key: &[u8; 32],
    session: &SessionId,
    from: PartyId,
    to: PartyId,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let aad = share_aad(session, from, to);
    cipher
        .decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: ciphertext, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| Error::BadShare(from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn agreement_is_symmetric_and_rejects_low_order_points() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let a = AgreementSecret::generate(&mut rng);
        let b = AgreementSecret::generate(&mut rng);
        let ab = a.agree(&b.public_key(), PartyId(2)).unwrap();
        let ba = b.agree(&a.public_key(), PartyId(1)).unwrap();
        assert_eq!(*ab, *ba);
        assert_eq!(a.agree(&[0u8; 32], PartyId(9)), Err(Error::BadPublicKey(PartyId(9))));
    }

    #[test]
    fn secrets_do_not_print() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let s = AgreementSecret::generate(&mut rng);
        let k = IdentityKey::generate(&mut rng);
        assert_eq!(format!("{s:?}"), "AgreementSecret([redacted])");
        assert_eq!(format!("{k:?}"), "IdentityKey([redacted])");
    }

    #[test]
    fn sealed_share_opens_only_with_matching_direction_and_session() {
        let key = [7u8; 32];
        let s = SessionId([1; 32]);
        let ct = seal(&key, &s, PartyId(1), PartyId(2), b"hello");
        assert_eq!(open(&key, &s, PartyId(1), PartyId(2), &ct).unwrap().as_slice(), b"hello");
        assert!(open(&key, &s, PartyId(2), PartyId(1), &ct).is_err());
        assert!(open(&key, &SessionId([2; 32]), PartyId(1), PartyId(2), &ct).is_err());
    }
}
