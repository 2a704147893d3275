//! End to end: a coordinator and parties as separate tasks, real gRPC over mutual TLS on
//! 127.0.0.1, consortium files from `veil init`, real CSV files.

// Helpers here read the repository's own data files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use rand::SeedableRng;
use veil_analytics::Answer;
use veil_party_worker::Fault;
use veil_protocol::{RoundKeys, Stage};
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
        extra_toml: String::new(),
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
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
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
    let expected: Vec<Option<u64>> = p.histogram.iter().map(|&n| Some(n)).collect();
    assert_eq!(dep.histogram.as_ref().unwrap().counts, expected);
    cluster.shutdown().await;
}

fn columns() -> Vec<(String, String)> {
    let columns = [("mean_radius", "float"), ("target", "int")];
    columns.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect()
}

fn hospitals(fault: Option<(usize, Fault)>) -> Vec<PartySpec> {
    veil_testkit::cluster::hospitals(&columns(), "", fault)
}

/// Four parties, so that one may drop: see `hospitals_and_a_clinic`.
fn four_parties(fault: Option<(usize, Fault)>) -> Vec<PartySpec> {
    veil_testkit::cluster::hospitals_and_a_clinic(&columns(), "", fault)
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
        parties: four_parties(Some((2, Fault::ExitAfter(Stage::ShareKeys)))),
        stage_timeout: Duration::from_secs(30),
        ..ClusterSpec::named(&[])
    };
    let mut cluster = Cluster::start(spec).await;
    let started = std::time::Instant::now();
    let (status, result) = cluster.run_job(RADIUS).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    // The departure is noticed when the stream closes, not at the 30 s stage deadline.
    assert!(started.elapsed() < Duration::from_secs(20));
    let result = result.unwrap();
    assert_eq!((result.contributors.clone(), result.dropped.clone()), (vec![0, 1, 3], vec![2]));
    // The consumer is told who dropped out mid-round.
    let outcomes: Vec<(u32, i32)> =
        result.coverage.iter().map(|p| (p.party_id, p.outcome)).collect();
    let (contributed, dropped) =
        (veil_proto::v1::Outcome::Contributed as i32, veil_proto::v1::Outcome::Dropped as i32);
    assert_eq!(outcomes, vec![(0, contributed), (1, contributed), (2, dropped), (3, contributed)]);
    let a = answer(&result.answer_json);
    assert_eq!(a.rows, rows_of(&["hospital_a", "hospital_b", "hospital_c"]));
    assert!(matches!(cluster.party_outcome(2).await, Some(Ok(()))), "the faulty party exited");
    cluster.shutdown().await;
}

use tonic::Code;
use veil_coordinator::consortium::{foreign_client_certificate, unlisted_certificate};
use veil_party_worker::worker::connect_once;
use veil_proto::submission;
use veil_proto::tls::TlsMaterial;
use veil_proto::v1::JobState;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{CatalogRequest, ListJobsRequest, PlanRequest, PlannedJob, SubmitRequest};
use veil_testkit::cluster::party_config;

