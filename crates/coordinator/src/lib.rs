//! The veil coordinator.
//!
//! It is trusted for liveness only: it schedules jobs, offers them to the parties that hold the
//! named dataset, relays the secure aggregation round it cannot read, turns the unmasked sum
//! into the answer and stores it. Parties dial out to it and hold one stream each
//! ([`gateway`]); consumers submit and watch jobs ([`jobs`]); administrators list parties
//! ([`admin`]). Each job runs in its own task ([`driver`]) that feeds the protocol crate's
//! coordinator state machine; its offer and who the answer covers are pure ([`offer`]). State
//! lives in SQLite ([`store`]).
//!
//! [`serve`] takes its listener and a shutdown future, so tests bind `127.0.0.1:0` and stop it
//! cleanly.

pub mod admin;
pub mod config;
pub mod consortium;
pub mod driver;
pub mod gateway;
pub mod jobs;
pub mod offer;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tonic::transport::Server;
use veil_proto::roster::{Member, RosterFile};
use veil_proto::tls::TlsMaterial;
use veil_proto::v1::{CoordinatorEnvelope, JobStatus};
use veil_protocol::PartyId;

use crate::store::{JobRecord, Store};

pub use config::CoordinatorFile;

/// Called with every envelope a party sends, as encoded on the wire (a diagnostics hook:
/// tests use it to check what the coordinator can see).
pub type InboundTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// How the coordinator runs.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// Signs the audit log.
    pub identity: ed25519_dalek::SigningKey,
    /// The SQLite database file.
    pub database: PathBuf,
    /// The consortium roster.
    pub roster: RosterFile,
    /// TLS material; `None` serves plain text, only with the dangerous flag.
    pub tls: Option<TlsMaterial>,
    /// A party silent for this long in a round stage is a dropout.
    pub stage_timeout: Duration,
    /// How long parties have to accept or refuse a job.
    pub offer_timeout: Duration,
    /// The collusion bound `c` every round tolerates.
    pub max_corrupt: usize,
    /// Sees every inbound party envelope.
    pub inbound_tap: Option<InboundTap>,
}

impl std::fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("database", &self.database)
            .field("tls", &self.tls.is_some())
            .field("stage_timeout", &self.stage_timeout)
            .finish()
    }
}

/// Errors starting or running the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The roster is invalid.
    #[error("invalid roster: {0}")]
    Roster(String),
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A configuration file is invalid.
    #[error(transparent)]
    Config(#[from] veil_proto::ConfigError),
}

/// What a job's driver is told.
#[derive(Debug)]
pub(crate) enum JobInput {
    /// A party answered the offer.
    Reply(Box<offer::Reply>),
    /// A round message from a party, with its audit log head when it sent one.
    Round { from: PartyId, bytes: Vec<u8>, head: Option<veil_governance::audit::Head> },
    /// A party's connection closed.
    Departed(PartyId),
    /// The consumer cancelled.
    Cancel,
}

pub(crate) struct Connection {
    id: u64,
    tx: mpsc::Sender<Result<CoordinatorEnvelope, tonic::Status>>,
    datasets: Vec<String>,
    catalog: Vec<veil_analytics::DatasetCatalog>,
    since_ms: i64,
}

/// A job's new state and detail, to be stored.
pub(crate) struct ProgressWrite {
    pub(crate) job_id: String,
    pub(crate) state: store::JobState,
    pub(crate) detail: String,
    pub(crate) parties: Vec<u32>,
    pub(crate) at_ms: i64,
}

