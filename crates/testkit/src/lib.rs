//! An in-process consortium for tests and benchmarks.
//!
//! [`Consortium`] holds n parties' identity keys and the roster they all trust, generated from a
//! seed. [`Simulation`] runs one secure aggregation round between a [`Coordinator`] and those
//! parties entirely in memory: every message is encoded to bytes and decoded again, as on a
//! wire, time is virtual (stage deadlines pass instantly when nobody has anything left to say),
//! and [`Fault`]s inject dropouts, duplicates, reordering, truncation, corruption, replays and
//! late deliveries. An [`Interceptor`] can rewrite the coordinator's messages to play a
//! deviating coordinator.
//!
//! [`adversary`] plays a malicious coordinator, colluding with chosen parties, against the real
//! party machines and keeps account of every secret and every sum it can unmask.
//!
//! [`bench`] runs the protocol at benchmark sizes and measures time, CPU and bytes per role.
//! [`cluster`] runs a whole consortium (coordinator and parties, real gRPC over mutual TLS on
//! loopback) in this process.

pub mod adversary;
pub mod bench;
pub mod cluster;
pub mod fuzz;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_protocol::{
    Aggregate, Coordinator, CoordinatorEvent, CoordinatorMessage, Error, IdentityKey, Party,
    PartyId, PartyMessage, PartyStatus, Roster, RoundConfig, RoundKeys, RoundParams, SessionId,
    Stage,
};

/// Identity keys and roster of a consortium of parties `0..n`.
pub struct Consortium {
    identities: Vec<[u8; 32]>,
    roster: Arc<Roster>,
}

impl Consortium {
    /// `n` parties with identity keys derived from `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut roster = Roster::new();
        let identities = (0..n)
            .map(|i| {
                let key = IdentityKey::generate(&mut rng);
                roster.insert(PartyId(i as u32), key.verifying_key());
                *key.to_seed()
            })
            .collect();
        Self { identities, roster: Arc::new(roster) }
    }

    /// The party ids `0..n`.
    pub fn parties(&self) -> Vec<PartyId> {
        (0..self.identities.len() as u32).map(PartyId).collect()
    }

    /// The roster every party trusts.
    pub fn roster(&self) -> Arc<Roster> {
        self.roster.clone()
    }

    /// A party's identity key.
    pub fn identity(&self, p: PartyId) -> IdentityKey {
        IdentityKey::from_seed(&self.identities[p.0 as usize])
    }
}

/// A session id derived from a number, for reproducible tests.
pub fn session(n: u64) -> SessionId {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s[8..16].copy_from_slice(b"veiltest");
    SessionId(s)
}

/// A fault injected into a simulated round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The party goes silent instead of sending its message of `before` (and anything after).
    Dropout {
        /// The party.
        party: PartyId,
        /// The first stage whose message it does not send.
        before: Stage,
    },
    /// The party's message of this stage reaches the coordinator twice.
    DuplicateFromParty {
        /// The party.
        party: PartyId,
        /// The stage.
        stage: Stage,
    },
    /// The coordinator's message answering in this stage reaches the party twice.
    DuplicateToParty {
        /// The party.
        party: PartyId,
        /// The stage the message asks the party to answer in.
        stage: Stage,
    },
    /// The party's message of this stage arrives cut to half its length.
    TruncateFromParty {
        /// The party.
        party: PartyId,
        /// The stage.
        stage: Stage,
    },
    /// The coordinator's message to the party arrives cut to half its length.
    TruncateToParty {
        /// The party.
        party: PartyId,
        /// The stage the message asks the party to answer in.
        stage: Stage,
    },
    /// One byte near the end of the coordinator's message to the party is flipped (inside a
    /// signature or ciphertext).
    CorruptToParty {
        /// The party.
        party: PartyId,
        /// The stage the message asks the party to answer in.
        stage: Stage,
    },
    /// The party's message of this stage is held back until the stage's deadline has passed.
    LateFromParty {
        /// The party.
        party: PartyId,
        /// The stage.
        stage: Stage,
    },
    /// Messages are delivered in reverse order within each batch, both ways.
    ReverseDelivery,
    /// These bytes (a message recorded in an earlier round) reach the party just before the
    /// coordinator's message of this stage.
    ReplayToParty {
        /// The party.
        party: PartyId,
        /// The stage the genuine message asks the party to answer in.
        stage: Stage,
        /// The recorded bytes.
        bytes: Vec<u8>,
    },
    /// These bytes (recorded in an earlier round) reach the coordinator as if from the party,
    /// just before its genuine message of this stage.
    ReplayFromParty {
        /// The party.
        party: PartyId,
        /// The stage.
        stage: Stage,
        /// The recorded bytes.
        bytes: Vec<u8>,
    },
}

