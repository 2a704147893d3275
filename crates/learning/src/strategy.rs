//! The server side of a round: what parties put into the secure sum, and how the sum moves
//! the global model.
//!
//! A party contributes `[rows · clip(Δ), rows]` (sample-weighted FedAvg with the weights inside
//! the sum), so the server learns only Σ rows·Δ and Σ rows, never a party's own update or
//! size. Under DP-FedAvg the weight is fixed at 1 instead, so that one party's contribution
//! has a known L2 sensitivity, and each party adds its share of integer noise before masking.

use serde::{Deserialize, Serialize};
use veil_protocol::fixed_point::FixedPoint;

use crate::model::Model;
use crate::train::LocalUpdate;
use crate::{Error, Result};

/// How the server turns the mean update into the next global model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// McMahan et al. (2017): add the weighted mean update.
    FedAvg,
    /// Li et al. (2020): FedAvg with a proximal term `mu` in every party's local loss.
    FedProx {
        /// Proximal coefficient.
        mu: f64,
    },
    /// Reddi et al. (2021): Adam on the server with the mean update as the gradient step.
    FedAdam(Adaptive),
    /// Reddi et al. (2021): Yogi's additive second-moment update on the server.
    FedYogi(Adaptive),
}

/// Settings of an adaptive server optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// Server learning rate.
    pub learning_rate: f64,
    /// First-moment decay.
    #[serde(default = "beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "beta2")]
    pub beta2: f64,
    /// Adaptivity: the second moment starts at τ² and τ is added to its root.
    #[serde(default = "tau")]
    pub tau: f64,
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.99
}
fn tau() -> f64 {
    1e-3
}

impl Strategy {
    /// The proximal coefficient parties train with.
    pub fn proximal_mu(&self) -> f64 {
        match self {
            Self::FedProx { mu } => *mu,
            _ => 0.0,
        }
    }

    /// Checks the coefficients.
    pub fn validate(&self) -> Result<()> {
        let ok = match self {
            Self::FedAvg => true,
            Self::FedProx { mu } => mu.is_finite() && *mu >= 0.0,
            Self::FedAdam(Adaptive { learning_rate, beta1, beta2, tau })
            | Self::FedYogi(Adaptive { learning_rate, beta1, beta2, tau }) => {
                *learning_rate > 0.0
                    && learning_rate.is_finite()
                    && (0.0..1.0).contains(beta1)
                    && (0.0..1.0).contains(beta2)
                    && *tau > 0.0
                    && (tau * tau).is_finite()
            }
        };
        if ok { Ok(()) } else { Err(Error::Settings(format!("invalid strategy {self:?}"))) }
    }
}

/// The global model and the server optimiser's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// The current global model.
    pub model: Model,
    /// The strategy.
    pub strategy: Strategy,
    /// Server first moment (adaptive strategies).
    first: Vec<f64>,
    /// Server second moment (adaptive strategies).
    second: Vec<f64>,
    /// Rounds applied so far.
    pub rounds: u32,
}

impl Server {
    /// A server starting from `model`.
    pub fn new(model: Model, strategy: Strategy) -> Result<Self> {
        strategy.validate()?;
        let n = model.parameters.len();
        let (first, second) = match strategy {
            Strategy::FedAdam(a) | Strategy::FedYogi(a) => (vec![0.0; n], vec![a.tau * a.tau; n]),
            Strategy::FedAvg | Strategy::FedProx { .. } => (Vec::new(), Vec::new()),
        };
        Ok(Self { model, strategy, first, second, rounds: 0 })
    }

    /// Applies one round's mean update (Σ weight·Δ over Σ weight).
    pub fn apply(&mut self, mean_delta: &[f64]) -> Result<()> {
        if mean_delta.len() != self.model.parameters.len() {
            return Err(Error::Shape(format!(
                "an update of {} values for a model of {}",
                mean_delta.len(),
                self.model.parameters.len()
            )));
        }
        if mean_delta.iter().any(|d| !d.is_finite()) {
            return Err(Error::Diverged("the aggregated update is not finite".into()));
        }
        let w = &mut self.model.parameters;
        match self.strategy {
            Strategy::FedAvg | Strategy::FedProx { .. } => {
                w.iter_mut().zip(mean_delta).for_each(|(w, d)| *w += d);
            }
            Strategy::FedAdam(Adaptive { learning_rate, beta1, beta2, tau })
            | Strategy::FedYogi(Adaptive { learning_rate, beta1, beta2, tau }) => {
                let yogi = matches!(self.strategy, Strategy::FedYogi(_));
                for (((w, m), v), d) in
                    w.iter_mut().zip(&mut self.first).zip(&mut self.second).zip(mean_delta)
                {
                    *m = beta1 * *m + (1.0 - beta1) * d;
                    let d2 = d * d;
                    *v = if yogi {
                        let sign = if *v == d2 { 0.0 } else { (*v - d2).signum() };
                        *v - (1.0 - beta2) * d2 * sign
                    } else {
                        beta2 * *v + (1.0 - beta2) * d2
                    };
                    *w += learning_rate * *m / (v.sqrt() + tau);
                }
            }
        }
        self.rounds += 1;
        Ok(())
    }
}

/// Scales `delta` down to L2 norm `bound` if it is longer; returns the norm before clipping.
pub fn clip_l2(delta: &mut [f64], bound: f64) -> f64 {
    let norm = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
    if norm > bound && norm > 0.0 {
        let f = bound / norm;
        delta.iter_mut().for_each(|d| *d *= f);
    }
    norm
}

