//! The coordinator (server) role.
//!
//! ```text
//!  CollectKeys ──► CollectShares ──► CollectInputs ──► CollectSignatures ──► CollectUnmask ──► Finished
//!     U1               U2                U3                  U4                   U5
//! ```
//!
//! A stage closes when every party still in the round has answered, or when its deadline
//! passes ([`Coordinator::handle_timeout`]); parties that stayed silent are dropouts from then
//! on. The coordinator is trusted for liveness only: it sees masked vectors, ciphertexts it
//! cannot open, and exactly the shares it needs to remove the masks of the survivors' sum.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;

use crate::crypto::{
    AgreementSecret, Roster, Round, advertise_statement, pair_mask_seed, scalar_from_bytes,
    self_mask_seed, survivors_hash, survivors_statement,
};
use crate::error::{Error, Result};
use crate::ids::{PartyId, Stage};
use crate::message::{
    AdvertiseKeys, CoordinatorMessage, EncryptedShare, PartyMessage, RevealedShare,
};
use crate::params::RoundParams;
use crate::prg::{Mask, Sign, add_assign, apply_masks};
use crate::shamir;

/// The unmasked result of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// The sum of the survivors' inputs in Z_2^64.
    pub sum: Vec<u64>,
    /// The parties whose inputs are in the sum, sorted.
    pub contributors: Vec<PartyId>,
    /// Invited parties whose inputs are not in the sum, sorted.
    pub dropped: Vec<PartyId>,
}

/// What the coordinator reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorEvent {
    /// A stage closed with this many parties answering.
    StageClosed {
        /// The stage.
        stage: Stage,
        /// Parties that answered.
        responders: usize,
    },
    /// The round produced its sum.
    Finished(Aggregate),
    /// The round cannot finish.
    Aborted(Error),
}

struct CollectKeys {
    adverts: BTreeMap<PartyId, AdvertiseKeys>,
}

struct CollectShares {
    keys: BTreeMap<PartyId, AdvertiseKeys>,
    shares: BTreeMap<PartyId, Vec<EncryptedShare>>,
}

/// What is fixed once shares have been routed.
struct Routed {
    keys: BTreeMap<PartyId, AdvertiseKeys>,
    /// Parties that sent shares.
    u2: BTreeSet<PartyId>,
    /// For each recipient, the senders whose shares it was given (and so masks with).
    delivered: BTreeMap<PartyId, BTreeSet<PartyId>>,
}

struct CollectInputs {
    routed: Routed,
    sum: Vec<u64>,
    received: BTreeSet<PartyId>,
}

struct CollectSignatures {
    routed: Routed,
    sum: Vec<u64>,
    survivors: Vec<PartyId>,
    /// The hash every signer signs.
    set: [u8; 32],
    signatures: BTreeMap<PartyId, [u8; 64]>,
}

struct CollectUnmask {
    routed: Routed,
    sum: Vec<u64>,
    survivors: Vec<PartyId>,
    responses: BTreeMap<PartyId, (Vec<RevealedShare>, Vec<RevealedShare>)>,
}

enum State {
    CollectKeys(CollectKeys),
    CollectShares(CollectShares),
    CollectInputs(CollectInputs),
    CollectSignatures(CollectSignatures),
    CollectUnmask(CollectUnmask),
    Ended,
}

impl State {
    fn stage(&self) -> Option<Stage> {
        Some(match self {
            State::CollectKeys(_) => Stage::AdvertiseKeys,
            State::CollectShares(_) => Stage::ShareKeys,
            State::CollectInputs(_) => Stage::MaskedInput,
            State::CollectSignatures(_) => Stage::ConsistencyCheck,
            State::CollectUnmask(_) => Stage::Unmask,
            State::Ended => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            State::CollectKeys(_) => "collect-keys",
            State::CollectShares(_) => "collect-shares",
            State::CollectInputs(_) => "collect-inputs",
            State::CollectSignatures(_) => "collect-signatures",
            State::CollectUnmask(_) => "collect-unmask",
            State::Ended => "ended",
        }
    }
}

/// The coordinator's side of a secure aggregation round.
pub struct Coordinator {
    params: Arc<RoundParams>,
    roster: Arc<Roster>,
    state: State,
    /// Parties expected to answer in the current stage.
    expected: BTreeSet<PartyId>,
    deadline: Instant,
    transmits: VecDeque<(PartyId, CoordinatorMessage)>,
    events: VecDeque<CoordinatorEvent>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("state", &self.state.name()).finish()
    }
}

