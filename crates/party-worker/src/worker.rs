//! The party's connection to the coordinator and its part in each job.
//!
//! The worker dials out (no inbound port), announces the datasets it serves, and then answers
//! whatever the coordinator sends on the one stream: offers (checked against the job's
//! specification and the party's own data and minimum cohort), round starts (checked against
//! the accepted job, the roster and the protocol's safety conditions), and round messages (fed
//! to the protocol's party state machine). It reconnects after a transport failure and stops
//! on a refusal of its identity.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use veil_governance::Decline;
use veil_governance::audit::Event;
use veil_learning::job::{LocalData, Step, StepInput, party_vector, program_vector, training_rows};
use veil_learning::train::Standardizer;
use veil_proto::v1::party_envelope::Body;
use veil_proto::v1::party_gateway_client::PartyGatewayClient;
use veil_proto::v1::{Hello, PartyEnvelope};
use veil_protocol::Stage;
use zeroize::Zeroizing;

use crate::admission::{JoinSide, PsiSide, Work};
use crate::config::PartyConfig;
use crate::data::{
    GroupKeys, ValueKeys, aggregate_by_key, aggregate_file, aggregate_postgres, load_encoded,
    load_groups, load_keys,
};
use crate::jobs::{
    Accepted, Action, Encrypted, Encryption, Intersection, JobRecords, JoinInput, JoinKeys,
    PartyJobs, Preparation, Prepared, PsiKeys, StepWork, Trained, TrainingJob,
};
use crate::store::PartyStore;
use crate::trainer;

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
    let config = Arc::new(config);
    let records: Arc<dyn JobRecords> = store;
    let jobs =
        PartyJobs::new(config.clone(), options.clone(), records, ChaCha20Rng::from_entropy, now_ms)
            .with_sandbox(veil_sandbox::support());
    let mut state = Worker::new(jobs, options);
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

/// The worker's side of the party: the job machine, and the channels its background work
/// reports on.
struct Worker {
    jobs: PartyJobs,
    options: WorkerOptions,
    prepared_tx: mpsc::Sender<Prepared>,
    prepared_rx: mpsc::Receiver<Prepared>,
    trained_tx: mpsc::Sender<Trained>,
    trained_rx: mpsc::Receiver<Trained>,
    encrypted_tx: mpsc::Sender<Encrypted>,
    encrypted_rx: mpsc::Receiver<Encrypted>,
    /// Intersections with more to send, served between other messages.
    continuing: std::collections::VecDeque<String>,
}

impl Worker {
    fn new(jobs: PartyJobs, options: WorkerOptions) -> Self {
        let (prepared_tx, prepared_rx) = mpsc::channel(64);
        let (trained_tx, trained_rx) = mpsc::channel(64);
        let (encrypted_tx, encrypted_rx) = mpsc::channel(64);
        Self {
            jobs,
            options,
            prepared_tx,
            prepared_rx,
            trained_tx,
            trained_rx,
            encrypted_tx,
            encrypted_rx,
            continuing: std::collections::VecDeque::new(),
        }
    }

