//! Federated training through the real services: a coordinator and party workers over gRPC
//! with mutual TLS on 127.0.0.1, every sum a secure aggregation round.

// Helpers here read the repository's own data files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ndarray::{Array1, Array2, Axis};
use veil_learning::eval::EvalCounts;
use veil_learning::job::{LocalData, TrainSpec, Training};
use veil_learning::train::{Examples, Standardizer, train_local};
use veil_party_worker::Fault;
use veil_proto::v1::JobRef;
use veil_proto::v1::JobState;
use veil_protocol::Stage;
use veil_testkit::cluster::{
    Cluster, ClusterSpec, example_data, hospitals, hospitals_and_a_clinic,
};

const HOSPITALS: [&str; 3] = ["hospital_a", "hospital_b", "hospital_c"];

/// A hospital's rows: the 30 features and the 0/1 target.
fn rows(hospital: &str) -> (Vec<String>, Array2<f64>, Array1<f64>) {
    let mut reader =
        csv::Reader::from_path(example_data(&format!("breast_cancer/{hospital}.csv"))).unwrap();
    let headers: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    let features: Vec<String> = headers.iter().filter(|h| *h != "target").cloned().collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in reader.records() {
        let r = r.unwrap();
        for (h, v) in headers.iter().zip(r.iter()) {
            let v: f64 = v.parse().unwrap();
            if h == "target" { y.push(v) } else { x.push(v) }
        }
    }
    let n = y.len();
    (features.clone(), Array2::from_shape_vec((n, features.len()), x).unwrap(), Array1::from(y))
}

fn features() -> Vec<String> {
    rows(HOSPITALS[0]).0
}

/// The three hospitals serving `cells` with every column, plus `extra` TOML per dataset.
fn cluster_spec(extra: &str, fault: Option<(usize, Fault)>) -> ClusterSpec {
    ClusterSpec {
        parties: hospitals(&columns(), extra, fault),
        stage_timeout: Duration::from_secs(20),
        ..ClusterSpec::named(&[])
    }
}

/// The hospitals and a fourth party, so that a round tolerating one colluder survives one
/// dropout.
fn four_party_spec(extra: &str, fault: Option<(usize, Fault)>) -> ClusterSpec {
    ClusterSpec {
        parties: hospitals_and_a_clinic(&columns(), extra, fault),
        ..cluster_spec(extra, None)
    }
}

fn columns() -> Vec<(String, String)> {
    let mut columns: Vec<(String, String)> =
        features().into_iter().map(|f| (f, "float".to_string())).collect();
    columns.push(("target".into(), "int".into()));
    columns
}

fn logistic(rounds: u32, extra: &str) -> String {
    let list: Vec<String> = features().iter().map(|f| format!("{f:?}")).collect();
    format!(
        r#"
kind = "train"
dataset = "cells"
features = [{}]
label = "target"
rounds = {rounds}
seed = 11
{extra}
[model]
kind = "logistic_regression"
[local]
epochs = 1
batch_size = 16
learning_rate = 0.1
l2 = 0.05
schedule = {{ kind = "cosine", floor = 0.02 }}
optimizer = {{ kind = "sgd" }}
"#,
        list.join(", ")
    )
}

