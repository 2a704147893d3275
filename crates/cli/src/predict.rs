//! `veil predict`: scores rows of a local CSV file with an exported model; nothing leaves the
//! machine.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ndarray::Array2;
use veil_learning::encode::Cell;
use veil_learning::export::{MAX_FILE_BYTES, ModelFile};
use veil_learning::model::classes_of;

/// Rows scored at once, bounding memory whatever the file's length.
const CHUNK: usize = 4096;

/// Reads the model and the rows, writes one output row per input row.
pub fn predict(model: &Path, data: &Path, out: &mut impl Write) -> Result<()> {
    let mut bytes = Vec::new();
    std::fs::File::open(model)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", model.display()))?;
    let file = ModelFile::from_json(&bytes).with_context(|| format!("in {}", model.display()))?;
    let mut reader =
        csv::Reader::from_path(data).with_context(|| format!("opening {}", data.display()))?;
    let headers = reader.headers().with_context(|| format!("reading {}", data.display()))?.clone();
    // The raw columns the inputs come from: the encoded feature columns, or the inputs
    // themselves.
    let raw = file.encode.as_ref().map_or(&file.features, |e| &e.columns);
    let columns: Vec<usize> = raw
        .iter()
        .map(|f| {
            headers.iter().position(|h| h == f).with_context(|| {
                format!(
                    "{} has no column {f:?}, which the model takes as a feature",
                    data.display()
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut w = csv::Writer::from_writer(out);
    let classes = file.spec.classes();
    let mut header = vec!["prediction".to_string()];
    header.extend((0..classes.unwrap_or(0)).map(|c| format!("p_{c}")));
    w.write_record(&header)?;
    let width = file.features.len();
    let mut values = Vec::with_capacity(CHUNK * width);
    let mut records = reader.records().enumerate().peekable();
    while records.peek().is_some() {
        values.clear();
        for (i, record) in records.by_ref().take(CHUNK) {
            let line = i + 2;
            let record = record.with_context(|| format!("{} line {line}", data.display()))?;
            if let Some(e) = &file.encode {
                // The job's encoding, as the parties computed it.
                let cells: Vec<Cell<'_>> = columns
                    .iter()
                    .map(|&c| {
                        let field = record.get(c).unwrap_or("").trim();
                        match field.parse::<f64>() {
                            _ if field.is_empty() => Cell::Null,
                            Ok(v) if v.is_finite() => Cell::Number(v),
                            _ => Cell::Text(field),
                        }
                    })
                    .collect();
                let bounds_of = |f: &str| e.bounds.get(f).copied();
                e.encoding
                    .push_clipped(&e.columns, &cells, &bounds_of, &mut values)
                    .with_context(|| format!("{} line {line}", data.display()))?;
                continue;
            }
            for (&c, name) in columns.iter().zip(&file.features) {
                let field = record.get(c).unwrap_or("");
                if field.is_empty() {
                    bail!(
                        "{} line {line}: {name} is empty; the model needs every feature",
                        data.display()
                    );
                }
                let v: f64 =
                    field.trim().parse().ok().filter(|v: &f64| v.is_finite()).with_context(
                        || {
                            format!(
                                "{} line {line}: {name} = {field:?} is not a number",
                                data.display()
                            )
                        },
                    )?;
                values.push(v);
            }
        }
        let rows = values.len() / width;
        let x = Array2::from_shape_vec((rows, width), values.clone()).context("row shapes")?;
        let p = file.score(x)?;
        match classes {
            None => {
                for v in p.column(0) {
                    w.write_record([v.to_string()])?;
                }
            }
            Some(_) => {
                for (row, class) in p.rows().into_iter().zip(classes_of(&file.spec, &p)) {
                    let probabilities: Vec<f64> =
                        if row.len() == 1 { vec![1.0 - row[0], row[0]] } else { row.to_vec() };
                    let mut record = vec![class.to_string()];
                    record.extend(probabilities.iter().map(|v| format!("{v:.6}")));
                    w.write_record(&record)?;
                }
            }
        }
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use veil_learning::encode::{Cell, Encoding};
    use veil_learning::export::{FileEncoding, Provenance};
    use veil_learning::model::{Model, ModelSpec};

    use super::*;

    /// The provenance of a model file made by hand.
    pub(super) fn provenance() -> Provenance {
        Provenance {
            dataset: "flights".into(),
            rounds: 1,
            strategy: String::new(),
            parties: 3,
            epsilon: None,
            delta: None,
            metrics: Vec::new(),
        }
    }

    /// A model trained on encoded inputs scores raw rows (text, missing values) through the
    /// encoding its file carries, exactly as the inputs encoded by hand score.
    #[test]
    fn an_encoded_model_scores_raw_rows_with_its_encoding() {
        let columns = vec!["dest".to_string(), "delay".to_string()];
        let mut categorical = BTreeMap::new();
        categorical.insert("dest".to_string(), vec!["ATL".to_string(), "LAX".to_string()]);
        let encoding = Encoding {
            categorical,
            missing_indicator: vec!["delay".into()],
            ..Encoding::default()
        };
        let inputs = encoding.inputs(&columns);
        let parameters = vec![0.5, -1.0, 2.0, 0.25, 0.1, -0.3, 0.05];
        let model = Model::from_parameters(ModelSpec::LogisticRegression, inputs.len(), parameters)
            .unwrap();
        let provenance = provenance();
        let mut file = ModelFile::new(&model, inputs, "late".into(), None, provenance).unwrap();
        file.encode = Some(FileEncoding {
            columns: columns.clone(),
            encoding: encoding.clone(),
            bounds: Default::default(),
        });
        let dir = tempfile::tempdir().unwrap();
        let (model_path, data_path) = (dir.path().join("m.json"), dir.path().join("rows.csv"));
        std::fs::write(&model_path, file.to_json()).unwrap();
        std::fs::write(&data_path, "dest,delay,other\nLAX,12,x\nSEA,,y\nATL,-3,z\n").unwrap();
        let mut out = Vec::new();
        predict(&model_path, &data_path, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // The same rows encoded by hand.
        let rows = [
            [Cell::Text("LAX"), Cell::Number(12.0)],
            [Cell::Text("SEA"), Cell::Null],
            [Cell::Text("ATL"), Cell::Number(-3.0)],
        ];
        let mut x = Vec::new();
        for r in &rows {
            encoding.push_inputs(&columns, r, &mut x).unwrap();
        }
        let x = Array2::from_shape_vec((3, 6), x).unwrap();
        let p = file.score(x).unwrap();
        for (line, row) in lines[1..].iter().zip(p.rows()) {
            // Probabilities are written with six decimals.
            let p1: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
            assert!((p1 - row[0]).abs() < 1e-6, "{line} against {row}");
        }
        // A row the encoding cannot take names its line and column.
        std::fs::write(&data_path, "dest,delay\nLAX,late\n").unwrap();
        let err = predict(&model_path, &data_path, &mut Vec::new()).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("line 2") && message.contains("delay"), "{message}");
    }
}

#[cfg(test)]
mod clip_tests {
    use veil_learning::encode::Encoding;
    use veil_learning::export::FileEncoding;
    use veil_learning::model::{Model, ModelSpec};

    use super::*;

    /// A model trained on features clipped to declared bounds scores rows clipped the same
    /// way: an outlier scores like the bound, and a missing value's 0 is clipped too.
    #[test]
    fn a_model_trained_on_clipped_features_clips_the_rows_it_scores() {
        let columns = vec!["delay".to_string()];
        let encoding = Encoding {
            missing_indicator: vec!["delay".into()],
            clip_to_bounds: true,
            ..Encoding::default()
        };
        let inputs = encoding.inputs(&columns);
        let model =
            Model::from_parameters(ModelSpec::LogisticRegression, 2, vec![0.3, -0.7, 0.1]).unwrap();
        let provenance = super::tests::provenance();
        let mut file = ModelFile::new(&model, inputs, "late".into(), None, provenance).unwrap();
        let mut bounds = std::collections::BTreeMap::new();
        bounds.insert("delay".to_string(), (5.0, 10.0));
        file.encode = Some(FileEncoding { columns, encoding, bounds });
        let dir = tempfile::tempdir().unwrap();
        let (model_path, data_path) = (dir.path().join("m.json"), dir.path().join("rows.csv"));
        std::fs::write(&model_path, file.to_json()).unwrap();
        std::fs::write(&data_path, "delay,note\n1000000,a\n10,b\n,c\n5,d\n").unwrap();
        let mut out = Vec::new();
        predict(&model_path, &data_path, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert_eq!(rows[0], rows[1], "an outlier scores like the upper bound");
        // The missing value: its 0 clipped up to 5, with the indicator set.
        assert_ne!(rows[2], rows[3], "the indicator sets the missing row apart");
        // A file that clips without carrying the bounds is refused.
        let mut bare = file.clone();
        if let Some(e) = bare.encode.as_mut() {
            e.bounds.clear();
        }
        std::fs::write(&model_path, serde_json::to_string(&bare).unwrap()).unwrap();
        assert!(predict(&model_path, &data_path, &mut Vec::new()).is_err());
    }
}
