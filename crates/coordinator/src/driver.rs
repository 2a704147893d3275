//! One task per job: offer it to the parties that serve its dataset, run the secure round over
//! those that accept, turn the sum into the answer and store it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;
use veil_analytics::{Job, Layout};
use veil_learning::job::{RoundReport, Step, TrainSpec, Training};
use veil_learning::train::Standardizer;
use veil_proto::v1::{
    CoordinatorEnvelope, RoundPayload, RoundStart, TaskEnd, TaskOffer, coordinator_envelope::Body,
};
use veil_protocol::{
    Aggregate, Coordinator, CoordinatorEvent, Error as ProtocolError, PartyId, PartyMessage,
    RoundConfig, SessionId,
};

use veil_governance::audit::Event;
use veil_governance::receipt::{Receipt, result_fingerprint};

use crate::offer::{Accepted, Coverage, Decision, OfferFailure, Offering, Reply};
use crate::store::{JobRecord, JobState, ResultRecord};
use crate::{JobInput, Shared, lock, now_ms};

/// How a job ended without a result.
enum End {
    Failed(String),
    Cancelled,
}

/// Rounds with more parties than this use the sparse SecAgg+ graph.
const ALL_PAIRS_UP_TO: usize = 16;

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
            Err(End::Failed(reason)) => {
                tracing::warn!(job = %record.id, %reason, "job failed");
                set_state(&shared, &mut record, JobState::Failed, reason, None).await;
                (false, reason.clone())
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
    let min = job.min_parties() as usize;
    // A resumed job goes on with the parties of its checkpoint only.
    let resumed_with = resume.as_ref().map(|(_, parties)| parties.clone());
    let serving = || -> Vec<PartyId> {
        shared
            .connected_parties()
            .into_iter()
            .filter(|(_, (datasets, _))| datasets.iter().any(|d| d == dataset))
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
                .filter(|(_, datasets, _)| datasets.iter().any(|d| d == dataset))
                .filter(|(p, _, _)| resumed_with.as_ref().is_none_or(|r| r.contains(p)))
                .map(|(p, _, _)| PartyId(p)),
        ),
        Err(e) => tracing::error!(job = %record.id, error = %e, "cannot list the known parties"),
    }
    let job_hash = job.hash();
    if candidates.len() < min || (record.require_all && candidates.len() < all_serving.len()) {
        // Settled with nobody offered: the coverage names every serving party as offline.
        let nobody = Offering::new(&record.id, &job_hash, min, &all_serving, &[]);
        let (failure, coverage) = match nobody.close(0, record.require_all) {
            Err((OfferFailure::NotAll { serving, missing, why }, coverage)) => {
                (format!("{}", OfferFailure::NotAll { serving, missing, why }), coverage)
            }
            Err((_, coverage)) | Ok((_, coverage)) => (
                format!(
                    "{} connected parties serve dataset {dataset:?}; the job needs at least {min}",
                    candidates.len()
                ),
                coverage,
            ),
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
        .map_err(|e| End::Failed(format!("audit log: {e}")))?;
    let head = offered_entry.head().signed(&record.id, &shared.identity);
    // A one-round secure job's session is fixed at the offer, so that parties advertise their
    // round keys with their acceptance.
    let session = match job {
        Job::Columns(_) => Some(new_session(&record.id)),
        Job::Synthetic(s) if !s.plain => Some(new_session(&record.id)),
        _ => None,
    };
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
                Some(JobInput::Round { .. }) => {}
                None => return Err(End::Failed("internal: the job's channel closed".into())),
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let (accepted, mut coverage) =
        match offering.close(shared.offer_timeout.as_secs(), record.require_all) {
            Ok(settled) => settled,
            Err((failure, coverage)) => {
                set_coverage(shared, record, coverage);
                return Err(End::Failed(failure.to_string()));
            }
        };
    set_coverage(shared, record, coverage.clone());
    let Accepted { parties, min, adverts, next_step, contributions: fingerprints } = accepted;
    let ids: Vec<u32> = parties.iter().map(|p| p.0).collect();
    let started = if matches!(job, Job::Train(_)) { "training started" } else { "round started" };
    set_state(shared, record, JobState::Running, started, Some(&ids)).await;

    let (answer_json, aggregate, took_part, left) = match job {
        Job::Train(spec) => {
            let trained = train(
                shared,
                record,
                spec,
                Cohort { parties, min, offer },
                resume.map(|r| r.0),
                next_step,
                &mut inbox,
            )
            .await?;
            (trained.answer_json, trained.aggregate, trained.took_part, trained.left)
        }
        _ => {
            let ahead = session.map(|session| Ahead { session, adverts });
            let (answer_json, aggregate) =
                one_round(shared, record, job, &parties, min, ahead, &mut inbox).await?;
            let took_part = aggregate.contributors.clone();
            (answer_json, aggregate, took_part, BTreeMap::new())
        }
    };
    coverage.settle(&took_part, &left);
    let (serving, covered) = coverage.counts();
    if record.require_all && covered < serving {
        let missing: Vec<String> =
            coverage.missing().map(|(p, o)| format!("{p} {}", o.describe())).collect();
        set_coverage(shared, record, coverage);
        return Err(End::Failed(format!(
            "the job requires every party that serves the dataset, and {} of {serving} did not \
             contribute: {}; nothing was released",
            serving - covered,
            missing.join("; ")
        )));
    }
    set_coverage(shared, record, coverage);
    let result = ResultRecord {
        job_id: record.id.clone(),
        answer_json,
        contributors: aggregate.contributors.iter().map(|p| p.0).collect(),
        dropped: aggregate.dropped.iter().map(|p| p.0).collect(),
    };
    let detail = format!(
        "finished over {} parties{}",
        result.contributors.len(),
        if result.dropped.is_empty() {
            String::new()
        } else {
            format!(" ({} dropped out)", result.dropped.len())
        }
    );
    let rho = match job {
        Job::Columns(spec) => spec.privacy.as_ref().map_or(0.0, |p| p.rho),
        Job::Train(spec) => spec.rho_total().map_err(|e| End::Failed(e.to_string()))?,
        Job::Synthetic(_) | Job::Sql(_) => 0.0,
    };
    let receipt = Receipt {
        job_id: record.id.clone(),
        job_hash: job_hash.clone(),
        consumer: record.consumer.clone(),
        dataset: dataset.to_string(),
        parties: fingerprints
            .into_iter()
            .filter(|c| result.contributors.contains(&c.party))
            .collect(),
        rho,
        result_sha256: result_fingerprint(&result.answer_json),
        time_ms: now_ms(),
    };
    let receipt_json = serde_json::to_string(&receipt).map_err(|e| End::Failed(e.to_string()))?;
    shared.store.put_receipt(&receipt).map_err(|e| End::Failed(format!("store: {e}")))?;
    shared
        .store
        .audit(Event::ResultReleased { receipt }, now_ms())
        .map_err(|e| End::Failed(format!("audit log: {e}")))?;
    let store = shared.store.clone();
    let stored = result.clone();
    let at = now_ms();
    let detail_stored = detail.clone();
    tokio::task::spawn_blocking(move || store.put_result(&stored, &detail_stored, at))
        .await
        .map_err(|e| End::Failed(format!("store: {e}")))?
        .map_err(|e| End::Failed(format!("store: {e}")))?;
    record.state = JobState::Succeeded;
    record.detail = detail;
    record.updated_ms = at;
    shared.publish(record);

    tracing::info!(job = %record.id, contributors = result.contributors.len(), "job finished");
    Ok(receipt_json)
}

/// A round's session fixed at the offer, and the round keys the parties advertised with their
/// acceptance (protocol-encoded `AdvertiseKeys` messages).
struct Ahead {
    session: [u8; 32],
    adverts: BTreeMap<PartyId, Vec<u8>>,
}

/// What a secure round belongs to.
enum SecureRound<'a> {
    /// A training job's step.
    Step(&'a mut TrainingRound),
    /// A one-round job, with the keys advertised with the acceptances if the offer named the
    /// session.
    Job(Option<Ahead>),
}

/// A fresh session for a round of `job_id`.
fn new_session(job_id: &str) -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    Sha256::new()
        .chain_update(b"veil/session/v1")
        .chain_update(job_id.as_bytes())
        .chain_update(nonce)
        .finalize()
        .into()
}

