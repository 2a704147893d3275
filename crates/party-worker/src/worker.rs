//! The party's connection to the coordinator and its part in each job.
//!
//! The worker dials out (no inbound port), announces the datasets it serves, and then answers
//! whatever the coordinator sends on the one stream: offers (checked against the job's
//! specification and the party's own data and minimum cohort), round starts (checked against
//! the accepted job, the roster and the protocol's safety conditions), and round messages (fed
//! to the protocol's party state machine). It reconnects after a transport failure and stops
//! on a refusal of its identity.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use veil_governance::audit::{Event, Head};
use veil_governance::budget::Reservation;
use veil_governance::decision::decision_statement;
use veil_governance::receipt::Receipt;
use veil_governance::{Decline, DeclineKind, Rule};
use veil_proto::v1::coordinator_envelope::Body as Outbound;
use veil_proto::v1::party_envelope::Body;
use veil_proto::v1::party_gateway_client::PartyGatewayClient;
use veil_proto::v1::{
    Decline as WireDecline, Hello, PartyEnvelope, RoundPayload, RoundStart, TaskOffer, TaskReply,
};
use veil_protocol::{
    CoordinatorMessage, IdentityKey, Party, PartyStatus, RoundConfig, RoundKeys, SessionId, Stage,
};
use zeroize::Zeroizing;

use crate::admission::{self, Admission, Offer, Situation, Work};
use crate::config::PartyConfig;
use crate::data::{aggregate_file, aggregate_postgres, load_training};
use crate::store::PartyStore;
use veil_learning::job::{LocalData, Step, StepInput, TrainSpec, party_vector};
use veil_learning::train::Standardizer;

/// Fault injection for tests and drills of dropout handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection and stop right after sending the message of this stage.
    ExitAfter(Stage),
    /// Stay connected but go silent in a job right after sending the message of this stage.
    StallAfter(Stage),
}

