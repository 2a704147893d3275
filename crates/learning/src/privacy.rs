//! Differentially private training with distributed noise: DP-FedAvg (the privacy unit is a
//! party), record-level DP-SGD (the unit is one row), per-round cohort sampling, and the
//! accountant that stops training before the job's budget is exceeded.
//!
//! Under DP-FedAvg each party clips its update to L2 norm `clip`, encodes it in fixed point with stochastic
//! rounding and adds its share of discrete Gaussian noise to every element before masking, so
//! the coordinator only ever sees noised sums. The shares are calibrated so that the sum over
//! `min_parties` parties carries the whole noise (parties that vanish only remove noise the
//! calibration did not count on). The average is unweighted: with sample weights one party's
//! influence, and so the sensitivity, would depend on its size.

use serde::{Deserialize, Serialize};
use veil_protocol::dp::{MAX_VARIANCE, discrete_gaussian, zcdp_epsilon};
use veil_protocol::fixed_point::FixedPoint;

use crate::model::ClippedSum;
use crate::rdp;
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

/// Record-level DP-SGD: each step every party samples each of its training rows with
/// probability `sample_rate` (Poisson sampling, from its own unpredictable randomness), clips
/// each sampled row's gradient to L2 norm `clip`, sums them, appends its sampled row count
/// weighted by [`DpSgd::COUNT_WEIGHT`]·`clip`, rounds the vector to fixed point and adds its
/// share of discrete Gaussian noise before masking. The shares are calibrated as DP-FedAvg's:
/// `min_parties` of them carry the whole noise, of standard deviation `noise_multiplier·clip`.
///
/// Adding or removing one row changes the real vector by at most `clip·√(1 + w²)` (its clipped
/// gradient and its weighted count) and rounding by less than one unit per element, so one
/// step is the sampled Gaussian mechanism with the noise multiplier of [`DpSgd::sigma`], which
/// [`rdp`] accounts for.
#[derive(Clone, Debug, PartialEq)]
pub struct DpSgd {
    /// L2 bound of one row's gradient.
    pub clip: f64,
    /// Standard deviation of the summed noise, in units of `clip`.
    pub noise_multiplier: f64,
    /// Probability with which each row is sampled into a step.
    pub sample_rate: f64,
    /// The fewest parties whose noise is in any sum.
    pub min_parties: u32,
    /// Fixed-point bits after the point.
    pub fractional_bits: u32,
}

impl DpSgd {
    /// Weight of the sampled row count in the sum, in units of `clip`: the coordinator
    /// estimates the expected batch from the noisy counts, and the weight keeps what the count
    /// adds to one row's influence small (a factor √(1 + w²) ≈ 1.03 on the sensitivity).
    pub const COUNT_WEIGHT: f64 = 0.25;

    /// Most rows one party samples into one step: all of the most it may hold
    /// ([`crate::job::MAX_ROWS`]), so no sample, however large, fails a step.
    pub const MAX_SAMPLE: usize = crate::job::MAX_ROWS;

    /// The noise calibration, shared with DP-FedAvg.
    fn calibration(&self) -> DpFedAvg {
        DpFedAvg {
            clip: self.clip,
            noise_multiplier: self.noise_multiplier,
            min_parties: self.min_parties,
            fractional_bits: self.fractional_bits,
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        self.calibration().validate()?;
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(Error::Settings(format!(
                "sample_rate must be in (0, 1], not {}",
                self.sample_rate
            )));
        }
        self.encoding(crate::job::MAX_PARTIES).map(|_| ())
    }

    /// One party's sum: each of up to [`Self::MAX_SAMPLE`] rows within `clip` (the count
    /// within its weight).
    fn encoding(&self, max_parties: usize) -> Result<FixedPoint> {
        let bound = self.clip * Self::MAX_SAMPLE as f64;
        FixedPoint::new(-bound, bound, self.fractional_bits, max_parties).map_err(|_| {
            Error::Settings(format!(
                "clip {} with {} fractional bits is too large for sums of {} rows over {max_parties} parties: lower the clip or the fractional bits",
                self.clip,
                self.fractional_bits,
                Self::MAX_SAMPLE
            ))
        })
    }

