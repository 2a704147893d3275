//! `veil._native`: the Rust half of the Python client. A [`Client`] connects with the
//! consumer's `consumer.toml` (mutual TLS, the roster's signing key), plans, signs and submits
//! jobs, and reads statuses and results as the `veil` command does (`veil_cli::views`); local
//! scoring is `veil predict`'s own code. Everything crosses into Python as JSON text, which the
//! `veil` package turns into DataFrames and NumPy arrays.

use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use tonic::transport::Channel;
use veil_proto::client::ConsumerFile;
use veil_proto::submission::Signer;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{CatalogRequest, JobRef, JobStatus, ListJobsRequest};

create_exception!(
    _native,
    VeilError,
    PyException,
    "An error veil reports: its message says what to do."
);

fn error(e: impl std::fmt::Display) -> PyErr {
    VeilError::new_err(e.to_string())
}

fn status_error(s: tonic::Status) -> PyErr {
    VeilError::new_err(s.message().to_string())
}

/// A consumer's connection to the coordinator.
#[pyclass(module = "veil._native")]
struct Client {
    runtime: tokio::runtime::Runtime,
    jobs: JobsClient<Channel>,
    signer: Signer,
}

/// A job's status as JSON: its id, state, detail, latest progress and who it covers.
fn status_json(s: &JobStatus) -> String {
    let progress = serde_json::from_str::<serde_json::Value>(&s.progress_json)
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "job_id": s.job_id,
        "consumer": s.consumer,
        "dataset": s.dataset,
        "state": s.state().name(),
        "detail": s.detail,
        "progress": progress,
        "coverage": veil_cli::views::coverage_json(&s.coverage),
        "created_unix_ms": s.created_unix_ms,
    })
    .to_string()
}

#[pymethods]
impl Client {
    /// Connects as the consumer `config` (a `consumer.toml`) describes.
    #[new]
    #[pyo3(signature = (config, plaintext = false))]
    fn new(config: PathBuf, plaintext: bool) -> PyResult<Self> {
        let file = ConsumerFile::load(&config).map_err(error)?;
        let signer = file.signer(veil_analytics::Job::plan_check).map_err(error)?;
        let tls = if plaintext { None } else { Some(file.tls().map_err(error)?) };
        let url = if plaintext {
            file.coordinator.replacen("https://", "http://", 1)
        } else {
            file.coordinator.clone()
        };
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(error)?;
        let channel =
            runtime.block_on(veil_proto::client::connect(&url, tls.as_ref())).map_err(error)?;
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
        let list = self.runtime.block_on(jobs.catalog(CatalogRequest {})).map_err(status_error)?;
        Ok(list.into_inner().datasets_json)
    }

    /// Plans, signs and submits a job (TOML or JSON text); returns its status as JSON.
    #[pyo3(signature = (spec, require_all = false))]
    fn submit(&self, spec: &str, require_all: bool) -> PyResult<String> {
        veil_analytics::Job::parse(spec).map_err(error)?;
        let mut jobs = self.jobs.clone();
        let status = self
            .runtime
            .block_on(self.signer.submit_with(&mut jobs, spec, require_all))
            .map_err(status_error)?;
        Ok(status_json(&status))
    }

    /// Reads a job file (its trainer program, if it names one, inlined as `veil submit`
    /// does), then plans, signs and submits it; returns its status as JSON.
    #[pyo3(signature = (path, require_all = false))]
    fn submit_file(&self, path: PathBuf, require_all: bool) -> PyResult<String> {
        let spec = veil_cli::jobfile::read(&path).map_err(|e| error(format!("{e:#}")))?;
        self.submit(&spec, require_all)
    }

    /// A job's status now, as JSON.
    fn status(&self, job_id: &str) -> PyResult<String> {
        let mut jobs = self.jobs.clone();
        let s = self
            .runtime
            .block_on(jobs.get(JobRef { job_id: job_id.to_string() }))
            .map_err(status_error)?;
        Ok(status_json(&s.into_inner()))
    }

    /// A finished job's result as `veil query --json` gives it: the table (or the answer)
    /// with its privacy block and who it covers.
    fn result(&self, job_id: &str) -> PyResult<String> {
        let mut jobs = self.jobs.clone();
        let r = self
            .runtime
            .block_on(jobs.result(JobRef { job_id: job_id.to_string() }))
            .map_err(status_error)?;
        Ok(veil_cli::views::query_json(&r.into_inner()))
    }

    /// The job's answer alone, as JSON (a training job's rounds and model, say).
    fn answer(&self, job_id: &str) -> PyResult<String> {
        let mut jobs = self.jobs.clone();
        let r = self
            .runtime
            .block_on(jobs.result(JobRef { job_id: job_id.to_string() }))
            .map_err(status_error)?
            .into_inner();
        Ok(veil_cli::views::with_coverage(&r.answer_json, &r.coverage))
    }

    /// The consumer's jobs (every job for an administrator): one status per element.
    fn jobs(&self) -> PyResult<Vec<String>> {
        let mut jobs = self.jobs.clone();
        let list = self.runtime.block_on(jobs.list(ListJobsRequest {})).map_err(status_error)?;
        Ok(list.into_inner().jobs.iter().map(status_json).collect())
    }

    /// Asks the coordinator to cancel a job; returns its status as JSON.
    fn cancel(&self, job_id: &str) -> PyResult<String> {
        let mut jobs = self.jobs.clone();
        let s = self
            .runtime
            .block_on(jobs.cancel(JobRef { job_id: job_id.to_string() }))
            .map_err(status_error)?;
        Ok(status_json(&s.into_inner()))
    }

    /// The release receipts of the consumer's jobs: one JSON receipt per element.
    fn receipts(&self) -> PyResult<Vec<String>> {
        let mut jobs = self.jobs.clone();
        let list =
            self.runtime.block_on(jobs.receipts(ListJobsRequest {})).map_err(status_error)?;
        Ok(list.into_inner().receipts_json)
    }
}

/// Scores the rows of a CSV file with a model file, exactly as `veil predict` does; returns
/// its CSV output.
#[pyfunction]
fn predict(model: PathBuf, rows: PathBuf) -> PyResult<String> {
    let mut out = Vec::new();
    veil_cli::predict::predict(&model, &rows, &mut out).map_err(|e| error(format!("{e:#}")))?;
    String::from_utf8(out).map_err(error)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add("VeilError", m.py().get_type::<VeilError>())?;
    Ok(())
}
