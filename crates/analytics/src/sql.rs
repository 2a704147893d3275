//! SQL queries over one dataset, planned into a [`JobSpec`].
//!
//! A consumer may write a job as one aggregate query instead of TOML. [`plan_sql`] parses it
//! and checks it against the [`DatasetCatalog`] of the dataset it names: the declared bounds
//! give every aggregated column its clipping range, the declared domains give every GROUP BY
//! column its groups. The result is the [`JobSpec`] parties are offered; [`result_table`] turns
//! the eventual [`Answer`] into the table the SELECT list asks for.
//!
//! The supported subset:
//! - exactly one `SELECT … FROM dataset [WHERE …] [GROUP BY …]`: no DISTINCT, JOIN, subquery,
//!   WITH, UNION, ORDER BY, LIMIT, HAVING or window function;
//! - SELECT items, each optionally `AS alias`: `COUNT(*)`, `COUNT(col)`, `SUM`, `AVG`/`MEAN`,
//!   `VAR`/`VARIANCE`/`VAR_SAMP`, `STDDEV`/`STDDEV_SAMP`, `MIN`, `MAX`,
//!   `HISTOGRAM(col, edge, edge, …)`, `QUANTILE`/`APPROX_QUANTILE(col, q)` and `MEDIAN(col)`
//!   over numeric columns with declared bounds, and bare GROUP BY columns;
//! - WHERE: `col op literal` either way round with `=`, `<>`/`!=`, `<`, `<=`, `>`, `>=`;
//!   `[NOT] BETWEEN`, `[NOT] IN (literals)`, `IS [NOT] NULL`, `AND`, `OR`, `NOT` and
//!   parentheses, over numbers and single-quoted text;
//! - GROUP BY up to three columns that have a declared value domain.
//!
//! Limits: a query is at most [`MAX_SQL_BYTES`] long, and its WHERE clause nests at most
//! [`MAX_NESTING`](crate::spec::MAX_NESTING) levels (each parenthesis, NOT, and AND or OR
//! inside another counts one); a chain of AND or OR of any length is one level. Parsing and
//! planning never recurse, so how much they accept does not depend on the stack of the thread
//! that plans.
//!
//! MIN, MAX and quantiles are read off a histogram (the query's own `HISTOGRAM` edges for the
//! column, else 100 equal bins over its bounds): they are bin edges and interpolations, never
//! a single row's exact value, kept within the column's declared bounds; the [`Table`] says so,
//! with the width of the bin each was read in. A differentially private table carries the
//! answer's privacy block and the 95% half-widths of the noise in its values.

#[cfg(test)]
mod limits;
mod parse;

use serde_json::Value as Json;

use self::parse::{Arg, Atom, Call, ItemExpr, Operand, OperandKind, SelectItem, Step, TableRef};
use crate::AnalyticsError;
use crate::plan::{Answer, ColumnAnswer, DpCalibration, Histogram, NULL_GROUP, OTHER};
use crate::schema::{ColumnInfo, DatasetCatalog};
use crate::spec::{
    ColumnRequest, Condition, GroupBy, GroupColumn, Job, JobSpec, JoinSpec, KeyColumn, Literal,
    MAX_BINS, MAX_SQL_BYTES, Op, Output, OutputKind, Predicate, Privacy,
};

/// What the error messages list as supported.
const SUPPORTED: &str = "supported: SELECT aggregates (COUNT, SUM, AVG, VAR, STDDEV, MIN, MAX, \
     HISTOGRAM, QUANTILE, MEDIAN) and GROUP BY columns FROM one dataset [JOIN another ON a.key = \
     b.key] [WHERE comparisons, BETWEEN, IN, IS NULL with AND/OR/NOT] [GROUP BY declared \
     categorical columns]";
/// Bins of the histogram MIN, MAX and QUANTILE use when the query gives no edges.
const DEFAULT_BINS: usize = 100;
/// The aggregate functions, lower case.
const AGGREGATES: &str = "count sum avg mean var variance var_samp stddev stddev_samp min max \
                          median quantile approx_quantile histogram";
/// Most GROUP BY columns.
const MAX_GROUP_COLUMNS: usize = 3;

/// Options a SQL job carries besides the query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SqlOptions {
    /// What the answer is for.
    pub purpose: String,
    /// The zCDP ρ to charge, for a differentially private job.
    pub rho: Option<f64>,
    /// Groups and histogram bins counting fewer rows are suppressed.
    pub k_threshold: Option<u64>,
    /// The fewest parties (0 means the default, 2).
    pub min_parties: u32,
}

/// Checks that `planned`, a coordinator's plan of `sql` with `options`, is a plan of that
/// query: the same table, options, number of outputs and GROUP BY columns, and a predicate
/// exactly when the query has a WHERE clause. A consumer runs this before it signs a plan.
pub fn check_plan(
    sql: &str,
    options: &SqlOptions,
    planned: &JobSpec,
) -> Result<(), AnalyticsError> {
    let query = parse::parse(sql)?;
    let differs = |what: &str| Err(AnalyticsError::PlanMismatch(format!("it has another {what}")));
    if query.join.is_some() {
        return differs("kind of job: the query joins two datasets");
    }
    if !planned.dataset.eq_ignore_ascii_case(&query.table.name) {
        return differs("dataset");
    }
    check_query(&query, options, planned)
}

/// As [`check_plan`], for a query with a JOIN planned into a private join: the same two
/// datasets and key columns, the value side's aggregate as [`check_plan`] checks it, grouped
/// by the group side's column.
pub fn check_join_plan(
    sql: &str,
    options: &SqlOptions,
    planned: &JoinSpec,
) -> Result<(), AnalyticsError> {
    let query = parse::parse(sql)?;
    let differs = |what: &str| Err(AnalyticsError::PlanMismatch(format!("it has another {what}")));
    let Some(join) = &query.join else {
        return differs("kind of job: the query reads one dataset");
    };
    let tables = [&query.table, &join.table];
    let named = |d: &str| tables.iter().any(|t| t.name.eq_ignore_ascii_case(d));
    if !named(&planned.groups.dataset)
        || !named(&planned.values.dataset)
        || planned.groups.dataset.eq_ignore_ascii_case(&planned.values.dataset)
    {
        return differs("pair of datasets");
    }
    // A column operand's name, and the dataset its qualifier names (by name or alias), if any.
    let place = |o: &parse::Operand| -> (String, Option<String>) {
        match &o.kind {
            OperandKind::Column(parts) => {
                let table = match parts.as_slice() {
                    [q, _] => tables
                        .iter()
                        .find(|t| {
                            t.name.eq_ignore_ascii_case(q)
                                || t.alias.as_ref().is_some_and(|a| a.eq_ignore_ascii_case(q))
                        })
                        .map(|t| t.name.clone()),
                    _ => None,
                };
                (parts.last().cloned().unwrap_or_default(), table)
            }
            _ => (String::new(), None),
        }
    };
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    // The GROUP BY column is the group side's column, of the dataset its qualifier names.
    let Some(group) = query.group_by.first().and_then(value) else {
        return differs("grouping");
    };
    let (column, table) = place(group);
    if !same(&column, &planned.groups.column)
        || table.is_some_and(|t| !same(&t, &planned.groups.dataset))
    {
        return differs("GROUP BY column or side");
    }
    // Each key is the ON operand of its own side.
    let ons = [place(&join.on.0), place(&join.on.1)];
    let side_of = |dataset: &str, key: &str| {
        ons.iter()
            .any(|(name, table)| same(name, key) && table.as_ref().is_none_or(|t| same(t, dataset)))
    };
    if !side_of(&planned.groups.dataset, &planned.groups.key)
        || !side_of(&planned.values.dataset, &planned.values.key)
    {
        return differs("pair of key columns");
    }
    if planned.case_fold {
        return differs("key matching (case-folded)");
    }
    check_query(&query, options, &planned.aggregate)
}

/// The options, outputs, groups and WHERE clause of a plan against its query's.
fn check_query(
    query: &parse::Query,
    options: &SqlOptions,
    planned: &JobSpec,
) -> Result<(), AnalyticsError> {
    let differs = |what: &str| Err(AnalyticsError::PlanMismatch(format!("it has another {what}")));
    let min_parties = if options.min_parties == 0 { 2 } else { options.min_parties };
    if planned.purpose != options.purpose {
        return differs("purpose");
    }
    if planned.privacy.as_ref().map(|p| p.rho) != options.rho {
        return differs("privacy charge");
    }
    if planned.k_threshold != options.k_threshold {
        return differs("k-threshold");
    }
    if planned.min_parties != min_parties {
        return differs("minimum of parties");
    }
    if planned.select.len() != query.items.len() {
        return differs("SELECT list");
    }
    if planned.group_by.len() != query.group_by.len() {
        return differs("GROUP BY list");
    }
    if planned.predicate.is_some() != query.selection.is_some() || !planned.filter.is_empty() {
        return differs("WHERE clause");
    }
    Ok(())
}

/// A query result as a table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Table {
    /// Column headings.
    pub headers: Vec<String>,
    /// Rows, one value per heading.
    pub rows: Vec<Vec<Json>>,
    /// For differentially private answers: per row and heading, the half-width of a 95%
    /// interval of the noise in that value (see [`Table::notes`] for what each kind of value's
    /// means); `null` for group keys, withheld values, and values no interval can honestly be
    /// stated for (variances, standard deviations, readings off a histogram).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95: Option<Vec<Vec<Option<f64>>>>,
    /// The outputs read off a histogram (MIN, MAX, MEDIAN, QUANTILE): approximate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approximate: Vec<Approximate>,
    /// The HISTOGRAM outputs: their edges and the slots outside them (the cells hold the bins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histograms: Vec<HistogramOutput>,
    /// What a reader needs to know to read the values, in sentences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// For differentially private answers: the guarantee and the noise calibration (the
    /// answer's own `privacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<DpCalibration>,
}

