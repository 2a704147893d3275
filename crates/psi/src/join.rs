//! Private join and aggregate: per group of one party's column, the sum of another party's
//! per-key vectors over the keys both hold, as two additive shares that feed a secure sum.
//!
//! The group side R holds keys with a group each (an aircraft registry: tail number →
//! manufacturer); the value side V holds keys with a vector each (an airport: tail number →
//! the flights' count, delay sum, … over its rows with that key, aggregated locally first).
//! Neither sees the other's column. The exchange is the intersection of [`crate::client`] and
//! [`crate::server`] in mode [`Mode::IntersectionToClient`] with R as the client, and V's keys
//! carrying their vectors encrypted under V's own Paillier key (as in Ion et al., "On
//! deploying secure computing: private intersection-sum-with-cardinality", EuroS&P 2020, here
//! with a group per key):
//!
//! ```text
//!  R (group side, PSI client)                            V (value side, PSI server)
//!                                ◄─────────────────────  PublicKey { N, h_s, segment, groups }
//!  the intersection's messages (R's keys a·H(x) out, b·a·H(x) back in R's order;
//!  V's keys b·H(y) in, each with Enc_V(its vector) packed into slots)
//!  per group g: T_g = Σ Enc_V(vector of matched y with group g) + Enc_V(r_g), r_g < N uniform
//!  Totals { T_g for every group } ─────────────────────►  decrypts: Σ_g + r_g
//!  share: −(r_g's slots) mod 2^64                         share: (Σ_g + r_g)'s slots mod 2^64
//! ```
//!
//! The two shares add up, modulo 2^64, to the per-group sums: the inputs of a secure sum with
//! the other value sides, so the answer is released the way every aggregate is (metered,
//! k-thresholded, with distributed noise if the job asks).
//!
//! # Who learns what
//!
//! | who | learns |
//! | --- | --- |
//! | R | \|V\|, which of its own keys V holds (so the intersection's size per group), nothing of V's vectors (encrypted under V's key) |
//! | V | \|R\| and its share: each total it decrypts is masked by a value uniform below N, so whatever it encrypted (values outside the slots included) the plaintexts it reads are uniform |
//!
//! A value side that deviates (values outside the slots, tags in unused bits) still reads
//! uniform plaintexts, so learns nothing of the grouping; it can make the sums wrong. A group
//! side that deviates can make the sums wrong too (it cannot check what V encrypted, nor V what
//! R added), and learns nothing of V's vectors, which stay encrypted under V's key.
//!
//! # Layout of a plaintext
//!
//! A key's vector of `segment` 64-bit values goes in ⌈segment / 14⌉ Paillier plaintexts of
//! 14 slots of 144 bits (`N > 2^2047 > 2^(14·144)`). A slot's sum over at most 2^32 keys is
//! below 2^96, so adding a uniform mask carries out of a slot with probability below 2^-48
//! (the next slot's sum is then off by one), and the masked plaintext wraps past N with
//! probability below 2^-78: the shares add up to the sums but with that chance.

use std::collections::VecDeque;

use num_bigint::BigUint;
use rand_core::CryptoRngCore;
use rayon::prelude::*;

use crate::Status;
use crate::client::Client;
use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, Error, Result};
use crate::keys::KeySet;
use crate::message::{ClientMessage, ServerMessage};
use crate::paillier::{CIPHERTEXT_BYTES, Ciphertext, PUBLIC_KEY_BYTES, PublicKey, SecretKey};
use crate::params::{Mode, PsiParams, Session};
use crate::server::{Payloads, Server};

/// Bytes of a slot.
pub const SLOT_BYTES: usize = 18;
/// Slots in a plaintext.
pub const SLOTS_PER_CIPHERTEXT: usize = 14;
/// The most values per key.
pub const MAX_SEGMENT: u32 = 1 << 12;
/// The most groups.
pub const MAX_GROUPS: u32 = 1 << 16;
/// The most bytes of totals a group side sends in its one message (groups × plaintexts per
/// key × 512 bytes).
pub const MAX_TOTALS_BYTES: usize = 16 << 20;
/// Keys per batch of the value side: a batch of keys with one ciphertext each is about 1 MB.
pub const JOIN_BATCH: u32 = 2048;

