//! Running one round of a job: secure aggregation over the parties that accepted, or, for a
//! party releasing its own data alone and for benchmarks, plain vectors. One-round jobs and
//! training steps both run here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;
use veil_governance::audit::Event;
use veil_proto::v1::{CoordinatorEnvelope, RoundPayload, coordinator_envelope::Body};
use veil_protocol::{
    Aggregate, Coordinator, CoordinatorEvent, Error as ProtocolError, PartyId, PartyMessage,
    RoundConfig, SessionId,
};

use super::training::TrainingRound;
use super::{End, Failure, set_state};
use crate::store::{JobRecord, JobState};
use crate::{JobInput, Shared, now_ms};

/// Rounds with more parties than this use the sparse SecAgg+ graph.
const ALL_PAIRS_UP_TO: usize = 16;

/// A round's session fixed at the offer, and the round keys the parties advertised with their
/// acceptance (protocol-encoded `AdvertiseKeys` messages).
pub(super) struct Ahead {
    pub(super) session: [u8; 32],
    pub(super) adverts: BTreeMap<PartyId, Vec<u8>>,
}

/// What a round belongs to.
pub(super) enum RoundOf<'a> {
    /// A training job's step.
    Step(&'a mut TrainingRound),
    /// A one-round job, with the keys advertised with the acceptances if the offer named the
    /// session.
    Job(Option<Ahead>),
}

/// A fresh session for a round of `job_id`.
pub(super) fn new_session(job_id: &str) -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    Sha256::new()
        .chain_update(b"veil/session/v1")
        .chain_update(job_id.as_bytes())
        .chain_update(nonce)
        .finalize()
        .into()
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
    kind: RoundOf<'_>,
) -> Result<Aggregate, End> {
    let (mut training, ahead) = match kind {
        RoundOf::Step(t) => (Some(t), None),
        RoundOf::Job(ahead) => (None, ahead),
    };
    // A training step's progress is its round's report, not the protocol's stages.
    let report_stages = training.is_none();
    let step = training.as_ref().map(|t| t.step.clone());
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
    let params =
        Arc::new(config.validate().map_err(|e| End::Failed(Failure::Parameters(e.to_string())))?);
    // Parties whose stream closed since they accepted (their departure went to the offer
    // loop) are gone from the round's start rather than at its first deadline.
    let mut unreachable = Vec::new();
    for &p in parties {
        let mut start = veil_proto::round::start(&record.id, &params);
        if let Some(fields) = &step {
            fields.apply(&mut start);
        }
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
            tracing::warn!(job = %record.id, party = %shared.party_name(p), error = %e, "round keys from the offer refused");
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
                    return Err(End::Failed(Failure::Round(format!("{e}{left}"))));
                }
            }
        }
        let Some(deadline) = coordinator.poll_timeout() else {
            return Err(End::Failed(Failure::Internal("the round ended without a result")));
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
                            None => tracing::debug!(job = %record.id, party = %shared.party_name(from), error = %e, "ignored a late message"),
                        }
                    }
                }
                Some(JobInput::Departed(p)) => coordinator.handle_departure(p, Instant::now()),
                Some(JobInput::Cancel) => return Err(End::Cancelled),
                Some(JobInput::PsiResult { .. }) => {}
                Some(JobInput::Reply(reply)) if training.is_none() => {
                    // A party of a one-round job that leaves at the round's start says why,
                    // signed: the consumer reads the reason rather than a timeout.
                    if let crate::offer::Decision::Decline(d) = &reply.decision {
                        let from = reply.from;
                        if parties.contains(&from) && reply.signed(&shared.protocol_roster, &record.id) {
                            return Err(End::Failed(Failure::Round(format!("{from} left: {d}"))));
                        }
                    }
                }
                Some(JobInput::Reply(reply)) => {
                    let left = training.as_mut().and_then(|t| t.left(shared, &record.id, &reply));
                    if let Some(p) = left.filter(|p| parties.contains(p)) {
                        coordinator.handle_departure(p, Instant::now());
                    }
                    if let Some(t) = training.as_mut() {
                        t.rejoin(shared, &record.id, &reply);
                    }
                }
                None => return Err(End::Failed(Failure::Internal("the job's channel closed"))),
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
    let step = training.as_ref().map(|t| t.step.clone());
    for &p in parties {
        let mut start = veil_proto::round::plain_start(&record.id, parties, vector_len);
        if let Some(fields) = &step {
            fields.apply(&mut start);
        }
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
                None => return Err(End::Failed(Failure::Internal("the job's channel closed"))),
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
pub(super) fn record_charge(
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
        tracing::error!(job = %job_id, party = %shared.party_name(party), error = %e, "cannot record the party's log head");
    }
}

/// Runs one round over `parties` and returns its sum: plain when `plain` (a party releasing
/// its own data alone, whose secure round of one would reveal the same vector, and plain
/// benchmark jobs), secure otherwise. Fewer contributors than `min` fail the round.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_round(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    parties: &[PartyId],
    min: usize,
    vector_len: usize,
    plain: bool,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
    of: RoundOf<'_>,
) -> Result<Aggregate, End> {
    if !plain {
        return secure_round(shared, record, parties, min, vector_len, inbox, of).await;
    }
    let training = match of {
        RoundOf::Step(t) => Some(t),
        RoundOf::Job(_) => None,
    };
    let aggregate = plain_round(shared, record, parties, vector_len, inbox, training).await?;
    let needed = min.max(1);
    if aggregate.contributors.len() < needed {
        return Err(End::Failed(Failure::TooFewVectors {
            sent: aggregate.contributors.len(),
            parties: parties.len(),
            needed,
        }));
    }
    Ok(aggregate)
}
