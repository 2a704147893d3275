//! `veil submit` on a training job with real processes over mutual TLS on 127.0.0.1: progress
//! per round, the model written as JSON and safetensors, and `veil predict` scoring with it.

// Helpers here set up files and processes; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VEIL: &str = env!("CARGO_BIN_EXE_veil");

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn veil(args: &[&str]) -> Output {
    Command::new(VEIL).args(args).env("RUST_LOG", "warn").output().expect("veil runs")
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Process {
    let child = Command::new(VEIL)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("veil starts");
    Process(child)
}

/// Every column of the hospital's file, as floats (the target as an integer).
fn add_dataset(party_toml: &Path, csv: &Path) {
    let header = std::fs::read_to_string(csv).unwrap().lines().next().unwrap().to_string();
    let columns: Vec<String> = header
        .split(',')
        .map(|c| format!("{c} = \"{}\"", if c == "target" { "int" } else { "float" }))
        .collect();
    let mut f = std::fs::OpenOptions::new().append(true).open(party_toml).unwrap();
    writeln!(
        f,
        "\n[[datasets]]\nname = \"cells\"\npath = {:?}\ncolumns = {{ {} }}",
        csv.display().to_string(),
        columns.join(", ")
    )
    .unwrap();
}

#[test]
fn submit_a_training_job_write_the_model_and_predict_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("consortium");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let hospitals = ["hospital_a", "hospital_b", "hospital_c"];
    let out = veil(&[
        "init",
        root.to_str().unwrap(),
        "--parties",
        &hospitals.join(","),
        "--listen",
        &listen,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let party = |name: &str| root.join("parties").join(name).join("party.toml");
    for h in hospitals {
        add_dataset(&party(h), &repo(&format!("examples/data/breast_cancer/{h}.csv")));
    }
    let coordinator = root.join("coordinator/coordinator.toml");
    let _coordinator = spawn(&["coordinator", "--config", coordinator.to_str().unwrap()]);
    let _parties: Vec<Process> = hospitals
        .iter()
        .map(|h| spawn(&["party", "--config", party(h).to_str().unwrap()]))
        .collect();
    let operator = root.join("consumers/operator/consumer.toml");
    let analyst = root.join("consumers/analyst/consumer.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = veil(&["parties", "--json", "--config", operator.to_str().unwrap()]);
        if String::from_utf8_lossy(&out.stdout).matches("\"connected\":true").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the parties did not connect");
        std::thread::sleep(Duration::from_millis(200));
    }

    let model = dir.path().join("model.json");
    let weights = dir.path().join("model.safetensors");
    let job = repo("examples/jobs/train-cells.toml");
    let out = veil(&[
        "submit",
        job.to_str().unwrap(),
        "--config",
        analyst.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--safetensors",
        weights.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("round 30/30 over 3 parties: held-out loss"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("held-out evaluation of the final model"), "{stdout}");
    let accuracy: f64 = stdout
        .split("accuracy ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    assert!(accuracy > 0.9, "{stdout}");
    assert!(std::fs::metadata(&weights).unwrap().len() > 8 * 9);

    // The exported model scores rows locally.
    let out = veil(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        repo("examples/data/breast_cancer/hospital_c.csv").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored = String::from_utf8_lossy(&out.stdout);
    let rows = std::fs::read_to_string(repo("examples/data/breast_cancer/hospital_c.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(scored.lines().count(), rows, "a header and one line per row: {scored}");
}