/// An output read off a histogram.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Approximate {
    /// Its position in [`Table::headers`].
    pub column: usize,
    /// The declared bounds of the column it reads; readings are kept within them.
    pub bounds: (f64, f64),
    /// Per row, how its value was read (`null` where the value is).
    pub readings: Vec<Option<Reading>>,
}

/// How one value was read off a histogram.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    /// The width of the bin the value was read in (its resolution); `None` when the value is the
    /// histogram's outer edge standing for values beyond it.
    pub bin_width: Option<f64>,
    /// Whether the reading lay outside the declared bounds and shows the nearer bound instead.
    pub clamped: bool,
}

/// A `HISTOGRAM` output.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistogramOutput {
    /// Its position in [`Table::headers`].
    pub column: usize,
    /// Bin edges; the cell's counts are of `[e_i, e_i+1)`, the last bin closed.
    pub edges: Vec<f64>,
    /// Per row, the values below the first edge (`null` if withheld).
    pub below: Vec<Option<u64>>,
    /// Per row, the values above the last edge (`null` if withheld).
    pub above: Vec<Option<u64>>,
}

fn unsupported(what: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Invalid(format!("not supported: {what}; {SUPPORTED}"))
}

fn invalid(message: String) -> AnalyticsError {
    AnalyticsError::Invalid(message)
}

/// Plans a SQL query against the catalog of the dataset it names; returns the [`JobSpec`] that
/// parties will be offered.
pub fn plan_sql(
    sql: &str,
    catalogs: &[DatasetCatalog],
    options: &SqlOptions,
) -> Result<JobSpec, AnalyticsError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(invalid(format!(
            "the query is {} bytes; the limit is {MAX_SQL_BYTES} (64 KiB)",
            sql.len()
        )));
    }
    let query = parse::parse(sql)?;
    if query.join.is_some() {
        return Err(invalid(
            "the query joins two datasets: it plans into a private join ([`plan_sql_job`])".into(),
        ));
    }
    let (catalog, qualifiers) = dataset_of(&query.table, catalogs)?;
    let mut planner = Planner::new(catalog, qualifiers);
    let group_by = planner.group_by(&query.group_by)?;
    let select_list =
        query.items.iter().map(|item| planner.output(item)).collect::<Result<_, _>>()?;
    let predicate = query.selection.as_deref().map(|s| planner.predicate(s)).transpose()?;
    let spec = JobSpec {
        dataset: catalog.name.clone(),
        filter: Vec::new(),
        columns: planner.into_columns(),
        min_parties: if options.min_parties == 0 { 2 } else { options.min_parties },
        purpose: options.purpose.clone(),
        privacy: options.rho.map(|rho| Privacy { rho }),
        k_threshold: options.k_threshold,
        predicate,
        group_by,
        select: select_list,
    };
    spec.check()?;
    Ok(spec)
}

/// Plans a SQL query into the job parties are offered: column aggregates over one dataset
/// ([`plan_sql`]), or, for `FROM a JOIN b ON a.key = b.key`, a private join whose GROUP BY
/// column (one, with a declared domain) is one dataset's and whose aggregates and WHERE clause
/// are the other's.
pub fn plan_sql_job(
    sql: &str,
    catalogs: &[DatasetCatalog],
    options: &SqlOptions,
) -> Result<Job, AnalyticsError> {
    if sql.len() > MAX_SQL_BYTES {
        return plan_sql(sql, catalogs, options).map(Job::Columns);
    }
    let query = parse::parse(sql)?;
    let Some(join) = &query.join else {
        return plan_sql(sql, catalogs, options).map(Job::Columns);
    };
    let sides = [dataset_of(&query.table, catalogs)?, dataset_of(&join.table, catalogs)?];
    if sides[0].0.name == sides[1].0.name {
        return Err(unsupported("a JOIN of a dataset with itself"));
    }
    // The side a column belongs to: by its qualifier, else the one dataset that has it.
    let side_of = |o: &parse::Operand, place: &str| -> Result<(usize, String), AnalyticsError> {
        let OperandKind::Column(parts) = &o.kind else {
            return Err(unsupported(format!("{} {place}", o.text)));
        };
        let has =
            |i: usize, c: &str| sides[i].0.columns.iter().any(|x| x.name.eq_ignore_ascii_case(c));
        let named = |i: usize, q: &str| sides[i].1.iter().any(|x| x.eq_ignore_ascii_case(q));
        let (side, column) = match parts.as_slice() {
            [q, c] => match (named(0, q), named(1, q)) {
                (true, false) => (0, c),
                (false, true) => (1, c),
                _ => return Err(invalid(format!("{}: no dataset in FROM is called {q}", o.text))),
            },
            [c] => match (has(0, c), has(1, c)) {
                (true, false) => (0, c),
                (false, true) => (1, c),
                (true, true) => {
                    return Err(invalid(format!(
                        "column {c} is in both datasets; qualify it ({}.{c})",
                        sides[0].0.name
                    )));
                }
                (false, false) => {
                    return Err(invalid(format!("no dataset in FROM has a column {c}")));
                }
            },
            _ => return Err(unsupported(format!("{} {place}", o.text))),
        };
        let info = sides[side]
            .0
            .column(column)
            .or_else(|| sides[side].0.columns.iter().find(|x| x.name.eq_ignore_ascii_case(column)));
        match info {
            Some(info) => Ok((side, info.name.clone())),
            None => Err(AnalyticsError::UnknownColumn {
                dataset: sides[side].0.name.clone(),
                column: column.clone(),
            }),
        }
    };
    let (left, right) = (side_of(&join.on.0, "in ON")?, side_of(&join.on.1, "in ON")?);
    if left.0 == right.0 {
        return Err(invalid("ON must match a key column of each dataset".into()));
    }
    let [group] = query.group_by.as_slice() else {
        return Err(invalid(
            "a JOIN groups by exactly one column of one dataset (with a declared domain), and \
             aggregates the other's"
                .into(),
        ));
    };
    let Some(group_operand) = value(group) else {
        return Err(unsupported(format!("{} in GROUP BY (group by a column)", group.text())));
    };
    let (g, _) = side_of(group_operand, "in GROUP BY")?;
    let v = 1 - g;
    let keys = if left.0 == g { [left.1, right.1] } else { [right.1, left.1] };
    for (side, key) in [(g, &keys[0]), (v, &keys[1])] {
        let info = sides[side].0.column(key);
        if info.is_some_and(|c| c.ty != crate::schema::ColumnType::String) {
            return Err(invalid(format!(
                "join key {}.{key} must be declared as text (keys are compared as text)",
                sides[side].0.name
            )));
        }
    }
    let mut grouping = Planner::new(sides[g].0, sides[g].1.clone());
    let group_by = grouping.group_by(&query.group_by)?;
    let mut planner = Planner::new(sides[v].0, sides[v].1.clone());
    planner.joined = Some(Joined {
        qualifiers: sides[g].1.clone(),
        dataset: sides[g].0.name.clone(),
        column: group_by[0].column.clone(),
    });
    let select = query.items.iter().map(|item| planner.output(item)).collect::<Result<_, _>>()?;
    let predicate = query.selection.as_deref().map(|s| planner.predicate(s)).transpose()?;
    let aggregate = JobSpec {
        dataset: sides[v].0.name.clone(),
        filter: Vec::new(),
        columns: planner.into_columns(),
        min_parties: if options.min_parties == 0 { 2 } else { options.min_parties },
        purpose: options.purpose.clone(),
        privacy: options.rho.map(|rho| Privacy { rho }),
        k_threshold: options.k_threshold,
        predicate,
        group_by: group_by.clone(),
        select,
    };
    let spec = JoinSpec {
        kind: "join".into(),
        groups: GroupColumn {
            dataset: sides[g].0.name.clone(),
            key: keys[0].clone(),
            column: group_by[0].column.clone(),
        },
        values: KeyColumn { dataset: sides[v].0.name.clone(), key: keys[1].clone() },
        case_fold: false,
        aggregate,
    };
    spec.check()?;
    Ok(Job::Join(spec))
}

/// A join's group side, as the value side's planner sees it.
struct Joined {
    /// Names its columns may be qualified with.
    qualifiers: Vec<String>,
    /// Its dataset.
    dataset: String,
    /// Its GROUP BY column.
    column: String,
}

