//! Federated training on real data with every sum taken by the secure aggregation protocol:
//! the standardisation statistics, each round's weighted update and the evaluation counts.

// Helpers here read the repository's own data files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_learning::eval::EvalCounts;
use veil_learning::model::{Model, ModelSpec};
use veil_learning::strategy::{Server, Strategy, UpdateEncoding};
use veil_learning::train::{
    Examples, LocalSettings, Optimizer, Schedule, Standardizer, train_local,
};
use veil_protocol::fixed_point::FixedPoint;
use veil_protocol::{PartyId, RoundConfig, Stage};
use veil_testkit::{Consortium, Fault, Simulation, session};

/// A party's rows: every column but `target` as a feature, `target` as the label; every fifth
/// row is held out for testing.
fn party(file: &str) -> (Examples, Examples) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data").join(file);
    let mut reader = csv::Reader::from_path(path).unwrap();
    let label = reader.headers().unwrap().iter().position(|h| h == "target").unwrap();
    let (mut rows, mut labels): (Vec<Vec<f64>>, Vec<f64>) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.unwrap();
        let values: Vec<f64> = record.iter().map(|v| v.parse().unwrap()).collect();
        labels.push(values[label]);
        rows.push(
            values.iter().enumerate().filter(|(i, _)| *i != label).map(|(_, v)| *v).collect(),
        );
    }
    let features = rows.first().map(Vec::len).unwrap();
    let x: Vec<f64> = rows.into_iter().flatten().collect();
    let all = Examples {
        x: Array2::from_shape_vec((labels.len(), features), x).unwrap(),
        y: Array1::from(labels),
    };
    let (test, train): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|i| i % 5 == 0);
    (all.select(&train), all.select(&test))
}

/// The sum of the parties' vectors, computed by a secure aggregation round, decoded.
fn secure_sum(c: &Consortium, round: u64, fixed: &FixedPoint, vectors: &[Vec<f64>]) -> Vec<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(round);
    let inputs: BTreeMap<PartyId, Vec<u64>> =
        c.parties().into_iter().zip(vectors).map(|(p, v)| (p, fixed.encode(v, &mut rng))).collect();
    let len = vectors[0].len();
    let config = RoundConfig::all_pairs(session(round), c.parties(), len);
    let aggregate = Simulation::new(c, config, round).unwrap().inputs(inputs).run().result.unwrap();
    fixed.decode_sum(&aggregate.sum, aggregate.contributors.len()).unwrap()
}

fn accuracy(model: &Model, test: &[Examples]) -> f64 {
    let mut counts = EvalCounts::default();
    for t in test {
        counts.add(&EvalCounts::of(model, t.x.view(), t.y.view()).unwrap());
    }
    counts.metrics(true).accuracy.unwrap()
}

/// The three hospitals' training and test rows, standardised with statistics from one secure
/// sum of moments: no hospital's own means leave it.
fn hospitals(c: &Consortium, round: u64) -> (Vec<Examples>, Vec<Examples>) {
    let names = ["hospital_a", "hospital_b", "hospital_c"];
    let (mut train, mut test): (Vec<Examples>, Vec<Examples>) =
        names.iter().map(|n| party(&format!("breast_cancer/{n}.csv"))).unzip();
    let moments = FixedPoint::new(-1e10, 1e10, 16, 3).unwrap();
    let local: Vec<Vec<f64>> =
        train.iter().map(|t| Standardizer::local_moments(t.x.view())).collect();
    let standardizer = Standardizer::from_moments(&secure_sum(c, round, &moments, &local)).unwrap();
    for part in train.iter_mut().chain(test.iter_mut()) {
        standardizer.apply(&mut part.x).unwrap();
    }
    (train, test)
}

