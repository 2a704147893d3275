//! The model file: everything needed to score new rows locally, as JSON that states its
//! shapes, so other tools can read the weights without this crate.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelSpec};
use crate::train::Standardizer;
use crate::{Error, Result};

/// The format tag of model files this version writes and reads.
pub const FORMAT: &str = "veil-model/1";

/// Largest model file read: 1 GiB.
pub const MAX_FILE_BYTES: usize = 1 << 30;

/// One dense layer's shape and where its numbers are in `parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerShape {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Offset of the weights, `inputs × outputs` row-major (input index major).
    pub weights_at: usize,
    /// Offset of the `outputs` biases.
    pub biases_at: usize,
    /// `relu` for hidden layers; the last layer's output is the head's input.
    pub activation: String,
}

/// How the model came to be.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Dataset name at the parties.
    pub dataset: String,
    /// Rounds trained.
    pub rounds: u32,
    /// Strategy, as given in the job.
    pub strategy: String,
    /// Parties that contributed to the last round.
    pub parties: u32,
    /// ε at `delta` spent by differentially private training, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// δ of `epsilon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Last federated evaluation (name → value).
    #[serde(default)]
    pub metrics: Vec<(String, f64)>,
}

/// A trained model as written to disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// [`FORMAT`].
    pub format: String,
    /// The model.
    pub spec: ModelSpec,
    /// Feature column names, in input order.
    pub features: Vec<String>,
    /// The label column's name.
    pub label: String,
    /// Standardisation applied to the features before the first layer.
    pub standardizer: Option<Standardizer>,
    /// The layers, input side first.
    pub layers: Vec<LayerShape>,
    /// All parameters.
    pub parameters: Vec<f64>,
    /// How it was trained.
    pub provenance: Provenance,
    /// How rows' raw columns become the inputs (`features` names the inputs then): absent
    /// when every input is a numeric column of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<FileEncoding>,
}

/// The feature columns a model file's inputs come from, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEncoding {
    /// The raw feature columns, in the job's order.
    pub columns: Vec<String>,
    /// The encoding.
    pub encoding: crate::encode::Encoding,
    /// With `encoding.clip_to_bounds`, the declared bounds of the numeric features, so that
    /// scoring clips rows as the parties clipped theirs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bounds: std::collections::BTreeMap<String, (f64, f64)>,
}

