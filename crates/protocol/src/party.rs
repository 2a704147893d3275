//! The party role.
//!
//! ```text
//!  new ──► ExpectKeys ──Keys──► ExpectShares ──Shares──► ExpectSurvivors
//!            (sent: AdvertiseKeys)  (sent: EncryptedShares)  (sent: MaskedInput)
//!
//!  ExpectSurvivors ──Survivors──► ExpectSignatures ──Signatures──► Finished
//!                    (sent: ConsistencySignature)    (sent: UnmaskShares)
//! ```
//!
//! While it waits on the coordinator, a party can expand its mask ahead ([`Party::precompute`]):
//! its self mask once it has joined, the pairwise masks once its neighbours' keys are in. The
//! masked input then costs one pass over the vector when the shares arrive.
//!
//! Each state is consumed by the transition out of it. A message for another stage, or for
//! another session, is rejected without changing state; anything else that fails validation
//! aborts the round at this party, and an aborted party reveals nothing further.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{
    self, AgreementSecret, IdentityKey, Roster, Round, advertise_statement, pair_mask_seed,
    scalar_from_bytes, self_mask_seed, share_key, survivors_hash, survivors_statement,
};
use crate::error::{Error, Result};
use crate::ids::{PartyId, SessionId, Stage};
use crate::message::{
    AdvertiseKeys, CoordinatorMessage, EncryptedShare, PartyMessage, RevealedShare,
    SHARE_CIPHERTEXT_LEN,
};
use crate::params::RoundParams;
use crate::prg::{Mask, Sign, apply_masks};
use crate::shamir;

const SHARE_PLAINTEXT_LEN: usize = 72;

/// The two shares a party holds for one peer (or for itself).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct HeldShares {
    mask_key: Scalar,
    self_mask: Scalar,
}

#[derive(Clone, Copy)]
struct PeerKeys {
    encryption_key: [u8; 32],
    mask_key: [u8; 32],
}

/// Which of a peer's two secrets a revealed share belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareKind {
    /// The self-mask seed: revealed for survivors.
    SelfMask,
    /// The mask key: revealed for parties that dropped after sharing.
    MaskKey,
}

/// Records what this party has revealed, and refuses to reveal both shares of one peer. The
/// unmask stage can only run once, so this is a second line of defence behind the state
/// machine, kept explicit so the rule is enforced in one place and testable on its own.
#[derive(Debug, Default)]
pub struct RevealLedger {
    revealed: BTreeMap<PartyId, ShareKind>,
}

impl RevealLedger {
    /// Records that the `kind` share of `owner` is being revealed.
    pub fn reveal(&mut self, owner: PartyId, kind: ShareKind) -> Result<()> {
        match self.revealed.get(&owner) {
            Some(&k) if k != kind => Err(Error::DoubleReveal(owner)),
            _ => {
                self.revealed.insert(owner, kind);
                Ok(())
            }
        }
    }

    /// What has been revealed of `owner`, if anything.
    pub fn revealed(&self, owner: PartyId) -> Option<ShareKind> {
        self.revealed.get(&owner).copied()
    }
}

struct ExpectKeys {
    encryption: AgreementSecret,
    mask: AgreementSecret,
    self_mask: Zeroizing<Scalar>,
    own: AdvertiseKeys,
    /// `None` until [`Party::provide_input`].
    input: Option<Zeroizing<Vec<u64>>>,
    premask: Option<Premask>,
}

/// The mask expanded ahead by [`Party::precompute`]: PRG(b), and the pairwise masks with every
/// neighbour whose keys came if `pairs`.
struct Premask {
    vector: Zeroizing<Vec<u64>>,
    pairs: bool,
}

struct ExpectShares {
    mask: AgreementSecret,
    self_mask: Zeroizing<Scalar>,
    peers: BTreeMap<PartyId, PeerKeys>,
    /// The key agreement with each peer's encryption key, from sealing the shares sent to it;
    /// the shares it sends back open under the same agreement.
    agreed: BTreeMap<PartyId, Zeroizing<[u8; 32]>>,
    own_shares: HeldShares,
    input: Option<Zeroizing<Vec<u64>>>,
    premask: Option<Premask>,
}

/// The shares are in and the whole mask is expanded; the input has not come yet.
struct AwaitInput {
    /// PRG(b) ± the pairwise masks, to be added to the input.
    mask: Zeroizing<Vec<u64>>,
    held: BTreeMap<PartyId, HeldShares>,
}

