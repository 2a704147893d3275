//! `veil demo`: a coordinator and four hospitals on loopback with mutual TLS compute joint
//! statistics over their own rows of the bundled Breast Cancer Wisconsin data; the answer is
//! printed beside the same job run over the pooled rows. A second job trains a logistic
//! regression across the hospitals with per-round held-out metrics; a third shows a hospital
//! vanishing mid-round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use veil_analytics::{Answer, ColumnType, DatasetSchema, JobSpec, Plan};
use veil_party_worker::Fault;
use veil_party_worker::config::DatasetConfig;
use veil_party_worker::data::aggregate_csv;
use veil_proto::v1::JobRef;
use veil_proto::v1::JobState;
use veil_protocol::Stage;
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec};

const FILES: [&str; 3] = [
    include_str!("../../../examples/data/breast_cancer/hospital_a.csv"),
    include_str!("../../../examples/data/breast_cancer/hospital_b.csv"),
    include_str!("../../../examples/data/breast_cancer/hospital_c.csv"),
];

/// The demo's four hospitals: the three files, with hospital_a's 300 rows cut into two halves
/// (hospital_a and hospital_d). Every round tolerates one party colluding with the coordinator,
/// so its survivors must be a quorum of more than (n + 1)/2: four hospitals survive one
/// vanishing, three would not.
fn hospitals() -> Vec<(&'static str, String)> {
    let (header, rows) = FILES[0].split_once('\n').unwrap_or((FILES[0], ""));
    let rows: Vec<&str> = rows.lines().collect();
    let (first, second) = rows.split_at(rows.len() / 2);
    let file = |part: &[&str]| format!("{header}\n{}\n", part.join("\n"));
    vec![
        ("hospital_a", file(first)),
        ("hospital_b", FILES[1].to_string()),
        ("hospital_c", FILES[2].to_string()),
        ("hospital_d", file(second)),
    ]
}

const COLUMNS: [(&str, &str); 5] = [
    ("mean_radius", "float"),
    ("mean_texture", "float"),
    ("mean_area", "float"),
    ("worst_concavity", "float"),
    ("target", "int"),
];

/// The job the demo runs: statistics of four measurements over the malignant tumours
/// (`target == 0`), with a histogram of the radius.
const JOB: &str = r#"
dataset = "cells"
filter = [{ column = "target", op = "==", value = 0 }]
min_parties = 2

[[columns]]
name = "mean_radius"
min = 0
max = 40
histogram = [0, 10, 15, 20, 25, 40]

[[columns]]
name = "mean_texture"
min = 0
max = 50

[[columns]]
name = "mean_area"
min = 0
max = 3000

[[columns]]
name = "worst_concavity"
min = 0
max = 2
"#;

/// The training job the demo runs: will a tumour be benign, from the four measurements.
const TRAIN: &str = r#"
kind = "train"
dataset = "cells"
features = ["mean_radius", "mean_texture", "mean_area", "worst_concavity"]
label = "target"
rounds = 15
seed = 3
[model]
kind = "logistic_regression"
[local]
epochs = 1
batch_size = 16
learning_rate = 0.2
l2 = 0.01
optimizer = { kind = "sgd" }
"#;

fn dataset(name: &str, path: PathBuf) -> DatasetConfig {
    let columns = COLUMNS
        .iter()
        .map(|(c, t)| {
            let ty = if *t == "int" { ColumnType::Int } else { ColumnType::Float };
            (c.to_string(), ty)
        })
        .collect();
    DatasetConfig::csv(name, path, columns)
}

/// The same job over the pooled rows of `hospitals`, with the same engine.
fn pooled(dir: &Path, hospitals: &[usize]) -> Result<Answer> {
    let files = self::hospitals();
    let mut text = String::new();
    for (k, &i) in hospitals.iter().enumerate() {
        let body = files[i].1.as_str();
        let body = if k == 0 { body } else { body.split_once('\n').map_or("", |(_, rest)| rest) };
        text.push_str(body);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let path = dir.join("pooled.csv");
    std::fs::write(&path, text)?;
    let d = dataset("cells", path);
    let spec = JobSpec::parse(JOB)?;
    let schema: DatasetSchema = d.schema();
    let plan = Plan::new(&spec, &schema)?;
    let vector = aggregate_csv(&d, &plan, [0; 32])?;
    Ok(plan.answer(&vector, hospitals.iter().map(|&i| i as u32).collect(), vec![])?)
}

fn compare(joint: &Answer, pool: &Answer) -> Result<()> {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.6}"));
    println!("  {:<26} {:>18} {:>18}", "", "secure (joint)", "pooled rows");
    println!("  {:<26} {:>18} {:>18}", "rows (malignant)", joint.rows, pool.rows);
    for (j, p) in joint.columns.iter().zip(&pool.columns) {
        println!("  {:<26} {:>18} {:>18}", format!("{} count", j.name), j.count, p.count);
        println!("  {:<26} {:>18} {:>18}", format!("{} mean", j.name), f(j.mean), f(p.mean));
        println!(
            "  {:<26} {:>18} {:>18}",
            format!("{} std dev", j.name),
            f(j.std_dev),
            f(p.std_dev)
        );
        if let (Some(hj), Some(hp)) = (&j.histogram, &p.histogram) {
            println!(
                "  {:<26} {:>18} {:>18}",
                format!("{} histogram", j.name),
                format!("{:?}", hj.counts.iter().flatten().collect::<Vec<_>>()),
                format!("{:?}", hp.counts.iter().flatten().collect::<Vec<_>>())
            );
        }
    }
    if joint.rows != pool.rows {
        bail!("the secure row count differs from the pooled one");
    }
    for (j, p) in joint.columns.iter().zip(&pool.columns) {
        if j.count != p.count || j.histogram != p.histogram || j.sum != p.sum {
            bail!("the secure answer for {} differs from the pooled one", j.name);
        }
    }
    Ok(())
}

