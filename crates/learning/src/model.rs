//! Models as stacks of dense layers over one flat parameter vector, with exact gradients.
//!
//! Every built-in model is a multilayer perceptron: linear and logistic regression have no
//! hidden layer and one output, softmax regression no hidden layer and one output per class.
//! The flat vector is what a party trains, what is clipped and masked, and what the server
//! updates, so a model is its [`ModelSpec`], its feature count and that vector.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which model to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Least squares on a real target.
    LinearRegression,
    /// Binary classification; labels are 0 and 1.
    LogisticRegression,
    /// Multinomial classification; labels are `0..classes`.
    SoftmaxRegression {
        /// Number of classes (at least 2).
        classes: usize,
    },
    /// ReLU hidden layers and a softmax output.
    Mlp {
        /// Width of each hidden layer, input side first.
        hidden: Vec<usize>,
        /// Number of classes (at least 2).
        classes: usize,
    },
    /// A model a trainer program defines and trains: veil sees only its flat parameter
    /// vector, and neither scores nor evaluates it.
    Program {
        /// Length of the parameter vector (and of every update).
        parameters: usize,
    },
}

/// Largest parameter count a model may have: 2^24 (128 MiB of f64).
pub const MAX_PARAMETERS: usize = 1 << 24;

/// Widest layer a model may have (its activations are kept per row while scoring).
pub const MAX_WIDTH: usize = 1 << 14;

/// How the output layer turns scores into a loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Identity output, loss ½(ŷ − y)².
    Squared,
    /// Sigmoid output, binary cross-entropy.
    Binary,
    /// Softmax output, categorical cross-entropy.
    Categorical,
}

impl ModelSpec {
    /// Layer widths from the input to the output.
    pub fn widths(&self, features: usize) -> Vec<usize> {
        match self {
            Self::LinearRegression | Self::LogisticRegression => vec![features, 1],
            Self::SoftmaxRegression { classes } => vec![features, *classes],
            Self::Mlp { hidden, classes } => {
                let mut w = vec![features];
                w.extend(hidden);
                w.push(*classes);
                w
            }
            // No layers veil knows of.
            Self::Program { .. } => vec![features],
        }
    }

    /// The output head.
    pub fn head(&self) -> Head {
        match self {
            Self::LinearRegression | Self::Program { .. } => Head::Squared,
            Self::LogisticRegression => Head::Binary,
            Self::SoftmaxRegression { .. } | Self::Mlp { .. } => Head::Categorical,
        }
    }

    /// Number of classes for a classifier (2 for logistic regression), `None` for regression.
    pub fn classes(&self) -> Option<usize> {
        match self {
            Self::LinearRegression | Self::Program { .. } => None,
            Self::LogisticRegression => Some(2),
            Self::SoftmaxRegression { classes } | Self::Mlp { classes, .. } => Some(*classes),
        }
    }

    /// Checks the shape and returns the parameter count.
    pub fn parameter_count(&self, features: usize) -> Result<usize> {
        if features == 0 {
            return Err(Error::Shape("a model needs at least one feature".into()));
        }
        if let Self::Program { parameters } = self {
            if *parameters == 0 || *parameters > MAX_PARAMETERS {
                return Err(Error::Shape(format!(
                    "a program's model has 1 to {MAX_PARAMETERS} parameters, not {parameters}"
                )));
            }
            return Ok(*parameters);
        }
        if let Some(c) = self.classes() {
            if c < 2 {
                return Err(Error::Shape(format!("{c} classes: a classifier needs at least 2")));
            }
        }
        let widths = self.widths(features);
        if widths.contains(&0) {
            return Err(Error::Shape("a hidden layer has width 0".into()));
        }
        if let Some(w) = widths.iter().find(|w| **w > MAX_WIDTH) {
            return Err(Error::Shape(format!("a layer of width {w}: at most {MAX_WIDTH}")));
        }
        let mut total = 0usize;
        for w in widths.windows(2) {
            let layer = w[0]
                .checked_mul(w[1])
                .and_then(|n| n.checked_add(w[1]))
                .ok_or_else(|| Error::Shape("layer size overflows".into()))?;
            total = total.saturating_add(layer);
        }
        if total > MAX_PARAMETERS {
            return Err(Error::Shape(format!(
                "{total} parameters exceed the limit of {MAX_PARAMETERS}"
            )));
        }
        Ok(total)
    }
}

/// A model: its specification, feature count and parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// What it is.
    pub spec: ModelSpec,
    /// Input width.
    pub features: usize,
    /// Per layer the weights (inputs × outputs, row-major) then the biases.
    pub parameters: Vec<f64>,
}