const TAG_PUBLIC_KEY: u8 = 0x10;
const TAG_VALUE_PSI: u8 = 0x11;
const TAG_GROUP_PSI: u8 = 0x20;
const TAG_TOTALS: u8 = 0x21;

/// The terms of one join exchange, the same at both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinParams {
    psi: PsiParams,
    segment: u32,
    groups: u32,
}

impl JoinParams {
    /// A join under `session` whose value side brings `segment` values per key and whose group
    /// side has `groups` groups; keys are normalised under `psi`'s policy.
    pub fn new(psi: PsiParams, segment: u32, groups: u32) -> Result<Self> {
        if segment == 0 || segment > MAX_SEGMENT {
            return Err(Error::InvalidParameters("a join needs 1 to 4,096 values per key"));
        }
        if groups == 0 || groups > MAX_GROUPS {
            return Err(Error::InvalidParameters("a join needs 1 to 65,536 groups"));
        }
        if Self::totals_bytes(segment, groups) > MAX_TOTALS_BYTES {
            return Err(Error::InvalidParameters(
                "a join's totals (groups × values per key) exceed 16 MB",
            ));
        }
        let psi = PsiParams::new(psi.session(), Mode::IntersectionToClient)
            .with_policy(psi.policy())
            .with_batch_size(JOIN_BATCH)?;
        Ok(Self { psi, segment, groups })
    }

    /// Bytes of the totals for this shape: one ciphertext per group and 14 values per key.
    pub fn totals_bytes(segment: u32, groups: u32) -> usize {
        groups as usize * (segment as usize).div_ceil(SLOTS_PER_CIPHERTEXT) * CIPHERTEXT_BYTES
    }

    /// Plaintexts per key.
    pub fn chunks(&self) -> usize {
        (self.segment as usize).div_ceil(SLOTS_PER_CIPHERTEXT)
    }

    /// The shares' length: `groups × segment`.
    pub fn share_len(&self) -> usize {
        self.groups as usize * self.segment as usize
    }

    /// The session.
    pub fn session(&self) -> Session {
        self.psi.session()
    }

    /// Values per key.
    pub fn segment(&self) -> u32 {
        self.segment
    }
}

/// What the value side sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMessage {
    /// The value side's fresh public key and the shape it expects.
    PublicKey {
        /// The job's session.
        session: Session,
        /// [`PublicKey::to_bytes`].
        key: Vec<u8>,
        /// Values per key.
        segment: u32,
        /// Groups.
        groups: u32,
    },
    /// A message of the intersection.
    Psi(ServerMessage),
}

/// What the group side sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupMessage {
    /// A message of the intersection.
    Psi(ClientMessage),
    /// Per group, per plaintext, the masked sum, encrypted under the value side's key.
    Totals {
        /// The job's session.
        session: Session,
        /// `groups × chunks` ciphertexts, group by group.
        ciphertexts: Vec<u8>,
    },
}

