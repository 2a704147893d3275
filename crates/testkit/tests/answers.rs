//! What a consumer reads in a SQL answer, end to end over a real cluster: missing GROUP BY
//! values as a `(null)` group, the noise intervals and privacy block of a private table,
//! readings off a histogram labelled approximate, and a lone HISTOGRAM's row.

// Helpers here read the repository's own data files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use veil_analytics::sql::Table;
use veil_proto::v1::JobState;
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec, example_data};

const CARRIERS: [&str; 16] = [
    "9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV",
];

/// Copies an airport's flights into `dir` with the carrier of every seventh row left out;
/// returns the copy and how many rows lost their carrier.
fn with_missing_carriers(airport: &str, dir: &Path) -> (PathBuf, u64) {
    let mut reader =
        csv::Reader::from_path(example_data(&format!("flights/{airport}.csv"))).unwrap();
    let headers = reader.headers().unwrap().clone();
    let carrier = headers.iter().position(|h| h == "carrier").unwrap();
    let path = dir.join(format!("{airport}.csv"));
    let mut writer = csv::Writer::from_path(&path).unwrap();
    writer.write_record(&headers).unwrap();
    let mut blanked = 0;
    for (i, record) in reader.records().enumerate() {
        let record = record.unwrap();
        let fields: Vec<&str> = record
            .iter()
            .enumerate()
            .map(|(j, f)| if j == carrier && i % 7 == 0 { "" } else { f })
            .collect();
        blanked += u64::from(i % 7 == 0);
        writer.write_record(&fields).unwrap();
    }
    writer.flush().unwrap();
    (path, blanked)
}

/// Three airports serving flights with the carriers' domain and delay bounds declared, some
/// carriers missing; returns the cluster and the rows without a carrier.
async fn airports(dir: &Path) -> (Cluster, u64) {
    let domain: Vec<String> = CARRIERS.iter().map(|c| format!("\"{c}\"")).collect();
    let mut missing = 0;
    let parties = ["ewr", "jfk", "lga"]
        .iter()
        .map(|airport| {
            let (path, blanked) = with_missing_carriers(airport, dir);
            missing += blanked;
            PartySpec {
                name: airport.to_string(),
                datasets: vec![DatasetSpec {
                    name: "flights".into(),
                    path,
                    columns: [("month", "int"), ("carrier", "string"), ("dep_delay", "float")]
                        .iter()
                        .map(|(c, t)| (c.to_string(), t.to_string()))
                        .collect(),
                    extra_toml: format!(
                        "bounds = {{ dep_delay = [-100.0, 1500.0] }}\ndomains = {{ carrier = [{}] }}\n",
                        domain.join(", ")
                    ),
                }],
                ..PartySpec::default()
            }
        })
        .collect();
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    (cluster, missing)
}

async fn table(cluster: &Cluster, request: Json) -> Table {
    let (status, result) = cluster.run_job(&request.to_string()).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    serde_json::from_str(&result.unwrap().table_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_show_null_groups_noise_intervals_readings_and_lone_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, missing) = airports(dir.path()).await;
    assert!(missing > 1000, "the copies leave out many carriers");

    // Rows without a carrier are the (null) group, apart from (other); MEDIAN says it is
    // approximate, with the width of the bin it was read in.
    let sql = "SELECT carrier, COUNT(*) AS n, MEDIAN(dep_delay) AS med FROM flights \
               GROUP BY carrier";
    let t = table(&cluster, serde_json::json!({ "sql": sql })).await;
    assert_eq!(t.rows.len(), CARRIERS.len() + 2, "declared carriers, (other) and (null)");
    let null = &t.rows[CARRIERS.len() + 1];
    assert_eq!((&null[0], null[1].as_u64()), (&Json::from("(null)"), Some(missing)));
    assert_eq!(t.rows[CARRIERS.len()][0], "(other)");
    let med = &t.approximate[0];
    assert_eq!((med.column, med.bounds), (2, (-100.0, 1500.0)));
    let width = med.readings[CARRIERS.len() + 1].unwrap().bin_width.unwrap();
    assert!((width - 16.0).abs() < 1e-9, "100 bins over the bounds: {width}");
    assert!(t.notes.iter().any(|n| n.starts_with("med is approximate")), "{:?}", t.notes);
    assert!(t.ci95.is_none() && t.privacy.is_none());

    // A private counts-only query carries its privacy block and each count's interval.
    let request = serde_json::json!({
        "sql": "SELECT carrier, COUNT(*) FROM flights GROUP BY carrier",
        "privacy": { "rho": 0.5 },
    });
    let t = table(&cluster, request).await;
    let privacy = t.privacy.expect("a private table carries its privacy block");
    assert_eq!(privacy.rho, 0.5);
    let expected = 1.96 * privacy.count_sd(3);
    let ci95 = t.ci95.as_ref().unwrap();
    for (row, ci) in t.rows.iter().zip(ci95) {
        assert_eq!(ci[0], None, "a key has no interval");
        if !row[1].is_null() {
            assert!((ci[1].unwrap() - expected).abs() < 1e-3 * expected, "{ci:?}");
        }
    }
    assert!(ci95.iter().filter(|c| c[1].is_some()).count() > 10, "large carriers are released");

    // A lone HISTOGRAM has its row, its edges and the values outside them.
    let sql = "SELECT HISTOGRAM(dep_delay, -100, 0, 15, 60, 180, 1500) AS h FROM flights";
    let t = table(&cluster, serde_json::json!({ "sql": sql })).await;
    assert_eq!(t.headers, ["h"]);
    let bins: Vec<u64> =
        t.rows[0][0].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
    assert_eq!(bins.len(), 5);
    let h = &t.histograms[0];
    assert_eq!(h.edges, [-100.0, 0.0, 15.0, 60.0, 180.0, 1500.0]);
    let (below, above) = (h.below[0].unwrap(), h.above[0].unwrap());
    assert!(bins.iter().sum::<u64>() + below + above > 10_000, "{bins:?} {below} {above}");
    cluster.shutdown().await;
}
