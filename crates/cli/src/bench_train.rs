//! `veil bench train`: federated rounds of a multilayer perceptron on the digits, four
//! label-skewed parties, in one process: local training (the parties in parallel threads),
//! then the update sum by a whole secure aggregation round in memory, or by a plain sum.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_learning::eval::EvalCounts;
use veil_learning::model::{Model, ModelSpec};
use veil_learning::strategy::{Server, Strategy, UpdateEncoding};
use veil_learning::train::{Examples, LocalSettings, Optimizer, Schedule, train_local};
use veil_protocol::{PartyId, RoundConfig};
use veil_testkit::{Consortium, Simulation, session};

fn load(path: &Path) -> Result<(Examples, Examples)> {
    let mut reader = csv::Reader::from_path(path).with_context(|| path.display().to_string())?;
    let label = reader
        .headers()?
        .iter()
        .position(|h| h == "target")
        .context("the digits files have a target column")?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record?;
        for (i, v) in record.iter().enumerate() {
            let v: f64 = v.parse().with_context(|| format!("{}: {v:?}", path.display()))?;
            if i == label { y.push(v) } else { x.push(v / 16.0) }
        }
    }
    let rows = y.len();
    let all = Examples {
        x: Array2::from_shape_vec((rows, x.len() / rows.max(1)), x)?,
        y: Array1::from(y),
    };
    let (test, train): (Vec<usize>, Vec<usize>) = (0..rows).partition(|i| i % 5 == 0);
    Ok((all.select(&train), all.select(&test)))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn train(rounds: u32) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/digits");
    let (train, test): (Vec<Examples>, Vec<Examples>) = (0..4)
        .map(|i| load(&dir.join(format!("party_{i}.csv"))))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let settings = LocalSettings {
        epochs: 5,
        batch_size: 32,
        learning_rate: 0.01,
        schedule: Schedule::Constant,
        optimizer: Optimizer::Adam { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
        l2: 1e-4,
    };
    let spec = ModelSpec::Mlp { hidden: vec![32], classes: 10 };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let start = Model::new(spec, 64, &mut rng)?;
    let parameters = start.parameters.len();
    let consortium = Consortium::new(4, 1);
    let encoding = UpdateEncoding::new(10.0, 100_000, 24, 4)?;
    println!(
        "MLP 64-32-10 ({parameters} parameters) on the digits, 4 label-skewed parties, 5 local epochs of Adam per round, {rounds} rounds, in one process"
    );
    let mut models = Vec::new();
    for secure in [true, false] {
        // The same rounding draws for both kinds, so the two models must come out identical.
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut server = Server::new(start.clone(), Strategy::FedAvg)?;
        let (mut local, mut sum_time, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let t0 = Instant::now();
            let updates = std::thread::scope(|s| {
                let handles: Vec<_> = train
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let (model, settings) = (&server.model, &settings);
                        s.spawn(move || {
                            train_local(model, t, settings, 0.01, 0.0, [round as u8 ^ i as u8; 32])
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training thread panicked"))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            let vectors: Vec<Vec<u64>> =
                updates.iter().map(|u| encoding.encode(u, &mut rng)).collect::<Result<_, _>>()?;
            let t1 = Instant::now();
            let (sum, contributors) = if secure {
                let inputs: BTreeMap<PartyId, Vec<u64>> =
                    consortium.parties().into_iter().zip(vectors).collect();
                let config = RoundConfig::all_pairs(
                    session(u64::from(round)),
                    consortium.parties(),
                    UpdateEncoding::len(parameters),
                );
                let aggregate = Simulation::new(&consortium, config, u64::from(round))?
                    .inputs(inputs)
                    .run()
                    .result?;
                (aggregate.sum, aggregate.contributors.len())
            } else {
                let mut sum = vec![0u64; UpdateEncoding::len(parameters)];
                for v in &vectors {
                    sum.iter_mut().zip(v).for_each(|(s, x)| *s = s.wrapping_add(*x));
                }
                (sum, vectors.len())
            };
            let (mean, _) = encoding.decode(&sum, contributors)?;
            server.apply(&mean)?;
            let t2 = Instant::now();
            local.push(t1 - t0);
            sum_time.push(t2 - t1);
            whole.push(t2 - t0);
        }
        let mut counts = EvalCounts::default();
        for t in &test {
            counts.add(&EvalCounts::of(&server.model, t.x.view(), t.y.view())?);
        }
        let accuracy = counts.metrics(true).accuracy.unwrap_or(f64::NAN);
        println!(
            "  {:<6} round: median {:>7.2} ms (local training {:>7.2} ms, aggregation {:>6.2} ms); test accuracy {:.3}",
            if secure { "secure" } else { "plain" },
            median(&mut whole).as_secs_f64() * 1e3,
            median(&mut local).as_secs_f64() * 1e3,
            median(&mut sum_time).as_secs_f64() * 1e3,
            accuracy,
        );
        models.push(server.model.parameters);
    }
    anyhow::ensure!(models[0] == models[1], "the secure and plain sums trained different models");
    println!("  the secure and the plain rounds trained the identical model");
    Ok(())
}