/// The activations one forward pass keeps for the backward pass.
struct Trace {
    /// Inputs of each layer (the batch first), then the output scores.
    activations: Vec<Array2<f64>>,
}

impl Model {
    /// A fresh model: zeros for the models without hidden layers (their losses are convex),
    /// He-uniform weights and zero biases otherwise, drawn from `rng`.
    pub fn new(spec: ModelSpec, features: usize, rng: &mut impl RngCore) -> Result<Self> {
        let n = spec.parameter_count(features)?;
        let mut parameters = vec![0.0; n];
        if matches!(spec, ModelSpec::Mlp { .. }) {
            let mut at = 0;
            for w in spec.widths(features).windows(2) {
                let limit = (6.0 / w[0] as f64).sqrt();
                for p in &mut parameters[at..at + w[0] * w[1]] {
                    *p = limit * (2.0 * unit(rng) - 1.0);
                }
                at += w[0] * w[1] + w[1];
            }
        }
        Ok(Self { spec, features, parameters })
    }

    /// A model from stored parameters, checked against the specification.
    pub fn from_parameters(spec: ModelSpec, features: usize, parameters: Vec<f64>) -> Result<Self> {
        let n = spec.parameter_count(features)?;
        if parameters.len() != n {
            return Err(Error::Shape(format!(
                "{} parameters given, the model has {n}",
                parameters.len()
            )));
        }
        if parameters.iter().any(|p| !p.is_finite()) {
            return Err(Error::Shape("a parameter is not finite".into()));
        }
        Ok(Self { spec, features, parameters })
    }

    fn layers(&self) -> Vec<(ArrayView2<'_, f64>, ArrayView1<'_, f64>)> {
        let mut at = 0;
        self.spec
            .widths(self.features)
            .windows(2)
            .map(|w| {
                let weights = &self.parameters[at..at + w[0] * w[1]];
                let biases = &self.parameters[at + w[0] * w[1]..at + w[0] * w[1] + w[1]];
                at += w[0] * w[1] + w[1];
                (
                    ArrayView2::from_shape((w[0], w[1]), weights)
                        .expect("parameter_count checked the layout"),
                    ArrayView1::from(biases),
                )
            })
            .collect()
    }

    fn check_input(&self, x: ArrayView2<'_, f64>) -> Result<()> {
        if matches!(self.spec, ModelSpec::Program { .. }) {
            return Err(Error::Settings(
                "a trainer program's model is trained and scored by its program, not by veil"
                    .into(),
            ));
        }
        if x.ncols() != self.features {
            return Err(Error::Shape(format!(
                "{} feature columns given, the model takes {}",
                x.ncols(),
                self.features
            )));
        }
        Ok(())
    }

    fn forward(&self, x: ArrayView2<'_, f64>) -> Trace {
        let layers = self.layers();
        let mut activations = vec![x.to_owned()];
        for (i, (w, b)) in layers.iter().enumerate() {
            let mut z = activations[i].dot(w) + b;
            if i + 1 < layers.len() {
                z.mapv_inplace(|v| v.max(0.0));
            }
            activations.push(z);
        }
        Trace { activations }
    }

    /// Predicted outputs: the value for regression, P(y = 1) for logistic regression, class
    /// probabilities (one row per example) for the softmax models.
    pub fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array2<f64>> {
        self.check_input(x)?;
        let mut scores = self.forward(x).activations.pop().expect("at least the input");
        match self.spec.head() {
            Head::Squared => {}
            Head::Binary => scores.mapv_inplace(sigmoid),
            Head::Categorical => softmax_rows(&mut scores),
        }
        Ok(scores)
    }

    /// Mean loss over the batch and its exact gradient with respect to the parameters.
    ///
    /// `y` holds the target for regression and the class index for classifiers.
    pub fn loss_and_gradient(
        &self,
        x: ArrayView2<'_, f64>,
        y: ArrayView1<'_, f64>,
    ) -> Result<(f64, Vec<f64>)> {
        let rows = x.nrows().max(1) as f64;
        let (loss, trace, deltas) = self.backward(x, y)?;
        let mut gradient = self.gradient(&trace, &deltas, None);
        gradient.iter_mut().for_each(|g| *g /= rows);
        Ok((loss / rows, gradient))
    }

