//! The consumer job service: plan, submit (signed), watch, get, list, cancel, result.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use veil_analytics::Job;
use veil_governance::quota::{self, Quota, WINDOW_MS};
use veil_proto::roster::{Member, RosterFile};
use veil_proto::submission;
use veil_proto::v1::jobs_server::Jobs;
use veil_proto::v1::{
    CatalogList, CatalogRequest, JobList, JobRef, JobResult, JobState as WireState, JobStatus,
    ListJobsRequest, Outcome as WireOutcome, PartyOutcome, PlanRequest, PlannedJob, ReceiptList,
    SubmitRequest,
};

use crate::offer::Outcome;
use crate::store::{JobRecord, JobState};
use crate::{JobInput, Shared, now_ms};

/// Longest specification accepted, in bytes.
const MAX_SPEC_BYTES: usize = 256 * 1024;

/// Why the jobs service refuses a call; [`Status`] is made from it in one place.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The caller holds a party's certificate.
    #[error("{0} is a party; jobs are submitted by consumers")]
    NotConsumer(veil_protocol::PartyId),
    /// The specification is too long.
    #[error("the specification is {0} bytes; the limit is {MAX_SPEC_BYTES}")]
    TooLong(usize),
    /// The specification does not parse or asks for something invalid.
    #[error(transparent)]
    Spec(#[from] veil_analytics::AnalyticsError),
    /// No catalog to plan a SQL query against (or catalogs that disagree).
    #[error("{0}")]
    Catalog(String),
    /// A SQL query submitted unplanned.
    #[error("a SQL query is submitted as the job Jobs.Plan makes of it, signed; plan it first")]
    Unplanned,
    /// A malformed job id.
    #[error(
        "job id {0:?} is not {digits} lowercase hex digits; pick a fresh random one",
        digits = submission::JOB_ID_HEX_DIGITS
    )]
    JobId(String),
    /// The roster has no key to check the consumer's signature with.
    #[error(
        "the roster lists no signing key for consumer {0}, and parties take part only in signed jobs; add its signing_key to the roster every member holds"
    )]
    NoSigningKey(String),
    /// The signature does not verify.
    #[error(
        "the job's signature does not verify under the signing key the roster lists for {consumer} (over job id {id}, job hash {hash} and purpose {purpose:?}); submit the canonical JSON Jobs.Plan returned, signed with the key in consumer.toml"
    )]
    Signature {
        /// Who submitted.
        consumer: String,
        /// The id.
        id: String,
        /// The job's hash.
        hash: String,
        /// Its purpose.
        purpose: String,
    },
    /// A quota is used up.
    #[error(transparent)]
    Quota(#[from] veil_governance::quota::QuotaExceeded),
    /// The id is taken.
    #[error("job id {0} is taken; a signed job runs once: sign it again under a fresh id")]
    Taken(String),
    /// No such job (or not the caller's).
    #[error("no job {0:?}")]
    NotFound(String),
    /// The job has ended.
    #[error("job {id} already {state}")]
    Ended {
        /// The job.
        id: String,
        /// How it ended.
        state: &'static str,
    },
    /// The job has no result.
    #[error("job {id} has no result: it is {state} ({detail})")]
    NoResult {
        /// The job.
        id: String,
        /// Where it stands.
        state: &'static str,
        /// Why.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<JobsError> for Status {
    fn from(e: JobsError) -> Status {
        let message = e.to_string();
        match e {
            JobsError::NotConsumer(_) => Status::permission_denied(message),
            JobsError::TooLong(_)
            | JobsError::Spec(_)
            | JobsError::Unplanned
            | JobsError::JobId(_) => Status::invalid_argument(message),
            JobsError::Catalog(_)
            | JobsError::NoSigningKey(_)
            | JobsError::Ended { .. }
            | JobsError::NoResult { .. } => Status::failed_precondition(message),
            JobsError::Signature { .. } => Status::unauthenticated(message),
            JobsError::Quota(_) => Status::resource_exhausted(message),
            JobsError::Taken(_) => Status::already_exists(message),
            JobsError::NotFound(_) => Status::not_found(message),
            JobsError::Store(_) => Status::internal(message),
        }
    }
}

/// The `Jobs` service.
pub struct JobsApi {
    shared: Arc<Shared>,
}

impl JobsApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn consumer<T>(&self, request: &Request<T>) -> Result<(String, bool), Status> {
        match self.shared.caller(request)? {
            Member::Consumer { name, admin } => Ok((name, admin)),
            Member::Party(p) => Err(JobsError::NotConsumer(p).into()),
        }
    }

    /// The job a specification stands for: a SQL query planned against the parties' catalogs,
    /// anything else as it is.
    fn plan_job(&self, text: &str) -> Result<Job, JobsError> {
        check_size(text)?;
        let job = Job::parse(text)?;
        let Job::Sql(request) = &job else { return Ok(job) };
        let catalogs = self.shared.catalogs().map_err(JobsError::Catalog)?;
        let options = veil_analytics::sql::SqlOptions {
            purpose: request.purpose.clone(),
            rho: request.privacy.as_ref().map(|p| p.rho),
            k_threshold: request.k_threshold,
            min_parties: request.min_parties,
        };
        Ok(veil_analytics::sql::plan_sql_job(&request.sql, &catalogs, &options)?)
    }

    /// Takes a signed, planned job from `consumer` and starts it.
    fn submit_job(&self, consumer: String, request: SubmitRequest) -> Result<JobStatus, JobsError> {
        let SubmitRequest { spec, job_id: id, signature, require_all } = request;
        check_size(&spec)?;
        let job = Job::parse(&spec)?;
        if matches!(job, Job::Sql(_)) {
            return Err(JobsError::Unplanned);
        }
        if !submission::is_job_id(&id) {
            return Err(JobsError::JobId(id));
        }
        let key = self
            .shared
            .roster
            .consumer_key(&consumer)
            .ok_or_else(|| JobsError::NoSigningKey(consumer.clone()))?;
        let hash = job.hash();
        if !submission::verify_job(&key, &signature, &id, &hash, &consumer, job.purpose()) {
            let purpose = job.purpose().to_string();
            return Err(JobsError::Signature { consumer, id, hash, purpose });
        }
        let now = now_ms();
        let limit = self.shared.roster.consumer(&consumer).and_then(|c| c.jobs_per_day);
        if limit.is_some() {
            let used = self.shared.store.jobs_since(&consumer, now - WINDOW_MS)?;
            quota::check(Quota::Jobs, &consumer, limit, used)?;
        }
        let record = JobRecord {
            id,
            consumer,
            dataset: job.dataset().to_string(),
            spec_json: job.canonical_json(),
            signature: hex::encode(&signature),
            require_all,
            coverage: Default::default(),
            state: JobState::Queued,
            detail: "queued".into(),
            parties: Vec::new(),
            created_ms: now,
            updated_ms: now,
            progress_json: String::new(),
        };
        if !self.shared.store.insert_job(&record)? {
            return Err(JobsError::Taken(record.id));
        }
        tracing::info!(job = %record.id, consumer = %record.consumer, dataset = %record.dataset, "job submitted");
        let status = status_of(&record, &self.shared.roster);
        crate::driver::start(self.shared.clone(), record, job, None);
        Ok(status)
    }

    /// A job's result, for its consumer (or an administrator), within the fetch quota; the
    /// fetch is logged.
    fn fetch_result(&self, caller: (String, bool), id: &str) -> Result<JobResult, JobsError> {
        let job = self.visible_job(&caller, id)?;
        let now = now_ms();
        let limit = self.shared.roster.consumer(&caller.0).and_then(|c| c.fetches_per_day);
        if limit.is_some() {
            let used = self.shared.store.fetches_since(&caller.0, now - WINDOW_MS)?;
            quota::check(Quota::Fetches, &caller.0, limit, used)?;
        }
        let result = self.shared.store.result(&job.id)?.ok_or_else(|| JobsError::NoResult {
            id: job.id.clone(),
            state: job.state.as_str(),
            detail: job.detail.clone(),
        })?;
        self.shared.store.record_fetch(&job.id, &caller.0, now)?;
        let event = veil_governance::audit::Event::ResultFetched {
            job_id: job.id.clone(),
            consumer: caller.0,
        };
        self.shared.store.audit(event, now)?;
        let table_json = table(&job.spec_json, &result.answer_json).unwrap_or_default();
        Ok(JobResult {
            job_id: result.job_id,
            answer_json: result.answer_json,
            contributors: result.contributors,
            dropped: result.dropped,
            table_json,
            coverage: coverage_of(&job, &self.shared.roster),
        })
    }

    /// The job, if the caller may see it (its own, or any for an administrator).
    fn visible_job(&self, caller: &(String, bool), id: &str) -> Result<JobRecord, JobsError> {
        let job = self.shared.store.job(id)?.ok_or_else(|| JobsError::NotFound(id.to_string()))?;
        if job.consumer != caller.0 && !caller.1 {
            return Err(JobsError::NotFound(id.to_string()));
        }
        Ok(job)
    }
}

