//! A private join: the party serving the group side exchanges with each party serving the
//! value side in turn (a veil-psi join, relayed like an intersection: the coordinator reads
//! none of it), each exchange leaving the two with additive shares of that value party's
//! per-group sums; then one secure round over all of them adds the shares up, so the
//! coordinator learns the per-group sums over every value party and nothing else.

use std::sync::Arc;

use tokio::sync::mpsc;
use veil_analytics::JoinSpec;
use veil_protocol::{Aggregate, PartyId};

use super::psi::exchange;
use super::round::{RoundOf, run_round};
use super::{End, Failure};
use crate::store::JobRecord;
use crate::{JobInput, Shared};

/// Runs the exchanges and the round over `parties` (those that accepted) and returns the sum.
pub(super) async fn join(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    spec: &JoinSpec,
    parties: &[PartyId],
    inbox: &mut mpsc::UnboundedReceiver<JobInput>,
) -> Result<Aggregate, End> {
    let connected = shared.connected_parties();
    let serving = |dataset: &str| -> Vec<PartyId> {
        parties
            .iter()
            .copied()
            .filter(|p| connected.get(p).is_some_and(|(d, _)| d.iter().any(|d| d == dataset)))
            .collect()
    };
    let (groups, values) = (serving(&spec.groups.dataset), serving(&spec.values.dataset));
    let group = match groups.as_slice() {
        [g] if !values.contains(g) && !values.is_empty() => *g,
        _ => {
            return Err(End::Failed(Failure::Psi(format!(
                "a join needs one party on the group side and at least one on the value side: {} serve {:?} and {} serve {:?} among those that accepted",
                groups.len(),
                spec.groups.dataset,
                values.len(),
                spec.values.dataset
            ))));
        }
    };
    let job_hash = veil_analytics::Job::Join(spec.clone()).hash();
    for &value in &values {
        exchange(shared, record, &job_hash, (group, value), true, inbox).await?;
    }
    // Every share is needed: the group side's holds the masks of every value party's, so a
    // sum without one of them would be noise.
    let cohort: Vec<PartyId> = std::iter::once(group).chain(values).collect();
    let len = crate::kinds::join_round(spec)
        .and_then(|r| r.vector_len())
        .map_err(|e| End::Failed(e.into()))?;
    let min = cohort.len();
    run_round(shared, record, &cohort, min, len, false, inbox, RoundOf::Job(None)).await
}