/// Submits a job and collects every status the watch streams until it ends.
async fn run_watching(cluster: &Cluster, spec: &str) -> Vec<veil_proto::v1::JobStatus> {
    let mut jobs = cluster.jobs().await;
    let submitted = cluster.signer("analyst").submit(&mut jobs, spec).await.unwrap();
    let mut stream = jobs.watch(JobRef { job_id: submitted.job_id }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Some(s) = tokio::time::timeout_at(deadline, stream.message()).await.unwrap().unwrap()
    {
        seen.push(s);
    }
    seen
}

async fn answer(cluster: &Cluster, job_id: &str) -> serde_json::Value {
    let mut jobs = cluster.jobs().await;
    let r = jobs.result(JobRef { job_id: job_id.into() }).await.unwrap().into_inner();
    serde_json::from_str(&r.answer_json).unwrap()
}

/// The same model, settings, split and number of passes over the pooled training rows: its
/// accuracy on the pooled held-out rows, and its parameters.
fn pooled(spec: &TrainSpec) -> (f64, Vec<f64>) {
    let parts: Vec<LocalData> = HOSPITALS
        .iter()
        .map(|h| {
            let (_, x, y) = rows(h);
            LocalData::new(spec, x, y).unwrap()
        })
        .collect();
    let cat = |f: &dyn Fn(&LocalData) -> &Examples| Examples {
        x: ndarray::concatenate(Axis(0), &parts.iter().map(|p| f(p).x.view()).collect::<Vec<_>>())
            .unwrap(),
        y: ndarray::concatenate(Axis(0), &parts.iter().map(|p| f(p).y.view()).collect::<Vec<_>>())
            .unwrap(),
    };
    let (mut train, mut test) = (cat(&|p| &p.train), cat(&|p| &p.eval));
    let s = Standardizer::from_moments(&Standardizer::local_moments(train.x.view())).unwrap();
    s.apply(&mut train.x).unwrap();
    s.apply(&mut test.x).unwrap();
    let mut model = Training::new(spec).unwrap().server.model;
    for round in 0..spec.rounds {
        let rate = spec.local.rate_at(round, spec.rounds);
        let u = train_local(&model, &train, &spec.local, rate, 0.0, [round as u8; 32]).unwrap();
        model.parameters.iter_mut().zip(&u.delta).for_each(|(w, d)| *w += d);
    }
    let counts = EvalCounts::of(&model, test.x.view(), test.y.view()).unwrap();
    (counts.metrics(true).accuracy.unwrap(), model.parameters)
}

/// Logistic regression over three hospitals through the services: every round's metrics are
/// streamed, and the model's held-out accuracy is within one point of pooled training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_logistic_regression_over_the_services_matches_pooled_training() {
    let cluster = Cluster::start(cluster_spec("", None)).await;
    // 30 % held out: one test row is then under a point of accuracy.
    let text = logistic(100, "[evaluation]\nholdout = 0.3");
    let seen = run_watching(&cluster, &text).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
    let progress: Vec<&str> =
        seen.iter().filter(|s| s.detail.contains("/100 over")).map(|s| s.detail.as_str()).collect();
    assert!(progress.len() >= 80, "per-round progress is streamed: {progress:?}");
    assert!(progress.iter().all(|d| d.contains("accuracy") && d.contains("AUC")), "{progress:?}");
    assert!(seen.iter().any(|s| s.progress_json.contains("\"metrics\"")));

    let a = answer(&cluster, &last.job_id).await;
    assert_eq!(a["rounds"].as_array().unwrap().len(), 100);
    let federated = a["final"]["accuracy"].as_f64().unwrap();
    assert!(a["final"]["auc"].as_f64().unwrap() > 0.95, "{}", a["final"]);
    let spec = match veil_analytics::Job::parse(&text).unwrap() {
        veil_analytics::Job::Train(s) => *s,
        _ => unreachable!(),
    };
    let (pooled, central) = pooled(&spec);
    // Both reach nearly the same minimiser of the regularised loss.
    let trained: Vec<f64> = serde_json::from_value(a["model"]["parameters"].clone()).unwrap();
    let gap = central.iter().zip(&trained).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    let norm = central.iter().map(|a| a * a).sum::<f64>().sqrt();
    assert!(gap < 0.1 * norm, "federated model {gap} from the pooled one of norm {norm}");
    assert!(federated > 0.9, "federated accuracy {federated}");
    assert!((federated - pooled).abs() <= 0.01 + 1e-9, "federated {federated} vs pooled {pooled}");

    // The exported model scores locally exactly as the coordinator's evaluation did.
    let file =
        veil_learning::export::ModelFile::from_json(a["model"].to_string().as_bytes()).unwrap();
    assert_eq!(file.provenance.rounds, 100);
    cluster.shutdown().await;
}

/// Reads a job's progress until a status's detail starts with `round`; fails if the job ends
/// first or the deadline passes.
async fn wait_for_round(
    stream: &mut tonic::Streaming<veil_proto::v1::JobStatus>,
    deadline: tokio::time::Instant,
    round: &str,
) {
    loop {
        let s = tokio::time::timeout_at(deadline, stream.message()).await.unwrap().unwrap();
        let s = s.expect("the job runs");
        assert_ne!(s.state(), JobState::Succeeded, "the job ended before {round}");
        if s.detail.starts_with(round) {
            return;
        }
    }
}