impl ValueMessage {
    /// The encoding: a tag byte, then the fields (or the intersection message's encoding).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ValueMessage::PublicKey { session, key, segment, groups } => {
                let mut w = Writer::with_capacity(41 + key.len());
                w.u8(TAG_PUBLIC_KEY);
                w.bytes(&session.0);
                w.u32(*segment);
                w.u32(*groups);
                w.bytes(key);
                w.finish()
            }
            ValueMessage::Psi(m) => [&[TAG_VALUE_PSI][..], &m.encode()].concat(),
        }
    }

    /// Decodes a message, strictly.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        let (&tag, rest) =
            bytes.split_first().ok_or(DecodeError::Truncated { field: "tag", needed: 1 })?;
        match tag {
            TAG_PUBLIC_KEY => {
                let mut r = Reader::new(rest);
                let session = Session(r.array("session")?);
                let segment = r.u32("segment")?;
                let groups = r.u32("groups")?;
                let key = r.take(PUBLIC_KEY_BYTES, "public key")?.to_vec();
                r.finish()?;
                Ok(ValueMessage::PublicKey { session, key, segment, groups })
            }
            TAG_VALUE_PSI => Ok(ValueMessage::Psi(ServerMessage::decode(rest)?)),
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

impl GroupMessage {
    /// The encoding: a tag byte, then the fields (or the intersection message's encoding).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            GroupMessage::Psi(m) => [&[TAG_GROUP_PSI][..], &m.encode()].concat(),
            GroupMessage::Totals { session, ciphertexts } => {
                let mut w = Writer::with_capacity(37 + ciphertexts.len());
                w.u8(TAG_TOTALS);
                w.bytes(&session.0);
                w.u32((ciphertexts.len() / CIPHERTEXT_BYTES) as u32);
                w.bytes(ciphertexts);
                w.finish()
            }
        }
    }

    /// Decodes a message, strictly.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        let (&tag, rest) =
            bytes.split_first().ok_or(DecodeError::Truncated { field: "tag", needed: 1 })?;
        match tag {
            TAG_GROUP_PSI => Ok(GroupMessage::Psi(ClientMessage::decode(rest)?)),
            TAG_TOTALS => {
                let mut r = Reader::new(rest);
                let session = Session(r.array("session")?);
                let n = r.count(
                    "ciphertexts",
                    MAX_GROUPS * MAX_SEGMENT.div_ceil(SLOTS_PER_CIPHERTEXT as u32),
                    CIPHERTEXT_BYTES,
                )?;
                let ciphertexts = r.take(n * CIPHERTEXT_BYTES, "ciphertexts")?.to_vec();
                r.finish()?;
                Ok(GroupMessage::Totals { session, ciphertexts })
            }
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

/// Packs one plaintext's slots.
fn pack(values: &[u64]) -> BigUint {
    let mut bytes = vec![0u8; SLOT_BYTES * values.len()];
    for (s, v) in values.iter().enumerate() {
        bytes[s * SLOT_BYTES..s * SLOT_BYTES + 8].copy_from_slice(&v.to_le_bytes());
    }
    BigUint::from_bytes_le(&bytes)
}

/// The low 64 bits of each of a plaintext's `slots` slots.
fn unpack(plaintext: &BigUint, slots: usize) -> Vec<u64> {
    let mut bytes = plaintext.to_bytes_le();
    bytes.resize(SLOT_BYTES * SLOTS_PER_CIPHERTEXT + 8, 0);
    (0..slots)
        .map(|s| {
            let at = s * SLOT_BYTES;
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
        })
        .collect()
}

/// A finished side's additive share of the per-group sums: `groups × segment` values modulo
/// 2^64, group by group. The two sides' shares add up to the sums.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinShare {
    /// The share.
    pub share: Vec<u64>,
    /// The other side's set size.
    pub peer_count: u64,
    /// At the group side, how many of its keys the value side holds; at the value side, zero
    /// (it does not learn it).
    pub intersection_size: u64,
}

impl std::fmt::Debug for JoinShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinShare")
            .field("len", &self.share.len())
            .field("peer_count", &self.peer_count)
            .finish_non_exhaustive()
    }
}

impl Drop for JoinShare {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.share);
    }
}

/// The value side (a PSI server whose keys carry their encrypted vectors).
pub struct ValueSide {
    params: JoinParams,
    secret: SecretKey,
    server: Server,
    outbox: VecDeque<ValueMessage>,
    output: Option<JoinShare>,
    aborted: Option<Error>,
}

impl std::fmt::Debug for ValueSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueSide").field("server", &self.server).finish_non_exhaustive()
    }
}

/// A value side's fresh Paillier key and its keys' vectors encrypted under it: the costly part
/// of its exchange (a key generation, and an encryption per 14 values of every key), which
/// needs no session, so a party prepares it before the exchange starts.
#[derive(Clone)]
pub struct EncryptedValues {
    secret: SecretKey,
    segment: u32,
    payloads: Payloads,
}

