//! The hub the services and the job drivers share: the connected parties and their streams,
//! the running jobs' inboxes, status broadcasts to watchers, and the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use veil_proto::roster::{Member, RosterFile};
use veil_proto::v1::{CoordinatorEnvelope, JobStatus};
use veil_protocol::PartyId;

use crate::store::{self, JobRecord, Store};
use crate::{InboundTap, JobInput, jobs};

pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Result<CoordinatorEnvelope, tonic::Status>>,
    pub(crate) datasets: Vec<String>,
    pub(crate) catalog: Vec<veil_analytics::DatasetCatalog>,
    pub(crate) since_ms: i64,
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
    pub(crate) store: Arc<Store>,
    /// Progress writes, applied in order by a background thread so a round never waits for
    /// a stage's fsync; final states and results are written synchronously instead.
    pub(crate) progress: Mutex<std::sync::mpsc::Sender<ProgressWrite>>,
    pub(crate) roster: RosterFile,
    pub(crate) protocol_roster: Arc<veil_protocol::Roster>,
    pub(crate) plaintext: bool,
    pub(crate) stage_timeout: Duration,
    pub(crate) offer_timeout: Duration,
    pub(crate) max_corrupt: usize,
    /// Signs the heads of its log it hands to parties.
    pub(crate) identity: ed25519_dalek::SigningKey,
    pub(crate) tap: Option<InboundTap>,
    pub(crate) parties: Mutex<BTreeMap<PartyId, Connection>>,
    pub(crate) jobs: Mutex<HashMap<String, mpsc::UnboundedSender<JobInput>>>,
    pub(crate) status: broadcast::Sender<JobStatus>,
    pub(crate) next_connection: AtomicU64,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    /// parties announce different entries is an error naming the two parties, the columns and
    /// what differs.
    pub(crate) fn catalogs(&self) -> Result<Vec<veil_analytics::DatasetCatalog>, String> {
        let parties = lock(&self.parties);
        let mut out: Vec<(veil_analytics::DatasetCatalog, PartyId)> = Vec::new();
        for (p, c) in parties.iter() {
            for entry in &c.catalog {
                match out.iter().find(|(e, _)| e.name == entry.name) {
                    Some((e, first)) => {
                        let (a, b) = (self.party_name(*first), self.party_name(*p));
                        let difference = e.difference(entry, &a, &b).or_else(|| {
                            (e != entry).then(|| {
                                "the same columns in another order, or one listed twice".into()
                            })
                        });
                        if let Some(difference) = difference {
                            return Err(format!(
                                "{a} and {b} announce different catalogs for dataset {:?}: {difference}; the parties must declare the same columns, types, bounds and domains",
                                entry.name
                            ));
                        }
                    }
                    None => out.push((entry.clone(), *p)),
                }
            }
        }
        Ok(out.into_iter().map(|(e, _)| e).collect())
    }

    /// [`Self::catalogs`] with, for each dataset, the names of the connected parties that
    /// serve it, in the order of their ids.
    pub(crate) fn catalog_view(&self) -> Result<Vec<serde_json::Value>, String> {
        let catalogs = self.catalogs()?;
        let parties = lock(&self.parties);
        Ok(catalogs
            .into_iter()
            .map(|entry| {
                let serving: Vec<String> = parties
                    .iter()
                    .filter(|(_, c)| c.catalog.iter().any(|e| e.name == entry.name))
                    .map(|(p, _)| self.party_name(*p))
                    .collect();
                let mut v = serde_json::to_value(&entry).unwrap_or_default();
                v["parties"] = serving.into();
                v
            })
            .collect())
    }

    /// A party as people know it: its roster name, or its id.
    pub(crate) fn party_name(&self, party: PartyId) -> String {
        match self.roster.party(party) {
            Some(entry) => entry.name.clone(),
            None => party.to_string(),
        }
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
            tracing::warn!(party = %self.party_name(party), %status, "closing party stream");
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

pub(crate) fn next_connection_id(shared: &Shared) -> u64 {
    shared.next_connection.fetch_add(1, Ordering::Relaxed)
}
