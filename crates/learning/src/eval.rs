//! Federated evaluation: every party reduces its held-out rows to counts that add up, so the
//! metrics come from one secure sum and no party's own score is revealed.

use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::model::{Head, Model, check_labels, classes_of};
use crate::{Error, Result};

/// Score bins for the AUC of a binary classifier, uniform in log-odds over
/// [−`AUC_LOGIT_RANGE`, `AUC_LOGIT_RANGE`], so confident scores near 0 or 1 stay apart.
pub const AUC_BINS: usize = 200;

/// Half-width of the log-odds range the AUC bins cover; scores beyond share the end bins.
pub const AUC_LOGIT_RANGE: f64 = 10.0;

fn auc_bin(p: f64) -> usize {
    let logit = (p / (1.0 - p)).ln();
    let t = ((logit + AUC_LOGIT_RANGE) / (2.0 * AUC_LOGIT_RANGE)).clamp(0.0, 1.0);
    ((t * AUC_BINS as f64) as usize).min(AUC_BINS - 1)
}

/// Additive evaluation counts of one party or of all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalCounts {
    /// Rows evaluated.
    pub rows: f64,
    /// Summed loss.
    pub loss: f64,
    /// Correctly classified rows (classifiers).
    pub correct: f64,
    /// Positives per score bin (binary classifiers).
    pub positives: Vec<f64>,
    /// Negatives per score bin (binary classifiers).
    pub negatives: Vec<f64>,
}

/// Metrics computed from summed counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: u64,
    /// Mean loss.
    pub loss: f64,
    /// Fraction classified correctly (classifiers).
    pub accuracy: Option<f64>,
    /// Area under the ROC curve from binned scores (binary classifiers); ties within a bin
    /// count one half.
    pub auc: Option<f64>,
}

impl EvalCounts {
    /// A party's counts over its held-out rows.
    pub fn of(model: &Model, x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>) -> Result<Self> {
        check_labels(&model.spec, y, x.nrows())?;
        let (loss, _) = model.loss_and_gradient(x, y)?;
        let predictions = model.predict(x)?;
        let mut counts =
            Self { rows: x.nrows() as f64, loss: loss * x.nrows() as f64, ..Self::default() };
        if model.spec.classes().is_some() {
            let predicted = classes_of(&model.spec, &predictions);
            counts.correct =
                predicted.iter().zip(y).filter(|(p, t)| **p as f64 == **t).count() as f64;
        }
        if model.spec.head() == Head::Binary {
            counts.positives = vec![0.0; AUC_BINS];
            counts.negatives = vec![0.0; AUC_BINS];
            for (p, t) in predictions.column(0).iter().zip(y) {
                let bin = auc_bin(*p);
                if *t == 1.0 {
                    counts.positives[bin] += 1.0;
                } else {
                    counts.negatives[bin] += 1.0;
                }
            }
        }
        Ok(counts)
    }

    /// The length of [`Self::to_vector`]: with the AUC bins for binary classifiers.
    pub fn vector_len(binary: bool) -> usize {
        3 + if binary { 2 * AUC_BINS } else { 0 }
    }

    /// The counts as one vector for the secure sum.
    pub fn to_vector(&self) -> Vec<f64> {
        let mut v = vec![self.rows, self.loss, self.correct];
        v.extend(&self.positives);
        v.extend(&self.negatives);
        v
    }

    /// Counts from a summed vector; `binary` says whether it carries the AUC bins.
    pub fn from_vector(v: &[f64], binary: bool) -> Result<Self> {
        let want = Self::vector_len(binary);
        if v.len() != want {
            return Err(Error::Shape(format!("{} evaluation values, expected {want}", v.len())));
        }
        let (positives, negatives) = if binary {
            (v[3..3 + AUC_BINS].to_vec(), v[3 + AUC_BINS..].to_vec())
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Self { rows: v[0], loss: v[1], correct: v[2], positives, negatives })
    }

    /// Adds another party's counts.
    pub fn add(&mut self, other: &Self) {
        self.rows += other.rows;
        self.loss += other.loss;
        self.correct += other.correct;
        if self.positives.is_empty() {
            self.positives = vec![0.0; other.positives.len()];
            self.negatives = vec![0.0; other.negatives.len()];
        }
        self.positives.iter_mut().zip(&other.positives).for_each(|(a, b)| *a += b);
        self.negatives.iter_mut().zip(&other.negatives).for_each(|(a, b)| *a += b);
    }

    /// The metrics, for a classifier when `classifier` is set.
    pub fn metrics(&self, classifier: bool) -> Metrics {
        let n = self.rows.max(1.0);
        let auc = (!self.positives.is_empty()).then(|| {
            let (pos, neg) =
                (self.positives.iter().sum::<f64>(), self.negatives.iter().sum::<f64>());
            // P(score of a positive > score of a negative), ties one half.
            let mut below = 0.0;
            let mut wins = 0.0;
            for (p, q) in self.positives.iter().zip(&self.negatives) {
                wins += p * (below + 0.5 * q);
                below += q;
            }
            if pos > 0.0 && neg > 0.0 { wins / (pos * neg) } else { f64::NAN }
        });
        Metrics {
            rows: self.rows.round() as u64,
            loss: self.loss / n,
            accuracy: classifier.then(|| self.correct / n),
            auc: auc.filter(|a| a.is_finite()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use ndarray::array;

    #[test]
    fn counts_add_up_to_the_pooled_metrics() {
        let m = Model::from_parameters(ModelSpec::LogisticRegression, 1, vec![2.0, -1.0]).unwrap();
        let (xa, ya) = (array![[0.0], [1.0], [2.0]], array![0.0, 1.0, 1.0]);
        let (xb, yb) = (array![[-1.0], [0.6]], array![0.0, 0.0]);
        let mut sum = EvalCounts::of(&m, xa.view(), ya.view()).unwrap();
        let b = EvalCounts::of(&m, xb.view(), yb.view()).unwrap();
        let through_vector: Vec<f64> =
            sum.to_vector().iter().zip(b.to_vector()).map(|(x, y)| x + y).collect();
        sum.add(&b);
        assert_eq!(EvalCounts::from_vector(&through_vector, true).unwrap(), sum);
        let pooled = EvalCounts::of(
            &m,
            array![[0.0], [1.0], [2.0], [-1.0], [0.6]].view(),
            array![0.0, 1.0, 1.0, 0.0, 0.0].view(),
        )
        .unwrap();
        let (a, b) = (sum.metrics(true), pooled.metrics(true));
        assert_eq!(a.accuracy, b.accuracy);
        assert!((a.loss - b.loss).abs() < 1e-12);
        // Scores: negatives 0.27, 0.05, 0.55; positives 0.73, 0.95: all pairs ordered.
        assert_eq!(a.auc, Some(1.0));
        assert_eq!(a.accuracy, Some(0.8));
        assert!(EvalCounts::from_vector(&[1.0], true).is_err());
        // Bins keep the scores' order, also where probabilities saturate.
        let ps = [0.0, 1e-12, 1e-6, 0.01, 0.5, 0.99, 1.0 - 1e-6, 1.0];
        assert!(ps.windows(2).all(|w| auc_bin(w[0]) <= auc_bin(w[1])));
        assert!(auc_bin(1e-4) < auc_bin(1e-3) && auc_bin(1.0 - 1e-3) < auc_bin(1.0 - 1e-4));
        assert_eq!((auc_bin(0.0), auc_bin(1.0)), (0, AUC_BINS - 1));
    }
}
