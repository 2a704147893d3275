//! A job's life, one task per job: offer it to the parties that serve its dataset ([`Offering`]),
//! run its round or rounds over those that accept ([`round`], [`training`]), and release the
//! answer with its receipt ([`release`]). What each kind of job does is its [`kinds`] entry's;
//! the driver never matches on kinds.

mod join;
mod psi;
mod release;
mod round;
mod training;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use veil_analytics::Job;
use veil_learning::job::Training;
use veil_proto::v1::{CoordinatorEnvelope, TaskEnd, TaskOffer, coordinator_envelope::Body};
use veil_protocol::{Aggregate, PartyId};

use veil_governance::audit::Event;

use self::release::Release;
use self::round::{Ahead, RoundOf, new_session, run_round};
use crate::kinds::{self, Kind, KindError};
use crate::offer::{Accepted, Coverage, OfferFailure, Offering};
use crate::store::{JobRecord, JobState};
use crate::{JobInput, Shared, lock, now_ms};

/// Why a job ended without an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Its offer did not gather the parties it needs.
    #[error(transparent)]
    Offer(#[from] OfferFailure),
    /// Too few connected parties serve its dataset.
    #[error(
        "{connected} connected parties serve dataset {dataset:?}; the job needs at least {needed}"
    )]
    TooFewConnected {
        /// Connected parties serving the dataset.
        connected: usize,
        /// The dataset.
        dataset: String,
        /// Parties the job needs.
        needed: usize,
    },
    /// The consumer asked for every serving party, and some did not contribute.
    #[error(
        "the job requires every party that serves the dataset, and {missing} of {serving} did not contribute: {why}; nothing was released"
    )]
    NotAllContributed {
        /// Parties serving the dataset.
        serving: usize,
        /// Parties that did not contribute.
        missing: usize,
        /// What became of them.
        why: String,
    },
    /// The job cannot run as its kind says, or its answer cannot be read off the sum.
    #[error(transparent)]
    Kind(#[from] KindError),
    /// The round's parameters are unsafe (too few parties for the collusion bound, say).
    #[error("{0}")]
    Parameters(String),
    /// The secure round stopped.
    #[error("the secure round stopped: {0}")]
    Round(String),
    /// A plain round collected too few vectors.
    #[error("{sent} of {parties} parties sent their vector; the job needs at least {needed}")]
    TooFewVectors {
        /// Vectors received.
        sent: usize,
        /// Parties in the round.
        parties: usize,
        /// Vectors needed.
        needed: usize,
    },
    /// A training job stopped.
    #[error("{0}")]
    Training(String),
    /// An intersection stopped.
    #[error("the intersection stopped: {0}")]
    Psi(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The audit log failed.
    #[error("audit log: {0}")]
    Audit(String),
    /// A state the driver never reaches.
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// How a job ended without an answer.
enum End {
    Failed(Failure),
    Cancelled,
}

impl End {
    /// A training job's failure, with its reason.
    fn training(reason: impl ToString) -> End {
        End::Failed(Failure::Training(reason.to_string()))
    }
}

/// Starts the job's task.
pub(crate) fn start(
    shared: Arc<Shared>,
    record: JobRecord,
    job: Job,
    resume: Option<(Training, Vec<u32>)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    lock(&shared.jobs).insert(record.id.clone(), tx);
    tokio::spawn(async move {
        let mut record = record;
        let mut offered = Vec::new();
        let outcome = run(&shared, &mut record, &job, rx, &mut offered, resume).await;
        lock(&shared.jobs).remove(&record.id);
        let mut receipt_json = String::new();
        let (succeeded, reason) = match &outcome {
            Ok(receipt) => {
                receipt_json = receipt.clone();
                (true, String::new())
            }
            Err(End::Failed(failure)) => {
                let reason = failure.to_string();
                tracing::warn!(job = %record.id, %reason, "job failed");
                set_state(&shared, &mut record, JobState::Failed, &reason, None).await;
                (false, reason)
            }
            Err(End::Cancelled) => {
                set_state(
                    &shared,
                    &mut record,
                    JobState::Cancelled,
                    "cancelled by its consumer",
                    None,
                )
                .await;
                (false, "cancelled".into())
            }
        };
        for p in offered {
            let end = TaskEnd {
                job_id: record.id.clone(),
                succeeded,
                reason: reason.clone(),
                receipt_json: receipt_json.clone(),
            };
            shared.send(p, CoordinatorEnvelope { body: Some(Body::End(end)) }).await;
        }
    });
}

/// Records who a job covers, in the job and its stored row.
fn set_coverage(shared: &Shared, record: &mut JobRecord, coverage: Coverage) {
    if let Err(e) = shared.store.set_coverage(&record.id, &coverage) {
        tracing::error!(job = %record.id, error = %e, "cannot record who the job covers");
    }
    record.coverage = coverage;
}

/// Records a job's new state: published to watchers at once; progress is stored in the
/// background, an end state synchronously.
async fn set_state(
    shared: &Arc<Shared>,
    job: &mut JobRecord,
    state: JobState,
    detail: &str,
    parties: Option<&[u32]>,
) {
    job.state = state;
    job.detail = detail.to_string();
    if let Some(p) = parties {
        job.parties = p.to_vec();
    }
    job.updated_ms = now_ms();
    if !state.is_final() {
        shared.progress(job);
        return;
    }
    let store = shared.store.clone();
    let j = job.clone();
    let written = tokio::task::spawn_blocking(move || {
        store.update_job(&j.id, j.state, &j.detail, &j.parties, j.updated_ms)
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::error!(job = %job.id, "cannot record the job's end");
    }
    shared.publish(job);
}

async fn run(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    job: &Job,
    mut inbox: mpsc::UnboundedReceiver<JobInput>,
    offered: &mut Vec<PartyId>,
    resume: Option<(Training, Vec<u32>)>,
) -> Result<String, End> {
    let dataset = job.dataset();
    let datasets = job.datasets();
    let min = job.min_parties() as usize;
    // A resumed job goes on with the parties of its checkpoint only.
    let resumed_with = resume.as_ref().map(|(_, parties)| parties.clone());
    let serving = || -> Vec<PartyId> {
        shared
            .connected_parties()
            .into_iter()
            .filter(|(_, (served, _))| served.iter().any(|d| datasets.contains(&d.as_str())))
            .filter(|(p, _)| resumed_with.as_ref().is_none_or(|r| r.contains(&p.0)))
            .map(|(p, _)| p)
            .collect()
    };
    let mut candidates = serving();
    if let Some(cohort) = &resumed_with {
        // After a restart the parties reconnect with backoff: the job waits for its whole
        // cohort, up to the offer timeout, rather than leaving out for good a party that is a
        // moment late.
        let deadline = tokio::time::Instant::now() + shared.offer_timeout;
        while candidates.len() < cohort.len() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            candidates = serving();
        }
    }
    // Every party known to serve the dataset, connected or not: the answer says what became
    // of each.
    let mut all_serving: BTreeSet<PartyId> = candidates.iter().copied().collect();
    match shared.store.parties() {
        Ok(known) => all_serving.extend(
            known
                .into_iter()
                .filter(|(_, served, _)| served.iter().any(|d| datasets.contains(&d.as_str())))
                .filter(|(p, _, _)| resumed_with.as_ref().is_none_or(|r| r.contains(p)))
                .map(|(p, _, _)| PartyId(p)),
        ),
        Err(e) => tracing::error!(job = %record.id, error = %e, "cannot list the known parties"),
    }
    let job_hash = job.hash();
    let kind = kinds::of(job).map_err(|e| End::Failed(e.into()))?;
    if candidates.len() < min || (record.require_all && candidates.len() < all_serving.len()) {
        // Settled with nobody offered: the coverage names every serving party as offline.
        let nobody = Offering::new(&record.id, &job_hash, min, &all_serving, &[]);
        let (failure, coverage) = match nobody.close(0, record.require_all) {
            Err((failure @ OfferFailure::NotAll { .. }, coverage)) => (failure.into(), coverage),
            Err((_, coverage)) | Ok((_, coverage)) => {
                let connected = candidates.len();
                let dataset = dataset.to_string();
                (Failure::TooFewConnected { connected, dataset, needed: min }, coverage)
            }
        };
        set_coverage(shared, record, coverage);
        return Err(End::Failed(failure));
    }
    set_state(
        shared,
        record,
        JobState::Offering,
        &format!("offered to {} parties", candidates.len()),
        Some(&candidates.iter().map(|p| p.0).collect::<Vec<_>>()),
    )
    .await;
    let offered_entry = shared
        .store
        .audit(
            Event::JobOffered {
                job_id: record.id.clone(),
                job_hash: job_hash.clone(),
                consumer: record.consumer.clone(),
                coordinator_head: None,
            },
            now_ms(),
        )
        .map_err(|e| End::Failed(Failure::Audit(e.to_string())))?;
    let head = offered_entry.head().signed(&record.id, &shared.identity);
    // A one-round secure job's session is fixed at the offer, so that parties advertise their
    // round keys with their acceptance.
    let session = kind.session_at_offer().then(|| new_session(&record.id));
    // The offer; a training job makes it again to a party of its cohort that comes back.
    let offer = TaskOffer {
        job_id: record.id.clone(),
        spec_json: record.spec_json.clone(),
        consumer: record.consumer.clone(),
        coordinator_head_seq: head.seq,
        coordinator_head_hash: head.hash.clone(),
        coordinator_head_signature: head.signature.clone().unwrap_or_default(),
        session: Vec::new(),
        consumer_signature: hex::decode(&record.signature).unwrap_or_default(),
    };
    for &p in &candidates {
        let offer =
            TaskOffer { session: session.map(|s| s.to_vec()).unwrap_or_default(), ..offer.clone() };
        if shared.send(p, CoordinatorEnvelope { body: Some(Body::Offer(offer)) }).await {
            offered.push(p);
        }
    }
    let mut offering = Offering::new(&record.id, &job_hash, min, &all_serving, offered);
    let deadline = tokio::time::Instant::now() + shared.offer_timeout;
    while !offering.is_settled() {
        tokio::select! {
            input = inbox.recv() => match input {
                Some(JobInput::Reply(reply)) => offering.reply(&shared.protocol_roster, *reply),
                Some(JobInput::Departed(p)) => offering.departed(p),
                Some(JobInput::Cancel) => return Err(End::Cancelled),
                Some(JobInput::Round { .. } | JobInput::PsiResult { .. }) => {}
                None => return Err(End::Failed(Failure::Internal("the job's channel closed"))),
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let (accepted, mut coverage) =
        match offering.close(shared.offer_timeout.as_secs(), record.require_all) {
            Ok(settled) => settled,
            Err((failure, coverage)) => {
                set_coverage(shared, record, coverage);
                return Err(End::Failed(failure.into()));
            }
        };
    set_coverage(shared, record, coverage.clone());
    let Accepted { parties, min, adverts, next_step, contributions: fingerprints } = accepted;
    let ids: Vec<u32> = parties.iter().map(|p| p.0).collect();
    let started = match kind {
        Kind::Train(_) => "training started",
        Kind::Psi(_) => "intersection started",
        Kind::Join(_) => "join started",
        Kind::Round(_) => "round started",
    };
    set_state(shared, record, JobState::Running, started, Some(&ids)).await;

    let (answer_json, aggregate, took_part, left) = match &kind {
        Kind::Train(spec) => {
            let trained = training::train(
                shared,
                record,
                spec,
                training::Cohort { parties, min, offer },
                resume.map(|r| r.0),
                next_step,
                &mut inbox,
            )
            .await?;
            (trained.answer_json, trained.aggregate, trained.took_part, trained.left)
        }
        Kind::Psi(spec) => {
            let (answer_json, took_part) =
                psi::intersect(shared, record, spec, &parties, &mut inbox).await?;
            let aggregate =
                Aggregate { sum: Vec::new(), contributors: took_part.clone(), dropped: Vec::new() };
            (answer_json, aggregate, took_part, BTreeMap::new())
        }
        Kind::Join(spec) => {
            let aggregate = join::join(shared, record, spec, &parties, &mut inbox).await?;
            let round = kinds::join_round(spec).map_err(|e| End::Failed(e.into()))?;
            let answer_json = round.answer(&aggregate).map_err(|e| End::Failed(e.into()))?;
            let took_part = aggregate.contributors.clone();
            (answer_json, aggregate, took_part, BTreeMap::new())
        }
        Kind::Round(round) => {
            let ahead = session.map(|session| Ahead { session, adverts });
            let len = round.vector_len().map_err(|e| End::Failed(e.into()))?;
            // One party releasing its own data (its configuration and the job allow a cohort
            // of one) sends its vector as it is: a secure round of one would reveal it anyway.
            let plain = round.plain() || parties.len() == 1;
            let of = RoundOf::Job(ahead);
            let aggregate =
                run_round(shared, record, &parties, min, len, plain, &mut inbox, of).await?;
            let answer_json = round.answer(&aggregate).map_err(|e| End::Failed(e.into()))?;
            let took_part = aggregate.contributors.clone();
            (answer_json, aggregate, took_part, BTreeMap::new())
        }
    };
    coverage.settle(&took_part, &left);
    let (serving, covered) = coverage.counts();
    if record.require_all && covered < serving {
        let why: Vec<String> =
            coverage.missing().map(|(p, o)| format!("{p} {}", o.describe())).collect();
        set_coverage(shared, record, coverage);
        let (missing, why) = (serving - covered, why.join("; "));
        return Err(End::Failed(Failure::NotAllContributed { serving, missing, why }));
    }
    set_coverage(shared, record, coverage);
    let rho = kind.rho().map_err(|e| End::Failed(e.into()))?;
    let released = Release { job_hash, dataset, rho, contributions: fingerprints };
    release::release(shared, record, released, answer_json, &aggregate).await
}
