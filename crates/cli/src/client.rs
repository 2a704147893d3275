//! The consumer and administrator commands: submit, jobs, result, cancel, parties.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;
use veil_analytics::Answer;
use veil_proto::client::ConsumerFile;
use veil_proto::submission::Signer;
use veil_proto::v1::admin_client::AdminClient;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{
    JobRef, JobResult, JobStatus, ListJobsRequest, ListPartiesRequest, Outcome, PartyOutcome,
};

/// Connects as the consumer described by `config`.
pub(crate) async fn channel(config: &Path, plaintext: bool) -> Result<Channel> {
    let file = ConsumerFile::load(config)?;
    let tls = if plaintext { None } else { Some(file.tls()?) };
    let url = if plaintext {
        file.coordinator.replacen("https://", "http://", 1)
    } else {
        file.coordinator.clone()
    };
    veil_proto::client::connect(&url, tls.as_ref()).await.map_err(anyhow::Error::msg)
}

/// The key that signs the consumer's jobs.
pub(crate) fn signer(config: &Path) -> Result<Signer> {
    Ok(ConsumerFile::load(config)?.signer(veil_analytics::Job::plan_check)?)
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}{}", code_name(s.code()), s.message(), hint(&s))
}

/// What a transport failure most likely means, for the two a consumer meets: a coordinator
/// whose TLS handshake refused this certificate (it ends the connection, which the client
/// reports as cancelled), and a client and coordinator that disagree on TLS.
fn hint(s: &tonic::Status) -> &'static str {
    let m = s.message().to_ascii_lowercase();
    if m.contains("h2 protocol error") || m.contains("invalid http version") {
        "\n  hint: the coordinator and this client disagree on TLS: a plain-text client against \
         a TLS coordinator (or the reverse). Use the https:// address from consumer.toml, and \
         --dangerous-plaintext only against a coordinator started with it"
    } else if s.code() == tonic::Code::Cancelled
        || m.contains("operation was canceled")
        || m.contains("transport error")
        || m.contains("handshake")
        || m.contains("certificate")
    {
        "\n  hint: the coordinator ended the connection during or right after the TLS handshake: \
         check that the certificate in consumer.toml was issued by this consortium's CA (veil \
         init) and that the coordinator address is this consortium's"
    } else {
        ""
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unavailable => "coordinator unavailable",
        _ => "error",
    }
}

