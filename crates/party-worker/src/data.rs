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
    /// A training row the job's encoding cannot take (a missing value without an indicator,
    /// text in a numeric feature, a label outside its classes); the message names the column,
    /// never the value.
    #[error("{file}, row {row}: {message}")]
    Encoding {
        /// The file.
        file: String,
        /// Line number.
        row: u64,
        /// Why, naming the column.
        message: String,
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

impl DataError {
    /// The same failure as the consumer may read it: the dataset by name, never the party's
    /// file path or connection string (those stay in the party's own log).
    pub fn public(&self, dataset: &str) -> String {
        match self {
            DataError::Read { .. } => {
                format!("dataset {dataset:?} cannot be read at this party (its log says why)")
            }
            DataError::MissingColumn { column, .. } => format!(
                "dataset {dataset:?}: column {column:?} is declared in the party's configuration but missing from its data"
            ),
            DataError::Cell { row, column, expected, .. } => {
                format!(
                    "dataset {dataset:?}, row {row}, column {column:?}: the value is not {expected}"
                )
            }
            DataError::Encoding { row, message, .. } => {
                format!("dataset {dataset:?}, row {row}: {message}")
            }
            DataError::Aggregate { source, .. } => format!("dataset {dataset:?}: {source}"),
        }
    }
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

/// Opens a dataset's CSV file (strict: every record as wide as the header) and reads its header
/// as bytes: only the columns a job reads need to be UTF-8, so a column the party does not
/// expose may hold any bytes.
fn open_csv(
    dataset: &DatasetConfig,
) -> Result<(csv::Reader<std::fs::File>, csv::ByteRecord), DataError> {
    let read_error = |e: csv::Error| DataError::Read {
        file: dataset.path.display().to_string(),
        message: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_path(&dataset.path)
        .map_err(read_error)?;
    let headers = reader.byte_headers().map_err(read_error)?.clone();
    Ok((reader, headers))
}

/// Streams the dataset's CSV file through `plan` and returns the party's vector (noised, for a
/// differentially private job, with randomness from `noise_seed`).
pub fn aggregate_csv(
    dataset: &DatasetConfig,
    plan: &Plan,
    noise_seed: [u8; 32],
) -> Result<Vec<u64>, DataError> {
    let mut aggregate = plan.aggregate(noise_seed);
    let file = dataset.path.display().to_string();
    scan_csv(dataset, &plan.needed_columns(), |row, _| {
        aggregate
            .push_row(row)
            .map_err(|source| DataError::Aggregate { file: file.clone(), source })
    })?;
    Ok(aggregate.finish())
}

/// Calls `f` with every row of the dataset's CSV file: the values of the schema columns at
/// indices `needed` (the others null) and the row's line number. Only the needed columns are
/// decoded as text; the other cells are never looked at. A missing column, or a needed cell that
/// is not UTF-8 or does not parse, is an error naming file, row and column.
fn scan_csv(
    dataset: &DatasetConfig,
    needed: &[usize],
    mut f: impl FnMut(&[Value<'_>], u64) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let file = dataset.path.display().to_string();
    let read_error = |e: csv::Error| DataError::Read { file: file.clone(), message: e.to_string() };
    let (mut reader, headers) = open_csv(dataset)?;
    let schema = dataset.schema();
    let mut positions = Vec::new();
    for &index in needed {
        let (name, ty) = &schema.columns[index];
        let pos = headers
            .iter()
            .position(|h| std::str::from_utf8(h).is_ok_and(|h| h.trim() == name))
            .ok_or_else(|| DataError::MissingColumn { file: file.clone(), column: name.clone() })?;
        positions.push((index, pos, *ty, name));
    }
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(read_error(e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let mut row = vec![Value::Null; schema.columns.len()];
        for &(index, pos, ty, name) in &positions {
            let bytes = record.get(pos).unwrap_or_default();
            let cell = |value: String, expected| DataError::Cell {
                file: file.clone(),
                row: line,
                column: name.clone(),
                value,
                expected,
            };
            let raw = std::str::from_utf8(bytes).map_err(|_| {
                cell(String::from_utf8_lossy(bytes).chars().take(40).collect(), "UTF-8 text")
            })?;
            row[index] = parse_cell(raw, ty)
                .map_err(|expected| cell(raw.chars().take(40).collect(), expected))?;
        }
        f(&row, line)?;
    }
    Ok(())
}

/// Values for a statement's `$n` placeholders.
fn bind(
    values: &[veil_analytics::Literal],
) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    values
        .iter()
        .map(|l| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match l {
                veil_analytics::Literal::Number(x) => Box::new(*x),
                veil_analytics::Literal::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

fn quote(ident: &str) -> String {
    ident.split('.').map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".")
}

/// Computes the party's vector from its PostgreSQL table. For an exact job the whole of the
/// party's part of the query (filter, groups, counts, clipped fixed-point sums rounded exactly
/// as the party would, histograms) runs in the database as one SQL statement
/// ([`Plan::aggregate_sql`]). For a differentially private job the projection and the parts of
/// the filter whose SQL meaning is the same are pushed down and the rows are streamed, because
/// stochastic rounding and noise must happen in the party. Either way the vector equals the one
/// from a file holding the same rows. Returns the vector and a fingerprint of what was read,
/// keyed with `fingerprint_key`.
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
    // Exact jobs: the whole of the party's part runs in the database, one row per group.
    if let Some(query) = plan.aggregate_sql(&quote(&source.table), &|i| quote(&schema.columns[i].0))
    {
        let params = bind(&query.params);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let result = client.query(&query.sql, &refs).await.map_err(fail)?;
        let mut rows = Vec::with_capacity(result.len());
        let mut hasher = Sha256::new().chain_update(fingerprint_key);
        for row in &result {
            let mut totals = Vec::with_capacity(row.len());
            for k in 0..row.len() {
                let text: Option<&str> = row.try_get(k).map_err(fail)?;
                let value = text.unwrap_or("0");
                hasher.update(value.as_bytes());
                hasher.update([0xff]);
                totals.push(value.parse::<i128>().map_err(|_| DataError::Read {
                    file: place.clone(),
                    message: format!("the database returned {value:?} for a total"),
                })?);
            }
            rows.push(totals);
        }
        driver.abort();
        let vector = plan
            .vector_from_sql(&rows)
            .map_err(|source| DataError::Aggregate { file: place.clone(), source })?;
        return Ok((vector, hex::encode(hasher.finalize())));
    }
    let needed = plan.needed_columns();
    // The database applies the job's filter exactly as the party would; the rows are checked
    // against it again below all the same.
    let filter = plan.where_sql(&|i| quote(&schema.columns[i].0));
    let params = bind(&filter.params);
    let projection: Vec<String> =
        needed.iter().map(|&i| format!("{}::text", quote(&schema.columns[i].0))).collect();
    let projection =
        if projection.is_empty() { "1::text".to_string() } else { projection.join(", ") };
    let sql = format!("SELECT {projection} FROM {}{}", quote(&source.table), filter.sql);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
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

/// Streams a Parquet file through `plan` (numbers, text and nulls map to cells as in a CSV
/// file; other types are refused, naming the column).
pub fn aggregate_parquet(
    dataset: &DatasetConfig,
    plan: &Plan,
    noise_seed: [u8; 32],
) -> Result<Vec<u64>, DataError> {
    let mut aggregate = plan.aggregate(noise_seed);
    let file = dataset.path.display().to_string();
    scan_parquet(dataset, &plan.needed_columns(), |row, _| {
        aggregate
            .push_row(row)
            .map_err(|source| DataError::Aggregate { file: file.clone(), source })
    })?;
    Ok(aggregate.finish())
}

/// [`scan_csv`] for a Parquet file: numeric physical types read as numbers, text parsed by
/// the column's declared type; rows are numbered from 1.
fn scan_parquet(
    dataset: &DatasetConfig,
    needed: &[usize],
    mut f: impl FnMut(&[Value<'_>], u64) -> Result<(), DataError>,
) -> Result<(), DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let file = dataset.path.display().to_string();
    let read_error = |e: String| DataError::Read { file: file.clone(), message: e };
    let handle = std::fs::File::open(&dataset.path).map_err(|e| read_error(e.to_string()))?;
    let reader = SerializedFileReader::new(handle).map_err(|e| read_error(e.to_string()))?;
    let schema = dataset.schema();
    let present: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    for &i in needed {
        let name = &schema.columns[i].0;
        if !present.iter().any(|p| p == name) {
            return Err(DataError::MissingColumn { file: file.clone(), column: name.clone() });
        }
    }
    let wanted: Vec<(usize, ColumnType, &str)> =
        needed.iter().map(|&i| (i, schema.columns[i].1, schema.columns[i].0.as_str())).collect();
    let rows = reader.get_row_iter(None).map_err(|e| read_error(e.to_string()))?;
    for (n, row) in rows.enumerate() {
        let row = row.map_err(|e| read_error(e.to_string()))?;
        let line = n as u64 + 1;
        let mut values = vec![Value::Null; schema.columns.len()];
        for (name, field) in row.get_column_iter() {
            let Some(&(index, ty, column)) = wanted.iter().find(|(_, _, c)| c == name) else {
                continue;
            };
            let bad = |expected| DataError::Cell {
                file: file.clone(),
                row: line,
                column: column.to_string(),
                value: String::new(),
                expected,
            };
            let number = |x: f64| {
                if x.is_finite() { Ok(Value::Number(x)) } else { Err(bad("a finite number")) }
            };
            values[index] = match (field, ty) {
                (Field::Null, _) => Value::Null,
                (Field::Str(s), ColumnType::String) => Value::Text(s.as_str()),
                (Field::Str(s), _) => parse_cell(s, ty).map_err(bad)?,
                (_, ColumnType::String) => return Err(bad("text")),
                (Field::Bool(b), _) => Value::Number(f64::from(u8::from(*b))),
                (Field::Byte(x), _) => Value::Number(f64::from(*x)),
                (Field::Short(x), _) => Value::Number(f64::from(*x)),
                (Field::Int(x), _) => Value::Number(f64::from(*x)),
                (Field::Long(x), _) => Value::Number(*x as f64),
                (Field::UByte(x), _) => Value::Number(f64::from(*x)),
                (Field::UShort(x), _) => Value::Number(f64::from(*x)),
                (Field::UInt(x), _) => Value::Number(f64::from(*x)),
                (Field::ULong(x), _) => Value::Number(*x as f64),
                (Field::Float(x), _) => number(f64::from(*x))?,
                (Field::Double(x), _) => number(*x)?,
                _ => return Err(bad("a number, text or null")),
            };
        }
        f(&values, line)?;
    }
    Ok(())
}

/// Whether the dataset's file is Parquet (by its extension); otherwise it is CSV.
fn is_parquet(dataset: &DatasetConfig) -> bool {
    dataset.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Streams a file dataset through `plan`: Parquet when the path ends in `.parquet`, CSV
/// otherwise.
pub fn aggregate_file(
    dataset: &DatasetConfig,
    plan: &Plan,
    noise_seed: [u8; 32],
) -> Result<Vec<u64>, DataError> {
    if is_parquet(dataset) {
        aggregate_parquet(dataset, plan, noise_seed)
    } else {
        aggregate_csv(dataset, plan, noise_seed)
    }
}

/// Most rows a party loads for training.
pub const MAX_TRAINING_ROWS: usize = 10_000_000;

/// Most feature cells a party holds in memory for one training job (1 GiB of f64).
pub const MAX_TRAINING_CELLS: usize = 1 << 27;

/// The distinct keys of a dataset's key column for a private set intersection, as text
/// (integers without a fraction); rows with no key are left out. Returns the keys and how many
/// rows had none.
pub fn load_keys(dataset: &DatasetConfig, column: &str) -> Result<(Vec<String>, u64), DataError> {
    let file = dataset.path.display().to_string();
    let schema = dataset.schema();
    let index = schema.columns.iter().position(|(c, _)| c == column).ok_or_else(|| {
        DataError::MissingColumn { file: file.clone(), column: column.to_string() }
    })?;
    let mut keys = std::collections::BTreeSet::new();
    let mut missing = 0u64;
    scan_csv(dataset, &[index], |row, _| {
        match row[index] {
            Value::Null => missing += 1,
            Value::Text(t) => {
                keys.insert(t.to_string());
            }
            Value::Number(x) => {
                keys.insert(format!("{x}"));
            }
        }
        Ok(())
    })?;
    Ok((keys.into_iter().collect(), missing))
}

/// A key cell as text (integers without a fraction), `None` for a missing key.
fn key_text(cell: Value<'_>) -> Option<String> {
    match cell {
        Value::Null => None,
        Value::Text(t) => Some(t.to_string()),
        Value::Number(x) => Some(format!("{x}")),
    }
}

fn column_index(dataset: &DatasetConfig, column: &str) -> Result<usize, DataError> {
    let schema = dataset.schema();
    schema.columns.iter().position(|(c, _)| c == column).ok_or_else(|| DataError::MissingColumn {
        file: dataset.path.display().to_string(),
        column: column.to_string(),
    })
}

/// A join's group side as read from its file.
pub struct GroupKeys {
    /// The distinct keys, normalised.
    pub keys: Vec<String>,
    /// Each key's group slot.
    pub slots: Vec<u32>,
    /// Rows without a key.
    pub missing: u64,
    /// Keys whose rows fall in different groups (left out: their group is not defined).
    pub ambiguous: u64,
}

/// A join's value side as read from its file.
pub struct ValueKeys {
    /// The distinct keys, normalised.
    pub keys: Vec<String>,
    /// Each key's aggregate over its rows.
    pub vectors: Vec<Vec<u64>>,
    /// Rows without a key.
    pub missing: u64,
}

/// The group side of a private join: each distinct key of `key` (normalised by `policy`)
/// with the slot of its `groups` column's value.
pub fn load_groups(
    dataset: &DatasetConfig,
    key: &str,
    groups: &veil_analytics::GroupBy,
    policy: veil_psi::KeyPolicy,
) -> Result<GroupKeys, DataError> {
    let (k, g) = (column_index(dataset, key)?, column_index(dataset, &groups.column)?);
    let mut slots: std::collections::BTreeMap<String, Option<u32>> = Default::default();
    let mut missing = 0u64;
    let mut needed = vec![k, g];
    needed.sort_unstable();
    needed.dedup();
    scan_csv(dataset, &needed, |row, _| {
        let Some(text) = key_text(row[k]) else {
            missing += 1;
            return Ok(());
        };
        let slot = groups.slot(row[g]) as u32;
        let entry = slots.entry(policy.normalise(&text).into_owned()).or_insert(Some(slot));
        if *entry != Some(slot) {
            *entry = None;
        }
        Ok(())
    })?;
    let ambiguous = slots.values().filter(|s| s.is_none()).count() as u64;
    let (keys, slots): (Vec<String>, Vec<u32>) =
        slots.into_iter().filter_map(|(k, s)| s.map(|s| (k, s))).unzip();
    Ok(GroupKeys { keys, slots, missing, ambiguous })
}

/// The value side of a private join: each distinct key of `key` (normalised by `policy`) with
/// the aggregate of its rows through `plan` (aggregated locally first, so a key repeated over
/// many rows goes out once). Keys none of whose rows pass the job's filter are left out.
pub fn aggregate_by_key(
    dataset: &DatasetConfig,
    key: &str,
    plan: &Plan,
    policy: veil_psi::KeyPolicy,
) -> Result<ValueKeys, DataError> {
    let k = column_index(dataset, key)?;
    let file = dataset.path.display().to_string();
    let mut needed = plan.needed_columns();
    needed.push(k);
    needed.sort_unstable();
    needed.dedup();
    let mut per_key: std::collections::BTreeMap<String, veil_analytics::LocalAggregate<'_>> =
        Default::default();
    let mut missing = 0u64;
    scan_csv(dataset, &needed, |row, _| {
        let Some(text) = key_text(row[k]) else {
            missing += 1;
            return Ok(());
        };
        per_key
            .entry(policy.normalise(&text).into_owned())
            .or_insert_with(|| {
                // A private job's stochastic rounding draws from the OS, per key.
                let mut seed = [0u8; 32];
                if plan.dp().is_some() {
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
                }
                plan.aggregate(seed)
            })
            .push_row(row)
            .map_err(|source| DataError::Aggregate { file: file.clone(), source })
    })?;
    // No noise per key: the party adds its share of the noise once, to its share of the sums.
    let (keys, vectors) = per_key
        .into_iter()
        .filter(|(_, a)| a.rows() > 0)
        .map(|(k, a)| (k, a.finish_without_noise()))
        .unzip();
    Ok(ValueKeys { keys, vectors, missing })
}

/// Reads a training job's feature and label columns from the dataset's file (CSV or Parquet),
/// in the job's order: every cell must be a number (a missing or unparsable one is refused,
/// naming its place but not its value).
pub fn load_training(
    dataset: &DatasetConfig,
    features: &[String],
    label: &str,
) -> Result<(ndarray::Array2<f64>, ndarray::Array1<f64>), DataError> {
    load_encoded(dataset, features, label, &veil_learning::encode::Encoding::default())
}

/// As [`load_training`], the feature columns turned into the model's inputs and the label into
/// classes by the job's `encoding` (categorical one-hot, missing-value indicators, a text
/// label's classes, clipping to declared bounds); a cell the encoding cannot take is an error
/// naming its row and column, never its value.
pub fn load_encoded(
    dataset: &DatasetConfig,
    features: &[String],
    label: &str,
    encoding: &veil_learning::encode::Encoding,
) -> Result<(ndarray::Array2<f64>, ndarray::Array1<f64>), DataError> {
    use veil_learning::encode::Cell;
    let file = dataset.path.display().to_string();
    let schema = dataset.schema();
    let mut needed = Vec::new();
    for name in features.iter().map(String::as_str).chain([label]) {
        let index = schema.columns.iter().position(|(c, _)| c == name).ok_or_else(|| {
            DataError::MissingColumn { file: file.clone(), column: name.to_string() }
        })?;
        needed.push(index);
    }
    let width = encoding.inputs(features).len();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let row = |values: &[Value<'_>], line: u64| -> Result<(), DataError> {
        if y.len() >= MAX_TRAINING_ROWS || x.len() + width > MAX_TRAINING_CELLS {
            return Err(DataError::Read {
                file: file.clone(),
                message: format!(
                    "more rows than a training job holds in memory (at most {MAX_TRAINING_ROWS} rows and {MAX_TRAINING_CELLS} inputs)"
                ),
            });
        }
        let cell = |index: usize| match values[index] {
            Value::Null => Cell::Null,
            Value::Number(v) => Cell::Number(v),
            Value::Text(t) => Cell::Text(t),
        };
        let cells: Vec<Cell<'_>> = needed[..features.len()].iter().map(|&i| cell(i)).collect();
        let failed = |e: veil_learning::Error| DataError::Encoding {
            file: file.clone(),
            row: line,
            message: match e {
                veil_learning::Error::Shape(m) | veil_learning::Error::Settings(m) => m,
                other => other.to_string(),
            },
        };
        let bounds_of = |f: &str| dataset.bounds.get(f).copied();
        encoding.push_clipped(features, &cells, &bounds_of, &mut x).map_err(failed)?;
        y.push(encoding.label_of(label, cell(needed[features.len()])).map_err(failed)?);
        Ok(())
    };
    if is_parquet(dataset) {
        scan_parquet(dataset, &needed, row)?
    } else {
        scan_csv(dataset, &needed, row)?
    }
    let rows = y.len();
    let x = ndarray::Array2::from_shape_vec((rows, width), x)
        .map_err(|e| DataError::Read { file: file.clone(), message: e.to_string() })?;
    Ok((x, ndarray::Array1::from(y)))
}

#[cfg(test)]
mod parquet_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use parquet::data_type::{DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use veil_analytics::JobSpec;

    use super::*;

    /// The same rows from a Parquet file and from a CSV file give the same vector.
    #[test]
    fn parquet_rows_aggregate_like_csv_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<(Option<f64>, i64)> =
            vec![(Some(1.5), 0), (None, 1), (Some(20.25), 1), (Some(-3.0), 0), (Some(7.0), 1)];
        // CSV.
        let csv_path = dir.path().join("d.csv");
        let mut text = String::from("x,n\n");
        for (x, n) in &rows {
            text += &format!("{},{n}\n", x.map_or(String::new(), |x| x.to_string()));
        }
        std::fs::write(&csv_path, text).unwrap();
        // Parquet, with the writer's low-level API.
        let pq_path = dir.path().join("d.parquet");
        let schema = Arc::new(
            parse_message_type("message d { OPTIONAL DOUBLE x; REQUIRED INT64 n; }").unwrap(),
        );
        let props = Arc::new(WriterProperties::builder().build());
        let mut writer =
            SerializedFileWriter::new(std::fs::File::create(&pq_path).unwrap(), schema, props)
                .unwrap();
        let mut group = writer.next_row_group().unwrap();
        let xs: Vec<f64> = rows.iter().filter_map(|r| r.0).collect();
        let defs: Vec<i16> = rows.iter().map(|r| i16::from(r.0.is_some())).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<DoubleType>().write_batch(&xs, Some(&defs), None).unwrap();
        col.close().unwrap();
        let ns: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<Int64Type>().write_batch(&ns, None, None).unwrap();
        col.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();

        let mut columns = BTreeMap::new();
        columns.insert("x".to_string(), ColumnType::Float);
        columns.insert("n".to_string(), ColumnType::Int);
        let dataset = |path: std::path::PathBuf| DatasetConfig::csv("d", path, columns.clone());
        let spec = JobSpec::parse(
            "dataset = \"d\"\nfilter = [{ column = \"n\", op = \"==\", value = 1 }]\n[[columns]]\nname = \"x\"\nmin = -10\nmax = 10\nhistogram = [-10, 0, 10]",
        )
        .unwrap();
        let d = dataset(csv_path);
        let plan = Plan::new(&spec, &d.schema()).unwrap();
        let from_csv = aggregate_file(&d, &plan, [0; 32]).unwrap();
        let from_parquet = aggregate_file(&dataset(pq_path), &plan, [0; 32]).unwrap();
        assert_eq!(from_csv, from_parquet);
        let a = plan.answer(&from_parquet, vec![0], vec![]).unwrap();
        assert_eq!((a.rows, a.columns[0].count, a.columns[0].clipped_above), (3, 2, 1));

        // Training reads both alike, and both refuse the missing cell.
        let n = ["n".to_string()];
        let (csv_d, pq_d) =
            (dataset(dir.path().join("d.csv")), dataset(dir.path().join("d.parquet")));
        let (cx, cy) = load_training(&csv_d, &n, "n").unwrap();
        let (px, py) = load_training(&pq_d, &n, "n").unwrap();
        assert_eq!((cx, cy), (px, py.clone()));
        assert_eq!(py.to_vec(), vec![0.0, 1.0, 1.0, 0.0, 1.0]);
        for d in [&csv_d, &pq_d] {
            let e = load_training(d, &["x".to_string()], "n").unwrap_err().to_string();
            assert!(e.contains("\"x\" has a missing value"), "{e}");
        }
    }
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
        DatasetConfig::csv("d", path, columns)
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

    /// Bytes that are not UTF-8, in a column no job reads (in a cell or in its header), do not
    /// stop the exposed columns from being aggregated or loaded for training.
    #[test]
    fn non_utf8_bytes_in_unexposed_columns_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dataset(dir.path(), "");
        let files: [&[u8]; 2] = [
            b"x,n,notes\n1.5,2,caf\xe9\n2.5,3,\xff\xfe\n",
            b"x,r\xe9sum\xe9,n\n1.5,a,2\n2.5,b,3\n",
        ];
        for bytes in files {
            std::fs::write(&d.path, bytes).unwrap();
            let p = plan(&d);
            let v = aggregate_csv(&d, &p, [0; 32]).unwrap();
            let a = p.answer(&v, vec![0], vec![]).unwrap();
            assert_eq!((a.rows, a.columns[0].sum, a.columns[1].sum), (2, 4.0, 5.0));
            let (x, y) = load_training(&d, &["x".to_string()], "n").unwrap();
            assert_eq!(
                (x.as_slice().unwrap(), y.as_slice().unwrap()),
                (&[1.5, 2.5][..], &[2.0, 3.0][..])
            );
        }
    }

    /// A cell of an exposed column that is not UTF-8 is refused, naming file, row and column
    /// but not the value.
    #[test]
    fn non_utf8_exposed_cells_are_named_by_file_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let d = dataset(dir.path(), "");
        std::fs::write(&d.path, b"x,n,notes\n1.5,2,a\n2.5,\xffsecret,b\n").unwrap();
        let want = "d.csv, row 3, column \"n\": the value is not UTF-8 text";
        let e = aggregate_csv(&d, &plan(&d), [0; 32]).unwrap_err().to_string();
        assert!(e.ends_with(want), "{e}");
        let e = load_training(&d, &["x".to_string()], "n").unwrap_err().to_string();
        assert!(e.ends_with(want), "{e}");
        assert!(!e.contains("secret"), "the cell's value is never in the message: {e}");
    }

    #[test]
    fn training_rows_load_in_order_and_bad_cells_are_named_without_their_value() {
        let dir = tempfile::tempdir().unwrap();
        let d = dataset(dir.path(), "x,n\n1.5,2\n2.5,0\n");
        let (x, y) = load_training(&d, &["x".to_string()], "n").unwrap();
        assert_eq!(
            (x.as_slice().unwrap(), y.as_slice().unwrap()),
            (&[1.5, 2.5][..], &[2.0, 0.0][..])
        );
        for text in ["x,n\n1.5,2\n,1\n", "x,n\n1.5,2\nsecret-7,1\n"] {
            let d = dataset(dir.path(), text);
            let e = load_training(&d, &["x".to_string()], "n").unwrap_err().to_string();
            assert!(e.contains("row 3") && e.contains("\"x\""), "{e}");
            assert!(!e.contains("secret"), "the value stays local: {e}");
        }
        let e = load_training(&d, &["missing".to_string()], "n").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn encoded_training_rows_clip_to_declared_bounds_and_index_text_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = dataset(dir.path(), "x,n\n1.5,2\n250,1\n-9,0\n");
        d.bounds.insert("x".into(), (0.0, 100.0));
        let encoding = veil_learning::encode::Encoding {
            clip_to_bounds: true,
            label: Some(veil_learning::encode::LabelMap {
                positive: None,
                classes: Some(vec!["0".into(), "1".into(), "2".into()]),
            }),
            ..Default::default()
        };
        let (x, y) = load_encoded(&d, &["x".to_string()], "n", &encoding).unwrap();
        assert_eq!(x.as_slice().unwrap(), &[1.5, 100.0, 0.0][..]);
        assert_eq!(y.as_slice().unwrap(), &[2.0, 1.0, 0.0][..]);
        // Without the bounds there is nothing to clip to: an error naming the feature.
        d.bounds.clear();
        let e = load_encoded(&d, &["x".to_string()], "n", &encoding).unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("declared bounds"), "{e}");
    }
}