impl std::fmt::Debug for EncryptedValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedValues").field("segment", &self.segment).finish_non_exhaustive()
    }
}

impl EncryptedValues {
    /// A fresh key from `rng`, and every vector (`segment` values each, one per key in the
    /// key set's order) encrypted under it, in parallel.
    pub fn new(segment: u32, vectors: &[Vec<u64>], rng: &mut impl CryptoRngCore) -> Result<Self> {
        if segment == 0 || segment > MAX_SEGMENT {
            return Err(Error::InvalidParameters("a join needs 1 to 4,096 values per key"));
        }
        if vectors.iter().any(|v| v.len() != segment as usize) {
            return Err(Error::InvalidParameters("one vector of `segment` values per key"));
        }
        let secret = SecretKey::generate(rng);
        let plaintexts: Vec<BigUint> =
            vectors.iter().flat_map(|v| v.chunks(SLOTS_PER_CIPHERTEXT).map(pack)).collect();
        let ciphertexts = secret.encrypt_all(&plaintexts, rng);
        let width = (segment as usize).div_ceil(SLOTS_PER_CIPHERTEXT) * CIPHERTEXT_BYTES;
        let bytes: Vec<u8> = ciphertexts.iter().flat_map(Ciphertext::to_bytes).collect();
        let payloads = Payloads::new(width, bytes)?;
        Ok(Self { secret, segment, payloads })
    }
}

impl ValueSide {
    /// Prepares the value side over `keys` and their vectors (`vectors[i]` belongs to the
    /// key at position `i`, `segment` values each): a fresh Paillier key from `rng` and every
    /// vector encrypted under it (in parallel).
    pub fn new(
        params: &JoinParams,
        keys: KeySet,
        vectors: &[Vec<u64>],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        if vectors.len() != keys.len() {
            return Err(Error::InvalidParameters("one vector of `segment` values per key"));
        }
        let encrypted = EncryptedValues::new(params.segment, vectors, rng)?;
        Self::with_encrypted(params, keys, encrypted, rng)
    }

    /// The value side over `keys`, with their vectors already encrypted (in the key set's
    /// order); `rng` orders its keys.
    pub fn with_encrypted(
        params: &JoinParams,
        keys: KeySet,
        encrypted: EncryptedValues,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        let EncryptedValues { secret, segment, payloads } = encrypted;
        if segment != params.segment {
            return Err(Error::InvalidParameters("the vectors were encrypted for another shape"));
        }
        let server = Server::with_payloads(&params.psi, keys, payloads, rng)?;
        let hello = ValueMessage::PublicKey {
            session: params.session(),
            key: secret.public().to_bytes(),
            segment: params.segment,
            groups: params.groups,
        };
        Ok(Self {
            params: *params,
            secret,
            server,
            outbox: VecDeque::from([hello]),
            output: None,
            aborted: None,
        })
    }

    /// The next message to send, if any (one batch of keys at a time).
    pub fn poll_transmit(&mut self) -> Option<ValueMessage> {
        if self.aborted.is_some() {
            return None;
        }
        self.outbox.pop_front().or_else(|| self.server.poll_transmit().map(ValueMessage::Psi))
    }

    /// Takes a message from the group side; `rng` is the intersection's.
    pub fn handle_message(
        &mut self,
        message: GroupMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        if self.aborted.is_some() || self.output.is_some() {
            return Err(Error::Ended);
        }
        let result = match message {
            GroupMessage::Psi(m) => self.server.handle_message(m, rng),
            GroupMessage::Totals { session, ciphertexts } => self.totals(session, &ciphertexts),
        };
        if let Err(e) = &result {
            if e.is_fatal() {
                self.outbox.clear();
                self.aborted = Some(e.clone());
            }
        }
        result
    }