/// The catalog of the table in FROM, and the names columns may be qualified with.
fn dataset_of<'c>(
    table: &TableRef,
    catalogs: &'c [DatasetCatalog],
) -> Result<(&'c DatasetCatalog, Vec<String>), AnalyticsError> {
    let name = &table.name;
    let catalog = catalogs
        .iter()
        .find(|c| c.name == *name)
        .or_else(|| catalogs.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
        .ok_or_else(|| {
            let known: Vec<&str> = catalogs.iter().map(|c| c.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            invalid(format!("no dataset {name:?}; known: {known}"))
        })?;
    let mut qualifiers = vec![catalog.name.clone(), name.clone()];
    qualifiers.extend(table.alias.iter().cloned());
    Ok((catalog, qualifiers))
}

/// A numeric column an aggregate reads.
struct Request {
    name: String,
    min: f64,
    max: f64,
    /// Edges given by a `HISTOGRAM` in the query.
    edges: Option<Vec<f64>>,
    /// MIN, MAX or a quantile reads its histogram.
    needs_histogram: bool,
}

/// The state of planning one query.
struct Planner<'c> {
    catalog: &'c DatasetCatalog,
    /// Names a column may be qualified with (the dataset, the table as written, its alias).
    qualifiers: Vec<String>,
    /// The GROUP BY columns.
    group_by: Vec<String>,
    requests: Vec<Request>,
    /// In a join, the other dataset, whose GROUP BY column the SELECT list may name.
    joined: Option<Joined>,
}

/// An argument or GROUP BY item as an operand, if it is one.
fn value(a: &Arg) -> Option<&Operand> {
    match a {
        Arg::Value(o) => Some(o),
        Arg::Star | Arg::Other(_) => None,
    }
}

impl<'c> Planner<'c> {
    fn new(catalog: &'c DatasetCatalog, qualifiers: Vec<String>) -> Self {
        Self { catalog, qualifiers, group_by: Vec::new(), requests: Vec::new(), joined: None }
    }

    /// In a join, whether an operand names the other dataset's GROUP BY column.
    fn joined_group(&self, o: &Operand) -> Option<String> {
        let joined = self.joined.as_ref()?;
        let OperandKind::Column(parts) = &o.kind else { return None };
        let ours = |c: &str| self.catalog.columns.iter().any(|x| x.name.eq_ignore_ascii_case(c));
        match parts.as_slice() {
            [c] if c.eq_ignore_ascii_case(&joined.column) && !ours(c) => {
                Some(joined.column.clone())
            }
            [q, c]
                if c.eq_ignore_ascii_case(&joined.column)
                    && joined.qualifiers.iter().any(|x| x.eq_ignore_ascii_case(q)) =>
            {
                Some(joined.column.clone())
            }
            _ => None,
        }
    }

    /// The column name an operand is, if it is a bare (or qualified) column.
    fn column_name<'o>(&self, o: &'o Operand) -> Option<&'o str> {
        match &o.kind {
            OperandKind::Column(parts) => match parts.as_slice() {
                [c] => Some(c),
                [q, c] if self.qualifiers.iter().any(|x| x.eq_ignore_ascii_case(q)) => Some(c),
                _ => None,
            },
            OperandKind::Literal(_) | OperandKind::Other => None,
        }
    }

    /// A column of the catalog, matched exactly or else case-insensitively.
    fn column(&self, name: &str) -> Result<&'c ColumnInfo, AnalyticsError> {
        let columns = &self.catalog.columns;
        columns
            .iter()
            .find(|c| c.name == name)
            .or_else(|| {
                let mut found = columns.iter().filter(|c| c.name.eq_ignore_ascii_case(name));
                found.next().filter(|_| found.next().is_none())
            })
            .ok_or_else(|| AnalyticsError::UnknownColumn {
                dataset: self.catalog.name.clone(),
                column: name.to_string(),
            })
    }

    /// The column an operand must be, `context` saying where it stands.
    fn column_of(&self, o: &Operand, context: &str) -> Result<&'c ColumnInfo, AnalyticsError> {
        self.not_joined(o)?;
        match self.column_name(o) {
            Some(name) => self.column(name),
            None => Err(unsupported(format!("{} {context}", o.text))),
        }
    }

    /// In a join, refuses a column of the dataset the join groups by where the other's is
    /// needed (an aggregate's argument, a WHERE condition).
    fn not_joined(&self, o: &Operand) -> Result<(), AnalyticsError> {
        if let (Some(joined), OperandKind::Column(parts)) = (&self.joined, &o.kind) {
            let theirs = match parts.as_slice() {
                [q, _] => joined.qualifiers.iter().any(|x| x.eq_ignore_ascii_case(q)),
                _ => false,
            };
            if theirs {
                return Err(invalid(format!(
                    "{} is a column of {}, the dataset the join groups by; a join aggregates \
                     and filters the other dataset's columns",
                    o.text, joined.dataset
                )));
            }
        }
        Ok(())
    }

    /// The column an argument or GROUP BY item must be.
    fn column_of_arg(&self, a: &Arg, context: &str) -> Result<&'c ColumnInfo, AnalyticsError> {
        match value(a) {
            Some(o) => self.column_of(o, context),
            None => Err(unsupported(format!("{} {context}", a.text()))),
        }
    }

    fn group_by(&mut self, items: &[Arg]) -> Result<Vec<GroupBy>, AnalyticsError> {
        if items.len() > MAX_GROUP_COLUMNS {
            return Err(invalid(format!("at most {MAX_GROUP_COLUMNS} GROUP BY columns")));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let c = self.column_of_arg(item, "in GROUP BY (group by bare column names)")?;
            if self.group_by.contains(&c.name) {
                return Err(invalid(format!("GROUP BY names {} twice", c.name)));
            }
            let values = match &c.domain {
                Some(d) if !d.is_empty() => d.clone(),
                _ => {
                    return Err(invalid(format!(
                        "GROUP BY {} needs a declared value domain in the catalog",
                        c.name
                    )));
                }
            };
            self.group_by.push(c.name.clone());
            out.push(GroupBy { column: c.name.clone(), values });
        }
        Ok(out)
    }

    fn output(&mut self, item: &SelectItem) -> Result<Output, AnalyticsError> {
        let (kind, name) = match &item.expr {
            ItemExpr::Wildcard => {
                return Err(unsupported("SELECT * (name the aggregates to compute)"));
            }
            ItemExpr::Column(o) if self.joined_group(o).is_some() => {
                let name = self.joined_group(o).unwrap_or_default();
                (OutputKind::Key(name.clone()), name)
            }
            ItemExpr::Column(Operand { kind: OperandKind::Column(parts), .. })
                if self.joined.as_ref().is_some_and(
                    |j| matches!(parts.as_slice(), [c] if c.eq_ignore_ascii_case(&j.column)),
                ) =>
            {
                return Err(invalid(format!(
                    "column {} is in both datasets; qualify it",
                    parts.join(".")
                )));
            }
            ItemExpr::Column(o) => {
                let Some(name) = self.column_name(o) else {
                    return Err(unsupported(format!("the expression {} in SELECT", o.text)));
                };
                let c = self.column(name)?;
                if !self.group_by.contains(&c.name) {
                    return Err(invalid(format!(
                        "column {} is selected bare but not in GROUP BY; aggregate it or group \
                         by it",
                        c.name
                    )));
                }
                (OutputKind::Key(c.name.clone()), c.name.clone())
            }
            ItemExpr::Call(call) => self.aggregate(call)?,
            ItemExpr::Other(text) => {
                return Err(unsupported(format!("the expression {text} in SELECT")));
            }
        };
        Ok(Output { name: item.alias.clone().unwrap_or(name), kind })
    }

    /// What an aggregate call computes, and its readable name.
    fn aggregate(&mut self, f: &Call) -> Result<(OutputKind, String), AnalyticsError> {
        if f.qualified {
            return Err(unsupported(format!("the function {}", f.name)));
        }
        let fname = f.name.to_lowercase();
        let shown: Vec<&str> = f.args.iter().map(Arg::text).collect();
        let name = format!("{fname}({})", shown.join(", "));
        let number = |a: &Arg| match value(a).map(|o| &o.kind) {
            Some(OperandKind::Literal(Literal::Number(x))) => Some(*x),
            _ => None,
        };
        let is_aggregate = |f: &str| AGGREGATES.split_whitespace().any(|a| a == f);
        let star = f.args.iter().any(|a| matches!(a, Arg::Star));
        let kind = match (fname.as_str(), f.args.as_slice()) {
            ("count", [Arg::Star]) => OutputKind::CountRows,
            (f, _) if star && is_aggregate(f) => {
                return Err(invalid(format!("{name}: {}", usage(f))));
            }
            ("count", [c]) => OutputKind::Count(self.request(c, false)?),
            ("sum", [c]) => OutputKind::Sum(self.request(c, false)?),
            ("avg" | "mean", [c]) => OutputKind::Avg(self.request(c, false)?),
            ("var" | "variance" | "var_samp", [c]) => OutputKind::Variance(self.request(c, false)?),
            ("stddev" | "stddev_samp", [c]) => OutputKind::StdDev(self.request(c, false)?),
            ("min", [c]) => OutputKind::Min(self.request(c, true)?),
            ("max", [c]) => OutputKind::Max(self.request(c, true)?),
            ("median", [c]) => OutputKind::Quantile(self.request(c, true)?, 0.5),
            ("quantile" | "approx_quantile", [c, q]) => {
                let q = number(q).filter(|q| (0.0..=1.0).contains(q)).ok_or_else(|| {
                    invalid(format!("{name}: the quantile must be a number between 0 and 1"))
                })?;
                OutputKind::Quantile(self.request(c, true)?, q)
            }
            ("histogram", [c, edges @ ..]) => {
                let column = self.request(c, false)?;
                let edges =
                    edges.iter().map(number).collect::<Option<Vec<f64>>>().ok_or_else(|| {
                        invalid(format!("{name}: edges must be numeric literals"))
                    })?;
                if edges.len() < 2 || edges.len() > MAX_BINS + 1 {
                    return Err(invalid(format!(
                        "{name}: a histogram needs between 2 and {} edges",
                        MAX_BINS + 1
                    )));
                }
                if !edges.windows(2).all(|w| w[0] < w[1]) {
                    return Err(invalid(format!("{name}: edges must be strictly increasing")));
                }
                self.set_edges(&column, edges)?;
                OutputKind::Histogram(column)
            }
            (f, _) if is_aggregate(f) => return Err(invalid(format!("{name}: {}", usage(f)))),
            _ => return Err(unsupported(format!("the function {}", fname.to_uppercase()))),
        };
        Ok((kind, name))
    }

    /// Notes that an aggregate reads column `a`; returns the column's name.
    fn request(&mut self, a: &Arg, needs_histogram: bool) -> Result<String, AnalyticsError> {
        let c =
            self.column_of_arg(a, "as an aggregate's argument (aggregate bare column names)")?;
        if !c.ty.is_numeric() {
            return Err(AnalyticsError::WrongType {
                column: c.name.clone(),
                found: c.ty,
                needed: "aggregates other than COUNT(*) need a numeric column",
            });
        }
        let Some((min, max)) = c.bounds else {
            return Err(invalid(format!(
                "column {} has no declared bounds; COUNT(column), SUM, AVG, VAR, STDDEV, MIN, \
                 MAX, HISTOGRAM and QUANTILE need them for clipping and sensitivity",
                c.name
            )));
        };
        match self.requests.iter_mut().find(|r| r.name == c.name) {
            Some(r) => r.needs_histogram |= needs_histogram,
            None => self.requests.push(Request {
                name: c.name.clone(),
                min,
                max,
                edges: None,
                needs_histogram,
            }),
        }
        Ok(c.name.clone())
    }

    fn set_edges(&mut self, column: &str, edges: Vec<f64>) -> Result<(), AnalyticsError> {
        let Some(r) = self.requests.iter_mut().find(|r| r.name == column) else {
            return Err(invalid(format!("column {column} is not aggregated")));
        };
        if r.edges.as_ref().is_some_and(|e| *e != edges) {
            return Err(invalid(format!(
                "column {column} has two different HISTOGRAM edge lists; a column gets one \
                 histogram"
            )));
        }
        r.edges = Some(edges);
        Ok(())
    }

    fn into_columns(self) -> Vec<ColumnRequest> {
        self.requests
            .into_iter()
            .map(|r| {
                let histogram = match (r.edges, r.needs_histogram) {
                    (Some(edges), _) => edges,
                    (None, true) => {
                        let n = DEFAULT_BINS as f64;
                        let edge = |i: usize| r.min + (r.max - r.min) * i as f64 / n;
                        (0..DEFAULT_BINS).map(edge).chain([r.max]).collect()
                    }
                    (None, false) => Vec::new(),
                };
                ColumnRequest { name: r.name, min: r.min, max: r.max, histogram }
            })
            .collect()
    }

    /// The WHERE clause, in postfix order, as a predicate: folded with a stack, so the
    /// clause's length and nesting never reach the call stack. A chain of AND (or OR) whose
    /// operand is a parenthesised chain of the same operator becomes one list.
    fn predicate(&self, steps: &[Step]) -> Result<Predicate, AnalyticsError> {
        /// A folded predicate, and the operator of the chain that made it.
        type Folded = (Predicate, Option<bool>);
        let mut stack: Vec<Folded> = Vec::new();
        // The parser emits well-formed postfix; a malformed list is refused, not trusted.
        let malformed = || invalid("the WHERE clause could not be read".into());
        for step in steps {
            match step {
                Step::Atom(atom) => stack.push((self.atom(atom)?, None)),
                Step::Not => {
                    let (p, _) = stack.pop().ok_or_else(malformed)?;
                    stack.push((Predicate::Not(Box::new(p)), None));
                }
                Step::And(n) | Step::Or(n) => {
                    let and = matches!(step, Step::And(_));
                    let from = stack.len().checked_sub(*n).ok_or_else(malformed)?;
                    let mut parts = Vec::with_capacity(*n);
                    for (p, chain) in stack.drain(from..) {
                        match p {
                            Predicate::And(v) | Predicate::Or(v) if chain == Some(and) => {
                                parts.extend(v)
                            }
                            p => parts.push(p),
                        }
                    }
                    let p = if and { Predicate::And(parts) } else { Predicate::Or(parts) };
                    stack.push((p, Some(and)));
                }
            }
        }
        // How deep the result nests is checked with the rest of the specification.
        match (stack.pop(), stack.is_empty()) {
            (Some((p, _)), true) => Ok(p),
            _ => Err(malformed()),
        }
    }

    /// One condition on a column.
    fn atom(&self, atom: &Atom) -> Result<Predicate, AnalyticsError> {
        Ok(match atom {
            Atom::Compare { left, op, right } => {
                self.not_joined(left)?;
                self.not_joined(right)?;
                let (column, value, op) = match (self.column_name(left), self.column_name(right)) {
                    (Some(c), None) => (c, right, *op),
                    (None, Some(c)) => (c, left, flip(*op)),
                    (Some(_), Some(_)) => {
                        return Err(unsupported("comparing two columns (quote text: 'UA')"));
                    }
                    (None, None) => {
                        return Err(unsupported(format!(
                            "the condition {} {} {} (compare a column with a literal)",
                            left.text,
                            op.sql(),
                            right.text
                        )));
                    }
                };
                self.compare(self.column(column)?, op, value)?
            }
            Atom::Between { operand, negated, low, high } => {
                let c = self.column_of(operand, "before BETWEEN (put a column there)")?;
                let p = Predicate::And(vec![
                    self.compare(c, Op::Ge, low)?,
                    self.compare(c, Op::Le, high)?,
                ]);
                if *negated { Predicate::Not(Box::new(p)) } else { p }
            }
            Atom::In { operand, negated, values } => {
                let c = self.column_of(operand, "before IN (put a column there)")?;
                let values = values
                    .iter()
                    .map(|x| {
                        let value = literal_of(x)?;
                        check_literal(c, Op::Eq, &value)?;
                        Ok(value)
                    })
                    .collect::<Result<_, AnalyticsError>>()?;
                Predicate::In { column: c.name.clone(), values, negated: *negated }
            }
            Atom::IsNull { operand, negated } => Predicate::IsNull {
                column: self
                    .column_of(operand, "before IS NULL (put a column there)")?
                    .name
                    .clone(),
                negated: *negated,
            },
        })
    }

    /// `column op value`, the value a literal of the column's type.
    fn compare(
        &self,
        c: &ColumnInfo,
        op: Op,
        value: &Operand,
    ) -> Result<Predicate, AnalyticsError> {
        let value = literal_of(value)?;
        check_literal(c, op, &value)?;
        Ok(Predicate::Compare(Condition { column: c.name.clone(), op, value }))
    }
}