struct ExpectSurvivors {
    held: BTreeMap<PartyId, HeldShares>,
}

struct ExpectSignatures {
    held: BTreeMap<PartyId, HeldShares>,
    survivors: Vec<PartyId>,
    /// The hash of the survivor set, as signed.
    set: [u8; 32],
}

enum State {
    ExpectKeys(ExpectKeys),
    ExpectShares(ExpectShares),
    AwaitInput(AwaitInput),
    ExpectSurvivors(ExpectSurvivors),
    ExpectSignatures(ExpectSignatures),
    Finished,
    Aborted(Error),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::ExpectKeys(_) => "expect-keys",
            State::ExpectShares(_) => "expect-shares",
            State::AwaitInput(_) => "await-input",
            State::ExpectSurvivors(_) => "expect-survivors",
            State::ExpectSignatures(_) => "expect-signatures",
            State::Finished => "finished",
            State::Aborted(_) => "aborted",
        }
    }

    /// The stage whose coordinator message this state accepts.
    fn accepts(&self) -> Option<Stage> {
        match self {
            State::ExpectKeys(_) => Some(Stage::ShareKeys),
            State::ExpectShares(_) => Some(Stage::MaskedInput),
            State::ExpectSurvivors(_) => Some(Stage::ConsistencyCheck),
            State::ExpectSignatures(_) => Some(Stage::Unmask),
            // Nothing may come before this party's masked input has gone out.
            State::AwaitInput(_) => Some(Stage::MaskedInput),
            State::Finished | State::Aborted(_) => None,
        }
    }
}

/// Where a party's round stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyStatus {
    /// Waiting for the coordinator.
    InProgress(&'static str),
    /// Sent its unmask shares; nothing more to do.
    Finished,
    /// Stopped, for the reason given; it reveals nothing further.
    Aborted(Error),
}

/// One party's side of a secure aggregation round.
pub struct Party {
    params: Arc<RoundParams>,
    me: PartyId,
    index: usize,
    identity: IdentityKey,
    roster: Arc<Roster>,
    state: State,
    ledger: RevealLedger,
    outbox: VecDeque<PartyMessage>,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party").field("me", &self.me).field("state", &self.state.name()).finish()
    }
}

/// A party's secrets for one round and their signed advertisement, made from the session
/// alone. A party that knows the session before the round's parameters (it comes with the job's
/// offer) advertises its keys with its acceptance and joins with [`Party::with_keys`], which
/// saves the advertise-keys stage's round trip. The keys are fresh per session and reveal
/// nothing about the party's data.
pub struct RoundKeys {
    session: SessionId,
    encryption: AgreementSecret,
    mask: AgreementSecret,
    self_mask: Zeroizing<Scalar>,
    own: AdvertiseKeys,
}

impl std::fmt::Debug for RoundKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundKeys").field("party", &self.own.party).finish_non_exhaustive()
    }
}

impl RoundKeys {
    /// Fresh keys for `session`, signed by `me`'s identity key.
    pub fn generate(
        session: SessionId,
        me: PartyId,
        identity: &IdentityKey,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let encryption = AgreementSecret::generate(rng);
        let mask = AgreementSecret::generate(rng);
        let self_mask = Zeroizing::new(crypto::random_scalar(rng));
        let (encryption_key, mask_key) = (encryption.public_key(), mask.public_key());
        let signature =
            identity.sign(&advertise_statement(&session, me, &encryption_key, &mask_key));
        let own = AdvertiseKeys { party: me, encryption_key, mask_key, signature };
        Self { session, encryption, mask, self_mask, own }
    }

    /// The session the keys belong to.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The signed advertisement of the public keys: the advertise-keys stage's message.
    pub fn advertisement(&self) -> PartyMessage {
        PartyMessage::AdvertiseKeys { session: self.session, keys: self.own.clone() }
    }
}

impl Party {
    /// Joins a round with `input` (already encoded into Z_2^64) and queues the signed key
    /// advertisement.
    pub fn new(
        params: Arc<RoundParams>,
        me: PartyId,
        identity: IdentityKey,
        roster: Arc<Roster>,
        input: Vec<u64>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        Self::join(params, me, identity, roster, Some(input), rng)
    }

