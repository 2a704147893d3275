//! Releasing a job's answer: the receipt (who contributed which data, at what privacy cost)
//! into the store and the audit log, then the answer, in one transaction with the job's end.

use std::sync::Arc;

use veil_governance::audit::Event;
use veil_governance::receipt::{Contribution, Receipt, result_fingerprint};
use veil_protocol::Aggregate;

use super::{End, Failure};
use crate::store::{JobRecord, JobState, ResultRecord};
use crate::{Shared, now_ms};

/// What a release records besides the answer.
pub(super) struct Release<'a> {
    /// The job's hash.
    pub(super) job_hash: String,
    /// The dataset it read.
    pub(super) dataset: &'a str,
    /// The ρ charged to every budget involved.
    pub(super) rho: f64,
    /// Each accepting party's data fingerprint and log head; the contributors' go into the
    /// receipt.
    pub(super) contributions: Vec<Contribution>,
}

/// Stores the receipt (and logs it), then the answer with the job's success, and tells the
/// watchers; returns the receipt as JSON for the contributing parties.
pub(super) async fn release(
    shared: &Arc<Shared>,
    record: &mut JobRecord,
    release: Release<'_>,
    answer_json: String,
    aggregate: &Aggregate,
) -> Result<String, End> {
    let store_failed = |e: &dyn std::fmt::Display| End::Failed(Failure::Store(e.to_string()));
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
    let receipt = Receipt {
        job_id: record.id.clone(),
        job_hash: release.job_hash,
        consumer: record.consumer.clone(),
        dataset: release.dataset.to_string(),
        parties: release
            .contributions
            .into_iter()
            .filter(|c| result.contributors.contains(&c.party))
            .collect(),
        rho: release.rho,
        result_sha256: result_fingerprint(&result.answer_json),
        time_ms: now_ms(),
    };
    let receipt_json = serde_json::to_string(&receipt).map_err(|e| store_failed(&e))?;
    shared.store.put_receipt(&receipt).map_err(|e| store_failed(&e))?;
    shared
        .store
        .audit(Event::ResultReleased { receipt }, now_ms())
        .map_err(|e| End::Failed(Failure::Audit(e.to_string())))?;
    let store = shared.store.clone();
    let stored = result.clone();
    let at = now_ms();
    let detail_stored = detail.clone();
    tokio::task::spawn_blocking(move || store.put_result(&stored, &detail_stored, at))
        .await
        .map_err(|e| store_failed(&e))?
        .map_err(|e| store_failed(&e))?;
    record.state = JobState::Succeeded;
    record.detail = detail;
    record.updated_ms = at;
    shared.publish(record);
    tracing::info!(job = %record.id, contributors = result.contributors.len(), "job finished");
    Ok(receipt_json)
}