/// What each aggregate takes, for errors about its arguments.
fn usage(function: &str) -> &'static str {
    match function {
        "count" => "COUNT takes * or one column",
        "quantile" | "approx_quantile" => "QUANTILE takes a column and a number q in [0, 1]",
        "histogram" => "HISTOGRAM takes a column and at least two increasing numeric edges",
        _ => "the aggregate takes one column",
    }
}

/// The comparison with its sides swapped.
fn flip(op: Op) -> Op {
    match op {
        Op::Lt => Op::Gt,
        Op::Le => Op::Ge,
        Op::Gt => Op::Lt,
        Op::Ge => Op::Le,
        same => same,
    }
}

fn literal_of(o: &Operand) -> Result<Literal, AnalyticsError> {
    match &o.kind {
        OperandKind::Literal(l) => Ok(l.clone()),
        OperandKind::Column(_) | OperandKind::Other => Err(unsupported(format!(
            "{} as a value (compare with numbers or single-quoted text)",
            o.text
        ))),
    }
}

/// Whether a literal fits its column's type (text is only compared for (in)equality).
fn check_literal(c: &ColumnInfo, op: Op, value: &Literal) -> Result<(), AnalyticsError> {
    let needed = match (value, c.ty.is_numeric()) {
        (Literal::Number(_), true) => return Ok(()),
        (Literal::Text(_), false) if matches!(op, Op::Eq | Op::Ne) => return Ok(()),
        (Literal::Text(_), false) => "text can only be compared with = or <> (or IN)",
        (Literal::Number(_), false) => "the condition compares it with a number",
        (Literal::Text(_), true) => "the condition compares it with text",
    };
    Err(AnalyticsError::WrongType { column: c.name.clone(), found: c.ty, needed })
}

/// Turns an answer into the table the query's SELECT list asks for: one row per group when
/// the query groups (suppressed groups show their key and nulls, and a trailing `suppressed`
/// column says which), else one row. A differentially private answer gets the 95% intervals of
/// its noise and its privacy block; readings off a histogram say so, with their resolution.
pub fn result_table(spec: &JobSpec, answer: &Answer) -> Table {
    let grouped = !spec.group_by.is_empty();
    let mut headers: Vec<String> = spec.select.iter().map(|o| o.name.clone()).collect();
    let noise = answer
        .privacy
        .map(|calibration| Noise { calibration, contributors: answer.contributors.len() });
    let sources: Vec<RowSource<'_>> = if grouped {
        answer
            .groups
            .iter()
            .map(|g| RowSource {
                key: &g.key,
                rows: g.rows,
                columns: &g.columns,
                suppressed: g.suppressed,
            })
            .collect()
    } else {
        vec![RowSource {
            key: &[],
            rows: (!answer.suppressed).then_some(answer.rows),
            columns: &answer.columns,
            suppressed: answer.suppressed,
        }]
    };
    let cells: Vec<Vec<Cell>> = sources
        .iter()
        .map(|source| {
            spec.select
                .iter()
                .map(|o| match &o.kind {
                    OutputKind::Key(c) => Cell::plain(
                        spec.group_by
                            .iter()
                            .position(|b| b.column == *c)
                            .and_then(|i| source.key.get(i))
                            .map_or(Json::Null, |k| Json::String(k.clone())),
                    ),
                    _ if source.suppressed => Cell::plain(Json::Null),
                    kind => cell(spec, kind, source.rows, source.columns, noise.as_ref()),
                })
                .collect()
        })
        .collect();
    let mut rows: Vec<Vec<Json>> =
        cells.iter().map(|r| r.iter().map(|c| c.value.clone()).collect()).collect();
    if grouped {
        headers.push("suppressed".to_string());
        for (row, source) in rows.iter_mut().zip(&sources) {
            row.push(Json::Bool(source.suppressed));
        }
    }
    let ci95 = noise.as_ref().map(|_| {
        cells
            .iter()
            .map(|r| {
                let mut ci: Vec<Option<f64>> = r.iter().map(|c| c.ci95).collect();
                if grouped {
                    ci.push(None);
                }
                ci
            })
            .collect()
    });
    let bounds =
        |column: &str| spec.columns.iter().find(|c| c.name == column).map(|c| (c.min, c.max));
    let mut approximate = Vec::new();
    let mut histograms = Vec::new();
    for (i, o) in spec.select.iter().enumerate() {
        match &o.kind {
            // A planned query declares the bounds of every column it aggregates.
            OutputKind::Min(c) | OutputKind::Max(c) | OutputKind::Quantile(c, _) => {
                if let Some(bounds) = bounds(c) {
                    approximate.push(Approximate {
                        column: i,
                        bounds,
                        readings: cells.iter().map(|r| r[i].reading).collect(),
                    })
                }
            }
            OutputKind::Histogram(c) => histograms.push(HistogramOutput {
                column: i,
                edges: spec
                    .columns
                    .iter()
                    .find(|r| r.name == *c)
                    .map(|r| r.histogram.clone())
                    .unwrap_or_default(),
                below: cells.iter().map(|r| r[i].outside.0).collect(),
                above: cells.iter().map(|r| r[i].outside.1).collect(),
            }),
            _ => {}
        }
    }
    let notes = notes(spec, answer, &headers, &approximate, noise.is_some());
    Table { headers, rows, ci95, approximate, histograms, notes, privacy: answer.privacy }
}

