//! The consumer and administrator commands: submit, jobs, result, cancel, parties.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;
use veil_analytics::Answer;
use veil_analytics::sql::{HistogramOutput, Table};
use veil_cli::consumer::{channel, signer, status_error};
use veil_cli::views::{coverage_json, outcome_name, query_json, with_coverage};
use veil_proto::v1::JobState;
use veil_proto::v1::admin_client::AdminClient;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{
    CatalogRequest, JobRef, JobResult, JobStatus, ListJobsRequest, ListPartiesRequest, Outcome,
    PartyOutcome,
};

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
    let spec = veil_cli::jobfile::read(spec_path)?;
    // Check it here first, for a message that names the file.
    veil_analytics::Job::parse(&spec).with_context(|| format!("{}", spec_path.display()))?;
    let signer = signer(config)?;
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let status = signer.submit_with(&mut jobs, &spec, require_all).await.map_err(status_error)?;
    if detach {
        if json {
            println!(
                "{}",
                serde_json::json!({ "job_id": status.job_id, "state": status.state().name() })
            );
        } else {
            println!("submitted job {}", status.job_id);
        }
        return Ok(());
    }
    if !json {
        eprintln!("job {} submitted", status.job_id);
    }
    let last = follow(&mut jobs, &status.job_id, !json).await?;
    if last.state() != JobState::Succeeded {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "job_id": last.job_id, "state": last.state().name(), "detail": last.detail,
                    "coverage": coverage_json(&last.coverage),
                })
            );
        }
        bail!("job {} {}: {}", last.job_id, last.state().name(), last.detail);
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
            eprintln!("  [{}] {:<9} {}", time(s.updated_unix_ms), s.state().name(), s.detail);
        }
        last = Some(s);
    }
    last.context("the coordinator closed the watch without a status")
}

