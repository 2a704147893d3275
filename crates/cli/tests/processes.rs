//! The `veil` binary end to end: `veil init`, a coordinator process, party processes and the
//! consumer commands, over mutual TLS on 127.0.0.1; one party process vanishes mid-round, and
//! a training job's model is exported and used for local scoring.

// Helpers here set up files and processes; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VEIL: &str = env!("CARGO_BIN_EXE_veil");

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/breast_cancer").join(name)
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
    Process(
        Command::new(VEIL)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("veil starts"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn add_dataset(party_toml: &Path, csv: &Path) {
    let mut f = std::fs::OpenOptions::new().append(true).open(party_toml).unwrap();
    writeln!(
        f,
        "\n[[datasets]]\nname = \"cells\"\npath = {:?}\ncolumns = {{ mean_radius = \"float\", target = \"int\" }}\n\
         bounds = {{ mean_radius = [0.0, 50.0] }}\ndomains = {{ target = [\"0\", \"1\"] }}",
        csv.display().to_string()
    )
    .unwrap();
}

/// Waits until `veil parties` lists `n` connected parties (at most 20 s).
fn wait_connected(operator: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = veil(&["parties", "--json", "--config", operator]);
        let connected = String::from_utf8_lossy(&out.stdout).matches("\"connected\":true").count();
        if connected >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "parties did not connect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn init_serve_submit_and_survive_a_vanishing_party() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("consortium");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = veil(&[
        "init",
        root.to_str().unwrap(),
        "--parties",
        "hospital_a,hospital_b,hospital_c,clinic_d",
        "--listen",
        &listen,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A second init into the same directory is refused, and nothing is overwritten.
    let again = veil(&["init", root.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a consortium"));

    let party = |name: &str| root.join("parties").join(name).join("party.toml");
    for h in ["hospital_a", "hospital_b", "hospital_c"] {
        add_dataset(&party(h), &data(&format!("{h}.csv")));
    }
    // A fourth party, so that the round survives one vanishing party: with one colluder
    // tolerated (the default), the survivor quorum of four parties is three.
    add_dataset(&party("clinic_d"), &data("hospital_c.csv"));
    let coordinator_toml = root.join("coordinator/coordinator.toml");
    let _coordinator = spawn(&["coordinator", "--config", coordinator_toml.to_str().unwrap()]);
    let _a = spawn(&["party", "--config", party("hospital_a").to_str().unwrap()]);
    let _b = spawn(&["party", "--config", party("hospital_b").to_str().unwrap()]);
    let _d = spawn(&["party", "--config", party("clinic_d").to_str().unwrap()]);
    let mut c = spawn(&[
        "party",
        "--config",
        party("hospital_c").to_str().unwrap(),
        "--dangerous-exit-after",
        "share-keys",
    ]);
    let operator = root.join("consumers/operator/consumer.toml");
    let analyst = root.join("consumers/analyst/consumer.toml");
    wait_connected(operator.to_str().unwrap(), 4);
    // What the parties serve, as a consumer lists it: the dataset, its parties and columns.
    let out = veil(&["datasets", "--config", analyst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cells  (served by hospital_a, hospital_b, hospital_c, clinic_d)")
            && text.contains("mean_radius")
            && text.contains("[0.0, 50.0]"),
        "{text}"
    );

    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "dataset = \"cells\"\n[[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n",
    )
    .unwrap();
    let out =
        veil(&["submit", job.to_str().unwrap(), "--json", "--config", analyst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // hospital_c's process exited right after sharing its keys: the answer is over a, b, d.
    assert_eq!(answer["contributors"], serde_json::json!([0, 1, 3]));
    assert_eq!(answer["dropped"], serde_json::json!([2]));
    assert_eq!(answer["rows"], 300 + 170 + 99);
    let status = c.0.wait().unwrap();
    assert!(status.success(), "the drilled party exits cleanly");

    // The consumer commands see the job and its result.
    let out = veil(&["jobs", "--json", "--config", analyst.to_str().unwrap()]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = jobs[0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(jobs[0]["state"], "succeeded");
    let out = veil(&["result", &id, "--json", "--config", analyst.to_str().unwrap()]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again, answer);
    // The audit logs export and verify, cross-checked; an edited entry is named.
    let party_log = dir.path().join("a.json");
    let coordinator_log = dir.path().join("c.json");
    let out = veil(&["audit", "export", "--config", party("hospital_a").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&party_log, &out.stdout).unwrap();
    let out = veil(&["audit", "export", "--config", operator.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&coordinator_log, &out.stdout).unwrap();
    let roster = root.join("roster.toml");
    let verify = |log: &Path, against: &Path| {
        veil(&[
            "audit",
            "verify",
            log.to_str().unwrap(),
            "--roster",
            roster.to_str().unwrap(),
            "--against",
            against.to_str().unwrap(),
        ])
    };
    let out = verify(&coordinator_log, &party_log);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("every record of the other log matches"));
    assert!(verify(&party_log, &coordinator_log).status.success());
    // A party log rolled back (cut at its tail) or emptied fails against the coordinator's,
    // whose release receipt recorded the party's head.
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&party_log).unwrap()).unwrap();
    let cut = dir.path().join("a-cut.json");
    for kept in [entries.len() - 1, entries.len() / 2, 0] {
        std::fs::write(&cut, serde_json::to_vec(&entries[..kept]).unwrap()).unwrap();
        let out = verify(&cut, &coordinator_log);
        assert!(!out.status.success(), "a log cut to {kept} entries verified");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no such release") || err.contains("nothing") || err.contains("empty"),
            "{err}"
        );
    }
    let edited = String::from_utf8(std::fs::read(&coordinator_log).unwrap()).unwrap().replacen(
        "\"analyst\"",
        "\"mallory\"",
        1,
    );
    std::fs::write(&coordinator_log, edited).unwrap();
    let out = verify(&coordinator_log, &party_log);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entry "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A consumer of another consortium (its certificate from another CA) is told to check its
    // CA, not that an operation was cancelled.
    let other = dir.path().join("other");
    let out = veil(&["init", other.to_str().unwrap(), "--parties", "x", "--listen", &listen]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // It trusts this consortium's CA, so the handshake gets as far as its own certificate.
    let stranger = other.join("consumers/analyst/consumer.toml");
    let text = std::fs::read_to_string(&stranger).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("ca ") || l.starts_with("ca=") {
                format!("ca = {:?}", root.join("ca.pem").to_str().unwrap())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&stranger, text).unwrap();
    let out = veil(&["jobs", "--config", stranger.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this consortium's CA"), "{err}");

    // A SQL query over the three remaining parties, printed as a table.
    let out = veil(&[
        "query",
        "SELECT target, COUNT(*) AS n, AVG(mean_radius) FROM cells GROUP BY target",
        "--config",
        analyst.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().unwrap().contains("target") && table.contains("(other)"),
        "{table}"
    );
    let out = veil(&[
        "query",
        "SELECT COUNT(*) FROM cells ORDER BY 1",
        "--config",
        analyst.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad specification gets a message naming the file and the problem, and no job.
    std::fs::write(&job, "dataset = \"cells\"\ncolumns = []\n").unwrap();
    let out = veil(&["submit", job.to_str().unwrap(), "--config", analyst.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.toml") && err.contains("at least one column"), "{err}");
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// Every column of the hospital's file, as floats (the target as an integer).
fn add_training_dataset(party_toml: &Path, csv: &Path) {
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

/// `veil submit` on a training job: progress per round, the model written as JSON and
/// safetensors, and `veil predict` scoring with it.
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
        add_training_dataset(&party(h), &repo(&format!("examples/data/breast_cancer/{h}.csv")));
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

/// Generated SQL, from ordinary to adversarial, up to the 64 KiB limit: deep parentheses, long
/// AND and OR chains, chained NOTs, huge IN lists, odd Unicode, truncations and token soup.
fn generated_queries() -> Vec<String> {
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let limit = 64 * 1024;
    let base = "SELECT COUNT(*), AVG(mean_radius) FROM cells WHERE ";
    let fill = |unit: &str, sep: &str| {
        let room = limit - base.len() - 16;
        let n = room / (unit.len() + sep.len());
        vec![unit; n.max(1)].join(sep)
    };
    let mut q = vec![
        "SELECT COUNT(*) FROM cells".to_string(),
        format!("{base}{}", fill("mean_radius = 1", " OR ")),
        format!("{base}{}", fill("mean_radius > 1", " AND ")),
        format!("{base}{}mean_radius > 1", "NOT ".repeat(60)),
        format!("{base}{}mean_radius > 1{}", "(".repeat(5000), ")".repeat(5000)),
        format!("{base}{}mean_radius > 1", "(".repeat(20_000)),
        format!("{base}mean_radius IN ({})", fill("1.5", ", ")),
        format!("{base}target IN ({})", fill("'é\u{202e}\u{1F600}'", ", ")),
        "SELECT COUNT(*) FROM \u{0441}ells WHERE \u{FEFF}mean_radius > 1".to_string(),
        format!("SELECT COUNT(*) FROM cells WHERE target = '{}'", "\u{10FFFF}".repeat(4000)),
        format!("{base}{}", fill("(mean_radius > 1 AND NOT (target = 0 OR", " ")),
        "x".repeat(limit + 1),
    ];
    let tokens = [
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP BY",
        "(",
        ")",
        "AND",
        "OR",
        "NOT",
        "IN",
        "BETWEEN",
        "cells",
        "mean_radius",
        "target",
        "COUNT(*)",
        "AVG(",
        "=",
        "<",
        ",",
        "'a'",
        "1",
        "-",
        "\u{0}",
        "\u{7f}",
        "--",
        "/*",
        "*/",
        ";",
        "\"",
        "\u{2028}",
    ];
    for i in 0..40 {
        let words = 1 + (next() % if i % 4 == 0 { 6000 } else { 40 }) as usize;
        let text: Vec<&str> =
            (0..words).map(|_| tokens[(next() % tokens.len() as u64) as usize]).collect();
        let mut s = text.join(" ");
        s.truncate(
            s.char_indices().map(|(i, _)| i).take_while(|&i| i <= limit).last().unwrap_or(0),
        );
        q.push(s);
    }
    // Truncations of a valid grouped query at every few bytes.
    let valid = "SELECT target, COUNT(*), AVG(mean_radius) FROM cells WHERE mean_radius BETWEEN 0 AND 30 GROUP BY target";
    q.extend((1..valid.len()).step_by(7).map(|n| valid[..n].to_string()));
    q
}

#[test]
fn the_sql_front_end_survives_generated_queries_in_a_coordinator_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("consortium");
    let listen = format!("127.0.0.1:{}", free_port());
    let out = veil(&["init", root.to_str().unwrap(), "--parties", "p", "--listen", &listen]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let party = root.join("parties/p/party.toml");
    add_dataset(&party, &data("hospital_a.csv"));
    let mut coordinator = spawn(&[
        "coordinator",
        "--config",
        root.join("coordinator/coordinator.toml").to_str().unwrap(),
    ]);
    let _p = spawn(&["party", "--config", party.to_str().unwrap()]);
    wait_connected(root.join("consumers/operator/consumer.toml").to_str().unwrap(), 1);

    let consumer =
        veil_proto::client::ConsumerFile::load(&root.join("consumers/analyst/consumer.toml"))
            .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let queries = generated_queries();
    let mut answered = (0, 0);
    runtime.block_on(async {
        let tls = consumer.tls().unwrap();
        for (i, sql) in queries.iter().enumerate() {
            // A fresh connection each time: a coordinator that died would refuse it.
            let channel = veil_proto::client::connect(&consumer.coordinator, Some(&tls))
                .await
                .unwrap_or_else(|e| panic!("query {i}: the coordinator went away: {e}"));
            let mut jobs = veil_proto::v1::jobs_client::JobsClient::new(channel)
                .max_encoding_message_size(1 << 20);
            let spec = serde_json::json!({ "sql": sql }).to_string();
            match jobs.plan(veil_proto::v1::PlanRequest { spec }).await {
                Ok(_) => answered.0 += 1,
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    assert!(!s.message().is_empty(), "query {i}: a refusal without a reason");
                    answered.1 += 1;
                }
                Err(s) => panic!("query {i} ({} bytes): {s}", sql.len()),
            }
        }
    });
    assert!(coordinator.0.try_wait().unwrap().is_none(), "the coordinator exited");
    assert_eq!(answered.0 + answered.1, queries.len());
    assert!(answered.0 >= 3 && answered.1 >= 20, "accepted {}, refused {}", answered.0, answered.1);
}

/// `veil psi` between two party processes: an airport's flights and the aircraft registry
/// count the tail numbers they share.
#[test]
fn veil_psi_counts_the_keys_two_parties_share() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("consortium");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["init", root.to_str().unwrap(), "--parties", "jfk,registry", "--listen", &listen];
    let out = veil(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let party = |name: &str| root.join("parties").join(name).join("party.toml");
    for (name, dataset, file) in
        [("jfk", "jfk_flights", "flights/jfk.csv"), ("registry", "planes", "flights/planes.csv")]
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(party(name)).unwrap();
        writeln!(
            f,
            "\n[[datasets]]\nname = \"{dataset}\"\npath = {:?}\ncolumns = {{ tailnum = \"string\" }}\n\
             [datasets.policy]\njoin_keys = [\"tailnum\"]",
            repo(&format!("examples/data/{file}")).display().to_string()
        )
        .unwrap();
    }
    let coordinator_toml = root.join("coordinator/coordinator.toml");
    let _coordinator = spawn(&["coordinator", "--config", coordinator_toml.to_str().unwrap()]);
    let _jfk = spawn(&["party", "--config", party("jfk").to_str().unwrap()]);
    let _registry = spawn(&["party", "--config", party("registry").to_str().unwrap()]);
    let operator = root.join("consumers/operator/consumer.toml");
    let analyst = root.join("consumers/analyst/consumer.toml");
    wait_connected(operator.to_str().unwrap(), 2);
    let analyst = analyst.to_str().unwrap();
    let out = veil(&["psi", "jfk_flights.tailnum", "planes.tailnum", "--config", analyst]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("keys in common between jfk_flights.tailnum"), "{text}");
    let out =
        veil(&["psi", "jfk_flights.tailnum", "planes.tailnum", "--json", "--config", analyst]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["intersection_size"].as_u64().unwrap() > 1_000, "{answer}");
    let bad = veil(&["psi", "jfk_flights", "planes.tailnum", "--config", analyst]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("<dataset>.<key column>"));
}

/// The README's second example with real processes: three airports and the registry, and
/// `veil query` with a JOIN grouped by the registry's manufacturer.
#[test]
fn veil_query_joins_three_airports_flights_with_the_registrys_manufacturers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("consortium");
    let listen = format!("127.0.0.1:{}", free_port());
    let parties = "ewr,jfk,lga,registry";
    let out = veil(&["init", root.to_str().unwrap(), "--parties", parties, "--listen", &listen]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let party = |name: &str| root.join("parties").join(name).join("party.toml");
    for airport in ["ewr", "jfk", "lga"] {
        let mut f = std::fs::OpenOptions::new().append(true).open(party(airport)).unwrap();
        writeln!(
            f,
            "\n[[datasets]]\nname = \"flights\"\npath = {:?}\n\
             columns = {{ tailnum = \"string\", dep_delay = \"float\" }}\n\
             bounds = {{ dep_delay = [-60.0, 600.0] }}\n\
             [datasets.policy]\njoin_keys = [\"tailnum\"]\nreveal_membership_to = [\"registry\"]",
            repo(&format!("examples/data/flights/{airport}.csv")).display().to_string()
        )
        .unwrap();
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(party("registry")).unwrap();
    writeln!(
        f,
        "\n[[datasets]]\nname = \"planes\"\npath = {:?}\n\
         columns = {{ tailnum = \"string\", manufacturer = \"string\" }}\n\
         domains = {{ manufacturer = [\"BOEING\", \"AIRBUS\", \"AIRBUS INDUSTRIE\", \"EMBRAER\", \"BOMBARDIER INC\"] }}\n\
         [datasets.policy]\njoin_keys = [\"tailnum\"]",
        repo("examples/data/flights/planes.csv").display().to_string()
    )
    .unwrap();
    drop(f);
    let coordinator_toml = root.join("coordinator/coordinator.toml");
    let _coordinator = spawn(&["coordinator", "--config", coordinator_toml.to_str().unwrap()]);
    let _parties: Vec<_> = ["ewr", "jfk", "lga", "registry"]
        .iter()
        .map(|p| spawn(&["party", "--config", party(p).to_str().unwrap()]))
        .collect();
    let operator = root.join("consumers/operator/consumer.toml");
    let analyst = root.join("consumers/analyst/consumer.toml");
    wait_connected(operator.to_str().unwrap(), 4);
    let sql = "SELECT r.manufacturer, COUNT(*) AS flights, AVG(f.dep_delay) FROM flights f \
               JOIN planes r ON f.tailnum = r.tailnum GROUP BY r.manufacturer";
    let out = veil(&["query", sql, "--k-threshold", "10", "--config", analyst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for maker in ["BOEING", "AIRBUS INDUSTRIE", "EMBRAER", "(other)"] {
        assert!(text.contains(maker), "{maker} missing from:\n{text}");
    }
    assert!(text.contains("flights"), "{text}");
}