/// Rewrites the coordinator's messages on their way to parties: a deviating coordinator.
/// Given one message and its recipient, returns the messages actually delivered and to whom
/// (none, the same, altered, or copies to others).
pub type Interceptor =
    Box<dyn FnMut(PartyId, CoordinatorMessage) -> Vec<(PartyId, CoordinatorMessage)>>;

/// Rewrites parties' messages on their way to the coordinator: a deviating party.
pub type PartyInterceptor = Box<dyn FnMut(PartyId, PartyMessage) -> Vec<PartyMessage>>;

/// What happened in a simulated round.
#[derive(Debug)]
pub struct Outcome {
    /// The coordinator's result.
    pub result: Result<Aggregate, Error>,
    /// The inputs each party started with.
    pub inputs: BTreeMap<PartyId, Vec<u64>>,
    /// Where each party ended.
    pub status: BTreeMap<PartyId, PartyStatus>,
    /// Errors parties returned for messages they were given.
    pub party_errors: Vec<(PartyId, Error)>,
    /// Errors the coordinator returned for messages it was given (including undecodable ones).
    pub coordinator_errors: Vec<(PartyId, Error)>,
    /// Every unmask message the coordinator received, by sender.
    pub unmask: BTreeMap<PartyId, PartyMessage>,
    /// Every message sent, in order, as `(from, to, bytes)`; `None` is the coordinator.
    pub transcript: Vec<(Option<PartyId>, Option<PartyId>, Vec<u8>)>,
}

impl Outcome {
    /// The plain sum of the given parties' inputs.
    pub fn plain_sum(&self, parties: &[PartyId]) -> Vec<u64> {
        let len = self.inputs.values().next().map_or(0, Vec::len);
        let mut sum = vec![0u64; len];
        for p in parties {
            for (s, x) in sum.iter_mut().zip(&self.inputs[p]) {
                *s = s.wrapping_add(*x);
            }
        }
        sum
    }

    /// The recorded bytes of the first message of `stage` sent by the coordinator to `to`.
    pub fn sent_to(&self, to: PartyId, stage: Stage) -> Option<&[u8]> {
        self.transcript.iter().find_map(|(from, dest, bytes)| {
            (from.is_none() && *dest == Some(to))
                .then(|| CoordinatorMessage::decode(bytes).ok())
                .flatten()
                .filter(|m| m.stage() == stage)
                .map(|_| bytes.as_slice())
        })
    }

    /// The recorded bytes of the first message of `stage` sent by `from`.
    pub fn sent_by(&self, from: PartyId, stage: Stage) -> Option<&[u8]> {
        self.transcript.iter().find_map(|(f, _, bytes)| {
            (*f == Some(from))
                .then(|| PartyMessage::decode(bytes).ok())
                .flatten()
                .filter(|m| m.stage() == stage)
                .map(|_| bytes.as_slice())
        })
    }
}

/// One simulated round.
pub struct Simulation<'a> {
    consortium: &'a Consortium,
    params: Arc<RoundParams>,
    faults: Vec<Fault>,
    interceptor: Option<Interceptor>,
    party_interceptor: Option<PartyInterceptor>,
    inputs: Option<BTreeMap<PartyId, Vec<u64>>>,
    /// Parties that join before their input exists, with the state in which it arrives.
    late_input: BTreeMap<PartyId, &'static str>,
    /// Parties that expand their masks ahead after every send, as the services' parties do.
    precompute: BTreeSet<PartyId>,
    /// Parties that run the round with parameters of their own (say, a higher minimum cohort).
    party_params: BTreeMap<PartyId, Arc<RoundParams>>,
    /// Parties whose keys were made and advertised before the round (with the job's offer).
    keys_ahead: BTreeSet<PartyId>,
    seed: u64,
    record: bool,
}

/// Decodes bytes from `from` and hands them to the coordinator, keeping unmask messages.
fn deliver(
    coordinator: &mut Coordinator,
    from: PartyId,
    bytes: &[u8],
    now: Instant,
    unmask: &mut BTreeMap<PartyId, PartyMessage>,
) -> Result<(), Error> {
    let msg = PartyMessage::decode(bytes)?;
    if let PartyMessage::UnmaskShares { .. } = &msg {
        unmask.insert(from, msg.clone());
    }
    coordinator.handle_message(from, msg, now)
}

/// Most delivery passes a round may take before the simulation gives up.
const MAX_PASSES: usize = 1_000;

impl<'a> Simulation<'a> {
    /// A round of `config` among the consortium's parties, with randomness from `seed`.
    pub fn new(consortium: &'a Consortium, config: RoundConfig, seed: u64) -> Result<Self, Error> {
        Ok(Self {
            consortium,
            params: Arc::new(config.validate()?),
            faults: Vec::new(),
            interceptor: None,
            party_interceptor: None,
            inputs: None,
            late_input: BTreeMap::new(),
            precompute: BTreeSet::new(),
            party_params: BTreeMap::new(),
            keys_ahead: BTreeSet::new(),
            seed,
            record: true,
        })
    }