/// How the worker runs.
#[derive(Clone, Debug, Default)]
pub struct WorkerOptions {
    /// Accept synthetic benchmark jobs, including plain (unmasked) rounds. Never in production.
    pub dangerous_benchmark: bool,
    /// An injected fault.
    pub fault: Option<Fault>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The coordinator refused this party's identity.
    #[error("the coordinator refused this party: {0}")]
    Refused(String),
    /// The coordinator's address is invalid.
    #[error("invalid coordinator address {0:?}")]
    BadAddress(String),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The party's store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the party until `shutdown` completes, or until the coordinator refuses its identity,
/// or until an injected `ExitAfter` fault fires.
pub async fn run(
    config: PartyConfig,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let endpoint = endpoint(&config)?;
    let signing = SigningKey::from_bytes(&config.identity_seed);
    let store = Arc::new(PartyStore::open(&config.state, &config.id.to_string(), signing.clone())?);
    if let Err(e) = store.check_ledger() {
        tracing::error!(party = %config.name, error = %e, "the party's records were tampered with; not serving");
        return Err(e.into());
    }
    record_configuration(&config, &store)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    let mut state = State::new(store, signing, &options);
    loop {
        let session = tokio::select! {
            r = session(&config, &endpoint, &mut state) => r,
            () = &mut shutdown => return Ok(()),
        };
        match session {
            Ok(Ended::Exit) => return Ok(()),
            Ok(Ended::Closed) => backoff = BACKOFF_MIN,
            Err(status)
                if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) =>
            {
                tracing::error!(party = %config.name, %status, "refused by the coordinator");
                return Err(WorkerError::Refused(status.message().to_string()));
            }
            // A plain-text party against a TLS coordinator never gets further: say so and stop.
            Err(status)
                if config.tls.is_none() && status.message().contains("h2 protocol error") =>
            {
                tracing::error!(party = %config.name, %status, "the coordinator does not speak plain text");
                return Err(WorkerError::Refused(format!(
                    "the coordinator does not speak plain text ({status}): start the party \
                     without --dangerous-plaintext, or the coordinator with it"
                )));
            }
            Err(status) if status.code() == Code::AlreadyExists => {
                tracing::error!(
                    party = %config.name,
                    %status,
                    "another process with this party's identity is connected; retrying"
                );
            }
            Err(status) => {
                tracing::warn!(party = %config.name, %status, "connection to the coordinator lost; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut shutdown => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Logs a `config-changed` entry when the datasets, grades, tags or policies differ from
/// what the log last recorded (and on first start).
fn record_configuration(config: &PartyConfig, store: &PartyStore) -> Result<(), WorkerError> {
    let described = format!("{:?} min_cohort={}", config.datasets, config.min_cohort);
    let fingerprint = hex::encode(Sha256::digest(described.as_bytes()));
    let what = format!(
        "datasets {} and their policies, fingerprint {fingerprint}",
        config.datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let last = store.audit_log()?.into_iter().rev().find_map(|e| match e.event {
        Event::ConfigChanged { what } => Some(what),
        _ => None,
    });
    if last.as_deref() != Some(what.as_str()) {
        store.audit(Event::ConfigChanged { what }, now_ms())?;
    }
    Ok(())
}

fn endpoint(config: &PartyConfig) -> Result<Endpoint, WorkerError> {
    let mut e = Endpoint::from_shared(config.coordinator.clone())
        .map_err(|_| WorkerError::BadAddress(config.coordinator.clone()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(veil_proto::STREAM_WINDOW)
        .initial_connection_window_size(veil_proto::CONNECTION_WINDOW);
    if let Some(tls) = &config.tls {
        e = e.tls_config(tls.client_config()).map_err(|e| WorkerError::Tls(e.to_string()))?;
    }
    Ok(e)
}

/// One connection attempt; returns the first refusal or transport error. Used by `veil party
/// --check` and by tests of refusal.
pub async fn connect_once(config: &PartyConfig) -> Result<(), Status> {
    let endpoint = endpoint(config).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("{e}: {:?}", std::error::Error::source(&e))))?;
    let mut client = PartyGatewayClient::new(channel);
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(hello(config, &WorkerOptions::default())).await;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?;
    Ok(())
}

/// The name synthetic benchmark jobs use as their dataset.
const SYNTHETIC: &str = "synthetic";

fn hello(config: &PartyConfig, options: &WorkerOptions) -> PartyEnvelope {
    let mut datasets: Vec<String> = config.datasets.iter().map(|d| d.name.clone()).collect();
    if options.dangerous_benchmark {
        datasets.push(SYNTHETIC.into());
    }
    let catalog: Vec<_> = config.datasets.iter().map(|d| d.catalog()).collect();
    let catalog_json = serde_json::to_string(&catalog).unwrap_or_default();
    PartyEnvelope {
        body: Some(Body::Hello(Hello { party_id: config.id.0, datasets, catalog_json })),
    }
}

enum Ended {
    /// The stream closed; reconnect.
    Closed,
    /// An injected fault asked the worker to stop.
    Exit,
}

/// A job this party accepted.
enum JobState {
    /// Computing the local vector.
    Preparing {
        /// The round's session, when the offer named it (one-round secure jobs).
        session: Option<[u8; 32]>,
    },
    /// Accepted with this vector, waiting for the round to start.
    Ready(Box<Accepted>),
    /// In the secure round.
    Round(Box<Party>),
    /// Done, or stalled by an injected fault: ignore further messages.
    Idle,
}

/// A job the party accepted, with what the round start needs.
struct Accepted {
    vector: Zeroizing<Vec<u64>>,
    min_parties: usize,
    /// `None` for synthetic jobs, which charge no budget.
    charge: Option<Reservation>,
    dataset_sha256: String,
    consumer: String,
    coordinator_head: Option<Head>,
    /// A training job's rows and specification (its vectors are computed step by step).
    training: Option<Arc<TrainingJob>>,
    /// A training job's first step this party still contributes to.
    next_step: u64,
    /// The round keys advertised with the acceptance, when the offer named the session.
    keys: Option<RoundKeys>,
    /// The job's hash (hex), bound into the round's digest.
    job_hash: String,
}

/// A training job this party accepted: it contributes to its steps until the job ends.
struct TrainingJob {
    spec: TrainSpec,
    job_hash: String,
    data: LocalData,
    /// The standardisation its declared bounds give, for DP jobs.
    declared: Option<Standardizer>,
}

/// What the background preparation of a job reports.
struct Prepared {
    job_id: String,
    job_hash: String,
    result: Result<Accepted, Decline>,
}

/// A training step's vector, computed in the background.
struct Trained {
    start: RoundStart,
    job_id: String,
    computed: Result<Vec<u64>, Decline>,
}

/// An accepted training job, between and during its steps.
#[derive(Clone)]
struct TrainingSlot {
    job: Arc<TrainingJob>,
    min_parties: usize,
    charge: Reservation,
}

struct State {
    jobs: HashMap<String, JobState>,
    /// The job hash and consumer of every job this party accepted, until the job ends: a
    /// receipt is kept only for what the party took part in.
    accepted: HashMap<String, (String, String)>,
    training: HashMap<String, TrainingSlot>,
    store: Arc<PartyStore>,
    signing: SigningKey,
    prepared_tx: mpsc::Sender<Prepared>,
    prepared_rx: mpsc::Receiver<Prepared>,
    trained_tx: mpsc::Sender<Trained>,
    trained_rx: mpsc::Receiver<Trained>,
    options: WorkerOptions,
    rng: rand_chacha::ChaCha20Rng,
}

impl State {
    fn new(store: Arc<PartyStore>, signing: SigningKey, options: &WorkerOptions) -> Self {
        let (prepared_tx, prepared_rx) = mpsc::channel(64);
        let (trained_tx, trained_rx) = mpsc::channel(64);
        Self {
            jobs: HashMap::new(),
            accepted: HashMap::new(),
            training: HashMap::new(),
            store,
            signing,
            prepared_tx,
            prepared_rx,
            trained_tx,
            trained_rx,
            options: options.clone(),
            // Reseeded from the OS for every round (see `start_round`); this seed only covers
            // the synthetic benchmark vectors.
            rng: rand_chacha::ChaCha20Rng::from_entropy(),
        }
    }
}

async fn session(
    config: &PartyConfig,
    endpoint: &Endpoint,
    state: &mut State,
) -> Result<Ended, Status> {
    let channel: Channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot reach {}: {e} ({:?})",
            config.coordinator,
            std::error::Error::source(&e)
        ))
    })?;
    let max = veil_proto::MAX_MESSAGE_BYTES;
    let mut client = PartyGatewayClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (tx, rx) = mpsc::channel::<PartyEnvelope>(64);
    tx.send(hello(config, &state.options))
        .await
        .map_err(|_| Status::internal("outbound channel closed"))?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    tracing::info!(party = %config.name, coordinator = %config.coordinator, "connected");
    // Jobs from a previous connection cannot continue: the coordinator saw us leave.
    state.jobs.clear();
    state.training.clear();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(envelope) = message? else { return Ok(Ended::Closed) };
                let Some(body) = envelope.body else { continue };
                if handle(config, state, &tx, body).await? {
                    return Ok(Ended::Exit);
                }
            }
            Some(prepared) = state.prepared_rx.recv() => {
                let reply = decide(config, state, prepared);
                let (job_id, keys_sent) = (reply.job_id.clone(), !reply.advertise.is_empty());
                send(&tx, Body::Reply(reply)).await?;
                // Round keys that went out with the acceptance are this party's advertise-keys
                // message.
                if keys_sent && injected(config, state, &job_id, Stage::AdvertiseKeys).await == Some(true) {
                    return Ok(Ended::Exit);
                }
            }
            Some(step) = state.trained_rx.recv() => {
                if trained(config, state, &tx, step).await? {
                    return Ok(Ended::Exit);
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Today in UTC as `YYYY-MM-DD` (civil-from-days, H. Hinnant's algorithm).
fn today() -> String {
    let days = now_ms().div_euclid(86_400_000);
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

fn audit(config: &PartyConfig, state: &State, event: Event) {
    if let Err(e) = state.store.audit(event, now_ms()) {
        tracing::error!(party = %config.name, error = %e, "cannot write the audit log");
    }
}

/// Leaves a job at round start, logging why (the rule for a policy refusal, else the kind).
fn leave(config: &PartyConfig, state: &State, job_id: String, decline: &Decline) {
    tracing::warn!(party = %config.name, job = %job_id, %decline, "leaving the job");
    audit(config, state, refused_event(config, job_id, decline));
}

/// A failure to read a dataset: logged in full at the party, declined without its paths.
fn unreadable(dataset: &str, e: &crate::data::DataError) -> Decline {
    tracing::warn!(dataset, error = %e, "the dataset cannot be read for a job");
    Decline::DataUnavailable(e.public(dataset))
}

/// The audit entry of a decline: its rule, or for a decline that is not a policy refusal its
/// kind; and its message.
fn refused_event(config: &PartyConfig, job_id: String, decline: &Decline) -> Event {
    let rule = decline.rule().map_or(decline.kind().name(), Rule::name).to_string();
    Event::JobRefused { job_id, party: config.id.0, rule, message: decline.message().to_string() }
}

/// Turns a finished preparation into the signed reply, recording the decision.
fn decide(config: &PartyConfig, state: &mut State, prepared: Prepared) -> TaskReply {
    let Prepared { job_id, job_hash, result } = prepared;
    let session = match state.jobs.get(&job_id) {
        Some(JobState::Preparing { session }) => *session,
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
            Event::JobAccepted { job_id: job_id.clone(), party: config.id.0 },
        ];
        match state.store.accept(events, session.as_ref(), now_ms()) {
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
                state.training.insert(job_id.clone(), slot);
            }
            if let (Some(session), None) = (session, &accepted.training) {
                let identity = IdentityKey::from_seed(&config.identity_seed);
                let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
                let keys = RoundKeys::generate(SessionId(session), config.id, &identity, &mut rng);
                advertise = keys.advertisement().encode();
                accepted.keys = Some(keys);
            }
            state.accepted.insert(job_id.clone(), (job_hash.clone(), accepted.consumer.clone()));
            if let Some(JobState::Preparing { .. }) = state.jobs.get(&job_id) {
                state.jobs.insert(job_id.clone(), JobState::Ready(Box::new(accepted)));
            }
            (None, fingerprint)
        }
        Err(decline) => {
            state.jobs.remove(&job_id);
            tracing::info!(party = %config.name, job = %job_id, %decline, "declined a job");
            audit(config, state, refused_event(config, job_id.clone(), &decline));
            (Some(decline), String::new())
        }
    };
    let signature = state.signing.sign(&decision_statement(&job_id, &job_hash, decline.as_ref()));
    let head = state.store.audit_head().unwrap_or_else(|e| {
        tracing::error!(party = %config.name, error = %e, "cannot read the audit log's head");
        None
    });
    let head = head.map(|h| h.signed(&job_id, &state.signing));
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
    if next_step > 0 {
        let next = Step::from_code(u32::try_from(next_step).unwrap_or(u32::MAX));
        veil_proto::round::set_next_step(&mut reply, next);
    }
    reply
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

/// Leaves a training job's step, and tells the coordinator why in a signed refusal, so the
/// consumer sees the reason rather than a timeout.
async fn leave_step(
    config: &PartyConfig,
    state: &State,
    tx: &mpsc::Sender<PartyEnvelope>,
    job_id: String,
    job_hash: &str,
    decline: Decline,
) -> Result<(), Status> {
    let signature = state.signing.sign(&decision_statement(&job_id, job_hash, Some(&decline)));
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
    leave(config, state, job_id, &decline);
    send(tx, Body::Reply(reply)).await
}

async fn send(tx: &mpsc::Sender<PartyEnvelope>, body: Body) -> Result<(), Status> {
    tx.send(PartyEnvelope { body: Some(body) })
        .await
        .map_err(|_| Status::unavailable("the stream to the coordinator closed"))
}

/// Handles one message; returns whether the worker must stop (an injected fault).
async fn handle(
    config: &PartyConfig,
    state: &mut State,
    tx: &mpsc::Sender<PartyEnvelope>,
    body: Outbound,
) -> Result<bool, Status> {
    match body {
        Outbound::Welcome(_) => Ok(false),
        Outbound::Offer(offer) => {
            prepare(config, state, offer);
            Ok(false)
        }
        Outbound::Start(start) => start_round(config, state, tx, start).await,
        Outbound::Round(payload) => round_message(config, state, tx, payload).await,
        Outbound::End(end) => {
            state.jobs.remove(&end.job_id);
            state.training.remove(&end.job_id);
            let accepted = state.accepted.remove(&end.job_id);
            if !end.receipt_json.is_empty() {
                // The receipt goes into this party's signed log: it must be for the job, hash
                // and consumer the party accepted, not whatever the coordinator says.
                let ours = |r: &Receipt| {
                    r.job_id == end.job_id
                        && accepted.as_ref().is_some_and(|(hash, consumer)| {
                            r.job_hash == *hash && r.consumer == *consumer
                        })
                        && r.parties.iter().any(|c| c.party == config.id.0)
                };
                match serde_json::from_str::<Receipt>(&end.receipt_json) {
                    Ok(r) if !ours(&r) && r.parties.iter().any(|c| c.party == config.id.0) => {
                        tracing::warn!(party = %config.name, job = %end.job_id, "a receipt for another job, hash or consumer than this party accepted; not kept");
                    }
                    Ok(r) if ours(&r) => {
                        if let Err(e) = state.store.put_receipt(&r) {
                            tracing::error!(party = %config.name, error = %e, "cannot store a receipt");
                        }
                        audit(config, state, Event::ResultReleased { receipt: r });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(party = %config.name, error = %e, "unreadable receipt")
                    }
                }
            }
            Ok(false)
        }
    }
}

/// Decides an offer ([`admission`]) and, for an admitted job, computes what it needs in the
/// background (the local vector of a column job, the rows of a training job); the signed reply
/// follows when that is ready.
fn prepare(config: &PartyConfig, state: &mut State, offer: TaskOffer) {
    let job_id = offer.job_id.clone();
    if state.jobs.contains_key(&job_id) {
        return;
    }
    let coordinator_head = (!offer.coordinator_head_hash.is_empty()).then(|| Head {
        seq: offer.coordinator_head_seq,
        hash: offer.coordinator_head_hash.clone(),
        signature: Some(offer.coordinator_head_signature.clone()),
    });
    let today = today();
    let situation = Situation {
        today: &today,
        dangerous_benchmark: state.options.dangerous_benchmark,
        training_jobs: state.training.len(),
    };
    let view = Offer {
        job_id: &offer.job_id,
        spec_json: &offer.spec_json,
        consumer: &offer.consumer,
        consumer_signature: &offer.consumer_signature,
        session: &offer.session,
        coordinator_head: coordinator_head.as_ref(),
    };
    let (job_hash, decision) = admission::admit(config, &situation, state.store.as_ref(), &view);
    let Admission { session, min_parties, charge, work } = match decision {
        Ok(a) => a,
        Err(decline) => {
            let _ = state.prepared_tx.try_send(Prepared { job_id, job_hash, result: Err(decline) });
            return;
        }
    };
    state.jobs.insert(job_id.clone(), JobState::Preparing { session });
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
    };
    let tx = state.prepared_tx.clone();
    match work {
        Work::Synthetic { dim } => {
            let vector: Vec<u64> = (0..dim).map(|_| state.rng.next_u64()).collect();
            let accepted = Accepted { vector: Zeroizing::new(vector), ..accepted };
            let _ = state.prepared_tx.try_send(Prepared { job_id, job_hash, result: Ok(accepted) });
        }
        Work::Train { dataset, spec, declared, next_step } => {
            let hash = job_hash.clone();
            tokio::spawn(async move {
                let loaded = tokio::task::spawn_blocking(move || {
                    let (x, y) = load_training(&dataset, &spec.features, &spec.label)
                        .map_err(|e| unreadable(&dataset.name, &e))?;
                    let data = LocalData::new(&spec, x, y).map_err(|e| {
                        Decline::DataUnavailable(format!(
                            "dataset {:?} does not fit the job: {e}",
                            dataset.name
                        ))
                    })?;
                    Ok::<_, Decline>(TrainingJob { spec: *spec, job_hash: hash, data, declared })
                })
                .await;
                let result = match loaded {
                    Ok(Ok(training)) => {
                        Ok(Accepted { training: Some(Arc::new(training)), next_step, ..accepted })
                    }
                    Ok(Err(decline)) => Err(decline),
                    Err(e) => Err(Decline::Fault(format!("loading the training rows failed: {e}"))),
                };
                let _ = tx.send(Prepared { job_id, job_hash, result }).await;
            });
        }
        Work::Columns { dataset, plan } => {
            let name = dataset.name.clone();
            let fingerprint_key = Sha256::new()
                .chain_update(b"veil/dataset-fingerprint/v1")
                .chain_update(config.identity_seed.as_ref())
                .finalize();
            tokio::spawn(async move {
                let mut noise_seed = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut noise_seed);
                let scan = match dataset.postgres.clone() {
                    Some(source) => Ok(aggregate_postgres(
                        &dataset,
                        &source,
                        &plan,
                        noise_seed,
                        &fingerprint_key,
                    )
                    .await),
                    None => {
                        tokio::task::spawn_blocking(move || {
                            // Keyed with the party's secret, so the fingerprint identifies the
                            // file to the party (and to anyone it shows the key) without
                            // letting others confirm a guessed file.
                            let fingerprint = std::fs::read(&dataset.path)
                                .map(|b| {
                                    hex::encode(
                                        Sha256::new()
                                            .chain_update(fingerprint_key)
                                            .chain_update(&b)
                                            .finalize(),
                                    )
                                })
                                .unwrap_or_default();
                            aggregate_file(&dataset, &plan, noise_seed).map(|v| (v, fingerprint))
                        })
                        .await
                    }
                };
                let result = match scan {
                    Ok(Ok((vector, dataset_sha256))) => {
                        Ok(Accepted { vector: Zeroizing::new(vector), dataset_sha256, ..accepted })
                    }
                    Ok(Err(e)) => Err(unreadable(&name, &e)),
                    Err(e) => Err(Decline::Fault(format!("local aggregation failed: {e}"))),
                };
                let _ = tx.send(Prepared { job_id, job_hash, result }).await;
            });
        }
    }
}

async fn start_round(
    config: &PartyConfig,
    state: &mut State,
    tx: &mpsc::Sender<PartyEnvelope>,
    start: RoundStart,
) -> Result<bool, Status> {
    let job_id = start.job_id.clone();
    let training = state.training.get(&job_id).cloned();
    let (vector, min_parties, charge, keys, job_hash) = if let Some(slot) = training {
        if matches!(state.jobs.get(&job_id), Some(JobState::Preparing { .. }) | None) {
            tracing::warn!(party = %config.name, job = %job_id, "training step before the job was accepted");
            return Ok(false);
        }
        state.jobs.insert(job_id.clone(), JobState::Idle);
        // Local training runs in the background; the stream keeps being served meanwhile, and
        // the party joins the round when its vector is ready (`trained`).
        match check_step(state, &slot, &start) {
            Ok((step, standardizer)) => {
                // A secure round is joined at once: keys are advertised and shared, and the
                // mask expanded, while the party trains; the input follows.
                if !start.plain
                    && join_round(
                        config,
                        state,
                        tx,
                        start.clone(),
                        Joining {
                            vector: None,
                            min_parties: slot.min_parties,
                            charge: None,
                            keys: None,
                            job_hash: slot.job.job_hash.clone(),
                        },
                    )
                    .await?
                {
                    return Ok(true);
                }
                let results = state.trained_tx.clone();
                let party = config.id.0;
                let job = slot.job.clone();
                let parameters = start.parameters.clone();
                tokio::spawn(async move {
                    let computed = tokio::task::spawn_blocking(move || {
                        compute_step(&job, step, &parameters, standardizer.as_ref(), party)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(Decline::Fault(format!("local training stopped: {e}")))
                    });
                    let _ = results.send(Trained { start, job_id, computed }).await;
                });
            }
            Err(decline) => {
                let hash = slot.job.job_hash.clone();
                leave_step(config, state, tx, job_id, &hash, decline).await?;
            }
        }
        return Ok(false);
    } else {
        let Some(JobState::Ready(accepted)) = state.jobs.remove(&job_id) else {
            tracing::warn!(party = %config.name, job = %job_id, "round start for a job this party did not accept");
            return Ok(false);
        };
        let Accepted { vector, min_parties, charge, keys, job_hash, .. } = *accepted;
        (vector, min_parties, charge, keys, job_hash)
    };
    let joining = Joining { vector: Some(vector), min_parties, charge, keys, job_hash };
    join_round(config, state, tx, start, joining).await
}

/// A training step's vector, computed in the background, arrives: the party joins the round
/// (or, if training failed, leaves the step saying why).
async fn trained(
    config: &PartyConfig,
    state: &mut State,
    tx: &mpsc::Sender<PartyEnvelope>,
    trained: Trained,
) -> Result<bool, Status> {
    let Trained { start, job_id, computed } = trained;
    // The job may have ended, or the connection been replaced, while the party trained.
    let Some(slot) = state.training.get(&job_id).cloned() else { return Ok(false) };
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
            join_round(config, state, tx, start, joining).await
        }
        Ok(v) => {
            // The round was joined at its start; it may have ended since (the party left it,
            // or the coordinator gave up on it).
            let Some(JobState::Round(party)) = state.jobs.get_mut(&job_id) else {
                return Ok(false);
            };
            if let Err(e) = party.provide_input(v) {
                tracing::warn!(party = %config.name, job = %job_id, error = %e, "the round took no input");
                return Ok(false);
            }
            flush(config, state, tx, &job_id).await
        }
        Err(decline) => {
            let hash = slot.job.job_hash.clone();
            leave_step(config, state, tx, job_id, &hash, decline).await?;
            Ok(false)
        }
    }
}

/// The audit log head a round message carries (after the job's charge, which is reserved
/// before any round message leaves).
fn head_fields(config: &PartyConfig, state: &State, job_id: &str) -> (u64, String, String) {
    match state.store.audit_head() {
        Ok(Some(h)) => {
            let h = h.signed(job_id, &state.signing);
            (h.seq, h.hash, h.signature.unwrap_or_default())
        }
        Ok(None) => (0, String::new(), String::new()),
        Err(e) => {
            tracing::error!(party = %config.name, error = %e, "cannot read the audit log's head");
            (0, String::new(), String::new())
        }
    }
}

/// Reserves a release's charge, atomically against every other job, before anything derived
/// from the data leaves; it is never refunded. `false` when the party leaves the job instead.
fn reserve(
    config: &PartyConfig,
    state: &mut State,
    job_id: &str,
    charge: Option<&Reservation>,
) -> bool {
    let Some(charge) = charge else { return true };
    match state.store.reserve_and_log(charge, now_ms()) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            leave(
                config,
                state,
                job_id.to_string(),
                &Decline::refused(Rule::Budget, e.to_string()),
            );
            false
        }
        Err(e) => {
            tracing::error!(party = %config.name, error = %e, "cannot reserve the budget; leaving the job");
            false
        }
    }
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

