//! Job specifications.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use veil_learning::job::TrainSpec;

use crate::AnalyticsError;

/// Most columns one job may ask about.
pub const MAX_COLUMNS: usize = 64;
/// Most histogram bins per column.
pub const MAX_BINS: usize = 1_000;
/// Most filter conditions.
pub const MAX_CONDITIONS: usize = 32;
/// Most levels a row predicate (a SQL WHERE clause) may nest: each AND, OR or NOT inside
/// another counts one, and in SQL so does each parenthesis. [`JobSpec::check`] refuses deeper
/// predicates, so plans and pushdowns built from a checked specification recurse at most this
/// deep.
pub const MAX_NESTING: usize = 32;
/// Longest SQL query, in bytes.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// Largest magnitude of a clipping bound (2^30): with 20 fractional bits, 2^32 rows and squares,
/// every exact total stays within the wide encoding.
pub const MAX_BOUND: f64 = 1_073_741_824.0;

/// Any job a consumer may submit.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Column aggregates over a dataset (the default kind).
    Columns(JobSpec),
    /// A synthetic vector sum, for benchmarks: every party contributes `dim` random elements.
    Synthetic(SyntheticSpec),
    /// A SQL query, planned by the coordinator into column aggregates against the catalog the
    /// parties announce.
    Sql(SqlRequest),
    /// Federated training.
    Train(Box<TrainSpec>),
    /// A private set intersection between two parties' key columns.
    Psi(PsiSpec),
    /// A private join and aggregate: one party's column groups the rows of others that share
    /// its keys.
    Join(JoinSpec),
}

/// A private join and aggregate (`kind = "join"`): the aggregate of the value side's rows
/// (one or more parties serve its dataset), grouped by a column of the group side (one party)
/// on the rows whose keys both hold. Neither side sees the other's columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Always `"join"`.
    pub kind: String,
    /// The side that groups: its dataset, key column and the column whose values name groups.
    pub groups: GroupColumn,
    /// The side whose rows are aggregated: its dataset and key column.
    pub values: KeyColumn,
    /// Match keys regardless of case (they are always trimmed).
    #[serde(default)]
    pub case_fold: bool,
    /// The aggregate over the value side's dataset, grouped by the group side's column (whose
    /// declared domain its `group_by` carries); its options (k threshold, purpose) are the
    /// job's.
    pub aggregate: JobSpec,
}

/// The group side of a join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupColumn {
    /// The dataset, by the name its party serves it under.
    pub dataset: String,
    /// The column holding the keys.
    pub key: String,
    /// The column whose values name the groups.
    pub column: String,
}

impl JoinSpec {
    /// The aggregate each value party computes per key: the job's, without its grouping.
    pub fn per_key(&self) -> JobSpec {
        JobSpec { group_by: Vec::new(), select: Vec::new(), ..self.aggregate.clone() }
    }

    pub(crate) fn check(&self) -> Result<(), AnalyticsError> {
        let invalid = |m: &str| Err(AnalyticsError::Invalid(m.into()));
        if self.groups.dataset == self.values.dataset {
            return invalid("a join is between two datasets; groups and values name the same one");
        }
        if self.aggregate.dataset != self.values.dataset {
            return invalid("the aggregate is over the value side's dataset");
        }
        match self.aggregate.group_by.as_slice() {
            [g] if g.column == self.groups.column => {}
            _ => {
                return invalid("the aggregate groups by the group side's column, and by it alone");
            }
        }
        self.aggregate.check()
    }
}

/// A private set intersection (`kind = "psi"`): the size of the intersection of the keys in
/// one party's column (`client`, which learns it and reports it) and another's (`server`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiSpec {
    /// Always `"psi"`.
    pub kind: String,
    /// The side whose party computes the result.
    pub client: KeyColumn,
    /// The other side.
    pub server: KeyColumn,
    /// Match keys regardless of case (they are always trimmed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_fold: bool,
    /// What the answer is for; owners' policies may allow only some purposes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// Release the size with discrete Gaussian noise at this zCDP ρ (the client adds it and
    /// both sides are charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    /// What the client's party gets: the size only (the default), or also the intersection
    /// itself (its own keys that the server holds), which it keeps locally; the server's
    /// owner must name the client's party in `reveal_membership_to`.
    #[serde(default, skip_serializing_if = "PsiOutput::is_size")]
    pub output: PsiOutput,
}