    /// Adds a fault.
    pub fn fault(mut self, f: Fault) -> Self {
        self.faults.push(f);
        self
    }

    /// Rewrites the coordinator's messages.
    pub fn intercept(mut self, i: Interceptor) -> Self {
        self.interceptor = Some(i);
        self
    }

    /// Rewrites the parties' messages.
    pub fn intercept_parties(mut self, i: PartyInterceptor) -> Self {
        self.party_interceptor = Some(i);
        self
    }

    /// Uses these inputs instead of random ones.
    pub fn inputs(mut self, inputs: BTreeMap<PartyId, Vec<u64>>) -> Self {
        self.inputs = Some(inputs);
        self
    }

    /// Party `p` joins the round before its input exists and is given it once it reaches the
    /// state named `when` (`expect-keys`, `expect-shares` or `await-input`).
    pub fn late_input(mut self, p: PartyId, when: &'static str) -> Self {
        self.late_input.insert(p, when);
        self
    }

    /// Party `p` validates and runs the round with `config` instead of the coordinator's.
    pub fn party_config(mut self, p: PartyId, config: RoundConfig) -> Result<Self, Error> {
        self.party_params.insert(p, Arc::new(config.validate()?));
        Ok(self)
    }

    /// These parties expand their masks ahead ([`Party::precompute`]) after every send.
    pub fn precompute(mut self, parties: &[PartyId]) -> Self {
        self.precompute.extend(parties);
        self
    }

    /// These parties make their keys before the round ([`RoundKeys`]), as the services'
    /// parties do when the session comes with the offer: the coordinator takes their
    /// advertisements as it starts, and they join with [`Party::with_keys`].
    pub fn keys_ahead(mut self, parties: &[PartyId]) -> Self {
        self.keys_ahead.extend(parties);
        self
    }

