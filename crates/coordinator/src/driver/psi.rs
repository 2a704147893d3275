//! A private set intersection between the two parties that accepted the job: the coordinator
//! starts each in its role and relays their veil-psi messages, which it cannot read (keys
//! blinded by each party's secret scalar), until both sides report their outcome, signed over
//! the same counts, the client's with the intersection's size.

use std::sync::Arc;

use rand::RngCore;
use tokio::sync::mpsc;
use veil_analytics::PsiSpec;
use veil_governance::decision::PsiOutcome;
use veil_proto::v1::{
    CoordinatorEnvelope, PsiResult, PsiRole, PsiStart, coordinator_envelope::Body,
};
use veil_protocol::PartyId;

use super::round::record_charge;
use super::{End, Failure, set_state};
use crate::store::{JobRecord, JobState};
use crate::{JobInput, Shared};

/// Most time without a message from either side before the exchange is given up, in stage
/// timeouts (an exchange of a million keys a side streams for minutes).
const SILENT_STAGES: u32 = 4;

/// Runs the exchange between the client (serving `spec.client.dataset`) and the server among
/// `parties`; returns the answer and the two parties.
pub(super) async fn intersect(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    spec: &PsiSpec,
    parties: &[PartyId],
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
) -> Result<(String, Vec<PartyId>), End> {
    let serving = |dataset: &str| -> Vec<PartyId> {
        let connected = shared.connected_parties();
        parties
            .iter()
            .copied()
            .filter(|p| connected.get(p).is_some_and(|(d, _)| d.iter().any(|d| d == dataset)))
            .collect()
    };
    let (clients, servers) = (serving(&spec.client.dataset), serving(&spec.server.dataset));
    let (client, server) = match (clients.as_slice(), servers.as_slice()) {
        ([c], [s]) if c != s => (*c, *s),
        _ => {
            return Err(End::Failed(Failure::Psi(format!(
                "an intersection needs one party on each side: {} serve {:?} and {} serve {:?} among those that accepted",
                clients.len(),
                spec.client.dataset,
                servers.len(),
                spec.server.dataset
            ))));
        }
    };
    let job_hash = veil_analytics::Job::Psi(spec.clone()).hash();
    let (c, _) = exchange(shared, record, &job_hash, (client, server), false, inbox).await?;
    let mut answer = serde_json::json!({
        "kind": "psi",
        "intersection_size": c.intersection_size,
        "client": { "dataset": spec.client.dataset, "key": spec.client.key,
                    "party": client.0, "keys": c.client_keys },
        "server": { "dataset": spec.server.dataset, "key": spec.server.key,
                    "party": server.0, "keys": c.server_keys },
    });
    if spec.output == veil_analytics::PsiOutput::Intersection {
        // The client's party kept the intersection; the consumer gets its size.
        let kept_by = shared.party_name(client);
        answer["intersection"] = serde_json::json!({ "kept_by": kept_by, "party": client.0 });
    }
    if let (Some(privacy), Some(variance)) = (&spec.privacy, spec.noise_variance()) {
        // The client added discrete Gaussian noise of this variance to the size.
        answer["privacy"] = serde_json::json!({
            "rho": privacy.rho,
            "noise_variance": variance,
            "ci95": 1.96 * (variance as f64).sqrt(),
        });
    }
    Ok((answer.to_string(), vec![client, server]))
}

