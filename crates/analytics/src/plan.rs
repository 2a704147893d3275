//! A specification checked against a schema: the vector layout, local aggregation, and the
//! answer decoded from the secure sum.

use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use veil_protocol::dp::{NoiseRng, discrete_gaussian, zcdp_epsilon};
use veil_protocol::fixed_point::WIDE_LIMBS;
use veil_protocol::{decode_wide, encode_wide};
use zeroize::Zeroize;

use crate::AnalyticsError;
use crate::schema::{ColumnType, DatasetSchema, Value};
use crate::spec::{ColumnRequest, Condition, JobSpec, Literal, Op, Predicate};

/// Fractional bits of the fixed-point encoding of values and squares.
pub const FRACTION_BITS: u32 = 20;
const SCALE: f64 = (1u64 << FRACTION_BITS) as f64;
/// Most rows one party may contribute (keeps every exact total within the wide encoding).
pub const MAX_ROWS: u64 = 1 << 32;
/// In differentially private jobs, a value's share of its bound is encoded in this many units,
/// so one row moves a sum by at most this much.
pub const DP_UNITS: i128 = 1 << 10;
/// The δ at which ε is reported.
pub const DP_DELTA: f64 = 1e-6;

/// How a differentially private job is noised. Every party adds discrete Gaussian noise to
/// every element of its vector before masking, with variance calibrated so that the sum over
/// the fewest parties the round allows carries the job's ρ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpCalibration {
    /// zCDP ρ of the release.
    pub rho: f64,
    /// ε at [`DP_DELTA`].
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// Elements one row can change at once.
    pub components: u32,
    /// Standard deviation of the total noise per unit of sensitivity: √(components / 2ρ).
    pub multiplier: f64,
    /// The fewest parties whose noise is in the sum (the job's `min_parties`).
    pub parties: u32,
}

impl DpCalibration {
    /// Each party's discrete Gaussian variance for an element of sensitivity `delta`, rounded
    /// up (more noise, never less).
    pub fn party_variance(&self, delta: i128) -> u64 {
        let total = self.multiplier * self.multiplier * (delta * delta) as f64;
        ((total / f64::from(self.parties)).ceil() as u64).max(1)
    }

    /// Standard deviation of the total noise in an element of sensitivity `delta` of a sum over
    /// `contributors` parties, each of which added [`DpCalibration::party_variance`].
    pub fn noise_sd(&self, delta: i128, contributors: usize) -> f64 {
        (self.party_variance(delta) as f64 * contributors as f64).sqrt()
    }

    /// Standard deviation of the noise in a released count (a row count, a column's count or a
    /// histogram slot) of a sum over `contributors` parties.
    pub fn count_sd(&self, contributors: usize) -> f64 {
        self.noise_sd(1, contributors)
    }

    /// Standard deviation of the noise in a released sum of a column whose values are clipped
    /// to `[min, max]`, over `contributors` parties: the sum is carried in [`DP_UNITS`] per
    /// `max(|min|, |max|)`.
    pub fn sum_sd(&self, min: f64, max: f64, contributors: usize) -> f64 {
        let bound = min.abs().max(max.abs());
        self.noise_sd(DP_UNITS, contributors) * bound / DP_UNITS as f64
    }
}

struct ColumnPlan {
    name: String,
    index: usize,
    min: f64,
    max: f64,
    edges: Vec<f64>,
    /// Offset of this column's block in the vector.
    offset: usize,
}

impl ColumnPlan {
    fn new(c: &ColumnRequest, index: usize, offset: usize) -> Self {
        Self {
            name: c.name.clone(),
            index,
            min: c.min,
            max: c.max,
            edges: c.histogram.clone(),
            offset,
        }
    }

    // Block layout: count, below, above, sum (3 limbs), sum of squares (3 limbs), then
    // histogram bins: under the first edge, one per bin, over the last edge.
    const COUNT: usize = 0;
    const BELOW: usize = 1;
    const ABOVE: usize = 2;
    const SUM: usize = 3;
    const SQUARES: usize = 3 + WIDE_LIMBS;
    const HISTOGRAM: usize = 3 + 2 * WIDE_LIMBS;

    fn len(&self) -> usize {
        Self::HISTOGRAM + if self.edges.is_empty() { 0 } else { self.edges.len() + 1 }
    }

    /// The largest magnitude a clipped value can have.
    fn bound(&self) -> f64 {
        self.min.abs().max(self.max.abs())
    }

    /// The histogram slot of `x`: 0 below the first edge, `i + 1` for bin `[e_i, e_{i+1})` (the
    /// last bin closed), `edges.len()` above the last edge.
    fn bin(&self, x: f64) -> usize {
        let e = &self.edges;
        if x < e[0] {
            0
        } else if x > e[e.len() - 1] {
            e.len()
        } else if x == e[e.len() - 1] {
            e.len() - 1
        } else {
            // Number of edges ≤ x, which is at least 1 here.
            e.partition_point(|&edge| edge <= x)
        }
    }
}

struct ConditionPlan {
    index: usize,
    op: Op,
    value: Literal,
}

impl ConditionPlan {
    fn holds(&self, v: Value<'_>) -> bool {
        match (v, &self.value) {
            (Value::Number(x), Literal::Number(y)) => match self.op {
                Op::Eq => x == *y,
                Op::Ne => x != *y,
                Op::Lt => x < *y,
                Op::Le => x <= *y,
                Op::Gt => x > *y,
                Op::Ge => x >= *y,
            },
            (Value::Text(x), Literal::Text(y)) => match self.op {
                Op::Eq => x == y,
                Op::Ne => x != y,
                // Refused when the plan is made.
                _ => false,
            },
            // NULL, or a cell of another type, satisfies no condition.
            _ => false,
        }
    }
}

/// A predicate with its columns resolved to schema positions.
enum PredicatePlan {
    And(Vec<PredicatePlan>),
    Or(Vec<PredicatePlan>),
    Not(Box<PredicatePlan>),
    Compare(ConditionPlan),
    In { index: usize, values: Vec<Literal>, negated: bool },
    IsNull { index: usize, negated: bool },
}

impl PredicatePlan {
    fn indices(&self) -> Vec<usize> {
        match self {
            PredicatePlan::And(v) | PredicatePlan::Or(v) => {
                v.iter().flat_map(PredicatePlan::indices).collect()
            }
            PredicatePlan::Not(p) => p.indices(),
            PredicatePlan::Compare(c) => vec![c.index],
            PredicatePlan::In { index, .. } | PredicatePlan::IsNull { index, .. } => vec![*index],
        }
    }

    fn holds<'a>(&self, row: &dyn Fn(usize) -> Value<'a>) -> bool {
        match self {
            PredicatePlan::And(v) => v.iter().all(|p| p.holds(row)),
            PredicatePlan::Or(v) => v.iter().any(|p| p.holds(row)),
            PredicatePlan::Not(p) => !p.holds(row),
            PredicatePlan::Compare(c) => c.holds(row(c.index)),
            PredicatePlan::In { index, values, negated } => {
                let v = row(*index);
                if v == Value::Null {
                    return false;
                }
                let found = values.iter().any(|l| match (v, l) {
                    (Value::Number(x), Literal::Number(y)) => x == *y,
                    (Value::Text(x), Literal::Text(y)) => x == y,
                    _ => false,
                });
                found != *negated
            }
            PredicatePlan::IsNull { index, negated } => (row(*index) == Value::Null) != *negated,
        }
    }
}

/// A group-by column resolved: its position and its domain.
struct GroupPlan {
    index: usize,
    values: Vec<String>,
}

/// The group key of a cell: text as is, whole numbers without a decimal point.
fn key_of(v: Value<'_>) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(t) => Some(t.to_string()),
        Value::Number(x) if x.fract() == 0.0 && x.abs() < 1e15 => Some(format!("{}", x as i64)),
        Value::Number(x) => Some(format!("{x}")),
    }
}