    /// Whether to keep a transcript (on by default; off for large benchmarks).
    pub fn record(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    fn has(&self, f: &Fault) -> bool {
        self.faults.contains(f)
    }

    fn dropped_before(&self, p: PartyId, stage: Stage) -> bool {
        self.faults.iter().any(
            |f| matches!(f, Fault::Dropout { party, before } if *party == p && *before <= stage),
        )
    }

    /// Runs the round to its end.
    pub fn run(mut self) -> Outcome {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let params = self.params.clone();
        let len = params.vector_len();
        let inputs: BTreeMap<PartyId, Vec<u64>> = self.inputs.take().unwrap_or_else(|| {
            params
                .parties()
                .iter()
                .map(|&p| (p, (0..len).map(|_| rng.next_u64() >> 8).collect()))
                .collect()
        });
        let mut now = Instant::now();
        let mut coordinator = Coordinator::new(params.clone(), self.consortium.roster(), now);
        let mut parties: BTreeMap<PartyId, Party> = BTreeMap::new();
        let mut party_errors = Vec::new();
        let mut coordinator_errors = Vec::new();
        let mut transcript = Vec::new();
        let mut unmask = BTreeMap::new();
        for &p in params.parties() {
            let (identity, roster) = (self.consortium.identity(p), self.consortium.roster());
            let own = self.party_params.get(&p).unwrap_or(&params).clone();
            let party = if self.keys_ahead.contains(&p) {
                let keys = RoundKeys::generate(own.session(), p, &identity, &mut rng);
                if !self.dropped_before(p, Stage::AdvertiseKeys) {
                    let advert = keys.advertisement().encode();
                    if let Err(e) = deliver(&mut coordinator, p, &advert, now, &mut unmask) {
                        coordinator_errors.push((p, e));
                    }
                }
                let input = (!self.late_input.contains_key(&p)).then(|| inputs[&p].clone());
                Party::with_keys(own, identity, roster, input, keys)
            } else if self.late_input.contains_key(&p) {
                Party::awaiting_input(own, p, identity, roster, &mut rng)
            } else {
                Party::new(own, p, identity, roster, inputs[&p].clone(), &mut rng)
            }
            .expect("simulated parties are configured consistently");
            parties.insert(p, party);
        }
        let mut awaiting = self.late_input.clone();
        let mut silent: BTreeSet<PartyId> = BTreeSet::new();
        let mut late: Vec<(PartyId, Vec<u8>)> = Vec::new();
        let reverse = self.has(&Fault::ReverseDelivery);
        let mut result = None;

        for _ in 0..MAX_PASSES {
            let mut moved = false;
            // Late inputs arrive.
            awaiting.retain(|p, when| {
                let party = parties.get_mut(p).expect("late parties are parties");
                if party.status() != PartyStatus::InProgress(when) {
                    return true;
                }
                party.provide_input(inputs[p].clone()).expect("a late input is taken once");
                false
            });
            // Parties → coordinator.
            let mut outgoing = Vec::new();
            for (&p, party) in parties.iter_mut() {
                let mut sent = Vec::new();
                while let Some(msg) = party.poll_transmit() {
                    match &mut self.party_interceptor {
                        Some(i) => sent.extend(i(p, msg)),
                        None => sent.push(msg),
                    }
                }
                if self.precompute.contains(&p) {
                    party.precompute();
                }
                for msg in sent {
                    let stage = msg.stage();
                    if silent.contains(&p) || self.dropped_before(p, stage) {
                        silent.insert(p);
                        continue;
                    }
                    for f in &self.faults {
                        if let Fault::ReplayFromParty { party, stage: s, bytes } = f {
                            if *party == p && *s == stage {
                                outgoing.push((p, bytes.clone()));
                            }
                        }
                    }
                    let mut bytes = msg.encode();
                    if self.has(&Fault::TruncateFromParty { party: p, stage }) {
                        bytes.truncate(bytes.len() / 2);
                    }
                    if self.has(&Fault::LateFromParty { party: p, stage }) {
                        late.push((p, bytes));
                        continue;
                    }
                    if self.has(&Fault::DuplicateFromParty { party: p, stage }) {
                        outgoing.push((p, bytes.clone()));
                    }
                    outgoing.push((p, bytes));
                }
            }
            if reverse {
                outgoing.reverse();
            }
            for (p, bytes) in outgoing {
                moved = true;
                if self.record {
                    transcript.push((Some(p), None, bytes.clone()));
                }
                let r = deliver(&mut coordinator, p, &bytes, now, &mut unmask);
                if let Err(e) = r {
                    coordinator_errors.push((p, e));
                }
            }
            // Coordinator → parties.
            let mut incoming = Vec::new();
            while let Some((to, msg)) = coordinator.poll_transmit() {
                let msgs = match &mut self.interceptor {
                    Some(i) => i(to, msg),
                    None => vec![(to, msg)],
                };
                for (to, msg) in msgs {
                    let stage = msg.stage();
                    for f in &self.faults {
                        if let Fault::ReplayToParty { party, stage: s, bytes } = f {
                            if *party == to && *s == stage {
                                incoming.push((to, bytes.clone()));
                            }
                        }
                    }
                    let mut bytes = msg.encode();
                    if self.has(&Fault::TruncateToParty { party: to, stage }) {
                        bytes.truncate(bytes.len() / 2);
                    }
                    if self.has(&Fault::CorruptToParty { party: to, stage }) {
                        let at = bytes.len() - 5;
                        bytes[at] ^= 0x40;
                    }
                    if self.has(&Fault::DuplicateToParty { party: to, stage }) {
                        incoming.push((to, bytes.clone()));
                    }
                    incoming.push((to, bytes));
                }
            }
            if reverse {
                incoming.reverse();
            }
            for (to, bytes) in incoming {
                moved = true;
                if self.record {
                    transcript.push((None, Some(to), bytes.clone()));
                }
                if silent.contains(&to) {
                    continue;
                }
                let party = parties.get_mut(&to).expect("the coordinator only writes to parties");
                let r = CoordinatorMessage::decode(&bytes)
                    .map_err(Error::from)
                    .and_then(|m| party.handle_message(m, &mut rng));
                if let Err(e) = r {
                    party_errors.push((to, e));
                }
            }
            while let Some(ev) = coordinator.poll_event() {
                match ev {
                    CoordinatorEvent::Finished(a) => result = Some(Ok(a)),
                    CoordinatorEvent::Aborted(e) => result = Some(Err(e)),
                    CoordinatorEvent::StageClosed { .. } => {}
                }
            }
            if result.is_some() && !moved {
                break;
            }
            if !moved {
                // Nobody has anything to say: let the deadline pass, then deliver late messages.
                match coordinator.poll_timeout() {
                    Some(deadline) => {
                        now = deadline.max(now) + Duration::from_millis(1);
                        coordinator.handle_timeout(now);
                        for (p, bytes) in late.drain(..) {
                            let r = deliver(&mut coordinator, p, &bytes, now, &mut unmask);
                            if let Err(e) = r {
                                coordinator_errors.push((p, e));
                            }
                        }
                    }
                    None => break,
                }
            }
        }
        let status = parties.iter().map(|(&p, party)| (p, party.status())).collect();
        Outcome {
            result: result.unwrap_or(Err(Error::RoundEnded)),
            inputs,
            status,
            party_errors,
            coordinator_errors,
            unmask,
            transcript,
        }
    }
}
