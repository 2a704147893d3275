//! The party's part in its jobs, with no I/O: offers, round starts, protocol messages,
//! finished preparations and job ends go in; messages for the coordinator, background work
//! and an injected exit come out ([`PartyJobs::poll_action`]). The party's records sit behind
//! [`JobRecords`]; whether to take part at all is [`crate::admission`]'s. The worker
//! ([`crate::worker`]) only dials, reconnects, runs the background work and moves messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use veil_governance::audit::{Event, Head};
use veil_governance::budget::{BudgetError, Reservation};
use veil_governance::decision::{PsiOutcome, decision_statement, psi_message_statement};
use veil_governance::receipt::Receipt;
use veil_governance::{Decline, DeclineKind, Rule};
use veil_learning::job::{LocalData, Step, TrainSpec};
use veil_learning::train::Standardizer;
use veil_proto::v1::coordinator_envelope::Body as Outbound;
use veil_proto::v1::party_envelope::Body;
use veil_proto::v1::{
    Decline as WireDecline, PsiResult, PsiRole, PsiStart, RoundPayload, RoundStart, TaskEnd,
    TaskOffer, TaskReply,
};
use veil_protocol::{
    CoordinatorMessage, IdentityKey, Party, PartyStatus, RoundConfig, RoundKeys, SessionId, Stage,
};
use zeroize::Zeroizing;

use crate::admission::{self, Admission, Offer, PsiSide, Records, Situation, Work};
use crate::config::PartyConfig;
use crate::worker::{Fault, WorkerOptions};

/// What the party's records must do for its jobs, atomically where it says so.
pub(crate) trait JobRecords: Records + Send + Sync {
    /// Records an acceptance's events and claims the round session it names, in one
    /// transaction; `false` (and nothing written) if the session was used before.
    fn accept(
        &self,
        events: Vec<Event>,
        session: Option<&[u8; 32]>,
        now_ms: i64,
    ) -> Result<bool, String>;
    /// Reserves a release's charge with its audit entry, atomically against every other job.
    fn reserve(&self, charge: &Reservation, now_ms: i64)
    -> Result<Result<(), BudgetError>, String>;
    /// Claims a round session; `false` if it was used before.
    fn claim_session(&self, session: &[u8; 32]) -> Result<bool, String>;
    /// Claims a training step (reserving the job's charge with its first step).
    fn claim_step(
        &self,
        charge: &Reservation,
        job_hash: &str,
        step: u32,
        now_ms: i64,
    ) -> Result<Result<(), Decline>, String>;
    /// Appends to the audit log.
    fn audit(&self, event: Event, now_ms: i64) -> Result<(), String>;
    /// The audit log's head.
    fn audit_head(&self) -> Result<Option<Head>, String>;
    /// Keeps a release receipt.
    fn put_receipt(&self, receipt: &Receipt) -> Result<(), String>;
}

/// What the worker does for the machine.
pub(crate) enum Action {
    /// Send to the coordinator.
    Send(Box<Body>),
    /// Compute what an admitted job needs in the background, then hand the result to
    /// [`PartyJobs::prepared`].
    Prepare(Box<Preparation>),
    /// Compute a training step's vector in the background, then hand it to
    /// [`PartyJobs::trained`].
    Train(Box<StepWork>),
    /// An injected fault: stop, once what was sent is delivered.
    Exit,
    /// An intersection has more to send: hand the job back to [`PartyJobs::resume`] once what
    /// came before is sent, serving other messages between.
    Continue(String),
    /// Encrypt a join's vectors in the background (a fresh Paillier key, an encryption per 14
    /// values of every key), then hand them to [`PartyJobs::encrypted`].
    Encrypt(Box<Encryption>),
    /// Keep an intersection this party was given: its own keys that the other side holds.
    KeepIntersection(Box<Intersection>),
}

/// An intersection a client party was given, for it to keep.
pub(crate) struct Intersection {
    pub(crate) job_id: String,
    /// The keys, as normalised, in the order of its key set (zeroized when dropped).
    pub(crate) keys: Zeroizing<Vec<String>>,
}

/// An admitted job's background work.
pub(crate) struct Preparation {
    pub(crate) job_id: String,
    pub(crate) job_hash: String,
    /// The acceptance so far; the work fills in the vector or the training rows.
    pub(crate) accepted: Accepted,
    pub(crate) work: Work,
}

/// A training step's background work.
pub(crate) struct StepWork {
    pub(crate) start: RoundStart,
    pub(crate) job_id: String,
    pub(crate) job: Arc<TrainingJob>,
    pub(crate) step: Step,
    pub(crate) standardizer: Option<Standardizer>,
}

/// What a party joins a round with.
struct Joining {
    /// `None` while a training step's vector is still being computed.
    vector: Option<Zeroizing<Vec<u64>>>,
    min_parties: usize,
    charge: Option<Reservation>,
    /// Keys advertised with the acceptance, for the session the offer named.
    keys: Option<RoundKeys>,
    /// The job's hash (hex), bound into the round's digest.
    job_hash: String,
}

/// A job this party accepted.
enum JobState {
    /// Computing the local vector.
    Preparing {
        /// The round's session, when the offer named it (one-round secure jobs).
        session: Option<[u8; 32]>,
        /// Whether it is an intersection (whose keys are being read).
        intersection: bool,
    },
    /// Accepted with this vector, waiting for the round to start.
    Ready(Box<Accepted>),
    /// In the secure round.
    Round(Box<Party>),
    /// In a private set intersection.
    Psi(Box<PsiExchange>),
    /// A join's value side whose exchange started, its vectors being encrypted in the
    /// background.
    Encrypting(Box<PendingValue>),
    /// Done, or stalled by an injected fault: ignore further messages.
    Idle,
}

/// An exchange's side as it starts: at once, or once a join's vectors are encrypted.
enum Starting {
    Now(PsiMachine),
    Encrypt(veil_psi::join::JoinParams, veil_psi::KeySet, Arc<Zeroizing<Vec<Vec<u64>>>>),
}

/// A join's value side waiting for its vectors' encryption to start its exchange.
struct PendingValue {
    params: veil_psi::join::JoinParams,
    keys: veil_psi::KeySet,
    count: u64,
    peer: veil_protocol::PartyId,
    session: [u8; 32],
    min_peer_keys: Option<u64>,
    after: Option<Box<Accepted>>,
}

/// A join's vectors to encrypt in the background, then hand to [`PartyJobs::encrypted`].
pub(crate) struct Encryption {
    pub(crate) job_id: String,
    pub(crate) segment: u32,
    pub(crate) vectors: Arc<Zeroizing<Vec<Vec<u64>>>>,
}

/// A join's vectors, encrypted (or why not).
pub(crate) struct Encrypted {
    pub(crate) job_id: String,
    pub(crate) result: Result<veil_psi::join::EncryptedValues, String>,
}

/// The most keys a party lets the other side of an intersection announce: a server keeps 16
/// bytes per key of the client's (320 MB at this bound).
const MAX_PEER_KEYS: u64 = 20_000_000;

/// A party's side of a private set intersection under way, with the other side's party and
/// the exchange's session, which every message's signature binds.
struct PsiExchange {
    side: PsiMachine,
    peer: veil_protocol::PartyId,
    session: [u8; 32],
    min_peer_keys: Option<u64>,
    noise_variance: Option<u64>,
    /// A join's acceptance, to return to once the exchange is done: the share goes into its
    /// vector for the round that sums the shares (and, at the group side, its keys are kept
    /// for the next value party's exchange).
    after: Option<Box<Accepted>>,
    /// At a client given the intersection, its keys, to name the members at the end.
    members_of: Option<veil_psi::KeySet>,
}

enum PsiMachine {
    /// The client, and how many keys it brought.
    Client(veil_psi::Client, u64),
    /// The server, and how many keys it brought.
    Server(veil_psi::Server, u64),
    /// A join's group side (the intersection's client), and how many keys it brought.
    JoinGroup(Box<veil_psi::join::GroupSide>, u64),
    /// A join's value side (the intersection's server), and how many keys it brought.
    JoinValue(Box<veil_psi::join::ValueSide>, u64),
}

/// What a party brings to a join besides its keys.
#[derive(Clone)]
pub(crate) enum JoinInput {
    /// The group side: each key's group slot.
    Group(Vec<u32>),
    /// The value side: each key's aggregate (zeroized when dropped), encrypted in the
    /// background when its exchange starts.
    Value(Arc<Zeroizing<Vec<Vec<u64>>>>),
    /// The value side after its one exchange: nothing more to bring.
    Spent,
}

/// A join's side and shape, and the parties this party exchanged with for it.
#[derive(Clone)]
pub(crate) struct JoinKeys {
    pub(crate) input: JoinInput,
    /// Values per key, and groups.
    pub(crate) shape: (u32, u32),
    /// The parties this party finished an exchange with for this job (the group side: its
    /// value parties; the value side: its group side). A join's round is over exactly these.
    pub(crate) peers: std::collections::BTreeSet<u32>,
    /// At the value side, the parties its dataset's policy lets learn which keys it holds
    /// (`reveal_membership_to`): the only ones it exchanges with.
    pub(crate) reveal_to: Vec<String>,
    /// A differentially private join: this party's share of the noise over the answer's
    /// layout, added to its share at the round.
    pub(crate) noise: Option<Arc<Zeroizing<Vec<u64>>>>,
}

/// The keys a party brings to an intersection, and its side.
pub(crate) struct PsiKeys {
    pub(crate) side: PsiSide,
    pub(crate) keys: veil_psi::KeySet,
    pub(crate) case_fold: bool,
    /// The fewest keys the other side may bring (the dataset's policy).
    pub(crate) min_peer_keys: Option<u64>,
    /// The variance of the noise the client adds to the size, for a private release.
    pub(crate) noise_variance: Option<u64>,
    /// A join's side and shape (`side` is the client for the group side).
    pub(crate) join: Option<JoinKeys>,
    /// An intersection whose client gets the intersection itself: at the server, the parties
    /// its policy lets learn which of its keys it holds.
    pub(crate) intersection: Option<Vec<String>>,
}

impl PsiKeys {
    /// The same keys and join input, for a group side's next exchange.
    fn clone_keys(&self) -> PsiKeys {
        PsiKeys {
            side: self.side,
            keys: self.keys.clone(),
            case_fold: self.case_fold,
            min_peer_keys: self.min_peer_keys,
            noise_variance: self.noise_variance,
            intersection: self.intersection.clone(),
            join: self.join.as_ref().map(|j| JoinKeys {
                input: match &j.input {
                    JoinInput::Group(slots) => JoinInput::Group(slots.clone()),
                    // The value side's encrypted vectors go into its one exchange only.
                    JoinInput::Value(_) | JoinInput::Spent => JoinInput::Spent,
                },
                ..j.clone_shape()
            }),
        }
    }
}