/// The wire form of a job's coverage, parties named as the roster names them.
pub(crate) fn coverage_of(j: &JobRecord, roster: &RosterFile) -> Vec<PartyOutcome> {
    j.coverage
        .entries()
        .into_iter()
        .map(|e| {
            let (outcome, rule, reason) = match e.outcome {
                Outcome::Contributed => (WireOutcome::Contributed, String::new(), String::new()),
                Outcome::Accepted => (WireOutcome::Accepted, String::new(), String::new()),
                Outcome::Refused { rule, reason } => (WireOutcome::Refused, rule, reason),
                Outcome::Offline { reason } => (WireOutcome::Offline, String::new(), reason),
                Outcome::DataUnavailable { reason } => {
                    (WireOutcome::DataUnavailable, String::new(), reason)
                }
                Outcome::Dropped { reason } => (WireOutcome::Dropped, String::new(), reason),
                Outcome::NoAnswer { reason } => (WireOutcome::NoAnswer, String::new(), reason),
                Outcome::Fault { reason } => (WireOutcome::Fault, String::new(), reason),
            };
            PartyOutcome {
                party_id: e.party,
                name: roster
                    .party(veil_protocol::PartyId(e.party))
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                outcome: outcome as i32,
                rule,
                reason,
            }
        })
        .collect()
}