/// After a coordinator restart, a party that reconnects a moment after the others is waited
/// for, not left out of the rest of the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_waits_for_a_party_that_reconnects_late() {
    let mut cluster = Cluster::start(cluster_spec("", None)).await;
    let mut jobs = cluster.jobs().await;
    let job = cluster.submit(&logistic(30, "")).await.unwrap().job_id;
    let mut stream = jobs.watch(JobRef { job_id: job.clone() }).await.unwrap().into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    wait_for_round(&mut stream, deadline, "round 5/30").await;
    cluster.kill_party(2);
    cluster.kill_coordinator().await;
    cluster.restart_coordinator().await;
    cluster.wait_connected(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_party(2);
    let resumed = cluster.wait_job(&job).await;
    assert_eq!(resumed.state(), JobState::Succeeded, "{resumed:?}");
    let a = answer(&cluster, &job).await;
    let rounds = a["rounds"].as_array().unwrap();
    let last = rounds.last().unwrap();
    assert_eq!(last["contributors"], 3, "the late party is out of the resumed job: {last}");
    cluster.shutdown().await;
}

/// A party of the job's cohort that vanishes mid-job and comes back is offered the job again
/// and takes part from the next step on, rather than being out for the rest of the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_comes_back_rejoins_the_training_job() {
    let mut cluster = Cluster::start(four_party_spec("", None)).await;
    let mut jobs = cluster.jobs().await;
    let job = cluster.submit(&logistic(120, "")).await.unwrap().job_id;
    let mut stream = jobs.watch(JobRef { job_id: job.clone() }).await.unwrap().into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    wait_for_round(&mut stream, deadline, "round 10/120").await;
    cluster.kill_party(2);
    cluster.wait_disconnected(2).await;
    wait_for_round(&mut stream, deadline, "round 25/120").await;
    cluster.start_party(2);
    let done = cluster.wait_job(&job).await;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    let a = answer(&cluster, &job).await;
    let rounds = a["rounds"].as_array().unwrap();
    assert!(rounds.iter().any(|r| r["contributors"] == 3), "the party was never out");
    let last = rounds.last().unwrap();
    assert_eq!(last["contributors"], 4, "the party that came back is still out: {last}");
    cluster.shutdown().await;
}

/// A hospital that vanishes in the first step does not stop training; the others finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_vanishes_mid_training_does_not_stop_the_job() {
    let mut cluster =
        Cluster::start(four_party_spec("", Some((2, Fault::ExitAfter(Stage::ShareKeys))))).await;
    let seen = run_watching(&cluster, &logistic(8, "")).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
    let mut jobs = cluster.jobs().await;
    let r = jobs.result(JobRef { job_id: last.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(r.dropped, vec![2]);
    let a: serde_json::Value = serde_json::from_str(&r.answer_json).unwrap();
    for round in a["rounds"].as_array().unwrap() {
        assert_eq!(round["contributors"], 3, "{round}");
    }
    assert!(a["final"]["accuracy"].as_f64().unwrap() > 0.85, "{}", a["final"]);
    assert!(matches!(cluster.party_outcome(2).await, Some(Ok(()))), "the faulty party exited");
    cluster.shutdown().await;
}

/// The parameters of a finished training job's model.
async fn parameters(cluster: &Cluster, job_id: &str) -> Vec<f64> {
    let a = answer(cluster, job_id).await;
    serde_json::from_value(a["model"]["parameters"].clone()).unwrap()
}

/// A coordinator killed mid-training resumes the job from its last checkpoint after a
/// restart, and ends with exactly the model an uninterrupted run of the same job trains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_resumes_training_from_its_checkpoint() {
    let mut cluster = Cluster::start(cluster_spec("", None)).await;
    let text = logistic(40, "");
    let mut jobs = cluster.jobs().await;
    let job = cluster.submit(&text).await.unwrap().job_id;
    let mut stream = jobs.watch(JobRef { job_id: job.clone() }).await.unwrap().into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    wait_for_round(&mut stream, deadline, "round 10/40").await;
    cluster.kill_coordinator().await;
    cluster.restart_coordinator().await;
    let resumed = cluster.wait_job(&job).await;
    assert_eq!(resumed.state(), JobState::Succeeded, "{resumed:?}");
    let a = answer(&cluster, &job).await;
    let rounds = a["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 40);
    // A round under way at the kill is lost (each party contributes to a step once); every
    // other round ran over all three hospitals.
    let lost: Vec<&serde_json::Value> = rounds.iter().filter(|r| r["lost"] == true).collect();
    assert!(lost.len() <= 1, "{lost:?}");
    assert!(rounds.iter().filter(|r| r["lost"] != true).all(|r| r["contributors"] == 3));

    let (whole, _) = cluster.run_job(&text).await;
    assert_eq!(whole.state(), JobState::Succeeded, "{whole:?}");
    let (resumed, uninterrupted) =
        (parameters(&cluster, &job).await, parameters(&cluster, &whole.job_id).await);
    if lost.is_empty() {
        // Killed between two steps: the resumed job trains the very model an uninterrupted
        // one does.
        assert_eq!(resumed, uninterrupted);
    } else {
        let accuracy = a["final"]["accuracy"].as_f64().unwrap();
        assert!(accuracy > 0.9, "{accuracy}");
    }
    cluster.shutdown().await;
}

/// Declared bounds of every feature, widened from the data (owners declare them in practice).
fn declared_bounds() -> String {
    let names = features();
    let mut lo = vec![f64::INFINITY; names.len()];
    let mut hi = vec![f64::NEG_INFINITY; names.len()];
    for h in HOSPITALS {
        let (_, x, _) = rows(h);
        for row in x.rows() {
            for (j, v) in row.iter().enumerate() {
                lo[j] = lo[j].min(*v);
                hi[j] = hi[j].max(*v);
            }
        }
    }
    let entries: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(j, n)| format!("{n} = [{:?}, {:?}]", lo[j].min(0.0), hi[j] * 1.5))
        .collect();
    format!("bounds = {{ {} }}", entries.join(", "))
}

