//! End to end: a coordinator and parties as separate tasks, real gRPC over mutual TLS on
//! 127.0.0.1, consortium files from `veil init`, real CSV files.

// Helpers here read the repository's own data files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use veil_analytics::Answer;
use veil_party_worker::Fault;
use veil_protocol::Stage;
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data").join(path)
}

fn flights(path: PathBuf) -> DatasetSpec {
    DatasetSpec {
        name: "flights".into(),
        path,
        columns: [
            ("month", "int"),
            ("carrier", "string"),
            ("dep_delay", "float"),
            ("arr_delay", "float"),
            ("distance", "float"),
        ]
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect(),
    }
}

fn airports() -> Vec<PartySpec> {
    ["ewr", "jfk", "lga"]
        .iter()
        .map(|a| PartySpec {
            name: a.to_string(),
            datasets: vec![flights(data(&format!("flights/{a}.csv")))],
            ..PartySpec::default()
        })
        .collect()
}

const DELAYS: &str = r#"
dataset = "flights"
filter = [{ column = "month", op = "<=", value = 6 }, { column = "carrier", op = "!=", value = "HA" }]

[[columns]]
name = "dep_delay"
min = -60
max = 1500
histogram = [-60, 0, 15, 60, 180, 1500]

[[columns]]
name = "distance"
min = 0
max = 5000
"#;

/// The same statistics straight from the pooled rows, with plain f64 arithmetic.
struct Pooled {
    rows: u64,
    count: [u64; 2],
    sum: [f64; 2],
    sum_sq: [f64; 2],
    clipped_above: u64,
    histogram: Vec<u64>,
}

fn pooled(files: &[PathBuf]) -> Pooled {
    let edges = [-60.0, 0.0, 15.0, 60.0, 180.0, 1500.0];
    let bounds = [(-60.0, 1500.0), (0.0, 5000.0)];
    let mut p = Pooled {
        rows: 0,
        count: [0; 2],
        sum: [0.0; 2],
        sum_sq: [0.0; 2],
        clipped_above: 0,
        histogram: vec![0; 5],
    };
    for f in files {
        let mut r = csv::Reader::from_path(f).unwrap();
        let h = r.headers().unwrap().clone();
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        let (month, carrier, dep, dist) =
            (col("month"), col("carrier"), col("dep_delay"), col("distance"));
        for rec in r.records() {
            let rec = rec.unwrap();
            if rec[month].parse::<i64>().unwrap() > 6 || &rec[carrier] == "HA" {
                continue;
            }
            p.rows += 1;
            for (k, c) in [dep, dist].into_iter().enumerate() {
                if rec[c].is_empty() {
                    continue;
                }
                let x: f64 = rec[c].parse().unwrap();
                p.count[k] += 1;
                let (lo, hi) = bounds[k];
                if k == 0 && x > hi {
                    p.clipped_above += 1;
                }
                let y = x.clamp(lo, hi);
                p.sum[k] += y;
                p.sum_sq[k] += y * y;
                if k == 0 && (edges[0]..=edges[5]).contains(&x) {
                    let bin = edges.windows(2).position(|w| x >= w[0] && x < w[1]).unwrap_or(4);
                    p.histogram[bin] += 1;
                }
            }
        }
    }
    p
}

fn answer(json: &str) -> Answer {
    serde_json::from_str(json).unwrap()
}

/// Within the fixed-point error: each of `n` values is rounded to a multiple of 2^-20.
fn close(a: f64, b: f64, n: u64) -> bool {
    (a - b).abs() <= n as f64 / (1u64 << 20) as f64 + 1e-9 * b.abs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_aggregates_equal_the_pooled_rows() {
    let cluster =
        Cluster::start(ClusterSpec { parties: airports(), ..ClusterSpec::named(&[]) }).await;
    let (status, result) = cluster.run_job(DELAYS).await;
    assert_eq!(status.state, "succeeded", "{status:?}");
    let result = result.unwrap();
    assert_eq!(result.contributors, vec![0, 1, 2]);
    let a = answer(&result.answer_json);
    let files: Vec<PathBuf> =
        ["ewr", "jfk", "lga"].iter().map(|x| data(&format!("flights/{x}.csv"))).collect();
    let p = pooled(&files);
    assert_eq!(a.rows, p.rows);
    for k in 0..2 {
        let c = &a.columns[k];
        assert_eq!(c.count, p.count[k], "count of {}", c.name);
        assert!(close(c.sum, p.sum[k], p.count[k]), "sum of {}: {} vs {}", c.name, c.sum, p.sum[k]);
        let n = p.count[k] as f64;
        let mean = p.sum[k] / n;
        let variance = (p.sum_sq[k] - n * mean * mean) / (n - 1.0);
        assert!((c.mean.unwrap() - mean).abs() < 1e-6, "mean of {}", c.name);
        assert!((c.variance.unwrap() - variance).abs() / variance < 1e-6, "variance of {}", c.name);
    }
    let dep = &a.columns[0];
    assert_eq!(dep.clipped_above, p.clipped_above);
    assert_eq!(dep.histogram.as_ref().unwrap().counts, p.histogram);
    cluster.shutdown().await;
}

fn hospitals(fault: Option<(usize, Fault)>) -> Vec<PartySpec> {
    ["hospital_a", "hospital_b", "hospital_c"]
        .iter()
        .enumerate()
        .map(|(i, h)| PartySpec {
            name: h.to_string(),
            datasets: vec![DatasetSpec {
                name: "cells".into(),
                path: data(&format!("breast_cancer/{h}.csv")),
                columns: vec![
                    ("mean_radius".into(), "float".into()),
                    ("target".into(), "int".into()),
                ],
            }],
            fault: fault.and_then(|(j, f)| (j == i).then_some(f)),
            ..PartySpec::default()
        })
        .collect()
}

const RADIUS: &str = r#"
dataset = "cells"
[[columns]]
name = "mean_radius"
min = 0
max = 50
"#;

fn rows_of(files: &[&str]) -> u64 {
    files
        .iter()
        .map(|h| {
            csv::Reader::from_path(data(&format!("breast_cancer/{h}.csv")))
                .unwrap()
                .records()
                .count() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_dies_mid_round_leaves_a_result_over_the_survivors() {
    let spec = ClusterSpec {
        parties: hospitals(Some((2, Fault::ExitAfter(Stage::ShareKeys)))),
        stage_timeout: Duration::from_secs(30),
        ..ClusterSpec::named(&[])
    };
    let mut cluster = Cluster::start(spec).await;
    let started = std::time::Instant::now();
    let (status, result) = cluster.run_job(RADIUS).await;
    assert_eq!(status.state, "succeeded", "{status:?}");
    // The departure is noticed when the stream closes, not at the 30 s stage deadline.
    assert!(started.elapsed() < Duration::from_secs(20));
    let result = result.unwrap();
    assert_eq!((result.contributors.clone(), result.dropped.clone()), (vec![0, 1], vec![2]));
    let a = answer(&result.answer_json);
    assert_eq!(a.rows, rows_of(&["hospital_a", "hospital_b"]));
    assert!(matches!(cluster.party_outcome(2).await, Some(Ok(()))), "the faulty party exited");
    cluster.shutdown().await;
}