/// Groups a specification produces (1 when it does not group).
fn group_count(group_by: &[crate::spec::GroupBy]) -> usize {
    group_by.iter().map(|g| g.values.len() + EXTRA_GROUPS).product()
}

/// Groups each group-by column has besides its declared values: `(other)`, then `(null)`.
pub const EXTRA_GROUPS: usize = 2;

/// A group-by column's slot for a cell: its position in the domain, then `(other)` (a value
/// outside the domain), then `(null)` (a missing value).
fn group_slot(values: &[String], cell: Value<'_>) -> usize {
    match key_of(cell) {
        None => values.len() + 1,
        Some(k) => values.iter().position(|v| *v == k).unwrap_or(values.len()),
    }
}

impl crate::spec::GroupBy {
    /// The slot of a cell of this column: its position in the domain, then `(other)`, then
    /// `(null)`.
    pub fn slot(&self, cell: Value<'_>) -> usize {
        group_slot(&self.values, cell)
    }

    /// Slots of this column: its domain, `(other)` and `(null)`.
    pub fn slots(&self) -> usize {
        self.values.len() + EXTRA_GROUPS
    }
}

/// The two plans of a private join: each value party's per-key aggregate (the job's without
/// its grouping), and the answer's, over the value side's columns and the group side's
/// column. The per-key vector is one segment of the answer's layout, so group `g`'s segment
/// of the answer is the sum of the vectors of the keys in group `g`.
pub struct JoinPlans {
    /// Each value party's aggregate, per key.
    pub per_key: Plan,
    /// The answer's layout: the per-key segment once per group.
    pub answer: Plan,
}

impl JoinPlans {
    /// Plans `spec` against the value side's schema.
    pub fn new(
        spec: &crate::spec::JoinSpec,
        values: &DatasetSchema,
    ) -> Result<Self, AnalyticsError> {
        let per_key = Plan::new(&spec.per_key(), values)?;
        if values.column(&spec.groups.column).is_some() {
            return Err(AnalyticsError::Invalid(format!(
                "both sides have a column {:?}; the group side's must be told apart",
                spec.groups.column
            )));
        }
        let mut combined = values.clone();
        combined.columns.push((spec.groups.column.clone(), crate::schema::ColumnType::String));
        let answer = Plan::new(&spec.aggregate, &combined)?;
        debug_assert_eq!(answer.segment, per_key.segment);
        Ok(Self { per_key, answer })
    }

    /// Values per key (one segment of the answer).
    pub fn segment(&self) -> usize {
        self.per_key.segment
    }

    /// Groups of the answer.
    pub fn groups(&self) -> usize {
        self.answer.len / self.per_key.segment.max(1)
    }
}

/// The key of a group-by column's slot (see [`group_slot`]).
fn slot_key(values: &[String], slot: usize) -> String {
    match values.get(slot) {
        Some(v) => v.clone(),
        None if slot == values.len() => OTHER.to_string(),
        None => NULL_GROUP.to_string(),
    }
}

/// Whether a literal fits its column's type (and text is only compared for (in)equality).
fn check_literal(
    column: &str,
    ty: ColumnType,
    op: Op,
    value: &Literal,
) -> Result<(), AnalyticsError> {
    let wrong =
        |needed| Err(AnalyticsError::WrongType { column: column.to_string(), found: ty, needed });
    match (value, ty) {
        (Literal::Number(_), ColumnType::Int | ColumnType::Float) => Ok(()),
        (Literal::Text(_), ColumnType::String) if matches!(op, Op::Eq | Op::Ne) => Ok(()),
        (Literal::Text(_), ColumnType::String) => wrong("text can only be compared with == or !="),
        (Literal::Number(_), _) => wrong("the filter compares it with a number"),
        (Literal::Text(_), _) => wrong("the filter compares it with text"),
    }
}

/// A job specification checked against a dataset's schema.
pub struct Plan {
    spec: JobSpec,
    columns: Vec<ColumnPlan>,
    conditions: Vec<ConditionPlan>,
    predicate: Option<PredicatePlan>,
    groups: Vec<GroupPlan>,
    /// Elements per group: the group's row count and its column blocks.
    segment: usize,
    len: usize,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("dataset", &self.spec.dataset).field("len", &self.len).finish()
    }
}

impl Plan {
    /// Checks `spec` against `schema`: every column exists and is numeric, every condition's
    /// value has its column's type, text is only compared for (in)equality.
    pub fn new(spec: &JobSpec, schema: &DatasetSchema) -> Result<Self, AnalyticsError> {
        spec.check()?;
        let lookup = |name: &str| {
            schema.column(name).ok_or_else(|| AnalyticsError::UnknownColumn {
                dataset: schema.name.clone(),
                column: name.to_string(),
            })
        };
        let mut columns = Vec::with_capacity(spec.columns.len());
        let mut offset = 1;
        for c in &spec.columns {
            let (index, ty) = lookup(&c.name)?;
            if !ty.is_numeric() {
                return Err(AnalyticsError::WrongType {
                    column: c.name.clone(),
                    found: ty,
                    needed: "only numeric columns can be aggregated",
                });
            }
            let plan = ColumnPlan::new(c, index, offset);
            offset += plan.len();
            columns.push(plan);
        }
        let resolve_condition = |f: &Condition| -> Result<ConditionPlan, AnalyticsError> {
            let (index, ty) = lookup(&f.column)?;
            check_literal(&f.column, ty, f.op, &f.value)?;
            Ok(ConditionPlan { index, op: f.op, value: f.value.clone() })
        };
        type Lookup<'a> = &'a dyn Fn(&str) -> Result<(usize, ColumnType), AnalyticsError>;
        type Resolve<'a> = &'a dyn Fn(&Condition) -> Result<ConditionPlan, AnalyticsError>;
        fn resolve(
            p: &Predicate,
            condition: Resolve<'_>,
            lookup: Lookup<'_>,
        ) -> Result<PredicatePlan, AnalyticsError> {
            Ok(match p {
                Predicate::And(v) => PredicatePlan::And(
                    v.iter().map(|x| resolve(x, condition, lookup)).collect::<Result<_, _>>()?,
                ),
                Predicate::Or(v) => PredicatePlan::Or(
                    v.iter().map(|x| resolve(x, condition, lookup)).collect::<Result<_, _>>()?,
                ),
                Predicate::Not(x) => PredicatePlan::Not(Box::new(resolve(x, condition, lookup)?)),
                Predicate::Compare(c) => PredicatePlan::Compare(condition(c)?),
                Predicate::In { column, values, negated } => {
                    let (index, ty) = lookup(column)?;
                    for v in values {
                        check_literal(column, ty, Op::Eq, v)?;
                    }
                    PredicatePlan::In { index, values: values.clone(), negated: *negated }
                }
                Predicate::IsNull { column, negated } => {
                    PredicatePlan::IsNull { index: lookup(column)?.0, negated: *negated }
                }
            })
        }
        let conditions =
            spec.filter.iter().map(resolve_condition).collect::<Result<Vec<_>, _>>()?;
        let predicate =
            spec.predicate.as_ref().map(|p| resolve(p, &resolve_condition, &lookup)).transpose()?;
        let groups = spec
            .group_by
            .iter()
            .map(|g| Ok(GroupPlan { index: lookup(&g.column)?.0, values: g.values.clone() }))
            .collect::<Result<Vec<_>, AnalyticsError>>()?;
        let segment = offset;
        let len = segment * group_count(&spec.group_by);
        Ok(Self { spec: spec.clone(), columns, conditions, predicate, groups, segment, len })
    }

    /// The specification.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Elements of every party's vector.
    pub fn vector_len(&self) -> usize {
        self.len
    }