fn time(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// Submits a job and, unless `detach`, follows it to its end and prints the answer.
pub(crate) async fn submit(
    config: &Path,
    spec_path: &Path,
    json: bool,
    detach: bool,
    exports: &Exports,
    plaintext: bool,
    require_all: bool,
) -> Result<()> {
    let spec = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read {}", spec_path.display()))?;
    // Check it here first, for a message that names the file.
    veil_analytics::Job::parse(&spec).with_context(|| format!("{}", spec_path.display()))?;
    let signer = signer(config)?;
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let status = signer.submit_with(&mut jobs, &spec, require_all).await.map_err(status_error)?;
    if detach {
        if json {
            println!("{}", serde_json::json!({ "job_id": status.job_id, "state": status.state }));
        } else {
            println!("submitted job {}", status.job_id);
        }
        return Ok(());
    }
    if !json {
        eprintln!("job {} submitted", status.job_id);
    }
    let last = follow(&mut jobs, &status.job_id, !json).await?;
    if last.state != "succeeded" {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "job_id": last.job_id, "state": last.state, "detail": last.detail,
                    "coverage": coverage_json(&last.coverage),
                })
            );
        }
        bail!("job {} {}: {}", last.job_id, last.state, last.detail);
    }
    let result = jobs
        .result(JobRef { job_id: last.job_id.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    print_result(&result, json)?;
    exports.write(&result)
}

/// Where to write a training job's model.
pub(crate) struct Exports {
    /// The model file (JSON).
    pub(crate) model: Option<PathBuf>,
    /// The weights as safetensors.
    pub(crate) safetensors: Option<PathBuf>,
}

impl Exports {
    /// Writes the requested files from a training job's result; an error for other jobs.
    fn write(&self, result: &JobResult) -> Result<()> {
        if self.model.is_none() && self.safetensors.is_none() {
            return Ok(());
        }
        let answer: serde_json::Value =
            serde_json::from_str(&result.answer_json).context("the result is not JSON")?;
        let Some(model) = answer.get("model") else {
            bail!("job {} is not a training job: it has no model to write", result.job_id);
        };
        let file = veil_learning::export::ModelFile::from_json(model.to_string().as_bytes())
            .context("the job's model")?;
        if let Some(path) = &self.model {
            write_atomically(path, file.to_json().as_bytes())?;
            eprintln!("model written to {}", path.display());
        }
        if let Some(path) = &self.safetensors {
            write_atomically(path, &file.to_safetensors())?;
            eprintln!("weights written to {}", path.display());
        }
        Ok(())
    }
}

/// Writes through a new temporary file in the same directory, synced, then renamed over the
/// target, so a reader never sees half a file and a crash leaves the old one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Watches a job to its end, printing each change unless quiet.
pub(crate) async fn follow(
    jobs: &mut JobsClient<Channel>,
    job_id: &str,
    show: bool,
) -> Result<JobStatus> {
    let mut stream =
        jobs.watch(JobRef { job_id: job_id.to_string() }).await.map_err(status_error)?.into_inner();
    let mut last: Option<JobStatus> = None;
    while let Some(s) = stream.message().await.map_err(status_error)? {
        if show && last.as_ref().is_none_or(|l| l.state != s.state || l.detail != s.detail) {
            eprintln!("  [{}] {:<9} {}", time(s.updated_unix_ms), s.state, s.detail);
        }
        last = Some(s);
    }
    last.context("the coordinator closed the watch without a status")
}

/// The parties a job covers, as JSON.
fn coverage_json(coverage: &[PartyOutcome]) -> serde_json::Value {
    coverage
        .iter()
        .map(|p| {
            let outcome = Outcome::try_from(p.outcome).unwrap_or(Outcome::Unspecified);
            let mut v = serde_json::json!({
                "party_id": p.party_id,
                "name": p.name,
                "outcome": outcome_name(outcome),
            });
            if !p.rule.is_empty() {
                v["rule"] = p.rule.clone().into();
            }
            if !p.reason.is_empty() {
                v["reason"] = p.reason.clone().into();
            }
            v
        })
        .collect()
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Contributed => "contributed",
        Outcome::Accepted => "accepted",
        Outcome::Refused => "refused",
        Outcome::Offline => "offline",
        Outcome::DataUnavailable => "data-unavailable",
        Outcome::Dropped => "dropped",
        Outcome::NoAnswer => "no-answer",
        Outcome::Fault => "fault",
        Outcome::Unspecified => "unknown",
    }
}

/// An answer's JSON with who it covers added (`coverage`), when it is an object.
fn with_coverage(answer_json: &str, coverage: &[PartyOutcome]) -> String {
    match serde_json::from_str::<serde_json::Value>(answer_json) {
        Ok(serde_json::Value::Object(mut o)) if !coverage.is_empty() => {
            o.insert("coverage".into(), coverage_json(coverage));
            serde_json::Value::Object(o).to_string()
        }
        _ => answer_json.to_string(),
    }
}

/// Which parties an answer covers, and a warning when it covers fewer than serve the dataset.
fn print_coverage(coverage: &[PartyOutcome]) {
    if coverage.is_empty() {
        return;
    }
    let serving = coverage.len();
    let contributed = coverage.iter().filter(|p| p.outcome == Outcome::Contributed as i32).count();
    if contributed < serving {
        println!(
            "warning: this answer covers {contributed} of the {serving} parties that serve the dataset"
        );
    }
    println!("parties:");
    for p in coverage {
        let outcome = Outcome::try_from(p.outcome).unwrap_or(Outcome::Unspecified);
        let why = match (outcome, p.rule.as_str()) {
            (Outcome::Contributed | Outcome::Accepted, _) => String::new(),
            (Outcome::Refused, rule) => format!(": refused by rule {rule}: {}", p.reason),
            (_, _) => format!(": {}", p.reason),
        };
        let name = if p.name.is_empty() { format!("party {}", p.party_id) } else { p.name.clone() };
        println!("  {name:<16} {}{why}", outcome_name(outcome));
    }
}