    fn totals(&mut self, session: Session, ciphertexts: &[u8]) -> Result<()> {
        if session != self.params.session() {
            return Err(Error::WrongSession { expected: self.params.session(), got: session });
        }
        if self.server.status() != Status::Finished {
            return Err(Error::UnexpectedMessage {
                expected: "the intersection's messages",
                got: "totals",
            });
        }
        let chunks = self.params.chunks();
        let expected = self.params.groups as usize * chunks;
        if ciphertexts.len() != expected * CIPHERTEXT_BYTES {
            return Err(Error::TooManyItems { stream: "totals", announced: expected as u64 });
        }
        let public = self.secret.public();
        let parsed = ciphertexts
            .chunks_exact(CIPHERTEXT_BYTES)
            .map(|c| public.ciphertext(c))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::Decode(DecodeError::Invalid("totals ciphertext")))?;
        let segment = self.params.segment as usize;
        let plaintexts = parsed
            .par_iter()
            .map(|c| self.secret.decrypt(c))
            .collect::<Option<Vec<BigUint>>>()
            .ok_or(Error::Decode(DecodeError::Invalid("totals ciphertext")))?;
        let mut share = Vec::with_capacity(self.params.share_len());
        for group in plaintexts.chunks(chunks) {
            for (c, plaintext) in group.iter().enumerate() {
                let slots = (segment - c * SLOTS_PER_CIPHERTEXT).min(SLOTS_PER_CIPHERTEXT);
                share.extend(unpack(plaintext, slots));
            }
        }
        let peer_count = self.server.output().map_or(0, |o| o.client_count());
        self.output = Some(JoinShare { share, peer_count, intersection_size: 0 });
        Ok(())
    }

    /// Where the exchange stands.
    pub fn status(&self) -> Status {
        if let Some(e) = &self.aborted {
            return Status::Aborted(e.clone());
        }
        match (&self.output, self.server.status()) {
            (Some(_), _) => Status::Finished,
            (None, Status::Finished) => Status::InProgress("expecting the totals"),
            (None, other) => other,
        }
    }

    /// The value side's share, once the totals are in.
    pub fn output(&self) -> Option<&JoinShare> {
        self.output.as_ref()
    }
}

/// The group side (a PSI client whose keys each have a group).
pub struct GroupSide {
    params: JoinParams,
    client: Client,
    groups: Vec<u32>,
    public: Option<PublicKey>,
    /// `groups × chunks` running sums.
    sums: Vec<Ciphertext>,
    outbox: VecDeque<GroupMessage>,
    output: Option<JoinShare>,
    aborted: Option<Error>,
}

impl std::fmt::Debug for GroupSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSide").field("client", &self.client).finish_non_exhaustive()
    }
}

