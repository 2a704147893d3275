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
}
