//! DP-FedAvg with distributed noise, per-round cohort sampling, and the accountant that stops
//! training before the job's budget is exceeded.
//!
//! Each party clips its update to L2 norm `clip`, encodes it in fixed point with stochastic
//! rounding and adds its share of discrete Gaussian noise to every element before masking, so
//! the coordinator only ever sees noised sums. The shares are calibrated so that the sum over
//! `min_parties` parties carries the whole noise (parties that vanish only remove noise the
//! calibration did not count on). The average is unweighted: with sample weights one party's
//! influence, and so the sensitivity, would depend on its size.

use serde::{Deserialize, Serialize};
use veil_protocol::dp::{MAX_VARIANCE, discrete_gaussian, zcdp_epsilon};
use veil_protocol::fixed_point::FixedPoint;

use crate::strategy::clip_l2;
use crate::{Error, Result};

/// DP-FedAvg settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpFedAvg {
    /// L2 bound of one party's update.
    pub clip: f64,
    /// Standard deviation of the summed noise, in units of `clip`.
    pub noise_multiplier: f64,
    /// The fewest parties whose noise is in any sum.
    pub min_parties: u32,
    /// Fixed-point bits after the point.
    #[serde(default = "fractional_bits")]
    pub fractional_bits: u32,
}

fn fractional_bits() -> u32 {
    16
}

impl DpFedAvg {
    fn scale(&self) -> f64 {
        (1u64 << self.fractional_bits) as f64
    }

    /// Checks ranges; the summed noise must stay far inside the ring.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Settings(m));
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!("clip must be positive, not {}", self.clip));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return bad(format!(
                "noise_multiplier must be positive, not {}",
                self.noise_multiplier
            ));
        }
        if self.min_parties == 0 {
            return bad("min_parties must be at least 1".into());
        }
        if self.fractional_bits > 30 {
            return bad(format!("{} fractional bits: at most 30", self.fractional_bits));
        }
        let sd = self.noise_multiplier * self.clip * self.scale();
        if sd * sd / f64::from(self.min_parties) > MAX_VARIANCE as f64 {
            return bad("the noise is too large for the sampler: lower the multiplier, the clip or the fractional bits".into());
        }
        Ok(())
    }

    /// Each party's discrete Gaussian variance, in fixed-point units, rounded up; call after
    /// [`Self::validate`].
    fn party_variance(&self) -> u64 {
        let sd = self.noise_multiplier * self.clip * self.scale();
        ((sd * sd / f64::from(self.min_parties)).ceil() as u64).max(1)
    }

    /// zCDP ρ of one round for a model of `parameters` parameters, for neighbouring rounds in
    /// which one party's contribution is replaced by zeros (its noise stays in the sum): the
    /// rounded contribution has L2 norm at most `clip·2^f + √parameters`, since rounding moves
    /// each element by less than one unit. Like the analytics' calibration, this leaves out the
    /// small correction for sums of discrete Gaussians (Kairouz, Liu and Steinke, 2021).
    pub fn rho_per_round(&self, parameters: usize) -> Result<f64> {
        self.validate()?;
        let sensitivity = self.clip * self.scale() + (parameters as f64).sqrt();
        let variance = self.party_variance() as f64 * f64::from(self.min_parties);
        Ok(sensitivity * sensitivity / (2.0 * variance))
    }

    fn encoding(&self, max_parties: usize) -> Result<FixedPoint> {
        FixedPoint::new(-self.clip, self.clip, self.fractional_bits, max_parties)
            .map_err(|e| Error::Settings(e.to_string()))
    }

    /// A party's vector: `delta` clipped, rounded and noised. Returns it with the norm before
    /// clipping.
    pub fn encode(
        &self,
        delta: &[f64],
        max_parties: usize,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<(Vec<u64>, f64)> {
        self.validate()?;
        if delta.iter().any(|d| !d.is_finite()) {
            return Err(Error::Diverged("an update with a non-finite element".into()));
        }
        let mut clipped = delta.to_vec();
        let norm = clip_l2(&mut clipped, self.clip);
        let mut v = self.encoding(max_parties)?.encode(&clipped, rng);
        let variance = self.party_variance();
        for x in &mut v {
            *x = x.wrapping_add(discrete_gaussian(rng, variance) as u64);
        }
        Ok((v, norm))
    }

    /// The mean update from the noised sum over `contributors` parties.
    pub fn decode(&self, sum: &[u64], contributors: usize, max_parties: usize) -> Result<Vec<f64>> {
        if contributors < self.min_parties.max(1) as usize {
            return Err(Error::Cohort(format!(
                "an update sum over {contributors} parties carries less noise than calibrated for {}",
                self.min_parties
            )));
        }
        let v = self
            .encoding(max_parties)?
            .decode_sum(sum, contributors)
            .map_err(|e| Error::Shape(e.to_string()))?;
        Ok(v.into_iter().map(|x| x / contributors as f64).collect())
    }
}

/// Privacy spent across rounds, by zCDP composition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// ρ of one round.
    pub per_round: f64,
    /// The job's total ρ.
    pub budget: f64,
    /// ρ charged so far.
    pub spent: f64,
    /// Rounds charged.
    pub rounds: u32,
    /// δ at which ε is reported.
    pub delta: f64,
}

