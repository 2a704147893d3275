//! Jobs signed by their consumer.
//!
//! A coordinator that could name any consumer on an offer could run a job past a party's
//! `consumers = […]` allow-list or charge it to another consumer's budget. So the consumer signs
//! every job it submits, and each party checks the signature against the roster before it
//! evaluates its policy:
//!
//! 1. the consumer asks the coordinator to plan its specification (`Jobs.Plan`) and gets the
//!    canonical JSON parties will be shown, with its hash;
//! 2. it picks a fresh job id and signs the [`job_statement`] over the id, the hash, its roster
//!    name and the job's purpose with the key the roster lists as its `signing_key`;
//! 3. it submits the canonical JSON, the id and the signature (`Jobs.Submit`); the coordinator
//!    checks the signature, and every offer carries it to the parties.
//!
//! The id is bound, and a party charges each job id once, so a signed job cannot be run again
//! under its own id or under another.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::ConfigError;
use crate::v1::jobs_client::JobsClient;
use crate::v1::{JobStatus, PlanRequest, PlannedJob, SubmitRequest};

/// The domain label of the statement a consumer signs for a job.
pub const JOB_STATEMENT_LABEL: &[u8] = b"veil/consumer-job/v1";

/// Hex digits in a job id.
pub const JOB_ID_HEX_DIGITS: usize = 24;

/// The bytes a consumer signs to submit a job: SHA-256 over the label and the
/// length-prefixed (u64, little-endian) job id, job hash, consumer name and purpose.
pub fn job_statement(job_id: &str, job_hash: &str, consumer: &str, purpose: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(JOB_STATEMENT_LABEL);
    for part in [job_id, job_hash, consumer, purpose] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_vec()
}

/// Whether `signature` is `key`'s signature over the job statement.
pub fn verify_job(
    key: &VerifyingKey,
    signature: &[u8],
    job_id: &str,
    job_hash: &str,
    consumer: &str,
    purpose: &str,
) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else { return false };
    key.verify(&job_statement(job_id, job_hash, consumer, purpose), &signature).is_ok()
}

/// A fresh job id: 96 random bits as 24 lowercase hex digits.
pub fn new_job_id() -> String {
    let mut id = [0u8; JOB_ID_HEX_DIGITS / 2];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

/// Whether `id` has the form of a job id.
pub fn is_job_id(id: &str) -> bool {
    id.len() == JOB_ID_HEX_DIGITS
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a coordinator's plan before it is signed: given the specification the consumer
/// wrote and the canonical JSON the coordinator planned from it, `Ok` with the purpose to sign
/// when the plan is the job asked for (`veil_analytics::Job::check_plan` is the one for veil's
/// job kinds), or why not.
pub type PlanCheck = fn(request: &str, planned_json: &str) -> Result<String, String>;

/// A consumer's name and job-signing key, and the check its plans must pass.
pub struct Signer {
    name: String,
    key: SigningKey,
    check: PlanCheck,
}

impl Signer {
    /// A signer from the consumer's roster name, its key and the plan check.
    pub fn new(name: impl Into<String>, key: SigningKey, check: PlanCheck) -> Self {
        Self { name: name.into(), key, check }
    }

    /// Reads the key's 32-byte seed as 64 hex digits from `path`.
    pub fn load(
        name: impl Into<String>,
        path: &std::path::Path,
        check: PlanCheck,
    ) -> Result<Self, ConfigError> {
        let text = Zeroizing::new(crate::read(path)?);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| ConfigError::Parse {
            path: path.display().to_string(),
            message: "the signing key must be 64 hex digits".into(),
        })?;
        Ok(Self::new(name, SigningKey::from_bytes(&seed), check))
    }

    /// The consumer's roster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, as the roster lists it.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signature over a planned job under `job_id`.
    pub fn sign(&self, job_id: &str, planned: &PlannedJob) -> Vec<u8> {
        let statement = job_statement(job_id, &planned.job_hash, &self.name, &planned.purpose);
        self.key.sign(&statement).to_bytes().to_vec()
    }

    /// Plans `spec` at the coordinator, checks that the plan is the job asked for (the plan
    /// check) and that its hash is the hash of its JSON, signs it under a fresh id with the
    /// purpose the check found, and submits it. A coordinator that plans another job than the
    /// one asked for gets no signature.
    pub async fn submit(
        &self,
        jobs: &mut JobsClient<Channel>,
        spec: &str,
    ) -> Result<JobStatus, tonic::Status> {
        self.submit_with(jobs, spec, false).await
    }

    /// [`Signer::submit`]; with `require_all`, the job fails rather than answer over fewer
    /// than every party that serves its dataset.
    pub async fn submit_with(
        &self,
        jobs: &mut JobsClient<Channel>,
        spec: &str,
        require_all: bool,
    ) -> Result<JobStatus, tonic::Status> {
        let mut planned = jobs.plan(PlanRequest { spec: spec.to_string() }).await?.into_inner();
        if hex::encode(Sha256::digest(planned.spec_json.as_bytes())) != planned.job_hash {
            return Err(tonic::Status::data_loss(
                "the coordinator's plan does not hash to the job hash it gave; nothing was signed",
            ));
        }
        planned.purpose =
            (self.check)(spec, &planned.spec_json).map_err(tonic::Status::data_loss)?;
        let job_id = new_job_id();
        let signature = self.sign(&job_id, &planned);
        let request = SubmitRequest { spec: planned.spec_json, job_id, signature, require_all };
        Ok(jobs.submit(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(purpose: &str) -> PlannedJob {
        let spec_json = "{\"dataset\":\"d\"}".to_string();
        PlannedJob {
            job_hash: hex::encode(Sha256::digest(spec_json.as_bytes())),
            spec_json,
            purpose: purpose.into(),
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_own_job_consumer_and_purpose() {
        let signer =
            Signer::new("analyst", SigningKey::from_bytes(&[7; 32]), |_, _| Ok(String::new()));
        let key = signer.verifying_key();
        let job = planned("research");
        let id = new_job_id();
        let sig = signer.sign(&id, &job);
        assert!(verify_job(&key, &sig, &id, &job.job_hash, "analyst", "research"));
        assert!(!verify_job(&key, &sig, &new_job_id(), &job.job_hash, "analyst", "research"));
        assert!(!verify_job(&key, &sig, &id, &"0".repeat(64), "analyst", "research"));
        assert!(!verify_job(&key, &sig, &id, &job.job_hash, "operator", "research"));
        assert!(!verify_job(&key, &sig, &id, &job.job_hash, "analyst", "marketing"));
        assert!(!verify_job(&key, &sig[..63], &id, &job.job_hash, "analyst", "research"));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(!verify_job(&other, &sig, &id, &job.job_hash, "analyst", "research"));
    }

    #[test]
    fn the_statement_separates_its_parts() {
        // Moving a byte from one part to the next changes the statement.
        assert_ne!(job_statement("ab", "c", "x", ""), job_statement("a", "bc", "x", ""));
        assert_ne!(job_statement("a", "b", "cx", ""), job_statement("a", "b", "c", "x"));
    }

    #[test]
    fn job_ids_are_24_lowercase_hex_digits() {
        let id = new_job_id();
        assert!(is_job_id(&id), "{id}");
        assert_ne!(id, new_job_id());
        for bad in
            ["", "abc", &"A".repeat(24), &"g".repeat(24), &"0".repeat(25), "../../etc/passwd"]
        {
            assert!(!is_job_id(bad), "{bad}");
        }
    }
}
