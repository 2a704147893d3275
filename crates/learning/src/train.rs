//! Local training: seeded mini-batch SGD or Adam over a party's own rows.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::{Model, check_labels};
use crate::{Error, Result};

/// The local optimiser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent with optional momentum.
    Sgd {
        /// Momentum coefficient in `[0, 1)`.
        #[serde(default)]
        momentum: f64,
    },
    /// Adam (Kingma and Ba, 2015).
    Adam {
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Added to the root of the second moment.
        #[serde(default = "default_epsilon")]
        epsilon: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-8
}

/// How the learning rate changes over the rounds of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The same rate every round.
    Constant,
    /// Multiplied by `factor` every `every` rounds.
    Step {
        /// Rounds between decays.
        every: u32,
        /// Multiplier per decay, in `(0, 1]`.
        factor: f64,
    },
    /// Cosine decay from the rate to `floor` times it over the job's rounds.
    Cosine {
        /// Fraction of the rate kept at the last round.
        #[serde(default)]
        floor: f64,
    },
}

/// What a party does with the global model in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Passes over the party's rows.
    pub epochs: u32,
    /// Rows per step.
    pub batch_size: usize,
    /// The round's base learning rate.
    pub learning_rate: f64,
    /// Its schedule across rounds.
    #[serde(default = "constant")]
    pub schedule: Schedule,
    /// The optimiser.
    pub optimizer: Optimizer,
    /// L2 penalty coefficient (½·λ·‖w‖², biases included).
    #[serde(default)]
    pub l2: f64,
}

fn constant() -> Schedule {
    Schedule::Constant
}

/// Most epochs one round may ask for.
pub const MAX_EPOCHS: u32 = 1000;

impl LocalSettings {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Settings(m));
        if self.epochs == 0 || self.epochs > MAX_EPOCHS {
            return bad(format!("epochs must be 1 to {MAX_EPOCHS}, not {}", self.epochs));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!("learning_rate must be positive, not {}", self.learning_rate));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad(format!("l2 must be non-negative, not {}", self.l2));
        }
        match &self.schedule {
            Schedule::Constant => {}
            Schedule::Step { every, factor } => {
                if *every == 0 || !(*factor > 0.0 && *factor <= 1.0) {
                    return bad("a step schedule needs every ≥ 1 and factor in (0, 1]".into());
                }
            }
            Schedule::Cosine { floor } => {
                if !(0.0..=1.0).contains(floor) {
                    return bad(format!("cosine floor must be in [0, 1], not {floor}"));
                }
            }
        }
        match &self.optimizer {
            Optimizer::Sgd { momentum } => {
                if !(0.0..1.0).contains(momentum) {
                    return bad(format!("momentum must be in [0, 1), not {momentum}"));
                }
            }
            Optimizer::Adam { beta1, beta2, epsilon } => {
                if !((0.0..1.0).contains(beta1) && (0.0..1.0).contains(beta2) && *epsilon > 0.0) {
                    return bad("Adam needs beta1, beta2 in [0, 1) and epsilon > 0".into());
                }
            }
        }
        Ok(())
    }

    /// The learning rate of round `round` (from 0) of `rounds`.
    pub fn rate_at(&self, round: u32, rounds: u32) -> f64 {
        let lr = self.learning_rate;
        match self.schedule {
            Schedule::Constant => lr,
            Schedule::Step { every, factor } => lr * factor.powi((round / every.max(1)) as i32),
            Schedule::Cosine { floor } => {
                let t = f64::from(round) / f64::from(rounds.saturating_sub(1).max(1));
                lr * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
            }
        }
    }
}

/// One party's rows, features already standardised.
#[derive(Clone, Debug)]
pub struct Examples {
    /// One row per example.
    pub x: Array2<f64>,
    /// Targets or class indices.
    pub y: Array1<f64>,
}

impl Examples {
    /// Rows.
    pub fn len(&self) -> usize {
        self.x.nrows()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }

    /// The rows at `indices`, in order.
    pub fn select(&self, indices: &[usize]) -> Examples {
        Examples { x: self.x.select(Axis(0), indices), y: self.y.select(Axis(0), indices) }
    }
}

/// What one round of local training produced.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalUpdate {
    /// New local parameters minus the global ones.
    pub delta: Vec<f64>,
    /// Rows trained on (the update's weight in FedAvg).
    pub rows: usize,
    /// Mean training loss over the last epoch's batches.
    pub loss: f64,
}

/// Trains `global` on `data` for one round and returns the change.
///
/// `proximal_mu` > 0 adds FedProx's term ½·μ·‖w − w_global‖² to the local loss. The batch
/// order comes from `seed`, so a party repeating a round repeats it exactly.
pub fn train_local(
    global: &Model,
    data: &Examples,
    settings: &LocalSettings,
    learning_rate: f64,
    proximal_mu: f64,
    seed: [u8; 32],
) -> Result<LocalUpdate> {
    settings.validate()?;
    if data.is_empty() {
        return Err(Error::Shape("a party needs at least one training row".into()));
    }
    check_labels(&global.spec, data.y.view(), data.x.nrows())?;
    let mut model = global.clone();
    let n = model.parameters.len();
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let (mut first, mut second) = (vec![0.0; n], vec![0.0; n]);
    let mut step = 0u64;
    let mut last_loss = 0.0;
    for _ in 0..settings.epochs {
        shuffle(&mut order, &mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        for batch in order.chunks(settings.batch_size) {
            let x: ArrayView2<'_, f64>;
            let y: ArrayView1<'_, f64>;
            let owned;
            if batch.len() == data.len() {
                (x, y) = (data.x.view(), data.y.view());
            } else {
                owned = data.select(batch);
                (x, y) = (owned.x.view(), owned.y.view());
            }
            let (loss, mut g) = model.loss_and_gradient(x, y)?;
            loss_sum += loss;
            batches += 1;
            for ((gi, w), w0) in g.iter_mut().zip(&model.parameters).zip(&global.parameters) {
                *gi += settings.l2 * w + proximal_mu * (w - w0);
            }
            step += 1;
            match settings.optimizer {
                Optimizer::Sgd { momentum } => {
                    for ((w, v), gi) in model.parameters.iter_mut().zip(&mut first).zip(&g) {
                        *v = momentum * *v + gi;
                        *w -= learning_rate * *v;
                    }
                }
                Optimizer::Adam { beta1, beta2, epsilon } => {
                    let (c1, c2) = (1.0 - beta1.powf(step as f64), 1.0 - beta2.powf(step as f64));
                    for (((w, m), v), gi) in
                        model.parameters.iter_mut().zip(&mut first).zip(&mut second).zip(&g)
                    {
                        *m = beta1 * *m + (1.0 - beta1) * gi;
                        *v = beta2 * *v + (1.0 - beta2) * gi * gi;
                        *w -= learning_rate * (*m / c1) / ((*v / c2).sqrt() + epsilon);
                    }
                }
            }
        }
        last_loss = loss_sum / batches.max(1) as f64;
    }
    if model.parameters.iter().any(|p| !p.is_finite()) {
        return Err(Error::Diverged(
            "local training produced a non-finite parameter; lower the learning rate".into(),
        ));
    }
    let delta = model.parameters.iter().zip(&global.parameters).map(|(w, w0)| w - w0).collect();
    Ok(LocalUpdate { delta, rows: data.len(), loss: last_loss })
}

/// Fisher–Yates; the index is a multiply-shift of 64 random bits, biased by at most n/2^64.
pub(crate) fn shuffle(v: &mut [usize], rng: &mut impl RngCore) {
    for i in (1..v.len()).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
}

/// Per-feature statistics for standardisation, from sums every party contributes to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Per feature mean.
    pub mean: Vec<f64>,
    /// Per feature standard deviation (1 where a feature is constant).
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// A party's contribution: per feature the count of its present values, then Σx, then
    /// Σx², over present values (a missing value to impute is NaN). Only the sum over parties
    /// is ever revealed.
    pub fn local_moments(x: ArrayView2<'_, f64>) -> Vec<f64> {
        let present = |a: f64| if a.is_nan() { 0.0 } else { 1.0 };
        let value = |a: f64| if a.is_nan() { 0.0 } else { a };
        let mut v: Vec<f64> = x.mapv(present).sum_axis(Axis(0)).to_vec();
        v.extend(x.mapv(value).sum_axis(Axis(0)));
        v.extend(x.mapv(|a| value(a) * value(a)).sum_axis(Axis(0)));
        v
    }

    /// The statistics from the summed moments.
    pub fn from_moments(sum: &[f64]) -> Result<Self> {
        if sum.len() < 3 || sum.len() % 3 != 0 {
            return Err(Error::Shape(format!("{} moments do not describe features", sum.len())));
        }
        let features = sum.len() / 3;
        let (counts, rest) = sum.split_at(features);
        let (sums, squares) = rest.split_at(features);
        if let Some((j, n)) = counts.iter().enumerate().find(|(_, n)| n.is_nan() || **n < 2.0) {
            return Err(Error::Shape(format!(
                "input {} has {n} values in all: too few to standardise",
                j + 1
            )));
        }
        let mean: Vec<f64> = sums.iter().zip(counts).map(|(s, n)| s / n).collect();
        let scale = squares
            .iter()
            .zip(&mean)
            .zip(counts)
            .map(|((sq, m), n)| {
                let var = ((sq - n * m * m) / (n - 1.0)).max(0.0);
                if var > 1e-24 { var.sqrt() } else { 1.0 }
            })
            .collect();
        Ok(Self { mean, scale })
    }

    /// Statistics from declared bounds, mapping each feature's `[min, max]` onto `[-1, 1]`:
    /// data-independent, for jobs whose every release must be differentially private.
    pub fn from_bounds(bounds: &[(f64, f64)]) -> Result<Self> {
        if bounds.iter().any(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi)) {
            return Err(Error::Shape("declared bounds must be finite with min ≤ max".into()));
        }
        Ok(Self {
            mean: bounds.iter().map(|(lo, hi)| (lo + hi) / 2.0).collect(),
            scale: bounds
                .iter()
                .map(|(lo, hi)| if hi > lo { (hi - lo) / 2.0 } else { 1.0 })
                .collect(),
        })
    }

    /// Standardises `x` in place.
    pub fn apply(&self, x: &mut Array2<f64>) -> Result<()> {
        if x.ncols() != self.mean.len() {
            return Err(Error::Shape(format!(
                "{} feature columns given, the statistics cover {}",
                x.ncols(),
                self.mean.len()
            )));
        }
        // A missing value to impute (NaN) takes the mean: 0 once standardised.
        for mut row in x.rows_mut() {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = if v.is_nan() { 0.0 } else { (*v - m) / s };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use ndarray::array;

    fn settings(optimizer: Optimizer) -> LocalSettings {
        LocalSettings {
            epochs: 200,
            batch_size: 4,
            learning_rate: 0.05,
            schedule: Schedule::Constant,
            optimizer,
            l2: 0.0,
        }
    }

    /// Both optimisers fit y = 2a − b + 1 on exact data.
    #[test]
    fn local_training_fits_a_line() {
        let x = array![[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 1.0], [0.0, 2.0], [3.0, -1.0]];
        let y = x.rows().into_iter().map(|r| 2.0 * r[0] - r[1] + 1.0).collect::<Array1<f64>>();
        let data = Examples { x, y };
        let zero = Model::from_parameters(ModelSpec::LinearRegression, 2, vec![0.0; 3]).unwrap();
        for opt in [
            Optimizer::Sgd { momentum: 0.5 },
            Optimizer::Adam { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
        ] {
            let s = settings(opt.clone());
            let u = train_local(&zero, &data, &s, 0.05, 0.0, [1; 32]).unwrap();
            // Adam at a fixed rate keeps circling the optimum at about the rate's scale.
            let tol = if matches!(opt, Optimizer::Adam { .. }) { 0.15 } else { 0.02 };
            let want = [2.0, -1.0, 1.0];
            assert!(
                u.delta.iter().zip(want).all(|(d, w)| (d - w).abs() < tol),
                "{opt:?}: {:?}",
                u.delta
            );
            // Seeded: the same round twice gives the same update.
            assert_eq!(u, train_local(&zero, &data, &s, 0.05, 0.0, [1; 32]).unwrap());
        }
        // A proximal term holds the update near the global model.
        let s = settings(Optimizer::Sgd { momentum: 0.0 });
        let free = train_local(&zero, &data, &s, 0.05, 0.0, [1; 32]).unwrap();
        let held = train_local(&zero, &data, &s, 0.05, 5.0, [1; 32]).unwrap();
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(norm(&held.delta) < 0.5 * norm(&free.delta));
    }

    #[test]
    fn bad_settings_and_divergence_are_errors() {
        let data = Examples { x: array![[1.0], [2.0]], y: array![1e3, -1e3] };
        let zero = Model::from_parameters(ModelSpec::LinearRegression, 1, vec![0.0; 2]).unwrap();
        let mut s = settings(Optimizer::Sgd { momentum: 0.0 });
        s.batch_size = 0;
        assert!(matches!(
            train_local(&zero, &data, &s, 0.1, 0.0, [0; 32]),
            Err(Error::Settings(_))
        ));
        s.batch_size = 2;
        assert!(matches!(
            train_local(&zero, &data, &s, 1e6, 0.0, [0; 32]),
            Err(Error::Diverged(_))
        ));
        let empty = data.select(&[]);
        assert!(train_local(&zero, &empty, &s, 0.1, 0.0, [0; 32]).is_err());
    }

    #[test]
    fn schedules() {
        let mut s = settings(Optimizer::Sgd { momentum: 0.0 });
        s.learning_rate = 1.0;
        s.schedule = Schedule::Step { every: 2, factor: 0.5 };
        assert_eq!([0, 1, 2, 5].map(|r| s.rate_at(r, 10)), [1.0, 1.0, 0.5, 0.25]);
        s.schedule = Schedule::Cosine { floor: 0.1 };
        assert!((s.rate_at(0, 11) - 1.0).abs() < 1e-12 && (s.rate_at(10, 11) - 0.1).abs() < 1e-12);
    }

    /// Statistics from summed moments equal those of the pooled rows.
    #[test]
    fn standardisation_from_summed_moments() {
        let a = array![[1.0, 5.0], [2.0, 5.0]];
        let b = array![[3.0, 5.0], [6.0, 5.0], [8.0, 5.0]];
        let sum: Vec<f64> = Standardizer::local_moments(a.view())
            .iter()
            .zip(Standardizer::local_moments(b.view()))
            .map(|(x, y)| x + y)
            .collect();
        let s = Standardizer::from_moments(&sum).unwrap();
        assert!((s.mean[0] - 4.0).abs() < 1e-12 && s.mean[1] == 5.0);
        assert!((s.scale[0] - 8.5f64.sqrt()).abs() < 1e-12 && s.scale[1] == 1.0);
        assert!(Standardizer::from_moments(&[1.0, 2.0, 3.0]).is_err());
        assert!(Standardizer::from_moments(&[1.0, 2.0]).is_err());
        // A missing value (NaN) is left out of its feature's moments and imputed with its mean.
        let c = array![[f64::NAN, 5.0], [4.0, 5.0], [6.0, 5.0]];
        let s = Standardizer::from_moments(&Standardizer::local_moments(c.view())).unwrap();
        assert!((s.mean[0] - 5.0).abs() < 1e-12 && (s.scale[0] - 2f64.sqrt()).abs() < 1e-12);
        let mut x = c.clone();
        s.apply(&mut x).unwrap();
        assert_eq!(x[[0, 0]], 0.0);
    }
}