/// What an intersection's client party learns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PsiOutput {
    /// The size only.
    #[default]
    Size,
    /// Which of its keys the server holds, kept at the client's party.
    Intersection,
}

impl PsiOutput {
    fn is_size(&self) -> bool {
        *self == PsiOutput::Size
    }
}

impl PsiSpec {
    /// The variance of the discrete Gaussian noise on the released size: the count's
    /// sensitivity is one, so ⌈1/(2ρ)⌉ gives at least ρ-zCDP.
    pub fn noise_variance(&self) -> Option<u64> {
        self.privacy.as_ref().map(|p| (1.0 / (2.0 * p.rho)).ceil().max(1.0) as u64)
    }
}

/// A dataset's key column, one side of an intersection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyColumn {
    /// The dataset, by the name its party serves it under.
    pub dataset: String,
    /// The column holding the keys.
    pub key: String,
}

/// A SQL query as submitted (`sql = "SELECT …"`), with the job options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// The query.
    pub sql: String,
    /// What the answer is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The differential-privacy charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    /// Groups and histogram bins counting fewer are suppressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_threshold: Option<u64>,
    /// The fewest parties (default 2).
    #[serde(default = "default_min_parties")]
    pub min_parties: u32,
}

/// A synthetic vector-sum job (`kind = "synthetic"`), for benchmarks only: parties refuse it
/// unless started with the dangerous benchmark flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// Always `"synthetic"`.
    pub kind: String,
    /// Elements per party.
    pub dim: u32,
    /// Send vectors unmasked (a plain round, for comparison).
    #[serde(default)]
    pub plain: bool,
    /// The fewest parties.
    #[serde(default = "default_min_parties")]
    pub min_parties: u32,
}

impl Job {
    /// Parses TOML (or JSON starting with `{`): `kind = "synthetic"` selects a synthetic job,
    /// `kind = "train"` a training job, a `sql` key a SQL query, anything else a
    /// column-aggregate specification.
    pub fn parse(text: &str) -> Result<Self, AnalyticsError> {
        let json = text.trim_start().starts_with('{');
        let value: serde_json::Value = if json {
            serde_json::from_str(text).map_err(|e| AnalyticsError::Parse(e.to_string()))?
        } else {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| AnalyticsError::Parse(e.to_string()))?;
            serde_json::to_value(table).map_err(|e| AnalyticsError::Parse(e.to_string()))?
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let typed = |e: serde_json::Error| AnalyticsError::Parse(e.to_string());
        if value.get("sql").is_some() {
            let request: SqlRequest = serde_json::from_value(value).map_err(typed)?;
            if request.sql.len() > MAX_SQL_BYTES {
                return Err(AnalyticsError::Invalid("the query is longer than 64 KiB".into()));
            }
            return Ok(Job::Sql(request));
        }
        match kind.as_str() {
            "synthetic" => {
                let spec: SyntheticSpec = serde_json::from_value(value).map_err(typed)?;
                if spec.dim == 0 || spec.dim as usize > veil_protocol::params::MAX_VECTOR_LEN {
                    return Err(AnalyticsError::Invalid("dim must be between 1 and 2^25".into()));
                }
                if spec.min_parties == 0 {
                    return Err(AnalyticsError::Invalid("min_parties must be at least 1".into()));
                }
                Ok(Job::Synthetic(spec))
            }
            "psi" => {
                let spec: PsiSpec = serde_json::from_value(value).map_err(typed)?;
                if spec.privacy.as_ref().is_some_and(|p| !(p.rho.is_finite() && p.rho > 0.0)) {
                    return Err(AnalyticsError::Invalid(
                        "privacy.rho must be a positive number".into(),
                    ));
                }
                if spec.client.dataset == spec.server.dataset {
                    return Err(AnalyticsError::Invalid(
                        "an intersection is between two datasets; client and server name the same one"
                            .into(),
                    ));
                }
                if spec.output == PsiOutput::Intersection && spec.privacy.is_some() {
                    return Err(AnalyticsError::Invalid(
                        "an intersection given to its client is exact: a noisy size with it would protect nothing"
                            .into(),
                    ));
                }
                Ok(Job::Psi(spec))
            }
            "join" => {
                let spec: JoinSpec = serde_json::from_value(value).map_err(typed)?;
                spec.check()?;
                Ok(Job::Join(spec))
            }
            veil_learning::job::KIND => {
                let spec: TrainSpec = serde_json::from_value(value).map_err(typed)?;
                spec.validate().map_err(|e| AnalyticsError::Invalid(e.to_string()))?;
                Ok(Job::Train(Box::new(spec)))
            }
            _ => JobSpec::parse(text).map(Job::Columns),
        }
    }