/// Joins a round with the party's vector: a plain round sends it as it is (benchmark parties
/// only); a secure round checks the session, the cohort and the parameters, reserves the
/// charge, and starts the protocol's party state machine.
async fn join_round(
    config: &PartyConfig,
    state: &mut State,
    tx: &mpsc::Sender<PartyEnvelope>,
    start: RoundStart,
    joining: Joining,
) -> Result<bool, Status> {
    let Joining { vector, min_parties, charge, keys, job_hash } = joining;
    let job_id = start.job_id.clone();
    if vector.as_ref().is_some_and(|v| start.vector_len as usize != v.len()) {
        tracing::warn!(party = %config.name, job = %job_id, "round start with the wrong vector length; leaving the job");
        return Ok(false);
    }
    let minimum = min_parties.max(start.min_cohort as usize);
    if start.parties.len() < minimum {
        let message = format!(
            "the round has {} parties; this party's data is combined with at least {minimum}",
            start.parties.len()
        );
        leave(config, state, job_id, &Decline::refused(Rule::Cohort, message));
        return Ok(false);
    }
    if start.plain {
        let Some(vector) = vector else {
            tracing::warn!(party = %config.name, job = %job_id, "internal: a plain round without its vector");
            return Ok(false);
        };
        // A release of this party's data alone, which its own configuration and the job both
        // allow: a secure round of one would reveal the same vector, so it goes as it is,
        // charged first like any release.
        let alone = start.parties == [config.id.0] && min_parties <= 1 && config.min_cohort <= 1;
        if !state.options.dangerous_benchmark && !alone {
            tracing::warn!(party = %config.name, job = %job_id, "refusing a plain round");
            return Ok(false);
        }
        if alone && !reserve(config, state, &job_id, charge.as_ref()) {
            return Ok(false);
        }
        let mut bytes = Vec::with_capacity(vector.len() * 8);
        for x in vector.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let (head_seq, head_hash, head_signature) = head_fields(config, state, &job_id);
        let payload = RoundPayload {
            job_id: job_id.clone(),
            message: bytes,
            head_seq,
            head_hash,
            head_signature,
        };
        send(tx, Body::Round(payload)).await?;
        state.jobs.insert(job_id, JobState::Idle);
        return Ok(false);
    }
    let Ok(session) = <[u8; 32]>::try_from(start.session.as_slice()) else {
        tracing::warn!(party = %config.name, job = %job_id, "round start without a 32-byte session; leaving the job");
        return Ok(false);
    };
    let claimed = match &keys {
        // Claimed with the acceptance.
        Some(k) if k.session().0 == session => Ok(true),
        Some(_) => {
            let message = "left the round: its start names another session than the offer";
            leave(config, state, job_id, &Decline::Fault(message.into()));
            return Ok(false);
        }
        None => state.store.claim_session(&session),
    };
    match claimed {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(party = %config.name, job = %job_id, "round start reusing a session; leaving the job");
            return Ok(false);
        }
        Err(e) => {
            tracing::error!(party = %config.name, error = %e, "cannot record the session; leaving the job");
            return Ok(false);
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
        leave(config, state, job_id, &Decline::refused(Rule::Cohort, message));
        return Ok(false);
    }
    if (start.max_corrupt as usize) < config.max_corrupt {
        let message = format!(
            "the round tolerates {} colluding parties; this party requires at least {}",
            start.max_corrupt, config.max_corrupt
        );
        leave(config, state, job_id, &Decline::refused(Rule::Collusion, message));
        return Ok(false);
    }
    let mut context = [0u8; 32];
    if hex::decode_to_slice(&job_hash, &mut context).is_err() {
        tracing::warn!(party = %config.name, job = %job_id, "internal: a job hash that is not 32 bytes of hex; leaving the job");
        return Ok(false);
    }
    let params = match veil_proto::round::config(&start, context).map(RoundConfig::validate) {
        Ok(Ok(p)) => Arc::new(p),
        Ok(Err(e)) => {
            tracing::warn!(party = %config.name, job = %job_id, error = %e, "unsafe round parameters; leaving the job");
            return Ok(false);
        }
        Err(e) => {
            tracing::warn!(party = %config.name, job = %job_id, error = %e, "an unreadable round start; leaving the job");
            return Ok(false);
        }
    };
    if !reserve(config, state, &job_id, charge.as_ref()) {
        return Ok(false);
    }
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let identity = IdentityKey::from_seed(&config.identity_seed);
    let roster = config.roster.clone();
    // Moved, not copied: the party state machine keeps (and zeroizes) the one vector.
    let input = vector.map(|mut v| std::mem::take(&mut *v));
    let joined = match (keys, input) {
        // The keys went out with the acceptance: the party waits for its neighbours' keys.
        (Some(keys), input) => Party::with_keys(params, identity, roster, input, keys),
        (None, Some(input)) => Party::new(params, config.id, identity, roster, input, &mut rng),
        // The input follows with `provide_input` once local training is done.
        (None, None) => Party::awaiting_input(params, config.id, identity, roster, &mut rng),
    };
    let party = match joined {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(party = %config.name, job = %job_id, error = %e, "cannot join the round");
            return Ok(false);
        }
    };
    state.jobs.insert(job_id.clone(), JobState::Round(Box::new(party)));
    flush(config, state, tx, &job_id).await
}