    /// Schema positions of the columns the job reads, sorted.
    pub fn needed_columns(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .columns
            .iter()
            .map(|c| c.index)
            .chain(self.conditions.iter().map(|c| c.index))
            .chain(self.groups.iter().map(|g| g.index))
            .chain(self.predicate.iter().flat_map(PredicatePlan::indices))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The noise calibration, for a job that declares a privacy charge.
    pub fn dp(&self) -> Option<DpCalibration> {
        let rho = self.spec.privacy.as_ref()?.rho;
        // One row changes the row count, and per column its count, at most one clipping
        // counter, its sum, its sum of squares and at most one histogram slot.
        let components =
            1 + self.columns.iter().map(|c| 4 + u32::from(!c.edges.is_empty())).sum::<u32>();
        Some(DpCalibration {
            rho,
            epsilon: zcdp_epsilon(rho, DP_DELTA),
            delta: DP_DELTA,
            components,
            multiplier: (f64::from(components) / (2.0 * rho)).sqrt(),
            parties: self.spec.min_parties.max(1),
        })
    }

    /// A fresh local aggregate. `noise_seed` (uniformly random) seeds the stochastic rounding
    /// and the noise of differentially private jobs; exact jobs ignore it.
    pub fn aggregate(&self, noise_seed: [u8; 32]) -> LocalAggregate<'_> {
        LocalAggregate {
            plan: self,
            rows: 0,
            counts: vec![0; self.len],
            sums: vec![0; self.columns.len() * 2 * (self.len / self.segment.max(1))],
            rng: self.dp().map(|_| NoiseRng::from_seed(noise_seed)),
        }
    }

    /// Decodes the secure sum over `contributors` parties into the answer.
    pub fn answer(
        &self,
        sum: &[u64],
        contributors: Vec<u32>,
        dropped: Vec<u32>,
    ) -> Result<Answer, AnalyticsError> {
        if sum.len() != self.len {
            return Err(AnalyticsError::WrongLength { got: sum.len(), expected: self.len });
        }
        let wide = |at: usize| -> i128 {
            let limbs: [u64; WIDE_LIMBS] =
                sum[at..at + WIDE_LIMBS].try_into().expect("layout slots are WIDE_LIMBS long");
            decode_wide(&limbs)
        };
        let dp = self.dp();
        let k = self.spec.k_threshold.unwrap_or(0);
        // Counts are sums of (possibly noisy) integers: read them signed, release them ≥ 0.
        let count_at = |at: usize| (sum[at] as i64).max(0) as u64;
        let decode = |base: usize| -> Vec<ColumnAnswer> {
            self.columns
                .iter()
                .map(|c| {
                    let o = base + c.offset;
                    let count = count_at(o + ColumnPlan::COUNT);
                    let (total, squares) = match dp {
                        None => (
                            wide(o + ColumnPlan::SUM) as f64 / SCALE,
                            wide(o + ColumnPlan::SQUARES) as f64 / SCALE,
                        ),
                        Some(_) => {
                            let b = c.bound();
                            (
                                wide(o + ColumnPlan::SUM) as f64 * b / DP_UNITS as f64,
                                (wide(o + ColumnPlan::SQUARES) as f64 * b * b / DP_UNITS as f64)
                                    .max(0.0),
                            )
                        }
                    };
                    let mean = (count > 0).then(|| {
                        let m = total / count as f64;
                        if dp.is_some() { m.clamp(c.min, c.max) } else { m }
                    });
                    let variance = (count > 1).then(|| {
                        let m = total / count as f64;
                        ((squares - count as f64 * m * m) / (count - 1) as f64).max(0.0)
                    });
                    let histogram = (!c.edges.is_empty()).then(|| {
                        let h = o + ColumnPlan::HISTOGRAM;
                        let shown = |at: usize| {
                            let n = count_at(at);
                            (n >= k).then_some(n)
                        };
                        Histogram {
                            edges: c.edges.clone(),
                            counts: (h + 1..h + c.edges.len()).map(shown).collect(),
                            below: shown(h),
                            above: shown(h + c.edges.len()),
                        }
                    });
                    let noise = dp.map(|d| {
                        let unit = d.count_sd(contributors.len());
                        let sum_sd = d.sum_sd(c.min, c.max, contributors.len());
                        NoiseReport {
                            count_ci95: 1.96 * unit,
                            sum_ci95: 1.96 * sum_sd,
                            mean_ci95: 1.96 * sum_sd / (count.max(1) as f64),
                            histogram_bin_ci95: 1.96 * unit,
                        }
                    });
                    // Under a k-threshold, a column counting fewer values, or one whose
                    // histogram hides a slot (which the count and the other slots would give
                    // away), releases nothing.
                    // (Under differential privacy the released values are noisy and
                    // subtraction recovers nothing, so only the count rule applies.)
                    let hidden_slot = histogram.as_ref().is_some_and(|h| {
                        h.below.is_none()
                            || h.above.is_none()
                            || h.counts.iter().any(Option::is_none)
                    });
                    let hidden = k > 0 && (count < k || (dp.is_none() && hidden_slot));
                    if hidden {
                        return ColumnAnswer::suppressed(&c.name);
                    }
                    ColumnAnswer {
                        name: c.name.clone(),
                        count,
                        clipped_below: count_at(o + ColumnPlan::BELOW),
                        clipped_above: count_at(o + ColumnPlan::ABOVE),
                        sum: total,
                        sum_of_squares: squares,
                        mean,
                        variance,
                        std_dev: variance.map(f64::sqrt),
                        histogram,
                        noise,
                        suppressed: false,
                    }
                })
                .collect()
        };
        let suppressed = self.groups.is_empty() && k > 0 && count_at(0) < k;
        let (rows, columns, groups) = if self.groups.is_empty() {
            let rows = count_at(0);
            if suppressed {
                let hidden =
                    self.columns.iter().map(|c| ColumnAnswer::suppressed(&c.name)).collect();
                (0, hidden, Vec::new())
            } else {
                (rows, decode(0), Vec::new())
            }
        } else {
            let count = self.len / self.segment;
            let mut groups = Vec::with_capacity(count);
            for g in 0..count {
                // The group's key, from its index in mixed radix (last column fastest).
                let mut rest = g;
                let mut key = vec![String::new(); self.groups.len()];
                for (j, gp) in self.groups.iter().enumerate().rev() {
                    let radix = gp.values.len() + EXTRA_GROUPS;
                    key[j] = slot_key(&gp.values, rest % radix);
                    rest /= radix;
                }
                let base = g * self.segment;
                let rows = count_at(base);
                let suppressed = k > 0 && rows < k;
                groups.push(GroupAnswer {
                    key,
                    rows: (!suppressed).then_some(rows),
                    columns: if suppressed { Vec::new() } else { decode(base) },
                    suppressed,
                });
            }
            // The total counts only released groups, so suppressed ones cannot be recovered
            // by subtraction.
            let rows = groups.iter().filter_map(|g| g.rows).sum();
            (rows, Vec::new(), groups)
        };
        Ok(Answer {
            dataset: self.spec.dataset.clone(),
            rows,
            columns,
            groups,
            suppressed,
            contributors,
            dropped,
            fraction_bits: FRACTION_BITS,
            privacy: dp,
        })
    }
}

/// One SQL statement that computes a party's exact totals in its database (see
/// [`Plan::aggregate_sql`]); `$n` placeholders are bound to `params` in order.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateSql {
    /// The statement.
    pub sql: String,
    /// Values for `$1`, `$2`, …: text for domain values and text comparisons, numbers otherwise.
    pub params: Vec<Literal>,
}

fn sql_number(x: f64) -> String {
    // Rust's shortest round-trip form; PostgreSQL parses it to the same double.
    format!("{x:?}::float8")
}

/// SQL for `round(y)` with halves away from zero, exact for every double (as Rust's `round`).
fn sql_round(y: &str) -> String {
    format!(
        "(trunc({y}) + CASE WHEN abs({y} - trunc({y})) >= 0.5 THEN sign({y}) ELSE 0 END)::bigint"
    )
}