impl GroupSide {
    /// Starts the group side over `keys`, `groups[i]` the group (below the parameters'
    /// `groups`) of the key at position `i`.
    pub fn new(
        params: &JoinParams,
        keys: KeySet,
        groups: Vec<u32>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        if groups.len() != keys.len() || groups.iter().any(|&g| g >= params.groups) {
            return Err(Error::InvalidParameters("one group below `groups` per key"));
        }
        let client = Client::new(&params.psi, keys, rng)?;
        Ok(Self {
            params: *params,
            client,
            groups,
            public: None,
            sums: Vec::new(),
            outbox: VecDeque::new(),
            output: None,
            aborted: None,
        })
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<GroupMessage> {
        if self.aborted.is_some() {
            return None;
        }
        self.outbox.pop_front().or_else(|| self.client.poll_transmit().map(GroupMessage::Psi))
    }

    /// Takes a message from the value side; `rng` draws the masks once the intersection is
    /// done.
    pub fn handle_message(
        &mut self,
        message: ValueMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        if self.aborted.is_some() || self.output.is_some() {
            return Err(Error::Ended);
        }
        let result = self.step(message, rng);
        if let Err(e) = &result {
            if e.is_fatal() {
                self.outbox.clear();
                self.aborted = Some(e.clone());
            }
        }
        result
    }

    fn step(&mut self, message: ValueMessage, rng: &mut impl CryptoRngCore) -> Result<()> {
        match message {
            ValueMessage::PublicKey { session, key, segment, groups } => {
                if session != self.params.session() {
                    return Err(Error::WrongSession {
                        expected: self.params.session(),
                        got: session,
                    });
                }
                if self.public.is_some() {
                    return Err(Error::UnexpectedMessage {
                        expected: "the intersection's messages",
                        got: "a second public key",
                    });
                }
                if (segment, groups) != (self.params.segment, self.params.groups) {
                    return Err(Error::JoinShape {
                        ours: (self.params.segment, self.params.groups),
                        theirs: (segment, groups),
                    });
                }
                let public = PublicKey::from_bytes(&key)
                    .map_err(|_| Error::Decode(DecodeError::Invalid("public key")))?;
                self.sums = vec![public.zero(); self.params.groups as usize * self.params.chunks()];
                self.public = Some(public);
                Ok(())
            }
            ValueMessage::Psi(m) => {
                let Some(public) = &self.public else {
                    return Err(Error::UnexpectedMessage {
                        expected: "the value side's public key",
                        got: m.name(),
                    });
                };
                self.client.handle_message(m)?;
                let chunks = self.params.chunks();
                for matched in self.client.take_matches() {
                    if matched.payload.len() != chunks * CIPHERTEXT_BYTES {
                        return Err(Error::Decode(DecodeError::Invalid("payload width")));
                    }
                    let group = self.groups[matched.position as usize] as usize;
                    for (c, bytes) in matched.payload.chunks_exact(CIPHERTEXT_BYTES).enumerate() {
                        let ciphertext = public
                            .ciphertext(bytes)
                            .map_err(|_| Error::Decode(DecodeError::Invalid("payload")))?;
                        let at = group * chunks + c;
                        self.sums[at] = public.add(&self.sums[at], &ciphertext);
                    }
                }
                if self.client.status() == Status::Finished {
                    self.finish(rng);
                }
                Ok(())
            }
        }
    }

    /// Masks every sum with a plaintext drawn uniformly below N, queues the totals and keeps
    /// the negation of each mask's slots as this side's share.
    fn finish(&mut self, rng: &mut impl CryptoRngCore) {
        let Some(public) = &self.public else { return };
        let segment = self.params.segment as usize;
        let chunks = self.params.chunks();
        let mut share = Vec::with_capacity(self.params.share_len());
        let mut plaintexts = Vec::with_capacity(self.sums.len());
        for _ in 0..self.params.groups {
            for c in 0..chunks {
                let slots = (segment - c * SLOTS_PER_CIPHERTEXT).min(SLOTS_PER_CIPHERTEXT);
                let mask = public.random_plaintext(rng);
                share.extend(unpack(&mask, slots).into_iter().map(u64::wrapping_neg));
                plaintexts.push(mask);
            }
        }
        let encrypted = public.encrypt_all(&plaintexts, rng);
        let ciphertexts: Vec<u8> = self
            .sums
            .iter()
            .zip(&encrypted)
            .flat_map(|(sum, mask)| public.add(sum, mask).to_bytes())
            .collect();
        self.outbox.push_back(GroupMessage::Totals { session: self.params.session(), ciphertexts });
        let (peer_count, intersection_size) =
            self.client.output().map_or((0, 0), |o| (o.server_count(), o.intersection_size()));
        self.output = Some(JoinShare { share, peer_count, intersection_size });
    }

    /// Where the exchange stands; finished once the totals are out.
    pub fn status(&self) -> Status {
        if let Some(e) = &self.aborted {
            return Status::Aborted(e.clone());
        }
        match (&self.output, self.outbox.is_empty()) {
            (Some(_), true) => Status::Finished,
            (Some(_), false) => Status::InProgress("sending the totals"),
            (None, _) => self.client.status(),
        }
    }

    /// The group side's share (the masks' negation), once the totals are queued.
    pub fn output(&self) -> Option<&JoinShare> {
        self.output.as_ref()
    }
}