fn ca(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.layout.root.join("ca.pem")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_a_connected_partys_identity_is_refused() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(None), ..ClusterSpec::named(&[]) }).await;
    // A second process holding hospital_c's certificate and identity, while hospital_c runs.
    let dir = cluster.layout.party_configs[2].parent().unwrap().to_path_buf();
    let tls = TlsMaterial::from_pem(
        &ca(&cluster),
        &std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("key.pem")).unwrap(),
    );
    let channel = veil_proto::client::connect(&format!("https://{}", cluster.addr), Some(&tls))
        .await
        .unwrap();
    let mut client = veil_proto::v1::party_gateway_client::PartyGatewayClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(veil_proto::v1::PartyEnvelope {
        body: Some(veil_proto::v1::party_envelope::Body::Hello(veil_proto::v1::Hello {
            party_id: 2,
            datasets: vec!["cells".into()],
            catalog_json: String::new(),
        })),
    })
    .await
    .unwrap();
    let status = match client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::AlreadyExists, "{status}");
    assert!(status.message().contains("already connected"), "{status}");
    // The running hospital_c is still the one routed to: a job reaches all three.
    let (done, result) = cluster.run_job(RADIUS).await;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    assert_eq!(result.unwrap().contributors, vec![0, 1, 2]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parties_without_a_roster_certificate_are_refused() {
    let mut cluster =
        Cluster::start(ClusterSpec { parties: hospitals(None), ..ClusterSpec::named(&[]) }).await;
    let genuine = party_config(&cluster.layout.party_configs[0]);
    // A certificate from another CA: the TLS handshake fails.
    let (_, cert, key) = foreign_client_certificate("intruder").unwrap();
    let mut foreign = genuine.clone();
    foreign.tls = Some(TlsMaterial::from_pem(&ca(&cluster), &cert, &key));
    assert!(connect_once(&foreign).await.is_err(), "a foreign certificate must be refused");
    // Issued by the consortium CA but not in the roster.
    let (cert, key) = unlisted_certificate(&cluster.layout.root, "unlisted").unwrap();
    let mut unlisted = genuine.clone();
    unlisted.tls = Some(TlsMaterial::from_pem(&ca(&cluster), &cert, &key));
    let status = connect_once(&unlisted).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains("not in the consortium roster"), "{status}");
    // A genuine certificate claiming another party's id.
    let mut impostor = genuine.clone();
    impostor.id = veil_protocol::PartyId(1);
    let status = connect_once(&impostor).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    // The genuine credentials pass: while the party runs, a second stream is refused only as
    // a duplicate; once it has stopped, the same credentials get in.
    let status = connect_once(&genuine).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status}");
    cluster.kill_party(0);
    cluster.wait_disconnected(0).await;
    connect_once(&genuine).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_text_party_against_a_tls_coordinator_stops_with_the_reason() {
    let mut cluster =
        Cluster::start(ClusterSpec { parties: hospitals(None), ..ClusterSpec::named(&[]) }).await;
    cluster.kill_party(0);
    cluster.wait_disconnected(0).await;
    let mut plain = party_config(&cluster.layout.party_configs[0]);
    plain.tls = None;
    plain.coordinator = plain.coordinator.replacen("https://", "http://", 1);
    let run = veil_party_worker::worker::run(
        plain,
        veil_party_worker::worker::WorkerOptions::default(),
        tokio::time::sleep(Duration::from_secs(30)),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the party stops instead of retrying");
    let err = outcome.expect_err("a plain-text party is not served");
    assert!(err.to_string().contains("does not speak plain text"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_without_a_credential_are_refused() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(None), ..ClusterSpec::named(&[]) }).await;
    let url = format!("https://{}", cluster.addr);
    // A job the genuine consumer planned and signed: its signature lets no one else submit it.
    let planned = plan(&cluster, RADIUS).await.unwrap();
    let job_id = submission::new_job_id();
    let request = SubmitRequest {
        signature: cluster.signer("analyst").sign(&job_id, &planned),
        job_id,
        spec: planned.spec_json,
        require_all: false,
    };
    let submit = |channel| {
        let request = request.clone();
        async move { JobsClient::new(channel).submit(request).await }
    };
    // No client certificate at all: refused at the first call.
    let bare = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca(&cluster)))
                .domain_name("localhost"),
        )
        .unwrap();
    match bare.connect().await {
        Err(_) => {}
        Ok(channel) => {
            assert!(submit(channel).await.is_err(), "a consumer without a certificate was served")
        }
    }
    // A certificate of the consortium's CA that the roster does not list.
    let (cert, key) = unlisted_certificate(&cluster.layout.root, "stranger").unwrap();
    let tls = TlsMaterial::from_pem(&ca(&cluster), &cert, &key);
    let channel = veil_proto::client::connect(&url, Some(&tls)).await.unwrap();
    let status = submit(channel).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    // A party's certificate does not make it a consumer.
    let party = cluster.layout.party_configs[0].parent().unwrap().to_path_buf();
    let tls = TlsMaterial::from_pem(
        &ca(&cluster),
        &std::fs::read_to_string(party.join("cert.pem")).unwrap(),
        &std::fs::read_to_string(party.join("key.pem")).unwrap(),
    );
    let channel = veil_proto::client::connect(&url, Some(&tls)).await.unwrap();
    let status = submit(channel).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    // The genuine consumer is served and sees only its own jobs.
    let mut jobs = cluster.jobs().await;
    assert!(jobs.list(ListJobsRequest {}).await.unwrap().into_inner().jobs.is_empty());
    cluster.shutdown().await;
}

