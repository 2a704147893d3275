//! `veil._native`: the Rust half of the Python client. A [`Client`] connects with the
//! consumer's `consumer.toml` (mutual TLS, the roster's signing key), plans, signs and submits
//! jobs, and reads statuses and results as the `veil` command does (`veil_cli::views`); local
//! scoring is `veil predict`'s own code. Everything crosses into Python as JSON text, which the
//! `veil` package turns into DataFrames and NumPy arrays.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use tonic::transport::Channel;
use veil_proto::submission::Signer;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{CatalogRequest, JobRef, JobState, JobStatus, ListJobsRequest};

/// The longest one call to the coordinator may take: a coordinator that accepts the
/// connection and then says nothing does not hang the caller.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

create_exception!(
    _native,
    VeilError,
    PyException,
    "An error veil reports: its message says what to do."
);

fn error(e: impl std::fmt::Display) -> PyErr {
    VeilError::new_err(e.to_string())
}

/// The sentence `veil` prints for a gRPC status (its kind, the message, a hint).
fn status_error(s: tonic::Status) -> PyErr {
    VeilError::new_err(veil_cli::consumer::status_error(s).to_string())
}

/// A consumer's connection to the coordinator.
#[pyclass(module = "veil._native")]
struct Client {
    runtime: tokio::runtime::Runtime,
    jobs: JobsClient<Channel>,
    signer: Signer,
}

/// A job's status as JSON: its id, state (and whether it is final), detail, latest progress
/// and who it covers.
fn status_json(s: &JobStatus) -> String {
    let progress = serde_json::from_str::<serde_json::Value>(&s.progress_json)
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "job_id": s.job_id,
        "consumer": s.consumer,
        "dataset": s.dataset,
        "state": s.state().name(),
        "final": matches!(s.state(), JobState::Succeeded | JobState::Failed | JobState::Cancelled),
        "detail": s.detail,
        "progress": progress,
        "coverage": veil_cli::views::coverage_json(&s.coverage),
        "created_unix_ms": s.created_unix_ms,
    })
    .to_string()
}

impl Client {
    /// Runs one call to the coordinator, for at most [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> PyResult<T> {
        // The timer is made inside the runtime, which owns it.
        match self.runtime.block_on(async { tokio::time::timeout(CALL_TIMEOUT, future).await }) {
            Ok(result) => result.map_err(status_error),
            Err(_) => Err(error(format!(
                "the coordinator did not answer within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    fn job(&self, job_id: &str) -> JobRef {
        JobRef { job_id: job_id.to_string() }
    }
}

#[pymethods]
impl Client {
    /// Connects as the consumer `config` (a `consumer.toml`) describes, as `veil` does.
    #[new]
    #[pyo3(signature = (config, dangerous_plaintext = false))]
    fn new(config: PathBuf, dangerous_plaintext: bool) -> PyResult<Self> {
        let signer = veil_cli::consumer::signer(&config)
            .map_err(|e| error(veil_cli::consumer::one_line(&e)))?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(error)?;
        let connect = veil_cli::consumer::channel(&config, dangerous_plaintext);
        let channel =
            match runtime.block_on(async { tokio::time::timeout(CALL_TIMEOUT, connect).await }) {
                Ok(channel) => channel.map_err(|e| error(veil_cli::consumer::one_line(&e)))?,
                Err(_) => return Err(error("the coordinator did not answer the connection")),
            };
        Ok(Self { runtime, jobs: JobsClient::new(channel), signer })
    }

    /// The consumer's name in the roster.
    #[getter]
    fn name(&self) -> String {
        self.signer.name().to_string()
    }

    /// What the connected parties serve: one JSON object per dataset.
    fn datasets(&self) -> PyResult<Vec<String>> {
        let mut jobs = self.jobs.clone();
        Ok(self.call(jobs.catalog(CatalogRequest {}))?.into_inner().datasets_json)
    }

    /// Plans, signs and submits a job (TOML or JSON text); returns its status as JSON.
    #[pyo3(signature = (spec, require_all = false))]
    fn submit(&self, spec: &str, require_all: bool) -> PyResult<String> {
        veil_analytics::Job::parse(spec).map_err(error)?;
        let mut jobs = self.jobs.clone();
        let status = self.call(self.signer.submit_with(&mut jobs, spec, require_all))?;
        Ok(status_json(&status))
    }

    /// Reads a job file (its trainer program, if it names one, inlined as `veil submit`
    /// does), then plans, signs and submits it; returns its status as JSON.
    #[pyo3(signature = (path, require_all = false))]
    fn submit_file(&self, path: PathBuf, require_all: bool) -> PyResult<String> {
        let spec =
            veil_cli::jobfile::read(&path).map_err(|e| error(veil_cli::consumer::one_line(&e)))?;
        self.submit(&spec, require_all)
    }

    /// A job's status now, as JSON.
    fn status(&self, job_id: &str) -> PyResult<String> {
        let mut jobs = self.jobs.clone();
        Ok(status_json(&self.call(jobs.get(self.job(job_id)))?.into_inner()))
    }

    /// A finished job's result, fetched once (each fetch counts against the consumer's
    /// quota), as two JSON texts: `veil query --json`'s view (the table, or the answer, with
    /// its privacy block and who it covers), and the answer alone with who it covers (a
    /// training job's rounds and model).
    fn result(&self, job_id: &str) -> PyResult<(String, String)> {
        let mut jobs = self.jobs.clone();
        let r = self.call(jobs.result(self.job(job_id)))?.into_inner();
        Ok((
            veil_cli::views::query_json(&r),
            veil_cli::views::with_coverage(&r.answer_json, &r.coverage),
        ))
    }

    /// The consumer's jobs (every job for an administrator): one status per element.
    fn jobs(&self) -> PyResult<Vec<String>> {
        let mut jobs = self.jobs.clone();
        Ok(self
            .call(jobs.list(ListJobsRequest {}))?
            .into_inner()
            .jobs
            .iter()
            .map(status_json)
            .collect())
    }

    /// Asks the coordinator to cancel a job; returns its status as JSON.
    fn cancel(&self, job_id: &str) -> PyResult<String> {
        let mut jobs = self.jobs.clone();
        Ok(status_json(&self.call(jobs.cancel(self.job(job_id)))?.into_inner()))
    }

    /// The release receipts of the consumer's jobs: one JSON receipt per element.
    fn receipts(&self) -> PyResult<Vec<String>> {
        let mut jobs = self.jobs.clone();
        Ok(self.call(jobs.receipts(ListJobsRequest {}))?.into_inner().receipts_json)
    }
}

/// Scores the rows of a CSV file with a model file, exactly as `veil predict` does; returns
/// its CSV output.
#[pyfunction]
fn predict(model: PathBuf, rows: PathBuf) -> PyResult<String> {
    let mut out = Vec::new();
    veil_cli::predict::predict(&model, &rows, &mut out)
        .map_err(|e| error(veil_cli::consumer::one_line(&e)))?;
    String::from_utf8(out).map_err(error)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add("VeilError", m.py().get_type::<VeilError>())?;
    Ok(())
}
