//! Private set intersection as a job: an airport and the aircraft registry, two organisations
//! with different columns about the same aircraft, learn how many tail numbers they share, over
//! real gRPC with mutual TLS, the coordinator relaying messages it cannot read.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use veil_proto::v1::{JobState, Outcome};
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec, example_data};

const JOIN: &str = "[datasets.policy]\njoin_keys = [\"tailnum\"]\n";

fn side(party: &str, dataset: &str, file: &str, policy: &str) -> PartySpec {
    PartySpec {
        name: party.into(),
        datasets: vec![DatasetSpec {
            name: dataset.into(),
            path: example_data(file),
            columns: vec![("tailnum".into(), "string".into())],
            extra_toml: policy.into(),
        }],
        ..PartySpec::default()
    }
}

const JOB: &str = "kind = \"psi\"\nclient = { dataset = \"jfk_flights\", key = \"tailnum\" }\n\
                   server = { dataset = \"planes\", key = \"tailnum\" }\n";

/// The distinct non-empty values of a CSV file's `tailnum` column.
fn tailnums(file: &str) -> BTreeSet<String> {
    let mut reader = csv::Reader::from_path(example_data(file)).unwrap();
    let column = reader.headers().unwrap().iter().position(|h| h == "tailnum").unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[column].trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_airport_and_the_registry_learn_only_how_many_aircraft_they_share() {
    let parties = vec![
        side("jfk", "jfk_flights", "flights/jfk.csv", JOIN),
        side("registry", "planes", "flights/planes.csv", JOIN),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, result) = cluster.run_job(JOB).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let result = result.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&result.answer_json).unwrap();
    let (airport, registry) = (tailnums("flights/jfk.csv"), tailnums("flights/planes.csv"));
    let shared = airport.intersection(&registry).count() as u64;
    assert!(shared > 1_000 && shared < airport.len() as u64, "{shared}");
    assert_eq!(answer["intersection_size"], shared);
    assert_eq!(answer["client"]["keys"], airport.len() as u64);
    assert_eq!(answer["server"]["keys"], registry.len() as u64);
    let contributed = Outcome::Contributed as i32;
    assert!(result.coverage.iter().all(|p| p.outcome == contributed), "{:?}", result.coverage);
    assert_eq!(result.coverage.len(), 2);
    // No tail number of either side reaches the coordinator, in any byte it relays.
    let inbound = cluster.inbound.lock().unwrap().clone();
    let seen: usize = inbound.iter().map(Vec::len).sum();
    assert!(seen > 32 * (airport.len() + registry.len()), "the tap saw the exchange: {seen}");
    let haystack: Vec<u8> = inbound.concat();
    for t in airport.iter().chain(&registry).step_by(37) {
        let needle = t.as_bytes();
        assert!(
            !haystack.windows(needle.len()).any(|w| w == needle),
            "tail number {t} reached the coordinator"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_whose_policy_names_no_join_key_takes_no_part() {
    let parties = vec![
        side("jfk", "jfk_flights", "flights/jfk.csv", JOIN),
        side("registry", "planes", "flights/planes.csv", ""),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, _) = cluster.run_job(JOB).await;
    assert_eq!(status.state(), JobState::Failed);
    assert!(status.detail.contains("refused by rule join-key"), "{}", status.detail);
    let refused = status.coverage.iter().find(|p| p.name == "registry").unwrap();
    assert_eq!((refused.outcome, refused.rule.as_str()), (Outcome::Refused as i32, "join-key"));
    cluster.shutdown().await;
}

/// A side whose policy asks for more keys on the other side than it brings leaves the exchange
/// at the other side's hello, saying why: a small set would test a few of its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_too_small_for_the_others_policy_gets_no_answer() {
    let strict = "[datasets.policy]\njoin_keys = [\"tailnum\"]\nmin_join_keys = 100000\n";
    let parties = vec![
        side("jfk", "jfk_flights", "flights/jfk.csv", JOIN),
        side("registry", "planes", "flights/planes.csv", strict),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, result) = cluster.run_job(JOB).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    assert!(result.is_none());
    assert!(status.detail.contains("refused by rule join-size"), "{}", status.detail);
    assert!(status.detail.contains("brings 1957 keys"), "{}", status.detail);
    cluster.shutdown().await;
}

/// A private release: the client adds discrete Gaussian noise to the size before it signs it,
/// the answer says so with its interval, and both owners are charged the job's ρ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_size_is_near_the_true_one_and_charges_both_owners() {
    let budget = "[datasets.policy]\njoin_keys = [\"tailnum\"]\nbudget_total = 1.0\n";
    let parties = vec![
        side("jfk", "jfk_flights", "flights/jfk.csv", budget),
        side("registry", "planes", "flights/planes.csv", budget),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let noisy = format!("{JOB}privacy = {{ rho = 0.5 }}\n");
    let (status, result) = cluster.run_job(&noisy).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    let shared = tailnums("flights/jfk.csv").intersection(&tailnums("flights/planes.csv")).count();
    // ρ = 0.5 gives variance 1: the noise is beyond ±8 with probability below 10^-14.
    let released = answer["intersection_size"].as_i64().unwrap();
    assert!((released - shared as i64).abs() <= 8, "{released} against {shared}");
    assert_eq!(answer["privacy"]["rho"], 0.5);
    assert_eq!(answer["privacy"]["noise_variance"], 1);
    for (i, dataset) in [(0, "jfk_flights"), (1, "planes")] {
        let spent = cluster.spent(i, dataset, "analyst");
        assert!((spent.total - 0.5).abs() < 1e-9, "party {i} spent {spent:?}");
    }
    // A second job of ρ = 0.75 no longer fits either owner's budget of 1.0.
    let (status, _) = cluster.run_job(&format!("{JOB}privacy = {{ rho = 0.75 }}\n")).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    assert!(status.detail.contains("refused by rule budget"), "{}", status.detail);
    cluster.shutdown().await;
}

/// The intersection itself, to the client's party only, when the server's owner names that
/// party: jfk keeps its tail numbers that the registry holds, in a file beside its store; the
/// consumer gets the size. A registry whose policy names no one refuses such a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_the_intersection_when_the_servers_owner_names_it() {
    let open = "[datasets.policy]\njoin_keys = [\"tailnum\"]\nreveal_membership_to = [\"jfk\"]\n";
    let parties = vec![
        side("jfk", "jfk_flights", "flights/jfk.csv", JOIN),
        side("registry", "planes", "flights/planes.csv", open),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let job = format!("{JOB}output = \"intersection\"\n");
    let (status, result) = cluster.run_job(&job).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    assert_eq!(answer["intersection"]["kept_by"], "jfk");
    let expected: Vec<String> = tailnums("flights/jfk.csv")
        .intersection(&tailnums("flights/planes.csv"))
        .cloned()
        .collect();
    assert_eq!(answer["intersection_size"], expected.len() as u64);
    let config = veil_testkit::cluster::party_config(&cluster.layout.party_configs[0]);
    let file = veil_party_worker::worker::intersections_dir(&config)
        .join(format!("{}.csv", status.job_id));
    let text = std::fs::read_to_string(&file).unwrap();
    let mut kept: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
    kept.sort();
    assert_eq!(kept, expected, "the file holds exactly the shared tail numbers");
    // The registry's file holds nothing of jfk's: it kept no intersection.
    let registry = veil_testkit::cluster::party_config(&cluster.layout.party_configs[1]);
    assert!(!veil_party_worker::worker::intersections_dir(&registry).exists());
    cluster.shutdown().await;

    // A registry whose policy names no party refuses to give anyone the intersection.
    let parties = vec![
        side("jfk", "jfk_flights", "flights/jfk.csv", JOIN),
        side("registry", "planes", "flights/planes.csv", JOIN),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, _) = cluster.run_job(&job).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    let refused = status.coverage.iter().find(|p| p.name == "registry").unwrap();
    assert_eq!(refused.rule, "reveal-membership", "{refused:?}");
    cluster.shutdown().await;
}