async fn round_message(
    config: &PartyConfig,
    state: &mut State,
    tx: &mpsc::Sender<PartyEnvelope>,
    payload: RoundPayload,
) -> Result<bool, Status> {
    let Some(JobState::Round(party)) = state.jobs.get_mut(&payload.job_id) else {
        return Ok(false);
    };
    let result = CoordinatorMessage::decode(&payload.message)
        .map_err(veil_protocol::Error::from)
        .and_then(|m| party.handle_message(m, &mut rand_chacha::ChaCha20Rng::from_entropy()));
    if let Err(e) = result {
        tracing::warn!(party = %config.name, job = %payload.job_id, error = %e, "round message rejected");
    }
    if let PartyStatus::Aborted(e) = party.status() {
        tracing::warn!(party = %config.name, job = %payload.job_id, error = %e, "left the round");
        let decline = match e {
            veil_protocol::Error::CohortTooSmall { size, minimum } => Decline::refused(
                Rule::Cohort,
                format!(
                    "{size} parties remain in the round; this party's data is combined with at least {minimum}"
                ),
            ),
            other => Decline::Fault(format!("left the round: {other}")),
        };
        state.jobs.insert(payload.job_id.clone(), JobState::Idle);
        // A training job goes on after this step: tell the coordinator why this party left.
        if let Some(slot) = state.training.get(&payload.job_id) {
            let hash = slot.job.job_hash.clone();
            leave_step(config, state, tx, payload.job_id, &hash, decline).await?;
        }
        return Ok(false);
    }
    flush(config, state, tx, &payload.job_id).await
}