/// The parties a job covers, as JSON.
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
    let answer = serde_json::from_str::<serde_json::Value>(&result.answer_json).ok();
    let kind = answer.as_ref().and_then(|a| a.get("kind")).and_then(|k| k.as_str());
    if let (Some(answer), Some("train")) = (&answer, kind) {
        print_training(answer);
    } else if let (Some(answer), Some("psi")) = (&answer, kind) {
        print_intersection(answer);
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

/// How `veil psi` runs an intersection.
pub(crate) struct PsiOptions {
    /// Match keys regardless of case.
    pub(crate) case_fold: bool,
    /// Release the size with noise at this ρ.
    pub(crate) rho: Option<f64>,
    /// Give the first side's party the intersection itself.
    pub(crate) intersection: bool,
}

/// A readable line for an intersection's result.
fn print_intersection(answer: &serde_json::Value) {
    let side = |s: &serde_json::Value| {
        format!(
            "{}.{} ({} keys)",
            s["dataset"].as_str().unwrap_or("?"),
            s["key"].as_str().unwrap_or("?"),
            s["keys"].as_u64().unwrap_or(0)
        )
    };
    let size = answer["intersection_size"].as_u64().unwrap_or(0);
    let size = match answer["privacy"]["ci95"].as_f64() {
        Some(ci) => format!("about {size} (± {ci:.0} at 95 %, ρ = {})", answer["privacy"]["rho"]),
        None => size.to_string(),
    };
    println!(
        "{size} keys in common between {} and {}",
        side(&answer["client"]),
        side(&answer["server"])
    );
    if let Some(party) = answer["intersection"]["kept_by"].as_str() {
        println!("the intersection itself is kept by party {party}, which served the first side");
    }
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
    print!("{}", answer_text(a));
}

/// [`print_answer`]'s text: a line per column (per group, for a grouped job), with the 95%
/// intervals of the noise of a differentially private answer.
fn answer_text(a: &Answer) -> String {
    let mut out = format!(
        "dataset {:?}: {} rows from parties {:?}{}\n",
        a.dataset,
        a.rows,
        a.contributors,
        if a.dropped.is_empty() {
            String::new()
        } else {
            format!(" (dropped out: {:?})", a.dropped)
        }
    );
    let grouped = !a.groups.is_empty();
    let mut headers: Vec<String> = Vec::new();
    if grouped {
        headers.extend(["group".to_string(), "rows".to_string()]);
    }
    headers.extend(["column", "count", "sum", "mean", "std dev", "clipped"].map(String::from));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut histograms: Vec<String> = Vec::new();
    let private = a.privacy.is_some();
    let sections: Vec<(Option<String>, Option<u64>, &[veil_analytics::ColumnAnswer])> = if grouped {
        a.groups.iter().map(|g| (Some(g.key.join(", ")), g.rows, g.columns.as_slice())).collect()
    } else {
        vec![(None, Some(a.rows), a.columns.as_slice())]
    };
    for (key, group_rows, columns) in sections {
        let lead = |row: &mut Vec<String>| {
            if let Some(k) = &key {
                let count = group_rows.map_or("suppressed".to_string(), |n| {
                    let ci = a.privacy.map(|p| 1.96 * p.count_sd(a.contributors.len()));
                    with_ci(n.to_string(), ci, private)
                });
                row.extend([k.clone(), count]);
            }
        };
        if columns.is_empty() && grouped {
            let mut row = Vec::new();
            lead(&mut row);
            row.resize(headers.len(), String::new());
            rows.push(row);
        }
        for c in columns {
            let mut row = Vec::new();
            lead(&mut row);
            if c.suppressed {
                row.push(c.name.clone());
                row.push("withheld (k-threshold)".to_string());
                row.resize(headers.len(), String::new());
                rows.push(row);
                continue;
            }
            let noise = c.noise.as_ref();
            let opt = |v: Option<f64>, ci: Option<f64>| {
                v.map_or("-".to_string(), |v| with_ci(format!("{v:.4}"), ci, private))
            };
            row.extend([
                c.name.clone(),
                with_ci(c.count.to_string(), noise.map(|n| n.count_ci95), private),
                with_ci(format!("{:.4}", c.sum), noise.map(|n| n.sum_ci95), private),
                opt(c.mean, noise.and_then(|n| n.mean_bound_ci95(c))),
                opt(c.std_dev, None),
                // Two noisy counters: their noise adds.
                with_ci(
                    (c.clipped_below + c.clipped_above).to_string(),
                    noise.map(|n| n.count_ci95 * std::f64::consts::SQRT_2),
                    private,
                ),
            ]);
            rows.push(row);
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
                let per_slot = noise.map_or(String::new(), |n| {
                    format!(" (± {} per slot)", significant(n.histogram_bin_ci95))
                });
                let whose = key.as_ref().map_or(String::new(), |k| format!(" of {k}"));
                histograms.push(format!(
                    "  histogram of {}{whose}: below {}; {}; above {}{per_slot}",
                    c.name,
                    count(h.below),
                    bins.join("; "),
                    count(h.above)
                ));
            }
        }
    }
    out += &aligned(&headers, &rows);
    for h in histograms {
        out += &h;
        out.push('\n');
    }
    if let Some(p) = a.privacy {
        out += &privacy_line(&p);
        out += "±: half-width of a 95% interval of the noise (count, sum, clipped, histogram \
                slots: 1.96 standard deviations; mean: a conservative bound); ±?: none can be \
                stated\n";
    }
    out
}

/// `value ± half-width`; under differential privacy a value without one is `value ±?`.
fn with_ci(value: String, ci95: Option<f64>, private: bool) -> String {
    match ci95 {
        Some(h) => format!("{value} ± {}", significant(h)),
        None if private => format!("{value} ±?"),
        None => value,
    }
}

/// `x` to three significant digits (a half-width: more would be noise).
fn significant(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

/// Rows under their headings, right-aligned in columns.
fn aligned(headers: &[String], rows: &[Vec<String>]) -> String {
    let width = |s: &String| s.chars().count();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter().map(|r| r.get(i).map_or(0, width)).max().unwrap_or(0).max(width(h))
        })
        .collect();
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{}{c}", " ".repeat(w.saturating_sub(width(c)))))
            .collect();
        cells.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers);
    for r in rows {
        out += &line(r);
    }
    out
}

fn privacy_line(p: &veil_analytics::DpCalibration) -> String {
    format!(
        "differentially private: ρ = {} (ε = {:.3} at δ = {}), noise multiplier {:.3} over ≥ {} parties\n",
        p.rho, p.epsilon, p.delta, p.multiplier, p.parties
    )
}

