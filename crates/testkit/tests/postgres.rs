//! Parties that read their rows from PostgreSQL answer exactly as parties reading the same rows
//! from files. Needs the server `.ci/postgres.sh` starts (`.ci/run` does); the README's test
//! command skips it.

// A panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use veil_proto::v1::JobState;
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec};

const CARRIERS: [&str; 16] = [
    "9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV",
];

fn parties(postgres: Option<&str>) -> Vec<PartySpec> {
    let domain: Vec<String> = CARRIERS.iter().map(|c| format!("\"{c}\"")).collect();
    let catalog = format!(
        "bounds = {{ dep_delay = [-100.0, 1500.0], distance = [0.0, 5000.0] }}\ndomains = {{ carrier = [{}] }}\n",
        domain.join(", ")
    );
    ["ewr", "jfk", "lga"]
        .iter()
        .map(|a| {
            let (path, source) = match postgres {
                Some(connection) => (
                    PathBuf::new(),
                    format!(
                        "postgres = {{ connection = \"{connection}\", table = \"flights_{a}\", password_env = \"VEIL_TEST_POSTGRES_PASSWORD\" }}\n"
                    ),
                ),
                None => (
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/data/flights/{a}.csv")),
                    String::new(),
                ),
            };
            PartySpec {
                name: a.to_string(),
                datasets: vec![DatasetSpec {
                    name: "flights".into(),
                    path,
                    columns: [("month", "int"), ("carrier", "string"), ("dep_delay", "float"), ("distance", "float")]
                        .iter()
                        .map(|(c, t)| (c.to_string(), t.to_string()))
                        .collect(),
                    extra_toml: format!("{source}{catalog}"),
                }],
                ..PartySpec::default()
            }
        })
        .collect()
}

/// Missing values meet NOT, OR, NOT IN and IS NULL here: the database must treat them as the
/// party does (a missing value satisfies no comparison).
const SQL: &str = "SELECT carrier, COUNT(*), AVG(dep_delay), STDDEV(dep_delay), SUM(distance), \
                   HISTOGRAM(dep_delay, -100, 0, 15, 60, 180, 1500) FROM flights \
                   WHERE month BETWEEN 2 AND 7 AND (carrier IN ('UA', 'AA', 'B6', 'DL', 'EV') OR dep_delay IS NULL) \
                   AND NOT dep_delay > 600 AND carrier NOT IN ('EV') GROUP BY carrier";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the PostgreSQL server that .ci/postgres.sh starts; .ci/run runs it with --ignored"]
async fn postgres_backed_parties_answer_like_file_backed_ones() {
    let connection =
        std::env::var("VEIL_TEST_POSTGRES").expect("VEIL_TEST_POSTGRES is set by .ci/postgres.sh");
    let request = serde_json::json!({ "sql": SQL }).to_string();
    let files =
        Cluster::start(ClusterSpec { parties: parties(None), ..ClusterSpec::named(&[]) }).await;
    let (status, from_files) = files.run_job(&request).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    files.shutdown().await;
    let db = Cluster::start(ClusterSpec {
        parties: parties(Some(&connection)),
        ..ClusterSpec::named(&[])
    })
    .await;
    let (status, from_db) = db.run_job(&request).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&from_files.unwrap().answer_json).unwrap(),
        serde_json::from_str(&from_db.unwrap().answer_json).unwrap(),
    );
    assert_eq!(a, b, "the same rows give the same answer from a file and from PostgreSQL");
    assert!(a["groups"].as_array().unwrap().iter().any(|g| g["rows"].as_u64().unwrap_or(0) > 1000));
    // A private query takes the streaming path (rounding and noise in the party).
    let private = serde_json::json!({ "sql": SQL, "privacy": { "rho": 1.0 } }).to_string();
    let (status, noisy) = db.run_job(&private).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let noisy: serde_json::Value = serde_json::from_str(&noisy.unwrap().answer_json).unwrap();
    assert_eq!(noisy["privacy"]["rho"], 1.0);
    db.shutdown().await;
}
