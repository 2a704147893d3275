//! A private join as a job: three airports' flights grouped by the aircraft registry's
//! manufacturer column, on the tail numbers they share, over real gRPC with mutual TLS. The
//! answer equals a merge-then-group of the pooled files, written as a job or in SQL, and no
//! tail number of any side reaches the coordinator.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use veil_proto::v1::{JobState, Outcome};
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec, example_data};

const JOIN: &str = "[datasets.policy]\njoin_keys = [\"tailnum\"]\n";
/// An airport's policy: joins on the tail number, and the registry may learn which of its
/// tail numbers fly from the airport.
const AIRPORT: &str =
    "[datasets.policy]\njoin_keys = [\"tailnum\"]\nreveal_membership_to = [\"registry\"]\n";
const MAKERS: [&str; 6] =
    ["BOEING", "AIRBUS INDUSTRIE", "BOMBARDIER INC", "AIRBUS", "EMBRAER", "MCDONNELL DOUGLAS"];

fn airport(name: &str, file: &str) -> PartySpec {
    PartySpec {
        name: name.into(),
        datasets: vec![DatasetSpec {
            name: "flights".into(),
            path: example_data(file),
            columns: vec![
                ("tailnum".into(), "string".into()),
                ("dep_delay".into(), "float".into()),
            ],
            extra_toml: format!("bounds = {{ dep_delay = [-60.0, 600.0] }}\n{AIRPORT}"),
        }],
        ..PartySpec::default()
    }
}

fn registry() -> PartySpec {
    PartySpec {
        name: "registry".into(),
        datasets: vec![DatasetSpec {
            name: "planes".into(),
            path: example_data("flights/planes.csv"),
            columns: vec![
                ("tailnum".into(), "string".into()),
                ("manufacturer".into(), "string".into()),
            ],
            extra_toml: format!("domains = {{ manufacturer = {MAKERS:?} }}\n{JOIN}"),
        }],
        ..PartySpec::default()
    }
}

fn job(k: u64) -> String {
    let makers: Vec<String> = MAKERS.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "kind = \"join\"\n\
         groups = {{ dataset = \"planes\", key = \"tailnum\", column = \"manufacturer\" }}\n\
         values = {{ dataset = \"flights\", key = \"tailnum\" }}\n\
         [aggregate]\n\
         dataset = \"flights\"\n\
         k_threshold = {k}\n\
         columns = [{{ name = \"dep_delay\", min = -60, max = 600 }}]\n\
         group_by = [{{ column = \"manufacturer\", values = [{}] }}]\n",
        makers.join(", ")
    )
}

fn rows(file: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(example_data(file)).unwrap();
    let headers = reader.headers().unwrap().clone();
    let at: Vec<usize> =
        columns.iter().map(|c| headers.iter().position(|h| h == *c).unwrap()).collect();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            at.iter().map(|&i| r[i].trim().to_string()).collect()
        })
        .collect()
}