async fn run_job(cluster: &Cluster) -> Result<Answer> {
    let mut jobs = cluster.jobs().await;
    let status = cluster.signer("analyst").submit(&mut jobs, JOB).await.context("submit")?;
    println!("  job {} submitted by consumer \"analyst\"", status.job_id);
    let last = crate::client::follow(&mut jobs, &status.job_id, true).await?;
    if last.state() != JobState::Succeeded {
        bail!("job {}: {}", last.state().name(), last.detail);
    }
    let result =
        jobs.result(JobRef { job_id: status.job_id }).await.context("result")?.into_inner();
    Ok(serde_json::from_str(&result.answer_json)?)
}

pub(crate) async fn run() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut parties = Vec::new();
    for (name, text) in hospitals() {
        let path = data.path().join(format!("{name}.csv"));
        std::fs::write(&path, text)?;
        parties.push(PartySpec {
            name: name.into(),
            datasets: vec![DatasetSpec {
                name: "cells".into(),
                path,
                columns: COLUMNS.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect(),
                extra_toml: String::new(),
            }],
            ..PartySpec::default()
        });
    }
    println!(
        "veil demo: four hospitals hold 569 rows of the Breast Cancer Wisconsin data between them."
    );
    println!(
        "Starting a coordinator and four party workers on 127.0.0.1 with mutual TLS (veil init in a temporary directory)..."
    );
    let spec = ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(10),
        offer_timeout: Duration::from_secs(10),
        analyst_quota: None,
    };
    let mut cluster = Cluster::start(spec).await;
    println!(
        "  coordinator at {}; all four hospitals connected (dialling out, no inbound ports)",
        cluster.addr
    );

    println!(
        "\nJob 1: mean, deviation and a histogram of four measurements of malignant tumours, over all hospitals."
    );
    let joint = run_job(&cluster).await?;
    println!("Each hospital sent only its masked vector; the coordinator unmasked the sum:");
    compare(&joint, &pooled(data.path(), &[0, 1, 2, 3])?)?;

    println!(
        "\nJob 2: federated logistic regression (is a tumour benign?) on the same four measurements;"
    );
    println!(
        "  each round every hospital trains the model it is sent on its own rows, and only the secure sum"
    );
    println!("  of the updates and of the held-out evaluation counts leaves them.");
    let mut jobs = cluster.jobs().await;
    let status = cluster.signer("analyst").submit(&mut jobs, TRAIN).await.context("submit")?;
    let last = crate::client::follow(&mut jobs, &status.job_id, true).await?;
    if last.state() != JobState::Succeeded {
        bail!("training job {}: {}", last.state().name(), last.detail);
    }
    let result =
        jobs.result(JobRef { job_id: status.job_id }).await.context("result")?.into_inner();
    crate::client::print_result(&result, false)?;

    println!(
        "\nJob 3: the statistics again, while hospital_c vanishes right after sharing its keys."
    );
    println!(
        "  Every round tolerates one hospital colluding with the coordinator: the other three must all"
    );
    println!("  sign one survivor set before any hospital helps unmask.");
    cluster.kill_party(2);
    cluster.set_fault(2, Some(Fault::ExitAfter(Stage::ShareKeys)));
    cluster.start_party(2);
    cluster.wait_connected(4).await;
    let joint = run_job(&cluster).await?;
    println!(
        "The round finished over the survivors {:?}; dropped {:?}:",
        joint.contributors, joint.dropped
    );
    compare(&joint, &pooled(data.path(), &[0, 1, 3])?)?;

    cluster.shutdown().await;
    println!(
        "\nCounts, sums and histograms equal the pooled answer exactly; no raw row left a hospital."
    );
    Ok(())
}