/// How updates are put into the secure sum: each element of `rows·Δ` in fixed point, then the
/// row count, in the ring the secure aggregation sums in.
#[derive(Clone, Copy, Debug)]
pub struct UpdateEncoding {
    fixed: FixedPoint,
    bound: f64,
    max_rows: usize,
}

impl UpdateEncoding {
    /// Elements of an update are clipped to `[-bound, bound]`; a party weighs by at most
    /// `max_rows` rows; sums over up to `max_parties` parties decode.
    pub fn new(
        bound: f64,
        max_rows: usize,
        fractional_bits: u32,
        max_parties: usize,
    ) -> Result<Self> {
        if !(bound.is_finite() && bound > 0.0) || max_rows == 0 {
            return Err(Error::Settings("update bound and row limit must be positive".into()));
        }
        // The row count goes through the same encoding, so the range covers it too.
        let range = bound.max(1.0) * max_rows as f64;
        let fixed = FixedPoint::new(-range, range, fractional_bits, max_parties)
            .map_err(|e| Error::Settings(e.to_string()))?;
        Ok(Self { fixed, bound, max_rows })
    }

    /// Length of the vector for a model of `parameters` parameters.
    pub fn len(parameters: usize) -> usize {
        parameters + 1
    }

    /// A party's vector: `rows·clamp(Δ)` then `rows`, with stochastic rounding from `rng`.
    pub fn encode(
        &self,
        update: &LocalUpdate,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<Vec<u64>> {
        if update.rows > self.max_rows {
            return Err(Error::Settings(format!(
                "{} rows exceed the job's per-party limit of {}",
                update.rows, self.max_rows
            )));
        }
        let rows = update.rows as f64;
        let mut values: Vec<f64> =
            update.delta.iter().map(|d| rows * d.clamp(-self.bound, self.bound)).collect();
        values.push(rows);
        Ok(self.fixed.encode(&values, rng))
    }

    /// The weighted mean update and the total rows from the sum over `contributors` parties.
    pub fn decode(&self, sum: &[u64], contributors: usize) -> Result<(Vec<f64>, f64)> {
        let mut v =
            self.fixed.decode_sum(sum, contributors).map_err(|e| Error::Shape(e.to_string()))?;
        let rows = v.pop().ok_or_else(|| Error::Shape("an empty update sum".into()))?.round();
        if rows < 1.0 {
            return Err(Error::Shape("the aggregated update covers no rows".into()));
        }
        v.iter_mut().for_each(|x| *x /= rows);
        Ok((v, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn zero(n: usize) -> Model {
        Model::from_parameters(ModelSpec::LinearRegression, n - 1, vec![0.0; n]).unwrap()
    }

    /// Σ rows·Δ over Σ rows, through the ring, equals the weighted mean.
    #[test]
    fn weighted_mean_through_the_ring() {
        let enc = UpdateEncoding::new(10.0, 10_000, 24, 16).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let a = LocalUpdate { delta: vec![1.0, -2.0, 0.5], rows: 300, loss: 0.0 };
        let b = LocalUpdate { delta: vec![-1.0, 4.0, 0.5], rows: 100, loss: 0.0 };
        let sum: Vec<u64> = enc
            .encode(&a, &mut rng)
            .unwrap()
            .iter()
            .zip(enc.encode(&b, &mut rng).unwrap())
            .map(|(x, y)| x.wrapping_add(y))
            .collect();
        let (mean, rows) = enc.decode(&sum, 2).unwrap();
        assert_eq!(rows, 400.0);
        for (m, want) in mean.iter().zip([0.5, -0.5, 0.5]) {
            assert!((m - want).abs() < 1e-6, "{mean:?}");
        }
        let big = LocalUpdate { rows: 10_001, ..a };
        assert!(enc.encode(&big, &mut rng).is_err());
    }

    #[test]
    fn strategies_move_the_model() {
        let step = [0.1, -0.2];
        let mut avg = Server::new(zero(2), Strategy::FedAvg).unwrap();
        avg.apply(&step).unwrap();
        assert_eq!(avg.model.parameters, vec![0.1, -0.2]);
        let a = Adaptive { learning_rate: 0.01, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
        for s in [Strategy::FedAdam(a), Strategy::FedYogi(a)] {
            let mut server = Server::new(zero(2), s.clone()).unwrap();
            for _ in 0..5 {
                server.apply(&step).unwrap();
            }
            let w = &server.model.parameters;
            assert!(w[0] > 0.0 && w[1] < 0.0, "{s:?} moves along the update: {w:?}");
        }
        assert!(avg.apply(&[1.0]).is_err());
        assert!(avg.apply(&[f64::NAN, 0.0]).is_err());
        assert!(Server::new(zero(2), Strategy::FedProx { mu: -1.0 }).is_err());
    }

    #[test]
    fn clipping() {
        let mut d = vec![3.0, 4.0];
        assert_eq!(clip_l2(&mut d, 1.0), 5.0);
        assert!((d[0] - 0.6).abs() < 1e-12 && (d[1] - 0.8).abs() < 1e-12);
        let mut small = vec![0.1, 0.1];
        clip_l2(&mut small, 1.0);
        assert_eq!(small, vec![0.1, 0.1]);
    }
}