struct SqlBuilder<'a> {
    params: Vec<Literal>,
    name: &'a dyn Fn(usize) -> String,
}

impl SqlBuilder<'_> {
    fn param(&mut self, l: &Literal) -> String {
        self.params.push(l.clone());
        let cast = if matches!(l, Literal::Number(_)) { "float8" } else { "text" };
        format!("${}::{cast}", self.params.len())
    }

    fn column(&self, index: usize, l: &Literal) -> String {
        let cast = if matches!(l, Literal::Number(_)) { "float8" } else { "text" };
        format!("({})::{cast}", (self.name)(index))
    }

    /// A condition with the party's two-valued meaning: a missing value satisfies nothing.
    fn condition(&mut self, c: &ConditionPlan) -> String {
        let op = c.op.sql();
        let column = self.column(c.index, &c.value);
        let value = self.param(&c.value);
        format!("COALESCE({column} {op} {value}, false)")
    }

    /// ` WHERE …` for the plan's conditions and predicate, or nothing.
    fn filter(&mut self, plan: &Plan) -> String {
        let mut filters: Vec<String> = plan.conditions.iter().map(|c| self.condition(c)).collect();
        if let Some(p) = &plan.predicate {
            filters.push(self.predicate(p));
        }
        if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) }
    }

    fn predicate(&mut self, p: &PredicatePlan) -> String {
        match p {
            PredicatePlan::And(v) if v.is_empty() => "true".into(),
            PredicatePlan::Or(v) if v.is_empty() => "false".into(),
            PredicatePlan::And(v) => {
                format!(
                    "({})",
                    v.iter().map(|x| self.predicate(x)).collect::<Vec<_>>().join(" AND ")
                )
            }
            PredicatePlan::Or(v) => {
                format!(
                    "({})",
                    v.iter().map(|x| self.predicate(x)).collect::<Vec<_>>().join(" OR ")
                )
            }
            PredicatePlan::Not(x) => format!("(NOT {})", self.predicate(x)),
            PredicatePlan::Compare(c) => self.condition(c),
            PredicatePlan::In { index, values, negated } => {
                let Some(first) = values.first() else { return "false".into() };
                let column = self.column(*index, first);
                let items: Vec<String> = values.iter().map(|v| self.param(v)).collect();
                let test = format!("COALESCE({column} IN ({}), false)", items.join(", "));
                let test = if *negated { format!("NOT {test}") } else { test };
                format!("({} IS NOT NULL AND {test})", (self.name)(*index))
            }
            PredicatePlan::IsNull { index, negated } => {
                format!("({} IS {}NULL)", (self.name)(*index), if *negated { "NOT " } else { "" })
            }
        }
    }
}

impl Plan {
    /// The job's row filter as a SQL `WHERE` clause (empty when it filters nothing), with the
    /// party's meaning of missing values, and the values of its `$n` placeholders; `name` gives
    /// each schema position's quoted column reference. The one emitter of the filter: both the
    /// totals statement ([`Plan::aggregate_sql`]) and a row scan in the database use it.
    pub fn where_sql(&self, name: &dyn Fn(usize) -> String) -> AggregateSql {
        let mut b = SqlBuilder { params: Vec::new(), name };
        let clause = b.filter(self);
        AggregateSql { sql: clause, params: b.params }
    }

    /// For an exact job, one SQL statement that computes this party's totals in its database:
    /// the same filter (with the party's meaning of missing values), the same groups, and per
    /// column the same counts, clipped fixed-point sums (rounded as in [`LocalAggregate`]) and
    /// histogram slots. `name` gives each schema position's quoted column reference. `None` for
    /// differentially private jobs, whose stochastic rounding and noise happen in the party.
    pub fn aggregate_sql(
        &self,
        table: &str,
        name: &dyn Fn(usize) -> String,
    ) -> Option<AggregateSql> {
        if self.dp().is_some() {
            return None;
        }
        let mut b = SqlBuilder { params: Vec::new(), name };
        let filter = b.filter(self);
        // The group index, in mixed radix with the last column fastest.
        let mut group = "0".to_string();
        // Slots as in `group_slot`: the domain's values, then (other), then (null).
        for g in &self.groups {
            let column = name(g.index);
            let mut arms = format!(" WHEN {column} IS NULL THEN {}", g.values.len() + 1);
            for (i, v) in g.values.iter().enumerate() {
                let placeholder = b.param(&Literal::Text(v.clone()));
                arms += &format!(" WHEN ({column})::text = {placeholder} THEN {i}");
            }
            let case = format!("(CASE{arms} ELSE {} END)", g.values.len());
            group = format!("({group} * {} + {case})", g.values.len() + EXTRA_GROUPS);
        }
        let mut outputs = vec![format!("({group})::text AS g"), "COUNT(*)::text".to_string()];
        for c in &self.columns {
            let v = format!(
                "(CASE WHEN ({0})::float8 <> 'NaN'::float8 THEN ({0})::float8 END)",
                name(c.index)
            );
            let (lo, hi) = (sql_number(c.min), sql_number(c.max));
            // PostgreSQL's GREATEST and LEAST ignore a NULL argument: keep missing values missing.
            let clipped = format!(
                "(CASE WHEN {v} IS NULL THEN NULL ELSE LEAST(GREATEST({v}, {lo}), {hi}) END)"
            );
            let count_if = |cond: String| format!("SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)::text");
            outputs.push(format!("COUNT({v})::text"));
            outputs.push(count_if(format!("{v} < {lo}")));
            outputs.push(count_if(format!("{v} > {hi}")));
            outputs.push(format!(
                "COALESCE(SUM({}), 0)::text",
                sql_round(&format!("({clipped} * 1048576.0::float8)"))
            ));
            outputs.push(format!(
                "COALESCE(SUM({}), 0)::text",
                sql_round(&format!("({clipped} * {clipped} * 1048576.0::float8)"))
            ));
            if !c.edges.is_empty() {
                let e: Vec<String> = c.edges.iter().map(|x| sql_number(*x)).collect();
                let last = e.len() - 1;
                outputs.push(count_if(format!("{v} < {}", e[0])));
                for i in 0..last {
                    let upper = if i + 1 == last { "<=" } else { "<" };
                    outputs.push(count_if(format!("{v} >= {} AND {v} {upper} {}", e[i], e[i + 1])));
                }
                outputs.push(count_if(format!("{v} > {}", e[last])));
            }
        }
        Some(AggregateSql {
            sql: format!("SELECT {} FROM {table}{filter} GROUP BY 1", outputs.join(", ")),
            params: b.params,
        })
    }

    /// The vector from the rows of [`Plan::aggregate_sql`]: each row holds the group index and
    /// then the totals in the statement's order.
    pub fn vector_from_sql(&self, rows: &[Vec<i128>]) -> Result<Vec<u64>, AnalyticsError> {
        let groups = self.len / self.segment.max(1);
        let mut v = vec![0u64; self.len];
        let mut total_rows: i128 = 0;
        for row in rows {
            let bad = || AnalyticsError::Invalid("the database returned a malformed total".into());
            let g = usize::try_from(*row.first().ok_or_else(bad)?).map_err(|_| bad())?;
            if g >= groups {
                return Err(bad());
            }
            let base = g * self.segment;
            let mut at = row[1..].iter();
            let mut next = || at.next().copied().ok_or_else(bad);
            let rows_here = next()?;
            total_rows += rows_here;
            v[base] = rows_here as u64;
            for c in &self.columns {
                let o = base + c.offset;
                v[o + ColumnPlan::COUNT] = next()? as u64;
                v[o + ColumnPlan::BELOW] = next()? as u64;
                v[o + ColumnPlan::ABOVE] = next()? as u64;
                let (sum, squares) = (next()?, next()?);
                v[o + ColumnPlan::SUM..o + ColumnPlan::SUM + WIDE_LIMBS]
                    .copy_from_slice(&encode_wide(sum));
                v[o + ColumnPlan::SQUARES..o + ColumnPlan::SQUARES + WIDE_LIMBS]
                    .copy_from_slice(&encode_wide(squares));
                if !c.edges.is_empty() {
                    for slot in 0..=c.edges.len() {
                        v[o + ColumnPlan::HISTOGRAM + slot] = next()? as u64;
                    }
                }
            }
        }
        if total_rows > i128::from(MAX_ROWS) {
            return Err(AnalyticsError::TooManyRows(MAX_ROWS));
        }
        Ok(v)
    }
}