    /// The noise multiplier of one step as the accountant sees it: the summed noise's standard
    /// deviation over the largest change one row makes to the rounded vector of a model of
    /// `parameters` parameters.
    pub fn sigma(&self, parameters: usize) -> Result<f64> {
        self.validate()?;
        let calibration = self.calibration();
        let sensitivity = self.clip * calibration.scale() * Self::COUNT_WEIGHT.hypot(1.0)
            + ((parameters + 1) as f64).sqrt();
        let variance = calibration.party_variance() as f64 * f64::from(self.min_parties);
        Ok(variance.sqrt() / sensitivity)
    }

    /// zCDP ρ of one step ignoring the sampling: `1 / (2σ²)`. Subsampling amplifies privacy
    /// in Rényi terms only, so this is what one step charges the owners' zCDP ledgers.
    pub fn rho_per_step(&self, parameters: usize) -> Result<f64> {
        let sigma = self.sigma(parameters)?;
        Ok(1.0 / (2.0 * sigma * sigma))
    }

    /// The rows of a step: each of `rows` with probability `sample_rate`.
    pub fn sample(&self, rows: usize, rng: &mut impl rand_core::RngCore) -> Vec<usize> {
        (0..rows).filter(|_| crate::model::unit(rng) < self.sample_rate).collect()
    }

    /// A party's vector: its clipped gradient sum and weighted row count, rounded and noised.
    pub fn encode(
        &self,
        sum: &ClippedSum,
        max_parties: usize,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<Vec<u64>> {
        self.validate()?;
        if sum.rows > Self::MAX_SAMPLE {
            return Err(Error::Settings(format!(
                "{} rows were sampled into one step, more than {}: lower sample_rate",
                sum.rows,
                Self::MAX_SAMPLE
            )));
        }
        if sum.gradient.iter().any(|g| !g.is_finite()) {
            return Err(Error::Diverged("a clipped gradient sum with a non-finite element".into()));
        }
        let mut values = sum.gradient.clone();
        values.push(Self::COUNT_WEIGHT * self.clip * sum.rows as f64);
        let mut v = self.encoding(max_parties)?.encode(&values, rng);
        let variance = self.calibration().party_variance();
        for x in &mut v {
            *x = x.wrapping_add(discrete_gaussian(rng, variance) as u64);
        }
        Ok(v)
    }

    /// The noised gradient sum and the noised count of sampled rows from the sum over
    /// `contributors` parties.
    pub fn decode(
        &self,
        sum: &[u64],
        contributors: usize,
        max_parties: usize,
    ) -> Result<(Vec<f64>, f64)> {
        if contributors < self.min_parties.max(1) as usize {
            return Err(Error::Cohort(format!(
                "a gradient sum over {contributors} parties carries less noise than calibrated for {}",
                self.min_parties
            )));
        }
        let mut v = self
            .encoding(max_parties)?
            .decode_sum(sum, contributors)
            .map_err(|e| Error::Shape(e.to_string()))?;
        let count = v.pop().ok_or_else(|| Error::Shape("an empty gradient sum".into()))?;
        Ok((v, count / (Self::COUNT_WEIGHT * self.clip)))
    }
}

/// The sampled Gaussian mechanism of a record-level job, as its accountant keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledGaussian {
    /// Each row's probability of being in a step.
    pub sample_rate: f64,
    /// The noise multiplier ([`DpSgd::sigma`]).
    pub sigma: f64,
}