/// What one row of the table is made from: a group, or the whole answer.
struct RowSource<'a> {
    /// The group's key (empty for the whole answer).
    key: &'a [String],
    rows: Option<u64>,
    columns: &'a [ColumnAnswer],
    suppressed: bool,
}

/// The noise of a differentially private answer.
struct Noise {
    calibration: DpCalibration,
    /// Parties whose noise is in the sum.
    contributors: usize,
}

impl Noise {
    /// The half-width of a 95% interval of the noise in a count.
    fn count(&self) -> f64 {
        Z95 * self.calibration.count_sd(self.contributors)
    }
}

/// z of a two-sided 95% interval of a normal distribution, as the answer's own
/// [`NoiseReport`](crate::plan::NoiseReport) rounds it.
const Z95: f64 = 1.96;

/// One output's value in one row, and what the table says about it.
struct Cell {
    value: Json,
    ci95: Option<f64>,
    reading: Option<Reading>,
    /// A histogram's slots below and above its edges.
    outside: (Option<u64>, Option<u64>),
}

impl Cell {
    fn plain(value: Json) -> Self {
        Cell { value, ci95: None, reading: None, outside: (None, None) }
    }
}

fn json_f64(x: f64) -> Json {
    serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number)
}

/// One output's value from a group's (or the whole answer's) rows and column answers.
fn cell(
    spec: &JobSpec,
    kind: &OutputKind,
    rows: Option<u64>,
    columns: &[ColumnAnswer],
    noise: Option<&Noise>,
) -> Cell {
    let col = |name: &str| columns.iter().find(|c| c.name == name && !c.suppressed);
    let hist = |name: &str| col(name).and_then(|c| c.histogram.as_ref());
    let request = |name: &str| spec.columns.iter().find(|c| c.name == name);
    let counted = |value: Option<u64>| {
        let ci95 = noise.filter(|_| value.is_some()).map(Noise::count);
        Cell { ci95, ..Cell::plain(value.map_or(Json::Null, Json::from)) }
    };
    let stat = |name: &str, f: &dyn Fn(&ColumnAnswer) -> Option<f64>| {
        Cell::plain(col(name).and_then(f).map_or(Json::Null, json_f64))
    };
    let read = |name: &str, f: &dyn Fn(&Histogram) -> Option<Read>| {
        let Some(r) = hist(name).and_then(f) else { return Cell::plain(Json::Null) };
        let (lo, hi) = request(name).map_or((r.value, r.value), |c| (c.min, c.max));
        let value = r.value.clamp(lo, hi);
        Cell {
            reading: Some(Reading { bin_width: r.bin_width, clamped: value != r.value }),
            ..Cell::plain(json_f64(value))
        }
    };
    match kind {
        OutputKind::Key(_) => Cell::plain(Json::Null),
        OutputKind::CountRows => counted(rows),
        OutputKind::Count(c) => counted(col(c).map(|a| a.count)),
        OutputKind::Sum(c) => {
            let mut cell = stat(c, &|a| Some(a.sum));
            if let (Some(n), Some(r), false) = (noise, request(c), cell.value.is_null()) {
                cell.ci95 = Some(Z95 * n.calibration.sum_sd(r.min, r.max, n.contributors));
            }
            cell
        }
        OutputKind::Avg(c) => {
            let mut cell = stat(c, &|a| a.mean);
            if let (Some(n), Some(r), Some(a)) = (noise, request(c), col(c)) {
                cell.ci95 = a.mean.and_then(|mean| {
                    crate::plan::mean_noise_half_width(
                        a.count,
                        a.sum,
                        mean,
                        n.calibration.count_sd(n.contributors),
                        n.calibration.sum_sd(r.min, r.max, n.contributors),
                        Some((r.min, r.max)),
                    )
                });
            }
            cell
        }
        OutputKind::Variance(c) => stat(c, &|a| a.variance),
        OutputKind::StdDev(c) => stat(c, &|a| a.std_dev),
        OutputKind::Min(c) => read(c, &histogram_min),
        OutputKind::Max(c) => read(c, &histogram_max),
        OutputKind::Quantile(c, q) => read(c, &|h| quantile(h, *q)),
        OutputKind::Histogram(c) => match hist(c) {
            None => Cell::plain(Json::Null),
            Some(h) => Cell {
                value: Json::Array(
                    h.counts.iter().map(|n| n.map_or(Json::Null, Json::from)).collect(),
                ),
                // Every slot carries the same noise.
                ci95: noise.map(Noise::count),
                reading: None,
                outside: (h.below, h.above),
            },
        },
    }
}

/// A number for a sentence: six significant digits, without a float's last-digit noise.
fn short(x: f64) -> String {
    format!("{:.5e}", x).parse::<f64>().map_or_else(|_| x.to_string(), |v| v.to_string())
}

/// The table's notes: what the group keys, the intervals and the approximate readings mean,
/// and what the k-threshold withheld.
fn notes(
    spec: &JobSpec,
    answer: &Answer,
    headers: &[String],
    approximate: &[Approximate],
    private: bool,
) -> Vec<String> {
    let mut notes = Vec::new();
    if !spec.group_by.is_empty() {
        notes.push(format!(
            "{OTHER} is the group of values outside a GROUP BY column's declared domain, \
             {NULL_GROUP} the group of missing values"
        ));
    }
    if private {
        notes.push(
            "± is the half-width of a 95% interval of the noise added for differential privacy \
             (not of sampling, clipping or rounding): for COUNT, SUM and each HISTOGRAM bin, \
             1.96 standard deviations of its noise; for AVG a conservative bound, holding \
             whenever the noise in both its sum and its count lies within their 97.5% \
             intervals; ±? where no interval can be stated: VAR, STDDEV, values read off a \
             histogram, and AVG when its count's interval reaches below one"
                .to_string(),
        );
    }
    for a in approximate {
        let Some(output) = spec.select.get(a.column) else { continue };
        let column = match &output.kind {
            OutputKind::Min(c) | OutputKind::Max(c) | OutputKind::Quantile(c, _) => c,
            _ => continue,
        };
        let readings: Vec<&Reading> = a.readings.iter().flatten().collect();
        let widths: Vec<f64> = readings.iter().filter_map(|r| r.bin_width).collect();
        let (narrowest, widest) =
            widths.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), w| (lo.min(*w), hi.max(*w)));
        let mut note = format!(
            "{} is approximate: read off a histogram of {column}, so the true value lies within \
             the bin it was read in",
            headers[a.column]
        );
        if !widths.is_empty() {
            if short(narrowest) == short(widest) {
                note += &format!(" (bin width {})", short(widest));
            } else {
                note += &format!(" (bin widths {} to {})", short(narrowest), short(widest));
            }
        }
        if readings.iter().any(|r| r.bin_width.is_none()) {
            note += "; where values lie beyond the histogram's edges it shows the outer edge, \
                     and the true value lies beyond it";
        }
        if private {
            note += "; the bins are noisy, so an empty bin may look filled and the reading be \
                     off by more than a bin";
        }
        note += &format!(
            "; values are kept within {column}'s declared bounds [{}, {}]",
            short(a.bounds.0),
            short(a.bounds.1)
        );
        let clamped = readings.iter().filter(|r| r.clamped).count();
        if clamped > 0 {
            note += &format!(
                " ({clamped} of {} shown at a bound they were read beyond)",
                readings.len()
            );
        }
        notes.push(note);
    }
    let k = spec.k_threshold.unwrap_or(0);
    if spec.group_by.is_empty() && k > 0 {
        if answer.suppressed {
            notes.push(format!("withheld: fewer rows than the k-threshold ({k})"));
        } else {
            for c in answer.columns.iter().filter(|c| c.suppressed) {
                notes.push(format!(
                    "{}'s statistics withheld by the k-threshold ({k}): fewer values than k, or \
                     a histogram slot under k that the other numbers would give away",
                    c.name
                ));
            }
        }
    }
    notes
}

fn nonzero(n: &Option<u64>) -> bool {
    n.is_some_and(|n| n > 0)
}

/// A value read off a histogram.
struct Read {
    value: f64,
    /// The width of the bin it was read in; `None` for an outer edge standing for the values
    /// beyond it.
    bin_width: Option<f64>,
}

impl Read {
    fn in_bin(h: &Histogram, i: usize, value: f64) -> Option<Read> {
        let width = h.edges.get(i + 1)? - h.edges.get(i)?;
        Some(Read { value, bin_width: Some(width) })
    }

    fn edge(value: Option<f64>) -> Option<Read> {
        value.map(|value| Read { value, bin_width: None })
    }
}

/// The lower edge of the lowest non-empty bin (the first edge if values lie below it).
fn histogram_min(h: &Histogram) -> Option<Read> {
    let (first, last) = (h.edges.first().copied(), h.edges.last().copied());
    if nonzero(&h.below) {
        return Read::edge(first);
    }
    match h.counts.iter().position(nonzero) {
        Some(i) => Read::in_bin(h, i, *h.edges.get(i)?),
        None => Read::edge(last.filter(|_| nonzero(&h.above))),
    }
}

/// The upper edge of the highest non-empty bin (the last edge if values lie above it).
fn histogram_max(h: &Histogram) -> Option<Read> {
    let (first, last) = (h.edges.first().copied(), h.edges.last().copied());
    if nonzero(&h.above) {
        return Read::edge(last);
    }
    match h.counts.iter().rposition(nonzero) {
        Some(i) => Read::in_bin(h, i, *h.edges.get(i + 1)?),
        None => Read::edge(first.filter(|_| nonzero(&h.below))),
    }
}