/// The vector layout of a specification without a schema: what the coordinator needs to turn
/// the secure sum into the answer. It cannot aggregate rows.
#[derive(Debug)]
pub struct Layout(Plan);

impl Layout {
    /// The layout of `spec`.
    pub fn new(spec: &JobSpec) -> Result<Self, AnalyticsError> {
        spec.check()?;
        let mut columns = Vec::with_capacity(spec.columns.len());
        let mut offset = 1;
        for c in &spec.columns {
            let plan = ColumnPlan::new(c, usize::MAX, offset);
            offset += plan.len();
            columns.push(plan);
        }
        let segment = offset;
        let len = segment * group_count(&spec.group_by);
        let groups = spec
            .group_by
            .iter()
            .map(|g| GroupPlan { index: usize::MAX, values: g.values.clone() })
            .collect();
        Ok(Self(Plan {
            spec: spec.clone(),
            columns,
            conditions: Vec::new(),
            predicate: None,
            groups,
            segment,
            len,
        }))
    }

    /// Elements of every party's vector.
    pub fn vector_len(&self) -> usize {
        self.0.len
    }

    /// For a differentially private job, one party's share of the noise over the whole
    /// layout, as [`LocalAggregate::finish`] adds it (`None` for an exact job): what a party
    /// adds whose vector does not come from its own rows (a join's shares).
    pub fn noise(&self, noise_seed: [u8; 32]) -> Option<Vec<u64>> {
        self.0.dp()?;
        Some(self.0.aggregate(noise_seed).finish())
    }

    /// Decodes the secure sum; see [`Plan::answer`].
    pub fn answer(
        &self,
        sum: &[u64],
        contributors: Vec<u32>,
        dropped: Vec<u32>,
    ) -> Result<Answer, AnalyticsError> {
        self.0.answer(sum, contributors, dropped)
    }
}

/// One party's running totals over its own rows.
pub struct LocalAggregate<'p> {
    plan: &'p Plan,
    rows: u64,
    /// The integer slots of the layout (counts and histogram bins).
    counts: Vec<u64>,
    /// Exact fixed-point sum and sum of squares per column (in sensitivity units for
    /// differentially private jobs).
    sums: Vec<i128>,
    /// Stochastic rounding and noise, for differentially private jobs.
    rng: Option<NoiseRng>,
}

/// Rounds `x` to an integer, up with probability equal to its fractional part (unbiased).
fn round_stochastically(x: f64, rng: &mut NoiseRng) -> i128 {
    let floor = x.floor();
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    (if u < x - floor { floor + 1.0 } else { floor }) as i128
}

impl LocalAggregate<'_> {
    /// Adds one row, given as values by schema position (unread columns may be `Null`).
    pub fn push_row(&mut self, row: &[Value<'_>]) -> Result<(), AnalyticsError> {
        let cell = |i: usize| row.get(i).copied().unwrap_or(Value::Null);
        if !self.plan.conditions.iter().all(|c| c.holds(cell(c.index))) {
            return Ok(());
        }
        if self.plan.predicate.as_ref().is_some_and(|p| !p.holds(&cell)) {
            return Ok(());
        }
        if self.rows >= MAX_ROWS {
            return Err(AnalyticsError::TooManyRows(MAX_ROWS));
        }
        self.rows += 1;
        let mut group = 0;
        for g in &self.plan.groups {
            group = group * (g.values.len() + EXTRA_GROUPS) + group_slot(&g.values, cell(g.index));
        }
        let base = group * self.plan.segment;
        let sums = group * 2 * self.plan.columns.len();
        self.counts[base] += 1;
        for (k, c) in self.plan.columns.iter().enumerate() {
            let Value::Number(x) = cell(c.index) else { continue };
            if x.is_nan() {
                continue;
            }
            let o = base + c.offset;
            self.counts[o + ColumnPlan::COUNT] += 1;
            let clipped = if x < c.min {
                self.counts[o + ColumnPlan::BELOW] += 1;
                c.min
            } else if x > c.max {
                self.counts[o + ColumnPlan::ABOVE] += 1;
                c.max
            } else {
                x
            };
            match &mut self.rng {
                None => {
                    self.sums[sums + 2 * k] += (clipped * SCALE).round() as i128;
                    self.sums[sums + 2 * k + 1] += (clipped * clipped * SCALE).round() as i128;
                }
                Some(rng) => {
                    // The value's share of the bound, in [−1, 1] and [0, 1], in DP_UNITS.
                    let b = c.bound();
                    let units = DP_UNITS as f64;
                    self.sums[sums + 2 * k] += round_stochastically(clipped / b * units, rng);
                    self.sums[sums + 2 * k + 1] +=
                        round_stochastically(clipped * clipped / (b * b) * units, rng);
                }
            }
            if !c.edges.is_empty() {
                self.counts[o + ColumnPlan::HISTOGRAM + c.bin(x)] += 1;
            }
        }
        Ok(())
    }

    /// Rows that passed the filter so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The party's vector, ready to be masked; for differentially private jobs, with this
    /// party's share of the noise already added to every element.
    pub fn finish(self) -> Vec<u64> {
        self.finish_with(true)
    }

    /// The vector without noise: a join's per-key aggregate, whose party adds its share of the
    /// noise once, to its share of the per-group sums ([`Layout::noise`]). Sums of a
    /// differentially private job are in its sensitivity units, stochastically rounded.
    pub fn finish_without_noise(self) -> Vec<u64> {
        self.finish_with(false)
    }

    fn finish_with(mut self, noise: bool) -> Vec<u64> {
        let mut v = std::mem::take(&mut self.counts);
        let segment = self.plan.segment;
        let groups = self.plan.len / segment.max(1);
        let n = self.plan.columns.len();
        let dp = self.plan.dp().filter(|_| noise);
        if let (Some(rng), Some(dp)) = (&mut self.rng, dp) {
            let unit = dp.party_variance(1);
            let wide = dp.party_variance(DP_UNITS);
            for g in 0..groups {
                let base = g * segment;
                let slots: Vec<usize> = std::iter::once(base)
                    .chain(self.plan.columns.iter().flat_map(|c| {
                        let o = base + c.offset;
                        let hist = if c.edges.is_empty() { 0 } else { c.edges.len() + 1 };
                        [o + ColumnPlan::COUNT, o + ColumnPlan::BELOW, o + ColumnPlan::ABOVE]
                            .into_iter()
                            .chain((0..hist).map(move |i| o + ColumnPlan::HISTOGRAM + i))
                    }))
                    .collect();
                for at in slots {
                    v[at] = v[at].wrapping_add(discrete_gaussian(rng, unit) as u64);
                }
            }
            for s in self.sums.iter_mut() {
                *s += i128::from(discrete_gaussian(rng, wide));
            }
        }
        for g in 0..groups {
            for (k, c) in self.plan.columns.iter().enumerate() {
                let o = g * segment + c.offset;
                let at = g * 2 * n + 2 * k;
                v[o + ColumnPlan::SUM..o + ColumnPlan::SUM + WIDE_LIMBS]
                    .copy_from_slice(&encode_wide(self.sums[at]));
                v[o + ColumnPlan::SQUARES..o + ColumnPlan::SQUARES + WIDE_LIMBS]
                    .copy_from_slice(&encode_wide(self.sums[at + 1]));
            }
        }
        v
    }
}