/// Lists what the connected parties serve.
pub(crate) async fn datasets(config: &Path, json: bool, plaintext: bool) -> Result<()> {
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let list = jobs.catalog(CatalogRequest {}).await.map_err(status_error)?.into_inner();
    let datasets: Vec<serde_json::Value> = list
        .datasets_json
        .iter()
        .map(|d| serde_json::from_str(d).context("an unreadable catalog entry"))
        .collect::<Result<_>>()?;
    if json {
        println!("{}", serde_json::Value::Array(datasets));
        return Ok(());
    }
    if datasets.is_empty() {
        println!("no connected party serves a dataset");
    }
    print!("{}", datasets_text(&datasets));
    Ok(())
}

/// `veil datasets`' text: each dataset, its parties, and a line per column.
fn datasets_text(datasets: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for d in datasets {
        let names = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        out += &format!(
            "{}  (served by {})\n",
            d["name"].as_str().unwrap_or("?"),
            names(&d["parties"]).join(", ")
        );
        let columns = d["columns"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = columns
            .iter()
            .map(|c| {
                let bounds = match c["bounds"].as_array() {
                    Some(b) if b.len() == 2 => format!("[{}, {}]", b[0], b[1]),
                    _ => String::new(),
                };
                let domain = names(&c["domain"]);
                vec![
                    format!("  {}", c["name"].as_str().unwrap_or("?")),
                    c["type"].as_str().unwrap_or("?").to_string(),
                    bounds,
                    if domain.is_empty() { String::new() } else { domain.join(", ") },
                ]
            })
            .collect();
        let headers = ["  column", "type", "bounds", "domain"].map(String::from).to_vec();
        out += &aligned(&headers, &rows);
    }
    out
}

pub(crate) async fn jobs(config: &Path, json: bool, plaintext: bool) -> Result<()> {
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let list = jobs.list(ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|j| serde_json::json!({
                "job_id": j.job_id, "consumer": j.consumer, "dataset": j.dataset, "state": j.state().name(),
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
            j.state().name(),
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
        Ok(Ok(s)) => println!("job {job_id}: {} ({})", s.state().name(), s.detail),
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

/// Runs a private set intersection between two datasets' key columns and prints its size.
pub(crate) async fn psi(
    config: &Path,
    client: &str,
    server: &str,
    options: PsiOptions,
    json: bool,
    plaintext: bool,
) -> Result<()> {
    let PsiOptions { case_fold, rho, intersection } = options;
    let side = |s: &str| -> Result<serde_json::Value> {
        let (dataset, key) = s
            .rsplit_once('.')
            .with_context(|| format!("{s:?}: name a side as <dataset>.<key column>"))?;
        Ok(serde_json::json!({ "dataset": dataset, "key": key }))
    };
    let mut spec = serde_json::json!({
        "kind": "psi", "client": side(client)?, "server": side(server)?, "case_fold": case_fold,
    });
    if let Some(rho) = rho {
        spec["privacy"] = serde_json::json!({ "rho": rho });
    }
    if intersection {
        spec["output"] = serde_json::json!("intersection");
    }
    let signer = signer(config)?;
    let mut jobs = JobsClient::new(channel(config, plaintext).await?);
    let status = signer.submit(&mut jobs, &spec.to_string()).await.map_err(status_error)?;
    let last = follow(&mut jobs, &status.job_id, !json).await?;
    if last.state() != JobState::Succeeded {
        bail!("intersection {} {}: {}", last.job_id, last.state().name(), last.detail);
    }
    let result =
        jobs.result(JobRef { job_id: last.job_id }).await.map_err(status_error)?.into_inner();
    print_result(&result, json)
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
    if last.state() != JobState::Succeeded {
        bail!("query {} {}: {}", last.job_id, last.state().name(), last.detail);
    }
    let result =
        jobs.result(JobRef { job_id: last.job_id }).await.map_err(status_error)?.into_inner();
    if json {
        println!("{}", query_json(&result));
        return Ok(());
    }
    print_result(&result, false)
}

/// A SQL job's result table, its privacy line and its notes.
fn print_table(result: &JobResult) -> Result<()> {
    print!("{}", table_text(result)?);
    Ok(())
}

/// [`print_table`]'s text: values with the 95% half-widths of their noise (`±?` where none
/// can be stated), histograms with their edges, readings off a histogram marked approximate
/// (`≈` in the heading), then the privacy line and the table's notes.
fn table_text(result: &JobResult) -> Result<String> {
    let table: Table =
        serde_json::from_str(&result.table_json).context("the result has no table")?;
    let privacy = table.privacy.or_else(|| {
        serde_json::from_str::<Answer>(&result.answer_json).ok().and_then(|a| a.privacy)
    });
    let number = |n: &serde_json::Number| {
        n.as_f64().map_or(n.to_string(), |f| {
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{}", f as i64)
            } else {
                format!("{f:.4}")
            }
        })
    };
    let plain = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "—".to_string(),
        serde_json::Value::Number(n) => number(n),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut headers = table.headers.clone();
    for a in &table.approximate {
        if let Some(h) = headers.get_mut(a.column) {
            h.push_str(" ≈");
        }
    }
    let mut marked = false;
    let rows: Vec<Vec<String>> = table
        .rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(i, v)| {
                    let ci = table.ci95.as_ref().and_then(|c| c.get(r)?.get(i).copied().flatten());
                    let noisy = privacy.is_some()
                        && matches!(v, serde_json::Value::Number(_) | serde_json::Value::Array(_));
                    let mut text = match (v, table.histograms.iter().find(|h| h.column == i)) {
                        (serde_json::Value::Array(counts), Some(h)) => {
                            histogram_cell(counts, h, r, &plain)
                        }
                        _ => plain(v),
                    };
                    let reading = table
                        .approximate
                        .iter()
                        .find(|a| a.column == i)
                        .and_then(|a| a.readings.get(r).copied().flatten());
                    if reading.is_some_and(|x| x.clamped || x.bin_width.is_none()) {
                        text.push('*');
                        marked = true;
                    }
                    match (noisy, v.is_array()) {
                        (false, _) => text,
                        (true, true) => match ci {
                            Some(h) => format!("{text} (± {} per bin)", significant(h)),
                            None => format!("{text} (±?)"),
                        },
                        (true, false) => with_ci(text, ci, true),
                    }
                })
                .collect()
        })
        .collect();
    let mut out = aligned(&headers, &rows);
    if marked {
        out += "*: read beyond the declared bounds or the histogram's edges, shown at the nearer one\n";
    }
    if let Some(p) = privacy {
        out += &privacy_line(&p);
    }
    for n in &table.notes {
        out += &format!("note: {n}\n");
    }
    Ok(out)
}

/// A histogram cell: each bin's count under its edges, and the slots outside them.
fn histogram_cell(
    counts: &[serde_json::Value],
    h: &HistogramOutput,
    row: usize,
    plain: &dyn Fn(&serde_json::Value) -> String,
) -> String {
    let slot = |n: Option<Option<u64>>| n.flatten().map_or("—".to_string(), |n| n.to_string());
    let (Some(first), Some(last)) = (h.edges.first(), h.edges.last()) else {
        return serde_json::Value::Array(counts.to_vec()).to_string();
    };
    let mut parts = vec![format!("<{first}: {}", slot(h.below.get(row).copied()))];
    for (i, n) in counts.iter().enumerate() {
        let (Some(lo), Some(hi)) = (h.edges.get(i), h.edges.get(i + 1)) else { break };
        let close = if i + 2 == h.edges.len() { "]" } else { ")" };
        parts.push(format!("[{lo}, {hi}{close}: {}", plain(n)));
    }
    parts.push(format!(">{last}: {}", slot(h.above.get(row).copied())));
    parts.join(" | ")
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

    /// Runs `sql` with `options` over one party's rows `(carrier, delay)` and returns the result
    /// as the coordinator sends it.
    fn query_result(
        sql: &str,
        options: veil_analytics::sql::SqlOptions,
        rows: &[(Option<&str>, Option<f64>)],
    ) -> JobResult {
        use veil_analytics::{ColumnInfo, ColumnType, DatasetCatalog, DatasetSchema, Plan, Value};
        let catalog = DatasetCatalog {
            name: "flights".into(),
            columns: vec![
                ColumnInfo {
                    name: "carrier".into(),
                    ty: ColumnType::String,
                    bounds: None,
                    domain: Some(vec!["AA".into(), "UA".into()]),
                },
                ColumnInfo {
                    name: "delay".into(),
                    ty: ColumnType::Float,
                    bounds: Some((-60.0, 1500.0)),
                    domain: None,
                },
            ],
        };
        let spec = veil_analytics::sql::plan_sql(sql, &[catalog], &options).unwrap();
        let schema = DatasetSchema {
            name: "flights".into(),
            columns: vec![
                ("carrier".into(), ColumnType::String),
                ("delay".into(), ColumnType::Float),
            ],
        };
        let plan = Plan::new(&spec, &schema).unwrap();
        let mut agg = plan.aggregate([3; 32]);
        for (carrier, delay) in rows {
            let row = [
                carrier.map_or(Value::Null, Value::Text),
                delay.map_or(Value::Null, Value::Number),
            ];
            agg.push_row(&row).unwrap();
        }
        let answer = plan.answer(&agg.finish(), vec![1], vec![]).unwrap();
        JobResult {
            job_id: "j".into(),
            answer_json: serde_json::to_string(&answer).unwrap(),
            table_json: serde_json::to_string(&veil_analytics::sql::result_table(&spec, &answer))
                .unwrap(),
            ..JobResult::default()
        }
    }

    fn private() -> veil_analytics::sql::SqlOptions {
        veil_analytics::sql::SqlOptions { rho: Some(1.0), min_parties: 1, ..Default::default() }
    }

    fn delays() -> Vec<(Option<&'static str>, Option<f64>)> {
        (0..40).map(|i| (Some(if i % 2 == 0 { "AA" } else { "UA" }), Some(f64::from(i)))).collect()
    }

    /// Requirement 2: `veil query` prints each released noisy value with the 95% half-width of
    /// its noise, `±?` where none can be stated, also for a counts-only query.
    #[test]
    fn dp_query_tables_print_95_percent_intervals() {
        let result = query_result(
            "SELECT carrier, COUNT(*) AS n FROM flights GROUP BY carrier",
            private(),
            &delays(),
        );
        let text = table_text(&result).unwrap();
        let aa = text.lines().find(|l| l.trim_start().starts_with("AA")).unwrap();
        // One contributor, ρ = 1, one element a row: σ² = ⌈1/2⌉ = 1.
        assert!(aa.contains(" ± 1.96"), "{text}");
        assert!(text.contains("differentially private: ρ = 1"), "{text}");
        assert!(text.contains("note: ± is the half-width of a 95% interval"), "{text}");
        let result = query_result(
            "SELECT COUNT(*), SUM(delay), AVG(delay), VAR(delay) FROM flights",
            private(),
            &delays(),
        );
        let text = table_text(&result).unwrap();
        let row: Vec<&str> =
            text.lines().nth(1).unwrap().split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(row.len(), 4, "{text}");
        assert!(row[..3].iter().all(|c| c.contains(" ± ")), "{text}");
        assert!(row[3].ends_with(" ±?"), "{text}");
        // An exact answer has neither.
        let exact =
            query_result("SELECT COUNT(*), VAR(delay) FROM flights", Default::default(), &delays());
        let text = table_text(&exact).unwrap();
        assert!(!text.contains('±') && !text.contains("differentially"), "{text}");
    }

    /// Requirement 2: `veil query --json` carries the answer's privacy block and the intervals,
    /// also from a coordinator whose table lacks the privacy block.
    #[test]
    fn query_json_carries_the_privacy_block_and_intervals() {
        let mut result = query_result("SELECT COUNT(*) FROM flights", private(), &delays());
        let json: serde_json::Value = serde_json::from_str(&query_json(&result)).unwrap();
        assert_eq!(json["privacy"]["rho"], 1.0);
        assert!(json["ci95"][0][0].as_f64().is_some_and(|h| h > 1.0), "{json}");
        let mut old: serde_json::Value = serde_json::from_str(&result.table_json).unwrap();
        old.as_object_mut().unwrap().remove("privacy");
        result.table_json = old.to_string();
        let json: serde_json::Value = serde_json::from_str(&query_json(&result)).unwrap();
        assert_eq!(json["privacy"]["rho"], 1.0);
        let exact = query_result("SELECT COUNT(*) FROM flights", Default::default(), &delays());
        let json: serde_json::Value = serde_json::from_str(&query_json(&exact)).unwrap();
        assert!(json.get("privacy").is_none() && json.get("ci95").is_none(), "{json}");
    }

    /// Requirement 3: readings off a histogram are marked approximate with their bin width,
    /// and a reading beyond the bounds is marked and shown at the bound.
    #[test]
    fn approximate_readings_print_marked_with_their_resolution() {
        let mut rows = delays();
        rows.push((Some("AA"), Some(4000.0)));
        let result = query_result(
            "SELECT MEDIAN(delay) AS med, MAX(delay) AS hi FROM flights",
            Default::default(),
            &rows,
        );
        let text = table_text(&result).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(header.contains("med ≈") && header.contains("hi ≈"), "{text}");
        assert!(lines.next().unwrap().trim_end().ends_with("1500*"), "{text}");
        assert!(
            text.contains("note: med is approximate") && text.contains("bin width 15.6"),
            "{text}"
        );
        assert!(text.contains("[-60, 1500]"), "{text}");
    }

    /// Requirement 4: a lone HISTOGRAM prints its row, each bin under its edges, and the
    /// values outside them; under differential privacy with the per-bin interval.
    #[test]
    fn a_lone_histogram_prints_its_row() {
        let rows = [
            (Some("AA"), Some(-200.0)),
            (Some("AA"), Some(-5.0)),
            (Some("UA"), Some(3.0)),
            (Some("UA"), Some(20.0)),
        ];
        let sql = "SELECT HISTOGRAM(delay, -100, 0, 15) FROM flights";
        let text = table_text(&query_result(sql, Default::default(), &rows)).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row.trim(), "<-100: 1 | [-100, 0): 1 | [0, 15]: 1 | >15: 1", "{text}");
        let text = table_text(&query_result(sql, private(), &rows)).unwrap();
        assert!(text.lines().nth(1).unwrap().contains("per bin)"), "{text}");
    }

    /// Requirement 1: rows without a carrier print as a `(null)` group of their own.
    #[test]
    fn a_null_group_prints_as_its_own_row() {
        let rows = [(Some("AA"), None), (None, None), (None, None), (Some("ZZ"), None)];
        let result = query_result(
            "SELECT carrier, COUNT(*) AS n FROM flights GROUP BY carrier",
            Default::default(),
            &rows,
        );
        let text = table_text(&result).unwrap();
        let cells = |key: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.trim_start().starts_with(key)).unwrap();
            line.split_whitespace().map(String::from).collect()
        };
        assert_eq!(cells("(null)"), ["(null)", "2", "false"], "{text}");
        assert_eq!(cells("(other)"), ["(other)", "1", "false"], "{text}");
    }

    /// Requirement 2 for column jobs: `veil submit` prints the noise intervals of a private
    /// answer, `±?` for the standard deviation, and the privacy line.
    #[test]
    fn column_answers_print_their_noise_intervals() {
        let result =
            query_result("SELECT AVG(delay), STDDEV(delay) FROM flights", private(), &delays());
        let answer: Answer = serde_json::from_str(&result.answer_json).unwrap();
        let text = answer_text(&answer);
        let row = text.lines().find(|l| l.trim_start().starts_with("delay")).unwrap();
        assert_eq!(row.matches(" ± ").count(), 4, "count, sum, mean and clipped: {text}");
        assert_eq!(row.matches(" ±?").count(), 1, "the standard deviation: {text}");
        assert!(text.contains("differentially private: ρ = 1"), "{text}");
        let exact = query_result("SELECT AVG(delay) FROM flights", Default::default(), &delays());
        let text = answer_text(&serde_json::from_str(&exact.answer_json).unwrap());
        assert!(!text.contains('±'), "{text}");
        // A grouped job prints a line per group.
        let grouped = query_result(
            "SELECT carrier, AVG(delay) FROM flights GROUP BY carrier",
            Default::default(),
            &delays(),
        );
        let text = answer_text(&serde_json::from_str(&grouped.answer_json).unwrap());
        assert!(text.lines().any(|l| l.trim_start().starts_with("(null)")), "{text}");
    }
}
