//! Trainer programs through the services: three hospitals run a program their owners approved
//! by its hash, confined, and veil sums its bounded updates securely. A program no owner
//! approved is refused by rule; a program that reaches for the dataset's file, writes outside
//! its scratch directory or opens a connection fails, and the job says so.
//!
//! A failing program's reason for the job carries nothing the program chose (not what it
//! printed instead of an update, not its exit status), only one fixed sentence.
//!
//! The programs here are POSIX shell scripts (`/bin/sh` is the parties' interpreter), so the
//! test needs nothing beyond the system; the NumPy example trainer runs in CI with a Python
//! that has NumPy (`trainer_python.rs`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sha2::Digest;
use veil_proto::v1::JobState;
use veil_testkit::cluster::{Cluster, ClusterSpec, example_data, hospitals};

/// The breast-cancer columns, all numeric.
fn columns() -> Vec<(String, String)> {
    let mut reader = csv::Reader::from_path(example_data("breast_cancer/hospital_a.csv")).unwrap();
    reader
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.to_string(), if h == "target" { "int" } else { "float" }.to_string()))
        .collect()
}

fn features() -> Vec<String> {
    columns().into_iter().map(|(c, _)| c).filter(|c| c != "target").collect()
}

/// A program that reads its input, does `before`, and returns the update 0.01 in each of the
/// 31 parameters of the logistic model.
fn program(before: &str) -> String {
    let values = vec!["0.01"; 31].join(",");
    format!("#!/bin/sh\nset -e\ncat > input.json\n{before}\nprintf '{{\"update\": [{values}]}}'\n")
}