    /// Does what the machine asks, in order; `true` when an injected fault stops the worker.
    async fn act(
        &mut self,
        config: &PartyConfig,
        tx: &mpsc::Sender<PartyEnvelope>,
    ) -> Result<bool, Status> {
        while let Some(action) = self.jobs.poll_action() {
            match action {
                Action::Send(body) => send(tx, *body).await?,
                Action::Prepare(p) => prepare(config, *p, self.prepared_tx.clone()),
                Action::Train(work) => train(config, *work, self.trained_tx.clone()),
                Action::Continue(job_id) => self.continuing.push_back(job_id),
                Action::Encrypt(work) => encrypt(*work, self.encrypted_tx.clone()),
                Action::KeepIntersection(found) => keep_intersection(config, &found),
                Action::Exit => {
                    // Let the transport deliver what was just sent, as a crashed process's
                    // kernel would, then vanish.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

async fn session(
    config: &PartyConfig,
    endpoint: &Endpoint,
    state: &mut Worker,
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
    state.jobs.reconnected();
    state.continuing.clear();
    loop {
        tokio::select! {
            // Inbound messages first; an intersection's next batch when nothing else waits.
            biased;
            message = inbound.message() => {
                let Some(envelope) = message? else { return Ok(Ended::Closed) };
                let Some(body) = envelope.body else { continue };
                state.jobs.handle(body);
            }
            Some(prepared) = state.prepared_rx.recv() => state.jobs.prepared(prepared),
            Some(step) = state.trained_rx.recv() => {
                state.jobs.trained(step);
            }
            Some(encrypted) = state.encrypted_rx.recv() => state.jobs.encrypted(encrypted),
            () = std::future::ready(()), if !state.continuing.is_empty() => {
                if let Some(job_id) = state.continuing.pop_front() {
                    state.jobs.resume(&job_id);
                }
            }
        }
        if state.act(config, &tx).await? {
            return Ok(Ended::Exit);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn send(tx: &mpsc::Sender<PartyEnvelope>, body: Body) -> Result<(), Status> {
    tx.send(PartyEnvelope { body: Some(body) })
        .await
        .map_err(|_| Status::unavailable("the stream to the coordinator closed"))
}

/// Where a party keeps the intersections it was given: beside its store.
pub fn intersections_dir(config: &PartyConfig) -> std::path::PathBuf {
    config.state.parent().unwrap_or(std::path::Path::new(".")).join("intersections")
}

/// Writes an intersection this party was given to `intersections/<job id>.csv` beside its
/// store, one key per line under the header `key`, readable by its owner only; written to a
/// temporary file and renamed, so a crash leaves no partial file under the final name.
fn keep_intersection(config: &PartyConfig, found: &Intersection) {
    let dir = intersections_dir(config);
    let path = dir.join(format!("{}.csv", found.job_id));
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.csv.tmp", found.job_id));
        let mut text = String::from("key\n");
        for k in found.keys.iter() {
            let quoted = k.contains([',', '"', '\n', '\r']);
            if quoted {
                text.push('"');
                text.push_str(&k.replace('"', "\"\""));
                text.push('"');
            } else {
                text.push_str(k);
            }
            text.push('\n');
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    match written {
        Ok(()) => {
            tracing::info!(party = %config.name, job = %found.job_id, keys = found.keys.len(), path = %path.display(), "intersection kept")
        }
        Err(e) => {
            tracing::error!(party = %config.name, job = %found.job_id, error = %e, "cannot keep the intersection")
        }
    }
}

/// Encrypts a join's vectors under a fresh Paillier key on the blocking pool (seconds per
/// ten thousand keys), with randomness from the OS.
fn encrypt(work: Encryption, done: mpsc::Sender<Encrypted>) {
    tokio::spawn(async move {
        let Encryption { job_id, segment, vectors } = work;
        let encrypted = tokio::task::spawn_blocking(move || {
            veil_psi::join::EncryptedValues::new(segment, &vectors, &mut rand::rngs::OsRng)
                .map_err(|e| e.to_string())
        })
        .await;
        let result = encrypted.unwrap_or_else(|e| Err(format!("the encryption failed: {e}")));
        let _ = done.send(Encrypted { job_id, result }).await;
    });
}

/// A failure to read a dataset: logged in full at the party, declined without its paths.
fn unreadable(dataset: &str, e: &crate::data::DataError) -> Decline {
    tracing::warn!(dataset, error = %e, "the dataset cannot be read for a job");
    Decline::DataUnavailable(e.public(dataset))
}

/// An admitted job's background work: the local vector of a column job (from its file or
/// PostgreSQL table), or the rows of a training job; the result goes to `done`.
fn prepare(config: &PartyConfig, preparation: Preparation, done: mpsc::Sender<Prepared>) {
    let Preparation { job_id, job_hash, accepted, work } = preparation;
    match work {
        Work::Synthetic { .. } => {
            // Drawn by the machine itself; never handed out.
            let result = Err(Decline::Fault("internal: a synthetic job prepared twice".into()));
            let _ = done.try_send(Prepared { job_id, job_hash, result });
        }
        Work::Train { dataset, spec, declared, next_step } => {
            let hash = job_hash.clone();
            tokio::spawn(async move {
                let loaded = tokio::task::spawn_blocking(move || {
                    let (x, y) = load_encoded(&dataset, &spec.features, &spec.label, &spec.encode)
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
                let _ = done.send(Prepared { job_id, job_hash, result }).await;
            });
        }
        Work::Psi {
            dataset,
            column,
            role,
            case_fold,
            min_peer_keys,
            noise_variance,
            intersection,
            reveal_to,
        } => {
            tokio::spawn(async move {
                let loaded = tokio::task::spawn_blocking(move || {
                    let (keys, missing) =
                        load_keys(&dataset, &column).map_err(|e| unreadable(&dataset.name, &e))?;
                    if missing > 0 {
                        tracing::info!(dataset = %dataset.name, missing, "rows without a key left out of the intersection");
                    }
                    // Distinct after normalisation, as the intersection of sets counts them.
                    let policy = veil_psi::KeyPolicy { trim: true, case_fold };
                    let distinct: std::collections::BTreeSet<String> =
                        keys.iter().map(|k| policy.normalise(k).into_owned()).collect();
                    veil_psi::KeySet::new(policy, distinct).map_err(|e| {
                        Decline::DataUnavailable(format!(
                            "dataset {:?}, column {column:?}: {e}",
                            dataset.name
                        ))
                    })
                })
                .await;
                let result = match loaded {
                    Ok(Ok(keys)) => {
                        let psi = PsiKeys {
                            side: role,
                            keys,
                            case_fold,
                            min_peer_keys,
                            noise_variance,
                            join: None,
                            intersection: intersection.then_some(reveal_to),
                        };
                        Ok(Accepted { psi: Some(psi), ..accepted })
                    }
                    Ok(Err(decline)) => Err(decline),
                    Err(e) => Err(Decline::Fault(format!("reading the keys failed: {e}"))),
                };
                let _ = done.send(Prepared { job_id, job_hash, result }).await;
            });
        }
        Work::Join { dataset, key, side, case_fold, min_peer_keys, shape, answer } => {
            let reveal_to = dataset.policy.reveal_membership_to.clone();
            tokio::spawn(async move {
                let loaded = tokio::task::spawn_blocking(move || {
                    let policy = veil_psi::KeyPolicy { trim: true, case_fold };
                    let name = dataset.name.clone();
                    let (keys, input, role) = match side {
                        JoinSide::Group { groups } => {
                            let GroupKeys { keys, slots, missing, ambiguous } =
                                load_groups(&dataset, &key, &groups, policy)
                                    .map_err(|e| unreadable(&name, &e))?;
                            if missing + ambiguous > 0 {
                                tracing::info!(dataset = %name, missing, ambiguous, "rows without a key, and keys in more than one group, left out of the join");
                            }
                            (keys, JoinInput::Group(slots), PsiSide::Client)
                        }
                        JoinSide::Value { plan } => {
                            let ValueKeys { keys, vectors, missing } =
                                aggregate_by_key(&dataset, &key, &plan, policy)
                                    .map_err(|e| unreadable(&name, &e))?;
                            if missing > 0 {
                                tracing::info!(dataset = %name, missing, "rows without a key left out of the join");
                            }
                            let vectors = Arc::new(Zeroizing::new(vectors));
                            (keys, JoinInput::Value(vectors), PsiSide::Server)
                        }
                    };
                    let keys = veil_psi::KeySet::new(policy, keys).map_err(|e| {
                        Decline::DataUnavailable(format!("dataset {name:?}, column {key:?}: {e}"))
                    })?;
                    // A private join: this party's share of the noise, drawn now from the OS.
                    let mut noise_seed = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut noise_seed);
                    let noise = veil_analytics::Layout::new(&answer)
                        .map_err(|e| Decline::Fault(format!("the join's layout: {e}")))?
                        .noise(noise_seed)
                        .map(|n| Arc::new(Zeroizing::new(n)));
                    let peers = Default::default();
                    let join = Some(JoinKeys { input, shape, peers, reveal_to, noise });
                    let psi = PsiKeys {
                        side: role,
                        keys,
                        case_fold,
                        min_peer_keys,
                        noise_variance: None,
                        join,
                        intersection: None,
                    };
                    Ok::<_, Decline>(psi)
                })
                .await;
                let result = match loaded {
                    Ok(Ok(psi)) => Ok(Accepted { psi: Some(psi), ..accepted }),
                    Ok(Err(decline)) => Err(decline),
                    Err(e) => Err(Decline::Fault(format!("reading the join's rows failed: {e}"))),
                };
                let _ = done.send(Prepared { job_id, job_hash, result }).await;
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
                let _ = done.send(Prepared { job_id, job_hash, result }).await;
            });
        }
    }
}

/// A training step's background work: the party's vector for the step; the result goes to
/// `done`.
fn train(config: &PartyConfig, work: StepWork, done: mpsc::Sender<Trained>) {
    let StepWork { start, job_id, job, step, standardizer } = work;
    let party = config.id.0;
    let parameters = start.parameters.clone();
    // Confined wherever the system can; otherwise admission refused the job unless the owner
    // allowed unconfined programs.
    let trainers =
        Trainers { config: config.trainers.clone(), confined: veil_sandbox::support().is_ok() };
    tokio::spawn(async move {
        let computed = tokio::task::spawn_blocking(move || {
            compute_step(&job, step, &parameters, standardizer.as_ref(), party, &trainers)
        })
        .await
        .unwrap_or_else(|e| Err(Decline::Fault(format!("local training stopped: {e}"))));
        let _ = done.send(Trained { start, job_id, computed }).await;
    });
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
    trainers: &Trainers,
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
    let failed = |e: veil_learning::Error| Decline::Fault(format!("local training failed: {e}"));
    match (&spec.trainer, step) {
        (Some(_), Step::Train { round }) => {
            let rows = training_rows(spec, &input, &job.data).map_err(failed)?;
            let update = trainer::run_step(
                &trainers.config,
                trainers.confined,
                spec,
                round,
                parameters,
                &rows,
            )
            .map_err(|e| Decline::Fault(e.to_string()))?;
            // An update of the wrong length or with a non-finite value is the program's
            // choice too: logged here, one fixed sentence to the coordinator.
            program_vector(spec, step, &update, rows.len(), &mut rng).map_err(|e| {
                tracing::warn!(round, error = %e, "the trainer program's update was refused");
                Decline::Fault(trainer::TrainerError::Failed.to_string())
            })
        }
        _ => party_vector(spec, &input, &job.data, party, &mut rng).map_err(failed),
    }
}

/// How this party runs trainer programs: its owner's settings, and whether to confine them.
#[derive(Clone, Debug)]
struct Trainers {
    config: crate::config::TrainersConfig,
    confined: bool,
}