async fn plan(cluster: &Cluster, spec: &str) -> Result<PlannedJob, tonic::Status> {
    Ok(cluster.jobs().await.plan(PlanRequest { spec: spec.into() }).await?.into_inner())
}

/// The coordinator takes a job only as planned, under a fresh well-formed id, signed by the
/// submitting consumer's roster key over that id, the job's hash and its purpose; and runs a
/// signed job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_takes_only_jobs_their_consumer_signed() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(None), ..ClusterSpec::named(&[]) }).await;
    let mut jobs = cluster.jobs().await;
    let analyst = cluster.signer("analyst");
    let planned = plan(&cluster, RADIUS).await.unwrap();
    let signed = |signer: &submission::Signer, id: &str, planned: &PlannedJob| SubmitRequest {
        spec: planned.spec_json.clone(),
        job_id: id.to_string(),
        signature: signer.sign(id, planned),
        require_all: false,
    };
    let id = submission::new_job_id();
    let other = plan(&cluster, &RADIUS.replace("mean_radius", "mean_texture")).await.unwrap();
    let other_purpose = PlannedJob { purpose: "marketing".into(), ..planned.clone() };
    let cases = [
        ("unsigned", SubmitRequest { signature: Vec::new(), ..signed(&analyst, &id, &planned) }),
        ("signed by another consumer", signed(&cluster.signer("operator"), &id, &planned)),
        (
            "signed for another job",
            SubmitRequest { spec: other.spec_json.clone(), ..signed(&analyst, &id, &planned) },
        ),
        ("signed for another purpose", signed(&analyst, &id, &other_purpose)),
        (
            "signed for another id",
            SubmitRequest { job_id: submission::new_job_id(), ..signed(&analyst, &id, &planned) },
        ),
    ];
    for (case, request) in cases {
        let status = jobs.submit(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status}");
        assert!(status.message().contains("signing key the roster lists"), "{case}: {status}");
    }
    for bad in ["", "job-1", &"A".repeat(24), "../../../etc/passwd"] {
        let status = jobs.submit(signed(&analyst, bad, &planned)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status}");
        assert!(status.message().contains("24 lowercase hex digits"), "{status}");
    }
    // A SQL query goes through the plan: submitted as text it is refused.
    let sql = serde_json::json!({ "sql": "SELECT COUNT(*) FROM cells" }).to_string();
    let status = jobs
        .submit(SubmitRequest { spec: sql, ..signed(&analyst, &id, &planned) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("plan it first"), "{status}");
    assert!(jobs.list(ListJobsRequest {}).await.unwrap().into_inner().jobs.is_empty());
    // Signed as planned, it runs; the same signed job again is refused.
    let first = jobs.submit(signed(&analyst, &id, &planned)).await.unwrap().into_inner();
    assert_eq!(first.job_id, id);
    let status = jobs.submit(signed(&analyst, &id, &planned)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status}");
    assert_eq!(cluster.wait_job(&id).await.state(), JobState::Succeeded);
    cluster.shutdown().await;
}

