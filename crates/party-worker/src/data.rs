//! Reading a party's own rows: CSV files streamed through the job's local aggregate.

use veil_analytics::{AnalyticsError, ColumnType, Plan, Value};

use crate::config::DatasetConfig;

/// Why a dataset could not be aggregated. Every variant names the file, and where it applies
/// the row (line number in the file) and column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file cannot be opened or read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// A declared column is missing from the header.
    #[error(
        "{file}: column {column:?} is declared in the party's configuration but missing from the header"
    )]
    MissingColumn {
        /// The file.
        file: String,
        /// The column.
        column: String,
    },
    /// A cell does not parse as its column's type. The message (which reaches the consumer in a
    /// refusal) names the place but not the value; the value is for the party's own log.
    #[error("{file}, row {row}, column {column:?}: the value is not {expected}")]
    Cell {
        /// The file.
        file: String,
        /// Line number.
        row: u64,
        /// The column.
        column: String,
        /// The cell, cut to 40 characters.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The rows do not fit the job.
    #[error("{file}: {source}")]
    Aggregate {
        /// The file.
        file: String,
        /// Why.
        source: AnalyticsError,
    },
}

fn parse_cell(raw: &str, ty: ColumnType) -> Result<Value<'_>, &'static str> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    match ty {
        ColumnType::String => Ok(Value::Text(raw)),
        ColumnType::Int => {
            raw.parse::<i64>().map(|v| Value::Number(v as f64)).map_err(|_| "an integer")
        }
        ColumnType::Float => match raw.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Value::Number(v)),
            _ => Err("a finite number"),
        },
    }
}

/// Streams the dataset's CSV file through `plan` and returns the party's vector (noised, for a
/// differentially private job, with randomness from `noise_seed`).
pub fn aggregate_csv(
    dataset: &DatasetConfig,
    plan: &Plan,
    noise_seed: [u8; 32],
) -> Result<Vec<u64>, DataError> {
    let file = dataset.path.display().to_string();
    let read_error = |e: csv::Error| DataError::Read { file: file.clone(), message: e.to_string() };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_path(&dataset.path)
        .map_err(read_error)?;
    let headers = reader.headers().map_err(read_error)?.clone();
    let schema = dataset.schema();
    let mut positions = Vec::new();
    for index in plan.needed_columns() {
        let (name, ty) = &schema.columns[index];
        let pos = headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| DataError::MissingColumn { file: file.clone(), column: name.clone() })?;
        positions.push((index, pos, *ty, name));
    }
    let mut aggregate = plan.aggregate(noise_seed);
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(read_error(e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let mut row = vec![Value::Null; schema.columns.len()];
        for &(index, pos, ty, name) in &positions {
            let raw = record.get(pos).unwrap_or("");
            row[index] = parse_cell(raw, ty).map_err(|expected| DataError::Cell {
                file: file.clone(),
                row: line,
                column: name.clone(),
                value: raw.chars().take(40).collect(),
                expected,
            })?;
        }
        aggregate
            .push_row(&row)
            .map_err(|source| DataError::Aggregate { file: file.clone(), source })?;
    }
    Ok(aggregate.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use veil_analytics::JobSpec;

    fn dataset(dir: &std::path::Path, text: &str) -> DatasetConfig {
        let path = dir.join("d.csv");
        std::fs::write(&path, text).unwrap();
        let mut columns = BTreeMap::new();
        columns.insert("x".to_string(), ColumnType::Float);
        columns.insert("n".to_string(), ColumnType::Int);
        DatasetConfig {
            name: "d".into(),
            path,
            columns,
            grade: Default::default(),
            tags: Default::default(),
            policy: Default::default(),
            bounds: Default::default(),
            domains: Default::default(),
        }
    }

    fn plan(d: &DatasetConfig) -> Plan {
        let spec = JobSpec::parse(
            "dataset = \"d\"\n[[columns]]\nname = \"x\"\nmin = 0\nmax = 10\n[[columns]]\nname = \"n\"\nmin = 0\nmax = 10",
        )
        .unwrap();
        Plan::new(&spec, &d.schema()).unwrap()
    }

    #[test]
    fn bad_cells_name_file_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let d = dataset(dir.path(), "x,n,other\n1.5,2,a\n,3,b\n2.0,x7,c\n");
        let e = aggregate_csv(&d, &plan(&d), [0; 32]).unwrap_err().to_string();
        assert!(e.ends_with("d.csv, row 4, column \"n\": the value is not an integer"), "{e}");
        assert!(!e.contains("x7"), "the cell's value is never in the message");
    }

    #[test]
    fn missing_columns_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dataset(dir.path(), "x,other\n1,2\n");
        let e = aggregate_csv(&d, &plan(&d), [0; 32]).unwrap_err().to_string();
        assert!(e.contains("column \"n\" is declared"), "{e}");
        let mut gone = d.clone();
        gone.path = dir.path().join("absent.csv");
        let e = aggregate_csv(&gone, &plan(&gone), [0; 32]).unwrap_err().to_string();
        assert!(e.contains("absent.csv: cannot read"), "{e}");
        let ragged = dataset(dir.path(), "x,n\n1,2\n3\n");
        let e = aggregate_csv(&ragged, &plan(&ragged), [0; 32]).unwrap_err().to_string();
        assert!(e.contains("d.csv: cannot read"), "{e}");
    }

    #[test]
    fn missing_values_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dataset(dir.path(), "x,n\n1.5,2\n,3\n2.5,\n");
        let p = plan(&d);
        let v = aggregate_csv(&d, &p, [0; 32]).unwrap();
        let a = p.answer(&v, vec![0], vec![]).unwrap();
        assert_eq!(a.rows, 3);
        assert_eq!((a.columns[0].count, a.columns[0].sum), (2, 4.0));
        assert_eq!((a.columns[1].count, a.columns[1].sum), (2, 5.0));
    }
}
