//! `veil predict`: scores rows of a local CSV file with an exported model; nothing leaves the
//! machine.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ndarray::Array2;
use veil_learning::export::ModelFile;
use veil_learning::model::classes_of;

/// Reads the model and the rows, writes one output row per input row.
pub(crate) fn predict(model: &Path, data: &Path, out: &mut impl Write) -> Result<()> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let file = ModelFile::from_json(&bytes).with_context(|| format!("in {}", model.display()))?;
    let mut reader =
        csv::Reader::from_path(data).with_context(|| format!("opening {}", data.display()))?;
    let headers = reader.headers().with_context(|| format!("reading {}", data.display()))?.clone();
    let columns: Vec<usize> = file
        .features
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
    let mut values = Vec::new();
    let mut rows = 0usize;
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{} line {line}", data.display()))?;
        for (&c, name) in columns.iter().zip(&file.features) {
            let field = record.get(c).unwrap_or("");
            if field.is_empty() {
                bail!(
                    "{} line {line}: {name} is empty; the model needs every feature",
                    data.display()
                );
            }
            let v: f64 =
                field.trim().parse().ok().filter(|v: &f64| v.is_finite()).with_context(|| {
                    format!("{} line {line}: {name} = {field:?} is not a number", data.display())
                })?;
            values.push(v);
        }
        rows += 1;
    }
    let x = Array2::from_shape_vec((rows, columns.len()), values).context("row shapes")?;
    let p = file.score(x)?;
    let mut w = csv::Writer::from_writer(out);
    match file.spec.classes() {
        None => {
            w.write_record(["prediction"])?;
            for v in p.column(0) {
                w.write_record([v.to_string()])?;
            }
        }
        Some(classes) => {
            let predicted = classes_of(&file.spec, &p);
            let mut header = vec!["prediction".to_string()];
            header.extend((0..classes).map(|c| format!("p_{c}")));
            w.write_record(&header)?;
            for (row, class) in p.rows().into_iter().zip(predicted) {
                let probabilities: Vec<f64> =
                    if row.len() == 1 { vec![1.0 - row[0], row[0]] } else { row.to_vec() };
                let mut record = vec![class.to_string()];
                record.extend(probabilities.iter().map(|v| format!("{v:.6}")));
                w.write_record(&record)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}