/// The pooled files merged on the tail number and grouped by manufacturer (the domain, then
/// `(other)`): per group the flights and the delays' count and clipped sum.
fn merged(airports: &[&str]) -> BTreeMap<String, (u64, u64, f64)> {
    let maker: HashMap<String, String> = rows("flights/planes.csv", &["tailnum", "manufacturer"])
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let mut groups: BTreeMap<String, (u64, u64, f64)> = BTreeMap::new();
    for file in airports {
        for r in rows(file, &["tailnum", "dep_delay"]) {
            let Some(m) = maker.get(&r[0]).filter(|_| !r[0].is_empty()) else { continue };
            let group = if MAKERS.contains(&m.as_str()) { m.clone() } else { "(other)".into() };
            let entry = groups.entry(group).or_default();
            entry.0 += 1;
            if let Ok(d) = r[1].parse::<f64>() {
                entry.1 += 1;
                entry.2 += d.clamp(-60.0, 600.0);
            }
        }
    }
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_airports_grouped_by_the_registrys_manufacturer_equal_the_pooled_merge() {
    let parties = vec![
        airport("jfk", "flights/jfk.csv"),
        airport("ewr", "flights/ewr.csv"),
        airport("lga", "flights/lga.csv"),
        registry(),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, result) = cluster.run_job(&job(5)).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let result = result.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&result.answer_json).unwrap();
    let expected = merged(&["flights/jfk.csv", "flights/ewr.csv", "flights/lga.csv"]);
    let groups = answer["groups"].as_array().unwrap();
    assert_eq!(groups.len(), MAKERS.len() + 2, "the domain, (other) and (null)");
    let mut checked = 0;
    for g in groups {
        let key = g["key"][0].as_str().unwrap();
        let Some(&(flights, delays, sum)) = expected.get(key) else {
            // No joined flight in this group: nothing, or suppressed below k.
            assert!(g["rows"].is_null() || g["rows"] == 0, "{g}");
            continue;
        };
        if flights < 5 {
            assert_eq!(g["suppressed"], true, "{g}");
            continue;
        }
        assert_eq!(g["rows"], flights, "{key}");
        let column = &g["columns"][0];
        assert_eq!(column["count"], delays, "{key}");
        let released = column["sum"].as_f64().unwrap();
        assert!((released - sum).abs() < 1e-3 * delays as f64, "{key}: {released} against {sum}");
        checked += 1;
    }
    assert!(checked >= 5, "{checked} groups compared");
    // The same join written in SQL plans into the same job and answers the same table.
    let sql = "sql = \"SELECT r.manufacturer, COUNT(*) AS flights, AVG(f.dep_delay) FROM flights f \
               JOIN planes r ON f.tailnum = r.tailnum GROUP BY r.manufacturer\"\nk_threshold = 5\n";
    let (status, planned) = cluster.run_job(sql).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let table: serde_json::Value =
        serde_json::from_str(&planned.unwrap().table_json).expect("a SQL join answers a table");
    let headers = serde_json::json!(["manufacturer", "flights", "avg(f.dep_delay)", "suppressed"]);
    assert_eq!(table["headers"], headers);
    for row in table["rows"].as_array().unwrap() {
        let key = row[0].as_str().unwrap();
        let Some(&(flights, delays, sum)) = expected.get(key).filter(|e| e.0 >= 5) else {
            assert!(row[1].is_null() && row[3] == true, "{row}");
            continue;
        };
        assert_eq!(row[3], false, "{row}");
        assert_eq!(row[1], flights, "{key}");
        let mean = row[2].as_f64().unwrap();
        assert!((mean - sum / delays as f64).abs() < 1e-3, "{key}: {mean}");
    }
    let contributed = Outcome::Contributed as i32;
    assert_eq!(result.coverage.len(), 4);
    assert!(result.coverage.iter().all(|p| p.outcome == contributed), "{:?}", result.coverage);
    // No tail number of either side reaches the coordinator, in any byte it relays.
    let inbound = cluster.inbound.lock().unwrap().clone();
    let haystack: Vec<u8> = inbound.concat();
    let planes = rows("flights/planes.csv", &["tailnum", "manufacturer"]);
    // (The registry announces its manufacturer column's domain in its catalog, by its owner's
    // choice; which aircraft has which manufacturer, and which fly where, it does not.)
    let needles = planes.iter().step_by(41).map(|r| r[0].clone());
    for needle in needles {
        let bytes = needle.as_bytes();
        assert!(
            !haystack.windows(bytes.len()).any(|w| w == bytes),
            "{needle} reached the coordinator"
        );
    }
    // What each party receives from the others is what the coordinator relays: every exchange
    // and round message. Not one tail number, nor one manufacturer's name, is in any of them.
    use prost::Message as _;
    let relayed: Vec<u8> = inbound
        .iter()
        .filter_map(|bytes| veil_proto::v1::PartyEnvelope::decode(bytes.as_slice()).ok())
        .filter_map(|e| match e.body {
            Some(veil_proto::v1::party_envelope::Body::Round(p)) => Some(p.message),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(relayed.len() > 512 * 1_000, "the exchanges were relayed: {} bytes", relayed.len());
    // Every tail number (of five characters or more), looked up by length, and the
    // manufacturers the job groups by.
    let mut needles: BTreeMap<usize, std::collections::HashSet<&[u8]>> = BTreeMap::new();
    for needle in planes.iter().map(|r| r[0].as_str()).chain(MAKERS) {
        if needle.len() >= 5 {
            needles.entry(needle.len()).or_default().insert(needle.as_bytes());
        }
    }
    // Only positions holding a needle's first byte are looked at (a needle's first byte is a
    // letter, one byte in a hundred of relayed ciphertext).
    let first: std::collections::HashSet<u8> = needles.values().flatten().map(|n| n[0]).collect();
    for (len, set) in &needles {
        let found = (0..relayed.len().saturating_sub(len - 1))
            .filter(|&i| first.contains(&relayed[i]))
            .map(|i| &relayed[i..i + len])
            .find(|w| set.contains(w));
        assert!(
            found.is_none(),
            "{:?} reached a party through the relay",
            found.map(String::from_utf8_lossy)
        );
    }
    cluster.shutdown().await;
}

/// Each owner decides: the registry names the join key, each airport also the registry as a
/// dataset that may learn which of its tail numbers fly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_whose_policies_do_not_allow_the_join_take_no_part() {
    let mut closed = registry();
    closed.datasets[0].extra_toml = String::new();
    let mut private = airport("lga", "flights/lga.csv");
    private.datasets[0].extra_toml = format!("bounds = {{ dep_delay = [-60.0, 600.0] }}\n{JOIN}");
    let parties =
        vec![airport("jfk", "flights/jfk.csv"), airport("ewr", "flights/ewr.csv"), private, closed];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, _) = cluster.run_job(&job(5)).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    let outcome = |name: &str| {
        let p = status.coverage.iter().find(|p| p.name == name).unwrap();
        (p.outcome, p.rule.clone())
    };
    let refused = Outcome::Refused as i32;
    assert_eq!(outcome("registry"), (refused, "join-key".to_string()));
    assert_eq!(outcome("lga"), (refused, "reveal-membership".to_string()));
    cluster.shutdown().await;
}