/// A stored job state as the wire names it.
fn wire_state(state: JobState) -> WireState {
    match state {
        JobState::Queued => WireState::Queued,
        JobState::Offering => WireState::Offering,
        JobState::Running => WireState::Running,
        JobState::Succeeded => WireState::Succeeded,
        JobState::Failed => WireState::Failed,
        JobState::Cancelled => WireState::Cancelled,
    }
}

/// The wire form of a stored job.
pub(crate) fn status_of(j: &JobRecord, roster: &RosterFile) -> JobStatus {
    JobStatus {
        coverage: coverage_of(j, roster),
        job_id: j.id.clone(),
        consumer: j.consumer.clone(),
        dataset: j.dataset.clone(),
        state: wire_state(j.state) as i32,
        detail: j.detail.clone(),
        parties: j.parties.clone(),
        created_unix_ms: j.created_ms,
        updated_unix_ms: j.updated_ms,
        progress_json: j.progress_json.clone(),
    }
}

fn check_size(spec: &str) -> Result<(), JobsError> {
    if spec.len() > MAX_SPEC_BYTES {
        return Err(JobsError::TooLong(spec.len()));
    }
    Ok(())
}

/// The result table of a SQL job (whose specification lists outputs), as JSON.
fn table(spec_json: &str, answer_json: &str) -> Option<String> {
    let spec = match Job::parse(spec_json).ok()? {
        Job::Columns(spec) => spec,
        Job::Join(join) => join.aggregate,
        _ => return None,
    };
    if spec.select.is_empty() {
        return None;
    }
    let answer: veil_analytics::Answer = serde_json::from_str(answer_json).ok()?;
    serde_json::to_string(&veil_analytics::sql::result_table(&spec, &answer)).ok()
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for JobsApi {
    type WatchStream = StatusStream;

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlannedJob>, Status> {
        self.consumer(&request)?;
        let job = self.plan_job(&request.into_inner().spec).map_err(Status::from)?;
        Ok(Response::new(PlannedJob {
            job_hash: job.hash(),
            purpose: job.purpose().to_string(),
            spec_json: job.canonical_json(),
        }))
    }

    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<JobStatus>, Status> {
        let (consumer, _) = self.consumer(&request)?;
        Ok(Response::new(self.submit_job(consumer, request.into_inner())?))
    }

    async fn watch(&self, request: Request<JobRef>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.consumer(&request)?;
        let id = request.into_inner().job_id;
        // Subscribe before reading the current state, so no change falls in between.
        let mut updates = self.shared.status.subscribe();
        let current = self.visible_job(&caller, &id)?;
        let shared = self.shared.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let done = current.state.is_final();
            if tx.send(Ok(status_of(&current, &shared.roster))).await.is_err() || done {
                return;
            }
            loop {
                let status = match updates.recv().await {
                    Ok(s) if s.job_id == id => s,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => match shared.store.job(&id) {
                        Ok(Some(j)) => status_of(&j, &shared.roster),
                        _ => return,
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let done = status.state().is_final();
                if tx.send(Ok(status)).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get(&self, request: Request<JobRef>) -> Result<Response<JobStatus>, Status> {
        let caller = self.consumer(&request)?;
        let job = self.visible_job(&caller, &request.into_inner().job_id)?;
        Ok(Response::new(status_of(&job, &self.shared.roster)))
    }

    async fn list(&self, request: Request<ListJobsRequest>) -> Result<Response<JobList>, Status> {
        let (name, admin) = self.consumer(&request)?;
        let jobs = self
            .shared
            .store
            .jobs(if admin { None } else { Some(&name) }, 1_000)
            .map_err(JobsError::from)?;
        Ok(Response::new(JobList {
            jobs: jobs.iter().map(|j| status_of(j, &self.shared.roster)).collect(),
        }))
    }

    async fn cancel(&self, request: Request<JobRef>) -> Result<Response<JobStatus>, Status> {
        let caller = self.consumer(&request)?;
        let job = self.visible_job(&caller, &request.into_inner().job_id)?;
        if job.state.is_final() {
            return Err(JobsError::Ended { id: job.id, state: job.state.as_str() }.into());
        }
        self.shared.route(&job.id, JobInput::Cancel);
        Ok(Response::new(status_of(&job, &self.shared.roster)))
    }

    async fn receipts(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ReceiptList>, Status> {
        let (name, admin) = self.consumer(&request)?;
        let receipts_json = self
            .shared
            .store
            .receipts(if admin { None } else { Some(&name) })
            .map_err(JobsError::from)?;
        Ok(Response::new(ReceiptList { receipts_json }))
    }

    async fn catalog(
        &self,
        request: Request<CatalogRequest>,
    ) -> Result<Response<CatalogList>, Status> {
        self.consumer(&request)?;
        let datasets = self.shared.catalog_view().map_err(JobsError::Catalog)?;
        Ok(Response::new(CatalogList {
            datasets_json: datasets.iter().map(serde_json::Value::to_string).collect(),
        }))
    }

    async fn result(&self, request: Request<JobRef>) -> Result<Response<JobResult>, Status> {
        let caller = self.consumer(&request)?;
        Ok(Response::new(self.fetch_result(caller, &request.into_inner().job_id)?))
    }
}
