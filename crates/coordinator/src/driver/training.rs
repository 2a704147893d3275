//! A training job: its steps, each one round, checkpointed after every step so that a
//! restarted coordinator resumes; parties of its cohort that come back are offered it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use veil_learning::job::{RoundReport, Step, TrainSpec, Training};
use veil_learning::train::Standardizer;
use veil_proto::round::StepFields;
use veil_proto::v1::{CoordinatorEnvelope, TaskOffer, coordinator_envelope::Body};
use veil_protocol::{Aggregate, PartyId};

use super::round::{RoundOf, run_round};
use super::{End, Failure, set_state};
use crate::offer::{Decision, Reply};
use crate::store::{JobRecord, JobState};
use crate::{JobInput, Shared, now_ms};

/// A training step's round: the round start's training fields, why parties left it, and the
/// parties that accepted the job again during it.
pub(super) struct TrainingRound {
    pub(super) step: StepFields,
    /// Signed reasons of parties that left the step.
    pub(super) left: BTreeMap<PartyId, String>,
    /// Parties whose signed acceptance of the job, offered again, came during the step.
    rejoined: Vec<PartyId>,
    /// The job's hash, which an acceptance must name.
    job_hash: String,
}

impl TrainingRound {
    /// Takes a signed acceptance of the job (offered again to a party of its cohort that came
    /// back) as that party's return from the next step on.
    pub(super) fn rejoin(&mut self, shared: &Shared, job_id: &str, reply: &Reply) {
        if reply.decision == Decision::Accept
            && reply.job_hash == self.job_hash
            && reply.head.is_some()
            && reply.signed(&shared.protocol_roster, job_id)
        {
            self.rejoined.push(reply.from);
        }
    }

    /// Takes a signed decline from a party in the round as its departure, with the reason.
    pub(super) fn left(&mut self, shared: &Shared, job_id: &str, reply: &Reply) -> Option<PartyId> {
        let Decision::Decline(decline) = &reply.decision else { return None };
        if !reply.signed(&shared.protocol_roster, job_id) {
            return None;
        }
        self.left.insert(reply.from, decline.to_string());
        Some(reply.from)
    }
}

/// What a training job produced.
pub(super) struct Trained {
    pub(super) answer_json: String,
    /// The last step's contributors, and every party that dropped out on the way.
    pub(super) aggregate: Aggregate,
    /// Every party that contributed to a step.
    pub(super) took_part: Vec<PartyId>,
    /// Why parties left, in their signed words (the last reason each gave).
    pub(super) left: BTreeMap<PartyId, String>,
}

/// The parties that accepted a job, the largest minimum cohort among them and the job, and the
/// job's offer (to make again to a party of the cohort that comes back).
pub(super) struct Cohort {
    pub(super) parties: Vec<PartyId>,
    pub(super) min: usize,
    pub(super) offer: TaskOffer,
}