/// Two value parties are too few for a round that tolerates one colluding party: the
/// coordinator and one of them could isolate the other's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_over_two_value_parties_is_refused_at_its_round() {
    let parties =
        vec![airport("jfk", "flights/jfk.csv"), airport("ewr", "flights/ewr.csv"), registry()];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, result) = cluster.run_job(&job(5)).await;
    assert_eq!(status.state(), JobState::Failed, "{status:?}");
    assert!(result.is_none());
    assert!(status.detail.contains("refused by rule cohort"), "{}", status.detail);
    assert!(status.detail.contains("2 value parties"), "{}", status.detail);
    cluster.shutdown().await;
}

/// A differentially private join: every party adds its share of the noise once, to its share
/// of the per-group sums; the answer carries its privacy block, every group's flights within
/// a few standard deviations of the pooled merge, and every owner is charged ρ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_join_is_noisy_around_the_pooled_merge_and_charges_every_owner() {
    let parties = vec![
        airport("jfk", "flights/jfk.csv"),
        airport("ewr", "flights/ewr.csv"),
        airport("lga", "flights/lga.csv"),
        registry(),
    ];
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let private = job(5).replace("k_threshold = 5\n", "k_threshold = 5\nprivacy = { rho = 1.0 }\n");
    let (status, result) = cluster.run_job(&private).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    assert_eq!(answer["privacy"]["rho"], 1.0, "{answer}");
    let expected = merged(&["flights/jfk.csv", "flights/ewr.csv", "flights/lga.csv"]);
    let (mut compared, mut noisy) = (0, 0);
    for g in answer["groups"].as_array().unwrap() {
        let key = g["key"][0].as_str().unwrap();
        let (Some(&(flights, _, _)), Some(rows)) = (expected.get(key), g["rows"].as_i64()) else {
            continue;
        };
        let sd = g["columns"][0]["noise"]["count_ci95"].as_f64().unwrap() / 1.96;
        assert!(sd > 0.0 && sd < 50.0, "{key}: sd {sd}");
        assert!(
            (rows - flights as i64).abs() as f64 <= 6.0 * sd,
            "{key}: {rows} against {flights}"
        );
        compared += 1;
        noisy += usize::from(rows != flights as i64);
    }
    assert!(compared >= 5, "{compared} groups compared");
    // The noise is there: with a standard deviation of a few flights, every group exact would
    // happen about once in ten thousand runs.
    assert!(noisy > 0, "no group's count carries noise");
    for (i, dataset) in [(0, "flights"), (1, "flights"), (2, "flights"), (3, "planes")] {
        let spent = cluster.spent(i, dataset, "analyst");
        assert!((spent.total - 1.0).abs() < 1e-9, "party {i} spent {spent:?}");
    }
    cluster.shutdown().await;
}