/// Federated logistic regression over three hospitals reaches the test accuracy of the same
/// model trained on the pooled rows, with a hospital vanishing in one round and the
/// evaluation itself a secure sum.
#[test]
fn federated_logistic_regression_matches_pooled_training() {
    let c = Consortium::new(3, 11);
    let (train, test) = hospitals(&c, 1);
    let features = train[0].x.ncols();

    let settings = LocalSettings {
        epochs: 1,
        batch_size: 16,
        learning_rate: 0.1,
        schedule: Schedule::Cosine { floor: 0.02 },
        optimizer: Optimizer::Sgd { momentum: 0.0 },
        l2: 5e-2,
    };
    let spec = ModelSpec::LogisticRegression;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let start = Model::new(spec.clone(), features, &mut rng).unwrap();
    let mut server = Server::new(start.clone(), Strategy::FedAvg).unwrap();
    let encoding = UpdateEncoding::new(10.0, 100_000, 24, 3).unwrap();
    let rounds = 80u32;
    let mut dropped_once = false;
    for round in 0..rounds {
        let updates: Vec<_> = train
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let seed = [round as u8 ^ (i as u8) << 6; 32];
                train_local(&server.model, t, &settings, settings.rate_at(round, rounds), 0.0, seed)
                    .unwrap()
            })
            .collect();
        // Each party's vector is rows·Δ and rows, in the ring; one hospital vanishes in round 7.
        let vectors: Vec<Vec<u64>> =
            updates.iter().map(|u| encoding.encode(u, &mut rng).unwrap()).collect();
        let inputs: BTreeMap<PartyId, Vec<u64>> = c.parties().into_iter().zip(vectors).collect();
        // Three hospitals that rule out collusion with the coordinator (c = 0) tolerate one
        // dropout; tolerating one colluder, a round of three needs all three.
        let config = RoundConfig::all_pairs(session(100 + u64::from(round)), c.parties(), {
            UpdateEncoding::len(server.model.parameters.len())
        })
        .tolerating(0);
        let mut sim = Simulation::new(&c, config, u64::from(round)).unwrap().inputs(inputs);
        if round == 7 {
            sim = sim.fault(Fault::Dropout { party: c.parties()[1], before: Stage::MaskedInput });
        }
        let aggregate = sim.run().result.unwrap();
        if aggregate.contributors.len() < 3 {
            dropped_once = true;
        }
        let (mean, rows) = encoding.decode(&aggregate.sum, aggregate.contributors.len()).unwrap();
        let expected_rows: usize = aggregate
            .contributors
            .iter()
            .map(|p| train[c.parties().iter().position(|q| q == p).unwrap()].len())
            .sum();
        assert_eq!(rows as usize, expected_rows, "round {round}: the weights are in the sum");
        server.apply(&mean).unwrap();
    }
    assert!(dropped_once, "the round with a vanished hospital still finished");

    // Evaluation counts through a secure sum equal the pooled evaluation.
    let eval = FixedPoint::new(-1e6, 1e6, 24, 3).unwrap();
    let local: Vec<Vec<f64>> = test
        .iter()
        .map(|t| EvalCounts::of(&server.model, t.x.view(), t.y.view()).unwrap().to_vector())
        .collect();
    let sum = secure_sum(&c, 2, &eval, &local);
    let secure = EvalCounts::from_vector(&sum, true).unwrap().metrics(true);
    let federated = accuracy(&server.model, &test);
    assert!((secure.accuracy.unwrap() - federated).abs() < 1e-9);
    assert!(secure.auc.unwrap() > 0.95, "{secure:?}");

    // The same model, settings and number of passes over the pooled rows.
    let pooled = Examples {
        x: ndarray::concatenate(Axis(0), &train.iter().map(|t| t.x.view()).collect::<Vec<_>>())
            .unwrap(),
        y: ndarray::concatenate(Axis(0), &train.iter().map(|t| t.y.view()).collect::<Vec<_>>())
            .unwrap(),
    };
    let mut central = start;
    for round in 0..rounds {
        let u = train_local(
            &central,
            &pooled,
            &settings,
            settings.rate_at(round, rounds),
            0.0,
            [round as u8; 32],
        )
        .unwrap();
        central.parameters.iter_mut().zip(&u.delta).for_each(|(w, d)| *w += d);
    }
    let centralised = accuracy(&central, &test);
    // Both reach nearly the same minimiser of the regularised loss.
    let gap: f64 = central
        .parameters
        .iter()
        .zip(&server.model.parameters)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = central.parameters.iter().map(|a| a * a).sum::<f64>().sqrt();
    assert!(gap < 0.1 * norm, "federated model {gap} from the pooled one of norm {norm}");
    assert!(federated > 0.9, "federated accuracy {federated}");
    assert!(
        (federated - centralised).abs() <= 0.01 + 1e-9,
        "federated {federated} vs pooled {centralised}"
    );
}

/// Federated rounds with plain sums of the encoded updates (the secure sum's result, as the
/// test above shows), returning the test accuracy.
fn federate(
    spec: ModelSpec,
    strategy: Strategy,
    settings: &LocalSettings,
    rounds: u32,
    train: &[Examples],
    test: &[Examples],
    seed: u8,
) -> f64 {
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(seed));
    let start = Model::new(spec, train[0].x.ncols(), &mut rng).unwrap();
    let mu = strategy.proximal_mu();
    let mut server = Server::new(start, strategy).unwrap();
    let encoding = UpdateEncoding::new(10.0, 100_000, 24, train.len()).unwrap();
    for round in 0..rounds {
        let len = UpdateEncoding::len(server.model.parameters.len());
        let mut sum = vec![0u64; len];
        for (i, t) in train.iter().enumerate() {
            let local_seed = [(round as u8).wrapping_mul(7) ^ (i as u8) ^ seed << 4; 32];
            let rate = settings.rate_at(round, rounds);
            let u = train_local(&server.model, t, settings, rate, mu, local_seed).unwrap();
            for (s, v) in sum.iter_mut().zip(encoding.encode(&u, &mut rng).unwrap()) {
                *s = s.wrapping_add(v);
            }
        }
        let (mean, _) = encoding.decode(&sum, train.len()).unwrap();
        server.apply(&mean).unwrap();
    }
    accuracy(&server.model, test)
}