/// DP-FedAvg through the services: standardised by declared bounds, stopped by its own
/// budget with a finite ε, and a second job that the parties' budgets cannot pay for is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_training_reports_epsilon_stops_at_its_budget_and_parties_refuse_beyond_theirs() {
    let extra = format!("{}\n[datasets.policy]\nbudget_per_consumer = 3.0\n", declared_bounds());
    let cluster = Cluster::start(cluster_spec(&extra, None)).await;
    let dp =
        "min_parties = 3\n[privacy]\nclip = 0.5\nnoise_multiplier = 2.0\nrho = 2.0\ndelta = 1e-6";
    let text = logistic(40, dp);
    let (status, result) = cluster.run_job(&text).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let a: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    let rounds = a["rounds"].as_array().unwrap().len();
    assert!(rounds > 0 && rounds < 40, "{rounds} rounds");
    let epsilon = a["epsilon"].as_f64().unwrap();
    assert!(epsilon.is_finite() && epsilon > 0.0, "ε {epsilon}");
    assert!(a["stopped_early"].as_str().unwrap().contains("budget"), "{a}");
    assert!(a["final"].is_null(), "a DP job releases no exact evaluation counts");
    let standardizer = &a["model"]["standardizer"];
    assert!(standardizer["mean"].as_array().is_some(), "standardised by the declared bounds");

    // The first job reserved ρ = 2 of each party's 3; the same job again does not fit.
    let (refused, _) = cluster.run_job(&text).await;
    assert_eq!(refused.state(), JobState::Failed, "{refused:?}");
    assert!(refused.detail.contains("budget"), "{}", refused.detail);
    cluster.shutdown().await;
}