impl Coordinator {
    /// Opens a round at time `now`; the first stage's deadline is `now + stage_timeout`.
    pub fn new(params: Arc<RoundParams>, roster: Arc<Roster>, now: Instant) -> Self {
        let expected = params.parties().iter().copied().collect();
        let deadline = now + params.stage_timeout();
        Self {
            params,
            roster,
            state: State::CollectKeys(CollectKeys { adverts: BTreeMap::new() }),
            expected,
            deadline,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(PartyId, CoordinatorMessage)> {
        self.transmits.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<CoordinatorEvent> {
        self.events.pop_front()
    }

    /// When the current stage closes if not every party answers; `None` once the round ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.state.stage().map(|_| self.deadline)
    }

    /// The stage being collected, `None` once the round ended.
    pub fn stage(&self) -> Option<Stage> {
        self.state.stage()
    }

    /// Closes the current stage if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state.stage().is_some() && now >= self.deadline {
            self.close_stage(now);
        }
    }

    /// Records that `party` is gone (its connection closed): the current stage stops waiting
    /// for it, and closes at once if it was the last one awaited.
    pub fn handle_departure(&mut self, party: PartyId, now: Instant) {
        if self.state.stage().is_some() && self.expected.remove(&party) && self.expected.is_empty()
        {
            self.close_stage(now);
        }
    }

    /// Feeds one message from `sender`, the party the transport authenticated. An error means
    /// the message was discarded; the round goes on without it.
    pub fn handle_message(
        &mut self,
        sender: PartyId,
        msg: PartyMessage,
        now: Instant,
    ) -> Result<()> {
        let Some(stage) = self.state.stage() else {
            return Err(Error::RoundEnded);
        };
        if self.params.index_of(sender).is_none() {
            return Err(Error::UnexpectedParty(sender));
        }
        if msg.party() != sender {
            return Err(Error::ImpersonatedSender { sender, claimed: msg.party() });
        }
        let session = self.params.session();
        if msg.session() != session {
            return Err(Error::WrongSession { expected: session, got: msg.session() });
        }
        if msg.stage() != stage {
            return Err(Error::UnexpectedMessage { expected: self.state.name(), got: msg.stage() });
        }
        if !self.expected.contains(&sender) {
            return Err(if self.answered(sender) {
                Error::Duplicate { party: sender, stage }
            } else {
                Error::UnexpectedParty(sender)
            });
        }
        match (&mut self.state, msg) {
            (State::CollectKeys(s), PartyMessage::AdvertiseKeys { keys, .. }) => {
                let statement =
                    advertise_statement(&session, sender, &keys.encryption_key, &keys.mask_key);
                self.roster.verify(sender, &statement, &keys.signature)?;
                // A key of small order, or one another party already advertised, would make
                // every honest neighbour abort: refuse it here so one party cannot stop the round.
                let repeated = |k: &[u8; 32]| {
                    s.adverts.values().any(|a| a.encryption_key == *k || a.mask_key == *k)
                };
                if keys.encryption_key == keys.mask_key
                    || is_small_order(&keys.encryption_key)
                    || is_small_order(&keys.mask_key)
                    || repeated(&keys.encryption_key)
                    || repeated(&keys.mask_key)
                {
                    return Err(Error::BadPublicKey(sender));
                }
                s.adverts.insert(sender, keys);
            }
            (State::CollectShares(s), PartyMessage::EncryptedShares { shares, .. }) => {
                let index = self.params.index_of(sender).expect("sender checked above");
                let mut recipients: Vec<PartyId> = shares.iter().map(|e| e.peer).collect();
                recipients.sort_unstable();
                let expected: Vec<PartyId> = self
                    .params
                    .neighbours_of(index)
                    .iter()
                    .copied()
                    .filter(|p| s.keys.contains_key(p))
                    .collect();
                if recipients != expected {
                    return Err(Error::Malformed {
                        party: sender,
                        reason: "shares must address exactly the neighbours whose keys it was sent",
                    });
                }
                s.shares.insert(sender, shares);
            }
            (State::CollectInputs(s), PartyMessage::MaskedInput { vector, .. }) => {
                if vector.len() != self.params.vector_len() {
                    return Err(Error::Malformed {
                        party: sender,
                        reason: "masked input has the wrong length",
                    });
                }
                add_assign(&mut s.sum, &vector);
                s.received.insert(sender);
            }
            (State::CollectSignatures(s), PartyMessage::ConsistencySignature { signature, .. }) => {
                let statement = survivors_statement(&s.set, sender);
                self.roster.verify(sender, &statement, &signature)?;
                s.signatures.insert(sender, signature);
            }
            (State::CollectUnmask(s), PartyMessage::UnmaskShares { self_mask, mask_key, .. }) => {
                validate_unmask(&s.routed, &s.survivors, sender, &self_mask, &mask_key)?;
                s.responses.insert(sender, (self_mask, mask_key));
            }
            _ => unreachable!("the stage check above matched the message to the state"),
        }
        self.expected.remove(&sender);
        if self.expected.is_empty() {
            self.close_stage(now);
        }
        Ok(())
    }