    /// The sum over the rows of each row's gradient of its loss, clipped to L2 norm `clip`
    /// (record-level DP-SGD), with the summed loss and how many rows were clipped.
    ///
    /// A dense layer's gradient for one row is the outer product of the layer's input `a` and
    /// the loss's gradient `δ` at its output, whose norm is `‖a‖·‖δ‖` (and `‖δ‖` for its
    /// biases): so every row's norm comes from one forward and one backward pass over the
    /// batch, and the clipped sum is one product per layer with each row's `δ` scaled
    /// (Goodfellow, "Efficient per-example gradient computations", 2015).
    pub fn clipped_gradient_sum(
        &self,
        x: ArrayView2<'_, f64>,
        y: ArrayView1<'_, f64>,
        clip: f64,
    ) -> Result<ClippedSum> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(Error::Settings(format!("the clipping norm must be positive, not {clip}")));
        }
        let (loss, mut trace, mut deltas) = self.backward(x, y)?;
        let mut squared = Array1::<f64>::zeros(x.nrows());
        for (input, delta) in trace.activations.iter().zip(&deltas) {
            for ((s, a), d) in squared.iter_mut().zip(input.rows()).zip(delta.rows()) {
                let (a2, d2) = (a.dot(&a), d.dot(&d));
                *s += (a2 + 1.0) * d2;
            }
        }
        // A row whose gradient is not finite (a model crafted to overflow on some rows) counts
        // as clipped to nothing: whatever the model, the step succeeds and each row's
        // contribution stays within the norm, so whether a row was sampled shows nowhere but in
        // the noised sum.
        let mut clipped = 0;
        let scale = squared.mapv(|s| {
            let norm = s.sqrt();
            if norm <= clip {
                1.0
            } else {
                clipped += 1;
                if norm.is_finite() { clip / norm } else { 0.0 }
            }
        });
        let dropped: Vec<usize> = (0..x.nrows()).filter(|&r| scale[r] == 0.0).collect();
        for r in dropped {
            for m in trace.activations.iter_mut().chain(deltas.iter_mut()) {
                m.row_mut(r).fill(0.0);
            }
        }
        let gradient = self.gradient(&trace, &deltas, Some(&scale));
        // The loss is for the party's own log; it is never part of the step.
        Ok(ClippedSum { gradient, loss, rows: x.nrows(), clipped })
    }

    /// The forward pass and the backward pass: the summed loss, the trace and the gradient of
    /// each row's loss with respect to each layer's output scores (one row per example).
    fn backward(
        &self,
        x: ArrayView2<'_, f64>,
        y: ArrayView1<'_, f64>,
    ) -> Result<(f64, Trace, Vec<Array2<f64>>)> {
        self.check_input(x)?;
        check_labels(&self.spec, y, x.nrows())?;
        let mut trace = self.forward(x);
        let mut scores = trace.activations.pop().expect("at least the input");
        let loss = output_loss(self.spec.head(), &mut scores, y);
        let layers = self.layers();
        let mut deltas = vec![scores];
        for i in (1..layers.len()).rev() {
            let delta = deltas.last().expect("one delta per layer after it");
            let mut back = delta.dot(&layers[i].0.t());
            // The input of layer i is the ReLU of the previous scores: zero where it cut.
            back.zip_mut_with(&trace.activations[i], |d, a| {
                if *a <= 0.0 {
                    *d = 0.0;
                }
            });
            deltas.push(back);
        }
        deltas.reverse();
        Ok((loss, trace, deltas))
    }

    /// The flat gradient from the backward pass's deltas, each row's weighted by `scale`.
    fn gradient(
        &self,
        trace: &Trace,
        deltas: &[Array2<f64>],
        scale: Option<&Array1<f64>>,
    ) -> Vec<f64> {
        let mut gradient = Vec::with_capacity(self.parameters.len());
        for (input, delta) in trace.activations.iter().zip(deltas) {
            let scaled;
            let delta = match scale {
                Some(c) => {
                    scaled = delta * &c.view().insert_axis(Axis(1));
                    &scaled
                }
                None => delta,
            };
            gradient.extend(input.t().dot(delta).iter());
            gradient.extend(delta.sum_axis(Axis(0)).iter());
        }
        gradient
    }
}

/// One party's clipped per-row gradients summed over a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ClippedSum {
    /// Σ over the rows of each row's gradient clipped to the norm.
    pub gradient: Vec<f64>,
    /// The summed loss.
    pub loss: f64,
    /// Rows in the batch.
    pub rows: usize,
    /// Rows whose gradient was longer than the norm.
    pub clipped: usize,
}