    /// Joins a round before the input exists (while it is still being computed): the keys
    /// are advertised and shared at once, the mask is expanded as soon as the shares are in,
    /// and the masked input goes out when [`Self::provide_input`] delivers the input.
    pub fn awaiting_input(
        params: Arc<RoundParams>,
        me: PartyId,
        identity: IdentityKey,
        roster: Arc<Roster>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        Self::join(params, me, identity, roster, None, rng)
    }

    /// Joins a round with keys made and advertised before it started (with the party's
    /// acceptance of the job): nothing is queued, and the party waits for its neighbours'
    /// keys. `input` may follow with [`Self::provide_input`].
    pub fn with_keys(
        params: Arc<RoundParams>,
        identity: IdentityKey,
        roster: Arc<Roster>,
        input: Option<Vec<u64>>,
        keys: RoundKeys,
    ) -> Result<Self> {
        if keys.session != params.session() {
            return Err(Error::WrongSession { expected: params.session(), got: keys.session });
        }
        let me = keys.own.party;
        let input = input.map(Zeroizing::new);
        let index = params.index_of(me).ok_or(Error::UnexpectedParty(me))?;
        if let Some(input) = &input {
            if input.len() != params.vector_len() {
                return Err(Error::WrongLength { got: input.len(), expected: params.vector_len() });
            }
        }
        match roster.key(me) {
            Some(k) if *k == identity.verifying_key() => {}
            _ => return Err(Error::NotInRoster(me)),
        }
        let RoundKeys { encryption, mask, self_mask, own, .. } = keys;
        Ok(Self {
            params,
            me,
            index,
            identity,
            roster,
            state: State::ExpectKeys(ExpectKeys {
                encryption,
                mask,
                self_mask,
                own,
                input,
                premask: None,
            }),
            ledger: RevealLedger::default(),
            outbox: VecDeque::new(),
        })
    }

    fn join(
        params: Arc<RoundParams>,
        me: PartyId,
        identity: IdentityKey,
        roster: Arc<Roster>,
        input: Option<Vec<u64>>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        let keys = RoundKeys::generate(params.session(), me, &identity, rng);
        let advertisement = keys.advertisement();
        let mut party = Self::with_keys(params, identity, roster, input, keys)?;
        party.outbox.push_back(advertisement);
        Ok(party)
    }

    /// Delivers the input of a party that joined [`Self::awaiting_input`]; the masked input
    /// is queued at once if the shares are already in. An input of the wrong length, a second
    /// input, or one after the round ended is refused and changes nothing.
    pub fn provide_input(&mut self, input: Vec<u64>) -> Result<()> {
        let input = Zeroizing::new(input);
        if input.len() != self.params.vector_len() {
            return Err(Error::WrongLength {
                got: input.len(),
                expected: self.params.vector_len(),
            });
        }
        let slot = match &mut self.state {
            State::ExpectKeys(s) => &mut s.input,
            State::ExpectShares(s) => &mut s.input,
            State::AwaitInput(_) => {
                let State::AwaitInput(s) = std::mem::replace(&mut self.state, State::Finished)
                else {
                    unreachable!("matched above")
                };
                self.state = self.send_masked(input, s.mask, s.held);
                return Ok(());
            }
            _ => return Err(Error::RoundEnded),
        };
        if slot.is_some() {
            return Err(Error::InputAlreadyProvided);
        }
        *slot = Some(input);
        Ok(())
    }

    /// Expands what of the mask can be expanded now, so that the masked input goes out with
    /// one pass over the vector when the shares arrive: the self mask once the round is
    /// joined, the pairwise masks with every neighbour once their keys are in. A driver calls
    /// it after sending what [`Self::poll_transmit`] gave, while it waits on the coordinator;
    /// it does nothing when nothing new can be expanded, and a round is the same without it.
    pub fn precompute(&mut self) {
        let round = self.round();
        let me = self.me;
        let len = self.params.vector_len();
        match &mut self.state {
            State::ExpectKeys(s) if s.premask.is_none() => {
                let mut vector = Zeroizing::new(vec![0u64; len]);
                apply_masks(&mut vector, &[self_mask(&s.self_mask, &round)]);
                s.premask = Some(Premask { vector, pairs: false });
            }
            State::ExpectShares(s) if !s.premask.as_ref().is_some_and(|p| p.pairs) => {
                let mut masks = Vec::with_capacity(s.peers.len() + 1);
                for (&v, keys) in &s.peers {
                    // A bad key is refused when the shares arrive, if its owner is still in.
                    let Ok(mask) = pair_mask(&s.mask, &keys.mask_key, me, v, &round) else {
                        return;
                    };
                    masks.push(mask);
                }
                let premask = s.premask.get_or_insert_with(|| {
                    masks.push(self_mask(&s.self_mask, &round));
                    Premask { vector: Zeroizing::new(vec![0u64; len]), pairs: false }
                });
                apply_masks(&mut premask.vector, &masks);
                premask.pairs = true;
            }
            _ => {}
        }
    }

