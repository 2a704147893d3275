//! Record-level DP-SGD against a coordinator that crafts the global model.
//!
//! What the coordinator sees includes whether a party contributed to a step or left it. A
//! model with one huge finite weight overflows for exactly the rows past a threshold the
//! coordinator picks (w = 1.8e308 / threshold); if such a row failed the step, the step would
//! fail with probability q when the row is present and never when it is absent, which no ε
//! bounds. Whatever the model, a party's DP-SGD step must succeed, a row whose gradient is not
//! finite counting as clipped to nothing.
#![allow(clippy::unwrap_used)]

use ndarray::{Array1, Array2};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use veil_learning::job::{LocalData, Step, StepInput, TrainSpec, party_vector};

fn spec() -> TrainSpec {
    let spec: TrainSpec = serde_json::from_value(serde_json::json!({
        "kind": "train",
        "dataset": "d",
        "features": ["a", "b"],
        "label": "y",
        "model": { "kind": "logistic_regression" },
        "rounds": 10,
        "standardize": false,
        "evaluation": { "holdout": 0.0 },
        "min_parties": 2,
        "local": { "epochs": 1, "batch_size": 1, "learning_rate": 1.0, "optimizer": { "kind": "sgd" } },
        "privacy": {
            "unit": "record", "clip": 1.0, "noise_multiplier": 1.5,
            "sample_rate": 0.5, "epsilon": 4.0, "delta": 1e-5
        }
    }))
    .unwrap();
    spec.validate().unwrap();
    spec
}

/// 60 ordinary rows with features in [-1, 1], and optionally one outlier with a = 500.
fn rows(spec: &TrainSpec, with_outlier: bool) -> LocalData {
    rows_with(spec, 1.0, with_outlier.then_some([500.0, 0.0]))
}

/// 60 ordinary rows with features in [-scale, scale], and optionally one more row.
fn rows_with(spec: &TrainSpec, scale: f64, extra: Option<[f64; 2]>) -> LocalData {
    let n = 60;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let a = scale * ((i as f64) * 0.37).sin();
        let b = scale * ((i as f64) * 0.11).cos();
        x.extend([a, b]);
        y.push(if a > 0.0 { 1.0 } else { 0.0 });
    }
    if let Some(row) = extra {
        x.extend(row);
        y.push(1.0);
    }
    let m = y.len();
    LocalData::new(spec, Array2::from_shape_vec((m, 2), x).unwrap(), Array1::from(y)).unwrap()
}

/// Whether the party's DP-SGD step fails, over `trials` steps of its own randomness.
fn failures(spec: &TrainSpec, data: &LocalData, parameters: &[f64], trials: u64) -> usize {
    let input = StepInput { step: Step::Train { round: 0 }, parameters, standardizer: None };
    (0..trials)
        .filter(|t| {
            let mut rng = ChaCha20Rng::seed_from_u64(1000 + t);
            party_vector(spec, &input, data, 0, &mut rng).is_err()
        })
        .count()
}

#[test]
fn a_crafted_finite_model_cannot_make_a_dp_sgd_step_fail_on_one_row() {
    let spec = spec();
    // Weights then bias, all finite: rows with a > 1.8e308 / 1e306 = 180 overflow the loss.
    let crafted = [1e306, 0.0, 0.0];
    let without = failures(&spec, &rows(&spec, false), &crafted, 40);
    let with = failures(&spec, &rows(&spec, true), &crafted, 40);
    eprintln!("steps failed: {without}/40 without the outlier, {with}/40 with it");
    assert_eq!(without, 0, "the crafted model fails the step on ordinary rows");
    assert_eq!(
        with, 0,
        "whether the party leaves a DP-SGD step tells the coordinator whether one row (a > 180) was sampled: {with}/40 steps failed with it, 0/40 without"
    );
}

/// The same through the gradient: inf − inf in the scores is NaN for exactly the rows with both
/// features past the threshold (a, b > 1.8), and a NaN row's norm is not `> clip`, so its NaN
/// gradient is summed unscaled and the step fails.
#[test]
fn a_nan_row_gradient_does_not_fail_the_step() {
    let spec = spec();
    let crafted = [1e308, -1e308, 0.0];
    // Ordinary rows within ±0.005: every score within ±1e306, every loss finite.
    let without = failures(&spec, &rows_with(&spec, 0.005, None), &crafted, 40);
    let with = failures(&spec, &rows_with(&spec, 0.005, Some([3.0, 3.0])), &crafted, 40);
    eprintln!("steps failed: {without}/40 without the row, {with}/40 with it");
    assert_eq!(without, 0, "the crafted model fails the step on ordinary rows");
    assert_eq!(with, 0, "{with}/40 DP-SGD steps failed on one row's NaN gradient, 0/40 without it");
}

/// No sample can be too large for a step: a party holds at most `MAX_ROWS` rows, and a DP-SGD
/// sum of that many clipped rows encodes (were the limit lower, one more row could make the
/// party leave a step).
#[test]
fn no_sample_is_too_large_for_a_step() {
    let spec = spec();
    let Some(veil_learning::job::Dp::Sgd(dp)) = spec.dp() else { panic!("a record-level job") };
    let all = veil_learning::model::ClippedSum {
        gradient: vec![dp.clip / 3f64.sqrt(); 3],
        loss: 0.0,
        rows: veil_learning::job::MAX_ROWS,
        clipped: 0,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    dp.encode(&all, veil_learning::job::MAX_PARTIES, &mut rng).unwrap();
}
