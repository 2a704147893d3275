//! Release receipts: what was released, to whom, from whose data, at what privacy cost.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One party's contribution to a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The party.
    pub party: u32,
    /// SHA-256 (hex) of the dataset file the party read.
    pub dataset_sha256: String,
    /// The party's audit log head once it recorded its acceptance: its log must hold this
    /// entry, so a log cut below it is caught.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<crate::audit::Head>,
}

/// The record of one release, kept by the coordinator and by every contributing party.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The job.
    pub job_id: String,
    /// SHA-256 of its canonical specification.
    pub job_hash: String,
    /// Who receives the result.
    pub consumer: String,
    /// The dataset.
    pub dataset: String,
    /// Parties whose data is in the result, with their dataset fingerprints.
    pub parties: Vec<Contribution>,
    /// zCDP ρ charged to every budget involved.
    pub rho: f64,
    /// SHA-256 (hex) of the released answer's JSON.
    pub result_sha256: String,
    /// Unix milliseconds.
    pub time_ms: i64,
}

/// The fingerprint of a result: SHA-256 of its canonical JSON, hex.
pub fn result_fingerprint(answer_json: &str) -> String {
    hex::encode(Sha256::digest(answer_json.as_bytes()))
}