    /// Queues `input + mask` and moves on to wait for the survivors.
    fn send_masked(
        &mut self,
        mut input: Zeroizing<Vec<u64>>,
        mask: Zeroizing<Vec<u64>>,
        held: BTreeMap<PartyId, HeldShares>,
    ) -> State {
        input.iter_mut().zip(mask.iter()).for_each(|(x, m)| *x = x.wrapping_add(*m));
        let vector = std::mem::take(&mut *input);
        let session = self.session();
        self.outbox.push_back(PartyMessage::MaskedInput { session, party: self.me, vector });
        State::ExpectSurvivors(ExpectSurvivors { held })
    }

    /// This party's id.
    pub fn id(&self) -> PartyId {
        self.me
    }

    /// The next message to send to the coordinator.
    pub fn poll_transmit(&mut self) -> Option<PartyMessage> {
        self.outbox.pop_front()
    }

    /// Where the round stands.
    pub fn status(&self) -> PartyStatus {
        match &self.state {
            State::Finished => PartyStatus::Finished,
            State::Aborted(e) => PartyStatus::Aborted(e.clone()),
            s => PartyStatus::InProgress(s.name()),
        }
    }

    /// What this party has revealed.
    pub fn ledger(&self) -> &RevealLedger {
        &self.ledger
    }

    /// Stops the round at this party (for example when the driver's deadline passes). Secrets
    /// are dropped and zeroized.
    pub fn abort(&mut self, reason: Error) {
        if !matches!(self.state, State::Finished) {
            self.state = State::Aborted(reason);
        }
    }

    /// Feeds one message from the coordinator.
    pub fn handle_message(
        &mut self,
        msg: CoordinatorMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        let Some(expected) = self.state.accepts() else {
            return Err(Error::RoundEnded);
        };
        if msg.stage() != expected {
            return Err(Error::UnexpectedMessage { expected: self.state.name(), got: msg.stage() });
        }
        let session = self.params.session();
        if msg.session() != session {
            return Err(Error::WrongSession { expected: session, got: msg.session() });
        }
        let state = std::mem::replace(&mut self.state, State::Finished);
        if let State::AwaitInput(_) = state {
            self.state = state;
            return Err(Error::UnexpectedMessage { expected: "await-input", got: msg.stage() });
        }
        let next = match (state, msg) {
            (State::ExpectKeys(s), CoordinatorMessage::Keys { keys, .. }) => {
                self.handle_keys(s, keys, rng)
            }
            (State::ExpectShares(s), CoordinatorMessage::Shares { shares, .. }) => {
                self.handle_shares(s, shares)
            }
            (State::ExpectSurvivors(s), CoordinatorMessage::Survivors { survivors, .. }) => {
                self.handle_survivors(s, survivors)
            }
            (State::ExpectSignatures(s), CoordinatorMessage::Signatures { signatures, .. }) => {
                self.handle_signatures(s, signatures)
            }
            _ => unreachable!("the stage check above matched the message to the state"),
        };
        match next {
            Ok(state) => {
                self.state = state;
                Ok(())
            }
            Err(e) => {
                self.state = State::Aborted(e.clone());
                Err(e)
            }
        }
    }

    fn session(&self) -> SessionId {
        self.params.session()
    }

    fn round(&self) -> Round {
        Round::of(&self.params)
    }

    /// In a complete graph a party sees every party still in the round, so before its input
    /// is masked and sent it refuses to go on with fewer than its minimum cohort, whatever
    /// minimum the coordinator applies. In a sparse graph it sees only its neighbours; there
    /// the cohort is checked on the signed survivor set.
    fn check_cohort(&self, alive: usize) -> Result<()> {
        let complete = self.params.neighbours() + 1 == self.params.parties().len();
        if complete && alive < self.params.min_cohort() {
            return Err(Error::CohortTooSmall { size: alive, minimum: self.params.min_cohort() });
        }
        Ok(())
    }