/// Checks labels: as many as rows, finite, and valid classes for a classifier.
pub fn check_labels(spec: &ModelSpec, y: ArrayView1<'_, f64>, rows: usize) -> Result<()> {
    if y.len() != rows {
        return Err(Error::Shape(format!("{} labels for {rows} rows", y.len())));
    }
    match spec.classes() {
        None => {
            if let Some(v) = y.iter().find(|v| !v.is_finite()) {
                return Err(Error::Shape(format!("target {v} is not finite")));
            }
        }
        Some(c) => {
            if let Some(v) = y.iter().find(|v| !(v.fract() == 0.0 && **v >= 0.0 && **v < c as f64))
            {
                return Err(Error::Shape(format!(
                    "label {v} is not a class of this model (0 to {})",
                    c - 1
                )));
            }
        }
    }
    Ok(())
}

/// Turns the output scores into the per-row gradient of the summed loss (in place) and
/// returns the summed loss.
fn output_loss(head: Head, scores: &mut Array2<f64>, y: ArrayView1<'_, f64>) -> f64 {
    let mut loss = 0.0;
    match head {
        Head::Squared => {
            for (mut row, t) in scores.rows_mut().into_iter().zip(y) {
                let d = row[0] - t;
                loss += 0.5 * d * d;
                row[0] = d;
            }
        }
        Head::Binary => {
            for (mut row, t) in scores.rows_mut().into_iter().zip(y) {
                let s = row[0];
                // log(1 + e^s) − t·s, computed without overflow.
                loss += s.max(0.0) + (-s.abs()).exp().ln_1p() - t * s;
                row[0] = sigmoid(s) - t;
            }
        }
        Head::Categorical => {
            for (mut row, t) in scores.rows_mut().into_iter().zip(y) {
                let class = *t as usize;
                let max = row.fold(f64::NEG_INFINITY, |m, v| m.max(*v));
                let log_norm = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                loss += log_norm - row[class];
                row.mapv_inplace(|v| (v - log_norm).exp());
                row[class] -= 1.0;
            }
        }
    }
    loss
}

/// A uniform draw from [0, 1) with 53 random bits.
pub(crate) fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn sigmoid(s: f64) -> f64 {
    if s >= 0.0 {
        1.0 / (1.0 + (-s).exp())
    } else {
        let e = s.exp();
        e / (1.0 + e)
    }
}

fn softmax_rows(scores: &mut Array2<f64>) {
    for mut row in scores.rows_mut() {
        let max = row.fold(f64::NEG_INFINITY, |m, v| m.max(*v));
        row.mapv_inplace(|v| (v - max).exp());
        let total = row.sum();
        row /= total;
    }
}