/// A party's local sums are derived from its rows: wiped when dropped, finished or not (the
/// finished vector is the caller's to wipe).
impl Drop for LocalAggregate<'_> {
    fn drop(&mut self) {
        self.counts.zeroize();
        self.sums.zeroize();
        self.rows.zeroize();
    }
}

/// The answer to a column-aggregate job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The dataset.
    pub dataset: String,
    /// Rows that passed the filter, over all contributors.
    pub rows: u64,
    /// Per requested column (when the job does not group).
    pub columns: Vec<ColumnAnswer>,
    /// Per group (when the job groups), in key order: for each group-by column its declared
    /// values, then `(other)` (values outside the domain), then `(null)` (missing values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupAnswer>,
    /// Parties whose rows are in the answer.
    pub contributors: Vec<u32>,
    /// Parties that took part but dropped out before their input was in.
    pub dropped: Vec<u32>,
    /// Whether the k-threshold withheld the whole (ungrouped) answer: fewer rows than k.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed: bool,
    /// Values were rounded to multiples of 2^-fraction_bits before summing (exact jobs).
    pub fraction_bits: u32,
    /// For differentially private jobs: the guarantee and the noise calibration. Every number
    /// in the answer was computed from noisy sums only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<DpCalibration>,
}

/// The key of values outside a group-by column's declared domain.
pub const OTHER: &str = "(other)";

/// The key of missing values in a group-by column: a group of its own, apart from
/// [`OTHER`].
pub const NULL_GROUP: &str = "(null)";

/// One group of a grouped answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupAnswer {
    /// The group-by columns' values.
    pub key: Vec<String>,
    /// Rows in the group, unless suppressed.
    pub rows: Option<u64>,
    /// Per requested column, unless suppressed.
    pub columns: Vec<ColumnAnswer>,
    /// Whether the group counted fewer rows than the k-threshold: nothing about it is
    /// released.
    pub suppressed: bool,
}

/// Half-widths of 95% confidence intervals for the noise in a differentially private answer
/// (the noise is known exactly; clipping and rounding are not included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseReport {
    /// Of the count (and of the row count).
    pub count_ci95: f64,
    /// Of the sum.
    pub sum_ci95: f64,
    /// Of the mean, approximately (the sum's over the count).
    pub mean_ci95: f64,
    /// Of each histogram slot.
    pub histogram_bin_ci95: f64,
}

impl NoiseReport {
    /// The conservative 95% half-width of the noise in `column`'s mean
    /// ([`mean_noise_half_width`]), from this report's count and sum intervals, without the
    /// column's bounds (which only narrow it); `None` where none can be stated.
    pub fn mean_bound_ci95(&self, column: &ColumnAnswer) -> Option<f64> {
        // The z the report's half-widths were made with.
        let z = 1.96;
        mean_noise_half_width(
            column.count,
            column.sum,
            column.mean?,
            self.count_ci95 / z,
            self.sum_ci95 / z,
            None,
        )
    }
}

/// z of a two-sided 97.5% interval of a normal distribution: a sum's and a count's noise both
/// lie within theirs with probability at least 95% (Bonferroni).
const Z_JOINT95: f64 = 2.241_402_727_604_947;

/// A conservative half-width of a 95% interval of the noise in a released mean `sum / count`
/// (then clamped into `bounds`), given the standard deviations of the noise in the count and
/// in the sum: with probability at least 95% both noises lie within their 97.5% intervals, and
/// then the noise-free mean lies between the extremes of sum / count over those intervals
/// (and within the bounds), which are at most the returned distance from `mean`. `None` when
/// the count's interval reaches below one, where the noise-free count may be zero and no
/// interval of the mean can be stated.
pub fn mean_noise_half_width(
    count: u64,
    sum: f64,
    mean: f64,
    count_sd: f64,
    sum_sd: f64,
    bounds: Option<(f64, f64)>,
) -> Option<f64> {
    let (dn, ds) = (Z_JOINT95 * count_sd, Z_JOINT95 * sum_sd);
    let (n_lo, n_hi) = (count as f64 - dn, count as f64 + dn);
    if !(n_lo >= 1.0 && mean.is_finite() && sum.is_finite()) {
        return None;
    }
    let corners = [(sum - ds) / n_lo, (sum - ds) / n_hi, (sum + ds) / n_lo, (sum + ds) / n_hi];
    let mut lo = corners.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = corners.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if let Some((min, max)) = bounds {
        (lo, hi) = (lo.clamp(min, max), hi.clamp(min, max));
    }
    Some((hi - mean).max(mean - lo).max(0.0))
}

/// Statistics of one column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnAnswer {
    /// The column.
    pub name: String,
    /// Non-missing values in rows that passed the filter.
    pub count: u64,
    /// Values below the lower bound, replaced by it in sums.
    pub clipped_below: u64,
    /// Values above the upper bound, replaced by it in sums.
    pub clipped_above: u64,
    /// Sum of clipped values.
    pub sum: f64,
    /// Sum of squared clipped values.
    pub sum_of_squares: f64,
    /// Mean of clipped values, if any.
    pub mean: Option<f64>,
    /// Sample variance (n − 1 denominator), if at least two values.
    pub variance: Option<f64>,
    /// Sample standard deviation.
    pub std_dev: Option<f64>,
    /// Histogram of the values (unclipped), if asked for.
    pub histogram: Option<Histogram>,
    /// Confidence intervals of the noise, for differentially private jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseReport>,
    /// Whether the k-threshold suppressed this column (too few values, or a hidden histogram
    /// slot the rest would reveal): its numbers are zero and mean nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed: bool,
}

impl ColumnAnswer {
    fn suppressed(name: &str) -> Self {
        ColumnAnswer {
            name: name.to_string(),
            count: 0,
            clipped_below: 0,
            clipped_above: 0,
            sum: 0.0,
            sum_of_squares: 0.0,
            mean: None,
            variance: None,
            std_dev: None,
            histogram: None,
            noise: None,
            suppressed: true,
        }
    }
}

