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

pub(crate) fn parse_cell(raw: &str, ty: ColumnType) -> Result<Value<'_>, &'static str> {
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

/// What the predicate pushdown sends: a WHERE clause with `$n` placeholders and its values.
struct Pushdown {
    clause: String,
    params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
}

fn quote(ident: &str) -> String {
    ident.split('.').map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".")
}

impl Pushdown {
    fn literal(&mut self, l: &veil_analytics::Literal) -> String {
        match l {
            veil_analytics::Literal::Number(x) => self.params.push(Box::new(*x)),
            veil_analytics::Literal::Text(t) => self.params.push(Box::new(t.clone())),
        }
        let cast = if matches!(l, veil_analytics::Literal::Number(_)) { "float8" } else { "text" };
        format!("${}::{cast}", self.params.len())
    }

    fn column(c: &str, l: &veil_analytics::Literal) -> String {
        let cast = if matches!(l, veil_analytics::Literal::Number(_)) { "float8" } else { "text" };
        format!("{}::{cast}", quote(c))
    }

    /// SQL for a condition whose SQL meaning equals the party's (a missing value satisfies
    /// nothing), or `None` to leave it to local evaluation.
    fn condition(&mut self, c: &veil_analytics::Condition) -> String {
        use veil_analytics::Op;
        let op = match c.op {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        };
        let column = Self::column(&c.column, &c.value);
        let value = self.literal(&c.value);
        format!("{column} {op} {value}")
    }

    fn predicate(&mut self, p: &veil_analytics::Predicate) -> Option<String> {
        use veil_analytics::Predicate;
        match p {
            Predicate::Compare(c) => Some(self.condition(c)),
            Predicate::IsNull { column, negated } => {
                Some(format!("{} IS {}NULL", quote(column), if *negated { "NOT " } else { "" }))
            }
            Predicate::In { column, values, negated: false } if !values.is_empty() => {
                let items: Vec<String> = values.iter().map(|v| self.literal(v)).collect();
                Some(format!("{} IN ({})", Self::column(column, &values[0]), items.join(", ")))
            }
            // Only conjunctions of the above keep their meaning under SQL's three-valued logic;
            // NOT, OR and NOT IN are evaluated by the party itself.
            Predicate::And(v) => {
                let parts: Vec<String> = v.iter().filter_map(|x| self.predicate(x)).collect();
                (!parts.is_empty()).then(|| format!("({})", parts.join(" AND ")))
            }
            _ => None,
        }
    }
}

/// Streams the dataset's PostgreSQL table through `plan`: the projection (only the columns the
/// plan reads) and the row filter (where its meaning is the same in SQL) are pushed down to the
/// database as SQL; aggregation, rounding and noise happen in the party, so the vector is the
/// same as from a file holding the same rows. Returns the vector and a fingerprint of the rows
/// read, keyed with `fingerprint_key`.
pub async fn aggregate_postgres(
    dataset: &DatasetConfig,
    source: &crate::config::PostgresSource,
    plan: &Plan,
    noise_seed: [u8; 32],
    fingerprint_key: &[u8],
) -> Result<(Vec<u64>, String), DataError> {
    use sha2::{Digest, Sha256};
    use tokio_stream::StreamExt as _;

    let place = format!("postgres table {}", source.table);
    let fail =
        |e: tokio_postgres::Error| DataError::Read { file: place.clone(), message: e.to_string() };
    let mut config: tokio_postgres::Config =
        source.connection.parse().map_err(|e: tokio_postgres::Error| fail(e))?;
    if let Some(var) = &source.password_env {
        let password = std::env::var(var).map_err(|_| DataError::Read {
            file: place.clone(),
            message: format!("the password variable {var} is not set"),
        })?;
        config.password(password);
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
    let driver = tokio::spawn(connection);
    client.batch_execute("SET default_transaction_read_only = on").await.map_err(fail)?;

    let schema = dataset.schema();
    let needed = plan.needed_columns();
    let mut pushdown = Pushdown { clause: String::new(), params: Vec::new() };
    let mut parts: Vec<String> = plan.spec().filter.iter().map(|c| pushdown.condition(c)).collect();
    if let Some(p) = plan.spec().predicate.as_ref().and_then(|p| pushdown.predicate(p)) {
        parts.push(p);
    }
    if !parts.is_empty() {
        pushdown.clause = format!(" WHERE {}", parts.join(" AND "));
    }
    let projection: Vec<String> =
        needed.iter().map(|&i| format!("{}::text", quote(&schema.columns[i].0))).collect();
    let projection =
        if projection.is_empty() { "1::text".to_string() } else { projection.join(", ") };
    let sql = format!("SELECT {projection} FROM {}{}", quote(&source.table), pushdown.clause);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = pushdown
        .params
        .iter()
        .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = client.query_raw(&sql, params).await.map_err(fail)?;
    let mut rows = std::pin::pin!(rows);
    let mut aggregate = plan.aggregate(noise_seed);
    // An order-independent fingerprint of the rows read: the sum of their keyed hashes.
    let mut fingerprint: u128 = 0;
    let mut line: u64 = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(fail)?;
        line += 1;
        let mut values = vec![Value::Null; schema.columns.len()];
        let mut hasher = Sha256::new().chain_update(fingerprint_key);
        for (k, &i) in needed.iter().enumerate() {
            let (name, ty) = &schema.columns[i];
            let text: Option<&str> = row.try_get(k).map_err(fail)?;
            hasher.update(text.unwrap_or("\u{0}").as_bytes());
            hasher.update([0xff]);
            values[i] = match text {
                None => Value::Null,
                Some(t) => parse_cell(t, *ty).map_err(|expected| DataError::Cell {
                    file: place.clone(),
                    row: line,
                    column: name.clone(),
                    value: t.chars().take(40).collect(),
                    expected,
                })?,
            };
        }
        let digest = hasher.finalize();
        fingerprint = fingerprint
            .wrapping_add(u128::from_le_bytes(digest[..16].try_into().expect("16 bytes")));
        aggregate
            .push_row(&values)
            .map_err(|source| DataError::Aggregate { file: place.clone(), source })?;
    }
    driver.abort();
    Ok((aggregate.finish(), format!("{fingerprint:032x}")))
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
            postgres: None,
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