/// A column-aggregate, SQL or synthetic job: one round, and the answer from its sum.
async fn one_round(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    job: &Job,
    parties: &[PartyId],
    min: usize,
    ahead: Option<Ahead>,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
) -> Result<(String, Aggregate), End> {
    let vector_len = match job {
        Job::Columns(spec) => {
            Layout::new(spec).map_err(|e| End::Failed(e.to_string()))?.vector_len()
        }
        Job::Synthetic(s) => s.dim as usize,
        Job::Sql(_) | Job::Train(_) => {
            return Err(End::Failed("internal: a SQL job reached the driver unplanned".into()));
        }
    };
    // One party releasing its own data (its configuration and the job allow a cohort of one)
    // sends its vector as it is: a secure round of one would reveal the same vector.
    let plain = matches!(job, Job::Synthetic(s) if s.plain) || parties.len() == 1;
    let aggregate = if plain {
        let aggregate = plain_round(shared, record, parties, vector_len, inbox, None).await?;
        let needed = min.max(1);
        if aggregate.contributors.len() < needed {
            return Err(End::Failed(format!(
                "{} of {} parties sent their vector; the job needs at least {needed}",
                aggregate.contributors.len(),
                parties.len()
            )));
        }
        aggregate
    } else {
        secure_round(shared, record, parties, min, vector_len, inbox, SecureRound::Job(ahead))
            .await?
    };

    let answer_json = match job {
        Job::Train(_) => {
            return Err(End::Failed(
                "internal: a training job reached the one-round driver".into(),
            ));
        }
        Job::Columns(spec) => {
            let layout = Layout::new(spec).map_err(|e| End::Failed(e.to_string()))?;
            let answer = layout
                .answer(
                    &aggregate.sum,
                    aggregate.contributors.iter().map(|p| p.0).collect(),
                    aggregate.dropped.iter().map(|p| p.0).collect(),
                )
                .map_err(|e| End::Failed(e.to_string()))?;
            serde_json::to_string(&answer).map_err(|e| End::Failed(e.to_string()))?
        }
        Job::Sql(_) => {
            return Err(End::Failed("internal: a SQL job reached the driver unplanned".into()));
        }
        Job::Synthetic(s) => {
            let mut h = Sha256::new();
            for x in &aggregate.sum {
                h.update(x.to_le_bytes());
            }
            serde_json::json!({
                "dim": s.dim,
                "plain": s.plain,
                "sum_sha256": hex::encode(h.finalize()),
                "contributors": aggregate.contributors.iter().map(|p| p.0).collect::<Vec<_>>(),
            })
            .to_string()
        }
    };
    Ok((answer_json, aggregate))
}