/// Sends what the party state machine has queued; applies injected faults.
async fn flush(
    config: &PartyConfig,
    state: &mut State,
    tx: &mpsc::Sender<PartyEnvelope>,
    job_id: &str,
) -> Result<bool, Status> {
    let Some(JobState::Round(party)) = state.jobs.get_mut(job_id) else {
        return Ok(false);
    };
    let mut outgoing = Vec::new();
    while let Some(m) = party.poll_transmit() {
        outgoing.push(m);
    }
    for m in outgoing {
        let stage = m.stage();
        let (head_seq, head_hash, head_signature) = head_fields(config, state, job_id);
        let payload = RoundPayload {
            job_id: job_id.to_string(),
            message: m.encode(),
            head_seq,
            head_hash,
            head_signature,
        };
        send(tx, Body::Round(payload)).await?;
        if let Some(exit) = injected(config, state, job_id, stage).await {
            return Ok(exit);
        }
    }
    Ok(false)
}

/// Applies an injected fault after the message of `stage` went out: `Some(true)` to exit,
/// `Some(false)` when the party went silent in the job, `None` to go on.
async fn injected(
    config: &PartyConfig,
    state: &mut State,
    job_id: &str,
    stage: Stage,
) -> Option<bool> {
    match state.options.fault {
        Some(Fault::ExitAfter(s)) if s == stage => {
            // Let the transport deliver what was just sent, as a crashed process's kernel
            // would, then vanish.
            tokio::time::sleep(Duration::from_millis(300)).await;
            tracing::warn!(party = %config.name, job = %job_id, %stage, "injected fault: exiting");
            Some(true)
        }
        Some(Fault::StallAfter(s)) if s == stage => {
            tracing::warn!(party = %config.name, job = %job_id, %stage, "injected fault: going silent");
            state.jobs.insert(job_id.to_string(), JobState::Idle);
            Some(false)
        }
        _ => None,
    }
}