/// The `q` quantile, interpolated linearly within the bin it falls in; values below the first
/// edge count as at it, values above the last as at that, suppressed bins as empty.
fn quantile(h: &Histogram, q: f64) -> Option<Read> {
    let n = |c: &Option<u64>| c.unwrap_or(0) as f64;
    let (below, above) = (n(&h.below), n(&h.above));
    let total = below + above + h.counts.iter().map(n).sum::<f64>();
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    if below > 0.0 && target <= below {
        return Read::edge(h.edges.first().copied());
    }
    let mut cumulative = below;
    for (i, c) in h.counts.iter().enumerate() {
        let count = n(c);
        if count > 0.0 && cumulative + count >= target {
            let (lo, hi) = (*h.edges.get(i)?, *h.edges.get(i + 1)?);
            let fraction = ((target - cumulative) / count).clamp(0.0, 1.0);
            return Read::in_bin(h, i, lo + fraction * (hi - lo));
        }
        cumulative += count;
    }
    Read::edge(h.edges.last().copied())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::Plan;
    use crate::schema::{ColumnType, DatasetSchema, Value};

    fn catalog() -> DatasetCatalog {
        let col = |name: &str, ty, bounds, domain: Option<Vec<String>>| ColumnInfo {
            name: name.into(),
            ty,
            bounds,
            domain,
        };
        let months = (1..=12).map(|m| m.to_string()).collect();
        let carriers = ["AA", "UA", "DL"].map(String::from).to_vec();
        DatasetCatalog {
            name: "flights".into(),
            columns: vec![
                col("month", ColumnType::Int, Some((1.0, 12.0)), Some(months)),
                col("carrier", ColumnType::String, None, Some(carriers)),
                col("dep_delay", ColumnType::Float, Some((-60.0, 1500.0)), None),
                col("tailnum", ColumnType::String, None, None),
            ],
        }
    }

    fn plan(sql: &str) -> Result<JobSpec, AnalyticsError> {
        plan_sql(sql, &[catalog()], &SqlOptions::default())
    }

    fn error(sql: &str) -> String {
        plan(sql).unwrap_err().to_string()
    }

    fn cmp(column: &str, op: Op, value: Literal) -> Predicate {
        Predicate::Compare(Condition { column: column.into(), op, value })
    }

    #[test]
    fn a_grouped_query_becomes_the_expected_spec() {
        let options = SqlOptions {
            purpose: "research".into(),
            rho: Some(0.5),
            k_threshold: Some(5),
            min_parties: 0,
        };
        let spec = plan_sql(
            "SELECT carrier, COUNT(*) AS n, AVG(dep_delay), stddev(dep_delay) AS sd, \
             HISTOGRAM(dep_delay, -60, 0, 60, 1500) AS h FROM flights \
             WHERE month BETWEEN 1 AND 6 AND carrier IN ('AA', 'UA') OR dep_delay IS NULL \
             GROUP BY carrier",
            &[catalog()],
            &options,
        )
        .unwrap();
        assert_eq!(spec.dataset, "flights");
        assert!(spec.filter.is_empty());
        assert_eq!(
            spec.columns,
            vec![ColumnRequest {
                name: "dep_delay".into(),
                min: -60.0,
                max: 1500.0,
                histogram: vec![-60.0, 0.0, 60.0, 1500.0],
            }]
        );
        let text = |s: &str| Literal::Text(s.into());
        let between = Predicate::And(vec![
            cmp("month", Op::Ge, Literal::Number(1.0)),
            cmp("month", Op::Le, Literal::Number(6.0)),
        ]);
        let expected = Predicate::Or(vec![
            Predicate::And(vec![
                between,
                Predicate::In {
                    column: "carrier".into(),
                    values: vec![text("AA"), text("UA")],
                    negated: false,
                },
            ]),
            Predicate::IsNull { column: "dep_delay".into(), negated: false },
        ]);
        assert_eq!(spec.predicate, Some(expected));
        assert_eq!(
            spec.group_by,
            vec![GroupBy {
                column: "carrier".into(),
                values: vec!["AA".into(), "UA".into(), "DL".into()]
            }]
        );
        let out = |name: &str, kind| Output { name: name.into(), kind };
        let d = || "dep_delay".to_string();
        assert_eq!(
            spec.select,
            vec![
                out("carrier", OutputKind::Key("carrier".into())),
                out("n", OutputKind::CountRows),
                out("avg(dep_delay)", OutputKind::Avg(d())),
                out("sd", OutputKind::StdDev(d())),
                out("h", OutputKind::Histogram(d())),
            ]
        );
        assert_eq!(spec.min_parties, 2);
        assert_eq!(spec.purpose, "research");
        assert_eq!(spec.privacy, Some(Privacy { rho: 0.5 }));
        assert_eq!(spec.k_threshold, Some(5));
    }

    #[test]
    fn literals_on_the_left_flip_the_comparison() {
        let spec = plan(
            "SELECT COUNT(*) FROM flights f WHERE 3 < month AND -5 >= f.dep_delay \
             AND 'UA' <> carrier AND NOT (month NOT IN (1, 2) OR tailnum IS NOT NULL)",
        )
        .unwrap();
        let expected = Predicate::And(vec![
            cmp("month", Op::Gt, Literal::Number(3.0)),
            cmp("dep_delay", Op::Le, Literal::Number(-5.0)),
            cmp("carrier", Op::Ne, Literal::Text("UA".into())),
            Predicate::Not(Box::new(Predicate::Or(vec![
                Predicate::In {
                    column: "month".into(),
                    values: vec![Literal::Number(1.0), Literal::Number(2.0)],
                    negated: true,
                },
                Predicate::IsNull { column: "tailnum".into(), negated: true },
            ]))),
        ]);
        assert_eq!(spec.predicate, Some(expected));
        assert_eq!(
            spec.select,
            vec![Output { name: "count(*)".into(), kind: OutputKind::CountRows }]
        );
        assert!(spec.columns.is_empty());
    }

    #[test]
    fn median_min_and_max_share_a_default_histogram() {
        let spec =
            plan("SELECT MEDIAN(dep_delay), MIN(dep_delay), SUM(dep_delay) FROM flights").unwrap();
        assert_eq!(spec.columns.len(), 1);
        let h = &spec.columns[0].histogram;
        assert_eq!(h.len(), DEFAULT_BINS + 1);
        assert_eq!((h[0], h[DEFAULT_BINS]), (-60.0, 1500.0));
        assert!(h.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(spec.select[0].kind, OutputKind::Quantile("dep_delay".into(), 0.5));
        assert_eq!(spec.select[0].name, "median(dep_delay)");
        let e = error("SELECT HISTOGRAM(dep_delay, 0, 1), HISTOGRAM(dep_delay, 0, 2) FROM flights");
        assert!(e.contains("two different HISTOGRAM edge lists"), "{e}");
        let e = error("SELECT QUANTILE(dep_delay, 1.5) FROM flights");
        assert!(e.contains("between 0 and 1"), "{e}");
    }

    #[test]
    fn unsupported_sql_says_what_is_and_is_not_supported() {
        let refused = [
            (
                "SELECT COUNT(*) FROM flights LEFT JOIN planes ON flights.tailnum = planes.tailnum",
                "this kind of JOIN",
            ),
            ("SELECT COUNT(*) FROM flights, planes", "several tables in FROM"),
            ("SELECT COUNT(*) FROM flights JOIN planes USING (tailnum)", "JOIN … USING"),
            (
                "SELECT COUNT(*) FROM flights f JOIN planes p ON f.tailnum = p.tailnum AND f.month = 1",
                "a join on several conditions",
            ),
            ("SELECT COUNT(*) FROM flights ORDER BY 1", "ORDER BY"),
            (
                "SELECT COUNT(*) FROM flights WHERE month IN (SELECT month FROM flights)",
                "a subquery",
            ),
            ("SELECT COUNT(*) FROM (SELECT * FROM flights)", "a subquery"),
            ("SELECT COUNT(*) FROM flights; SELECT SUM(month) FROM flights", "several statements"),
            ("SELECT * FROM flights", "SELECT *"),
            ("SELECT DISTINCT carrier FROM flights GROUP BY carrier", "DISTINCT"),
            ("SELECT COUNT(*) FROM flights GROUP BY carrier HAVING COUNT(*) > 3", "HAVING"),
            ("SELECT COUNT(*) OVER () FROM flights", "window functions"),
            ("SELECT LOWER(carrier) FROM flights", "the function LOWER"),
        ];
        for (sql, what) in refused {
            let e = error(sql);
            assert!(e.contains(&format!("not supported: {what}")), "{sql}: {e}");
            assert!(e.contains("supported: SELECT aggregates"), "{sql}: {e}");
        }
    }

    fn planes() -> DatasetCatalog {
        let col = |name: &str, ty, domain: Option<Vec<String>>| ColumnInfo {
            name: name.into(),
            ty,
            bounds: None,
            domain,
        };
        let makers = ["BOEING", "AIRBUS"].map(String::from).to_vec();
        DatasetCatalog {
            name: "planes".into(),
            columns: vec![
                col("tailnum", ColumnType::String, None),
                col("manufacturer", ColumnType::String, Some(makers)),
                col("engine", ColumnType::String, None),
            ],
        }
    }

    fn join(sql: &str) -> Result<Job, AnalyticsError> {
        plan_sql_job(
            sql,
            &[catalog(), planes()],
            &SqlOptions { k_threshold: Some(5), ..SqlOptions::default() },
        )
    }

    #[test]
    fn a_join_plans_into_a_private_join_grouped_by_the_other_datasets_column() {
        let sql = "SELECT r.manufacturer, COUNT(*), AVG(f.dep_delay) FROM flights f \
                   JOIN planes r ON f.tailnum = r.tailnum WHERE f.month <= 6 GROUP BY r.manufacturer";
        let Ok(Job::Join(spec)) = join(sql) else { panic!("{:?}", join(sql)) };
        assert_eq!(
            (spec.groups.dataset.as_str(), spec.groups.key.as_str(), spec.groups.column.as_str()),
            ("planes", "tailnum", "manufacturer")
        );
        assert_eq!(
            (spec.values.dataset.as_str(), spec.values.key.as_str()),
            ("flights", "tailnum")
        );
        assert_eq!(spec.aggregate.dataset, "flights");
        assert_eq!(spec.aggregate.group_by[0].values, ["BOEING", "AIRBUS"]);
        assert_eq!(spec.aggregate.columns[0].name, "dep_delay");
        assert_eq!(spec.aggregate.select[0].kind, OutputKind::Key("manufacturer".into()));
        assert!(spec.aggregate.predicate.is_some());
        // Either order of the tables, either order in ON, bare names where they are unique.
        let swapped = "SELECT manufacturer, COUNT(*), AVG(dep_delay) FROM planes JOIN flights \
                       ON flights.tailnum = planes.tailnum WHERE month <= 6 GROUP BY manufacturer";
        let Ok(Job::Join(other)) = join(swapped) else { panic!("{:?}", join(swapped)) };
        assert_eq!(other.groups, spec.groups);
        assert_eq!(other.values, spec.values);
        // The consumer's check of the plan before it signs.
        let options = SqlOptions { k_threshold: Some(5), ..SqlOptions::default() };
        check_join_plan(sql, &options, &spec).unwrap();
        let mut moved = spec.clone();
        moved.values.key = "flight".into();
        assert!(check_join_plan(sql, &options, &moved).is_err());
        assert!(check_plan(sql, &options, &spec.aggregate).is_err(), "a join is not a column job");
        // A query without a JOIN plans as before.
        assert!(matches!(join("SELECT COUNT(*) FROM flights"), Ok(Job::Columns(_))));
    }

    #[test]
    fn a_join_that_cannot_be_run_privately_says_why() {
        let e = |sql: &str| join(sql).unwrap_err().to_string();
        let base = "FROM flights f JOIN planes r ON f.tailnum = r.tailnum";
        let cases = [
            (
                format!("SELECT AVG(f.dep_delay) {base} GROUP BY f.carrier"),
                "aggregates and filters the other",
            ),
            (format!("SELECT COUNT(*) {base}"), "groups by exactly one column"),
            (
                format!("SELECT COUNT(*) {base} GROUP BY r.manufacturer, r.engine"),
                "groups by exactly one column",
            ),
            (
                format!("SELECT COUNT(r.engine) {base} GROUP BY r.manufacturer"),
                "the dataset the join groups by",
            ),
            (
                format!("SELECT COUNT(*) {base} WHERE r.engine = 'x' GROUP BY r.manufacturer"),
                "the dataset the join groups by",
            ),
            (format!("SELECT COUNT(*) {base} GROUP BY r.engine"), "declared value domain"),
            (
                "SELECT COUNT(*) FROM flights f JOIN planes r ON f.month = r.tailnum GROUP BY r.manufacturer".into(),
                "must be declared as text",
            ),
            (
                "SELECT COUNT(*) FROM flights a JOIN flights b ON a.tailnum = b.tailnum GROUP BY a.carrier".into(),
                "a JOIN of a dataset with itself",
            ),
            (
                "SELECT COUNT(*) FROM flights f JOIN planes r ON f.tailnum = x.tailnum GROUP BY r.manufacturer".into(),
                "no dataset in FROM is called x",
            ),
            (
                "SELECT COUNT(*) FROM flights f JOIN planes r ON tailnum = r.tailnum GROUP BY r.manufacturer".into(),
                "in both datasets; qualify it",
            ),
        ];
        for (sql, why) in cases {
            let message = e(&sql);
            assert!(message.contains(why), "{sql}: {message}");
        }
        // A private join carries its charge like any aggregate.
        let options = SqlOptions { rho: Some(0.5), ..SqlOptions::default() };
        let dp = plan_sql_job(
            &format!("SELECT COUNT(*) {base} GROUP BY r.manufacturer"),
            &[catalog(), planes()],
            &options,
        );
        let Ok(Job::Join(dp)) = dp else { panic!("{dp:?}") };
        assert_eq!(dp.aggregate.privacy.map(|p| p.rho), Some(0.5));
    }

    #[test]
    fn invalid_queries_get_precise_errors() {
        assert_eq!(
            error("SELECT SUM(nope) FROM flights"),
            "dataset \"flights\" has no column \"nope\""
        );
        assert_eq!(
            error("SELECT COUNT(*) FROM trains"),
            "invalid job specification: no dataset \"trains\"; known: flights"
        );
        assert_eq!(
            error("SELECT SUM(tailnum) FROM flights"),
            "column \"tailnum\" is a string column, but aggregates other than COUNT(*) need a \
             numeric column"
        );
        assert_eq!(
            error("SELECT COUNT(*) FROM flights GROUP BY tailnum"),
            "invalid job specification: GROUP BY tailnum needs a declared value domain in the \
             catalog"
        );
        let e = error("SELECT month, COUNT(*) FROM flights GROUP BY carrier");
        assert!(e.contains("column month is selected bare but not in GROUP BY"), "{e}");
        let e = error("SELECT COUNT(*) FROM flights WHERE carrier < 'B'");
        assert!(e.contains("text can only be compared with = or <>"), "{e}");
        let e = error("SELECT COUNT(*) FROM flights WHERE month = 'May'");
        assert!(e.contains("compares it with text"), "{e}");
        let e = error("SELECT COUNT(*) FROM flights WHERE month = dep_delay");
        assert!(e.contains("not supported: comparing two columns"), "{e}");
        let mut no_bounds = catalog();
        no_bounds.columns[2].bounds = None;
        let e =
            plan_sql("SELECT AVG(dep_delay) FROM flights", &[no_bounds], &SqlOptions::default())
                .unwrap_err()
                .to_string();
        assert!(e.contains("column dep_delay has no declared bounds"), "{e}");
        assert!(matches!(plan("SELECT COUNT(* FROM flights"), Err(AnalyticsError::Parse(_))));
        assert!(matches!(plan("SELEC 1"), Err(AnalyticsError::Parse(m)) if m.contains("SELEC")));
    }

    /// Runs `spec` over rows `(month, carrier, dep_delay)` in one party and decodes the answer.
    fn run(spec: &JobSpec, rows: &[(f64, &str, Option<f64>)]) -> Answer {
        let rows: Vec<_> = rows.iter().map(|(m, c, d)| (*m, Some(*c), *d)).collect();
        run_seeded(spec, &rows, [0; 32])
    }

    /// [`run`] with missing carriers and a noise seed.
    fn run_seeded(
        spec: &JobSpec,
        rows: &[(f64, Option<&str>, Option<f64>)],
        seed: [u8; 32],
    ) -> Answer {
        let c = catalog();
        let schema = DatasetSchema {
            name: c.name.clone(),
            columns: c.columns.iter().map(|c| (c.name.clone(), c.ty)).collect(),
        };
        let plan = Plan::new(spec, &schema).unwrap();
        let mut agg = plan.aggregate(seed);
        for (month, carrier, delay) in rows {
            let row = [
                Value::Number(*month),
                carrier.map_or(Value::Null, Value::Text),
                delay.map_or(Value::Null, Value::Number),
                Value::Null,
            ];
            agg.push_row(&row).unwrap();
        }
        plan.answer(&agg.finish(), vec![0], vec![]).unwrap()
    }

    fn close(v: &Json, x: f64) -> bool {
        v.as_f64().is_some_and(|v| (v - x).abs() < 1e-9)
    }

    #[test]
    fn ungrouped_results_are_one_row() {
        let spec = plan(
            "SELECT COUNT(*), COUNT(dep_delay) AS c, SUM(dep_delay) AS s, MIN(dep_delay) AS lo, \
             MAX(dep_delay) AS hi, QUANTILE(dep_delay, 0.25) AS q1, MEDIAN(dep_delay) AS med \
             FROM flights WHERE month <= 6",
        )
        .unwrap();
        let rows = [
            (1.0, "AA", Some(-10.0)),
            (2.0, "UA", Some(10.0)),
            (3.0, "AA", Some(20.0)),
            (6.0, "DL", Some(30.0)),
            (4.0, "AA", None),
            (5.0, "UA", Some(2000.0)),
            (9.0, "AA", Some(5.0)),
        ];
        let table = result_table(&spec, &run(&spec, &rows));
        assert_eq!(table.headers, ["count(*)", "c", "s", "lo", "hi", "q1", "med"]);
        let r = &table.rows[0];
        assert_eq!(table.rows.len(), 1);
        assert_eq!((&r[0], &r[1]), (&json!(6), &json!(5)));
        assert!(close(&r[2], -10.0 + 10.0 + 20.0 + 30.0 + 1500.0), "{r:?}");
        // 100 bins of width 15.6 from -60: -10 is in [-13.2, 2.4), 10 in [2.4, 18), 20 and 30
        // in [18, 33.6), and 2000 above the last edge.
        assert!(close(&r[3], -13.2), "{r:?}");
        assert!(close(&r[4], 1500.0), "{r:?}");
        assert!(close(&r[5], 2.4 + 0.25 * 15.6), "{r:?}");
        assert!(close(&r[6], 18.0 + 0.25 * 15.6), "{r:?}");
    }

    #[test]
    fn grouped_results_have_a_row_per_group() {
        let options = SqlOptions { k_threshold: Some(2), ..SqlOptions::default() };
        let spec = plan_sql(
            "SELECT carrier, COUNT(*) AS n, AVG(dep_delay) AS mean, MIN(dep_delay) AS lo, \
             MAX(dep_delay) AS hi, MEDIAN(dep_delay) AS med, \
             HISTOGRAM(dep_delay, -60, 0, 60, 1500) AS h FROM flights GROUP BY carrier",
            &[catalog()],
            &options,
        )
        .unwrap();
        let rows = [
            (1.0, "AA", Some(-10.0)),
            (1.0, "AA", Some(10.0)),
            (1.0, "AA", Some(20.0)),
            (1.0, "AA", Some(30.0)),
            (1.0, "UA", Some(100.0)),
            (1.0, "UA", Some(200.0)),
            (1.0, "DL", Some(5.0)),
            (1.0, "XX", Some(7.0)),
        ];
        let table = result_table(&spec, &run(&spec, &rows));
        assert_eq!(table.headers, ["carrier", "n", "mean", "lo", "hi", "med", "h", "suppressed"]);
        // AA's single value below 0 and UA's empty bins are slots below k: an exact answer
        // would give them away through the count and the other slots, so those columns are
        // withheld while the groups' row counts are released.
        let rows: Vec<Json> = table.rows.into_iter().map(Json::Array).collect();
        assert_eq!(
            rows,
            [
                json!(["AA", 4, null, null, null, null, null, false]),
                json!(["UA", 2, null, null, null, null, null, false]),
                json!(["DL", null, null, null, null, null, null, true]),
                json!([OTHER, null, null, null, null, null, null, true]),
                json!([NULL_GROUP, null, null, null, null, null, null, true]),
            ]
        );
        assert!(table.ci95.is_none() && table.privacy.is_none(), "an exact answer has no noise");
    }

    /// Requirement 1: rows whose GROUP BY column is missing are a `(null)` row of their own,
    /// apart from `(other)`, released or suppressed by their own count.
    #[test]
    fn missing_group_values_are_a_null_row_of_their_own() {
        let options = SqlOptions { k_threshold: Some(2), ..SqlOptions::default() };
        let spec = plan_sql(
            "SELECT carrier, COUNT(*) AS n, SUM(dep_delay) AS s FROM flights GROUP BY carrier",
            &[catalog()],
            &options,
        )
        .unwrap();
        let rows = [
            (1.0, Some("AA"), Some(1.0)),
            (1.0, Some("AA"), Some(2.0)),
            (1.0, None, Some(10.0)),
            (1.0, None, Some(20.0)),
            (1.0, None, None),
            (1.0, Some("ZZ"), Some(5.0)),
            (1.0, Some("ZZ"), Some(6.0)),
        ];
        let table = result_table(&spec, &run_seeded(&spec, &rows, [0; 32]));
        let shown: Vec<Json> = table.rows.iter().cloned().map(Json::Array).collect();
        assert_eq!(
            shown,
            [
                json!(["AA", 2, 3.0, false]),
                json!(["UA", null, null, true]),
                json!(["DL", null, null, true]),
                json!([OTHER, 2, 11.0, false]),
                json!([NULL_GROUP, 3, 30.0, false]),
            ]
        );
        assert!(table.notes.iter().any(|n| n.contains(NULL_GROUP) && n.contains("missing")));
        // Two rows with a missing carrier are fewer than k: the (null) group is withheld.
        let table = result_table(&spec, &run_seeded(&spec, &rows[..2], [0; 32]));
        assert_eq!(table.rows[4], [json!(NULL_GROUP), Json::Null, Json::Null, json!(true)]);
    }

    fn private(rho: f64) -> SqlOptions {
        SqlOptions { rho: Some(rho), min_parties: 1, ..SqlOptions::default() }
    }

    /// Requirement 2: a differentially private table carries its privacy block and, per
    /// released value, the 95% half-width of its noise from the calibration (also for a
    /// counts-only query); the intervals cover the noise-free values as often as they say.
    #[test]
    fn dp_tables_carry_95_percent_noise_intervals_and_the_privacy_block() {
        let spec = plan_sql(
            "SELECT carrier, COUNT(*) FROM flights GROUP BY carrier",
            &[catalog()],
            &private(0.5),
        )
        .unwrap();
        let rows = [(1.0, Some("AA"), None), (2.0, None, None)];
        let answer = run_seeded(&spec, &rows, [1; 32]);
        let table = result_table(&spec, &answer);
        let dp = answer.privacy.unwrap();
        assert_eq!(table.privacy, Some(dp));
        let count = 1.96 * dp.count_sd(1);
        let ci95 = table.ci95.as_ref().unwrap();
        assert_eq!(ci95.len(), table.rows.len());
        for (row, ci) in table.rows.iter().zip(ci95) {
            assert_eq!(ci[0], None, "a group key has no interval");
            match row[1].is_null() {
                true => assert_eq!(ci[1], None),
                false => assert!((ci[1].unwrap() - count).abs() < 1e-3 * count, "{ci:?}"),
            }
        }
        assert!(table.notes.iter().any(|n| n.contains("95% interval")));

        // Over many releases, COUNT's and SUM's intervals cover the noise-free values about 95%
        // of the time, and AVG's conservative one at least that often; VAR's is not stated.
        let spec = plan_sql(
            "SELECT COUNT(*), SUM(month), AVG(month), VAR(month) FROM flights",
            &[catalog()],
            &private(1.0),
        )
        .unwrap();
        let rows: Vec<(f64, Option<&str>, Option<f64>)> =
            (0..300).map(|i| (f64::from(1 + i % 12), Some("AA"), None)).collect();
        let truth: [f64; 3] = {
            let sum = rows.iter().map(|r| r.0).sum::<f64>();
            [300.0, sum, sum / 300.0]
        };
        let trials = 400;
        let mut covered = [0u32; 3];
        for t in 0..trials {
            let mut seed = [9u8; 32];
            seed[..2].copy_from_slice(&(t as u16).to_le_bytes());
            let table = result_table(&spec, &run_seeded(&spec, &rows, seed));
            let (row, ci) = (&table.rows[0], &table.ci95.as_ref().unwrap()[0]);
            assert_eq!(ci[3], None, "no interval is stated for a variance");
            for i in 0..3 {
                let half = ci[i].expect("COUNT, SUM and AVG state an interval");
                if (row[i].as_f64().unwrap() - truth[i]).abs() <= half {
                    covered[i] += 1;
                }
            }
        }
        let rate = covered.map(|c| f64::from(c) / f64::from(trials));
        // With 400 releases, the coverage of a 95% interval lies in [0.92, 0.98] with
        // probability above 0.999.
        assert!((0.92..=0.98).contains(&rate[0]), "COUNT coverage {rate:?}");
        assert!((0.92..=0.98).contains(&rate[1]), "SUM coverage {rate:?}");
        assert!(rate[2] >= 0.95, "AVG coverage {rate:?}");
    }

    /// Requirement 3: MIN, MAX and quantiles say they are read off a histogram, with the bin
    /// width they were read at, and never leave the declared bounds.
    #[test]
    fn histogram_readings_are_labelled_approximate_and_kept_within_the_bounds() {
        // Edges reach beyond the declared bounds [-60, 1500].
        let spec = plan(
            "SELECT MIN(dep_delay) AS lo, MAX(dep_delay) AS hi, MEDIAN(dep_delay) AS med, \
             HISTOGRAM(dep_delay, -100, 0, 60, 1600) FROM flights",
        )
        .unwrap();
        let rows = [
            (1.0, "AA", Some(-80.0)),
            (1.0, "AA", Some(10.0)),
            (1.0, "AA", Some(20.0)),
            (1.0, "AA", Some(1550.0)),
        ];
        let table = result_table(&spec, &run(&spec, &rows));
        assert_eq!(&table.rows[0][..3], [json!(-60.0), json!(1500.0), json!(30.0)]);
        let reading = |column: usize| {
            let a = table.approximate.iter().find(|a| a.column == column).unwrap();
            assert_eq!(a.bounds, (-60.0, 1500.0));
            a.readings[0].unwrap()
        };
        assert_eq!(reading(0), Reading { bin_width: Some(100.0), clamped: true });
        assert_eq!(reading(1), Reading { bin_width: Some(1540.0), clamped: true });
        assert_eq!(reading(2), Reading { bin_width: Some(60.0), clamped: false });
        assert_eq!(table.approximate.len(), 3, "a histogram's bins are counts, not readings");
        let note = |header: &str| {
            table.notes.iter().find(|n| n.starts_with(header)).cloned().unwrap_or_default()
        };
        assert!(note("med").contains("approximate") && note("med").contains("bin width 60"));
        assert!(
            note("lo").contains("[-60, 1500]") && note("lo").contains("1 of 1"),
            "{:?}",
            table.notes
        );
        // A value beyond the histogram's edges is read as the outer edge, without a width.
        let table = result_table(&spec, &run(&spec, &[(1.0, "AA", Some(2000.0))]));
        assert_eq!(table.rows[0][1], json!(1500.0));
        assert_eq!(
            table.approximate[1].readings[0],
            Some(Reading { bin_width: None, clamped: true })
        );
        assert!(note("hi").is_empty() || table.notes.iter().any(|n| n.contains("beyond it")));
        // The default histogram's readings carry its width.
        let spec = plan("SELECT MEDIAN(dep_delay) FROM flights").unwrap();
        let table = result_table(&spec, &run(&spec, &rows));
        assert!(table.notes[0].contains("bin width 15.6"), "{:?}", table.notes);
    }

    /// Requirement 4: a lone HISTOGRAM has its row, with its edges and the values outside
    /// them; withheld by a k-threshold, a note says why.
    #[test]
    fn a_lone_histogram_has_its_row_with_its_edges_and_outer_slots() {
        let rows = [
            (1.0, "AA", Some(-5.0)),
            (1.0, "AA", Some(3.0)),
            (1.0, "AA", Some(4.0)),
            (1.0, "AA", Some(20.0)),
            (1.0, "AA", Some(-200.0)),
        ];
        let sql = "SELECT HISTOGRAM(dep_delay, -100, 0, 15) FROM flights";
        let spec = plan(sql).unwrap();
        let table = result_table(&spec, &run(&spec, &rows));
        assert_eq!(table.headers, ["histogram(dep_delay, -100, 0, 15)"]);
        assert_eq!(table.rows, [[json!([1, 2])]]);
        assert_eq!(
            table.histograms,
            [HistogramOutput {
                column: 0,
                edges: vec![-100.0, 0.0, 15.0],
                below: vec![Some(1)],
                above: vec![Some(1)],
            }]
        );
        let options = SqlOptions { k_threshold: Some(2), ..SqlOptions::default() };
        let spec = plan_sql(sql, &[catalog()], &options).unwrap();
        let table = result_table(&spec, &run(&spec, &rows));
        assert_eq!(table.rows, [[Json::Null]]);
        assert!(table.notes.iter().any(|n| n.contains("withheld")), "{:?}", table.notes);
    }
}