impl Accountant {
    /// An accountant for a job of total ρ `budget`.
    pub fn new(per_round: f64, budget: f64, delta: f64) -> Result<Self> {
        if !(per_round.is_finite() && per_round > 0.0 && budget.is_finite() && budget > 0.0) {
            return Err(Error::Settings("ρ per round and the budget must be positive".into()));
        }
        if !(delta > 0.0 && delta < 1.0) {
            return Err(Error::Settings(format!("δ must be in (0, 1), not {delta}")));
        }
        Ok(Self { per_round, budget, spent: 0.0, rounds: 0, delta })
    }

    /// Charges one round, or refuses if it would exceed the budget.
    pub fn charge(&mut self) -> Result<()> {
        let after = self.spent + self.per_round;
        if after > self.budget * (1.0 + 1e-12) {
            return Err(Error::Budget(format!(
                "round {} would spend ρ = {after:.4} of a budget of {:.4}; training stops after {} rounds at ε = {:.3}",
                self.rounds + 1,
                self.budget,
                self.rounds,
                self.epsilon()
            )));
        }
        self.spent = after;
        self.rounds += 1;
        Ok(())
    }

    /// Rounds the remaining budget pays for.
    pub fn remaining_rounds(&self) -> u32 {
        (((self.budget - self.spent) / self.per_round) * (1.0 + 1e-12)).floor().max(0.0) as u32
    }

    /// ε of what was spent, at δ.
    pub fn epsilon(&self) -> f64 {
        zcdp_epsilon(self.spent, self.delta)
    }
}

/// The parties of one round: a seeded sample of `fraction` of those available, at least
/// `min_cohort` of them; an error if fewer are available.
pub fn sample_cohort<T: Clone>(
    available: &[T],
    fraction: f64,
    min_cohort: usize,
    rng: &mut impl rand_core::RngCore,
) -> Result<Vec<T>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::Settings(format!(
            "the sampled fraction must be in (0, 1], not {fraction}"
        )));
    }
    if available.len() < min_cohort.max(1) {
        return Err(Error::Cohort(format!(
            "{} parties available, the round needs at least {}",
            available.len(),
            min_cohort.max(1)
        )));
    }
    let want = ((fraction * available.len() as f64).ceil() as usize)
        .clamp(min_cohort.max(1), available.len());
    let mut order: Vec<usize> = (0..available.len()).collect();
    crate::train::shuffle(&mut order, rng);
    let mut chosen: Vec<usize> = order[..want].to_vec();
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(|i| available[i].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn dp() -> DpFedAvg {
        DpFedAvg { clip: 1.0, noise_multiplier: 0.8, min_parties: 3, fractional_bits: 12 }
    }

    /// The summed noise of `min_parties` parties has the declared spread, and clipping bounds
    /// what one party can put in.
    #[test]
    fn summed_noise_has_the_declared_spread() {
        let d = dp();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (n, len) = (3usize, 2000usize);
        let mut sum = vec![0u64; len];
        for _ in 0..n {
            let (v, norm) = d.encode(&vec![0.0; len], 8, &mut rng).unwrap();
            assert_eq!(norm, 0.0);
            sum.iter_mut().zip(v).for_each(|(s, x)| *s = s.wrapping_add(x));
        }
        // The mean's noise: sd = multiplier · clip / contributors.
        let mean = d.decode(&sum, n, 8).unwrap();
        let sd = (mean.iter().map(|x| x * x).sum::<f64>() / len as f64).sqrt();
        let want = d.noise_multiplier * d.clip / n as f64;
        assert!((sd / want - 1.0).abs() < 0.08, "sd {sd} vs {want}");
        let (_, norm) = d.encode(&[3.0, 4.0], 8, &mut rng).unwrap();
        assert_eq!(norm, 5.0);
        assert!((d.rho_per_round(1).unwrap() - 1.0 / (2.0 * 0.64)).abs() < 1e-3);
        assert!(matches!(d.decode(&sum, 2, 8), Err(Error::Cohort(_))));
        assert!(DpFedAvg { fractional_bits: 64, ..dp() }.rho_per_round(1).is_err());
        let too_loud = DpFedAvg { noise_multiplier: 1e12, ..dp() };
        assert!(too_loud.encode(&[0.0], 8, &mut rng).is_err());
    }

    #[test]
    fn the_accountant_stops_at_the_budget() {
        let mut a = Accountant::new(0.1, 0.35, 1e-6).unwrap();
        assert_eq!(a.remaining_rounds(), 3);
        for _ in 0..3 {
            a.charge().unwrap();
        }
        let e = a.epsilon();
        assert!(e.is_finite() && e > 0.0);
        let refused = a.charge().unwrap_err();
        assert!(matches!(refused, Error::Budget(_)), "{refused}");
        assert_eq!((a.rounds, a.remaining_rounds()), (3, 0));
        assert_eq!(a.epsilon(), e, "a refused round spends nothing");
        assert!(Accountant::new(0.0, 1.0, 1e-6).is_err());
    }

    #[test]
    fn cohorts() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let parties: Vec<u32> = (0..10).collect();
        let c = sample_cohort(&parties, 0.3, 2, &mut rng).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample_cohort(&parties, 0.05, 4, &mut rng).unwrap().len(), 4);
        assert!(matches!(sample_cohort(&parties[..2], 0.5, 3, &mut rng), Err(Error::Cohort(_))));
        assert!(sample_cohort(&parties, 0.0, 1, &mut rng).is_err());
    }
}