/// Counts per bin. A count below the job's `k_threshold` is suppressed (`None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Bin edges; bin i is `[edges[i], edges[i+1])`, the last one closed.
    pub edges: Vec<f64>,
    /// Count per bin.
    pub counts: Vec<Option<u64>>,
    /// Values below the first edge.
    pub below: Option<u64>,
    /// Values above the last edge.
    pub above: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> DatasetSchema {
        DatasetSchema {
            name: "t".into(),
            columns: vec![
                ("a".into(), ColumnType::Float),
                ("g".into(), ColumnType::String),
                ("n".into(), ColumnType::Int),
            ],
        }
    }

    fn spec(text: &str) -> JobSpec {
        JobSpec::parse(text).unwrap()
    }

    const SPEC: &str = r#"
        dataset = "t"
        filter = [{ column = "g", op = "!=", value = "skip" }]
        [[columns]]
        name = "a"
        min = -10
        max = 10
        histogram = [-5, 0, 5]
        [[columns]]
        name = "n"
        min = 0
        max = 100
    "#;

    fn rows() -> Vec<(f64, &'static str, Option<f64>)> {
        vec![
            (1.5, "x", Some(3.0)),
            (-20.0, "y", None),
            (7.25, "skip", Some(1.0)),
            (5.0, "x", Some(200.0)),
            (-5.0, "x", Some(4.0)),
            (0.0, "z", Some(5.0)),
        ]
    }

    fn vector(plan: &Plan, rows: &[(f64, &'static str, Option<f64>)]) -> Vec<u64> {
        let mut agg = plan.aggregate([0; 32]);
        for (a, g, n) in rows {
            let row = [Value::Number(*a), Value::Text(g), n.map_or(Value::Null, Value::Number)];
            agg.push_row(&row).unwrap();
        }
        agg.finish()
    }

    #[test]
    fn split_sums_equal_pooled_exactly() {
        let plan = Plan::new(&spec(SPEC), &schema()).unwrap();
        let all = rows();
        let pooled = vector(&plan, &all);
        let a = vector(&plan, &all[..2]);
        let b = vector(&plan, &all[2..]);
        let joint: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        assert_eq!(joint, pooled);
        let answer = plan.answer(&joint, vec![0, 1], vec![]).unwrap();
        assert_eq!(answer.rows, 5);
        let a = &answer.columns[0];
        assert_eq!((a.count, a.clipped_below, a.clipped_above), (5, 1, 0));
        assert_eq!(a.sum, 1.5 - 10.0 + 5.0 - 5.0 + 0.0);
        let h = a.histogram.as_ref().unwrap();
        assert_eq!(
            (h.below, h.counts.clone(), h.above),
            (Some(1), vec![Some(1), Some(3)], Some(0))
        );
        let n = &answer.columns[1];
        assert_eq!((n.count, n.clipped_above), (4, 1));
        assert_eq!(n.mean, Some((3.0 + 100.0 + 4.0 + 5.0) / 4.0));
        let xs = [3.0f64, 100.0, 4.0, 5.0];
        let m = xs.iter().sum::<f64>() / 4.0;
        let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 3.0;
        assert!((n.variance.unwrap() - var).abs() < 1e-6);
    }

    /// Three parties each add their share of the noise; over many releases the errors of the
    /// counts and sums are centred with the declared spread, and the answer says so.
    #[test]
    fn differentially_private_answers_carry_the_declared_noise() {
        let mut s = spec(SPEC);
        s.privacy = Some(crate::spec::Privacy { rho: 0.5 });
        s.min_parties = 3;
        let plan = Plan::new(&s, &schema()).unwrap();
        let dp = plan.dp().unwrap();
        assert_eq!(dp.components, 1 + 5 + 4);
        assert!((dp.epsilon - zcdp_epsilon(0.5, DP_DELTA)).abs() < 1e-12);
        let all = rows();
        let exact = Plan::new(&spec(SPEC), &schema()).unwrap();
        let truth = exact.answer(&vector(&exact, &all), vec![0], vec![]).unwrap();
        let trials = 400;
        let (mut count_err, mut sum_err): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        let mut declared = None;
        for t in 0..trials {
            let mut total = vec![0u64; plan.vector_len()];
            for p in 0..3u8 {
                let mut seed = [7u8; 32];
                seed[..3].copy_from_slice(&[t as u8, (t >> 8) as u8, p]);
                let mut agg = plan.aggregate(seed);
                let part = if p == 0 {
                    &all[..2]
                } else if p == 1 {
                    &all[2..4]
                } else {
                    &all[4..]
                };
                for (a, g, n) in part {
                    let row =
                        [Value::Number(*a), Value::Text(g), n.map_or(Value::Null, Value::Number)];
                    agg.push_row(&row).unwrap();
                }
                for (x, y) in total.iter_mut().zip(agg.finish()) {
                    *x = x.wrapping_add(y);
                }
            }
            let a = plan.answer(&total, vec![0, 1, 2], vec![]).unwrap();
            let c = &a.columns[1];
            // The raw noisy count, before it is clamped at zero for release.
            let raw = (total[plan.columns[1].offset] as i64) as f64;
            count_err.push(raw - truth.columns[1].count as f64);
            sum_err.push(c.sum - truth.columns[1].sum);
            declared = c.noise.clone();
            assert_eq!(a.privacy, Some(dp));
        }
        let declared = declared.unwrap();
        let sd = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (m, (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
        };
        let (m, s_count) = sd(&count_err);
        let expected = declared.count_ci95 / 1.96;
        assert!(
            (s_count / expected - 1.0).abs() < 0.15,
            "count noise sd {s_count} vs declared {expected}"
        );
        assert!(m.abs() < 4.0 * expected / (trials as f64).sqrt(), "count noise is centred: {m}");
        let (m, s_sum) = sd(&sum_err);
        let expected = declared.sum_ci95 / 1.96;
        assert!(
            (s_sum / expected - 1.0).abs() < 0.15,
            "sum noise sd {s_sum} vs declared {expected}"
        );
        assert!(m.abs() < 4.0 * expected / (trials as f64).sqrt(), "sum noise is centred: {m}");
    }

    #[test]
    fn groups_and_predicates_split_the_rows() {
        let mut s = spec("dataset = \"t\"\n[[columns]]\nname = \"a\"\nmin = -10\nmax = 10\n");
        s.group_by =
            vec![crate::spec::GroupBy { column: "g".into(), values: vec!["x".into(), "y".into()] }];
        // (n IS NULL OR n IN (3, 4)) AND NOT a < -6
        s.predicate = Some(Predicate::And(vec![
            Predicate::Or(vec![
                Predicate::IsNull { column: "n".into(), negated: false },
                Predicate::In {
                    column: "n".into(),
                    values: vec![Literal::Number(3.0), Literal::Number(4.0)],
                    negated: false,
                },
            ]),
            Predicate::Not(Box::new(Predicate::Compare(Condition {
                column: "a".into(),
                op: Op::Lt,
                value: Literal::Number(-6.0),
            }))),
        ]));
        let plan = Plan::new(&s, &schema()).unwrap();
        assert_eq!(plan.vector_len(), 4 * plan.segment);
        // Rows kept: (1.5, x, 3), (-5, x, 4); (-20, y, null) fails NOT a < -6; the others fail
        // the IN.
        let v = vector(&plan, &rows());
        let a = plan.answer(&v, vec![0], vec![]).unwrap();
        assert!(a.columns.is_empty());
        let keys: Vec<(String, Option<u64>)> =
            a.groups.iter().map(|g| (g.key[0].clone(), g.rows)).collect();
        assert_eq!(
            keys,
            vec![
                ("x".into(), Some(2)),
                ("y".into(), Some(0)),
                (OTHER.into(), Some(0)),
                (NULL_GROUP.into(), Some(0))
            ]
        );
        assert_eq!(a.groups[0].columns[0].sum, 1.5 - 5.0);
        assert_eq!(a.rows, 2);
        // A k-threshold suppresses the small groups, and the total counts released groups only.
        s.k_threshold = Some(2);
        let plan = Plan::new(&s, &schema()).unwrap();
        let a = plan.answer(&vector(&plan, &rows()), vec![0], vec![]).unwrap();
        assert_eq!(
            a.groups.iter().map(|g| g.suppressed).collect::<Vec<_>>(),
            vec![false, true, true, true]
        );
        assert!(a.groups[1].columns.is_empty() && a.groups[1].rows.is_none());
    }

    #[test]
    fn the_layout_alone_decodes_like_the_plan() {
        let s = spec(SPEC);
        let plan = Plan::new(&s, &schema()).unwrap();
        let layout = Layout::new(&s).unwrap();
        assert_eq!(layout.vector_len(), plan.vector_len());
        let v = vector(&plan, &rows());
        assert_eq!(layout.answer(&v, vec![0], vec![]), plan.answer(&v, vec![0], vec![]));
    }

    /// Requirement: missing values in a GROUP BY column form their own `(null)` group, apart
    /// from `(other)`, in every party's layout alike, and the k-threshold treats it like any
    /// group.
    #[test]
    fn missing_group_values_form_their_own_null_group() {
        let schema = DatasetSchema {
            name: "t".into(),
            columns: vec![("a".into(), ColumnType::Float), ("g".into(), ColumnType::String)],
        };
        let mut s = spec("dataset = \"t\"\n[[columns]]\nname = \"a\"\nmin = 0\nmax = 10\n");
        s.group_by =
            vec![crate::spec::GroupBy { column: "g".into(), values: vec!["x".into(), "y".into()] }];
        let plan = Plan::new(&s, &schema).unwrap();
        // Declared values, (other), (null): one segment each, as the specification says.
        assert_eq!(plan.vector_len(), 4 * plan.segment);
        assert_eq!(s.vector_len(), plan.vector_len());
        let rows: [(f64, Option<&str>); 7] = [
            (1.0, Some("x")),
            (2.0, None),
            (3.0, None),
            (4.0, Some("zz")),
            (5.0, None),
            (6.0, Some("y")),
            (7.0, Some("")),
        ];
        let push = |rows: &[(f64, Option<&str>)]| {
            let mut agg = plan.aggregate([0; 32]);
            for (a, g) in rows {
                agg.push_row(&[Value::Number(*a), g.map_or(Value::Null, Value::Text)]).unwrap();
            }
            agg.finish()
        };
        // Two parties' vectors add up to the pooled one, so they share the layout.
        let (first, second) = (push(&rows[..3]), push(&rows[3..]));
        let joint: Vec<u64> = first.iter().zip(&second).map(|(x, y)| x.wrapping_add(*y)).collect();
        assert_eq!(joint, push(&rows));
        let a = plan.answer(&joint, vec![0, 1], vec![]).unwrap();
        let groups: Vec<(&str, Option<u64>, f64)> =
            a.groups.iter().map(|g| (g.key[0].as_str(), g.rows, g.columns[0].sum)).collect();
        // An empty string is a value (outside the domain), not a missing one.
        assert_eq!(
            groups,
            [
                ("x", Some(1), 1.0),
                ("y", Some(1), 6.0),
                (OTHER, Some(2), 4.0 + 7.0),
                (NULL_GROUP, Some(3), 2.0 + 3.0 + 5.0)
            ]
        );
        assert_eq!(Layout::new(&s).unwrap().answer(&joint, vec![0, 1], vec![]), Ok(a));
        // Under a k-threshold the (null) group is released or suppressed by its own count.
        s.k_threshold = Some(3);
        let plan = Plan::new(&s, &schema).unwrap();
        let mut agg = plan.aggregate([0; 32]);
        for (a, g) in rows {
            agg.push_row(&[Value::Number(a), g.map_or(Value::Null, Value::Text)]).unwrap();
        }
        let a = plan.answer(&agg.finish(), vec![0], vec![]).unwrap();
        let released: Vec<(&str, bool)> =
            a.groups.iter().map(|g| (g.key[0].as_str(), g.suppressed)).collect();
        assert_eq!(released, [("x", true), ("y", true), (OTHER, true), (NULL_GROUP, false)]);
        assert_eq!(a.rows, 3, "the total counts the released (null) group only");
        // With two group-by columns, (null) combines with every other slot.
        s.k_threshold = None;
        s.group_by.push(crate::spec::GroupBy { column: "a".into(), values: vec!["1".into()] });
        let plan = Plan::new(&s, &schema).unwrap();
        let mut agg = plan.aggregate([0; 32]);
        agg.push_row(&[Value::Null, Value::Null]).unwrap();
        agg.push_row(&[Value::Number(1.0), Value::Null]).unwrap();
        let a = plan.answer(&agg.finish(), vec![0], vec![]).unwrap();
        assert_eq!(a.groups.len(), 4 * 3);
        let filled: Vec<Vec<String>> =
            a.groups.iter().filter(|g| g.rows == Some(1)).map(|g| g.key.clone()).collect();
        assert_eq!(
            filled,
            [vec![NULL_GROUP.to_string(), "1".into()], vec![NULL_GROUP.into(), NULL_GROUP.into()]]
        );
    }

    /// The database pushdown puts a missing group-by value in the (null) slot, before it
    /// compares the value with the domain (where NULL would match nothing and fall into
    /// `(other)`).
    #[test]
    fn the_pushdown_groups_missing_values_as_null() {
        let mut s = spec("dataset = \"t\"\n[[columns]]\nname = \"a\"\nmin = 0\nmax = 10\n");
        s.group_by =
            vec![crate::spec::GroupBy { column: "g".into(), values: vec!["x".into(), "y".into()] }];
        let plan = Plan::new(&s, &schema()).unwrap();
        let sql = plan.aggregate_sql("t", &|i| format!("c{i}")).unwrap();
        assert!(
            sql.sql.contains(
                "(0 * 4 + (CASE WHEN c1 IS NULL THEN 3 WHEN (c1)::text = $1::text THEN 0 \
                 WHEN (c1)::text = $2::text THEN 1 ELSE 2 END))"
            ),
            "{}",
            sql.sql
        );
    }

    #[test]
    fn schema_mismatches_are_named() {
        let s = schema();
        let e =
            Plan::new(&spec("dataset = \"t\"\n[[columns]]\nname = \"zz\"\nmin = 0\nmax = 1"), &s)
                .unwrap_err();
        assert_eq!(e.to_string(), "dataset \"t\" has no column \"zz\"");
        let e =
            Plan::new(&spec("dataset = \"t\"\n[[columns]]\nname = \"g\"\nmin = 0\nmax = 1"), &s)
                .unwrap_err();
        assert!(e.to_string().contains("only numeric columns"), "{e}");
        let e = Plan::new(
            &spec("dataset = \"t\"\nfilter = [{ column = \"g\", op = \"<\", value = \"m\" }]\n[[columns]]\nname = \"a\"\nmin = 0\nmax = 1"),
            &s,
        )
        .unwrap_err();
        assert!(e.to_string().contains("== or !="), "{e}");
        let e = Plan::new(
            &spec("dataset = \"t\"\nfilter = [{ column = \"a\", op = \"==\", value = \"m\" }]\n[[columns]]\nname = \"a\"\nmin = 0\nmax = 1"),
            &s,
        )
        .unwrap_err();
        assert!(e.to_string().contains("compares it with text"), "{e}");
    }

    #[test]
    fn small_counts_under_the_k_threshold_are_suppressed() {
        let mut s = spec(SPEC);
        s.k_threshold = Some(2);
        let plan = Plan::new(&s, &schema()).unwrap();
        let a = plan.answer(&vector(&plan, &rows()), vec![0], vec![]).unwrap();
        // Column a's histogram has slots below k: in an exact answer the count and the other
        // slots would give them away, so the whole column is withheld. Column n is released.
        assert!(
            a.columns[0].suppressed && a.columns[0].histogram.is_none() && a.columns[0].sum == 0.0
        );
        assert!(!a.columns[1].suppressed && a.columns[1].count == 4);
        // Under differential privacy only the slots themselves are withheld.
        s.privacy = Some(crate::spec::Privacy { rho: 50.0 });
        s.min_parties = 1;
        let plan = Plan::new(&s, &schema()).unwrap();
        let a = plan.answer(&vector(&plan, &rows()), vec![0], vec![]).unwrap();
        assert!(!a.columns[0].suppressed);
        assert!(
            a.columns[0].histogram.as_ref().unwrap().counts.iter().any(Option::is_none)
                || a.rows >= 2
        );
        // An ungrouped answer over fewer rows than k releases nothing.
        s.privacy = None;
        s.k_threshold = Some(100);
        let plan = Plan::new(&s, &schema()).unwrap();
        let a = plan.answer(&vector(&plan, &rows()), vec![0], vec![]).unwrap();
        assert_eq!(a.rows, 0);
        assert!(a.columns.iter().all(|c| c.suppressed));
    }

    #[test]
    fn histogram_bins_follow_their_edges() {
        let plan = Plan::new(&spec(SPEC), &schema()).unwrap();
        let c = &plan.columns[0];
        assert_eq!(c.bin(-6.0), 0);
        assert_eq!(c.bin(-5.0), 1);
        assert_eq!(c.bin(-0.1), 1);
        assert_eq!(c.bin(0.0), 2);
        assert_eq!(c.bin(5.0), 2);
        assert_eq!(c.bin(5.1), 3);
    }
}