impl JoinKeys {
    /// The shape, peers and policy, with nothing to bring.
    fn clone_shape(&self) -> JoinKeys {
        JoinKeys {
            input: JoinInput::Spent,
            shape: self.shape,
            peers: self.peers.clone(),
            reveal_to: self.reveal_to.clone(),
            noise: self.noise.clone(),
        }
    }
}

/// A job the party accepted, with what the round start needs.
pub(crate) struct Accepted {
    pub(crate) vector: Zeroizing<Vec<u64>>,
    pub(crate) min_parties: usize,
    /// `None` for synthetic jobs, which charge no budget.
    pub(crate) charge: Option<Reservation>,
    pub(crate) dataset_sha256: String,
    pub(crate) consumer: String,
    pub(crate) coordinator_head: Option<Head>,
    /// A training job's rows and specification (its vectors are computed step by step).
    pub(crate) training: Option<Arc<TrainingJob>>,
    /// A training job's first step this party still contributes to.
    pub(crate) next_step: u64,
    /// The round keys advertised with the acceptance, when the offer named the session.
    pub(crate) keys: Option<RoundKeys>,
    /// The job's hash (hex), bound into the round's digest.
    pub(crate) job_hash: String,
    /// An intersection's keys.
    pub(crate) psi: Option<PsiKeys>,
}

/// A training job this party accepted: it contributes to its steps until the job ends.
pub(crate) struct TrainingJob {
    pub(crate) spec: TrainSpec,
    pub(crate) job_hash: String,
    pub(crate) data: LocalData,
    /// The standardisation its declared bounds give, for DP jobs.
    pub(crate) declared: Option<Standardizer>,
}

/// What the background preparation of a job reports.
pub(crate) struct Prepared {
    pub(crate) job_id: String,
    pub(crate) job_hash: String,
    pub(crate) result: Result<Accepted, Decline>,
}

/// A training step's vector, computed in the background.
pub(crate) struct Trained {
    pub(crate) start: RoundStart,
    pub(crate) job_id: String,
    pub(crate) computed: Result<Vec<u64>, Decline>,
}

/// An accepted training job, between and during its steps.
#[derive(Clone)]
struct TrainingSlot {
    job: Arc<TrainingJob>,
    min_parties: usize,
    charge: Reservation,
}

/// The party's jobs.
pub(crate) struct PartyJobs {
    config: Arc<PartyConfig>,
    options: WorkerOptions,
    store: Arc<dyn JobRecords>,
    signing: SigningKey,
    /// Makes a generator for each use: round keys, a round's masks and coefficients, a
    /// message's randomness. A fresh one each time, so no state that could replay a finished
    /// round's secrets outlives it.
    rng: fn() -> rand_chacha::ChaCha20Rng,
    clock: fn() -> i64,
    jobs: HashMap<String, JobState>,
    /// The accepted training jobs, between and during their steps.
    training: HashMap<String, TrainingSlot>,
    /// The job hash and consumer of every job this party accepted, until the job ends: a
    /// receipt is kept only for what the party took part in.
    accepted: HashMap<String, (String, String)>,
    /// Why this system cannot confine trainer programs, if it cannot.
    no_sandbox: Option<String>,
    out: VecDeque<Action>,
}

impl PartyJobs {
    /// The machine of a party with this configuration and records; `rng` makes the generator
    /// of every random choice (round keys, masks, synthetic vectors), a new one per use (from
    /// the OS in service), `clock` gives the time in Unix milliseconds.
    pub(crate) fn new(
        config: Arc<PartyConfig>,
        options: WorkerOptions,
        store: Arc<dyn JobRecords>,
        rng: fn() -> rand_chacha::ChaCha20Rng,
        clock: fn() -> i64,
    ) -> Self {
        let signing = SigningKey::from_bytes(&config.identity_seed);
        Self {
            config,
            options,
            store,
            signing,
            rng,
            clock,
            jobs: HashMap::new(),
            training: HashMap::new(),
            accepted: HashMap::new(),
            no_sandbox: Some("the party has not checked for a sandbox".into()),
            out: VecDeque::new(),
        }
    }

    /// The machine knowing whether this system confines trainer programs (the Landlock ABI,
    /// or why not).
    pub(crate) fn with_sandbox(self, support: Result<u32, String>) -> Self {
        Self { no_sandbox: support.err(), ..self }
    }

    /// The next thing to do, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// A new connection: jobs from the previous one cannot continue, as the coordinator saw
    /// this party leave.
    pub(crate) fn reconnected(&mut self) {
        self.jobs.clear();
        self.training.clear();
        // Nor can what was queued for it: replies, round messages, work and an injected exit.
        self.out.clear();
    }

    /// Lets an intersection send its next message ([`Action::Continue`]).
    pub(crate) fn resume(&mut self, job_id: &str) {
        self.psi_flush(job_id);
    }

    /// A message from the coordinator.
    pub(crate) fn handle(&mut self, body: Outbound) {
        match body {
            Outbound::Welcome(_) => {}
            Outbound::Offer(offer) => self.offer(offer),
            Outbound::Start(start) => {
                self.start_round(start);
            }
            Outbound::Round(payload) => {
                self.round_message(payload);
            }
            Outbound::End(end) => self.end(end),
            Outbound::PsiStart(start) => self.psi_start(start),
        }
    }

    /// Intersections this party has admitted and not finished.
    fn intersections(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| match j {
                JobState::Psi(_) | JobState::Encrypting(_) => true,
                JobState::Preparing { intersection, .. } => *intersection,
                JobState::Ready(a) => a.psi.is_some(),
                _ => false,
            })
            .count()
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn send(&mut self, body: Body) {
        self.out.push_back(Action::Send(Box::new(body)));
    }

    fn audit(&self, event: Event) {
        if let Err(e) = self.store.audit(event, self.now()) {
            tracing::error!(party = %self.config.name, error = %e, "cannot write the audit log");
        }
    }

    /// An offer: decided by admission; a decline is answered at once, an admitted job once its
    /// background work is done ([`PartyJobs::prepared`]).
    fn offer(&mut self, offer: TaskOffer) {
        let job_id = offer.job_id.clone();
        if self.jobs.contains_key(&job_id) {
            return;
        }
        let coordinator_head = (!offer.coordinator_head_hash.is_empty()).then(|| Head {
            seq: offer.coordinator_head_seq,
            hash: offer.coordinator_head_hash.clone(),
            signature: Some(offer.coordinator_head_signature.clone()),
        });
        let today = today(self.now());
        let situation = Situation {
            today: &today,
            dangerous_benchmark: self.options.dangerous_benchmark,
            training_jobs: self.training.len(),
            intersections: self.intersections(),
            no_sandbox: self.no_sandbox.as_deref(),
        };
        let view = Offer {
            job_id: &offer.job_id,
            spec_json: &offer.spec_json,
            consumer: &offer.consumer,
            consumer_signature: &offer.consumer_signature,
            session: &offer.session,
            coordinator_head: coordinator_head.as_ref(),
        };
        let (job_hash, decision) =
            admission::admit(&self.config, &situation, self.store.as_ref(), &view);
        let Admission { session, min_parties, charge, work } = match decision {
            Ok(a) => a,
            Err(decline) => {
                return self.prepared(Prepared { job_id, job_hash, result: Err(decline) });
            }
        };
        let intersection = matches!(work, Work::Psi { .. });
        self.jobs.insert(job_id.clone(), JobState::Preparing { session, intersection });
        let accepted = Accepted {
            vector: Zeroizing::new(Vec::new()),
            min_parties,
            charge,
            dataset_sha256: String::new(),
            consumer: offer.consumer,
            coordinator_head,
            training: None,
            next_step: 0,
            keys: None,
            job_hash: job_hash.clone(),
            psi: None,
        };
        match work {
            Work::Synthetic { dim } => {
                let mut rng = (self.rng)();
                let vector: Vec<u64> = (0..dim).map(|_| rng.next_u64()).collect();
                let accepted = Accepted { vector: Zeroizing::new(vector), ..accepted };
                self.prepared(Prepared { job_id, job_hash, result: Ok(accepted) });
            }
            work => {
                let preparation = Preparation { job_id, job_hash, accepted, work };
                self.out.push_back(Action::Prepare(Box::new(preparation)));
            }
        }
    }

    /// A job's preparation finished: the signed reply goes out (with the round keys, when
    /// the offer named the session).
    pub(crate) fn prepared(&mut self, prepared: Prepared) {
        let reply = self.decide(prepared);
        let (job_id, keys_sent) = (reply.job_id.clone(), !reply.advertise.is_empty());
        self.send(Body::Reply(reply));
        // Round keys that went out with the acceptance are this party's advertise-keys message.
        if keys_sent {
            self.injected(&job_id, Stage::AdvertiseKeys);
        }
    }

    /// A job ended: its state goes, and its receipt is kept if it is for what this party
    /// accepted.
    fn end(&mut self, end: TaskEnd) {
        self.jobs.remove(&end.job_id);
        self.training.remove(&end.job_id);
        let accepted = self.accepted.remove(&end.job_id);
        if end.receipt_json.is_empty() {
            return;
        }
        let me = self.config.id.0;
        // The receipt goes into this party's signed log: it must be for the job, hash and
        // consumer the party accepted, not whatever the coordinator says.
        let ours = |r: &Receipt| {
            r.job_id == end.job_id
                && accepted
                    .as_ref()
                    .is_some_and(|(hash, consumer)| r.job_hash == *hash && r.consumer == *consumer)
        };
        match serde_json::from_str::<Receipt>(&end.receipt_json) {
            Ok(r) if !r.parties.iter().any(|c| c.party == me) => {}
            Ok(r) if !ours(&r) => {
                tracing::warn!(party = %self.config.name, job = %end.job_id, "a receipt for another job, hash or consumer than this party accepted; not kept");
            }
            Ok(r) => {
                if let Err(e) = self.store.put_receipt(&r) {
                    tracing::error!(party = %self.config.name, error = %e, "cannot store a receipt");
                }
                self.audit(Event::ResultReleased { receipt: r });
            }
            Err(e) => tracing::warn!(party = %self.config.name, error = %e, "unreadable receipt"),
        }
    }
    /// Leaves a job at round start, logging why (the rule for a policy refusal, else the kind).
    fn leave(&self, job_id: String, decline: &Decline) {
        tracing::warn!(party = %self.config.name, job = %job_id, %decline, "leaving the job");
        self.audit(self.refused_event(job_id, decline));
    }