/// Privacy spent across rounds.
///
/// A DP-FedAvg job composes its rounds in zCDP and stops at its budget ρ. A record-level job
/// (`sampled`) is accounted in Rényi DP for the sampled Gaussian ([`rdp`]) and stops at its
/// budget ε at δ; what it charges the owners' ledgers is still zCDP, `per_round` a round
/// without the amplification from sampling, which zCDP cannot express.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// ρ of one round, as charged to the owners' ledgers.
    pub per_round: f64,
    /// The job's budget: ρ, or ε at `delta` for a record-level job.
    pub budget: f64,
    /// ρ charged so far.
    pub spent: f64,
    /// Rounds charged.
    pub rounds: u32,
    /// δ at which ε is reported.
    pub delta: f64,
    /// The record-level mechanism, accounted in Rényi DP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<SampledGaussian>,
    /// The mechanism's Rényi curve, computed at its first use.
    #[serde(skip)]
    curve: CurveCache,
}

/// A cache of a value derived from the accountant's own fields: equal whatever it holds.
#[derive(Clone, Debug, Default)]
struct CurveCache(std::sync::OnceLock<rdp::Curve>);

impl PartialEq for CurveCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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
        Ok(Self {
            per_round,
            budget,
            spent: 0.0,
            rounds: 0,
            delta,
            sampled: None,
            curve: CurveCache::default(),
        })
    }

    /// An accountant for a record-level job of budget ε `epsilon` at `delta`, each round of
    /// which charges the owners ρ `per_round`.
    pub fn sampled(
        mechanism: SampledGaussian,
        per_round: f64,
        epsilon: f64,
        delta: f64,
    ) -> Result<Self> {
        // Checks the mechanism's ranges once.
        rdp::epsilon(mechanism.sample_rate, mechanism.sigma, 1, delta)?;
        Ok(Self { sampled: Some(mechanism), ..Self::new(per_round, epsilon, delta)? })
    }

    /// ε at δ after `rounds` rounds.
    fn epsilon_after(&self, rounds: u32) -> f64 {
        match &self.sampled {
            Some(m) => {
                let curve = match self.curve.0.get() {
                    Some(c) => c,
                    None => match rdp::Curve::new(m.sample_rate, m.sigma) {
                        Ok(c) => self.curve.0.get_or_init(|| c),
                        Err(_) => return f64::INFINITY,
                    },
                };
                curve.epsilon(u64::from(rounds), self.delta).map_or(f64::INFINITY, |(e, _)| e)
            }
            None => zcdp_epsilon(self.per_round * f64::from(rounds), self.delta),
        }
    }

    /// Whether `rounds` rounds fit the budget.
    fn affords(&self, rounds: u32) -> bool {
        match &self.sampled {
            Some(_) => self.epsilon_after(rounds) <= self.budget * (1.0 + 1e-12),
            None => self.per_round * f64::from(rounds) <= self.budget * (1.0 + 1e-12),
        }
    }

    /// Charges one round, or refuses if it would exceed the budget.
    pub fn charge(&mut self) -> Result<()> {
        if !self.affords(self.rounds + 1) {
            let (unit, after) = match self.sampled {
                Some(_) => ("ε", self.epsilon_after(self.rounds + 1)),
                None => ("ρ", self.spent + self.per_round),
            };
            return Err(Error::Budget(format!(
                "round {} would spend {unit} = {after:.4} of a budget of {:.4}; training stops after {} rounds at ε = {:.3}",
                self.rounds + 1,
                self.budget,
                self.rounds,
                self.epsilon()
            )));
        }
        self.spent += self.per_round;
        self.rounds += 1;
        Ok(())
    }

    /// Rounds the remaining budget pays for.
    pub fn remaining_rounds(&self) -> u32 {
        // ε grows with the rounds: the last affordable count, by bisection.
        let (mut lo, mut hi) = (self.rounds, crate::job::MAX_ROUNDS.max(self.rounds));
        if !self.affords(lo) {
            return 0;
        }
        if self.affords(hi) {
            return hi - self.rounds;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.affords(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo - self.rounds
    }

    /// ε of what was spent, at δ.
    pub fn epsilon(&self) -> f64 {
        self.epsilon_after(self.rounds)
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
