//! Features declared in the job, computed at each party from its raw columns: categorical
//! columns one-hot over their declared values (then `(other)` and `(null)`), numeric columns
//! with an indicator for missing values, and a text label mapped to classes. Every party turns
//! the same cells into the same inputs, and a model file carries the encoding, so scoring rows
//! later (`veil predict`) computes them the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The input of a value outside a categorical column's declared values.
pub const OTHER: &str = "(other)";
/// The input of a missing categorical value.
pub const NULL: &str = "(null)";
/// The indicator input of a missing numeric value.
pub const MISSING: &str = "(missing)";
/// Most declared values of one categorical column.
pub const MAX_VALUES: usize = 1_000;

/// One raw cell, as a party reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    /// Missing.
    Null,
    /// A number.
    Number(f64),
    /// Text.
    Text(&'a str),
}

/// How a job's raw columns become the model's inputs and its label a class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// Categorical features by column, with their declared values: one input per value, then
    /// `(other)` and `(null)`, one-hot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categorical: BTreeMap<String, Vec<String>>,
    /// Numeric features whose missing values become 0 with an indicator input
    /// (`column=(missing)`) instead of refusing the row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_indicator: Vec<String>,
    /// Numeric features whose missing values take the feature's mean over every party's
    /// present values, from the secure sum of moments (the midpoint of the declared bounds
    /// when the job standardises by them): the job must standardise. With `missing_indicator`
    /// too, the indicator input follows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impute_mean: Vec<String>,
    /// A text (or numeric) label mapped to classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelMap>,
    /// Clip every numeric feature to the bounds its party declares for it (each party must
    /// declare them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clip_to_bounds: bool,
}

/// A label's classes: `positive = "bad"` (class 1 for that value, 0 for any other), or
/// `classes = ["low", "mid", "high"]` (the position of the value; another value is an error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMap {
    /// The value of class 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive: Option<String>,
    /// The values of classes 0, 1, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

/// A number's text, the way a categorical or label value is compared: integers without a
/// fraction.
fn text_of(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x}") }
}

/// The key a categorical or label value is compared by, the same whatever type a party
/// declares the column as: trimmed text, and a finite number (or text that reads as one) by
/// its shortest text (`"1.0"`, `" 1 "` and the number 1 are all `"1"`). `None` for a missing
/// value.
pub fn key_of(cell: Cell<'_>) -> Option<String> {
    match cell {
        Cell::Null => None,
        Cell::Number(x) => Some(text_of(x)),
        Cell::Text(t) => {
            let t = t.trim();
            match t.parse::<f64>() {
                Ok(x) if x.is_finite() => Some(text_of(x)),
                _ => Some(t.to_string()),
            }
        }
    }
}

/// A declared value's key (see [`key_of`]).
fn declared_key(value: &str) -> String {
    key_of(Cell::Text(value)).unwrap_or_default()
}

impl Encoding {
    /// Whether the encoding changes nothing (every feature numeric and complete, a numeric
    /// label).
    pub fn is_empty(&self) -> bool {
        self.categorical.is_empty()
            && self.missing_indicator.is_empty()
            && self.impute_mean.is_empty()
            && self.label.is_none()
            && !self.clip_to_bounds
    }

    /// The numeric features (those not categorical).
    pub fn numeric<'a>(&'a self, features: &'a [String]) -> impl Iterator<Item = &'a String> {
        features.iter().filter(|f| !self.categorical.contains_key(*f))
    }