    /// The audit entry of a decline: its rule, or for a decline that is not a policy refusal its
    /// kind; and its message.
    fn refused_event(&self, job_id: String, decline: &Decline) -> Event {
        let rule = decline.rule().map_or(decline.kind().name(), Rule::name).to_string();
        Event::JobRefused {
            job_id,
            party: self.config.id.0,
            rule,
            message: decline.message().to_string(),
        }
    }

    /// Turns a finished preparation into the signed reply, recording the decision.
    fn decide(&mut self, prepared: Prepared) -> TaskReply {
        let Prepared { job_id, job_hash, result } = prepared;
        let session = match self.jobs.get(&job_id) {
            Some(JobState::Preparing { session, .. }) => *session,
            _ => None,
        };
        // The acceptance and the session it takes part in are recorded together, before the
        // party says yes.
        let result = result.and_then(|accepted| {
            let events = vec![
                Event::JobOffered {
                    job_id: job_id.clone(),
                    job_hash: job_hash.clone(),
                    consumer: accepted.consumer.clone(),
                    coordinator_head: accepted.coordinator_head.clone(),
                },
                Event::JobAccepted { job_id: job_id.clone(), party: self.config.id.0 },
            ];
            match self.store.accept(events, session.as_ref(), self.now()) {
                Ok(true) => Ok(accepted),
                Ok(false) => Err(Decline::Fault(
                    "the offer names a round session this party has already taken part in".into(),
                )),
                Err(e) => Err(Decline::Fault(format!("cannot record the acceptance: {e}"))),
            }
        });
        let mut next_step = 0;
        let mut advertise = Vec::new();
        let mut min_cohort = 0;
        let (decline, dataset_sha256) = match result {
            Ok(mut accepted) => {
                let fingerprint = accepted.dataset_sha256.clone();
                next_step = accepted.next_step;
                min_cohort = u32::try_from(accepted.min_parties).unwrap_or(u32::MAX);
                if let (Some(job), Some(charge)) = (&accepted.training, &accepted.charge) {
                    let slot = TrainingSlot {
                        job: job.clone(),
                        min_parties: accepted.min_parties,
                        charge: charge.clone(),
                    };
                    self.training.insert(job_id.clone(), slot);
                }
                if let (Some(session), None) = (session, &accepted.training) {
                    let identity = IdentityKey::from_seed(&self.config.identity_seed);
                    let keys = RoundKeys::generate(
                        SessionId(session),
                        self.config.id,
                        &identity,
                        &mut (self.rng)(),
                    );
                    advertise = keys.advertisement().encode();
                    accepted.keys = Some(keys);
                }
                self.accepted.insert(job_id.clone(), (job_hash.clone(), accepted.consumer.clone()));
                if let Some(JobState::Preparing { .. }) = self.jobs.get(&job_id) {
                    self.jobs.insert(job_id.clone(), JobState::Ready(Box::new(accepted)));
                }
                (None, fingerprint)
            }
            Err(decline) => {
                self.jobs.remove(&job_id);
                tracing::info!(party = %self.config.name, job = %job_id, %decline, "declined a job");
                self.audit(self.refused_event(job_id.clone(), &decline));
                (Some(decline), String::new())
            }
        };
        let signature =
            self.signing.sign(&decision_statement(&job_id, &job_hash, decline.as_ref()));
        let head = self.store.audit_head().unwrap_or_else(|e| {
        tracing::error!(party = %self.config.name, error = %e, "cannot read the audit log's head");
        None
    });
        let head = head.map(|h| h.signed(&job_id, &self.signing));
        let (kind, rule, reason) = decline_fields(decline.as_ref());
        let mut reply = TaskReply {
            job_id,
            accept: decline.is_none(),
            decline: kind,
            rule,
            reason,
            job_hash,
            signature: signature.to_bytes().to_vec(),
            dataset_sha256,
            advertise,
            min_cohort,
            head_seq: head.as_ref().map_or(0, |h| h.seq),
            head_signature: head.as_ref().and_then(|h| h.signature.clone()).unwrap_or_default(),
            head_hash: head.map(|h| h.hash).unwrap_or_default(),
            ..TaskReply::default()
        };
        // The store counts a training job's steps in the order `Step::code` gives them.
        veil_proto::round::set_next_position(&mut reply, next_step);
        reply
    }

    /// Leaves a job it accepted (a training step, an intersection, a round), and tells the
    /// coordinator why in a signed refusal, so the consumer sees the reason rather than a
    /// timeout.
    fn leave_step(&mut self, job_id: String, job_hash: &str, decline: Decline) {
        let signature = self.signing.sign(&decision_statement(&job_id, job_hash, Some(&decline)));
        let (kind, rule, reason) = decline_fields(Some(&decline));
        let reply = TaskReply {
            job_id: job_id.clone(),
            accept: false,
            decline: kind,
            rule,
            reason,
            job_hash: job_hash.to_string(),
            signature: signature.to_bytes().to_vec(),
            ..TaskReply::default()
        };
        self.leave(job_id, &decline);
        self.send(Body::Reply(reply));
    }

