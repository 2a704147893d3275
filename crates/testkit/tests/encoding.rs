//! Training on a table as its owners keep it: three airports' flights, text columns and missing
//! values included, with the features declared in the job and computed at each party (origin
//! and destination one-hot, a missing-delay indicator, the carrier's name mapped to a class).
//! No party rewrites its file.
#![allow(clippy::unwrap_used)]

use veil_proto::v1::{JobRef, JobState};
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec, example_data};

const DESTS: [&str; 30] = [
    "ORD", "ATL", "LAX", "BOS", "MCO", "CLT", "SFO", "FLL", "MIA", "DCA", "DTW", "DFW", "RDU",
    "TPA", "DEN", "IAH", "MSP", "PBI", "BNA", "LAS", "SJU", "IAD", "BUF", "PHX", "CLE", "STL",
    "MDW", "CVG", "SEA", "MSY",
];

fn airport(name: &str, file: &str) -> PartySpec {
    let columns = [
        ("origin", "string"),
        ("dest", "string"),
        ("carrier", "string"),
        ("distance", "float"),
        ("dep_delay", "float"),
    ];
    PartySpec {
        name: name.into(),
        datasets: vec![DatasetSpec {
            name: "flights".into(),
            path: example_data(file),
            columns: columns.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect(),
            extra_toml: String::new(),
        }],
        ..PartySpec::default()
    }
}

fn job() -> String {
    let dests: Vec<String> = DESTS.iter().map(|d| format!("{d:?}")).collect();
    format!(
        r#"
kind = "train"
dataset = "flights"
features = ["origin", "dest", "distance", "dep_delay"]
label = "carrier"
rounds = 12
seed = 3
[encode]
categorical = {{ origin = ["EWR", "JFK", "LGA"], dest = [{}] }}
missing_indicator = ["dep_delay"]
label = {{ positive = "EV" }}
[evaluation]
holdout = 0.2
[model]
kind = "logistic_regression"
[local]
epochs = 1
batch_size = 64
learning_rate = 0.2
optimizer = {{ kind = "sgd" }}
"#,
        dests.join(", ")
    )
}

/// The share of flights that are not ExpressJet's: the accuracy of always saying "not EV".
fn majority() -> f64 {
    let (mut ev, mut all) = (0usize, 0usize);
    for file in ["flights/ewr.csv", "flights/jfk.csv", "flights/lga.csv"] {
        let mut reader = csv::Reader::from_path(example_data(file)).unwrap();
        let carrier = reader.headers().unwrap().iter().position(|h| h == "carrier").unwrap();
        for r in reader.records() {
            all += 1;
            ev += usize::from(&r.unwrap()[carrier] == "EV");
        }
    }
    1.0 - ev as f64 / all as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airports_train_on_their_text_columns_as_they_are() {
    let parties = vec![
        airport("ewr", "flights/ewr.csv"),
        airport("jfk", "flights/jfk.csv"),
        airport("lga", "flights/lga.csv"),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let mut jobs = cluster.jobs().await;
    let submitted = cluster.signer("analyst").submit(&mut jobs, &job()).await.unwrap();
    let status = cluster.wait_job(&submitted.job_id).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let result = jobs.result(JobRef { job_id: status.job_id.clone() }).await.unwrap().into_inner();
    let answer: serde_json::Value = serde_json::from_str(&result.answer_json).unwrap();
    // The model's inputs: 3 + 2 origin slots, 30 + 2 destination slots, distance, the delay
    // and its missing indicator.
    let model = &answer["model"];
    let inputs = model["features"].as_array().unwrap();
    assert_eq!(inputs.len(), 5 + 32 + 3, "{inputs:?}");
    assert!(inputs.iter().any(|f| f == "dest=(other)"));
    assert!(inputs.iter().any(|f| f == "dep_delay=(missing)"));
    assert_eq!(
        model["encode"]["columns"],
        serde_json::json!(["origin", "dest", "distance", "dep_delay"])
    );
    // It learns: well above always answering the larger class.
    let accuracy = answer["final"]["accuracy"].as_f64().unwrap();
    let baseline = majority();
    assert!(
        accuracy > baseline + 0.03,
        "accuracy {accuracy} against {baseline} for the larger class"
    );
    // The model file scores raw rows the same way: its encoding travels with it.
    let file = veil_learning::export::ModelFile::from_json(model.to_string().as_bytes()).unwrap();
    assert!(file.encode.is_some());
    cluster.shutdown().await;

    // The job's specification alone, applied at each airport, equals the same preprocessing
    // applied to the pooled rows: one file of all three airports' flights, encoded and
    // standardised once, gives the inputs the parties gave and the statistics the secure sum
    // of their moments gave the model.
    let spec = match veil_analytics::Job::parse(&job()).unwrap() {
        veil_analytics::Job::Train(s) => *s,
        _ => unreachable!(),
    };
    let columns = airport("x", "flights/ewr.csv").datasets[0].columns.clone();
    let types: std::collections::BTreeMap<String, veil_analytics::ColumnType> = columns
        .iter()
        .map(|(c, t)| {
            (
                c.clone(),
                if t == "string" {
                    veil_analytics::ColumnType::String
                } else {
                    veil_analytics::ColumnType::Float
                },
            )
        })
        .collect();
    let encode = |path: std::path::PathBuf| {
        let d = veil_party_worker::config::DatasetConfig::csv("flights", path, types.clone());
        veil_party_worker::data::load_encoded(&d, &spec.features, &spec.label, &spec.encode)
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let pooled_file = dir.path().join("pooled.csv");
    let mut pooled_text = String::new();
    let mut per_party = Vec::new();
    for (k, f) in ["flights/ewr.csv", "flights/jfk.csv", "flights/lga.csv"].iter().enumerate() {
        let text = std::fs::read_to_string(example_data(f)).unwrap();
        let body = if k == 0 { text.as_str() } else { text.split_once('\n').unwrap().1 };
        pooled_text.push_str(body);
        per_party.push(encode(example_data(f)));
    }
    std::fs::write(&pooled_file, pooled_text).unwrap();
    let (pooled_x, pooled_y) = encode(pooled_file);
    let views: Vec<_> = per_party.iter().map(|(x, _)| x.view()).collect();
    assert_eq!(ndarray::concatenate(ndarray::Axis(0), &views).unwrap(), pooled_x);
    let labels: Vec<_> = per_party.iter().map(|(_, y)| y.view()).collect();
    assert_eq!(ndarray::concatenate(ndarray::Axis(0), &labels).unwrap(), pooled_y);
    // The statistics: each party's held-out rows are left out, by the job's seeded split.
    let train: Vec<ndarray::Array2<f64>> = per_party
        .into_iter()
        .map(|(x, y)| veil_learning::job::LocalData::new(&spec, x, y).unwrap().train.x)
        .collect();
    let views: Vec<_> = train.iter().map(|x| x.view()).collect();
    let pooled_train = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
    let pooled = veil_learning::train::Standardizer::from_moments(
        &veil_learning::train::Standardizer::local_moments(pooled_train.view()),
    )
    .unwrap();
    let secure = file.standardizer.clone().unwrap();
    for (j, name) in spec.inputs().iter().enumerate() {
        let (a, b) = ((secure.mean[j], secure.scale[j]), (pooled.mean[j], pooled.scale[j]));
        assert!(
            (a.0 - b.0).abs() < 1e-6 * (1.0 + b.0.abs()) && (a.1 - b.1).abs() < 1e-6 * b.1,
            "input {name}: the secure sum gave {a:?}, the pooled rows {b:?}"
        );
    }
}