/// Record-level DP-SGD through the services: each round one DP-SGD step whose gradient sum the
/// coordinator only sees noised, stopped by the Rényi accountant at the job's ε, every owner's
/// ledger charged the job's zCDP ρ, and a second job beyond the owners' budgets refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_level_dp_sgd_stops_at_its_epsilon_and_charges_the_owners() {
    let extra = format!("{}\n[datasets.policy]\nbudget_per_consumer = 0.6\n", declared_bounds());
    let cluster = Cluster::start(cluster_spec(&extra, None)).await;
    let dp = "min_parties = 3\nstrategy = { kind = \"fed_adam\", learning_rate = 0.3 }\n\
        [privacy]\nunit = \"record\"\nclip = 1.0\nnoise_multiplier = 8.0\nsample_rate = 0.5\n\
        epsilon = 2.0\ndelta = 1e-5";
    let text = logistic(1000, dp).replace("l2 = 0.05\n", "");
    let spec = match veil_analytics::Job::parse(&text).unwrap() {
        veil_analytics::Job::Train(s) => *s,
        _ => unreachable!(),
    };
    let (status, result) = cluster.run_job(&text).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let a: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    let rounds = a["rounds"].as_array().unwrap();
    assert_eq!(rounds.len() as u32, spec.rounds_to_run().unwrap());
    let epsilon = a["epsilon"].as_f64().unwrap();
    assert!(epsilon > 1.9 && epsilon <= 2.0, "ε {epsilon}");
    assert!(a["final"].is_null(), "a DP job releases no exact evaluation counts");
    // Every owner's ledger holds the job's ρ: the unamplified ρ of each step it ran.
    let rho = spec.rho_total().unwrap();
    for i in 0..3 {
        let spent = cluster.spent(i, "cells", "analyst").consumer;
        assert!((spent - rho).abs() < 1e-9, "party {i} spent {spent}, the job charges {rho}");
    }
    // The model it released classifies the held-out tumours.
    let file: veil_learning::export::ModelFile =
        serde_json::from_value(a["model"].clone()).unwrap();
    let (mut right, mut all) = (0usize, 0usize);
    for h in HOSPITALS {
        let (_, x, y) = rows(h);
        let p = file.score(x).unwrap();
        right += p.column(0).iter().zip(&y).filter(|(p, y)| (**p >= 0.5) == (**y == 1.0)).count();
        all += y.len();
    }
    assert!(right as f64 >= 0.9 * all as f64, "{right} of {all}");

    // The first job took ρ ≈ 0.4 of each party's 0.6; the same job again does not fit.
    assert!(rho > 0.3 && rho < 0.6, "{rho}");
    let (refused, _) = cluster.run_job(&text).await;
    assert_eq!(refused.state(), JobState::Failed, "{refused:?}");
    assert!(refused.detail.contains("budget"), "{}", refused.detail);
    cluster.shutdown().await;
}

/// The exact vector party `party` contributes to the first training round of a job (the
/// rounding is seeded from the job's hash without DP, as the worker seeds it).
fn first_round_vector(text: &str, standardizer: &Standardizer, party: usize) -> Vec<u64> {
    use rand::SeedableRng;
    use sha2::{Digest, Sha256};
    use veil_learning::job::{Step, StepInput, party_vector};
    let job = veil_analytics::Job::parse(text).unwrap();
    let veil_analytics::Job::Train(spec) = &job else { unreachable!() };
    let (_, x, y) = rows(HOSPITALS[party]);
    let data = LocalData::new(spec, x, y).unwrap();
    let start = Training::new(spec).unwrap().server.model.parameters;
    let step = Step::Train { round: 0 };
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"veil/training-rounding/v1")
        .chain_update(job.hash().as_bytes())
        .chain_update(step.code().to_le_bytes())
        .chain_update((party as u32).to_le_bytes())
        .finalize()
        .into();
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let input = StepInput { step, parameters: &start, standardizer: Some(standardizer) };
    party_vector(spec, &input, &data, party as u32, &mut rng).unwrap()
}

/// No party's own update (nor its evaluation counts) ever reaches the coordinator: the exact
/// bytes of hospital A's first-round vector appear in nothing the coordinator receives in a
/// secure job, while in a plain benchmark job of the same model they do, so the check can
/// see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_never_receives_a_party_update() {
    let mut spec = cluster_spec("", None);
    for p in &mut spec.parties {
        p.benchmark = true;
    }
    let cluster = Cluster::start(spec).await;
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for plain in [true, false] {
        let text = logistic(2, if plain { "plain = true" } else { "" });
        cluster.inbound.lock().unwrap().clear();
        let (status, _) = cluster.run_job(&text).await;
        assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
        let a = answer(&cluster, &status.job_id).await;
        let standardizer: Standardizer =
            serde_json::from_value(a["model"]["standardizer"].clone()).unwrap();
        let vector = first_round_vector(&text, &standardizer, 0);
        // The update's first eight elements and the evaluation counts' first eight, as sent.
        let eval_at = vector.len() - 3 * veil_learning::eval::EvalCounts::vector_len(true);
        let bytes = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let update = bytes(&vector[..8]);
        let counts = bytes(&vector[eval_at..eval_at + 8]);
        let inbound = cluster.inbound.lock().unwrap().clone();
        let seen = inbound.iter().any(|b| contains(b, &update) || contains(b, &counts));
        assert_eq!(seen, plain, "plain {plain}: party A's vector visible: {seen}");
    }
    cluster.shutdown().await;
}