    /// An intersection starts: the party takes its side with the keys it prepared, its
    /// charge reserved first, under a session it has not used before.
    fn psi_start(&mut self, start: PsiStart) {
        let job_id = start.job_id.clone();
        let Some(JobState::Ready(accepted)) = self.jobs.remove(&job_id) else {
            tracing::warn!(party = %self.config.name, job = %job_id, "an intersection start for a job this party did not accept");
            return;
        };
        let mut accepted = *accepted;
        let charge = accepted.charge.take();
        let Some(psi) = accepted.psi.take() else {
            tracing::warn!(party = %self.config.name, job = %job_id, "an intersection start for another kind of job");
            return;
        };
        let peer = veil_protocol::PartyId(start.peer);
        if let Some(join) = &psi.join {
            if let Err(decline) = self.join_peer(join, peer) {
                let job_hash = accepted.job_hash.clone();
                self.leave_step(job_id, &job_hash, decline);
                return;
            }
        }
        // A join's group side meets each value party in turn: it keeps its keys for the next,
        // and notes the peer (the value side has done its one exchange).
        let kept = psi.join.as_ref().map(|join| {
            let mut kept = match join.input {
                JoinInput::Group(_) => psi.clone_keys(),
                _ => PsiKeys {
                    keys: veil_psi::KeySet::new(psi.keys.policy(), Vec::<String>::new())
                        .expect("an empty key set is valid"),
                    join: Some(JoinKeys { input: JoinInput::Spent, ..join.clone_shape() }),
                    ..psi.clone_keys()
                },
            };
            if let Some(j) = kept.join.as_mut() {
                j.peers.insert(peer.0);
            }
            kept
        });
        let PsiKeys { side, keys, case_fold, min_peer_keys, noise_variance, join, intersection } =
            psi;
        // An intersection given to its client: the server runs it only with a party its
        // policy names; the client keeps its keys to name its members at the end.
        if let (PsiSide::Server, Some(reveal_to)) = (side, &intersection) {
            let name =
                self.config.party_names.get(&peer.0).cloned().unwrap_or_else(|| peer.to_string());
            if !reveal_to.contains(&name) {
                let message = format!(
                    "the intersection would tell party {name:?} which keys this party's dataset holds; its policy names {} in reveal_membership_to",
                    if reveal_to.is_empty() {
                        "no party".to_string()
                    } else {
                        reveal_to.join(", ")
                    }
                );
                let job_hash = accepted.job_hash.clone();
                self.leave_step(
                    job_id,
                    &job_hash,
                    Decline::refused(Rule::RevealMembership, message),
                );
                return;
            }
        }
        let members_of = (side == PsiSide::Client && intersection.is_some()).then(|| keys.clone());
        let mode = if intersection.is_some() {
            veil_psi::Mode::IntersectionToClient
        } else {
            veil_psi::Mode::SizeOnly
        };
        let wanted = match side {
            PsiSide::Client => PsiRole::Client,
            PsiSide::Server => PsiRole::Server,
        };
        if start.role != wanted as i32 {
            let message = "the start names the other side of the intersection than this party's";
            self.leave(job_id, &Decline::Fault(message.into()));
            return;
        }
        let Ok(session) = <[u8; 32]>::try_from(start.session.as_slice()) else {
            tracing::warn!(party = %self.config.name, job = %job_id, "an intersection start without a 32-byte session");
            return;
        };
        match self.store.claim_session(&session) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(party = %self.config.name, job = %job_id, "an intersection reusing a session; leaving the job");
                return;
            }
            Err(e) => {
                tracing::error!(party = %self.config.name, error = %e, "cannot record the session; leaving the job");
                return;
            }
        }
        if !self.reserve(&job_id, charge.as_ref()) {
            return;
        }
        let policy = veil_psi::KeyPolicy { trim: true, case_fold };
        let params = veil_psi::PsiParams::new(veil_psi::Session(session), mode).with_policy(policy);
        let mut rng = (self.rng)();
        let count = keys.len() as u64;
        let machine = match (side, join) {
            (PsiSide::Client, None) => veil_psi::Client::new(&params, keys, &mut rng)
                .map(|c| Starting::Now(PsiMachine::Client(c, count))),
            (PsiSide::Server, None) => veil_psi::Server::new(&params, keys, &mut rng)
                .map(|s| Starting::Now(PsiMachine::Server(s, count))),
            (_, Some(JoinKeys { input, shape: (segment, groups), .. })) => {
                veil_psi::join::JoinParams::new(params, segment, groups).and_then(|p| match input {
                    JoinInput::Group(slots) => {
                        veil_psi::join::GroupSide::new(&p, keys, slots, &mut rng)
                            .map(|g| Starting::Now(PsiMachine::JoinGroup(Box::new(g), count)))
                    }
                    JoinInput::Value(vectors) => Ok(Starting::Encrypt(p, keys, vectors)),
                    JoinInput::Spent => {
                        Err(veil_psi::Error::InvalidParameters("the value side's exchange is done"))
                    }
                })
            }
        };
        let after = kept.map(|kept| {
            accepted.psi = Some(kept);
            Box::new(accepted)
        });
        if peer == self.config.id || self.config.roster.key(peer).is_none() {
            let message = format!("the start names {peer} as the other side of the intersection");
            self.leave(job_id, &Decline::Fault(message));
            return;
        }
        match machine {
            Ok(Starting::Now(side)) => {
                let exchange = PsiExchange {
                    side,
                    peer,
                    session,
                    min_peer_keys,
                    noise_variance,
                    after,
                    members_of,
                };
                self.jobs.insert(job_id.clone(), JobState::Psi(Box::new(exchange)));
                self.psi_flush(&job_id);
            }
            // A join's value side encrypts its vectors first, off the worker's loop; its first
            // message (its public key) goes out when they are ready, and the coordinator starts
            // the group side only then.
            Ok(Starting::Encrypt(params, keys, vectors)) => {
                let segment = params.segment();
                let pending =
                    PendingValue { params, keys, count, peer, session, min_peer_keys, after };
                self.jobs.insert(job_id.clone(), JobState::Encrypting(Box::new(pending)));
                let work = Encryption { job_id, segment, vectors };
                self.out.push_back(Action::Encrypt(Box::new(work)));
            }
            Err(e) => {
                self.leave(job_id, &Decline::Fault(format!("the intersection cannot start: {e}")))
            }
        }
    }

    /// A join's vectors, encrypted in the background, arrive: the value side starts its
    /// exchange (or leaves it, saying why).
    pub(crate) fn encrypted(&mut self, done: Encrypted) {
        let Encrypted { job_id, result } = done;
        if !matches!(self.jobs.get(&job_id), Some(JobState::Encrypting(_))) {
            return; // the job ended, or the connection was replaced, meanwhile
        }
        let Some(JobState::Encrypting(pending)) = self.jobs.remove(&job_id) else { return };
        let PendingValue { params, keys, count, peer, session, min_peer_keys, after } = *pending;
        let built = result.and_then(|encrypted| {
            veil_psi::join::ValueSide::with_encrypted(&params, keys, encrypted, &mut (self.rng)())
                .map_err(|e| e.to_string())
        });
        match built {
            Ok(value) => {
                let side = PsiMachine::JoinValue(Box::new(value), count);
                let exchange = PsiExchange {
                    side,
                    peer,
                    session,
                    min_peer_keys,
                    noise_variance: None,
                    after,
                    members_of: None,
                };
                self.jobs.insert(job_id.clone(), JobState::Psi(Box::new(exchange)));
                self.psi_flush(&job_id);
            }
            Err(e) => {
                self.jobs.insert(job_id.clone(), JobState::Idle);
                let decline =
                    Decline::Fault(format!("the join's vectors cannot be encrypted: {e}"));
                self.leave_exchange(job_id, decline);
            }
        }
    }

    /// What is wrong with a join's round, if anything. Its sum is the group side's share (the
    /// negated masks of every exchange it ran) plus the value parties' shares, so the round must
    /// be over exactly the group side and the value parties it exchanged with, every one of
    /// them must survive, and there must be as many value parties as any round needs parties
    /// (the collusion bound plus two, and this party's minimum): else the coordinator with one
    /// colluding party could isolate an honest value party's rows.
    fn join_round_problem(
        &self,
        join: &JoinKeys,
        start: &RoundStart,
        min_parties: usize,
    ) -> Option<String> {
        let parties: std::collections::BTreeSet<u32> = start.parties.iter().copied().collect();
        let needed = (self.config.max_corrupt + 2).max(min_parties);
        let values = parties.len().saturating_sub(1);
        if let JoinInput::Group(_) = join.input {
            let exchanged: std::collections::BTreeSet<u32> =
                join.peers.iter().copied().chain([self.config.id.0]).collect();
            if parties != exchanged {
                return Some(format!(
                    "the join's round is not over the {} value parties this party exchanged with",
                    join.peers.len()
                ));
            }
        } else if !join.peers.iter().all(|p| parties.contains(p)) {
            return Some("the join's round leaves out the party this party exchanged with".into());
        }
        if values < needed {
            return Some(format!(
                "the join's round combines {values} value parties; this party's data is combined with at least {needed}"
            ));
        }
        if (start.min_cohort as usize) < parties.len() {
            return Some(format!(
                "the join's round lets {} of its {} parties drop out; its sum needs every share",
                parties.len() - start.min_cohort as usize,
                parties.len()
            ));
        }
        None
    }

    /// Whether this party may run a join's exchange with `peer`: the group side once with each
    /// value party; the value side once in all, and only with a party its dataset's policy lets
    /// learn which of its keys it holds.
    fn join_peer(&self, join: &JoinKeys, peer: veil_protocol::PartyId) -> Result<(), Decline> {
        let name =
            self.config.party_names.get(&peer.0).cloned().unwrap_or_else(|| peer.to_string());
        match &join.input {
            JoinInput::Group(_) if join.peers.contains(&peer.0) => {
                Err(Decline::Fault(format!("the join's exchange with {name} already took place")))
            }
            JoinInput::Group(_) => Ok(()),
            JoinInput::Spent => {
                Err(Decline::Fault("this party's exchange for the join already took place".into()))
            }
            JoinInput::Value(_) if !join.reveal_to.contains(&name) => Err(Decline::refused(
                Rule::RevealMembership,
                format!(
                    "the exchange would tell party {name:?} which keys this party's dataset holds; its policy names {} in reveal_membership_to",
                    if join.reveal_to.is_empty() {
                        "no party".to_string()
                    } else {
                        join.reveal_to.join(", ")
                    }
                ),
            )),
            JoinInput::Value(_) => Ok(()),
        }
    }

    /// Leaves an intersection, telling the coordinator why in a signed decline (so the
    /// consumer reads the reason rather than a timeout) and logging it.
    fn leave_exchange(&mut self, job_id: String, decline: Decline) {
        let job_hash = self.accepted.get(&job_id).map(|(h, _)| h.clone()).unwrap_or_default();
        self.leave_step(job_id, &job_hash, decline);
    }

    /// A message of the other side of an intersection: taken only with the other side's
    /// signature, so the coordinator relaying it cannot have made it up.
    fn psi_message(&mut self, payload: RoundPayload) {
        let job_id = payload.job_id.clone();
        let Some(JobState::Psi(exchange)) = self.jobs.get_mut(&job_id) else { return };
        let signed = payload.message.len().checked_sub(64).and_then(|at| {
            let (message, signature) = payload.message.split_at(at);
            let key = self.config.roster.key(exchange.peer)?;
            let signature = ed25519_dalek::Signature::from_slice(signature).ok()?;
            let statement =
                psi_message_statement(&job_id, &exchange.session, exchange.peer.0, message);
            ed25519_dalek::Verifier::verify(key, &statement, &signature).ok().map(|()| message)
        });
        let Some(message) = signed else {
            tracing::warn!(party = %self.config.name, job = %job_id, "an intersection message not signed by the other side; leaving the job");
            self.jobs.insert(job_id.clone(), JobState::Idle);
            let decline = Decline::Fault(
                "left the intersection: a message not signed by the other side's party".into(),
            );
            self.leave_exchange(job_id, decline);
            return;
        };
        // The other side's set size comes with its hello: a set smaller than this party's
        // policy allows would make the intersection's size a test of a few of its keys.
        let peer_keys = match &exchange.side {
            PsiMachine::Client(..) => match veil_psi::ServerMessage::decode(message) {
                Ok(veil_psi::ServerMessage::Hello { count, .. }) => Some(count),
                _ => None,
            },
            PsiMachine::Server(..) => match veil_psi::ClientMessage::decode(message) {
                Ok(veil_psi::ClientMessage::Hello { count, .. }) => Some(count),
                _ => None,
            },
            PsiMachine::JoinGroup(..) => match veil_psi::join::ValueMessage::decode(message) {
                Ok(veil_psi::join::ValueMessage::Psi(veil_psi::ServerMessage::Hello {
                    count,
                    ..
                })) => Some(count),
                _ => None,
            },
            PsiMachine::JoinValue(..) => match veil_psi::join::GroupMessage::decode(message) {
                Ok(veil_psi::join::GroupMessage::Psi(veil_psi::ClientMessage::Hello {
                    count,
                    ..
                })) => Some(count),
                _ => None,
            },
        };
        if let Some(count) = peer_keys.filter(|c| *c > MAX_PEER_KEYS) {
            self.jobs.insert(job_id.clone(), JobState::Idle);
            let message = format!(
                "the other side of the intersection announces {count} keys; this party holds at most {MAX_PEER_KEYS} keys' replies"
            );
            self.leave_exchange(job_id, Decline::Fault(message));
            return;
        }
        if let (Some(count), Some(min)) = (peer_keys, exchange.min_peer_keys) {
            if count < min {
                self.jobs.insert(job_id.clone(), JobState::Idle);
                let message = format!(
                    "the other side of the intersection brings {count} keys; this dataset's policy requires at least {min} (min_join_keys)"
                );
                self.leave_exchange(job_id, Decline::refused(Rule::JoinSize, message));
                return;
            }
        }
        let handled = match &mut exchange.side {
            PsiMachine::Client(c, _) => veil_psi::ServerMessage::decode(message)
                .map_err(veil_psi::Error::from)
                .and_then(|m| c.handle_message(m)),
            PsiMachine::Server(s, _) => veil_psi::ClientMessage::decode(message)
                .map_err(veil_psi::Error::from)
                .and_then(|m| s.handle_message(m, &mut (self.rng)())),
            PsiMachine::JoinGroup(g, _) => veil_psi::join::ValueMessage::decode(message)
                .map_err(veil_psi::Error::from)
                .and_then(|m| g.handle_message(m, &mut (self.rng)())),
            PsiMachine::JoinValue(v, _) => veil_psi::join::GroupMessage::decode(message)
                .map_err(veil_psi::Error::from)
                .and_then(|m| v.handle_message(m, &mut (self.rng)())),
        };
        if let Err(e) = handled {
            tracing::warn!(party = %self.config.name, job = %job_id, error = %e, "intersection message rejected");
        }
        self.psi_flush(&job_id);
    }

    /// Sends what this party's side of an intersection has queued; a finished client reports
    /// the result, signed.
    fn psi_flush(&mut self, job_id: &str) {
        let Some(JobState::Psi(exchange)) = self.jobs.get_mut(job_id) else { return };
        // One message at a time (each batch is blinded when it is polled): the worker sends it
        // and comes back for the next (`Action::Continue`), serving other messages between, so
        // a party holds one batch of a long stream, not the stream.
        let session = exchange.session;
        let (outgoing, status) = match &mut exchange.side {
            PsiMachine::Client(c, _) => (c.poll_transmit().map(|m| m.encode()), c.status()),
            PsiMachine::Server(s, _) => (s.poll_transmit().map(|m| m.encode()), s.status()),
            PsiMachine::JoinGroup(g, _) => (g.poll_transmit().map(|m| m.encode()), g.status()),
            PsiMachine::JoinValue(v, _) => (v.poll_transmit().map(|m| m.encode()), v.status()),
        };
        // A finished side's counts: (intersection, client keys, server keys, its role).
        let result = match (&exchange.side, &status) {
            (PsiMachine::Client(c, keys), veil_psi::Status::Finished) => c
                .output()
                .map(|o| (o.intersection_size(), *keys, o.server_count(), PsiRole::Client)),
            (PsiMachine::Server(s, keys), veil_psi::Status::Finished) => {
                s.output().map(|o| (0, o.client_count(), *keys, PsiRole::Server))
            }
            // A join's group side keeps the intersection's size to itself: the coordinator
            // learns the per-group answer, not each value party's overlap.
            (PsiMachine::JoinGroup(g, keys), veil_psi::Status::Finished) => {
                g.output().map(|o| (0, *keys, o.peer_count, PsiRole::Client))
            }
            (PsiMachine::JoinValue(v, keys), veil_psi::Status::Finished) => {
                v.output().map(|o| (0, o.peer_count, *keys, PsiRole::Server))
            }
            _ => None,
        };
        // An intersection given to its client: its own keys that the server holds.
        let members = match (&exchange.side, &status, &exchange.members_of) {
            (PsiMachine::Client(c, _), veil_psi::Status::Finished, Some(keys)) => {
                c.output().and_then(|o| o.members()).map(|m| {
                    let found: Vec<String> =
                        m.iter().filter_map(|p| keys.get(p).map(str::to_string)).collect();
                    Zeroizing::new(found)
                })
            }
            _ => None,
        };
        // A join's share of the per-group sums, for the round that adds them up.
        let share = match (&exchange.side, &status) {
            (PsiMachine::JoinGroup(g, _), veil_psi::Status::Finished) => {
                g.output().map(|o| o.share.clone())
            }
            (PsiMachine::JoinValue(v, _), veil_psi::Status::Finished) => {
                v.output().map(|o| o.share.clone())
            }
            _ => None,
        };
        let (peer, me) = (exchange.peer.0, self.config.id.0);
        let noise_variance = exchange.noise_variance;
        if let Some(mut message) = outgoing {
            let statement = psi_message_statement(job_id, &session, self.config.id.0, &message);
            message.extend_from_slice(&self.signing.sign(&statement).to_bytes());
            let (head_seq, head_hash, head_signature) = self.head_fields(job_id);
            let payload = RoundPayload {
                job_id: job_id.to_string(),
                message,
                head_seq,
                head_hash,
                head_signature,
            };
            self.send(Body::Round(payload));
            // There may be more: the worker asks again once this one is sent.
            self.out.push_back(Action::Continue(job_id.to_string()));
            return;
        }
        match status {
            veil_psi::Status::Finished => {
                let after = match self.jobs.insert(job_id.to_string(), JobState::Idle) {
                    Some(JobState::Psi(exchange)) => exchange.after,
                    _ => None,
                };
                // A join goes back to waiting for its round, with its share added to what it
                // brings (the group side's shares from each value party add up).
                if let (Some(mut accepted), Some(share)) = (after, share) {
                    let share = Zeroizing::new(share);
                    if accepted.vector.is_empty() {
                        accepted.vector = share;
                    } else {
                        for (v, s) in accepted.vector.iter_mut().zip(share.iter()) {
                            *v = v.wrapping_add(*s);
                        }
                    }
                    self.jobs.insert(job_id.to_string(), JobState::Ready(accepted));
                }
                if let Some(keys) = members {
                    let keep = Intersection { job_id: job_id.to_string(), keys };
                    self.out.push_back(Action::KeepIntersection(Box::new(keep)));
                }
                if let Some((mut size, client_keys, server_keys, role)) = result {
                    // A private release: the client noises the size before it signs and
                    // reports it, with noise from the OS that no one else can predict.
                    if let (PsiRole::Client, Some(variance)) = (role, noise_variance) {
                        let mut seed = [0u8; 32];
                        (self.rng)().fill_bytes(&mut seed);
                        let mut noise_rng = veil_protocol::dp::NoiseRng::from_seed(seed);
                        let noise = veil_protocol::dp::discrete_gaussian(&mut noise_rng, variance);
                        size = size.saturating_add_signed(noise);
                    }
                    let job_hash =
                        self.accepted.get(job_id).map(|(h, _)| h.clone()).unwrap_or_default();
                    let (client, server) =
                        if role == PsiRole::Client { (me, peer) } else { (peer, me) };
                    let outcome = PsiOutcome {
                        job_id,
                        job_hash: &job_hash,
                        session: &session,
                        client,
                        server,
                        intersection: size,
                        client_keys,
                        server_keys,
                    };
                    let signature = self.signing.sign(&outcome.statement(me));
                    let result = PsiResult {
                        job_id: job_id.to_string(),
                        intersection_size: size,
                        client_keys,
                        server_keys,
                        signature: signature.to_bytes().to_vec(),
                        role: role as i32,
                    };
                    self.send(Body::PsiResult(result));
                }
            }
            veil_psi::Status::Aborted(e) => {
                self.jobs.insert(job_id.to_string(), JobState::Idle);
                let decline = Decline::Fault(format!("left the intersection: {e}"));
                self.leave_exchange(job_id.to_string(), decline);
            }
            veil_psi::Status::InProgress(_) => {}
        }
    }

    fn start_round(&mut self, start: RoundStart) -> bool {
        let job_id = start.job_id.clone();
        let training = self.training.get(&job_id).cloned();
        let (vector, min_parties, charge, keys, job_hash) = if let Some(slot) = training {
            if matches!(self.jobs.get(&job_id), Some(JobState::Preparing { .. }) | None) {
                tracing::warn!(party = %self.config.name, job = %job_id, "training step before the job was accepted");
                return false;
            }
            self.jobs.insert(job_id.clone(), JobState::Idle);
            // Local training runs in the background; the stream keeps being served meanwhile, and
            // the party joins the round when its vector is ready (`trained`).
            match self.check_step(&slot, &start) {
                Ok((step, standardizer)) => {
                    // A secure round is joined at once: keys are advertised and shared, and the
                    // mask expanded, while the party trains; the input follows.
                    if !start.plain
                        && self.join_round(
                            start.clone(),
                            Joining {
                                vector: None,
                                min_parties: slot.min_parties,
                                charge: None,
                                keys: None,
                                job_hash: slot.job.job_hash.clone(),
                            },
                        )
                    {
                        return true;
                    }
                    let job = slot.job.clone();
                    self.out.push_back(Action::Train(Box::new(StepWork {
                        start,
                        job_id,
                        job,
                        step,
                        standardizer,
                    })));
                }
                Err(decline) => {
                    let hash = slot.job.job_hash.clone();
                    self.leave_step(job_id, &hash, decline);
                }
            }
            return false;
        } else {
            let Some(JobState::Ready(accepted)) = self.jobs.remove(&job_id) else {
                tracing::warn!(party = %self.config.name, job = %job_id, "round start for a job this party did not accept");
                return false;
            };
            let mut accepted = accepted;
            if let Some(join) = accepted.psi.as_ref().and_then(|p| p.join.as_ref()) {
                if let Some(message) = self.join_round_problem(join, &start, accepted.min_parties) {
                    let job_hash = accepted.job_hash.clone();
                    self.leave_step(job_id, &job_hash, Decline::refused(Rule::Cohort, message));
                    return false;
                }
                // A private join: this party's share of the noise, added once, to what its
                // exchanges left it.
                if let Some(noise) = join.noise.clone() {
                    if accepted.vector.len() != noise.len() {
                        tracing::warn!(party = %self.config.name, job = %job_id, "a join's share and its noise differ in length; leaving the job");
                        return false;
                    }
                    for (v, n) in accepted.vector.iter_mut().zip(noise.iter()) {
                        *v = v.wrapping_add(*n);
                    }
                }
            }
            let Accepted { vector, min_parties, charge, keys, job_hash, .. } = *accepted;
            (vector, min_parties, charge, keys, job_hash)
        };
        let joining = Joining { vector: Some(vector), min_parties, charge, keys, job_hash };
        self.join_round(start, joining)
    }

    /// A training step's vector, computed in the background, arrives: the party joins the round
    /// (or, if training failed, leaves the step saying why).
    pub(crate) fn trained(&mut self, trained: Trained) -> bool {
        let Trained { start, job_id, computed } = trained;
        // The job may have ended, or the connection been replaced, while the party trained.
        let Some(slot) = self.training.get(&job_id).cloned() else { return false };
        match computed {
            // The step's claim reserved the job's charge with the first step.
            Ok(v) if start.plain => {
                let joining = Joining {
                    vector: Some(Zeroizing::new(v)),
                    min_parties: slot.min_parties,
                    charge: None,
                    keys: None,
                    job_hash: slot.job.job_hash.clone(),
                };
                self.join_round(start, joining)
            }
            Ok(v) => {
                // The round was joined at its start; it may have ended since (the party left it,
                // or the coordinator gave up on it).
                let Some(JobState::Round(party)) = self.jobs.get_mut(&job_id) else {
                    return false;
                };
                if let Err(e) = party.provide_input(v) {
                    tracing::warn!(party = %self.config.name, job = %job_id, error = %e, "the round took no input");
                    return false;
                }
                self.flush(&job_id)
            }
            Err(decline) => {
                let hash = slot.job.job_hash.clone();
                self.leave_step(job_id, &hash, decline);
                false
            }
        }
    }

    /// The audit log head a round message carries (after the job's charge, which is reserved
    /// before any round message leaves).
    fn head_fields(&self, job_id: &str) -> (u64, String, String) {
        match self.store.audit_head() {
            Ok(Some(h)) => {
                let h = h.signed(job_id, &self.signing);
                (h.seq, h.hash, h.signature.unwrap_or_default())
            }
            Ok(None) => (0, String::new(), String::new()),
            Err(e) => {
                tracing::error!(party = %self.config.name, error = %e, "cannot read the audit log's head");
                (0, String::new(), String::new())
            }
        }
    }

    /// Reserves a release's charge, atomically against every other job, before anything derived
    /// from the data leaves; it is never refunded. `false` when the party leaves the job instead.
    fn reserve(&mut self, job_id: &str, charge: Option<&Reservation>) -> bool {
        let Some(charge) = charge else { return true };
        match self.store.reserve(charge, self.now()) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.leave(job_id.to_string(), &Decline::refused(Rule::Budget, e.to_string()));
                false
            }
            Err(e) => {
                tracing::error!(party = %self.config.name, error = %e, "cannot reserve the budget; leaving the job");
                false
            }
        }
    }

    /// Joins a round with the party's vector: a plain round sends it as it is (benchmark parties
    /// only); a secure round checks the session, the cohort and the parameters, reserves the
    /// charge, and starts the protocol's party state machine.
    fn join_round(&mut self, start: RoundStart, joining: Joining) -> bool {
        let Joining { vector, min_parties, charge, keys, job_hash } = joining;
        let job_id = start.job_id.clone();
        if vector.as_ref().is_some_and(|v| start.vector_len as usize != v.len()) {
            tracing::warn!(party = %self.config.name, job = %job_id, "round start with the wrong vector length; leaving the job");
            return false;
        }
        let minimum = min_parties.max(start.min_cohort as usize);
        if start.parties.len() < minimum {
            let message = format!(
                "the round has {} parties; this party's data is combined with at least {minimum}",
                start.parties.len()
            );
            self.leave_step(job_id, &job_hash, Decline::refused(Rule::Cohort, message));
            return false;
        }
        if start.plain {
            let Some(vector) = vector else {
                tracing::warn!(party = %self.config.name, job = %job_id, "internal: a plain round without its vector");
                return false;
            };
            // A release of this party's data alone, which its own configuration and the job both
            // allow: a secure round of one would reveal the same vector, so it goes as it is,
            // charged first like any release.
            let alone = start.parties == [self.config.id.0]
                && min_parties <= 1
                && self.config.min_cohort <= 1;
            if !self.options.dangerous_benchmark && !alone {
                tracing::warn!(party = %self.config.name, job = %job_id, "refusing a plain round");
                return false;
            }
            if alone && !self.reserve(&job_id, charge.as_ref()) {
                return false;
            }
            let mut bytes = Vec::with_capacity(vector.len() * 8);
            for x in vector.iter() {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            let (head_seq, head_hash, head_signature) = self.head_fields(&job_id);
            let payload = RoundPayload {
                job_id: job_id.clone(),
                message: bytes,
                head_seq,
                head_hash,
                head_signature,
            };
            self.send(Body::Round(payload));
            self.jobs.insert(job_id, JobState::Idle);
            return false;
        }
        let Ok(session) = <[u8; 32]>::try_from(start.session.as_slice()) else {
            tracing::warn!(party = %self.config.name, job = %job_id, "round start without a 32-byte session; leaving the job");
            return false;
        };
        let claimed = match &keys {
            // Claimed with the acceptance.
            Some(k) if k.session().0 == session => Ok(true),
            Some(_) => {
                let message = "left the round: its start names another session than the offer";
                self.leave(job_id, &Decline::Fault(message.into()));
                return false;
            }
            None => self.store.claim_session(&session),
        };
        match claimed {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(party = %self.config.name, job = %job_id, "round start reusing a session; leaving the job");
                return false;
            }
            Err(e) => {
                tracing::error!(party = %self.config.name, error = %e, "cannot record the session; leaving the job");
                return false;
            }
        }
        // The round's own minimum cohort and collusion bound must meet this party's: every party
        // builds the round's digest from the same announced numbers, so it refuses a weaker round
        // rather than raising the numbers for itself alone.
        if (start.min_cohort as usize) < minimum {
            let message = format!(
                "the round releases sums over {} parties; this party's data is combined with at least {minimum}",
                start.min_cohort
            );
            self.leave_step(job_id, &job_hash, Decline::refused(Rule::Cohort, message));
            return false;
        }
        if (start.max_corrupt as usize) < self.config.max_corrupt {
            let message = format!(
                "the round tolerates {} colluding parties; this party requires at least {}",
                start.max_corrupt, self.config.max_corrupt
            );
            self.leave_step(job_id, &job_hash, Decline::refused(Rule::Collusion, message));
            return false;
        }
        let mut context = [0u8; 32];
        if hex::decode_to_slice(&job_hash, &mut context).is_err() {
            tracing::warn!(party = %self.config.name, job = %job_id, "internal: a job hash that is not 32 bytes of hex; leaving the job");
            return false;
        }
        let params = match veil_proto::round::config(&start, context).map(RoundConfig::validate) {
            Ok(Ok(p)) => Arc::new(p),
            Ok(Err(e)) => {
                tracing::warn!(party = %self.config.name, job = %job_id, error = %e, "unsafe round parameters; leaving the job");
                return false;
            }
            Err(e) => {
                tracing::warn!(party = %self.config.name, job = %job_id, error = %e, "an unreadable round start; leaving the job");
                return false;
            }
        };
        if !self.reserve(&job_id, charge.as_ref()) {
            return false;
        }
        let identity = IdentityKey::from_seed(&self.config.identity_seed);
        let roster = self.config.roster.clone();
        let rng = &mut (self.rng)();
        // Moved, not copied: the party state machine keeps (and zeroizes) the one vector.
        let input = vector.map(|mut v| std::mem::take(&mut *v));
        let joined = match (keys, input) {
            // The keys went out with the acceptance: the party waits for its neighbours' keys.
            (Some(keys), input) => Party::with_keys(params, identity, roster, input, keys),
            (None, Some(input)) => Party::new(params, self.config.id, identity, roster, input, rng),
            // The input follows with `provide_input` once local training is done.
            (None, None) => Party::awaiting_input(params, self.config.id, identity, roster, rng),
        };
        let party = match joined {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(party = %self.config.name, job = %job_id, error = %e, "cannot join the round");
                return false;
            }
        };
        self.jobs.insert(job_id.clone(), JobState::Round(Box::new(party)));
        self.flush(&job_id)
    }

    fn round_message(&mut self, payload: RoundPayload) -> bool {
        if matches!(self.jobs.get(&payload.job_id), Some(JobState::Psi(_))) {
            self.psi_message(payload);
            return false;
        }
        let Some(JobState::Round(party)) = self.jobs.get_mut(&payload.job_id) else {
            return false;
        };
        let result = CoordinatorMessage::decode(&payload.message)
            .map_err(veil_protocol::Error::from)
            .and_then(|m| party.handle_message(m, &mut (self.rng)()));
        if let Err(e) = result {
            tracing::warn!(party = %self.config.name, job = %payload.job_id, error = %e, "round message rejected");
        }
        if let PartyStatus::Aborted(e) = party.status() {
            tracing::warn!(party = %self.config.name, job = %payload.job_id, error = %e, "left the round");
            let decline = match e {
                veil_protocol::Error::CohortTooSmall { size, minimum } => Decline::refused(
                    Rule::Cohort,
                    format!(
                        "{size} parties remain in the round; this party's data is combined with at least {minimum}"
                    ),
                ),
                other => Decline::Fault(format!("left the round: {other}")),
            };
            self.jobs.insert(payload.job_id.clone(), JobState::Idle);
            // A training job goes on after this step: tell the coordinator why this party left.
            if let Some(slot) = self.training.get(&payload.job_id) {
                let hash = slot.job.job_hash.clone();
                self.leave_step(payload.job_id, &hash, decline);
            }
            return false;
        }
        self.flush(&payload.job_id)
    }

    /// Sends what the party state machine has queued; applies injected faults.
    fn flush(&mut self, job_id: &str) -> bool {
        let Some(JobState::Round(party)) = self.jobs.get_mut(job_id) else {
            return false;
        };
        let mut outgoing = Vec::new();
        while let Some(m) = party.poll_transmit() {
            outgoing.push(m);
        }
        for m in outgoing {
            let stage = m.stage();
            let (head_seq, head_hash, head_signature) = self.head_fields(job_id);
            let payload = RoundPayload {
                job_id: job_id.to_string(),
                message: m.encode(),
                head_seq,
                head_hash,
                head_signature,
            };
            self.send(Body::Round(payload));
            if let Some(exit) = self.injected(job_id, stage) {
                return exit;
            }
        }
        false
    }

    /// Applies an injected fault after the message of `stage` went out: `Some(true)` to exit,
    /// `Some(false)` when the party went silent in the job, `None` to go on.
    fn injected(&mut self, job_id: &str, stage: Stage) -> Option<bool> {
        match self.options.fault {
            Some(Fault::ExitAfter(s)) if s == stage => {
                // The worker lets the transport deliver what was just sent, as a crashed process's
                // kernel would, then vanishes.
                tracing::warn!(party = %self.config.name, job = %job_id, %stage, "injected fault: exiting");
                self.out.push_back(Action::Exit);
                Some(true)
            }
            Some(Fault::StallAfter(s)) if s == stage => {
                tracing::warn!(party = %self.config.name, job = %job_id, %stage, "injected fault: going silent");
                self.jobs.insert(job_id.to_string(), JobState::Idle);
                Some(false)
            }
            _ => None,
        }
    }

    /// Checks a training step against the accepted job and claims it in the store (reserving the
    /// job's charge at its first step); returns the step and the standardisation to train with,
    /// or the refusing rule and the reason.
    fn check_step(
        &self,
        slot: &TrainingSlot,
        start: &RoundStart,
    ) -> Result<(Step, Option<Standardizer>), Decline> {
        let job = &slot.job;
        let spec = &job.spec;
        let kind = |m: String| Decline::Fault(format!("training step refused: {m}"));
        let step = match veil_proto::round::step(start) {
            Ok(Some(step)) => step,
            Ok(None) => return Err(kind("the round start names no step of the job".into())),
            Err(e) => return Err(kind(e.to_string())),
        };
        let rounds = spec.rounds_to_run().map_err(|e| kind(e.to_string()))?;
        match step {
            Step::Moments if !spec.standardize || spec.standardizes_by_bounds() => {
                return Err(kind("the job computes no standardisation statistics".into()));
            }
            Step::Train { round } if round >= rounds => {
                return Err(kind(format!("the job has {rounds} rounds, not {}", round + 1)));
            }
            Step::Evaluate if !spec.evaluates() => {
                return Err(kind("the job releases no evaluation".into()));
            }
            _ => {}
        }
        if start.plain != spec.plain {
            return Err(kind("the round's masking differs from the job's".into()));
        }
        let want = spec.vector_len(step).map_err(|e| kind(e.to_string()))?;
        if start.vector_len as usize != want {
            return Err(kind(format!(
                "a vector of {} elements, the job's {step} has {want}",
                start.vector_len
            )));
        }
        let parameters = spec.parameters().map_err(|e| kind(e.to_string()))?;
        if step != Step::Moments
            && (start.parameters.len() != parameters
                || start.parameters.iter().any(|p| !p.is_finite()))
        {
            return Err(kind(format!(
                "the global model has {} parameters or non-finite ones; the job's model has {parameters}",
                start.parameters.len()
            )));
        }
        let standardizer = if spec.standardize && step != Step::Moments {
            let s = Standardizer { mean: start.mean.clone(), scale: start.scale.clone() };
            let features = spec.inputs().len();
            if s.mean.len() != features
                || s.scale.len() != features
                || s.mean.iter().any(|m| !m.is_finite())
                || s.scale.iter().any(|v| !(v.is_finite() && *v > 0.0))
            {
                return Err(kind("the standardisation does not fit the job's features".into()));
            }
            if job.declared.as_ref().is_some_and(|d| *d != s) {
                return Err(kind(
                    "the standardisation differs from the one this party's declared bounds give"
                        .into(),
                ));
            }
            Some(s)
        } else {
            None
        };
        let minimum = slot.min_parties.max(start.min_cohort as usize);
        if start.parties.len() < minimum {
            return Err(Decline::refused(
                Rule::Cohort,
                format!(
                    "the round has {} parties; this party's data is combined with at least {minimum}",
                    start.parties.len()
                ),
            ));
        }
        match self.store.claim_step(&slot.charge, &job.job_hash, step.code(), self.now()) {
            Ok(Ok(())) => {}
            Ok(Err(decline)) => return Err(decline),
            Err(e) => return Err(Decline::Fault(format!("cannot record the step: {e}"))),
        }
        Ok((step, standardizer))
    }
}