/// Checks a training step against the accepted job and claims it in the store (reserving the
/// job's charge at its first step); returns the step and the standardisation to train with,
/// or the refusing rule and the reason.
fn check_step(
    state: &State,
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
        && (start.parameters.len() != parameters || start.parameters.iter().any(|p| !p.is_finite()))
    {
        return Err(kind(format!(
            "the global model has {} parameters or non-finite ones; the job's model has {parameters}",
            start.parameters.len()
        )));
    }
    let standardizer = if spec.standardize && step != Step::Moments {
        let s = Standardizer { mean: start.mean.clone(), scale: start.scale.clone() };
        let features = spec.features.len();
        if s.mean.len() != features
            || s.scale.len() != features
            || s.mean.iter().any(|m| !m.is_finite())
            || s.scale.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(kind("the standardisation does not fit the job's features".into()));
        }
        if job.declared.as_ref().is_some_and(|d| *d != s) {
            return Err(kind(
                "the standardisation differs from the one this party's declared bounds give".into(),
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
    match state.store.claim_training_step(&slot.charge, &job.job_hash, step.code(), now_ms()) {
        Ok(Ok(())) => {}
        Ok(Err(decline)) => return Err(decline),
        Err(e) => return Err(Decline::Fault(format!("cannot record the step: {e}"))),
    }
    Ok((step, standardizer))
}

/// A party's vector for a checked step. Without DP the rounding is seeded from the job, the
/// step and the party, so a step computes the same vector wherever it is repeated; under DP
/// the noise must be unpredictable.
fn compute_step(
    job: &TrainingJob,
    step: Step,
    parameters: &[f64],
    standardizer: Option<&Standardizer>,
    party: u32,
) -> Result<Vec<u64>, Decline> {
    let spec = &job.spec;
    let mut rng = if spec.privacy.is_some() {
        rand_chacha::ChaCha20Rng::from_entropy()
    } else {
        let seed: [u8; 32] = Sha256::new()
            .chain_update(b"veil/training-rounding/v1")
            .chain_update(job.job_hash.as_bytes())
            .chain_update(step.code().to_le_bytes())
            .chain_update(party.to_le_bytes())
            .finalize()
            .into();
        rand_chacha::ChaCha20Rng::from_seed(seed)
    };
    let input = StepInput { step, parameters, standardizer };
    party_vector(spec, &input, &job.data, party, &mut rng)
        .map_err(|e| Decline::Fault(format!("local training failed: {e}")))
}