/// Live state shared by the services and the job drivers.
pub(crate) struct Shared {
    store: Arc<Store>,
    /// Progress writes, applied in order by a background thread so a round never waits for
    /// a stage's fsync; final states and results are written synchronously instead.
    progress: Mutex<std::sync::mpsc::Sender<ProgressWrite>>,
    roster: RosterFile,
    protocol_roster: Arc<veil_protocol::Roster>,
    plaintext: bool,
    stage_timeout: Duration,
    offer_timeout: Duration,
    max_corrupt: usize,
    /// Signs the heads of its log it hands to parties.
    identity: ed25519_dalek::SigningKey,
    tap: Option<InboundTap>,
    parties: Mutex<BTreeMap<PartyId, Connection>>,
    jobs: Mutex<HashMap<String, mpsc::UnboundedSender<JobInput>>>,
    status: broadcast::Sender<JobStatus>,
    next_connection: AtomicU64,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps guarded here stay consistent across a panic (single inserts and removes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Who is calling, from the client certificate's fingerprint.
    pub(crate) fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Member, tonic::Status> {
        if self.plaintext {
            return Ok(Member::Consumer { name: "anonymous".into(), admin: true });
        }
        let certs = request
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
        let der = certs
            .first()
            .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
        let fp = veil_proto::tls::fingerprint(der);
        self.roster.member(&fp).ok_or_else(|| {
            tonic::Status::permission_denied(format!(
                "certificate {fp} is not in the consortium roster"
            ))
        })
    }

    /// The catalog entries connected parties announce, one per dataset; a dataset whose
    /// parties announce different entries is reported as an error.
    pub(crate) fn catalogs(&self) -> Result<Vec<veil_analytics::DatasetCatalog>, String> {
        let parties = lock(&self.parties);
        let mut out: Vec<(veil_analytics::DatasetCatalog, PartyId)> = Vec::new();
        for (p, c) in parties.iter() {
            for entry in &c.catalog {
                match out.iter().find(|(e, _)| e.name == entry.name) {
                    Some((e, first)) if e != entry => {
                        return Err(format!(
                            "{first} and {p} announce different catalogs for dataset {:?}; they must agree on columns, bounds and domains",
                            entry.name
                        ));
                    }
                    Some(_) => {}
                    None => out.push((entry.clone(), *p)),
                }
            }
        }
        Ok(out.into_iter().map(|(e, _)| e).collect())
    }

    pub(crate) fn connected_parties(&self) -> BTreeMap<PartyId, (Vec<String>, i64)> {
        lock(&self.parties).iter().map(|(p, c)| (*p, (c.datasets.clone(), c.since_ms))).collect()
    }

    /// Sends to a party if it is connected; returns whether it was.
    pub(crate) async fn send(&self, to: PartyId, envelope: CoordinatorEnvelope) -> bool {
        let tx = lock(&self.parties).get(&to).map(|c| c.tx.clone());
        match tx {
            Some(tx) => tx.send(Ok(envelope)).await.is_ok(),
            None => false,
        }
    }

    /// Ends a party's stream with a status it can read, and forgets the connection.
    pub(crate) async fn disconnect(&self, party: PartyId, status: tonic::Status) {
        let conn = lock(&self.parties).remove(&party);
        if let Some(c) = conn {
            tracing::warn!(%party, %status, "closing party stream");
            let _ = c.tx.send(Err(status)).await;
            self.broadcast_departure(party);
        }
    }

    pub(crate) fn broadcast_departure(&self, party: PartyId) {
        for tx in lock(&self.jobs).values() {
            let _ = tx.send(JobInput::Departed(party));
        }
    }

    pub(crate) fn route(&self, job_id: &str, input: JobInput) -> bool {
        lock(&self.jobs).get(job_id).is_some_and(|tx| tx.send(input).is_ok())
    }

    /// Publishes a job's current state to watchers.
    pub(crate) fn publish(&self, job: &JobRecord) {
        let _ = self.status.send(jobs::status_of(job, &self.roster));
    }

    /// Publishes a job's progress and queues it for the store.
    pub(crate) fn progress(&self, job: &JobRecord) {
        self.publish(job);
        let write = ProgressWrite {
            job_id: job.id.clone(),
            state: job.state,
            detail: job.detail.clone(),
            parties: job.parties.clone(),
            at_ms: job.updated_ms,
        };
        let _ = lock(&self.progress).send(write);
    }
}

/// Serves the coordinator on `listener` until `shutdown` completes. Jobs that were under way
/// when a previous run stopped are marked failed with the reason first.
pub async fn serve(
    config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let store = Store::open(&config.database, config.identity.clone())?;
    let interrupted = store.fail_interrupted(now_ms())?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "marked jobs interrupted by the last stop as failed");
    }
    let protocol_roster =
        Arc::new(config.roster.protocol_roster().map_err(CoordinatorError::Roster)?);
    let (status, _) = broadcast::channel(1024);
    // The roster and quotas in force, logged whenever they change.
    let roster_text = format!("{:?}", config.roster);
    let what = format!(
        "roster of {} parties and {} consumers, fingerprint {}",
        config.roster.parties.len(),
        config.roster.consumers.len(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(roster_text.as_bytes()))
    );
    let last = store.audit_log()?.into_iter().rev().find_map(|t| {
        match serde_json::from_str::<veil_governance::audit::Entry>(&t).ok()?.event {
            veil_governance::audit::Event::ConfigChanged { what } => Some(what),
            _ => None,
        }
    });
    if last.as_deref() != Some(what.as_str()) {
        store.audit(veil_governance::audit::Event::ConfigChanged { what }, now_ms())?;
    }
    let store = Arc::new(store);
    let (progress, writes) = std::sync::mpsc::channel::<ProgressWrite>();
    let writer_store = store.clone();
    std::thread::Builder::new()
        .name("veil-progress-writer".into())
        .spawn(move || {
            for w in writes {
                if let Err(e) =
                    writer_store.update_job(&w.job_id, w.state, &w.detail, &w.parties, w.at_ms)
                {
                    tracing::error!(job = %w.job_id, error = %e, "cannot record job progress");
                }
            }
        })
        .map_err(|e| CoordinatorError::Roster(format!("cannot start the progress writer: {e}")))?;
    let shared = Arc::new(Shared {
        store,
        progress: Mutex::new(progress),
        roster: config.roster,
        protocol_roster,
        plaintext: config.tls.is_none(),
        stage_timeout: config.stage_timeout,
        offer_timeout: config.offer_timeout,
        max_corrupt: config.max_corrupt,
        identity: config.identity.clone(),
        tap: config.inbound_tap,
        parties: Mutex::new(BTreeMap::new()),
        jobs: Mutex::new(HashMap::new()),
        status,
        next_connection: AtomicU64::new(1),
    });
    resume_interrupted(&shared);
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Masked vectors are megabytes: HTTP/2's default 64 KiB windows would make every upload
        // wait on window updates.
        .initial_stream_window_size(Some(veil_proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(veil_proto::CONNECTION_WINDOW));
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let max = veil_proto::MAX_MESSAGE_BYTES;
    builder
        .add_service(
            veil_proto::v1::party_gateway_server::PartyGatewayServer::new(gateway::Gateway::new(
                shared.clone(),
            ))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            veil_proto::v1::jobs_server::JobsServer::new(jobs::JobsApi::new(shared.clone()))
                .max_decoding_message_size(1 << 20)
                .max_encoding_message_size(max),
        )
        .add_service(veil_proto::v1::admin_server::AdminServer::new(admin::AdminApi::new(
            shared.clone(),
        )))
        .serve_with_incoming_shutdown(
            // Small protocol messages must not wait behind delayed acknowledgements.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Restarts the training jobs a previous run left with a checkpoint, from their last finished
/// step; a checkpoint that cannot be read fails its job with the reason.
fn resume_interrupted(shared: &Arc<Shared>) {
    let resumable = match shared.store.resumable() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the checkpoints");
            return;
        }
    };
    for (mut record, checkpoint, parties) in resumable {
        let parsed = veil_analytics::Job::parse(&record.spec_json)
            .map_err(|e| e.to_string())
            .and_then(|job| {
                serde_json::from_str::<veil_learning::job::Training>(&checkpoint)
                    .map(|t| (job, t))
                    .map_err(|e| format!("unreadable checkpoint: {e}"))
            });
        match parsed {
            Ok((job, training)) => {
                let done = training.history.len();
                tracing::warn!(job = %record.id, rounds = done, "resuming a training job");
                record.state = store::JobState::Queued;
                record.detail = format!("resuming after {done} rounds: the coordinator restarted");
                record.updated_ms = now_ms();
                shared.progress(&record);
                driver::start(shared.clone(), record, job, Some((training, parties)));
            }
            Err(reason) => {
                let detail = format!("interrupted and cannot resume: {reason}");
                if let Err(e) = shared.store.update_job(
                    &record.id,
                    store::JobState::Failed,
                    &detail,
                    &record.parties,
                    now_ms(),
                ) {
                    tracing::error!(job = %record.id, error = %e, "cannot record the job's end");
                }
            }
        }
    }
}

pub(crate) fn next_connection_id(shared: &Shared) -> u64 {
    shared.next_connection.fetch_add(1, Ordering::Relaxed)
}
