//! The example trainer programs of `examples/trainers` through the services, with a real
//! Python: the NumPy logistic regression across the three hospitals, a Python program that
//! tries to open a socket, and (where PyTorch is installed) the CNN on the digits.
//!
//! They need a Python with NumPy (and PyTorch for the last), so they are ignored by default;
//! `.ci/run` runs them with `VEIL_TEST_PYTHON` naming its virtualenv's interpreter:
//!
//! ```sh
//! VEIL_TEST_PYTHON=target/ci-venv/bin/python cargo test -p veil-testkit --test trainer_python -- --ignored
//! ```
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;
use veil_learning::model::{Model, ModelSpec};
use veil_proto::v1::JobState;
use veil_testkit::cluster::{
    Cluster, ClusterSpec, DatasetSpec, PartySpec, example_data, hospitals,
};

/// The interpreter, and what it must read: its virtualenv and its base installation (what an
/// owner lists in `[trainers] read_paths`).
fn python() -> (PathBuf, Vec<PathBuf>) {
    let given = std::env::var("VEIL_TEST_PYTHON")
        .expect("VEIL_TEST_PYTHON names a Python with NumPy (see this file's header)");
    // Relative to the repository (an absolute path stays as it is); not resolved, so that a
    // virtualenv's interpreter stays in its virtualenv.
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(given);
    let out = std::process::Command::new(&python)
        .args(["-c", "import sys; print(sys.prefix); print(sys.base_prefix)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{} does not run", python.display());
    let prefixes = String::from_utf8(out.stdout).unwrap().lines().map(PathBuf::from).collect();
    (python, prefixes)
}

fn trainers_toml(python: &Path, read: &[PathBuf]) -> String {
    let read: Vec<String> = read.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!(
        "\n[trainers]\ninterpreter = {:?}\nread_paths = [{}]\ntimeout_seconds = 120\n",
        python.display().to_string(),
        read.join(", ")
    )
}

fn sha256(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/trainers").join(name),
    )
    .unwrap()
}

/// Breast-cancer rows: every column but `target`, and `target`.
fn rows(file: &str) -> (Vec<String>, Vec<Vec<f64>>, Vec<f64>) {
    let mut reader = csv::Reader::from_path(example_data(file)).unwrap();
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in reader.records() {
        let v: Vec<f64> = r.unwrap().iter().map(|c| c.parse().unwrap()).collect();
        y.push(*v.last().unwrap());
        x.push(v[..v.len() - 1].to_vec());
    }
    (headers[..headers.len() - 1].to_vec(), x, y)
}

fn hospital_columns() -> Vec<(String, String)> {
    let (features, _, _) = rows("breast_cancer/hospital_a.csv");
    let mut c: Vec<(String, String)> = features.into_iter().map(|f| (f, "float".into())).collect();
    c.push(("target".into(), "int".into()));
    c
}