/// Softmax regression (with FedAvg and with the FedAdam server optimiser) and the MLP learn
/// the digits over four label-skewed parties through the services; the MLP samples three of
/// the four parties into each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softmax_and_mlp_learn_the_digits_with_sampled_cohorts() {
    use veil_testkit::cluster::{DatasetSpec, PartySpec};
    let file = |i: usize| example_data(&format!("digits/party_{i}.csv"));
    let header = std::fs::read_to_string(file(0)).unwrap().lines().next().unwrap().to_string();
    let pixels: Vec<String> =
        header.split(',').filter(|c| *c != "target").map(str::to_string).collect();
    let mut columns: Vec<(String, String)> =
        pixels.iter().map(|p| (p.clone(), "float".to_string())).collect();
    columns.push(("target".into(), "int".into()));
    let parties = (0..4)
        .map(|i| PartySpec {
            name: format!("clinic_{i}"),
            datasets: vec![DatasetSpec {
                name: "digits".into(),
                path: file(i),
                columns: columns.clone(),
                extra_toml: String::new(),
            }],
            ..PartySpec::default()
        })
        .collect();
    let cluster = Cluster::start(ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(20),
        ..ClusterSpec::named(&[])
    })
    .await;
    let list: Vec<String> = pixels.iter().map(|p| format!("{p:?}")).collect();
    let job = |model: &str, extra: &str| {
        format!(
            "kind = \"train\"\ndataset = \"digits\"\nfeatures = [{}]\nlabel = \"target\"\nrounds = 15\n{extra}\n\
             [model]\n{model}\n[local]\nepochs = 3\nbatch_size = 32\nlearning_rate = 0.01\nl2 = 1e-4\n\
             optimizer = {{ kind = \"adam\" }}\n",
            list.join(", ")
        )
    };
    for (model, extra, sampled) in [
        ("kind = \"softmax_regression\"\nclasses = 10", "", false),
        (
            "kind = \"softmax_regression\"\nclasses = 10",
            "[strategy]\nkind = \"fed_adam\"\nlearning_rate = 0.05",
            false,
        ),
        (
            "kind = \"mlp\"\nhidden = [32]\nclasses = 10",
            "cohort_fraction = 0.75\nmin_parties = 3",
            true,
        ),
    ] {
        let (status, result) = cluster.run_job(&job(model, extra)).await;
        assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
        let a: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
        let accuracy = a["final"]["accuracy"].as_f64().unwrap();
        assert!(accuracy > 0.9, "{model}: held-out accuracy {accuracy}");
        let cohorts: Vec<u64> = a["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["contributors"].as_u64().unwrap())
            .collect();
        assert!(cohorts.iter().all(|c| *c == if sampled { 3 } else { 4 }), "{cohorts:?}");
    }
    cluster.shutdown().await;
}

/// Parties whose policy combines their rows with at least three parties leave the training
/// once a hospital vanishes, and say why: the job fails with their signed reason, not a
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parties_that_leave_a_training_step_say_why() {
    // Four parties that each combine their data with at least four; one leaves after its
    // first masked input, so the first step finishes over four and the next has three.
    let extra = "[datasets.policy]\nmin_cohort = 4\n";
    let cluster =
        Cluster::start(four_party_spec(extra, Some((2, Fault::ExitAfter(Stage::MaskedInput)))))
            .await;
    let started = std::time::Instant::now();
    let (status, _) = cluster.run_job(&logistic(5, "")).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    assert!(status.detail.contains("refused by rule cohort"), "{}", status.detail);
    assert!(started.elapsed() < Duration::from_secs(15), "no stage deadline was waited out");
    cluster.shutdown().await;
}