    /// Whether `p` already answered in the current stage.
    fn answered(&self, p: PartyId) -> bool {
        match &self.state {
            State::CollectKeys(s) => s.adverts.contains_key(&p),
            State::CollectShares(s) => s.shares.contains_key(&p),
            State::CollectInputs(s) => s.received.contains(&p),
            State::CollectSignatures(s) => s.signatures.contains_key(&p),
            State::CollectUnmask(s) => s.responses.contains_key(&p),
            State::Ended => false,
        }
    }

    fn close_stage(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Ended);
        let next = match state {
            State::CollectKeys(s) => self.close_keys(s),
            State::CollectShares(s) => self.close_shares(s),
            State::CollectInputs(s) => self.close_inputs(s),
            State::CollectSignatures(s) => self.close_signatures(s),
            State::CollectUnmask(s) => self.close_unmask(s),
            State::Ended => return,
        };
        match next {
            Ok(State::Ended) => {}
            Ok(next) => {
                self.state = next;
                self.deadline = now + self.params.stage_timeout();
            }
            Err(e) => {
                self.transmits.clear();
                self.events.push_back(CoordinatorEvent::Aborted(e));
            }
        }
    }

    /// Enough parties must still be in the round: `max(t, min_cohort)` up to the masked input
    /// (the survivors whose sum is released), and `t` after it (enough to unmask).
    fn check_alive(&mut self, stage: Stage, alive: usize) -> Result<()> {
        self.events.push_back(CoordinatorEvent::StageClosed { stage, responders: alive });
        let t = self.params.threshold();
        let needed = match stage {
            Stage::AdvertiseKeys | Stage::ShareKeys => t.max(self.params.min_cohort()),
            // Fewer survivors than the quorum could never collect the signatures to unmask.
            Stage::MaskedInput => t.max(self.params.min_cohort()).max(self.params.quorum()),
            Stage::ConsistencyCheck => t.max(self.params.quorum()),
            Stage::Unmask => t,
        };
        if alive < needed {
            return Err(Error::TooFewSurvivors { stage, alive, needed });
        }
        Ok(())
    }

    fn close_keys(&mut self, s: CollectKeys) -> Result<State> {
        self.check_alive(Stage::AdvertiseKeys, s.adverts.len())?;
        let session = self.params.session();
        for &p in s.adverts.keys() {
            let index = self.params.index_of(p).expect("advertisers are participants");
            let keys = self
                .params
                .holders_of(index)
                .into_iter()
                .filter_map(|h| s.adverts.get(&h).cloned())
                .collect();
            self.transmits.push_back((p, CoordinatorMessage::Keys { session, keys }));
        }
        self.expected = s.adverts.keys().copied().collect();
        Ok(State::CollectShares(CollectShares { keys: s.adverts, shares: BTreeMap::new() }))
    }

    fn close_shares(&mut self, s: CollectShares) -> Result<State> {
        self.check_alive(Stage::ShareKeys, s.shares.len())?;
        let session = self.params.session();
        let u2: BTreeSet<PartyId> = s.shares.keys().copied().collect();
        let mut inbox: BTreeMap<PartyId, Vec<EncryptedShare>> =
            u2.iter().map(|&p| (p, Vec::new())).collect();
        for (&from, shares) in &s.shares {
            for share in shares {
                if let Some(list) = inbox.get_mut(&share.peer) {
                    list.push(EncryptedShare { peer: from, ciphertext: share.ciphertext });
                }
            }
        }
        let mut delivered = BTreeMap::new();
        for (to, shares) in inbox {
            delivered.insert(to, shares.iter().map(|e| e.peer).collect());
            self.transmits.push_back((to, CoordinatorMessage::Shares { session, shares }));
        }
        self.expected = u2.clone();
        let routed = Routed { keys: s.keys, u2, delivered };
        let sum = vec![0u64; self.params.vector_len()];
        Ok(State::CollectInputs(CollectInputs { routed, sum, received: BTreeSet::new() }))
    }

    fn close_inputs(&mut self, s: CollectInputs) -> Result<State> {
        self.check_alive(Stage::MaskedInput, s.received.len())?;
        let session = self.params.session();
        let survivors: Vec<PartyId> = s.received.iter().copied().collect();
        // Honest parties refuse to sign a disconnected survivor set; stop here with the reason.
        if !self.params.survivors_connected(&survivors) {
            return Err(Error::SurvivorsDisconnected);
        }
        for &p in &survivors {
            self.transmits.push_back((
                p,
                CoordinatorMessage::Survivors { session, survivors: survivors.clone() },
            ));
        }
        self.expected = s.received;
        let set = survivors_hash(&Round::of(&self.params), &survivors);
        Ok(State::CollectSignatures(CollectSignatures {
            routed: s.routed,
            sum: s.sum,
            set,
            survivors,
            signatures: BTreeMap::new(),
        }))
    }

    fn close_signatures(&mut self, s: CollectSignatures) -> Result<State> {
        self.check_alive(Stage::ConsistencyCheck, s.signatures.len())?;
        let session = self.params.session();
        // Every signer gets the same quorum of signatures, each already verified here: a
        // quorum is all a party needs, and more would only cost it verification time.
        let signatures: Vec<(PartyId, [u8; 64])> =
            s.signatures.iter().take(self.params.quorum()).map(|(&p, sig)| (p, *sig)).collect();
        for &p in s.signatures.keys() {
            self.transmits.push_back((
                p,
                CoordinatorMessage::Signatures { session, signatures: signatures.clone() },
            ));
        }
        self.expected = s.signatures.keys().copied().collect();
        Ok(State::CollectUnmask(CollectUnmask {
            routed: s.routed,
            sum: s.sum,
            survivors: s.survivors,
            responses: BTreeMap::new(),
        }))
    }

    fn close_unmask(&mut self, mut s: CollectUnmask) -> Result<State> {
        self.check_alive(Stage::Unmask, s.responses.len())?;
        let round = Round::of(&self.params);
        let t = self.params.threshold();
        let survivors: BTreeSet<PartyId> = s.survivors.iter().copied().collect();

        let mut self_shares: BTreeMap<PartyId, Vec<(PartyId, Scalar)>> = BTreeMap::new();
        let mut key_shares: BTreeMap<PartyId, Vec<(PartyId, Scalar)>> = BTreeMap::new();
        for (&holder, (self_mask, mask_key)) in &s.responses {
            for r in self_mask {
                let v = scalar_from_bytes(r.value).expect("validated on arrival");
                self_shares.entry(r.owner).or_default().push((holder, v));
            }
            for r in mask_key {
                let v = scalar_from_bytes(r.value).expect("validated on arrival");
                key_shares.entry(r.owner).or_default().push((holder, v));
            }
        }

        // Self masks of every survivor.
        let mut masks: Vec<Mask> = Vec::new();
        for &u in &survivors {
            let shares = self_shares.get(&u).map(Vec::as_slice).unwrap_or(&[]);
            let b = reconstruct_checked(u, shares, t)?;
            masks.push(Mask::new(&self_mask_seed(&b, &round), Sign::Subtract));
        }
        // Pairwise masks between survivors and parties that dropped after sharing.
        let dropped: Vec<PartyId> = s.routed.u2.difference(&survivors).copied().collect();
        let mut jobs = Vec::new();
        for &v in &dropped {
            let maskers: Vec<PartyId> = survivors
                .iter()
                .copied()
                .filter(|u| s.routed.delivered.get(u).is_some_and(|d| d.contains(&v)))
                .collect();
            if maskers.is_empty() {
                continue;
            }
            let shares = key_shares.get(&v).map(Vec::as_slice).unwrap_or(&[]);
            let secret = AgreementSecret::from_scalar(reconstruct_checked(v, shares, t)?);
            if secret.public_key() != s.routed.keys[&v].mask_key {
                return Err(Error::BadReconstruction(v));
            }
            jobs.push((v, secret, maskers));
        }
        let pair_masks: Vec<Result<Vec<Mask>>> = jobs
            .par_iter()
            .map(|(v, secret, maskers)| {
                maskers
                    .iter()
                    .map(|u| {
                        let shared = secret.agree(&s.routed.keys[u].mask_key, *u)?;
                        // u added the mask if u < v and subtracted it otherwise; undo that.
                        let sign = if u < v { Sign::Subtract } else { Sign::Add };
                        Ok(Mask::new(&pair_mask_seed(&shared, &round, *u, *v), sign))
                    })
                    .collect()
            })
            .collect();
        for m in pair_masks {
            masks.extend(m?);
        }
        apply_masks(&mut s.sum, &masks);

        let contributors = s.survivors;
        let dropped =
            self.params.parties().iter().copied().filter(|p| !survivors.contains(p)).collect();
        self.events.push_back(CoordinatorEvent::Finished(Aggregate {
            sum: std::mem::take(&mut s.sum),
            contributors,
            dropped,
        }));
        Ok(State::Ended)
    }
}