/// Runs a training job's steps from `resume` (a checkpoint) or from the start, checkpointing
/// after every step and streaming each round's report as progress.
pub(super) async fn train(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    spec: &TrainSpec,
    cohort: Cohort,
    resume: Option<Training>,
    next_step: u64,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
) -> Result<Trained, End> {
    let failed = |e: veil_learning::Error| End::training(e.to_string());
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
                End::training(format!("{step}: {e}{why}"))
            })?
            .into_iter()
            .map(PartyId)
            .collect();
        let standardizer =
            state.standardizer.clone().unwrap_or(Standardizer { mean: vec![], scale: vec![] });
        let fields = StepFields {
            step,
            parameters: if step == Step::Moments {
                Vec::new()
            } else {
                state.server.model.parameters.clone()
            },
            mean: standardizer.mean,
            scale: standardizer.scale,
        };
        let len = spec.vector_len(step).map_err(failed)?;
        let min = min.max(spec.min_parties as usize);
        let mut round = TrainingRound {
            step: fields,
            left: BTreeMap::new(),
            rejoined: Vec::new(),
            job_hash: job_hash.clone(),
        };
        let of = RoundOf::Step(&mut round);
        let aggregate = run_round(shared, record, &cohort, min, len, spec.plain, inbox, of).await?;
        left.append(&mut round.left);
        took_part.extend(aggregate.contributors.iter().copied());
        for p in &aggregate.dropped {
            live.retain(|q| q != p);
            dropped.insert(*p);
        }
        for p in std::mem::take(&mut round.rejoined) {
            if offered_again.remove(&p) && !live.contains(&p) {
                tracing::info!(job = %record.id, party = %shared.party_name(p), "a party rejoined the training job");
                live.push(p);
                live.sort_unstable();
            }
        }
        let report = state
            .absorb(spec, step, &aggregate.sum, aggregate.contributors.len())
            .map_err(|e| End::training(format!("{step}: {e}")))?;
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
    let mut file = state.model_file(spec, contributors.len() as u32).map_err(failed)?;
    // A model trained on clipped features carries the bounds the parties declared for them,
    // so scoring clips rows the same way.
    if let Some(encode) = file.encode.as_mut().filter(|e| e.encoding.clip_to_bounds) {
        let catalogs = shared.catalogs().map_err(End::training)?;
        let catalog = catalogs.iter().find(|c| c.name == spec.dataset);
        for f in encode.encoding.numeric(&encode.columns) {
            let declared = catalog.and_then(|c| c.column(f)).and_then(|c| c.bounds);
            if let Some(bounds) = declared {
                encode.bounds.insert(f.clone(), bounds);
            }
        }
    }
    let answer = serde_json::json!({
        "kind": "train",
        "model": file,
        "rounds": history,
        "final": state.final_metrics,
        "epsilon": state.accountant.as_ref().map(veil_learning::privacy::Accountant::epsilon),
        "delta": spec.privacy.as_ref().map(|p| p.delta),
        "stopped_early": state.stopped_early,
    });
    let answer_json = serde_json::to_string(&answer).map_err(|e| End::training(e.to_string()))?;
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
        .map_err(|e| End::training(e.to_string()))?;
    let checkpoint = serde_json::to_string(&state).map_err(|e| End::training(e.to_string()))?;
    let store = shared.store.clone();
    let (id, live_ids, at) =
        (job_id.to_string(), live.iter().map(|p| p.0).collect::<Vec<_>>(), now_ms());
    tokio::task::spawn_blocking(move || {
        store.put_checkpoint(&id, &checkpoint, &rounds, &live_ids, at)
    })
    .await
    .map_err(|e| End::training(Failure::Store(e.to_string())))?
    .map_err(|e| End::training(Failure::Store(format!("checkpoint: {e}"))))
}

/// Checks that a resumed job's stored round reports are those its checkpoint counts, less the
/// ones it still holds to store.
async fn check_stored_rounds(shared: &Shared, job_id: &str, state: &Training) -> Result<(), End> {
    let store = shared.store.clone();
    let id = job_id.to_string();
    let stored = tokio::task::spawn_blocking(move || store.training_round_count(&id))
        .await
        .map_err(|e| End::training(Failure::Store(e.to_string())))?
        .map_err(|e| End::training(Failure::Store(format!("round reports: {e}"))))?;
    let expected = (state.history.len() - state.history.unsaved().len()) as u64;
    if stored != expected {
        return Err(End::training(format!(
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
        .map_err(|e| End::training(Failure::Store(e.to_string())))?
        .map_err(|e| End::training(Failure::Store(format!("round reports: {e}"))))?;
    let reports = rows
        .iter()
        .map(|r| serde_json::from_str::<RoundReport>(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| End::training(format!("a stored round report does not parse: {e}")))?;
    let numbered = reports.iter().zip(0..).all(|(r, round)| r.round == round);
    if reports.len() != state.history.len() || !numbered {
        return Err(End::training(format!(
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
    let catalogs = shared.catalogs().map_err(End::training)?;
    let catalog = catalogs.iter().find(|c| c.name == spec.dataset).ok_or_else(|| {
        End::training(format!("no connected party announces dataset {:?}", spec.dataset))
    })?;
    let bounds_of = |f: &str| catalog.columns.iter().find(|c| c.name == f).and_then(|c| c.bounds);
    // Categorical features' inputs lie in [0, 1]; every numeric one needs declared bounds.
    let numeric = spec.features.iter().filter(|f| !spec.encode.categorical.contains_key(*f));
    if let Some(f) = numeric.clone().find(|f| bounds_of(f).is_none()) {
        return Err(End::training(format!(
            "a differentially private job standardises with declared bounds, and feature {f:?} has none: declare its bounds at the parties or set standardize = false"
        )));
    }
    let bounds = spec
        .encode
        .input_bounds(&spec.features, bounds_of)
        .ok_or_else(|| End::training("a feature without declared bounds"))?;
    Standardizer::from_bounds(&bounds).map_err(|e| End::training(e.to_string()))
}