    /// Checks the encoding against the job's features and label.
    pub fn validate(&self, features: &[String], label: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Settings(m));
        for (column, values) in &self.categorical {
            if !features.contains(column) {
                return bad(format!("categorical column {column:?} is not among the features"));
            }
            if values.is_empty() || values.len() > MAX_VALUES {
                return bad(format!(
                    "categorical column {column:?} needs 1 to {MAX_VALUES} declared values"
                ));
            }
            let distinct: std::collections::BTreeSet<String> =
                values.iter().map(|v| declared_key(v)).collect();
            if distinct.len() != values.len() || values.iter().any(|v| v == OTHER || v == NULL) {
                return bad(format!(
                    "categorical column {column:?} declares a value twice (as text or as a number), or {OTHER} or {NULL}"
                ));
            }
        }
        for (list, column) in self
            .missing_indicator
            .iter()
            .map(|c| ("missing_indicator", c))
            .chain(self.impute_mean.iter().map(|c| ("impute_mean", c)))
        {
            if !features.contains(column) || self.categorical.contains_key(column) {
                return bad(format!(
                    "{list} column {column:?} must be a numeric feature of the job"
                ));
            }
        }
        if let Some(map) = &self.label {
            match (&map.positive, &map.classes) {
                (Some(p), None) if !p.is_empty() => {}
                (None, Some(c)) if c.len() >= 2 => {
                    let distinct: std::collections::BTreeSet<String> =
                        c.iter().map(|v| declared_key(v)).collect();
                    if distinct.len() != c.len() {
                        return bad(format!("label {label:?} names a class twice"));
                    }
                }
                _ => {
                    return bad(format!(
                        "label {label:?}: give either positive = \"value\" or classes = [two or more values]"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The model's inputs, named, in order: a numeric feature is one input (and its missing
    /// indicator, `column=(missing)`, after it if declared); a categorical one an input per
    /// declared value (`column=value`), then `column=(other)` and `column=(null)`.
    pub fn inputs(&self, features: &[String]) -> Vec<String> {
        let mut inputs = Vec::new();
        for f in features {
            match self.categorical.get(f) {
                Some(values) => {
                    inputs.extend(
                        values
                            .iter()
                            .chain([&OTHER.to_string(), &NULL.to_string()])
                            .map(|v| format!("{f}={v}")),
                    );
                }
                None => {
                    inputs.push(f.clone());
                    if self.missing_indicator.contains(f) {
                        inputs.push(format!("{f}={MISSING}"));
                    }
                }
            }
        }
        inputs
    }

    /// Each input's bounds, from the declared bounds of the numeric features (`None` when one
    /// has none): one-hot inputs and indicators lie in [0, 1].
    pub fn input_bounds(
        &self,
        features: &[String],
        bounds_of: impl Fn(&str) -> Option<(f64, f64)>,
    ) -> Option<Vec<(f64, f64)>> {
        let mut bounds = Vec::new();
        for f in features {
            match self.categorical.get(f) {
                Some(values) => bounds.extend(std::iter::repeat_n((0.0, 1.0), values.len() + 2)),
                None => {
                    bounds.push(bounds_of(f)?);
                    if self.missing_indicator.contains(f) {
                        bounds.push((0.0, 1.0));
                    }
                }
            }
        }
        Some(bounds)
    }

    /// Appends the inputs of one row's feature cells (in the features' order) to `out`; a
    /// missing or non-numeric cell of a plain numeric feature is an error naming the feature.
    pub fn push_inputs(
        &self,
        features: &[String],
        cells: &[Cell<'_>],
        out: &mut Vec<f64>,
    ) -> Result<()> {
        self.push_clipped(features, cells, &|_| None, out)
    }

    /// As [`Self::push_inputs`]; with `clip_to_bounds`, each numeric feature's value (an
    /// imputed 0 included) is clipped to `bounds_of(feature)`, which every numeric feature
    /// must then have.
    pub fn push_clipped(
        &self,
        features: &[String],
        cells: &[Cell<'_>],
        bounds_of: &dyn Fn(&str) -> Option<(f64, f64)>,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        let clip = |f: &str, x: f64| -> Result<f64> {
            if !self.clip_to_bounds {
                return Ok(x);
            }
            match bounds_of(f) {
                Some((lo, hi)) => Ok(x.clamp(lo, hi)),
                None => Err(Error::Settings(format!(
                    "feature {f:?} is clipped to declared bounds, and none are declared"
                ))),
            }
        };
        for (f, cell) in features.iter().zip(cells) {
            if let Some(values) = self.categorical.get(f) {
                let slot = match key_of(*cell) {
                    None => values.len() + 1,
                    Some(k) => {
                        values.iter().position(|v| declared_key(v) == k).unwrap_or(values.len())
                    }
                };
                out.extend((0..values.len() + 2).map(|i| if i == slot { 1.0 } else { 0.0 }));
                continue;
            }
            let indicator = self.missing_indicator.contains(f);
            // A missing value to impute is NaN until the standardisation gives it the mean.
            let missing = if self.impute_mean.contains(f) { f64::NAN } else { clip(f, 0.0)? };
            match (cell, indicator) {
                (Cell::Number(x), false) => out.push(clip(f, *x)?),
                (Cell::Number(x), true) => out.extend([clip(f, *x)?, 0.0]),
                (Cell::Null, true) => out.extend([missing, 1.0]),
                (Cell::Null, false) if self.impute_mean.contains(f) => out.push(missing),
                (Cell::Null, false) => {
                    return Err(Error::Shape(format!(
                        "feature {f:?} has a missing value (declare it in impute_mean or missing_indicator, or make it categorical)"
                    )));
                }
                (Cell::Text(_), _) => {
                    return Err(Error::Shape(format!(
                        "feature {f:?} holds text (declare it categorical with its values)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The class of one row's label cell.
    pub fn label_of(&self, label: &str, cell: Cell<'_>) -> Result<f64> {
        if let (Cell::Number(x), None) = (cell, &self.label) {
            return Ok(x);
        }
        let Some(text) = key_of(cell) else {
            return Err(Error::Shape(format!("label {label:?} has a missing value")));
        };
        match &self.label {
            None => Err(Error::Shape(format!(
                "label {label:?} holds text (map it to classes with positive = … or classes = […])"
            ))),
            Some(LabelMap { positive: Some(p), .. }) => {
                Ok(if text == declared_key(p) { 1.0 } else { 0.0 })
            }
            Some(LabelMap { classes: Some(c), .. }) => {
                match c.iter().position(|v| declared_key(v) == text) {
                    Some(i) => Ok(i as f64),
                    None => Err(Error::Shape(format!(
                        "label {label:?} holds a value outside its {} classes",
                        c.len()
                    ))),
                }
            }
            Some(_) => Err(Error::Settings(format!("label {label:?} has no classes"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding() -> (Encoding, Vec<String>) {
        let mut categorical = BTreeMap::new();
        categorical.insert("purpose".to_string(), vec!["car".to_string(), "education".to_string()]);
        let e = Encoding {
            categorical,
            missing_indicator: vec!["income".into()],
            impute_mean: Vec::new(),
            label: Some(LabelMap { positive: Some("bad".into()), classes: None }),
            clip_to_bounds: false,
        };
        (e, vec!["age".into(), "purpose".into(), "income".into()])
    }

    #[test]
    fn rows_become_one_hot_inputs_with_indicators_and_text_labels_classes() {
        let (e, features) = encoding();
        e.validate(&features, "risk").unwrap();
        assert_eq!(
            e.inputs(&features),
            [
                "age",
                "purpose=car",
                "purpose=education",
                "purpose=(other)",
                "purpose=(null)",
                "income",
                "income=(missing)"
            ]
        );
        let mut out = Vec::new();
        let row = [Cell::Number(30.0), Cell::Text(" education "), Cell::Null];
        e.push_inputs(&features, &row, &mut out).unwrap();
        let row = [Cell::Number(41.0), Cell::Text("boat"), Cell::Number(2.5)];
        e.push_inputs(&features, &row, &mut out).unwrap();
        let row = [Cell::Number(52.0), Cell::Null, Cell::Number(1.0)];
        e.push_inputs(&features, &row, &mut out).unwrap();
        assert_eq!(
            out,
            [
                30.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, //
                41.0, 0.0, 0.0, 1.0, 0.0, 2.5, 0.0, //
                52.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0
            ]
        );
        assert_eq!(e.label_of("risk", Cell::Text("bad")).unwrap(), 1.0);
        assert_eq!(e.label_of("risk", Cell::Text("good")).unwrap(), 0.0);
        assert!(e.label_of("risk", Cell::Null).is_err());
        let bounds = e.input_bounds(&features, |c| (c != "purpose").then_some((0.0, 100.0)));
        assert_eq!(bounds.unwrap().len(), 7);
        assert!(e.input_bounds(&features, |_| None).is_none());
    }

    #[test]
    fn cells_the_encoding_cannot_take_are_errors_naming_the_column_not_the_value() {
        let (e, features) = encoding();
        let mut out = Vec::new();
        let missing = [Cell::Null, Cell::Text("car"), Cell::Number(1.0)];
        let err = e.push_inputs(&features, &missing, &mut out).unwrap_err().to_string();
        assert!(err.contains("\"age\"") && err.contains("missing_indicator"), "{err}");
        let text = [Cell::Text("secret"), Cell::Text("car"), Cell::Number(1.0)];
        let err = e.push_inputs(&features, &text, &mut out).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        let classes = Encoding {
            label: Some(LabelMap { positive: None, classes: Some(vec!["a".into(), "b".into()]) }),
            ..Encoding::default()
        };
        assert_eq!(classes.label_of("y", Cell::Text("b")).unwrap(), 1.0);
        let err = classes.label_of("y", Cell::Text("zzz")).unwrap_err().to_string();
        assert!(!err.contains("zzz"), "{err}");
        assert!(Encoding::default().label_of("y", Cell::Text("a")).is_err());
        // Declarations that cannot be encoded are refused.
        let mut wrong = e.clone();
        wrong.categorical.insert("nope".into(), vec!["x".into()]);
        assert!(wrong.validate(&features, "risk").is_err());
        let mut twice = e.clone();
        twice.categorical.insert("purpose".into(), vec!["car".into(), "car".into()]);
        assert!(twice.validate(&features, "risk").is_err());
        let both = Encoding {
            label: Some(LabelMap {
                positive: Some("a".into()),
                classes: Some(vec!["a".into(), "b".into()]),
            }),
            ..Encoding::default()
        };
        assert!(both.validate(&features, "risk").is_err());
    }
}