/// Whether an X25519 public key is of small order, on the curve or its twist: exactly the keys
/// whose Diffie–Hellman output with any clamped scalar (a multiple of the cofactor 8) is zero,
/// which honest parties refuse.
fn is_small_order(key: &[u8; 32]) -> bool {
    let mut probe = [0x5a; 32];
    probe[0] = 0x58;
    MontgomeryPoint(*key).mul_clamped(probe) == MontgomeryPoint([0u8; 32])
}

/// Reconstructs a secret from its shares. With more than `t` shares, a second, different
/// subset must reconstruct the same secret, which catches a corrupted share.
fn reconstruct_checked(owner: PartyId, shares: &[(PartyId, Scalar)], t: usize) -> Result<Scalar> {
    let secret = shamir::reconstruct(shares, t).map_err(|_| Error::TooFewSurvivors {
        stage: Stage::Unmask,
        alive: shares.len(),
        needed: t,
    })?;
    if shares.len() > t {
        let tail = &shares[shares.len() - t..];
        if shamir::reconstruct(tail, t).ok() != Some(secret) {
            return Err(Error::BadReconstruction(owner));
        }
    }
    Ok(secret)
}

/// Checks that an unmask response reveals only what its sender may reveal: self-mask shares of
/// survivors and mask-key shares of parties that dropped after sharing, of parties whose shares
/// the sender holds, never both for one owner, and canonical values.
fn validate_unmask(
    routed: &Routed,
    survivors: &[PartyId],
    sender: PartyId,
    self_mask: &[RevealedShare],
    mask_key: &[RevealedShare],
) -> Result<()> {
    let malformed = |reason| Err(Error::Malformed { party: sender, reason });
    let holds = |owner: PartyId| {
        owner == sender || routed.delivered.get(&sender).is_some_and(|d| d.contains(&owner))
    };
    let mut owners = BTreeSet::new();
    for r in self_mask {
        if survivors.binary_search(&r.owner).is_err() || !holds(r.owner) {
            return malformed("self-mask share of a party that is not a survivor it holds");
        }
        if !owners.insert(r.owner) {
            return malformed("two shares for one owner");
        }
        if scalar_from_bytes(r.value).is_none() {
            return malformed("share is not a canonical scalar");
        }
    }
    for r in mask_key {
        if survivors.binary_search(&r.owner).is_ok()
            || !routed.u2.contains(&r.owner)
            || !holds(r.owner)
        {
            return malformed("mask-key share of a party that did not drop or is not held");
        }
        if !owners.insert(r.owner) {
            return malformed("two shares for one owner");
        }
        if scalar_from_bytes(r.value).is_none() {
            return malformed("share is not a canonical scalar");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::IdentityKey;
    use crate::ids::SessionId;
    use crate::params::RoundConfig;
    use rand::SeedableRng;

    /// A party signing a small-order key, or a copy of another party's key, is refused at the
    /// advertise stage, so it cannot make every honest neighbour abort.
    #[test]
    fn small_order_and_repeated_keys_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let ids: Vec<PartyId> = (0..4).map(PartyId).collect();
        let keys: Vec<IdentityKey> = ids.iter().map(|_| IdentityKey::generate(&mut rng)).collect();
        let mut roster = Roster::new();
        for (p, k) in ids.iter().zip(&keys) {
            roster.insert(*p, k.verifying_key());
        }
        let session = SessionId([4; 32]);
        let params = Arc::new(RoundConfig::all_pairs(session, ids.clone(), 4).validate().unwrap());
        let now = Instant::now();
        let mut coordinator = Coordinator::new(params, Arc::new(roster), now);
        let advert = |p: usize, encryption_key: [u8; 32], mask_key: [u8; 32]| {
            let statement = advertise_statement(&session, ids[p], &encryption_key, &mask_key);
            let signature = keys[p].sign(&statement);
            PartyMessage::AdvertiseKeys {
                session,
                keys: AdvertiseKeys { party: ids[p], encryption_key, mask_key, signature },
            }
        };
        let good = |rng: &mut rand_chacha::ChaCha20Rng| AgreementSecret::generate(rng).public_key();
        let (e0, m0) = (good(&mut rng), good(&mut rng));
        coordinator.handle_message(ids[0], advert(0, e0, m0), now).unwrap();
        // u = 0 and u = 1 are points of small order.
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one] {
            let r = coordinator.handle_message(ids[1], advert(1, bad, good(&mut rng)), now);
            assert_eq!(r, Err(Error::BadPublicKey(ids[1])));
        }
        let r = coordinator.handle_message(ids[2], advert(2, good(&mut rng), m0), now);
        assert_eq!(r, Err(Error::BadPublicKey(ids[2])));
        let r = coordinator.handle_message(ids[3], advert(3, good(&mut rng), good(&mut rng)), now);
        assert_eq!(r, Ok(()));
    }
}