/// Predicted class per row (the most probable; for logistic regression, P ≥ ½).
pub fn classes_of(spec: &ModelSpec, predictions: &Array2<f64>) -> Array1<usize> {
    match spec.head() {
        Head::Squared => Array1::zeros(predictions.nrows()),
        Head::Binary => predictions.column(0).mapv(|p| usize::from(p >= 0.5)),
        Head::Categorical => predictions
            .rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |best, (i, &p)| {
                            if p > best.1 { (i, p) } else { best }
                        },
                    )
                    .0
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn data(rng: &mut ChaCha20Rng, rows: usize, features: usize) -> Array2<f64> {
        Array2::from_shape_fn((rows, features), |_| 4.0 * unit(rng) - 2.0)
    }

    /// Central differences agree with the analytic gradient for every model and parameter.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let x = data(&mut rng, 7, 4);
        let specs = [
            (ModelSpec::LinearRegression, array![0.5, -1.0, 2.0, 0.0, 1.5, -0.3, 0.9]),
            (ModelSpec::LogisticRegression, array![0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
            (
                ModelSpec::SoftmaxRegression { classes: 3 },
                array![0.0, 2.0, 1.0, 1.0, 2.0, 0.0, 1.0],
            ),
            (
                ModelSpec::Mlp { hidden: vec![5, 3], classes: 3 },
                array![2.0, 0.0, 1.0, 1.0, 2.0, 0.0, 0.0],
            ),
        ];
        for (spec, y) in specs {
            let mut model = Model::new(spec.clone(), 4, &mut rng).unwrap();
            for p in &mut model.parameters {
                *p = 2.0 * unit(&mut rng) - 1.0;
            }
            let (_, g) = model.loss_and_gradient(x.view(), y.view()).unwrap();
            let h = 1e-6;
            for (i, analytic) in g.iter().enumerate() {
                let mut up = model.clone();
                up.parameters[i] += h;
                let mut down = model.clone();
                down.parameters[i] -= h;
                let numeric = (up.loss_and_gradient(x.view(), y.view()).unwrap().0
                    - down.loss_and_gradient(x.view(), y.view()).unwrap().0)
                    / (2.0 * h);
                assert!(
                    (numeric - analytic).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{spec:?} parameter {i}: numeric {numeric}, analytic {analytic}"
                );
            }
        }
    }

    /// The clipped sum equals clipping each row's own gradient and adding them up, for every
    /// model: the norms from the layer products are the norms of the rows' gradients.
    #[test]
    fn clipped_sums_equal_rows_clipped_one_by_one() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let x = data(&mut rng, 9, 4);
        let specs = [
            (ModelSpec::LinearRegression, array![0.5, -1.0, 2.0, 0.0, 1.5, -0.3, 0.9, 3.0, -2.0]),
            (ModelSpec::LogisticRegression, array![0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
            (
                ModelSpec::Mlp { hidden: vec![6, 3], classes: 3 },
                array![2.0, 0.0, 1.0, 1.0, 2.0, 0.0, 0.0, 1.0, 2.0],
            ),
        ];
        for (spec, y) in specs {
            let mut model = Model::new(spec.clone(), 4, &mut rng).unwrap();
            for p in &mut model.parameters {
                *p = 2.0 * unit(&mut rng) - 1.0;
            }
            for clip in [0.05, 0.7, 1e9] {
                let got = model.clipped_gradient_sum(x.view(), y.view(), clip).unwrap();
                let mut want = vec![0.0; model.parameters.len()];
                let mut clipped = 0;
                for r in 0..x.nrows() {
                    let row = x.select(Axis(0), &[r]);
                    let label = y.select(Axis(0), &[r]);
                    let (_, mut g) = model.loss_and_gradient(row.view(), label.view()).unwrap();
                    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                    if norm > clip {
                        clipped += 1;
                        g.iter_mut().for_each(|v| *v *= clip / norm);
                    }
                    want.iter_mut().zip(&g).for_each(|(w, v)| *w += v);
                }
                assert_eq!((got.rows, got.clipped), (9, clipped), "{spec:?} at {clip}");
                for (a, b) in got.gradient.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-9 * (1.0 + b.abs()),
                        "{spec:?} at {clip}: {a} vs {b}"
                    );
                }
            }
            assert!(model.clipped_gradient_sum(x.view(), y.view(), 0.0).is_err());
        }
    }

    #[test]
    fn shapes_and_labels_are_checked() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let m = Model::new(ModelSpec::SoftmaxRegression { classes: 3 }, 2, &mut rng).unwrap();
        assert_eq!(m.parameters.len(), 2 * 3 + 3);
        let x = array![[1.0, 2.0]];
        assert!(matches!(m.loss_and_gradient(x.view(), array![3.0].view()), Err(Error::Shape(_))));
        assert!(matches!(m.loss_and_gradient(x.view(), array![0.5].view()), Err(Error::Shape(_))));
        assert!(m.predict(array![[1.0, 2.0, 3.0]].view()).is_err());
        assert!(Model::new(ModelSpec::Mlp { hidden: vec![0], classes: 2 }, 2, &mut rng).is_err());
        assert!(Model::new(ModelSpec::SoftmaxRegression { classes: 1 }, 2, &mut rng).is_err());
        assert!(
            Model::new(ModelSpec::Mlp { hidden: vec![1 << 20, 1 << 20], classes: 2 }, 2, &mut rng)
                .is_err()
        );
        assert!(Model::from_parameters(ModelSpec::LinearRegression, 2, vec![0.0; 2]).is_err());
        assert!(
            Model::from_parameters(ModelSpec::LinearRegression, 2, vec![f64::NAN, 0.0, 0.0])
                .is_err()
        );
    }

    #[test]
    fn probabilities_are_probabilities() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let x = data(&mut rng, 5, 3) * 100.0;
        let m = Model::new(ModelSpec::Mlp { hidden: vec![8], classes: 4 }, 3, &mut rng).unwrap();
        let p = m.predict(x.view()).unwrap();
        for row in p.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-12 && row.iter().all(|v| v.is_finite()));
        }
        let l =
            Model::from_parameters(ModelSpec::LogisticRegression, 1, vec![1000.0, 0.0]).unwrap();
        let (loss, g) =
            l.loss_and_gradient(array![[1.0], [-1.0]].view(), array![0.0, 1.0].view()).unwrap();
        assert!(loss.is_finite() && (loss - 1000.0).abs() < 1e-9, "{loss}");
        assert!(g.iter().all(|v| v.is_finite()));
    }
}