/// A distinctive text and number planted in one party's raw rows never appear in any byte the
/// coordinator receives from any party, nor in its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_canary_never_reaches_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("jfk.csv");
    let mut text = std::fs::read_to_string(data("flights/jfk.csv")).unwrap();
    let canary_text = "ZQCANARY7";
    let canary_value = 987_654.321_f64;
    text.push_str(&format!(
        "2013,3,3,{canary_text},1,N1,JFK,LAX,{canary_value},5.0,300.0,2475,9\n"
    ));
    std::fs::write(&planted, text).unwrap();
    let mut parties = airports();
    parties[1].datasets[0].path = planted;
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let spec = r#"
        dataset = "flights"
        filter = [{ column = "month", op = "==", value = 3 }]
        [[columns]]
        name = "dep_delay"
        min = -100
        max = 1000000
    "#;
    let (status, result) = cluster.run_job(spec).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let a = answer(&result.unwrap().answer_json);
    assert!(a.columns[0].sum > canary_value, "the canary row is in the sum");
    let needles: Vec<Vec<u8>> = vec![
        canary_text.as_bytes().to_vec(),
        canary_value.to_string().into_bytes(),
        canary_value.to_le_bytes().to_vec(),
        ((canary_value * (1u64 << 20) as f64).round() as i64).to_le_bytes().to_vec(),
    ];
    let inbound = cluster.inbound.lock().unwrap().clone();
    assert!(inbound.len() > 10, "the tap saw the round");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for bytes in &inbound {
        for n in &needles {
            assert!(!contains(bytes, n), "a canary reached the coordinator");
        }
    }
    let db_dir = cluster.layout.coordinator_config.parent().unwrap().to_path_buf();
    // The database, its write-ahead log and shared memory, while running and after a clean stop.
    let check_store = || {
        let mut checked = 0;
        for entry in std::fs::read_dir(&db_dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.file_name().unwrap().to_string_lossy().starts_with("coordinator.db") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else { continue };
            checked += bytes.len();
            for n in &needles {
                assert!(!contains(&bytes, n), "a canary is stored in {}", path.display());
            }
        }
        assert!(checked > 0, "the database was read");
    };
    check_store();
    let mut cluster = cluster;
    cluster.stop_coordinator().await;
    check_store();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_keeps_results_and_fails_interrupted_jobs_clearly() {
    // Party 2 goes silent after advertising its keys, and the stage deadline is long, so the
    // second job is still running when the coordinator dies.
    let spec = ClusterSpec {
        parties: hospitals(None),
        stage_timeout: Duration::from_secs(600),
        ..ClusterSpec::named(&[])
    };
    let mut cluster = Cluster::start(spec).await;
    let (done, result) = cluster.run_job(RADIUS).await;
    assert_eq!(done.state(), JobState::Succeeded);
    let before = result.unwrap();
    // Restart party 2 with the stall fault, then start the second job.
    cluster.kill_party(2);
    cluster.wait_disconnected(2).await;
    cluster.set_fault(2, Some(Fault::StallAfter(Stage::AdvertiseKeys)));
    cluster.start_party(2);
    cluster.wait_connected(3).await;
    let mut jobs = cluster.jobs().await;
    let busy = cluster.signer("analyst").submit(&mut jobs, RADIUS).await.unwrap();
    let running = cluster.wait_state(&busy.job_id, "running").await;
    assert_eq!(running.state(), JobState::Running);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill_coordinator().await;
    cluster.restart_coordinator().await;
    let mut jobs = cluster.jobs().await;
    let kept = jobs
        .result(veil_proto::v1::JobRef { job_id: done.job_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept, before, "the finished result is intact");
    let interrupted = jobs
        .get(veil_proto::v1::JobRef { job_id: busy.job_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(interrupted.state(), JobState::Failed);
    assert!(interrupted.detail.contains("interrupted"), "{}", interrupted.detail);
    let status = jobs.result(veil_proto::v1::JobRef { job_id: busy.job_id }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    // The restarted coordinator runs new jobs with the reconnected parties.
    cluster.kill_party(2);
    cluster.set_fault(2, None);
    cluster.start_party(2);
    cluster.wait_connected(3).await;
    let (again, _) = cluster.run_job(RADIUS).await;
    assert_eq!(again.state(), JobState::Succeeded, "{again:?}");
    cluster.shutdown().await;
}

mod raw {
    //! A hand-driven party stream, to send what a correct party never would.
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Streaming;
    use veil_proto::v1::party_envelope::Body;
    use veil_proto::v1::party_gateway_client::PartyGatewayClient;
    use veil_proto::v1::{CoordinatorEnvelope, Hello, PartyEnvelope};

    pub(crate) struct RawParty {
        pub(crate) tx: mpsc::Sender<PartyEnvelope>,
        pub(crate) inbound: Streaming<CoordinatorEnvelope>,
        /// The first message or status, read at connection.
        first: Option<Result<Option<CoordinatorEnvelope>, tonic::Status>>,
    }

    /// Connects as party 2. While the coordinator still holds the stream of a party 2 that
    /// just went (its departure is noticed a moment later), the connection is refused as a
    /// duplicate: retried for at most 5 s.
    pub(crate) async fn connect(
        channel: tonic::transport::Channel,
        first: Option<Body>,
    ) -> Result<RawParty, tonic::Status> {
        let mut client = PartyGatewayClient::new(channel).max_encoding_message_size(64 << 20);
        let body = first.unwrap_or(Body::Hello(Hello {
            party_id: 2,
            datasets: vec!["cells".into()],
            catalog_json: String::new(),
        }));
        for _ in 0..50 {
            let (tx, rx) = mpsc::channel(8);
            tx.send(PartyEnvelope { body: Some(body.clone()) }).await.unwrap();
            match client.connect(ReceiverStream::new(rx)).await {
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(s) => return Err(s),
                Ok(r) => {
                    let mut party = RawParty { tx, inbound: r.into_inner(), first: None };
                    // A refusal can also come as the stream's first status; anything else is
                    // kept for `next`.
                    match party.next().await {
                        Err(s) if s.code() == tonic::Code::AlreadyExists => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        first => {
                            party.first = Some(first);
                            return Ok(party);
                        }
                    }
                }
            }
        }
        Err(tonic::Status::deadline_exceeded("party 2 stayed connected for 5 s"))
    }

    impl RawParty {
        pub(crate) async fn send(&self, body: Body) {
            let _ = self.tx.send(PartyEnvelope { body: Some(body) }).await;
        }

        /// The next message, or the status the stream ended with.
        pub(crate) async fn next(&mut self) -> Result<Option<CoordinatorEnvelope>, tonic::Status> {
            if let Some(first) = self.first.take() {
                return first;
            }
            tokio::time::timeout(std::time::Duration::from_secs(20), self.inbound.message())
                .await
                .expect("the coordinator answers within 20 s")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_out_of_order_party_messages_get_a_clear_status() {
    use veil_proto::v1::coordinator_envelope::Body as Out;
    use veil_proto::v1::party_envelope::Body;
    use veil_proto::v1::{RoundPayload, TaskReply};

    let mut cluster =
        Cluster::start(ClusterSpec { parties: four_parties(None), ..ClusterSpec::named(&[]) })
            .await;
    cluster.kill_party(2);
    let party_channel = || async {
        let dir = cluster.layout.party_configs[2].parent().unwrap().to_path_buf();
        let tls = TlsMaterial::from_pem(
            &ca(&cluster),
            &std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
            &std::fs::read_to_string(dir.join("key.pem")).unwrap(),
        );
        veil_proto::client::connect(&format!("https://{}", cluster.addr), Some(&tls)).await.unwrap()
    };
    let identity = {
        let dir = cluster.layout.party_configs[2].parent().unwrap().to_path_buf();
        let text = std::fs::read_to_string(dir.join("identity.key")).unwrap();
        let seed: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
        ed25519_dalek::SigningKey::from_bytes(&seed)
    };
    let reply = |job_id: String, job_hash: String, advertise: Vec<u8>| {
        use ed25519_dalek::Signer;
        let statement = veil_governance::decision::decision_statement(&job_id, &job_hash, None);
        let head = veil_governance::audit::Head { seq: 0, hash: "ab".repeat(32), signature: None }
            .signed(&job_id, &identity);
        Body::Reply(TaskReply {
            job_id,
            accept: true,
            reason: String::new(),
            signature: identity.sign(&statement).to_bytes().to_vec(),
            job_hash,
            dataset_sha256: String::new(),
            advertise,
            min_cohort: 0,
            head_seq: 0,
            head_signature: head.signature.unwrap_or_default(),
            head_hash: head.hash,
            ..Default::default()
        })
    };

    // Out of order: the first message is not a hello.
    let status =
        match raw::connect(party_channel().await, Some(reply("x".into(), String::new(), vec![])))
            .await
        {
            Err(status) => status,
            Ok(mut p) => p.next().await.unwrap_err(),
        };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("hello"), "{status}");

    // A second hello.
    let mut p = raw::connect(party_channel().await, None).await.unwrap();
    assert!(matches!(p.next().await, Ok(Some(_))), "welcome");
    p.send(Body::Hello(veil_proto::v1::Hello {
        party_id: 2,
        datasets: vec![],
        catalog_json: String::new(),
    }))
    .await;
    let status = p.next().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");

    // Oversized: 41 MiB in one message.
    let mut p = raw::connect(party_channel().await, None).await.unwrap();
    assert!(matches!(p.next().await, Ok(Some(_))), "welcome");
    p.send(Body::Round(RoundPayload {
        job_id: "x".into(),
        message: vec![7u8; 41 << 20],
        ..Default::default()
    }))
    .await;
    let status = p.next().await.unwrap_err();
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status}");

    // Inside a round: undecodable bytes, then (in a second job) a message of a later stage,
    // then (in a third) round keys in the reply signed by a key not in the roster.
    for case in ["undecodable", "later stage", "forged keys"] {
        let mut p = raw::connect(party_channel().await, None).await.unwrap();
        assert!(matches!(p.next().await, Ok(Some(_))), "welcome");
        let mut jobs = cluster.jobs().await;
        let job = cluster.signer("analyst").submit(&mut jobs, RADIUS).await.unwrap();
        let start = loop {
            match p.next().await.unwrap().unwrap().body {
                Some(Out::Offer(o)) => {
                    let hash = veil_analytics::Job::parse(&o.spec_json).unwrap().hash();
                    let advertise = if case == "forged keys" {
                        let session = veil_protocol::SessionId(o.session.try_into().unwrap());
                        let forger = veil_protocol::IdentityKey::from_seed(&[9; 32]);
                        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
                        let party = veil_protocol::PartyId(2);
                        let keys = RoundKeys::generate(session, party, &forger, &mut rng);
                        keys.advertisement().encode()
                    } else {
                        vec![]
                    };
                    p.send(reply(o.job_id, hash, advertise)).await
                }
                Some(Out::Start(s)) => break s,
                _ => {}
            }
        };
        let message = if case == "forged keys" {
            None
        } else if case == "undecodable" {
            Some(vec![1, 2, 3])
        } else {
            veil_protocol::PartyMessage::ConsistencySignature {
                session: veil_protocol::SessionId(start.session.clone().try_into().unwrap()),
                party: veil_protocol::PartyId(2),
                signature: [0; 64],
            }
            .encode()
            .into()
        };
        if let Some(message) = message {
            p.send(Body::Round(RoundPayload {
                job_id: start.job_id.clone(),
                message,
                ..Default::default()
            }))
            .await;
        }
        let status = loop {
            match p.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream closed without a status"),
                Err(status) => break status,
            }
        };
        let expected = match case {
            "undecodable" => Code::InvalidArgument,
            "later stage" => Code::FailedPrecondition,
            _ => Code::PermissionDenied,
        };
        assert_eq!(status.code(), expected, "{case}: {status}");
        assert!(status.message().contains(&job.job_id), "{status}");
        // The round goes on without the misbehaving party.
        let done = cluster.wait_job(&job.job_id).await;
        assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    }
    cluster.shutdown().await;
}

const CARRIERS: [&str; 16] = [
    "9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV",
];

/// Parties that announce different catalogs for one dataset are named, with the column and
/// what differs, when a query is planned against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_mismatch_names_the_parties_the_column_and_what_differs() {
    let mut parties = airports();
    for (i, p) in parties.iter_mut().enumerate() {
        let hi = if i == 2 { 900.0 } else { 1500.0 };
        p.datasets[0].extra_toml = format!("bounds = {{ dep_delay = [-60.0, {hi:.1}] }}\n");
    }
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let sql = serde_json::json!({ "sql": "SELECT AVG(dep_delay) FROM flights" }).to_string();
    let status = plan(&cluster, &sql).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    let m = status.message();
    assert!(m.contains("ewr and lga announce different catalogs"), "{m}");
    assert!(
        m.contains("column \"dep_delay\": bounds [-60, 1500] at ewr, [-60, 900] at lga"),
        "{m}"
    );
    // The catalog a consumer lists says the same.
    let listed = cluster.jobs().await.catalog(CatalogRequest {}).await.unwrap_err();
    assert_eq!(listed.code(), Code::FailedPrecondition, "{listed}");
    assert!(listed.message().contains("ewr and lga announce different catalogs"), "{listed}");
    cluster.shutdown().await;
}

/// A consumer lists what the connected parties serve: each dataset's columns, types, declared
/// bounds and domains, and its parties; nothing else of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_lists_the_datasets_their_columns_and_their_parties() {
    let cluster = carriers("bounds = { dep_delay = [-100.0, 1500.0] }").await;
    let list = cluster.jobs().await.catalog(CatalogRequest {}).await.unwrap().into_inner();
    assert_eq!(list.datasets_json.len(), 1, "{list:?}");
    let flights: serde_json::Value = serde_json::from_str(&list.datasets_json[0]).unwrap();
    assert_eq!(flights["name"], "flights");
    assert_eq!(flights["parties"], serde_json::json!(["ewr", "jfk", "lga"]));
    let column = |name: &str| {
        flights["columns"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
    };
    assert_eq!(column("dep_delay")["bounds"], serde_json::json!([-100.0, 1500.0]));
    assert_eq!(column("carrier")["domain"].as_array().unwrap().len(), CARRIERS.len());
    assert_eq!(column("carrier")["type"], "string");
    cluster.shutdown().await;
}

/// The three airports with the carriers' domain declared and the given bounds.
async fn carriers(bounds: &str) -> Cluster {
    let domain: Vec<String> = CARRIERS.iter().map(|c| format!("\"{c}\"")).collect();
    let mut parties = airports();
    for p in &mut parties {
        p.datasets[0].extra_toml =
            format!("{bounds}\ndomains = {{ carrier = [{}] }}\n", domain.join(", "));
    }
    Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await
}

/// A SQL query grouped by carrier over the three airports equals the same statistics over the
/// pooled rows: counts, sums and histograms exactly, means to fixed-point precision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_group_by_carrier_equals_the_pooled_rows() {
    use std::collections::BTreeMap;
    let cluster =
        carriers("bounds = { dep_delay = [-100.0, 1500.0], distance = [0.0, 5000.0] }").await;
    let sql = "SELECT carrier, COUNT(*) AS flights, AVG(dep_delay), SUM(distance), \
               HISTOGRAM(dep_delay, -100, 0, 15, 60, 180, 1500) FROM flights \
               WHERE month <= 6 AND NOT carrier IN ('HA') GROUP BY carrier";
    let request = serde_json::json!({ "sql": sql }).to_string();
    let (status, result) = cluster.run_job(&request).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let result = result.unwrap();
    let a = answer(&result.answer_json);
    assert_eq!(
        a.groups.len(),
        CARRIERS.len() + 2,
        "one group per declared carrier, (other) and (null)"
    );

    // The pooled rows, straight from the files.
    #[derive(Default)]
    struct Acc {
        rows: u64,
        dep_n: u64,
        dep_sum: f64,
        dist: f64,
        hist: [u64; 5],
    }
    let edges = [-100.0, 0.0, 15.0, 60.0, 180.0, 1500.0];
    let mut pooled: BTreeMap<String, Acc> = BTreeMap::new();
    for airport in ["ewr", "jfk", "lga"] {
        let mut r = csv::Reader::from_path(data(&format!("flights/{airport}.csv"))).unwrap();
        let h = r.headers().unwrap().clone();
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        let (month, carrier, dep, dist) =
            (col("month"), col("carrier"), col("dep_delay"), col("distance"));
        for rec in r.records() {
            let rec = rec.unwrap();
            if rec[month].parse::<i64>().unwrap() > 6 || &rec[carrier] == "HA" {
                continue;
            }
            let acc = pooled.entry(rec[carrier].to_string()).or_default();
            acc.rows += 1;
            acc.dist += rec[dist].parse::<f64>().unwrap();
            if !rec[dep].is_empty() {
                let x: f64 = rec[dep].parse().unwrap();
                acc.dep_n += 1;
                acc.dep_sum += x.clamp(-100.0, 1500.0);
                if (edges[0]..=edges[5]).contains(&x) {
                    acc.hist[edges.windows(2).position(|w| x >= w[0] && x < w[1]).unwrap_or(4)] +=
                        1;
                }
            }
        }
    }
    for g in &a.groups {
        let key = &g.key[0];
        let empty = Acc::default();
        let p = pooled.get(key.as_str()).unwrap_or(&empty);
        assert_eq!(g.rows, Some(p.rows), "rows of {key}");
        if p.rows == 0 {
            continue;
        }
        let dep = g.columns.iter().find(|c| c.name == "dep_delay").unwrap();
        let dist = g.columns.iter().find(|c| c.name == "distance").unwrap();
        assert_eq!(dep.count, p.dep_n, "dep_delay count of {key}");
        assert!(
            (dep.mean.unwrap() - p.dep_sum / p.dep_n as f64).abs() < 1e-6,
            "mean delay of {key}"
        );
        assert_eq!(dist.sum, p.dist, "distance of {key}");
        let expected: Vec<Option<u64>> = p.hist.iter().map(|&n| Some(n)).collect();
        assert_eq!(dep.histogram.as_ref().unwrap().counts, expected, "histogram of {key}");
    }
    assert!(pooled.keys().all(|k| CARRIERS.contains(&k.as_str())));
    // The result table follows the SELECT list.
    let table: serde_json::Value = serde_json::from_str(&result.table_json).unwrap();
    assert_eq!(table["headers"][0], "carrier");
    assert_eq!(table["headers"][1], "flights");
    let ua = table["rows"].as_array().unwrap().iter().find(|r| r[0] == "UA").unwrap();
    assert_eq!(ua[1].as_u64(), Some(pooled["UA"].rows));
    // Malformed SQL, unknown columns and unsupported features are refused with the cause, and
    // no job runs.
    let mut jobs = cluster.jobs().await;
    for (bad, cause) in [
        ("SELEC COUNT(*) FROM flights", "parse"),
        ("SELECT COUNT(*) FROM flights LEFT JOIN x ON a = b", "not supported"),
        ("SELECT COUNT(*) FROM flights JOIN x ON a = b", "no dataset \"x\""),
        ("SELECT SUM(nope) FROM flights", "nope"),
        ("SELECT COUNT(*) FROM trains", "trains"),
    ] {
        let status = jobs
            .plan(PlanRequest { spec: serde_json::json!({ "sql": bad }).to_string() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status}");
        assert!(status.message().to_lowercase().contains(cause), "{bad}: {status}");
    }
    cluster.shutdown().await;
}

/// The same grouped query with differential privacy: over repeated runs, the errors of every
/// well-populated carrier's released count and sum, each divided by the spread the answer
/// declares, are centred with unit deviation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_group_by_carrier_with_dp_has_the_declared_noise() {
    use std::collections::BTreeMap;
    let cluster = carriers("bounds = { distance = [0.0, 5000.0] }").await;
    let request = serde_json::json!({
        "sql": "SELECT carrier, COUNT(distance), SUM(distance) FROM flights GROUP BY carrier",
        "privacy": { "rho": 0.5 },
    })
    .to_string();
    let mut truth: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for airport in ["ewr", "jfk", "lga"] {
        let mut r = csv::Reader::from_path(data(&format!("flights/{airport}.csv"))).unwrap();
        let h = r.headers().unwrap().clone();
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        let (carrier, dist) = (col("carrier"), col("distance"));
        for rec in r.records() {
            let rec = rec.unwrap();
            let t = truth.entry(rec[carrier].to_string()).or_default();
            t.0 += 1.0;
            t.1 += rec[dist].parse::<f64>().unwrap().clamp(0.0, 5000.0);
        }
    }
    // Counts are released as non-negative integers: only carriers far from zero are unbiased.
    truth.retain(|_, (n, _)| *n > 2000.0);
    assert!(truth.len() >= 10, "the data has many large carriers");
    let runs = 6;
    let (mut count_z, mut sum_z) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (status, result) = cluster.run_job(&request).await;
        assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
        let a = answer(&result.unwrap().answer_json);
        assert_eq!(a.privacy.as_ref().map(|p| p.rho), Some(0.5));
        for g in &a.groups {
            let Some(&(n, sum)) = truth.get(&g.key[0]) else { continue };
            let c = g.columns.iter().find(|c| c.name == "distance").unwrap();
            let noise = c.noise.as_ref().expect("each released statistic declares its noise");
            count_z.push((c.count as f64 - n) / (noise.count_ci95 / 1.96));
            sum_z.push((c.sum - sum) / (noise.sum_ci95 / 1.96));
        }
    }
    for (name, z) in [("count", &count_z), ("sum", &sum_z)] {
        let m = z.len() as f64;
        assert_eq!(z.len(), runs * truth.len(), "{name}: every large carrier released each run");
        let mean = z.iter().sum::<f64>() / m;
        let sd = (z.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (m - 1.0)).sqrt();
        // Over at least 60 independent draws the standardised mean lies within ±0.5 and the
        // deviation within ±35% of one with probability above 0.999.
        assert!(mean.abs() < 0.5, "{name}: mean standardised error {mean}");
        assert!((0.65..1.35).contains(&sd), "{name}: standardised deviation {sd}");
    }
    cluster.shutdown().await;
}