    fn handle_keys(
        &mut self,
        s: ExpectKeys,
        keys: Vec<AdvertiseKeys>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<State> {
        let session = self.session();
        let round = self.round();
        let t = self.params.threshold();
        let mut peers = BTreeMap::new();
        let mut statements = Vec::new();
        let mut seen_keys = std::collections::BTreeSet::new();
        seen_keys.insert(s.own.encryption_key);
        seen_keys.insert(s.own.mask_key);
        for adv in keys {
            if adv.party == self.me {
                if adv != s.own {
                    return Err(Error::BadCoordinatorMessage("this party's own keys were altered"));
                }
                continue;
            }
            if !self.params.are_neighbours(self.index, adv.party) {
                return Err(Error::UnexpectedParty(adv.party));
            }
            if peers.contains_key(&adv.party) {
                return Err(Error::BadCoordinatorMessage("a party's keys are listed twice"));
            }
            statements.push((
                adv.party,
                advertise_statement(&session, adv.party, &adv.encryption_key, &adv.mask_key),
                adv.signature,
            ));
            peers.insert(
                adv.party,
                PeerKeys { encryption_key: adv.encryption_key, mask_key: adv.mask_key },
            );
        }
        self.roster.verify_all(&statements)?;
        for (&party, keys) in &peers {
            if !seen_keys.insert(keys.encryption_key) || !seen_keys.insert(keys.mask_key) {
                return Err(Error::BadPublicKey(party));
            }
        }
        let alive = peers.len() + 1;
        if alive < t {
            return Err(Error::TooFewSurvivors { stage: Stage::AdvertiseKeys, alive, needed: t });
        }
        self.check_cohort(alive)?;

        let mut holders: Vec<PartyId> = peers.keys().copied().collect();
        holders.push(self.me);
        holders.sort_unstable();
        let key_shares = shamir::split(s.mask.scalar(), &holders, t, rng);
        let mask_shares = shamir::split(&s.self_mask, &holders, t, rng);
        let mut own_shares = None;
        let mut shares = Vec::with_capacity(peers.len());
        let mut agreed = BTreeMap::new();
        for (&(holder, key_share), &(_, mask_share)) in key_shares.iter().zip(mask_shares.iter()) {
            if holder == self.me {
                own_shares = Some(HeldShares { mask_key: key_share, self_mask: mask_share });
                continue;
            }
            let mut plaintext = Zeroizing::new([0u8; SHARE_PLAINTEXT_LEN]);
            plaintext[..4].copy_from_slice(&self.me.0.to_le_bytes());
            plaintext[4..8].copy_from_slice(&holder.0.to_le_bytes());
            plaintext[8..40].copy_from_slice(key_share.as_bytes());
            plaintext[40..].copy_from_slice(mask_share.as_bytes());
            let shared = s.encryption.agree(&peers[&holder].encryption_key, holder)?;
            let key = share_key(&shared, &round, self.me, holder);
            let sealed = crypto::seal(&key, &session, self.me, holder, plaintext.as_ref());
            let ciphertext: [u8; SHARE_CIPHERTEXT_LEN] =
                sealed.try_into().expect("72 bytes of plaintext seal to 88 bytes");
            shares.push(EncryptedShare { peer: holder, ciphertext });
            agreed.insert(holder, shared);
        }
        let own_shares = own_shares.expect("this party is among its own share holders");
        self.outbox.push_back(PartyMessage::EncryptedShares { session, party: self.me, shares });
        Ok(State::ExpectShares(ExpectShares {
            mask: s.mask,
            self_mask: s.self_mask,
            peers,
            agreed,
            own_shares,
            input: s.input,
            premask: s.premask,
        }))
    }

    fn handle_shares(&mut self, mut s: ExpectShares, shares: Vec<EncryptedShare>) -> Result<State> {
        let session = self.session();
        let round = self.round();
        let t = self.params.threshold();
        let mut held = BTreeMap::new();
        for share in shares {
            let from = share.peer;
            let Some(shared) = s.agreed.get(&from) else {
                return Err(Error::UnexpectedParty(from));
            };
            if held.contains_key(&from) {
                return Err(Error::BadCoordinatorMessage("two shares from one sender"));
            }
            let key = share_key(shared, &round, from, self.me);
            let plaintext = crypto::open(&key, &session, from, self.me, &share.ciphertext)?;
            if plaintext.len() != SHARE_PLAINTEXT_LEN
                || plaintext[..4] != from.0.to_le_bytes()
                || plaintext[4..8] != self.me.0.to_le_bytes()
            {
                return Err(Error::BadShare(from));
            }
            let scalar = |range: std::ops::Range<usize>| {
                let mut b = [0u8; 32];
                b.copy_from_slice(&plaintext[range]);
                let v = scalar_from_bytes(b).ok_or(Error::BadShare(from));
                b.zeroize();
                v
            };
            held.insert(from, HeldShares { mask_key: scalar(8..40)?, self_mask: scalar(40..72)? });
        }
        let alive = held.len() + 1;
        if alive < t {
            return Err(Error::TooFewSurvivors { stage: Stage::ShareKeys, alive, needed: t });
        }
        self.check_cohort(alive)?;

        // y = x + PRG(b) + Σ_{v ∈ U2, me < v} PRG(s_{me,v}) − Σ_{v ∈ U2, me > v} PRG(s_{me,v})
        let me = self.me;
        let pair = |v: PartyId| pair_mask(&s.mask, &s.peers[&v].mask_key, me, v, &round);
        let premask = s.premask.take();
        let masks = match &premask {
            // Expanded ahead with every neighbour that advertised: take out those that sent
            // no shares.
            Some(p) if p.pairs => s
                .peers
                .keys()
                .filter(|v| !held.contains_key(v))
                .map(|&v| pair(v).map(Mask::inverse))
                .collect::<Result<Vec<_>>>()?,
            // PRG(b) is in already.
            Some(_) => held.keys().map(|&v| pair(v)).collect::<Result<Vec<_>>>()?,
            None => held
                .keys()
                .map(|&v| pair(v))
                .chain([Ok(self_mask(&s.self_mask, &round))])
                .collect::<Result<Vec<_>>>()?,
        };
        held.insert(self.me, s.own_shares.clone());
        match (premask, s.input.take()) {
            (Some(mut p), input) => {
                apply_masks(&mut p.vector, &masks);
                Ok(match input {
                    Some(input) => self.send_masked(input, p.vector, held),
                    None => State::AwaitInput(AwaitInput { mask: p.vector, held }),
                })
            }
            (None, Some(mut input)) => {
                let mut vector = std::mem::take(&mut *input);
                apply_masks(&mut vector, &masks);
                self.outbox.push_back(PartyMessage::MaskedInput {
                    session,
                    party: self.me,
                    vector,
                });
                Ok(State::ExpectSurvivors(ExpectSurvivors { held }))
            }
            (None, None) => {
                let mut mask = Zeroizing::new(vec![0u64; self.params.vector_len()]);
                apply_masks(&mut mask, &masks);
                Ok(State::AwaitInput(AwaitInput { mask, held }))
            }
        }
    }

    /// Signs the survivor set if it is one this party can help release: sorted, made of the
    /// round's parties, itself included, every listed neighbour one whose shares it holds, as
    /// large as the minimum cohort and the quorum, and connected in the graph even without
    /// any `c` of its members.
    fn handle_survivors(&mut self, s: ExpectSurvivors, survivors: Vec<PartyId>) -> Result<State> {
        if !survivors.windows(2).all(|w| w[0] < w[1]) {
            return Err(Error::BadCoordinatorMessage("survivor set is not sorted and distinct"));
        }
        if let Some(p) = survivors.iter().find(|p| self.params.index_of(**p).is_none()) {
            return Err(Error::UnexpectedParty(*p));
        }
        if survivors.binary_search(&self.me).is_err() {
            return Err(Error::InconsistentSurvivors("this party's masked input is not listed"));
        }
        let mut alive_holders = 0;
        for p in &survivors {
            if self.params.is_holder(self.index, *p) {
                if !s.held.contains_key(p) {
                    return Err(Error::InconsistentSurvivors(
                        "a listed survivor never sent this party its shares",
                    ));
                }
                alive_holders += 1;
            }
        }
        if survivors.len() < self.params.min_cohort() {
            return Err(Error::CohortTooSmall {
                size: survivors.len(),
                minimum: self.params.min_cohort(),
            });
        }
        let quorum = self.params.quorum();
        if survivors.len() < quorum {
            return Err(Error::TooFewSurvivors {
                stage: Stage::ConsistencyCheck,
                alive: survivors.len(),
                needed: quorum,
            });
        }
        if !self.params.survivors_connected(&survivors) {
            return Err(Error::SurvivorsDisconnected);
        }
        let t = self.params.threshold();
        if alive_holders < t {
            return Err(Error::TooFewSurvivors {
                stage: Stage::MaskedInput,
                alive: alive_holders,
                needed: t,
            });
        }
        let session = self.session();
        let set = survivors_hash(&self.round(), &survivors);
        let statement = survivors_statement(&set, self.me);
        let signature = self.identity.sign(&statement);
        self.outbox.push_back(PartyMessage::ConsistencySignature {
            session,
            party: self.me,
            signature,
        });
        Ok(State::ExpectSignatures(ExpectSignatures { held: s.held, survivors, set }))
    }

    /// Reveals only once a quorum of the round's parties (not only its neighbours) signed the
    /// very survivor set this party signed. No other set can reach a quorum, so every honest
    /// party that reveals anything reveals for the same set: self-mask shares for its members,
    /// mask-key shares for the rest, never both for one party.
    fn handle_signatures(
        &mut self,
        s: ExpectSignatures,
        signatures: Vec<(PartyId, [u8; 64])>,
    ) -> Result<State> {
        let session = self.session();
        let mut signers = std::collections::BTreeSet::new();
        let mut statements = Vec::with_capacity(signatures.len());
        for (signer, signature) in signatures {
            if s.survivors.binary_search(&signer).is_err() {
                return Err(Error::InconsistentSurvivors(
                    "a signature from a party outside the survivor set this party signed",
                ));
            }
            if !signers.insert(signer) {
                return Err(Error::BadCoordinatorMessage("a signature is listed twice"));
            }
            statements.push((signer, survivors_statement(&s.set, signer), signature));
        }
        let quorum = self.params.quorum();
        if signers.len() < quorum {
            return Err(Error::TooFewSurvivors {
                stage: Stage::ConsistencyCheck,
                alive: signers.len(),
                needed: quorum,
            });
        }
        self.roster.verify_all(&statements).map_err(|e| match e {
            Error::BadSignature(_) => {
                Error::InconsistentSurvivors("a party signed a different set or round")
            }
            other => other,
        })?;
        let mut self_mask = Vec::new();
        let mut mask_key = Vec::new();
        for (&owner, shares) in &s.held {
            if s.survivors.binary_search(&owner).is_ok() {
                self.ledger.reveal(owner, ShareKind::SelfMask)?;
                self_mask.push(RevealedShare { owner, value: shares.self_mask.to_bytes() });
            } else {
                self.ledger.reveal(owner, ShareKind::MaskKey)?;
                mask_key.push(RevealedShare { owner, value: shares.mask_key.to_bytes() });
            }
        }
        self.outbox.push_back(PartyMessage::UnmaskShares {
            session,
            party: self.me,
            self_mask,
            mask_key,
        });
        Ok(State::Finished)
    }
}

/// The party's self mask PRG(b), added.
fn self_mask(b: &Scalar, round: &Round) -> Mask {
    Mask::new(&self_mask_seed(b, round), Sign::Add)
}

/// The pairwise mask `me` applies for neighbour `v`: added if `me < v`, subtracted otherwise.
fn pair_mask(
    secret: &AgreementSecret,
    peer_key: &[u8; 32],
    me: PartyId,
    v: PartyId,
    round: &Round,
) -> Result<Mask> {
    let shared = secret.agree(peer_key, v)?;
    let sign = if me < v { Sign::Add } else { Sign::Subtract };
    Ok(Mask::new(&pair_mask_seed(&shared, round, me, v), sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_refuses_the_second_kind_of_share() {
        let mut l = RevealLedger::default();
        l.reveal(PartyId(1), ShareKind::SelfMask).unwrap();
        l.reveal(PartyId(1), ShareKind::SelfMask).unwrap();
        assert_eq!(l.reveal(PartyId(1), ShareKind::MaskKey), Err(Error::DoubleReveal(PartyId(1))));
        l.reveal(PartyId(2), ShareKind::MaskKey).unwrap();
        assert_eq!(l.reveal(PartyId(2), ShareKind::SelfMask), Err(Error::DoubleReveal(PartyId(2))));
        assert_eq!(l.revealed(PartyId(1)), Some(ShareKind::SelfMask));
    }
}