/// The status a misbehaving party's stream is closed with, or `None` to ignore the message
/// (a late one from a party the round no longer waits for).
fn refusal(job: &str, current: Option<veil_protocol::Stage>, e: &ProtocolError) -> Option<Status> {
    let text = format!("job {job}: {e}");
    match e {
        ProtocolError::RoundEnded | ProtocolError::UnexpectedParty(_) => None,
        ProtocolError::UnexpectedMessage { got, .. } if current.is_some_and(|c| *got < c) => None,
        ProtocolError::UnexpectedMessage { .. }
        | ProtocolError::Duplicate { .. }
        | ProtocolError::WrongSession { .. } => Some(Status::failed_precondition(text)),
        ProtocolError::ImpersonatedSender { .. }
        | ProtocolError::BadSignature(_)
        | ProtocolError::NotInRoster(_) => Some(Status::permission_denied(text)),
        _ => Some(Status::invalid_argument(text)),
    }
}

async fn secure_round(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    parties: &[PartyId],
    min: usize,
    vector_len: usize,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
    kind: SecureRound<'_>,
) -> Result<Aggregate, End> {
    let (mut training, ahead) = match kind {
        SecureRound::Step(t) => (Some(t), None),
        SecureRound::Job(ahead) => (None, ahead),
    };
    // A training step's progress is its round's report, not the protocol's stages.
    let report_stages = training.is_none();
    let template = training.as_ref().map(|t| t.start.clone()).unwrap_or_default();
    let (session, adverts) = match ahead {
        Some(a) => (a.session, a.adverts),
        None => (new_session(&record.id), BTreeMap::new()),
    };
    let config = if parties.len() <= ALL_PAIRS_UP_TO {
        RoundConfig::all_pairs(SessionId(session), parties.to_vec(), vector_len)
    } else {
        RoundConfig::sparse(SessionId(session), parties.to_vec(), vector_len)
    };
    let mut config = config.tolerating(shared.max_corrupt);
    config.min_cohort = min.max(2).min(parties.len());
    config.context = Sha256::digest(record.spec_json.as_bytes()).into();
    config.stage_timeout = shared.stage_timeout;
    let params = Arc::new(config.validate().map_err(|e| End::Failed(e.to_string()))?);
    // Parties whose stream closed since they accepted (their departure went to the offer
    // loop) are gone from the round's start rather than at its first deadline.
    let mut unreachable = Vec::new();
    for &p in parties {
        let start = RoundStart {
            job_id: record.id.clone(),
            session: session.to_vec(),
            parties: parties.iter().map(|p| p.0).collect(),
            threshold: params.threshold() as u32,
            neighbours: params.neighbours() as u32,
            min_cohort: params.min_cohort() as u32,
            max_corrupt: params.max_corrupt() as u32,
            vector_len: vector_len as u32,
            plain: false,
            ..template.clone()
        };
        if !shared.send(p, CoordinatorEnvelope { body: Some(Body::Start(start)) }).await {
            unreachable.push(p);
        }
    }
    let mut coordinator = Coordinator::new(params, shared.protocol_roster.clone(), Instant::now());
    let mut charged = BTreeSet::new();
    for p in unreachable {
        coordinator.handle_departure(p, Instant::now());
    }
    // Keys advertised with the acceptances count as this round's advertise-keys stage; a
    // party whose advertisement does not verify is out of the round from its start.
    for (p, bytes) in adverts {
        if !parties.contains(&p) {
            continue;
        }
        let r = PartyMessage::decode(&bytes)
            .map_err(ProtocolError::from)
            .and_then(|m| coordinator.handle_message(p, m, Instant::now()));
        if let Err(e) = r {
            tracing::warn!(job = %record.id, party = %p, error = %e, "round keys from the offer refused");
            if let Some(status) = refusal(&record.id, coordinator.stage(), &e) {
                shared.disconnect(p, status).await;
            }
            coordinator.handle_departure(p, Instant::now());
        }
    }
    loop {
        while let Some((to, msg)) = coordinator.poll_transmit() {
            let payload = RoundPayload {
                job_id: record.id.clone(),
                message: msg.encode(),
                ..Default::default()
            };
            shared.send(to, CoordinatorEnvelope { body: Some(Body::Round(payload)) }).await;
        }
        while let Some(event) = coordinator.poll_event() {
            match event {
                CoordinatorEvent::StageClosed { .. } if !report_stages => {}
                CoordinatorEvent::StageClosed { stage, responders } => {
                    let detail = format!("round: {stage} done with {responders} parties");
                    set_state(shared, record, JobState::Running, &detail, None).await;
                }
                CoordinatorEvent::Finished(aggregate) => return Ok(aggregate),
                CoordinatorEvent::Aborted(e) => {
                    let left = training
                        .as_ref()
                        .map(|t| t.left.values().cloned().collect::<Vec<_>>().join("; "))
                        .unwrap_or_default();
                    let left = if left.is_empty() { left } else { format!(" ({left})") };
                    return Err(End::Failed(format!("the secure round stopped: {e}{left}")));
                }
            }
        }
        let Some(deadline) = coordinator.poll_timeout() else {
            return Err(End::Failed("internal: the round ended without a result".into()));
        };
        tokio::select! {
            input = inbox.recv() => match input {
                Some(JobInput::Round { from, bytes, head }) => {
                    record_charge(shared, &record.id, from, head, &mut charged);
                    let r = PartyMessage::decode(&bytes)
                        .map_err(ProtocolError::from)
                        .and_then(|m| coordinator.handle_message(from, m, Instant::now()));
                    if let Err(e) = r {
                        match refusal(&record.id, coordinator.stage(), &e) {
                            Some(status) => shared.disconnect(from, status).await,
                            None => tracing::debug!(job = %record.id, %from, error = %e, "ignored a late message"),
                        }
                    }
                }
                Some(JobInput::Departed(p)) => coordinator.handle_departure(p, Instant::now()),
                Some(JobInput::Cancel) => return Err(End::Cancelled),
                Some(JobInput::Reply(reply)) => {
                    let left = training.as_mut().and_then(|t| t.left(shared, &record.id, &reply));
                    if let Some(p) = left.filter(|p| parties.contains(p)) {
                        coordinator.handle_departure(p, Instant::now());
                    }
                    if let Some(t) = training.as_mut() {
                        t.rejoin(shared, &record.id, &reply);
                    }
                }
                None => return Err(End::Failed("internal: the job's channel closed".into())),
            },
            _ = tokio::time::sleep_until(deadline.into()) => coordinator.handle_timeout(Instant::now()),
        }
    }
}