impl ModelFile {
    /// The file for a trained model.
    pub fn new(
        model: &Model,
        features: Vec<String>,
        label: String,
        standardizer: Option<Standardizer>,
        provenance: Provenance,
    ) -> Result<Self> {
        if features.len() != model.features {
            return Err(Error::Shape(format!(
                "{} feature names for a model of {} features",
                features.len(),
                model.features
            )));
        }
        let widths = model.spec.widths(model.features);
        let mut at = 0;
        let last = widths.len().saturating_sub(2);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let layer = LayerShape {
                    inputs: w[0],
                    outputs: w[1],
                    weights_at: at,
                    biases_at: at + w[0] * w[1],
                    activation: if i < last { "relu" } else { "none" }.into(),
                };
                at += w[0] * w[1] + w[1];
                layer
            })
            .collect();
        let file = Self {
            format: FORMAT.into(),
            spec: model.spec.clone(),
            features,
            label,
            standardizer,
            layers,
            parameters: model.parameters.clone(),
            provenance,
            encode: None,
        };
        file.check()?;
        Ok(file)
    }

    /// Parses and checks a model file.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(Error::Shape(format!("a model file over {MAX_FILE_BYTES} bytes")));
        }
        let file: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::Shape(format!("not a model file: {e}")))?;
        file.check()?;
        Ok(file)
    }

    /// Everything a reader relies on: the format, the shapes, offsets and activations the
    /// layers state, finite numbers everywhere (JSON has no NaN).
    fn check(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::Shape(format!(
                "model format {:?}; this version reads {FORMAT:?}",
                self.format
            )));
        }
        let model = self.model()?;
        let widths = model.spec.widths(model.features);
        let mut at = 0usize;
        let last = widths.len().saturating_sub(2);
        let consistent = self.layers.len() + 1 == widths.len()
            && self.layers.iter().zip(widths.windows(2)).enumerate().all(|(i, (l, w))| {
                let ok = l.inputs == w[0]
                    && l.outputs == w[1]
                    && l.weights_at == at
                    && l.biases_at == at + w[0] * w[1]
                    && l.activation == if i < last { "relu" } else { "none" };
                at += w[0] * w[1] + w[1];
                ok
            });
        if !consistent {
            return Err(Error::Shape("the layer shapes do not match the model".into()));
        }
        if let Some(e) = &self.encode {
            e.encoding.validate(&e.columns, &self.label)?;
            if e.encoding.clip_to_bounds {
                if let Some(f) = e.encoding.numeric(&e.columns).find(|f| !e.bounds.contains_key(*f))
                {
                    return Err(Error::Shape(format!(
                        "the model clips feature {f:?} to declared bounds the file does not carry"
                    )));
                }
            }
            if !e.encoding.impute_mean.is_empty() && self.standardizer.is_none() {
                return Err(Error::Shape(
                    "the model imputes means its file does not carry (no standardisation)".into(),
                ));
            }
            if e.encoding.inputs(&e.columns) != self.features {
                return Err(Error::Shape(
                    "the encoding of the feature columns does not give the model's inputs".into(),
                ));
            }
        }
        if let Some(s) = &self.standardizer {
            let ok = s.mean.len() == self.features.len()
                && s.scale.len() == self.features.len()
                && s.mean.iter().chain(&s.scale).all(|v| v.is_finite())
                && s.scale.iter().all(|v| *v > 0.0);
            if !ok {
                return Err(Error::Shape("the standardisation does not fit the features".into()));
            }
        }
        let p = &self.provenance;
        if !(p.metrics.iter().all(|(_, v)| v.is_finite())
            && p.epsilon.is_none_or(f64::is_finite)
            && p.delta.is_none_or(f64::is_finite))
        {
            return Err(Error::Shape("a provenance figure is not finite".into()));
        }
        Ok(())
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model file serialises")
    }

    /// The weights in the safetensors format (a little-endian header length, a JSON header,
    /// then the raw tensors), which PyTorch, NumPy and JAX tools read: `layers.{i}.weight`
    /// (outputs × inputs, as PyTorch's `nn.Linear` holds it) and `layers.{i}.bias` per layer, `standardizer.mean` and
    /// `standardizer.scale` when present, all F64; the header's metadata holds the model
    /// specification, feature names and label.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<f64>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            // Stored input-major here; PyTorch's `nn.Linear.weight` is outputs × inputs.
            let w = &self.parameters[l.weights_at..l.weights_at + l.inputs * l.outputs];
            let transposed: Vec<f64> = (0..l.outputs)
                .flat_map(|o| (0..l.inputs).map(move |j| w[j * l.outputs + o]))
                .collect();
            let b = self.parameters[l.biases_at..l.biases_at + l.outputs].to_vec();
            tensors.push((format!("layers.{i}.weight"), vec![l.outputs, l.inputs], transposed));
            tensors.push((format!("layers.{i}.bias"), vec![l.outputs], b));
        }
        if let Some(s) = &self.standardizer {
            tensors.push(("standardizer.mean".into(), vec![s.mean.len()], s.mean.clone()));
            tensors.push(("standardizer.scale".into(), vec![s.scale.len()], s.scale.clone()));
        }
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::json!({
                "format": FORMAT,
                "spec": serde_json::to_string(&self.spec).unwrap_or_default(),
                "features": serde_json::to_string(&self.features).unwrap_or_default(),
                "label": self.label,
            }),
        );
        let mut at = 0usize;
        for (name, shape, data) in &tensors {
            let end = at + data.len() * 8;
            header.insert(
                name.clone(),
                serde_json::json!({ "dtype": "F64", "shape": shape, "data_offsets": [at, end] }),
            );
            at = end;
        }
        let mut head = serde_json::Value::Object(header).to_string().into_bytes();
        // The data starts 8-byte aligned.
        while head.len() % 8 != 0 {
            head.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + head.len() + at);
        out.extend_from_slice(&(head.len() as u64).to_le_bytes());
        out.extend_from_slice(&head);
        for (_, _, data) in &tensors {
            for v in data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// The model it holds.
    pub fn model(&self) -> Result<Model> {
        Model::from_parameters(self.spec.clone(), self.features.len(), self.parameters.clone())
    }

    /// Predictions for raw (unstandardised) feature rows, as [`Model::predict`] gives them.
    pub fn score(&self, mut x: Array2<f64>) -> Result<Array2<f64>> {
        if let Some(s) = &self.standardizer {
            s.apply(&mut x)?;
        }
        self.model()?.predict(x.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn file() -> ModelFile {
        let model = Model::from_parameters(
            ModelSpec::SoftmaxRegression { classes: 3 },
            2,
            vec![1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.1, 0.2, 0.3],
        )
        .unwrap();
        let s = Standardizer { mean: vec![1.0, 2.0], scale: vec![2.0, 1.0] };
        ModelFile::new(
            &model,
            vec!["a".into(), "b".into()],
            "y".into(),
            Some(s),
            Provenance::default(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_scores() {
        let f = file();
        let back = ModelFile::from_json(f.to_json().as_bytes()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.layers[0].biases_at, 6);
        let p = back.score(array![[1.0, 2.0]]).unwrap();
        // Standardised to zeros: only the biases speak.
        let e = [0.1f64.exp(), 0.2f64.exp(), 0.3f64.exp()];
        let total: f64 = e.iter().sum();
        for (got, want) in p.row(0).iter().zip(e.iter().map(|v| v / total)) {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn safetensors_layout() {
        let f = file();
        let bytes = f.to_safetensors();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let w = &header["layers.0.weight"];
        assert_eq!(w["dtype"], "F64");
        let l = &f.layers[0];
        assert_eq!(w["shape"], serde_json::json!([l.outputs, l.inputs]));
        let at = w["data_offsets"][0].as_u64().unwrap() as usize;
        let element =
            |k: usize| f64::from_le_bytes(data[at + 8 * k..at + 8 * k + 8].try_into().unwrap());
        // Row o, column j of the stored tensor is the weight from input j to output o.
        for (o, j) in [(0, 0), (l.outputs - 1, 0), (0, l.inputs - 1)] {
            assert_eq!(element(o * l.inputs + j), f.parameters[l.weights_at + j * l.outputs + o]);
        }
        let total: usize = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(_, v)| v["data_offsets"][1].as_u64().unwrap() as usize)
            .max()
            .unwrap();
        assert_eq!(total, data.len());
        assert_eq!(header["__metadata__"]["format"], FORMAT);
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = file().to_json();
        for (from, to) in [
            ("veil-model/1", "veil-model/9"),
            ("\"outputs\": 3", "\"outputs\": 4"),
            ("0.3", "\"x\""),
            ("\"scale\": [\n      2.0", "\"scale\": [\n      0.0"),
            ("\"weights_at\": 0", "\"weights_at\": 18446744073709551615"),
            ("\"activation\": \"none\"", "\"activation\": \"relu\""),
        ] {
            assert!(good.contains(from), "{from}");
            let bad = good.replacen(from, to, 1);
            assert!(ModelFile::from_json(bad.as_bytes()).is_err(), "{from} → {to} accepted");
        }
        assert!(ModelFile::from_json(b"{").is_err());
        let mut short = file();
        short.parameters.pop();
        assert!(ModelFile::from_json(short.to_json().as_bytes()).is_err());
    }
}
