//! Privacy budgets in zero-concentrated differential privacy (zCDP).
//!
//! Charges are ρ values; they add up under composition (Bun and Steinke, "Concentrated
//! Differential Privacy", TCC 2016, Lemma 2.3), and ρ-zCDP implies (ε, δ)-DP with
//! ε = ρ + 2·√(ρ·ln(1/δ)) (ibid., Proposition 1.3). A party reserves a charge before its masked
//! input leaves and never refunds it: a release that may have happened is paid for.

use serde::{Deserialize, Serialize};

/// The δ at which budgets are reported in (ε, δ).
pub const REPORT_DELTA: f64 = 1e-6;

/// ε of ρ-zCDP at `delta`.
pub fn epsilon(rho: f64, delta: f64) -> f64 {
    veil_protocol::dp::zcdp_epsilon(rho, delta)
}

/// Caps on a dataset's budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    /// Total ρ per consumer.
    pub per_consumer: Option<f64>,
    /// Total ρ over all consumers.
    pub total: Option<f64>,
}

/// What has been spent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    /// By this consumer on this dataset.
    pub consumer: f64,
    /// By everyone on this dataset.
    pub total: f64,
}

/// Why a charge does not fit.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The consumer's budget would be exceeded.
    #[error("consumer budget exhausted: spent ρ = {spent}, this job asks {charge}, cap {cap}")]
    Consumer {
        /// Already spent.
        spent: f64,
        /// Asked.
        charge: f64,
        /// Cap.
        cap: f64,
    },
    /// The dataset's total budget would be exceeded.
    #[error("dataset budget exhausted: spent ρ = {spent}, this job asks {charge}, cap {cap}")]
    Total {
        /// Already spent.
        spent: f64,
        /// Asked.
        charge: f64,
        /// Cap.
        cap: f64,
    },
    /// A charge that is not a finite, non-negative number.
    #[error("invalid charge ρ = {0}")]
    Invalid(f64),
    /// The job already took part here: running it again would release a second answer for one
    /// charge.
    #[error("job {0} already took part and was charged; a rerun needs a new job")]
    Reused(String),
    /// The dataset has taken part in as many jobs as its policy allows.
    #[error("the dataset has taken part in {0} jobs, its maximum")]
    UsesExhausted(u64),
}

/// Whether `charge` fits under `caps` given `spent`. The check and the recording of the charge
/// must happen atomically (see [`Ledger`]).
pub fn check(spent: Spent, charge: f64, caps: Caps) -> Result<(), BudgetError> {
    if !charge.is_finite() || charge < 0.0 {
        return Err(BudgetError::Invalid(charge));
    }
    // A tiny tolerance so that spending a cap in exact fractions is not refused by rounding.
    let fits = |spent: f64, cap: f64| spent + charge <= cap * (1.0 + 1e-12);
    if let Some(cap) = caps.per_consumer {
        if !fits(spent.consumer, cap) {
            return Err(BudgetError::Consumer { spent: spent.consumer, charge, cap });
        }
    }
    if let Some(cap) = caps.total {
        if !fits(spent.total, cap) {
            return Err(BudgetError::Total { spent: spent.total, charge, cap });
        }
    }
    Ok(())
}

/// A reservation request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    /// The job it pays for.
    pub job_id: String,
    /// The dataset.
    pub dataset: String,
    /// The consumer.
    pub consumer: String,
    /// ρ.
    pub rho: f64,
    /// Caps that apply.
    pub caps: Caps,
    /// How many jobs the dataset may take part in, if limited.
    pub max_uses: Option<u64>,
}

/// Where charges are kept. Implementations make [`Ledger::reserve`] atomic: two concurrent
/// reservations can never both fit where only one does.
pub trait Ledger {
    /// The storage error.
    type Error: std::error::Error;
    /// Checks the caps and the use count and records the charge, atomically. A job that was
    /// charged before is refused ([`BudgetError::Reused`]).
    fn reserve(&self, r: &Reservation) -> Result<Result<(), BudgetError>, Self::Error>;
    /// What has been spent on `dataset`, by `consumer` and in all.
    fn spent(&self, dataset: &str, consumer: &str) -> Result<Spent, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn epsilon_follows_the_zcdp_conversion() {
        // ρ = 0.5, δ = 1e-6: ε = 0.5 + 2·√(0.5·ln 1e6) ≈ 5.757.
        assert!((epsilon(0.5, 1e-6) - 5.7568).abs() < 1e-3);
        assert_eq!(epsilon(0.0, 1e-6), 0.0);
    }

    #[test]
    fn refusals_name_the_cap() {
        let caps = Caps { per_consumer: Some(1.0), total: Some(1.5) };
        assert!(check(Spent { consumer: 0.5, total: 0.5 }, 0.5, caps).is_ok());
        assert!(matches!(
            check(Spent { consumer: 0.6, total: 0.6 }, 0.5, caps),
            Err(BudgetError::Consumer { .. })
        ));
        assert!(matches!(
            check(Spent { consumer: 0.1, total: 1.2 }, 0.5, caps),
            Err(BudgetError::Total { .. })
        ));
        assert!(matches!(check(Spent::default(), f64::NAN, caps), Err(BudgetError::Invalid(_))));
        assert!(matches!(check(Spent::default(), -1.0, caps), Err(BudgetError::Invalid(_))));
    }

    proptest! {
        /// Whatever sequence of charges arrives, accepting exactly those that fit never exceeds
        /// a cap.
        #[test]
        fn accepted_charges_never_exceed_the_caps(charges in proptest::collection::vec((0.0f64..0.7, 0usize..3), 0..60)) {
            let caps = Caps { per_consumer: Some(1.0), total: Some(2.0) };
            let mut per = [0.0f64; 3];
            let mut total = 0.0;
            for (rho, c) in charges {
                if check(Spent { consumer: per[c], total }, rho, caps).is_ok() {
                    per[c] += rho;
                    total += rho;
                }
                prop_assert!(per[c] <= 1.0 + 1e-9 && total <= 2.0 + 1e-9);
            }
        }
    }
}