/// Softmax regression and a multilayer perceptron learn the digits across four label-skewed
/// parties, and FedProx's proximal term does at least as well as FedAvg on that skew, in mean
/// test accuracy over three seeds (with μ = 0.01 at five local epochs; a larger μ = 0.1 held
/// the softmax model back on one seed).
#[test]
fn digits_across_label_skewed_parties() {
    let (mut train, mut test): (Vec<Examples>, Vec<Examples>) =
        (0..4).map(|i| party(&format!("digits/party_{i}.csv"))).unzip();
    // Pixel counts are 0 to 16.
    for part in train.iter_mut().chain(test.iter_mut()) {
        part.x /= 16.0;
    }
    let settings = LocalSettings {
        epochs: 5,
        batch_size: 32,
        learning_rate: 0.01,
        schedule: Schedule::Constant,
        optimizer: Optimizer::Adam { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
        l2: 1e-4,
    };
    let rounds = 25;
    let softmax = ModelSpec::SoftmaxRegression { classes: 10 };
    let mlp = ModelSpec::Mlp { hidden: vec![32], classes: 10 };
    // Mean test accuracy over three seeds (initial weights, batch order, rounding).
    let run = |spec: &ModelSpec, strategy: Strategy| {
        (1..=3u8)
            .map(|seed| {
                federate(spec.clone(), strategy.clone(), &settings, rounds, &train, &test, seed)
            })
            .sum::<f64>()
            / 3.0
    };
    let prox = Strategy::FedProx { mu: 0.01 };
    let (soft_avg, soft_prox) = (run(&softmax, Strategy::FedAvg), run(&softmax, prox.clone()));
    let (mlp_avg, mlp_prox) = (run(&mlp, Strategy::FedAvg), run(&mlp, prox));
    eprintln!(
        "digits mean test accuracy over three seeds: softmax FedAvg {soft_avg:.3}, FedProx \
         {soft_prox:.3}; MLP FedAvg {mlp_avg:.3}, FedProx {mlp_prox:.3}"
    );
    for (name, acc) in [("softmax", soft_avg), ("mlp", mlp_avg)] {
        assert!(acc > 0.85, "{name} learns the digits: {acc}");
    }
    assert!(soft_prox >= soft_avg - 1e-9 && mlp_prox >= mlp_avg - 1e-9);
}

/// DP-FedAvg through the secure sum: every party clips and noises its update before masking,
/// the accountant stops training at the job's budget with a finite ε, and the noised model
/// still learns.
#[test]
fn dp_fedavg_stops_at_its_budget_and_still_learns() {
    use veil_learning::privacy::{Accountant, DpFedAvg};
    let c = Consortium::new(3, 12);
    let (train, test) = hospitals(&c, 3);
    let settings = LocalSettings {
        epochs: 1,
        batch_size: 16,
        learning_rate: 0.1,
        schedule: Schedule::Constant,
        optimizer: Optimizer::Sgd { momentum: 0.0 },
        l2: 1e-2,
    };
    let dp = DpFedAvg { clip: 1.0, noise_multiplier: 1.0, min_parties: 3, fractional_bits: 16 };
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let model = Model::new(ModelSpec::LogisticRegression, train[0].x.ncols(), &mut rng).unwrap();
    let parameters = model.parameters.len();
    let mut accountant = Accountant::new(dp.rho_per_round(parameters).unwrap(), 6.0, 1e-6).unwrap();
    let planned = accountant.remaining_rounds();
    assert!(planned >= 5, "the budget pays for {planned} rounds");
    let mut server = Server::new(model, Strategy::FedAvg).unwrap();
    let mut round = 0u64;
    let stopped = loop {
        if let Err(e) = accountant.charge() {
            break e;
        }
        let inputs: BTreeMap<PartyId, Vec<u64>> = c
            .parties()
            .into_iter()
            .zip(&train)
            .enumerate()
            .map(|(i, (p, t))| {
                let seed = [round as u8 ^ (i as u8) << 5; 32];
                let u = train_local(&server.model, t, &settings, 0.1, 0.0, seed).unwrap();
                (p, dp.encode(&u.delta, 3, &mut rng).unwrap().0)
            })
            .collect();
        let config = RoundConfig::all_pairs(session(300 + round), c.parties(), parameters);
        let aggregate =
            Simulation::new(&c, config, 300 + round).unwrap().inputs(inputs).run().result.unwrap();
        let mean = dp.decode(&aggregate.sum, aggregate.contributors.len(), 3).unwrap();
        server.apply(&mean).unwrap();
        round += 1;
    };
    assert_eq!(round, u64::from(planned), "training ran exactly the rounds the budget pays for");
    assert!(stopped.to_string().contains("budget"), "{stopped}");
    assert!(accountant.spent <= 6.0 && accountant.epsilon().is_finite());
    let acc = accuracy(&server.model, &test);
    eprintln!(
        "DP-FedAvg: {round} rounds, ε = {:.1} at δ = 1e-6, test accuracy {acc:.3}",
        accountant.epsilon()
    );
    // Well above the 63 % of always answering "benign".
    assert!(acc > 0.8, "DP-FedAvg test accuracy {acc}");
}