    /// The canonical JSON form.
    pub fn canonical_json(&self) -> String {
        match self {
            Job::Columns(s) => s.canonical_json(),
            Job::Synthetic(s) => serde_json::to_string(s).expect("synthetic specs serialise"),
            Job::Sql(s) => serde_json::to_string(s).expect("SQL requests serialise"),
            Job::Psi(s) => serde_json::to_string(s).expect("intersection specs serialise"),
            Job::Join(s) => serde_json::to_string(s).expect("join specs serialise"),
            Job::Train(s) => serde_json::to_string(s).expect("training specs serialise"),
        }
    }

    /// SHA-256 of the canonical JSON, hex.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The dataset the job reads (`"synthetic"` for synthetic jobs; an intersection's
    /// client's).
    pub fn dataset(&self) -> &str {
        match self {
            Job::Columns(s) => &s.dataset,
            Job::Synthetic(_) => "synthetic",
            Job::Sql(_) => "",
            Job::Train(s) => &s.dataset,
            Job::Psi(s) => &s.client.dataset,
            Job::Join(s) => &s.values.dataset,
        }
    }

    /// Every dataset the job reads: an intersection's two, one otherwise.
    pub fn datasets(&self) -> Vec<&str> {
        match self {
            Job::Psi(s) => vec![&s.client.dataset, &s.server.dataset],
            Job::Join(s) => vec![&s.values.dataset, &s.groups.dataset],
            other => vec![other.dataset()],
        }
    }

    /// Checks that `planned_json` (the canonical JSON a coordinator planned from the
    /// specification `request`) is the job the request asks for, and returns the purpose to
    /// sign with it: a specification must come back as its own canonical form; a SQL query as
    /// a column job over its table with its options ([`crate::sql::check_plan`]).
    pub fn check_plan(request: &str, planned_json: &str) -> Result<String, AnalyticsError> {
        let requested = Job::parse(request)?;
        let planned = Job::parse(planned_json)?;
        if planned.canonical_json() != planned_json {
            return Err(AnalyticsError::PlanMismatch("it is not in canonical form".into()));
        }
        match (&requested, &planned) {
            (Job::Sql(r), Job::Columns(spec)) => {
                let options = crate::sql::SqlOptions {
                    purpose: r.purpose.clone(),
                    rho: r.privacy.as_ref().map(|p| p.rho),
                    k_threshold: r.k_threshold,
                    min_parties: r.min_parties,
                };
                crate::sql::check_plan(&r.sql, &options, spec)?;
            }
            (Job::Sql(r), Job::Join(spec)) => {
                let options = crate::sql::SqlOptions {
                    purpose: r.purpose.clone(),
                    rho: r.privacy.as_ref().map(|p| p.rho),
                    k_threshold: r.k_threshold,
                    min_parties: r.min_parties,
                };
                crate::sql::check_join_plan(&r.sql, &options, spec)?;
            }
            (Job::Sql(_), _) => {
                return Err(AnalyticsError::PlanMismatch(
                    "it makes a SQL query another kind of job".into(),
                ));
            }
            _ if requested.canonical_json() != planned_json => {
                return Err(AnalyticsError::PlanMismatch(
                    "it differs from the job submitted".into(),
                ));
            }
            _ => {}
        }
        Ok(planned.purpose().to_string())
    }

    /// [`Job::check_plan`] with its error as text: the plan check a consumer's signer runs.
    pub fn plan_check(request: &str, planned_json: &str) -> Result<String, String> {
        Job::check_plan(request, planned_json).map_err(|e| e.to_string())
    }

