//! `veil predict`: scores rows of a local CSV file with an exported model; nothing leaves the
//! machine.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ndarray::Array2;
use veil_learning::export::{MAX_FILE_BYTES, ModelFile};
use veil_learning::model::classes_of;

/// Rows scored at once, bounding memory whatever the file's length.
const CHUNK: usize = 4096;

/// Reads the model and the rows, writes one output row per input row.
pub(crate) fn predict(model: &Path, data: &Path, out: &mut impl Write) -> Result<()> {
    let mut bytes = Vec::new();
    std::fs::File::open(model)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", model.display()))?;
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
    let mut w = csv::Writer::from_writer(out);
    let classes = file.spec.classes();
    let mut header = vec!["prediction".to_string()];
    header.extend((0..classes.unwrap_or(0)).map(|c| format!("p_{c}")));
    w.write_record(&header)?;
    let mut values = Vec::with_capacity(CHUNK * columns.len());
    let mut records = reader.records().enumerate().peekable();
    while records.peek().is_some() {
        values.clear();
        for (i, record) in records.by_ref().take(CHUNK) {
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
        let rows = values.len() / columns.len();
        let x =
            Array2::from_shape_vec((rows, columns.len()), values.clone()).context("row shapes")?;
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