/// An unmasked round, for benchmarks only: parties started with the dangerous benchmark flag
/// send their vectors in the clear.
async fn plain_round(
    shared: &Shared,
    record: &JobRecord,
    parties: &[PartyId],
    vector_len: usize,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
    mut training: Option<&mut TrainingRound>,
) -> Result<Aggregate, End> {
    let template = training.as_ref().map(|t| t.start.clone()).unwrap_or_default();
    for &p in parties {
        let start = RoundStart {
            job_id: record.id.clone(),
            session: Vec::new(),
            parties: parties.iter().map(|p| p.0).collect(),
            threshold: 0,
            neighbours: 0,
            min_cohort: 0,
            vector_len: vector_len as u32,
            plain: true,
            ..template.clone()
        };
        shared.send(p, CoordinatorEnvelope { body: Some(Body::Start(start)) }).await;
    }
    let mut waiting: BTreeSet<PartyId> = parties.iter().copied().collect();
    let mut charged = BTreeSet::new();
    let mut contributors = Vec::new();
    let mut sum = vec![0u64; vector_len];
    let deadline = tokio::time::Instant::now() + shared.stage_timeout;
    while !waiting.is_empty() {
        tokio::select! {
            input = inbox.recv() => match input {
                Some(JobInput::Round { from, bytes, head }) if waiting.contains(&from) => {
                    record_charge(shared, &record.id, from, head, &mut charged);
                    if bytes.len() != vector_len * 8 {
                        shared.disconnect(from, Status::invalid_argument(format!(
                            "job {}: a plain vector of {} bytes, expected {}", record.id, bytes.len(), vector_len * 8
                        ))).await;
                        continue;
                    }
                    for (s, c) in sum.iter_mut().zip(bytes.chunks_exact(8)) {
                        *s = s.wrapping_add(u64::from_le_bytes(c.try_into().expect("8-byte chunks")));
                    }
                    waiting.remove(&from);
                    contributors.push(from);
                }
                Some(JobInput::Departed(p)) => { waiting.remove(&p); }
                Some(JobInput::Cancel) => return Err(End::Cancelled),
                Some(JobInput::Reply(reply)) => {
                    if let Some(p) = training.as_mut().and_then(|t| t.left(shared, &record.id, &reply)) {
                        waiting.remove(&p);
                    }
                    if let Some(t) = training.as_mut() {
                        t.rejoin(shared, &record.id, &reply);
                    }
                }
                Some(_) => {}
                None => return Err(End::Failed("internal: the job's channel closed".into())),
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    contributors.sort();
    let dropped = parties.iter().copied().filter(|p| !contributors.contains(p)).collect();
    Ok(Aggregate { sum, contributors, dropped })
}

/// Records in the coordinator's log the head a party sent with its first round message of a
/// job (after its charge), once per party and round.
fn record_charge(
    shared: &Shared,
    job_id: &str,
    party: PartyId,
    head: Option<veil_governance::audit::Head>,
    charged: &mut BTreeSet<PartyId>,
) {
    let Some(head) = head else { return };
    if !charged.insert(party) {
        return;
    }
    let event = Event::PartyCharged { job_id: job_id.to_string(), party: party.0, head };
    if let Err(e) = shared.store.audit(event, now_ms()) {
        tracing::error!(job = %job_id, %party, error = %e, "cannot record the party's log head");
    }
}

/// A training step's round: the round start's training fields, why parties left it, and the
/// parties that accepted the job again during it.
struct TrainingRound {
    start: RoundStart,
    /// Signed reasons of parties that left the step.
    left: BTreeMap<PartyId, String>,
    /// Parties whose signed acceptance of the job, offered again, came during the step.
    rejoined: Vec<PartyId>,
    /// The job's hash, which an acceptance must name.
    job_hash: String,
}

impl TrainingRound {
    /// Takes a signed acceptance of the job (offered again to a party of its cohort that came
    /// back) as that party's return from the next step on.
    fn rejoin(&mut self, shared: &Shared, job_id: &str, reply: &Reply) {
        if reply.decision == Decision::Accept
            && reply.job_hash == self.job_hash
            && reply.head.is_some()
            && reply.signed(&shared.protocol_roster, job_id)
        {
            self.rejoined.push(reply.from);
        }
    }

    /// Takes a signed decline from a party in the round as its departure, with the reason.
    fn left(&mut self, shared: &Shared, job_id: &str, reply: &Reply) -> Option<PartyId> {
        let Decision::Decline(decline) = &reply.decision else { return None };
        if !reply.signed(&shared.protocol_roster, job_id) {
            return None;
        }
        self.left.insert(reply.from, decline.to_string());
        Some(reply.from)
    }
}

/// What a training job produced.
struct Trained {
    answer_json: String,
    /// The last step's contributors, and every party that dropped out on the way.
    aggregate: Aggregate,
    /// Every party that contributed to a step.
    took_part: Vec<PartyId>,
    /// Why parties left, in their signed words (the last reason each gave).
    left: BTreeMap<PartyId, String>,
}

/// Runs a training job's steps from `resume` (a checkpoint) or from the start, checkpointing
/// after every step and streaming each round's report as progress.
/// The parties that accepted a job, the largest minimum cohort among them and the job, and the
/// job's offer (to make again to a party of the cohort that comes back).
struct Cohort {
    parties: Vec<PartyId>,
    min: usize,
    offer: TaskOffer,
}

async fn train(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    spec: &TrainSpec,
    cohort: Cohort,
    resume: Option<Training>,
    next_step: u64,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
) -> Result<Trained, End> {
    let failed = |e: veil_learning::Error| End::Failed(e.to_string());
    let mut state = match resume {
        Some(s) => {
            check_stored_rounds(shared, &record.id, &s).await?;
            s
        }
        None => Training::new(spec).map_err(failed)?,
    };
    // Steps the parties contributed to before a restart lost them run no more.
    let lost = state.skip_lost(spec, next_step).map_err(failed)?;
    if !lost.is_empty() {
        tracing::warn!(job = %record.id, ?lost, "steps lost in the coordinator's restart are skipped");
    }
    if spec.standardizes_by_bounds() && state.standardizer.is_none() {
        state.standardizer = Some(declared_standardizer(shared, spec)?);
    }
    let rounds = spec.rounds_to_run().map_err(failed)?;
    let Cohort { parties: mut live, min, offer } = cohort;
    let job_hash = hex::encode(Sha256::digest(offer.spec_json.as_bytes()));
    let cohort_at_start: BTreeSet<PartyId> = live.iter().copied().collect();
    let mut offered_again: BTreeSet<PartyId> = BTreeSet::new();
    let mut dropped = BTreeSet::new();
    let mut contributors = Vec::new();
    let mut took_part: BTreeSet<PartyId> = BTreeSet::new();
    let mut left: BTreeMap<PartyId, String> = BTreeMap::new();
    while let Some(step) = state.next_step(spec) {
        // Parties that disconnected while not sampled are gone too.
        let connected = shared.connected_parties();
        live.retain(|p| connected.contains_key(p));
        // A party of the job's cohort that is connected again (after a dropout or a restart)
        // is offered the job again; if it accepts, it takes part from the next step on.
        offered_again.retain(|p| connected.contains_key(p));
        for &p in &cohort_at_start {
            if !live.contains(&p) && !offered_again.contains(&p) && connected.contains_key(&p) {
                let envelope = CoordinatorEnvelope { body: Some(Body::Offer(offer.clone())) };
                if shared.send(p, envelope).await {
                    offered_again.insert(p);
                }
            }
        }
        let ids: Vec<u32> = live.iter().map(|p| p.0).collect();
        let cohort: Vec<PartyId> = state
            .cohort(spec, step, &ids)
            .map_err(|e| {
                let why = if left.is_empty() {
                    String::new()
                } else {
                    let reasons: Vec<String> =
                        left.iter().map(|(p, r)| format!("{p} left: {r}")).collect();
                    format!(" ({})", reasons.join("; "))
                };
                End::Failed(format!("{step}: {e}{why}"))
            })?
            .into_iter()
            .map(PartyId)
            .collect();
        let standardizer =
            state.standardizer.clone().unwrap_or(Standardizer { mean: vec![], scale: vec![] });
        let start = RoundStart {
            step: step.code(),
            parameters: if step == Step::Moments {
                Vec::new()
            } else {
                state.server.model.parameters.clone()
            },
            mean: standardizer.mean,
            scale: standardizer.scale,
            ..RoundStart::default()
        };
        let len = spec.vector_len(step).map_err(failed)?;
        let min = min.max(spec.min_parties as usize);
        let mut round = TrainingRound {
            start,
            left: BTreeMap::new(),
            rejoined: Vec::new(),
            job_hash: job_hash.clone(),
        };
        let aggregate = if spec.plain {
            plain_round(shared, record, &cohort, len, inbox, Some(&mut round)).await?
        } else {
            let step = SecureRound::Step(&mut round);
            secure_round(shared, record, &cohort, min, len, inbox, step).await?
        };
        left.append(&mut round.left);
        took_part.extend(aggregate.contributors.iter().copied());
        for p in &aggregate.dropped {
            live.retain(|q| q != p);
            dropped.insert(*p);
        }
        for p in std::mem::take(&mut round.rejoined) {
            if offered_again.remove(&p) && !live.contains(&p) {
                tracing::info!(job = %record.id, party = %p, "a party rejoined the training job");
                live.push(p);
                live.sort_unstable();
            }
        }
        let report = state
            .absorb(spec, step, &aggregate.sum, aggregate.contributors.len())
            .map_err(|e| End::Failed(format!("{step}: {e}")))?;
        contributors = aggregate.contributors;
        checkpoint(shared, &record.id, &mut state, &live).await?;
        let detail = match &report {
            Some(r) => {
                record.progress_json = serde_json::to_string(r).unwrap_or_default();
                describe_round(r, rounds)
            }
            None => format!("{step} done over {} parties", contributors.len()),
        };
        set_state(shared, record, JobState::Running, &detail, None).await;
    }
    if let Some(a) = &state.accountant {
        if (state.history.len() as u32) < spec.rounds {
            state.stopped_early = Some(format!(
                "stopped after {} of {} rounds: the budget ρ = {} pays for no more at ρ = {:.4} per round",
                state.history.len(),
                spec.rounds,
                a.budget,
                a.per_round
            ));
        }
    }
    // Rounds lost in a restart after the last step are stored before the answer reads them.
    if !state.history.unsaved().is_empty() {
        checkpoint(shared, &record.id, &mut state, &live).await?;
    }
    let history = stored_rounds(shared, &record.id, &state).await?;
    let file = state.model_file(spec, contributors.len() as u32).map_err(failed)?;
    let answer = serde_json::json!({
        "kind": "train",
        "model": file,
        "rounds": history,
        "final": state.final_metrics,
        "epsilon": state.accountant.as_ref().map(veil_learning::privacy::Accountant::epsilon),
        "delta": spec.privacy.as_ref().map(|p| p.delta),
        "stopped_early": state.stopped_early,
    });
    let answer_json = serde_json::to_string(&answer).map_err(|e| End::Failed(e.to_string()))?;
    Ok(Trained {
        answer_json,
        aggregate: Aggregate {
            sum: Vec::new(),
            contributors,
            dropped: dropped.into_iter().collect(),
        },
        took_part: took_part.into_iter().collect(),
        left,
    })
}

/// Stores a training job's state after a step, with the reports of the rounds finished since
/// the last checkpoint appended to their own table in the same transaction; the state keeps
/// none of them, so every checkpoint is the same size.
async fn checkpoint(
    shared: &Shared,
    job_id: &str,
    state: &mut Training,
    live: &[PartyId],
) -> Result<(), End> {
    let rounds = state
        .history
        .take_unsaved()
        .iter()
        .map(|r| Ok((r.round, serde_json::to_string(r)?)))
        .collect::<Result<Vec<_>, serde_json::Error>>()
        .map_err(|e| End::Failed(e.to_string()))?;
    let checkpoint = serde_json::to_string(&state).map_err(|e| End::Failed(e.to_string()))?;
    let store = shared.store.clone();
    let (id, live_ids, at) =
        (job_id.to_string(), live.iter().map(|p| p.0).collect::<Vec<_>>(), now_ms());
    tokio::task::spawn_blocking(move || {
        store.put_checkpoint(&id, &checkpoint, &rounds, &live_ids, at)
    })
    .await
    .map_err(|e| End::Failed(format!("store: {e}")))?
    .map_err(|e| End::Failed(format!("checkpoint: {e}")))
}

/// Checks that a resumed job's stored round reports are those its checkpoint counts, less the
/// ones it still holds to store.
async fn check_stored_rounds(shared: &Shared, job_id: &str, state: &Training) -> Result<(), End> {
    let store = shared.store.clone();
    let id = job_id.to_string();
    let stored = tokio::task::spawn_blocking(move || store.training_round_count(&id))
        .await
        .map_err(|e| End::Failed(format!("store: {e}")))?
        .map_err(|e| End::Failed(format!("round reports: {e}")))?;
    let expected = (state.history.len() - state.history.unsaved().len()) as u64;
    if stored != expected {
        return Err(End::Failed(format!(
            "cannot resume: the checkpoint counts {expected} stored round reports and the store holds {stored}"
        )));
    }
    Ok(())
}

/// A training job's round reports, rebuilt from the store, in round order: as many as its
/// state counts.
async fn stored_rounds(
    shared: &Shared,
    job_id: &str,
    state: &Training,
) -> Result<Vec<RoundReport>, End> {
    let store = shared.store.clone();
    let id = job_id.to_string();
    let rows = tokio::task::spawn_blocking(move || store.training_rounds(&id))
        .await
        .map_err(|e| End::Failed(format!("store: {e}")))?
        .map_err(|e| End::Failed(format!("round reports: {e}")))?;
    let reports = rows
        .iter()
        .map(|r| serde_json::from_str::<RoundReport>(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| End::Failed(format!("a stored round report does not parse: {e}")))?;
    let numbered = reports.iter().zip(0..).all(|(r, round)| r.round == round);
    if reports.len() != state.history.len() || !numbered {
        return Err(End::Failed(format!(
            "{} round reports are stored for a job that finished {} rounds",
            reports.len(),
            state.history.len()
        )));
    }
    Ok(reports)
}

/// One line of progress for a finished round.
fn describe_round(r: &RoundReport, rounds: u32) -> String {
    let mut line = format!("round {}/{rounds} over {} parties", r.round + 1, r.contributors);
    if let Some(m) = &r.metrics {
        line += &format!(": held-out loss {:.4}", m.loss);
        if let Some(a) = m.accuracy {
            line += &format!(", accuracy {a:.4}");
        }
        if let Some(a) = m.auc {
            line += &format!(", AUC {a:.4}");
        }
    }
    if let Some(e) = r.epsilon {
        line += &format!(", ε = {e:.3} spent");
    }
    line
}

/// The standardisation from the bounds the parties declare for the job's features.
fn declared_standardizer(shared: &Shared, spec: &TrainSpec) -> Result<Standardizer, End> {
    let catalogs = shared.catalogs().map_err(End::Failed)?;
    let catalog = catalogs.iter().find(|c| c.name == spec.dataset).ok_or_else(|| {
        End::Failed(format!("no connected party announces dataset {:?}", spec.dataset))
    })?;
    let bounds = spec
        .features
        .iter()
        .map(|f| {
            catalog.columns.iter().find(|c| &c.name == f).and_then(|c| c.bounds).ok_or_else(|| {
                End::Failed(format!(
                    "a differentially private job standardises with declared bounds, and feature {f:?} has none: declare its bounds at the parties or set standardize = false"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Standardizer::from_bounds(&bounds).map_err(|e| End::Failed(e.to_string()))
}