/// Runs one exchange between `client` and `server` under a fresh session: starts each in its
/// role, relays their messages (which it cannot read), and returns both sides' outcomes once
/// each has reported one signed for this exchange over the same counts (the client's first).
pub(super) async fn exchange(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    job_hash: &str,
    (client, server): (PartyId, PartyId),
    server_first: bool,
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
) -> Result<(PsiResult, PsiResult), End> {
    let mut session = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut session);
    let job_id = record.id.clone();
    let start = |role: PsiRole, peer: PartyId| {
        let start = PsiStart {
            job_id: job_id.clone(),
            session: session.to_vec(),
            role: role as i32,
            peer: peer.0,
        };
        CoordinatorEnvelope { body: Some(Body::PsiStart(start)) }
    };
    if !shared.send(server, start(PsiRole::Server, client)).await {
        return Err(End::Failed(Failure::Psi(format!("{server} is gone"))));
    }
    let silence = shared.stage_timeout * SILENT_STAGES;
    let mut charged = std::collections::BTreeSet::new();
    // A join's value side first prepares its encrypted vectors and then speaks first (its
    // public key): the group side starts only then, so its first messages find the value side
    // ready to take them.
    let mut first = None;
    if server_first {
        let detail = format!("exchange between {client} and {server}: values being encrypted");
        set_state(shared, record, JobState::Running, &detail, None).await;
        while first.is_none() {
            let input = tokio::time::timeout(silence, inbox.recv()).await.map_err(|_| {
                End::Failed(Failure::Psi(format!(
                    "no message from {server} for {}s",
                    silence.as_secs()
                )))
            })?;
            match input {
                Some(JobInput::Round { from, bytes, head }) if from == server => {
                    record_charge(shared, &record.id, from, head, &mut charged);
                    first = Some(bytes);
                }
                Some(JobInput::Departed(p)) if p == server => {
                    return Err(End::Failed(Failure::Psi(format!("{p} left the exchange"))));
                }
                Some(JobInput::Reply(reply)) => left(shared, record, &reply)?,
                Some(JobInput::Cancel) => return Err(End::Cancelled),
                Some(_) => {}
                None => return Err(End::Failed(Failure::Internal("the job's channel closed"))),
            }
        }
    }
    if !shared.send(client, start(PsiRole::Client, server)).await {
        return Err(End::Failed(Failure::Psi(format!("{client} is gone"))));
    }
    let mut relayed = 0u64;
    if let Some(message) = first {
        let payload = veil_proto::v1::RoundPayload {
            job_id: record.id.clone(),
            message,
            ..Default::default()
        };
        relayed += 1;
        if !shared.send(client, CoordinatorEnvelope { body: Some(Body::Round(payload)) }).await {
            return Err(End::Failed(Failure::Psi(format!("{client} left the exchange"))));
        }
    }
    let detail = format!("exchange between {client} and {server}: keys blinded");
    set_state(shared, record, JobState::Running, &detail, None).await;
    let (mut client_outcome, mut server_outcome) = (None, None);
    loop {
        let input = tokio::time::timeout(silence, inbox.recv()).await.map_err(|_| {
            End::Failed(Failure::Psi(format!(
                "no message from either party for {}s",
                silence.as_secs()
            )))
        })?;
        match input {
            Some(JobInput::Round { from, bytes, head }) if from == client || from == server => {
                record_charge(shared, &record.id, from, head, &mut charged);
                let to = if from == client { server } else { client };
                let payload = veil_proto::v1::RoundPayload {
                    job_id: record.id.clone(),
                    message: bytes,
                    ..Default::default()
                };
                relayed += 1;
                if relayed % 64 == 0 {
                    let detail = format!(
                        "exchange between {client} and {server}: {relayed} batches of blinded keys relayed"
                    );
                    set_state(shared, record, JobState::Running, &detail, None).await;
                }
                if !shared.send(to, CoordinatorEnvelope { body: Some(Body::Round(payload)) }).await
                {
                    return Err(End::Failed(Failure::Psi(format!("{to} left the exchange"))));
                }
            }
            Some(JobInput::PsiResult { from, result }) if from == client || from == server => {
                let outcome = PsiOutcome {
                    job_id: &record.id,
                    job_hash,
                    session: &session,
                    client: client.0,
                    server: server.0,
                    intersection: result.intersection_size,
                    client_keys: result.client_keys,
                    server_keys: result.server_keys,
                };
                let signed = shared.protocol_roster.key(from).is_some_and(|key| {
                    <[u8; 64]>::try_from(result.signature.as_slice()).is_ok_and(|bytes| {
                        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
                        let statement = outcome.statement(from.0);
                        ed25519_dalek::Verifier::verify(key, &statement, &signature).is_ok()
                    })
                });
                let role = if from == client { PsiRole::Client } else { PsiRole::Server };
                if !signed || result.role != role as i32 {
                    return Err(End::Failed(Failure::Psi(format!(
                        "{from} reported an outcome not signed for this exchange"
                    ))));
                }
                if from == client {
                    client_outcome = Some(result);
                } else {
                    server_outcome = Some(result);
                }
                let (Some(c), Some(s)) = (&client_outcome, &server_outcome) else { continue };
                // Both sides saw the same exchange: the server the client's keys and the
                // client the server's.
                if (c.client_keys, c.server_keys) != (s.client_keys, s.server_keys) {
                    return Err(End::Failed(Failure::Psi(format!(
                        "the two sides disagree on the exchange: the client counts {} and {} keys, the server {} and {}",
                        c.client_keys, c.server_keys, s.client_keys, s.server_keys
                    ))));
                }
                let (Some(c), Some(s)) = (client_outcome.take(), server_outcome.take()) else {
                    continue;
                };
                let detail = format!(
                    "exchange between {client} and {server} done: {} and {} keys",
                    c.client_keys, c.server_keys
                );
                set_state(shared, record, JobState::Running, &detail, None).await;
                return Ok((c, s));
            }
            Some(JobInput::Departed(p)) if p == client || p == server => {
                return Err(End::Failed(Failure::Psi(format!("{p} left the exchange"))));
            }
            Some(JobInput::Reply(reply)) => left(shared, record, &reply)?,
            Some(JobInput::Cancel) => return Err(End::Cancelled),
            Some(_) => {}
            None => return Err(End::Failed(Failure::Internal("the job's channel closed"))),
        }
    }
}

/// A party's signed refusal during an exchange ends it, with the party's reason.
fn left(shared: &Shared, record: &JobRecord, reply: &crate::offer::Reply) -> Result<(), End> {
    if let crate::offer::Decision::Decline(d) = &reply.decision {
        if reply.signed(&shared.protocol_roster, &record.id) {
            let from = reply.from;
            return Err(End::Failed(Failure::Psi(format!("{from} left: {d}"))));
        }
    }
    Ok(())
}