/// A decline's wire fields: its kind, its rule (for a policy refusal) and its message.
fn decline_fields(decline: Option<&Decline>) -> (i32, String, String) {
    let Some(d) = decline else {
        return (WireDecline::Unspecified as i32, String::new(), String::new());
    };
    let kind = match d.kind() {
        DeclineKind::Refused => WireDecline::Refused,
        DeclineKind::DataUnavailable => WireDecline::DataUnavailable,
        DeclineKind::Fault => WireDecline::Fault,
    };
    (kind as i32, d.rule().map_or("", Rule::name).to_string(), d.message().to_string())
}

/// Today in UTC as `YYYY-MM-DD` (civil-from-days, H. Hinnant's algorithm).
fn today(now_ms: i64) -> String {
    let days = now_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl JobRecords for crate::store::PartyStore {
    fn accept(
        &self,
        events: Vec<Event>,
        session: Option<&[u8; 32]>,
        now_ms: i64,
    ) -> Result<bool, String> {
        crate::store::PartyStore::accept(self, events, session, now_ms).map_err(|e| e.to_string())
    }

    fn reserve(
        &self,
        charge: &Reservation,
        now_ms: i64,
    ) -> Result<Result<(), BudgetError>, String> {
        self.reserve_and_log(charge, now_ms).map_err(|e| e.to_string())
    }

    fn claim_session(&self, session: &[u8; 32]) -> Result<bool, String> {
        crate::store::PartyStore::claim_session(self, session).map_err(|e| e.to_string())
    }

    fn claim_step(
        &self,
        charge: &Reservation,
        job_hash: &str,
        step: u32,
        now_ms: i64,
    ) -> Result<Result<(), Decline>, String> {
        self.claim_training_step(charge, job_hash, step, now_ms).map_err(|e| e.to_string())
    }

    fn audit(&self, event: Event, now_ms: i64) -> Result<(), String> {
        crate::store::PartyStore::audit(self, event, now_ms).map(|_| ()).map_err(|e| e.to_string())
    }

    fn audit_head(&self) -> Result<Option<Head>, String> {
        crate::store::PartyStore::audit_head(self).map_err(|e| e.to_string())
    }

    fn put_receipt(&self, receipt: &Receipt) -> Result<(), String> {
        crate::store::PartyStore::put_receipt(self, receipt).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use rand::SeedableRng;
    use veil_analytics::Job;
    use veil_governance::budget::Spent;
    use veil_proto::submission::new_job_id;
    use veil_proto::v1::PlannedJob;

    use super::*;
    use crate::testing::{CELLS, analyst, config};

    /// The party's records, in memory.
    #[derive(Default)]
    struct Book {
        events: Mutex<Vec<Event>>,
        sessions: Mutex<Vec<[u8; 32]>>,
        charges: Mutex<Vec<Reservation>>,
    }

    impl Records for Book {
        fn uses(&self, _: &str) -> Result<u64, String> {
            Ok(0)
        }
        fn spent(&self, _: &str, _: &str) -> Result<Spent, String> {
            Ok(Spent::default())
        }
        fn training_progress(&self, _: &str) -> Result<Option<(String, i64)>, String> {
            Ok(None)
        }
        fn charged_consumer(&self, _: &str) -> Result<Option<String>, String> {
            Ok(None)
        }
    }

    impl JobRecords for Book {
        fn accept(
            &self,
            events: Vec<Event>,
            session: Option<&[u8; 32]>,
            _: i64,
        ) -> Result<bool, String> {
            if let Some(s) = session {
                if !self.claim_session(s)? {
                    return Ok(false);
                }
            }
            self.events.lock().unwrap().extend(events);
            Ok(true)
        }
        fn reserve(&self, charge: &Reservation, _: i64) -> Result<Result<(), BudgetError>, String> {
            self.charges.lock().unwrap().push(charge.clone());
            Ok(Ok(()))
        }
        fn claim_session(&self, session: &[u8; 32]) -> Result<bool, String> {
            let mut sessions = self.sessions.lock().unwrap();
            if sessions.contains(session) {
                return Ok(false);
            }
            sessions.push(*session);
            Ok(true)
        }
        fn claim_step(
            &self,
            _: &Reservation,
            _: &str,
            _: u32,
            _: i64,
        ) -> Result<Result<(), Decline>, String> {
            Ok(Ok(()))
        }
        fn audit(&self, event: Event, _: i64) -> Result<(), String> {
            self.events.lock().unwrap().push(event);
            Ok(())
        }
        fn audit_head(&self) -> Result<Option<Head>, String> {
            Ok(None)
        }
        fn put_receipt(&self, _: &Receipt) -> Result<(), String> {
            Ok(())
        }
    }

    fn machine(min_cohort: usize, options: WorkerOptions) -> (PartyJobs, Arc<Book>) {
        let book = Arc::new(Book::default());
        // The roster every member holds: this party's identity key and two others.
        let mut roster = veil_protocol::Roster::new();
        for (id, seed) in [(0u32, 1u8), (1, 2), (2, 3)] {
            let key = SigningKey::from_bytes(&[seed; 32]).verifying_key();
            roster.insert(veil_protocol::PartyId(id), key);
        }
        let config = PartyConfig { min_cohort, roster: Arc::new(roster), ..config(CELLS) };
        let rng = || rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let jobs = PartyJobs::new(Arc::new(config), options, book.clone(), rng, || 1);
        (jobs, book)
    }

    fn offered(spec: &str, session: Vec<u8>) -> (String, Outbound) {
        let job = Job::parse(spec).unwrap();
        let job_id = new_job_id();
        let planned = PlannedJob {
            spec_json: job.canonical_json(),
            job_hash: job.hash(),
            purpose: job.purpose().into(),
        };
        let offer = TaskOffer {
            job_id: job_id.clone(),
            spec_json: planned.spec_json.clone(),
            consumer: "analyst".into(),
            consumer_signature: analyst().sign(&job_id, &planned),
            session,
            ..TaskOffer::default()
        };
        (job_id, Outbound::Offer(offer))
    }

    fn actions(jobs: &mut PartyJobs) -> Vec<Action> {
        std::iter::from_fn(|| jobs.poll_action()).collect()
    }

    fn reply(action: &Action) -> &TaskReply {
        match action {
            Action::Send(body) => match body.as_ref() {
                Body::Reply(r) => r,
                _ => panic!("expected a reply"),
            },
            _ => panic!("expected a reply"),
        }
    }

    fn secure_start(job_id: &str, session: [u8; 32], parties: Vec<u32>, dim: u32) -> Outbound {
        Outbound::Start(RoundStart {
            job_id: job_id.into(),
            session: session.to_vec(),
            threshold: 3,
            neighbours: parties.len() as u32 - 1,
            min_cohort: 2,
            max_corrupt: 1,
            vector_len: dim,
            parties,
            ..RoundStart::default()
        })
    }

    const SYNTHETIC: &str = "kind = \"synthetic\"\ndim = 4\n";

    fn benchmark(fault: Option<Fault>) -> WorkerOptions {
        WorkerOptions { dangerous_benchmark: true, fault }
    }

    #[test]
    fn an_accepted_offer_carries_round_keys_and_its_round_start_joins() {
        let (mut jobs, book) = machine(2, benchmark(None));
        let (job_id, offer) = offered(SYNTHETIC, vec![5; 32]);
        jobs.handle(offer);
        let out = actions(&mut jobs);
        assert_eq!(out.len(), 1);
        let r = reply(&out[0]);
        assert!(r.accept && !r.advertise.is_empty(), "{}", r.reason);
        assert!(matches!(book.events.lock().unwrap()[1], Event::JobAccepted { .. }));
        // The keys went out with the acceptance: joining sends nothing until the neighbours'
        // keys arrive, and the session is spent.
        jobs.handle(secure_start(&job_id, [5; 32], vec![0, 1, 2], 4));
        assert!(actions(&mut jobs).is_empty());
        assert!(matches!(jobs.jobs.get(&job_id), Some(JobState::Round(_))));
        let (again, offer) = offered(SYNTHETIC, vec![5; 32]);
        jobs.handle(offer);
        let out = actions(&mut jobs);
        assert!(!reply(&out[0]).accept, "a second job on a spent session");
        assert!(!jobs.jobs.contains_key(&again));
    }

    #[test]
    fn a_column_job_is_prepared_in_the_background_and_a_data_problem_is_declined_as_such() {
        let (mut jobs, book) = machine(2, WorkerOptions::default());
        let spec = "dataset = \"cells\"\npurpose = \"research\"\n[[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n";
        let (job_id, offer) = offered(spec, vec![6; 32]);
        jobs.handle(offer);
        let out = actions(&mut jobs);
        let Action::Prepare(p) = &out[0] else { panic!("expected background work") };
        assert!(matches!(p.work, Work::Columns { .. }));
        let decline = Decline::DataUnavailable("dataset \"cells\" cannot be read".into());
        let job_hash = p.job_hash.clone();
        jobs.prepared(Prepared { job_id: job_id.clone(), job_hash, result: Err(decline) });
        let out = actions(&mut jobs);
        let r = reply(&out[0]);
        assert!(!r.accept);
        assert_eq!(r.decline, WireDecline::DataUnavailable as i32);
        let events = book.events.lock().unwrap();
        assert!(matches!(&events[0], Event::JobRefused { rule, .. } if rule == "data-unavailable"));
        assert!(!jobs.jobs.contains_key(&job_id));
    }

    #[test]
    fn a_round_below_the_partys_cohort_is_left_with_the_rule_logged_and_only_a_signed_refusal_sent()
    {
        let (mut jobs, book) = machine(3, benchmark(None));
        let (job_id, offer) = offered(SYNTHETIC, Vec::new());
        jobs.handle(offer);
        assert!(reply(&actions(&mut jobs)[0]).accept);
        jobs.handle(secure_start(&job_id, [8; 32], vec![0, 1], 4));
        // Nothing of the data: the refusal alone, with its rule, for the consumer to read.
        let out = actions(&mut jobs);
        assert_eq!(out.len(), 1);
        let refusal = reply(&out[0]);
        assert!(!refusal.accept);
        assert_eq!(refusal.rule, "cohort");
        let events = book.events.lock().unwrap();
        assert!(matches!(events.last(), Some(Event::JobRefused { rule, .. }) if rule == "cohort"));
        assert!(book.charges.lock().unwrap().is_empty());
    }

    #[test]
    fn a_round_start_for_a_job_never_accepted_is_ignored() {
        let (mut jobs, book) = machine(2, benchmark(None));
        jobs.handle(secure_start(&new_job_id(), [9; 32], vec![0, 1, 2], 4));
        assert!(actions(&mut jobs).is_empty());
        assert!(book.sessions.lock().unwrap().is_empty());
    }

    #[test]
    fn injected_faults_stop_the_worker_or_silence_the_job_after_their_stage() {
        let (mut jobs, _) = machine(2, benchmark(Some(Fault::ExitAfter(Stage::AdvertiseKeys))));
        let (_, offer) = offered(SYNTHETIC, vec![4; 32]);
        jobs.handle(offer);
        let out = actions(&mut jobs);
        assert!(matches!(out.as_slice(), [Action::Send(_), Action::Exit]));
        assert!(!reply(&out[0]).advertise.is_empty());

        let (mut jobs, _) = machine(2, benchmark(Some(Fault::StallAfter(Stage::AdvertiseKeys))));
        let (job_id, offer) = offered(SYNTHETIC, vec![4; 32]);
        jobs.handle(offer);
        assert_eq!(actions(&mut jobs).len(), 1);
        assert!(matches!(jobs.jobs.get(&job_id), Some(JobState::Idle)));
        jobs.handle(secure_start(&job_id, [4; 32], vec![0, 1, 2], 4));
        assert!(actions(&mut jobs).is_empty(), "a silent party stays silent");
    }

    /// The client side of an intersection, admitted and its keys prepared.
    fn admitted_psi_client() -> (PartyJobs, Arc<Book>, String) {
        let datasets = "[[datasets]]\nname = \"left\"\npath = \"left.csv\"\ncolumns = { id = \"string\" }\n\
                        [datasets.policy]\njoin_keys = [\"id\"]\n";
        let (mut jobs, book) = machine(2, WorkerOptions::default());
        let datasets = config(datasets).datasets;
        jobs.config = Arc::new(PartyConfig { datasets, ..(*jobs.config).clone() });
        let spec = "kind = \"psi\"\nclient = { dataset = \"left\", key = \"id\" }\n\
                    server = { dataset = \"right\", key = \"id\" }\n";
        let (job_id, offer) = offered(spec, Vec::new());
        jobs.handle(offer);
        let Some(Action::Prepare(p)) = jobs.poll_action() else { panic!("expected key loading") };
        let keys = veil_psi::KeySet::new(veil_psi::KeyPolicy::default(), ["a", "b", "c"]).unwrap();
        let psi = PsiKeys {
            side: PsiSide::Client,
            keys,
            case_fold: false,
            min_peer_keys: None,
            noise_variance: None,
            join: None,
            intersection: None,
        };
        let p = *p;
        let accepted = Accepted { psi: Some(psi), ..p.accepted };
        jobs.prepared(Prepared {
            job_id: job_id.clone(),
            job_hash: p.job_hash,
            result: Ok(accepted),
        });
        assert!(reply(&actions(&mut jobs)[0]).accept);
        (jobs, book, job_id)
    }

    fn psi_start(jobs: &mut PartyJobs, job_id: &str, peer: u32) {
        let start = PsiStart {
            job_id: job_id.to_string(),
            session: vec![7; 32],
            role: PsiRole::Client as i32,
            peer,
        };
        jobs.handle(Outbound::PsiStart(start));
    }

    /// The client side of an intersection started with party 1 (whose roster key is made from
    /// seed 2) as its server; returns its signed hello.
    fn psi_client() -> (PartyJobs, Arc<Book>, String, Vec<u8>) {
        let (mut jobs, book, job_id) = admitted_psi_client();
        psi_start(&mut jobs, &job_id, 1);
        let out = actions(&mut jobs);
        let Some(Action::Send(body)) = out.first() else { panic!("expected the client's hello") };
        let Body::Round(hello) = body.as_ref() else { panic!("expected a round payload") };
        (jobs, book, job_id, hello.message.clone())
    }

    /// The server's answer to the client's signed hello, signed by `key`.
    fn server_answer(job_id: &str, client_hello: &[u8], key: &SigningKey) -> Vec<u8> {
        let (message, _) = client_hello.split_at(client_hello.len() - 64);
        let params = veil_psi::PsiParams::new(veil_psi::Session([7; 32]), veil_psi::Mode::SizeOnly);
        let keys = veil_psi::KeySet::new(veil_psi::KeyPolicy::default(), ["b", "c", "d"]).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut server = veil_psi::Server::new(&params, keys, &mut rng).unwrap();
        let hello = veil_psi::ClientMessage::decode(message).unwrap();
        server.handle_message(hello, &mut rng).unwrap();
        let mut answer = server.poll_transmit().unwrap().encode();
        let statement = psi_message_statement(job_id, &[7; 32], 1, &answer);
        answer.extend_from_slice(&key.sign(&statement).to_bytes());
        answer
    }

    #[test]
    fn an_intersection_takes_only_messages_its_other_side_signed() {
        // The other side's own signature: the exchange goes on.
        let (mut jobs, book, job_id, hello) = psi_client();
        let genuine = server_answer(&job_id, &hello, &SigningKey::from_bytes(&[2; 32]));
        let payload =
            RoundPayload { job_id: job_id.clone(), message: genuine, ..RoundPayload::default() };
        jobs.handle(Outbound::Round(payload));
        actions(&mut jobs);
        assert!(matches!(jobs.jobs.get(&job_id), Some(JobState::Psi(_))), "the client goes on");
        let refused = |e: &Event| matches!(e, Event::JobRefused { .. });
        assert!(!book.events.lock().unwrap().iter().any(refused));
        // The coordinator standing in for the server (a key not the server's, or none): the
        // client leaves, logging why, and sends nothing more.
        for forged in [Some(SigningKey::from_bytes(&[9; 32])), None] {
            let (mut jobs, book, job_id, hello) = psi_client();
            let mut message = server_answer(&job_id, &hello, &SigningKey::from_bytes(&[2; 32]));
            match &forged {
                Some(key) => {
                    message.truncate(message.len() - 64);
                    let statement = psi_message_statement(&job_id, &[7; 32], 1, &message);
                    message.extend_from_slice(&key.sign(&statement).to_bytes());
                }
                None => message.truncate(message.len() - 64),
            }
            let payload =
                RoundPayload { job_id: job_id.clone(), message, ..RoundPayload::default() };
            jobs.handle(Outbound::Round(payload));
            // Only its signed reason for leaving goes out.
            let out = actions(&mut jobs);
            assert_eq!(out.len(), 1);
            assert!(!reply(&out[0]).accept);
            assert!(matches!(jobs.jobs.get(&job_id), Some(JobState::Idle)));
            let events = book.events.lock().unwrap();
            assert!(
                matches!(events.last(), Some(Event::JobRefused { message, .. }) if message.contains("not signed by the other side")),
                "{:?}",
                events.last()
            );
        }
    }

    #[test]
    fn a_peer_announcing_more_keys_than_a_party_holds_replies_for_is_left() {
        let (mut jobs, book, job_id, _) = psi_client();
        let hello = veil_psi::ServerMessage::Hello {
            session: veil_psi::Session([7; 32]),
            count: MAX_PEER_KEYS + 1,
        };
        let mut message = hello.encode();
        let statement = psi_message_statement(&job_id, &[7; 32], 1, &message);
        message.extend_from_slice(&SigningKey::from_bytes(&[2; 32]).sign(&statement).to_bytes());
        let payload = RoundPayload { job_id: job_id.clone(), message, ..RoundPayload::default() };
        jobs.handle(Outbound::Round(payload));
        assert!(!reply(&actions(&mut jobs)[0]).accept);
        let events = book.events.lock().unwrap();
        let left = |e: &Event| matches!(e, Event::JobRefused { message, .. } if message.contains("announces"));
        assert!(events.last().is_some_and(left), "{:?}", events.last());
    }

    #[test]
    fn an_intersection_start_naming_this_party_or_a_stranger_as_its_peer_is_left() {
        for peer in [0, 99] {
            let (mut jobs, book, job_id) = admitted_psi_client();
            psi_start(&mut jobs, &job_id, peer);
            assert!(actions(&mut jobs).is_empty(), "nothing goes out");
            let events = book.events.lock().unwrap();
            let left = |e: &Event| matches!(e, Event::JobRefused { message, .. } if message.contains("other side"));
            assert!(events.last().is_some_and(left), "{:?}", events.last());
        }
    }

    #[test]
    fn a_reconnection_drops_what_was_queued_for_the_last_connection() {
        let (mut jobs, _) = machine(2, benchmark(Some(Fault::ExitAfter(Stage::AdvertiseKeys))));
        let (_, offer) = offered(SYNTHETIC, vec![2; 32]);
        jobs.handle(offer);
        // The reply and the injected exit are queued; the connection goes before they run.
        jobs.reconnected();
        assert!(actions(&mut jobs).is_empty());
    }

    #[test]
    fn every_random_choice_takes_a_fresh_generator() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static MADE: AtomicU64 = AtomicU64::new(0);
        let fresh = || {
            let n = MADE.fetch_add(1, Ordering::SeqCst);
            rand_chacha::ChaCha20Rng::seed_from_u64(n)
        };
        let book: Arc<Book> = Arc::new(Book::default());
        let config = Arc::new(config(CELLS));
        let mut jobs = PartyJobs::new(config, benchmark(None), book, fresh, || 1);
        let mut adverts = Vec::new();
        for session in [[1u8; 32], [2; 32]] {
            let (_, offer) = offered(SYNTHETIC, session.to_vec());
            jobs.handle(offer);
            adverts.push(reply(&actions(&mut jobs)[0]).advertise.clone());
        }
        // No generator outlives its use: each vector and each round's keys had their own.
        assert!(MADE.load(Ordering::SeqCst) >= 4);
        assert_ne!(adverts[0], adverts[1]);
    }

    #[test]
    fn a_reconnection_forgets_the_jobs_of_the_last_connection() {
        let (mut jobs, _) = machine(2, benchmark(None));
        let (job_id, offer) = offered(SYNTHETIC, vec![3; 32]);
        jobs.handle(offer);
        actions(&mut jobs);
        jobs.reconnected();
        jobs.handle(secure_start(&job_id, [3; 32], vec![0, 1, 2], 4));
        assert!(actions(&mut jobs).is_empty());
    }
}
