//! Column-aggregate jobs, with no I/O.
//!
//! A consumer asks, over one dataset that several parties hold with the same schema, for
//! per-column statistics: count, sum, mean and variance of values clipped to bounds the
//! consumer declares, and histograms over given bin edges, optionally over the rows that pass
//! a filter. Each party turns its own rows into a fixed-length vector of integers
//! ([`LocalAggregate`]); only the secure sum of those vectors leaves the parties, and
//! [`Plan::answer`] turns the sum into the [`Answer`].
//!
//! Layout:
//! - [`spec`]: the job specification as written (TOML or JSON), its canonical form and hash.
//! - [`schema`]: dataset schemas and cell values.
//! - [`plan`]: a specification checked against a schema, the vector layout, local
//!   aggregation and decoding of the sum.
//! - [`sql`]: an aggregate SQL query planned into a specification against the catalog the
//!   parties announce, and the result table it asks for.
//!
//! Sums are exact: each value is clipped, scaled by 2^20 and rounded to an integer; a party's
//! totals are exact integers, carried through the ring in three 42-bit limbs
//! ([`veil_protocol::encode_wide`]), so the joint sum equals the sum over the pooled rows of
//! the same rounded values.

pub mod plan;
pub mod schema;
pub mod spec;
pub mod sql;

pub use plan::{
    AggregateSql, Answer, ColumnAnswer, DpCalibration, Histogram, JoinPlans, Layout,
    LocalAggregate, NoiseReport, Plan,
};
pub use schema::{ColumnInfo, ColumnType, DatasetCatalog, DatasetSchema, Value};
pub use spec::{
    ColumnRequest, Condition, GroupBy, GroupColumn, Job, JobSpec, JoinSpec, KeyColumn, Literal, Op,
    Output, OutputKind, Predicate, Privacy, PsiOutput, PsiSpec, SqlRequest, SyntheticSpec,
};

/// Errors of job specifications and local aggregation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyticsError {
    /// The specification does not parse.
    #[error("job specification does not parse: {0}")]
    Parse(String),
    /// The specification parses but asks for something invalid.
    #[error("invalid job specification: {0}")]
    Invalid(String),
    /// A coordinator's plan of a request is not the job the request asks for.
    #[error("the coordinator's plan is not the job asked for: {0}; nothing was signed")]
    PlanMismatch(String),
    /// The row predicate (a SQL WHERE clause) nests deeper than the limit.
    #[error(
        "the WHERE clause nests deeper than {limit} levels; each parenthesis, NOT, and AND or \
         OR inside another counts one"
    )]
    TooDeep {
        /// The most levels allowed ([`spec::MAX_NESTING`]).
        limit: usize,
    },
    /// The specification names a column the dataset does not have.
    #[error("dataset {dataset:?} has no column {column:?}")]
    UnknownColumn {
        /// The dataset.
        dataset: String,
        /// The missing column.
        column: String,
    },
    /// A column is used in a way its type does not allow.
    #[error("column {column:?} is {found}, but {needed}")]
    WrongType {
        /// The column.
        column: String,
        /// Its type.
        found: ColumnType,
        /// What the job needs.
        needed: &'static str,
    },
    /// A party holds more rows than the exact encoding allows.
    #[error("more than {0} rows in one party's dataset")]
    TooManyRows(u64),
    /// A summed vector does not have the plan's layout.
    #[error("sum has {got} elements, the plan expects {expected}")]
    WrongLength {
        /// Elements received.
        got: usize,
        /// Elements expected.
        expected: usize,
    },
}