    /// The purpose the job declares (empty if none; synthetic jobs have none).
    pub fn purpose(&self) -> &str {
        match self {
            Job::Columns(s) => &s.purpose,
            Job::Synthetic(_) => "",
            Job::Sql(s) => &s.purpose,
            Job::Train(s) => &s.purpose,
            Job::Psi(s) => &s.purpose,
            Job::Join(s) => &s.aggregate.purpose,
        }
    }

    /// The fewest parties whose data the answer may combine.
    pub fn min_parties(&self) -> u32 {
        match self {
            Job::Columns(s) => s.min_parties,
            Job::Synthetic(s) => s.min_parties,
            Job::Sql(s) => s.min_parties,
            Job::Train(s) => s.min_parties,
            // Its two sides.
            Job::Psi(_) => 2,
            // The group side and at least one value party.
            Job::Join(s) => s.aggregate.min_parties.max(2),
        }
    }
}

/// A column-aggregate job as a consumer writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The dataset, by the name parties serve it under.
    pub dataset: String,
    /// Conditions a row must all satisfy to count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Condition>,
    /// The columns to aggregate.
    pub columns: Vec<ColumnRequest>,
    /// The fewest parties whose data the answer may combine (default 2).
    #[serde(default = "default_min_parties")]
    pub min_parties: u32,
    /// What the answer is for; owners' policies may allow only some purposes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The differential-privacy charge the job declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    /// Histogram bins and groups counting fewer than this many are suppressed in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_threshold: Option<u64>,
    /// A further row predicate (from a SQL WHERE clause); rows must satisfy it and `filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<Predicate>,
    /// Categorical columns to group by, each with its declared value domain; the answer has one
    /// group per combination, values outside a domain falling into `(other)` and missing
    /// values into `(null)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<GroupBy>,
    /// The output columns of a SQL query, in order (empty for TOML jobs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<Output>,
}

/// A row predicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Predicate {
    /// All hold.
    And(Vec<Predicate>),
    /// At least one holds.
    Or(Vec<Predicate>),
    /// It does not hold.
    Not(Box<Predicate>),
    /// `column op value`.
    Compare(Condition),
    /// `column [NOT] IN (values)`.
    In {
        /// The column.
        column: String,
        /// The values.
        values: Vec<Literal>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `column IS [NOT] NULL`.
    IsNull {
        /// The column.
        column: String,
        /// `IS NOT NULL`.
        negated: bool,
    },
}

impl Predicate {
    /// Every column the predicate reads, in order.
    pub fn columns(&self) -> Vec<&str> {
        let mut columns = Vec::new();
        self.walk(|p| match p {
            Predicate::Compare(c) => columns.push(c.column.as_str()),
            Predicate::In { column, .. } | Predicate::IsNull { column, .. } => {
                columns.push(column.as_str())
            }
            Predicate::And(_) | Predicate::Or(_) | Predicate::Not(_) => {}
        });
        columns
    }

    /// Values in all the IN lists.
    fn in_values(&self) -> usize {
        let mut n = 0usize;
        self.walk(|p| {
            if let Predicate::In { values, .. } = p {
                n = n.saturating_add(values.len());
            }
        });
        n
    }

    /// Whether every number it compares with is finite (JSON has no infinities or NaN, so a
    /// non-finite literal would not survive the canonical form the job hash covers).
    fn literals_finite(&self) -> bool {
        let mut finite = true;
        let number = |l: &Literal| !matches!(l, Literal::Number(v) if !v.is_finite());
        self.walk(|p| match p {
            Predicate::Compare(c) => finite &= number(&c.value),
            Predicate::In { values, .. } => finite &= values.iter().all(number),
            _ => {}
        });
        finite
    }

    /// How many AND, OR and NOT nodes the deepest path passes through (0 for one condition).
    pub fn nesting(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 0usize)];
        while let Some((p, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            match p {
                Predicate::And(v) | Predicate::Or(v) => {
                    stack.extend(v.iter().map(|x| (x, depth + 1)))
                }
                Predicate::Not(x) => stack.push((x, depth + 1)),
                Predicate::Compare(_) | Predicate::In { .. } | Predicate::IsNull { .. } => {}
            }
        }
        deepest
    }

    /// Calls `f` on every node, parents before children, left to right, without recursion.
    fn walk<'a>(&'a self, mut f: impl FnMut(&'a Predicate)) {
        let mut stack = vec![self];
        while let Some(p) = stack.pop() {
            f(p);
            match p {
                Predicate::And(v) | Predicate::Or(v) => stack.extend(v.iter().rev()),
                Predicate::Not(x) => stack.push(x),
                Predicate::Compare(_) | Predicate::In { .. } | Predicate::IsNull { .. } => {}
            }
        }
    }
}