fn sha256(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A job running `source` for `rounds` rounds.
fn job(source: &str, rounds: u32) -> String {
    let features: Vec<String> = features().iter().map(|f| format!("{f:?}")).collect();
    let job = serde_json::json!({
        "kind": "train",
        "dataset": "cells",
        "features": features.iter().map(|f| f.trim_matches('"')).collect::<Vec<_>>(),
        "label": "target",
        "rounds": rounds,
        "min_parties": 3,
        "standardize": false,
        "model": { "kind": "program", "parameters": 31 },
        "trainer": { "source": source, "clip": 1.0 },
        "evaluation": { "holdout": 0.0 },
        "local": { "epochs": 1, "batch_size": 16, "learning_rate": 0.1, "optimizer": { "kind": "sgd" } },
    });
    job.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_programs_train_confined_and_others_are_refused_or_fail() {
    let outside = tempfile::tempdir().unwrap();
    let leak = outside.path().join("leak.txt");
    let dataset = example_data("breast_cancer/hospital_a.csv");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let honest = program("test -s input.json\ntest -s rows.csv");
    let reads_the_dataset =
        program(&format!("cat {:?} > /dev/null", dataset.display().to_string()));
    let writes_outside = program(&format!("echo escaped > {:?}", leak.display().to_string()));
    // Only a shell with /dev/tcp can try a connection; bash has it.
    let bash = std::path::Path::new("/bin/bash").exists();
    let connects = format!(
        "#!/bin/bash\nset -e\ncat > input.json\nexec 3<>/dev/tcp/127.0.0.1/{port}\necho escaped >&3\nprintf '{{\"update\": [{}]}}'\n",
        vec!["0.01"; 31].join(",")
    );
    let approved = [&honest, &reads_the_dataset, &writes_outside, &connects];
    let hashes: Vec<String> = approved.iter().map(|p| format!("{:?}", sha256(p))).collect();
    let policy = format!("[datasets.policy]\ntrainers = [{}]\n", hashes.join(", "));
    let interpreter = if bash { "/bin/bash" } else { "/bin/sh" };
    let mut parties = hospitals(&columns(), &policy, None);
    for p in &mut parties {
        p.extra_toml =
            format!("\n[trainers]\ninterpreter = {interpreter:?}\ntimeout_seconds = 20\n");
    }
    let cluster = Cluster::start(ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(30),
        ..ClusterSpec::named(&[])
    })
    .await;

    // Where the system confines programs, an approved one trains: every round's update, bounded
    // and summed, moves each parameter by 0.01.
    let confined = veil_sandbox::support().is_ok();
    let (status, result) = cluster.run_job(&job(&honest, 4)).await;
    if !confined {
        // No sandbox and no owner's leave to run unconfined: refused by rule.
        assert_eq!(status.state(), JobState::Failed, "{status:?}");
        assert!(status.detail.contains("trainer"), "{}", status.detail);
        cluster.shutdown().await;
        return;
    }
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    let parameters: Vec<f64> =
        serde_json::from_value(answer["model"]["parameters"].clone()).unwrap();
    assert_eq!(parameters.len(), 31);
    for p in &parameters {
        assert!((p - 0.04).abs() < 1e-3, "{p}");
    }

    // A program no owner approved.
    let unapproved = program("true");
    let (status, _) = cluster.run_job(&job(&unapproved, 1)).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    assert!(status.detail.contains("rule trainer"), "{}", status.detail);

    // Approved programs that reach outside their sandbox fail, and the job says so.
    let mut attempts =
        vec![("the dataset's file", &reads_the_dataset), ("outside", &writes_outside)];
    if bash {
        attempts.push(("the network", &connects));
    }
    for (what, source) in attempts {
        let (status, _) = cluster.run_job(&job(source, 1)).await;
        assert_eq!(status.state(), JobState::Failed, "{what}: {status:?}");
        assert!(status.detail.contains("trainer program failed"), "{what}: {}", status.detail);
        // The program's own error output (which could hold row values) stays at the party.
        assert!(!status.detail.contains("Permission denied"), "{}", status.detail);
    }
    assert!(!leak.exists(), "a program wrote outside its scratch directory");
    assert!(listener.accept().is_err(), "a program connected to the test's listener");
    cluster.shutdown().await;
}

/// A hospital's rows as the party writes them to `rows.csv` (no standardisation, no holdout):
/// each value as `f64::to_string`, the label last.
fn rows_as_written(hospital: &str) -> Vec<String> {
    let mut reader =
        csv::Reader::from_path(example_data(&format!("breast_cancer/{hospital}.csv"))).unwrap();
    let headers = reader.headers().unwrap().clone();
    let target = headers.iter().position(|h| h == "target").unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let mut values: Vec<String> = (0..r.len())
                .filter(|&i| i != target)
                .map(|i| r[i].parse::<f64>().unwrap().to_string())
                .collect();
            values.push(r[target].parse::<f64>().unwrap().to_string());
            values.join(",")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_program_leaks_nothing_through_its_failure() {
    if veil_sandbox::support().is_err() {
        eprintln!("no sandbox: the parties refuse trainer jobs");
        return;
    }
    // Prints its first two rows as the update's "values": not an update, so the step fails, and the
    // parse error quoting the string becomes the party's reason.
    let quotes_rows = "#!/bin/sh\ncat > input.json\nprintf '{\"update\": [\"%s\"]}' \"$(sed -n '2,3p' rows.csv | tr '\\n' ';')\"\n";
    // Exits with a status computed from its rows (here the row count modulo 256): the status
    // is in the party's reason.
    let exits_with_data =
        "#!/bin/sh\ncat > input.json\nexit $(( ($(wc -l < rows.csv) - 1) % 256 ))\n";
    let hashes = [sha256(quotes_rows), sha256(exits_with_data)];
    let policy = format!("[datasets.policy]\ntrainers = [{:?}, {:?}]\n", hashes[0], hashes[1]);
    let mut parties = hospitals(&columns(), &policy, None);
    for p in &mut parties {
        p.extra_toml = "\n[trainers]\ninterpreter = \"/bin/sh\"\ntimeout_seconds = 20\n".into();
    }
    let cluster = Cluster::start(ClusterSpec {
        parties,
        stage_timeout: Duration::from_secs(5),
        ..ClusterSpec::named(&[])
    })
    .await;

    let hospitals = ["hospital_a", "hospital_b", "hospital_c"];
    let (status, _) = cluster.run_job(&job(quotes_rows, 1)).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    let leaked_rows: Vec<String> = hospitals
        .iter()
        .flat_map(|h| rows_as_written(h).into_iter().take(2))
        .filter(|row| status.detail.contains(row.as_str()))
        .collect();

    let (status2, _) = cluster.run_job(&job(exits_with_data, 1)).await;
    assert_eq!(status2.state(), JobState::Failed, "{status2:?}");
    let leaked_counts: Vec<String> = hospitals
        .iter()
        .map(|h| format!("status {}", rows_as_written(h).len() % 256))
        .filter(|s| status2.detail.contains(s.as_str()))
        .collect();
    cluster.shutdown().await;

    assert!(
        leaked_rows.is_empty(),
        "the consumer's job status carries {} of the hospitals' rows verbatim, e.g. {:?}\n(detail: {})",
        leaked_rows.len(),
        leaked_rows.first(),
        status.detail
    );
    assert!(
        leaked_counts.is_empty(),
        "the consumer's job status carries exit statuses the program computed from its rows: {leaked_counts:?}\n(detail: {})",
        status2.detail
    );
}
