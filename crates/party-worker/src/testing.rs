//! What the party worker's unit tests share: a consortium's analyst, a party configuration
//! and its datasets.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use veil_analytics::Job;
use veil_proto::submission::Signer;
use veil_protocol::PartyId;

use crate::config::{DatasetConfig, PartyConfig};

pub(crate) fn analyst() -> Signer {
    Signer::new("analyst", SigningKey::from_bytes(&[3; 32]), Job::plan_check)
}

pub(crate) fn config(datasets: &str) -> PartyConfig {
    #[derive(serde::Deserialize)]
    struct Datasets {
        datasets: Vec<DatasetConfig>,
    }
    let parsed: Datasets = toml::from_str(datasets).unwrap();
    PartyConfig {
        id: PartyId(0),
        name: "a".into(),
        coordinator: "https://127.0.0.1:1".into(),
        roster: Arc::new(veil_protocol::Roster::new()),
        tls: None,
        identity_seed: zeroize::Zeroizing::new([1; 32]),
        min_cohort: 2,
        max_corrupt: 1,
        coordinator_key: None,
        consumer_keys: BTreeMap::from([("analyst".to_string(), analyst().verifying_key())]),
        party_names: BTreeMap::from([(0, "a".to_string()), (1, "b".to_string())]),
        datasets: parsed.datasets,
        state: "unused.db".into(),
        trainers: Default::default(),
    }
}

pub(crate) const CELLS: &str = r#"
[[datasets]]
name = "cells"
path = "cells.csv"
columns = { mean_radius = "float", target = "int", ssn = "float" }
tags = { ssn = "identifier" }
bounds = { mean_radius = [0.0, 50.0] }
[datasets.policy]
purposes = ["research"]
budget_per_consumer = 1.0
"#;