/// A group-by column and its declared domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBy {
    /// The column.
    pub column: String,
    /// Its declared values.
    pub values: Vec<String>,
}

/// One output column of a SQL query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The heading (the alias, or the expression as written).
    pub name: String,
    /// What it computes.
    pub kind: OutputKind,
}

/// What a SQL output computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// A group-by column's value.
    Key(String),
    /// `COUNT(*)`: rows.
    CountRows,
    /// `COUNT(col)`: non-missing values.
    Count(String),
    /// `SUM(col)`.
    Sum(String),
    /// `AVG(col)`.
    Avg(String),
    /// `VAR(col)`, sample variance.
    Variance(String),
    /// `STDDEV(col)`, sample standard deviation.
    StdDev(String),
    /// `MIN(col)`, the lower edge of the lowest non-empty histogram bin (within the bounds).
    Min(String),
    /// `MAX(col)`, the upper edge of the highest non-empty histogram bin.
    Max(String),
    /// `HISTOGRAM(col, edges…)`: the bin counts.
    Histogram(String),
    /// `QUANTILE(col, q)`, interpolated from the histogram.
    Quantile(String, f64),
}

/// Most groups one job may produce.
pub const MAX_GROUPS: usize = 10_000;
/// Most elements of a party's vector (32 MiB of `u64`).
pub const MAX_ELEMENTS: usize = 1 << 22;
/// Most values in all the IN lists of a query.
pub const MAX_IN_VALUES: usize = 10_000;

fn default_min_parties() -> u32 {
    2
}

/// A declared differential-privacy charge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// zCDP ρ charged to every budget this release draws on.
    pub rho: f64,
}

/// One filter condition: `column op value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The column compared.
    pub column: String,
    /// The comparison.
    pub op: Op,
    /// The value compared with.
    pub value: Literal,
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    /// The operator as SQL spells it.
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A literal in a condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    /// A number.
    Number(f64),
    /// Text.
    Text(String),
}

/// The statistics asked of one numeric column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRequest {
    /// The column.
    pub name: String,
    /// Values below are counted as clipped and replaced by `min`.
    pub min: f64,
    /// Values above are counted as clipped and replaced by `max`.
    pub max: f64,
    /// Histogram bin edges, strictly increasing; empty for no histogram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histogram: Vec<f64>,
}