fn program_job(
    dataset: &str,
    features: &[String],
    source: &str,
    parameters: usize,
    extra: serde_json::Value,
) -> String {
    let mut job = serde_json::json!({
        "kind": "train",
        "dataset": dataset,
        "features": features,
        "label": "target",
        "rounds": 20,
        "min_parties": 3,
        "seed": 7,
        "model": { "kind": "program", "parameters": parameters },
        "trainer": { "source": source, "clip": 5.0 },
        "evaluation": { "holdout": 0.0 },
        "local": { "epochs": 1, "batch_size": 16, "learning_rate": 0.1, "l2": 0.01, "optimizer": { "kind": "sgd" } },
    });
    if let (Some(j), Some(e)) = (job.as_object_mut(), extra.as_object()) {
        j.extend(e.clone());
    }
    job.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs VEIL_TEST_PYTHON, a Python with NumPy; .ci/run runs it"]
async fn the_numpy_trainer_learns_the_tumours_and_a_python_program_reaches_no_network() {
    let (python, read) = python();
    let numpy = example("logistic_numpy.py");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connects = format!(
        "import socket, sys\nsys.stdin.readline()\nsocket.create_connection((\"127.0.0.1\", {port}), timeout=5).sendall(b\"escaped\")\nprint('{{\"update\": []}}')\n"
    );
    let policy =
        format!("[datasets.policy]\ntrainers = [{:?}, {:?}]\n", sha256(&numpy), sha256(&connects));
    let mut parties = hospitals(&hospital_columns(), &policy, None);
    for p in &mut parties {
        p.extra_toml = trainers_toml(&python, &read);
    }
    let cluster = Cluster::start(ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(120),
        ..ClusterSpec::named(&[])
    })
    .await;
    let (features, _, _) = rows("breast_cancer/hospital_a.csv");
    let (status, result) =
        cluster.run_job(&program_job("cells", &features, &numpy, 31, serde_json::json!({}))).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    let file: veil_learning::export::ModelFile =
        serde_json::from_value(answer["model"].clone()).unwrap();
    // The program's parameters are laid out as veil's logistic regression: score every row.
    let model =
        Model::from_parameters(ModelSpec::LogisticRegression, 30, file.parameters.clone()).unwrap();
    let standardizer = file.standardizer.clone().unwrap();
    let (mut right, mut all) = (0, 0);
    for h in ["a", "b", "c"] {
        let (_, x, y) = rows(&format!("breast_cancer/hospital_{h}.csv"));
        let mut x = ndarray::Array2::from_shape_vec((x.len(), 30), x.concat()).unwrap();
        standardizer.apply(&mut x).unwrap();
        let p = model.predict(x.view()).unwrap();
        right += p.column(0).iter().zip(&y).filter(|(p, y)| (**p >= 0.5) == (**y == 1.0)).count();
        all += y.len();
    }
    let accuracy = right as f64 / all as f64;
    eprintln!("NumPy trainer, 20 rounds across the three hospitals: accuracy {accuracy:.3}");
    assert!(accuracy >= 0.95, "{accuracy}");

    let (status, _) = cluster
        .run_job(&program_job("cells", &features, &connects, 31, serde_json::json!({"rounds": 1})))
        .await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    assert!(status.detail.contains("trainer program failed"), "{}", status.detail);
    assert!(listener.accept().is_err(), "a Python program connected out of its sandbox");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs VEIL_TEST_PYTHON, a Python with PyTorch; .ci/run runs it where torch is installed"]
async fn the_torch_cnn_learns_the_digits() {
    let (python, read) = python();
    let cnn = example("cnn_torch.py");
    let policy = format!("[datasets.policy]\ntrainers = [{:?}]\n", sha256(&cnn));
    let mut reader = csv::Reader::from_path(example_data("digits/party_0.csv")).unwrap();
    let features: Vec<String> =
        reader.headers().unwrap().iter().filter(|h| *h != "target").map(String::from).collect();
    let mut columns: Vec<(String, String)> =
        features.iter().map(|f| (f.clone(), "float".into())).collect();
    columns.push(("target".into(), "int".into()));
    let parties: Vec<PartySpec> = (0..4)
        .map(|i| PartySpec {
            name: format!("party_{i}"),
            datasets: vec![DatasetSpec {
                name: "digits".into(),
                path: example_data(&format!("digits/party_{i}.csv")),
                columns: columns.clone(),
                extra_toml: policy.clone(),
            }],
            extra_toml: trainers_toml(&python, &read),
            ..PartySpec::default()
        })
        .collect();
    let cluster = Cluster::start(ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(300),
        ..ClusterSpec::named(&[])
    })
    .await;
    let job = program_job(
        "digits",
        &features,
        &cnn,
        1898,
        serde_json::json!({
            "min_parties": 4, "rounds": 15, "trainer": { "source": cnn, "clip": 100.0 },
            "local": { "epochs": 2, "batch_size": 32, "learning_rate": 0.05, "optimizer": { "kind": "sgd" } }
        }),
    );
    let (status, result) = cluster.run_job(&job).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    let parameters: Vec<f64> =
        serde_json::from_value(answer["model"]["parameters"].clone()).unwrap();
    assert_eq!(parameters.len(), 1898);
    // Scored by the program's own network, in Python: the held-out fifth of each party's rows.
    let scorer = format!(
        "import json, sys, numpy as np, torch\nsys.path.insert(0, {:?})\nfrom cnn_torch import network\n\
         m = network().double()\ntorch.nn.utils.vector_to_parameters(torch.tensor(json.load(sys.stdin), dtype=torch.float64), m.parameters())\n\
         right = total = 0\nfor i in range(4):\n    d = np.loadtxt({:?} % i, delimiter=',', skiprows=1)\n    x = torch.tensor(d[:, :-1]).reshape(-1, 1, 8, 8)\n\
             \x20   right += int((m(x).argmax(1).numpy() == d[:, -1]).sum()); total += len(d)\nprint(right / total)\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/trainers").display().to_string(),
        example_data("digits/party_%d.csv").display().to_string(),
    );
    let mut child = std::process::Command::new(&python)
        .args(["-c", &scorer])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&parameters).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let accuracy: f64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    eprintln!("PyTorch CNN, 15 rounds across four label-skewed parties: accuracy {accuracy:.3}");
    assert!(accuracy >= 0.85, "{accuracy}");
    cluster.shutdown().await;
}