pub(crate) fn print_result(result: &JobResult, json: bool) -> Result<()> {
    if json {
        println!("{}", with_coverage(&result.answer_json, &result.coverage));
        return Ok(());
    }
    let training = serde_json::from_str::<serde_json::Value>(&result.answer_json)
        .ok()
        .filter(|a| a.get("kind").and_then(|k| k.as_str()) == Some("train"));
    if let Some(answer) = training {
        print_training(&answer);
    } else if !result.table_json.is_empty() {
        print_table(result)?;
    } else {
        match serde_json::from_str::<Answer>(&result.answer_json) {
            Ok(a) => print_answer(&a),
            Err(_) => println!("{}", result.answer_json),
        }
    }
    print_coverage(&result.coverage);
    Ok(())
}

/// A readable summary of a training job's result.
fn print_training(answer: &serde_json::Value) {
    let model = &answer["model"];
    let rounds = answer["rounds"].as_array().map_or(0, Vec::len);
    println!(
        "model {} on {} features of dataset {:?}, label {:?}: {rounds} rounds",
        model["spec"]["kind"].as_str().unwrap_or("?"),
        model["features"].as_array().map_or(0, Vec::len),
        model["provenance"]["dataset"].as_str().unwrap_or("?"),
        model["label"].as_str().unwrap_or("?"),
    );
    let metric = |m: &serde_json::Value| {
        let mut line = format!("loss {:.4}", m["loss"].as_f64().unwrap_or(f64::NAN));
        if let Some(a) = m["accuracy"].as_f64() {
            line += &format!(", accuracy {a:.4}");
        }
        if let Some(a) = m["auc"].as_f64() {
            line += &format!(", AUC {a:.4}");
        }
        line
    };
    if let Some(f) = answer.get("final").filter(|f| !f.is_null()) {
        println!(
            "held-out evaluation of the final model over {} rows: {}",
            f["rows"].as_u64().unwrap_or(0),
            metric(f)
        );
    }
    if let Some(e) = answer["epsilon"].as_f64() {
        println!(
            "differential privacy: ε = {e:.3} at δ = {}",
            answer["delta"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(s) = answer["stopped_early"].as_str() {
        println!("{s}");
    }
}

/// A readable table of a column-aggregate answer.
pub(crate) fn print_answer(a: &Answer) {
    println!(
        "dataset {:?}: {} rows from parties {:?}{}",
        a.dataset,
        a.rows,
        a.contributors,
        if a.dropped.is_empty() {
            String::new()
        } else {
            format!(" (dropped out: {:?})", a.dropped)
        }
    );
    println!(
        "{:<20} {:>10} {:>16} {:>14} {:>14} {:>9}",
        "column", "count", "sum", "mean", "std dev", "clipped"
    );
    for c in &a.columns {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        println!(
            "{:<20} {:>10} {:>16.4} {:>14} {:>14} {:>9}",
            c.name,
            c.count,
            c.sum,
            opt(c.mean),
            opt(c.std_dev),
            c.clipped_below + c.clipped_above
        );
        if let Some(h) = &c.histogram {
            let count = |n: Option<u64>| n.map_or("suppressed".to_string(), |n| n.to_string());
            let bins: Vec<String> = h
                .counts
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!(
                        "[{}, {}{}: {}",
                        h.edges[i],
                        h.edges[i + 1],
                        if i + 2 == h.edges.len() { "]" } else { ")" },
                        count(*n)
                    )
                })
                .collect();
            println!(
                "{:<20} below {}; {}; above {}",
                "  histogram",
                count(h.below),
                bins.join("; "),
                count(h.above)
            );
        }
    }
}

pub(crate) async fn jobs(config: &Path, json: bool, plaintext: bool) -> Result<()> {
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let list = jobs.list(ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|j| serde_json::json!({
                "job_id": j.job_id, "consumer": j.consumer, "dataset": j.dataset, "state": j.state,
                "detail": j.detail, "parties": j.parties, "created_unix_ms": j.created_unix_ms,
            }))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if list.is_empty() {
        println!("no jobs");
    }
    for j in list {
        println!(
            "{}  {:<9}  {:<12} {:<10} {}",
            j.job_id,
            j.state,
            j.dataset,
            time(j.created_unix_ms),
            j.detail
        );
    }
    Ok(())
}

pub(crate) async fn result(
    config: &Path,
    job_id: &str,
    json: bool,
    exports: &Exports,
    plaintext: bool,
) -> Result<()> {
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let r = jobs
        .result(JobRef { job_id: job_id.to_string() })
        .await
        .map_err(status_error)?
        .into_inner();
    print_result(&r, json)?;
    exports.write(&r)
}

pub(crate) async fn cancel(config: &Path, job_id: &str, plaintext: bool) -> Result<()> {
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    jobs.cancel(JobRef { job_id: job_id.to_string() }).await.map_err(status_error)?;
    // The job ends shortly; report how.
    let last =
        tokio::time::timeout(Duration::from_secs(10), follow(&mut jobs, job_id, false)).await;
    match last {
        Ok(Ok(s)) => println!("job {job_id}: {} ({})", s.state, s.detail),
        _ => println!("job {job_id}: cancellation requested"),
    }
    Ok(())
}

pub(crate) async fn parties(config: &Path, json: bool, plaintext: bool) -> Result<()> {
    let mut admin = AdminClient::new(channel(config, plaintext).await?);
    let list =
        admin.list_parties(ListPartiesRequest {}).await.map_err(status_error)?.into_inner().parties;
    for p in list {
        if json {
            println!(
                "{}",
                serde_json::json!({"party_id": p.party_id, "name": p.name, "connected": p.connected, "datasets": p.datasets})
            );
        } else {
            println!(
                "{:>3} {:<16} {:<12} {}",
                p.party_id,
                p.name,
                if p.connected { "connected" } else { "offline" },
                p.datasets.join(", ")
            );
        }
    }
    Ok(())
}

/// Runs a SQL query and prints its result table.
pub(crate) async fn query(
    config: &Path,
    sql: &str,
    options: serde_json::Value,
    json: bool,
    plaintext: bool,
    require_all: bool,
) -> Result<()> {
    let mut request = options;
    request["sql"] = serde_json::Value::String(sql.to_string());
    let signer = signer(config)?;
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let status = signer
        .submit_with(&mut jobs, &request.to_string(), require_all)
        .await
        .map_err(status_error)?;
    let last = follow(&mut jobs, &status.job_id, !json).await?;
    if last.state != "succeeded" {
        bail!("query {} {}: {}", last.job_id, last.state, last.detail);
    }
    let result =
        jobs.result(JobRef { job_id: last.job_id }).await.map_err(status_error)?.into_inner();
    if json {
        let text =
            if result.table_json.is_empty() { &result.answer_json } else { &result.table_json };
        println!("{}", with_coverage(text, &result.coverage));
        return Ok(());
    }
    print_result(&result, false)
}

/// A SQL job's result table, and its privacy line.
fn print_table(result: &JobResult) -> Result<()> {
    let table: serde_json::Value =
        serde_json::from_str(&result.table_json).context("the result has no table")?;
    let headers: Vec<String> = table["headers"]
        .as_array()
        .map(|h| h.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default();
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "—".to_string(),
        serde_json::Value::Number(n) => n.as_f64().map_or(n.to_string(), |f| {
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{}", f as i64)
            } else {
                format!("{f:.4}")
            }
        }),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = table["rows"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|row| row.as_array().map(|c| c.iter().map(cell).collect()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter().map(|r| r.get(i).map_or(0, String::len)).max().unwrap_or(0).max(h.len())
        })
        .collect();
    let line = |cells: &[String]| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ")
    };
    println!("{}", line(&headers));
    for r in &rows {
        println!("{}", line(r));
    }
    if let Ok(answer) = serde_json::from_str::<Answer>(&result.answer_json) {
        if let Some(p) = answer.privacy {
            println!(
                "differentially private: ρ = {} (ε = {:.3} at δ = {}), noise multiplier {:.3} over ≥ {} parties",
                p.rho, p.epsilon, p.delta, p.multiplier, p.parties
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_say_what_to_check() {
        let foreign_ca = tonic::Status::cancelled("operation was canceled");
        assert!(status_error(foreign_ca).to_string().contains("this consortium's CA"));
        let refused = tonic::Status::unknown("transport error");
        assert!(status_error(refused).to_string().contains("this consortium's CA"));
        let mismatch = tonic::Status::internal("h2 protocol error: http2 error");
        assert!(status_error(mismatch).to_string().contains("disagree on TLS"));
        let plain = tonic::Status::not_found("no job abc");
        assert_eq!(status_error(plain).to_string(), "not found: no job abc");
    }
}