impl JobSpec {
    /// Parses a specification written in TOML, or in JSON if it starts with `{`.
    pub fn parse(text: &str) -> Result<Self, AnalyticsError> {
        let spec: JobSpec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| AnalyticsError::Parse(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| AnalyticsError::Parse(e.to_string()))?
        };
        spec.check()?;
        Ok(spec)
    }

    /// The canonical JSON form: what parties are shown and what the hash covers.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("job specifications always serialise")
    }

    /// SHA-256 of the canonical JSON, hex.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Elements of every party's vector: per group (each group-by column's declared values,
    /// `(other)` and `(null)`, combined), its row count and per column count, two clipping
    /// counters, two three-limb sums and the histogram slots.
    pub fn vector_len(&self) -> usize {
        let segment: usize = 1 + self
            .columns
            .iter()
            .map(|c| {
                3 + 2 * veil_protocol::fixed_point::WIDE_LIMBS
                    + if c.histogram.is_empty() { 0 } else { c.histogram.len() + 1 }
            })
            .sum::<usize>();
        let groups = self
            .group_by
            .iter()
            .try_fold(1usize, |acc, g| acc.checked_mul(g.values.len() + crate::plan::EXTRA_GROUPS))
            .unwrap_or(usize::MAX);
        segment.saturating_mul(groups)
    }

    /// Elements of a group one row can change: its row count and, per column, its count, one
    /// clipping counter, its sum, its sum of squares and one histogram slot.
    pub fn components(&self) -> u32 {
        1 + self.columns.iter().map(|c| 4 + u32::from(!c.histogram.is_empty())).sum::<u32>()
    }

    /// Checks what can be checked without a schema.
    pub fn check(&self) -> Result<(), AnalyticsError> {
        let bad = |m: String| Err(AnalyticsError::Invalid(m));
        if self.dataset.is_empty() {
            return bad("the dataset name is empty".into());
        }
        if self.columns.is_empty() && self.select.is_empty() {
            return bad("ask for at least one column".into());
        }
        if self.columns.len() > MAX_COLUMNS {
            return bad(format!("at most {MAX_COLUMNS} columns per job"));
        }
        if self.filter.len() > MAX_CONDITIONS {
            return bad(format!("at most {MAX_CONDITIONS} filter conditions"));
        }
        if self.min_parties == 0 {
            return bad("min_parties must be at least 1".into());
        }
        for c in &self.columns {
            if !(c.min.is_finite() && c.max.is_finite()) || c.min >= c.max {
                return bad(format!(
                    "column {:?}: bounds [{}, {}] must be finite with min < max",
                    c.name, c.min, c.max
                ));
            }
            if c.min.abs() > MAX_BOUND || c.max.abs() > MAX_BOUND {
                return bad(format!("column {:?}: bounds must lie within ±{MAX_BOUND}", c.name));
            }
            if !c.histogram.is_empty() {
                if c.histogram.len() < 2 || c.histogram.len() > MAX_BINS + 1 {
                    return bad(format!(
                        "column {:?}: a histogram needs between 2 and {} edges",
                        c.name,
                        MAX_BINS + 1
                    ));
                }
                if c.histogram.iter().any(|e| !e.is_finite())
                    || !c.histogram.windows(2).all(|w| w[0] < w[1])
                {
                    return bad(format!(
                        "column {:?}: histogram edges must be finite and strictly increasing",
                        c.name
                    ));
                }
            }
        }
        if let Some(p) = &self.privacy {
            if !p.rho.is_finite() || p.rho <= 0.0 || p.rho > 100.0 {
                return bad(format!(
                    "privacy.rho must be a positive number up to 100, got {}",
                    p.rho
                ));
            }
        }
        if self.k_threshold == Some(0) {
            return bad("k_threshold must be at least 1".into());
        }
        let groups = self
            .group_by
            .iter()
            .try_fold(1usize, |acc, g| acc.checked_mul(g.values.len() + crate::plan::EXTRA_GROUPS));
        if groups.is_none_or(|n| n > MAX_GROUPS) {
            return bad(format!("GROUP BY yields more than {MAX_GROUPS} groups"));
        }
        if self.group_by.iter().any(|g| g.values.is_empty()) {
            return bad("a group-by column needs a non-empty declared domain".into());
        }
        if self.predicate.as_ref().is_some_and(|p| p.nesting() > MAX_NESTING) {
            return Err(AnalyticsError::TooDeep { limit: MAX_NESTING });
        }
        if self.predicate.as_ref().is_some_and(|p| p.in_values() > MAX_IN_VALUES) {
            return bad(format!("IN lists may hold at most {MAX_IN_VALUES} values in all"));
        }
        // Every party allocates the whole vector: bound it before anything is offered.
        let elements = self.vector_len();
        if elements > MAX_ELEMENTS {
            return bad(format!(
                "the job needs {elements} elements per party (groups × columns × bins); the limit is {MAX_ELEMENTS}"
            ));
        }
        if let Some(p) = &self.privacy {
            // The noise each party adds to a sum must be representable exactly.
            let components = self.components() as f64;
            let variance = components / (2.0 * p.rho) * (1u64 << 20) as f64
                / f64::from(self.min_parties.max(1));
            if variance > veil_protocol::dp::MAX_VARIANCE as f64 {
                return bad(format!(
                    "privacy.rho = {} is too small for this job's noise to be sampled exactly",
                    p.rho
                ));
            }
        }
        for f in &self.filter {
            if let Literal::Number(v) = f.value {
                if !v.is_finite() {
                    return bad(format!("filter on {:?}: the value must be finite", f.column));
                }
            }
        }
        if self.predicate.as_ref().is_some_and(|p| !p.literals_finite()) {
            return bad("every number in the WHERE clause must be finite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        dataset = "flights"
        filter = [{ column = "month", op = "<=", value = 6 }, { column = "carrier", op = "==", value = "UA" }]

        [[columns]]
        name = "dep_delay"
        min = -60
        max = 600
        histogram = [-60, 0, 15, 60, 180, 600]
    "#;

    #[test]
    fn non_finite_numbers_in_a_predicate_are_refused() {
        // serde_json writes inf and NaN as null: two different jobs would share a hash.
        for bad in ["inf", "-inf", "nan"] {
            let compare = format!(
                "dataset = \"d\"\npredicate = {{ compare = {{ column = \"x\", op = \"<\", value = {bad} }} }}\n\
                 [[columns]]\nname = \"x\"\nmin = 0\nmax = 1\n"
            );
            let listed = format!(
                "dataset = \"d\"\npredicate = {{ in = {{ column = \"x\", values = [1, {bad}], negated = false }} }}\n\
                 [[columns]]\nname = \"x\"\nmin = 0\nmax = 1\n"
            );
            for text in [compare, listed] {
                let e = JobSpec::parse(&text).unwrap_err();
                assert!(e.to_string().contains("must be finite"), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn toml_and_json_parse_to_the_same_spec_and_hash() {
        let a = JobSpec::parse(EXAMPLE).unwrap();
        let b = JobSpec::parse(&a.canonical_json()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.min_parties, 2);
        assert_eq!(a.filter[1].value, Literal::Text("UA".into()));
    }

    #[test]
    fn synthetic_jobs_are_their_own_kind() {
        let j = Job::parse("kind = \"synthetic\"\ndim = 10\nplain = true").unwrap();
        assert!(matches!(&j, Job::Synthetic(s) if s.dim == 10 && s.plain));
        assert_eq!(Job::parse(&j.canonical_json()).unwrap(), j);
        assert!(matches!(Job::parse(EXAMPLE).unwrap(), Job::Columns(_)));
        assert!(Job::parse("kind = \"synthetic\"\ndim = 0").is_err());
    }

    /// Specifications that would make every party allocate or compute too much, or whose noise
    /// could not be sampled exactly, are refused before anything is offered.
    #[test]
    fn oversized_jobs_and_tiny_rho_are_refused() {
        let mut s = JobSpec::parse(EXAMPLE).unwrap();
        // 19 values, (other) and (null): 21^3 groups, within the limit on groups.
        let values: Vec<String> = (0..19).map(|i| i.to_string()).collect();
        s.group_by = ["a", "b", "c"]
            .iter()
            .map(|c| GroupBy { column: c.to_string(), values: values.clone() })
            .collect();
        s.columns = (0..50)
            .map(|i| ColumnRequest {
                name: format!("c{i}"),
                min: 0.0,
                max: 1.0,
                histogram: (0..=1000).map(|e| f64::from(e) / 1000.0).collect(),
            })
            .collect();
        let e = s.check().unwrap_err().to_string();
        assert!(e.contains("elements per party"), "{e}");
        let mut small = JobSpec::parse(EXAMPLE).unwrap();
        small.privacy = Some(Privacy { rho: 1e-10 });
        assert!(small.check().unwrap_err().to_string().contains("too small"));
        let mut many = JobSpec::parse(EXAMPLE).unwrap();
        many.predicate = Some(Predicate::In {
            column: "month".into(),
            values: (0..20_000).map(|i| Literal::Number(f64::from(i))).collect(),
            negated: false,
        });
        assert!(many.check().unwrap_err().to_string().contains("IN lists"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = JobSpec::parse("dataset = \"x\"\ncolumns = []").unwrap_err().to_string();
        assert!(e.contains("at least one column"), "{e}");
        let e = JobSpec::parse("dataset = \"x\"\nbogus = 1\ncolumns = []").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = JobSpec::parse("dataset = \"x\"\n[[columns]]\nname = \"a\"\nmin = 5\nmax = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("min < max"), "{e}");
        let e = JobSpec::parse(
            "dataset = \"x\"\n[[columns]]\nname = \"a\"\nmin = 0\nmax = 1\nhistogram = [0, 2, 1]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("strictly increasing"), "{e}");
        let e = JobSpec::parse(
            "dataset = \"x\"\nfilter = [{ column = \"a\", op = \"~\", value = 1 }]\n[[columns]]\nname = \"a\"\nmin = 0\nmax = 1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
