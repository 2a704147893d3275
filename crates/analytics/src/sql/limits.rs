//! Queries at and past the limits: long AND and OR chains, deep NOTs and parentheses, huge IN
//! lists, odd Unicode, and generated queries up to the size limit.
//!
//! Everything runs on a thread with a [`SMALL_STACK`]: a parser or planner that recursed once
//! per term or per level would overflow it and abort the test binary, as the coordinator's
//! worker thread would have aborted the coordinator.

use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::{SqlOptions, plan_sql};
use crate::AnalyticsError;
use crate::plan::Plan;
use crate::schema::{ColumnInfo, ColumnType, DatasetCatalog, DatasetSchema, Value};
use crate::spec::{JobSpec, Literal, MAX_IN_VALUES, MAX_NESTING, MAX_SQL_BYTES, Op, Predicate};

/// A tenth of a tokio worker's default stack.
const SMALL_STACK: usize = 256 * 1024;
/// Every generated query starts with this.
const PREFIX: &str = "SELECT COUNT(*) FROM flights WHERE ";

/// Runs `f` on a fresh thread with a [`SMALL_STACK`], passing on its panic.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("a test thread starts")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn catalog() -> DatasetCatalog {
    let col = |name: &str, ty, bounds, domain: Option<&[&str]>| ColumnInfo {
        name: name.into(),
        ty,
        bounds,
        domain: domain.map(|d| d.iter().map(|v| v.to_string()).collect()),
    };
    DatasetCatalog {
        name: "flights".into(),
        columns: vec![
            col("month", ColumnType::Int, Some((1.0, 12.0)), None),
            col("carrier", ColumnType::String, None, Some(&["AA", "UA", "✈️"][..])),
            col("m", ColumnType::Int, Some((0.0, 9.0)), None),
            col("月", ColumnType::Int, Some((1.0, 12.0)), None),
            col("Größe", ColumnType::Float, Some((0.0, 3.0)), None),
            col("naïve col", ColumnType::String, None, Some(&["x"][..])),
            col("say \"hi\"", ColumnType::Int, Some((0.0, 1.0)), None),
        ],
    }
}

fn plan(sql: &str) -> Result<JobSpec, AnalyticsError> {
    plan_sql(sql, &[catalog()], &SqlOptions::default())
}

/// `terms` copies of `term` joined by `op`, after [`PREFIX`].
fn chain(term: &str, op: &str, terms: usize) -> String {
    let mut sql = PREFIX.to_string();
    for i in 0..terms {
        if i > 0 {
            sql.push_str(op);
        }
        sql.push_str(term);
    }
    sql
}

/// The longest chain of `term` joined by `op` that fits the size limit.
fn longest_chain(term: &str, op: &str) -> String {
    let terms = (MAX_SQL_BYTES - PREFIX.len() + op.len()) / (term.len() + op.len());
    let sql = chain(term, op, terms);
    assert!(sql.len() <= MAX_SQL_BYTES && sql.len() + term.len() + op.len() > MAX_SQL_BYTES);
    sql
}

fn is_too_deep(r: &Result<JobSpec, AnalyticsError>) -> bool {
    matches!(r, Err(AnalyticsError::TooDeep { limit }) if *limit == MAX_NESTING)
}

/// Whether one row `(month, m)` passes the spec's filters, as a party decides it.
fn passes(spec: &JobSpec, month: Option<f64>, m: Option<f64>) -> bool {
    let c = catalog();
    let schema = DatasetSchema {
        name: c.name.clone(),
        columns: c.columns.iter().map(|c| (c.name.clone(), c.ty)).collect(),
    };
    let plan = Plan::new(spec, &schema).expect("a planned spec fits its schema");
    let mut agg = plan.aggregate([0; 32]);
    let number = |x: Option<f64>| x.map_or(Value::Null, Value::Number);
    let row = [
        number(month),
        Value::Text("AA"),
        number(m),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ];
    agg.push_row(&row).expect("one row fits");
    let answer = plan.answer(&agg.finish(), vec![0], vec![]).expect("the sum has the layout");
    answer.rows == 1
}

/// The parties' side of a planned spec: the plan, its SQL pushdown, and a row through it.
fn run_everywhere(spec: &JobSpec) -> bool {
    let c = catalog();
    let schema = DatasetSchema {
        name: c.name.clone(),
        columns: c.columns.iter().map(|c| (c.name.clone(), c.ty)).collect(),
    };
    let plan = Plan::new(spec, &schema).expect("a planned spec fits its schema");
    let sql = plan.aggregate_sql("t", &|i| format!("c{i}")).expect("an exact job pushes down");
    assert!(sql.sql.starts_with("SELECT"));
    passes(spec, Some(1.0), Some(1.0))
}

#[test]
fn three_thousand_or_terms_plan_into_one_list() {
    let sql = chain("month = 1", " OR ", 3_000);
    assert!((38_000..40_000).contains(&sql.len()), "{}", sql.len());
    let spec = on_small_stack(move || plan(&sql)).expect("a long OR chain plans");
    let Some(Predicate::Or(terms)) = &spec.predicate else {
        panic!("expected one OR list: {:?}", spec.predicate.map(|p| p.nesting()));
    };
    assert_eq!(terms.len(), 3_000);
    assert!(terms.iter().all(|t| matches!(t, Predicate::Compare(c)
        if c.column == "month" && c.op == Op::Eq && c.value == Literal::Number(1.0))));
    assert_eq!(spec.predicate.as_ref().map(Predicate::nesting), Some(1));
    assert!(on_small_stack(move || run_everywhere(&spec)));
}

#[test]
fn three_thousand_and_terms_plan_into_one_list() {
    let sql = chain("month = 1 AND carrier <> 'UA'", " AND ", 1_500);
    let spec = on_small_stack(move || plan(&sql)).expect("a long AND chain plans");
    let Some(Predicate::And(terms)) = &spec.predicate else { panic!("expected one AND list") };
    assert_eq!(terms.len(), 3_000);
    assert!(on_small_stack(move || run_everywhere(&spec)));
}

#[test]
fn chains_as_long_as_the_size_limit_allows_plan() {
    for (term, op, and) in [("m=1", " OR ", false), ("m=1", " AND ", true), ("m<>1", " or ", false)]
    {
        let sql = longest_chain(term, op);
        let terms = sql.matches(op).count() + 1;
        let spec = on_small_stack(move || plan(&sql)).expect("a chain under the limit plans");
        match (&spec.predicate, and) {
            (Some(Predicate::And(v)), true) | (Some(Predicate::Or(v)), false) => {
                assert_eq!(v.len(), terms)
            }
            other => panic!("{term}{op}: {:?}", other.0.as_ref().map(Predicate::nesting)),
        }
    }
    // One byte more is refused for its size, before it is parsed.
    let mut sql = longest_chain("m=1", " OR ");
    sql.push_str(&" ".repeat(MAX_SQL_BYTES + 1 - sql.len()));
    let e = plan(&sql).unwrap_err().to_string();
    assert!(e.contains("the limit is 65536"), "{e}");
}

#[test]
fn sixty_chained_nots_name_the_limit() {
    let nots = |n: usize| format!("{PREFIX}{}month = 1", "NOT ".repeat(n));
    let sql = nots(60);
    let r = on_small_stack(move || plan(&sql));
    assert!(is_too_deep(&r), "{r:?}");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("the WHERE clause nests deeper than 32 levels"), "{e}");
    // Up to the limit, NOTs plan (an even number of them keeps the row).
    let sql = nots(MAX_NESTING);
    let spec = on_small_stack(move || plan(&sql)).expect("32 NOTs plan");
    assert_eq!(spec.predicate.as_ref().map(Predicate::nesting), Some(MAX_NESTING));
    assert!(passes(&spec, Some(1.0), None));
    assert!(!passes(&spec, Some(2.0), None));
    let sql = nots(MAX_NESTING + 1);
    assert!(is_too_deep(&on_small_stack(move || plan(&sql))));
    // As many NOTs as fit in the size limit: refused as quickly, without recursion.
    let sql = nots((MAX_SQL_BYTES - PREFIX.len() - 9) / 4);
    assert!(sql.len() <= MAX_SQL_BYTES);
    assert!(is_too_deep(&on_small_stack(move || plan(&sql))));
}

#[test]
fn deep_parentheses_name_the_limit() {
    let wrapped = |n: usize| format!("{PREFIX}{}month = 1{}", "(".repeat(n), ")".repeat(n));
    let sql = wrapped(MAX_NESTING);
    assert!(on_small_stack(move || plan(&sql)).is_ok());
    let sql = wrapped(MAX_NESTING + 1);
    assert!(is_too_deep(&on_small_stack(move || plan(&sql))));
    // Balanced and unbalanced, up to the size limit.
    let half = (MAX_SQL_BYTES - PREFIX.len() - 9) / 2;
    for sql in [wrapped(half), format!("{PREFIX}{}", "(".repeat(MAX_SQL_BYTES - PREFIX.len()))] {
        assert!(sql.len() <= MAX_SQL_BYTES);
        assert!(is_too_deep(&on_small_stack(move || plan(&sql))));
    }
    // Parentheses around a value are counted, not descended into: any number parse.
    let sql = format!("{PREFIX}month = {}1{}", "(".repeat(half - 10), ")".repeat(half - 10));
    let spec = on_small_stack(move || plan(&sql)).expect("a value in parentheses plans");
    assert_eq!(spec.predicate.as_ref().map(Predicate::nesting), Some(0));
    // Alternating AND and OR in parentheses nest two levels per parenthesis.
    let mut sql = PREFIX.to_string();
    let levels = MAX_NESTING / 2 + 1;
    for _ in 0..levels {
        sql.push_str("m = 1 OR m = 2 AND (");
    }
    sql.push_str("m = 3");
    sql.push_str(&")".repeat(levels));
    let r = on_small_stack(move || plan(&sql));
    assert!(is_too_deep(&r), "{r:?}");
    // And NOT around parentheses counts both.
    let sql = format!("{PREFIX}{}month = 1{}", "NOT (".repeat(17), ")".repeat(17));
    assert!(is_too_deep(&on_small_stack(move || plan(&sql))));
    let sql = format!("{PREFIX}{}month = 1{}", "NOT (".repeat(16), ")".repeat(16));
    assert!(on_small_stack(move || plan(&sql)).is_ok());
}

#[test]
fn huge_in_lists_are_bounded_by_the_value_limit() {
    let list = |n: usize| {
        let values: Vec<String> = (0..n).map(|i| (i % 10).to_string()).collect();
        format!("{PREFIX}m IN ({})", values.join(","))
    };
    let sql = list(MAX_IN_VALUES);
    let spec = on_small_stack(move || plan(&sql)).expect("10,000 values plan");
    assert!(matches!(&spec.predicate, Some(Predicate::In { values, .. })
        if values.len() == MAX_IN_VALUES));
    assert!(on_small_stack(move || run_everywhere(&spec)));
    // Past the limit, and as many as the size limit allows.
    let most = (MAX_SQL_BYTES - PREFIX.len() - 8) / 2;
    for n in [MAX_IN_VALUES + 1, most] {
        let sql = list(n);
        assert!(sql.len() <= MAX_SQL_BYTES);
        let e = on_small_stack(move || plan(&sql)).unwrap_err().to_string();
        assert!(e.contains("IN lists may hold at most 10000 values"), "{e}");
    }
    // Text lists with quotes and non-ASCII text keep every value exactly.
    let values = ["O'Hare", "✈️", "", "e\u{301}", "\u{202e}RTL"];
    let quoted: Vec<String> =
        values.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect();
    let spec = plan(&format!("{PREFIX}carrier NOT IN ({})", quoted.join(", "))).unwrap();
    let expected: Vec<Literal> = values.iter().map(|v| Literal::Text(v.to_string())).collect();
    assert_eq!(
        spec.predicate,
        Some(Predicate::In { column: "carrier".into(), values: expected, negated: true })
    );
}

#[test]
fn odd_unicode_identifiers_and_strings() {
    let sql = "SELECT \"naïve col\", COUNT(*) AS \"Zählung 🧮\", AVG(Größe), SUM(月), \
               SUM(\"say \"\"hi\"\"\") FROM flights AS 航班 \
               WHERE 航班.月 >= 3 AND carrier = '✈️' AND \"naïve col\" <> 'x\u{0}y' \
               GROUP BY \"naïve col\"";
    let spec = on_small_stack(move || plan(sql)).expect("Unicode names plan");
    let names: Vec<&str> = spec.select.iter().map(|o| o.name.as_str()).collect();
    let quoted = "sum(\"say \"\"hi\"\"\")";
    assert_eq!(names, ["naïve col", "Zählung 🧮", "avg(Größe)", "sum(月)", quoted]);
    let columns: Vec<&str> = spec.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Größe", "月", "say \"hi\""]);
    let Some(Predicate::And(terms)) = &spec.predicate else { panic!("{:?}", spec.predicate) };
    assert_eq!(terms.len(), 3);
    assert!(matches!(&terms[2], Predicate::Compare(c) if c.value == Literal::Text("x\0y".into())));
    // Odd characters outside names and strings are refused with a message, never a panic.
    for bad in [
        "SELECT COUNT(*) FROM flights WHERE month = 1 ☃",
        "SELECT COUNT(*) FROM flights WHERE \u{feff}month = 1",
        "SELECT COUNT(*) FROM flights WHERE month = '\u{d7ff}",
        "SELECT COUNT(*) FROM flights WHERE 月 = 1e999",
        "SELECT COUNT(*) FROM flights WHERE \"unterminated = 1",
        "SELECT COUNT(*) FROM flights /* unterminated",
        "SELECT COUNT(*) FROM \u{0}",
    ] {
        let e = plan(bad).unwrap_err().to_string();
        assert!(!e.is_empty(), "{bad}");
    }
}

/// Whether a row's value of `m` satisfies a condition.
type Holds = fn(Option<f64>) -> bool;

/// A random WHERE clause over column `m`, with its meaning.
#[derive(Debug)]
enum Cond {
    Atom(String, Holds),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

impl Cond {
    /// A random condition at most `depth` levels deep.
    fn random(rng: &mut TestRng, depth: usize) -> Cond {
        let kind = if depth == 0 { 0 } else { rng.random_range(0..4) };
        match kind {
            1 => Cond::Not(Box::new(Cond::random(rng, depth - 1))),
            2 | 3 => {
                let n = rng.random_range(2..5);
                let v = (0..n).map(|_| Cond::random(rng, depth - 1)).collect();
                if kind == 2 { Cond::And(v) } else { Cond::Or(v) }
            }
            _ => {
                let atoms: [(&str, Holds); 10] = [
                    ("m = 3", |m| m == Some(3.0)),
                    ("m <> 3", |m| m.is_some_and(|m| m != 3.0)),
                    ("m < 3", |m| m.is_some_and(|m| m < 3.0)),
                    ("4 <= m", |m| m.is_some_and(|m| m >= 4.0)),
                    ("m BETWEEN 2 AND 5", |m| m.is_some_and(|m| (2.0..=5.0).contains(&m))),
                    ("m NOT BETWEEN 2 AND 5", |m| !m.is_some_and(|m| (2.0..=5.0).contains(&m))),
                    ("m IN (1, 4)", |m| m.is_some_and(|m| m == 1.0 || m == 4.0)),
                    ("m NOT IN (1, 4)", |m| m.is_some_and(|m| m != 1.0 && m != 4.0)),
                    ("m IS NULL", |m| m.is_none()),
                    ("(m) IS NOT NULL", |m| m.is_some()),
                ];
                let (text, holds) = atoms[rng.random_range(0..atoms.len())];
                Cond::Atom(text.to_string(), holds)
            }
        }
    }

    /// SQL for the condition: parentheses where precedence needs them, and at random.
    fn sql(&self, rng: &mut TestRng, out: &mut String) {
        let extra = rng.random_bool(0.2);
        if extra {
            out.push('(');
        }
        match self {
            Cond::Atom(text, _) => out.push_str(text),
            Cond::Not(x) => {
                out.push_str("NOT ");
                let wrap = matches!(**x, Cond::And(_) | Cond::Or(_));
                wrap_sql(x, wrap, rng, out);
            }
            Cond::And(v) | Cond::Or(v) => {
                let and = matches!(self, Cond::And(_));
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(if and { " AND " } else { " OR " });
                    }
                    wrap_sql(x, and && matches!(x, Cond::Or(_)), rng, out);
                }
            }
        }
        if extra {
            out.push(')');
        }
    }

    fn holds(&self, m: Option<f64>) -> bool {
        match self {
            Cond::Atom(_, f) => f(m),
            Cond::Not(x) => !x.holds(m),
            Cond::And(v) => v.iter().all(|x| x.holds(m)),
            Cond::Or(v) => v.iter().any(|x| x.holds(m)),
        }
    }
}

fn wrap_sql(c: &Cond, wrap: bool, rng: &mut TestRng, out: &mut String) {
    if wrap {
        out.push('(');
    }
    c.sql(rng, out);
    if wrap {
        out.push(')');
    }
}

/// Generated WHERE clauses mean what their tree means, row by row, as a party evaluates them.
#[test]
fn generated_conditions_keep_their_meaning() {
    on_small_stack(|| {
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        let rows = [None, Some(0.0), Some(1.0), Some(2.0), Some(3.0), Some(4.0), Some(5.0)];
        for case in 0..150 {
            let cond = Cond::random(&mut rng, 4);
            let mut sql = PREFIX.to_string();
            cond.sql(&mut rng, &mut sql);
            let spec = plan(&sql).unwrap_or_else(|e| panic!("case {case}: {sql}: {e}"));
            for m in rows {
                assert_eq!(
                    passes(&spec, None, m),
                    cond.holds(m),
                    "case {case}: {sql} at m = {m:?}"
                );
            }
        }
    });
}

/// Pieces of SQL, valid and not, that generated queries are made of.
#[rustfmt::skip]
const PIECES: [&str; 48] = [
    "SELECT", "FROM", "WHERE", "GROUP BY", "flights", "COUNT(*)", "SUM(m)", "month", "m", "月",
    "\"naïve col\"", "carrier", "(", "(", ")", ")", ",", ";", "NOT", "NOT", "AND", "OR", "OR",
    "IN", "BETWEEN", "IS", "NULL", "=", "<>", "<=", "+", "-", "*", "1", "-2.5", "1e308", "'x'",
    "'✈️'", "''''", "/* c */", "-- c\n", "\"", "'", "☃", "\u{0}", "EXISTS", "(SELECT", "CASE",
];

/// Random SQL, up to the size limit, never overflows the stack or panics: every query is
/// planned or refused with a message, and too deep a WHERE clause names the limit.
#[test]
fn generated_queries_are_planned_or_refused() {
    on_small_stack(|| {
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]);
        let (mut planned, mut too_deep) = (0, 0);
        for case in 0..300 {
            let size = match case % 3 {
                0 => rng.random_range(0..200),
                1 => rng.random_range(0..4_000),
                _ => rng.random_range(0..MAX_SQL_BYTES),
            };
            let mut sql = if rng.random_bool(0.7) { PREFIX.to_string() } else { String::new() };
            // Often open with a run of NOTs or parentheses, the way into deep nesting.
            if rng.random_bool(0.3) {
                let opener = if rng.random_bool(0.5) { "NOT " } else { "(" };
                sql.push_str(&opener.repeat(rng.random_range(0..100)));
            }
            // Runs of one piece make deep and long structures; single pieces make noise.
            for _ in 0..MAX_SQL_BYTES {
                let piece = PIECES[rng.random_range(0..PIECES.len())];
                let run = if rng.random_bool(0.1) { rng.random_range(1..200) } else { 1 };
                for _ in 0..run {
                    if sql.len() + piece.len() + 1 > size {
                        break;
                    }
                    sql.push_str(piece);
                    sql.push(' ');
                }
                if sql.len() + PIECES[0].len() + 1 > size {
                    break;
                }
            }
            match plan(&sql) {
                Ok(_) => planned += 1,
                Err(AnalyticsError::TooDeep { limit }) => {
                    assert_eq!(limit, MAX_NESTING);
                    too_deep += 1;
                }
                Err(e) => assert!(e.to_string().len() > 20, "case {case}: {e}"),
            }
        }
        assert!(too_deep > 0, "no generated query reached the nesting limit");
        let _ = planned;
    });
}

/// Valid queries cut anywhere are refused with a message, and so are random bytes.
#[test]
fn truncated_and_random_queries_are_refused() {
    on_small_stack(|| {
        let whole = "SELECT carrier, COUNT(*) AS n, HISTOGRAM(m, -1, 0.5, 9) FROM flights f \
                     WHERE NOT (f.m BETWEEN 1 AND 6 OR carrier IN ('AA', '✈️')) AND m IS NOT NULL \
                     GROUP BY carrier;";
        assert!(plan(whole).is_ok());
        for (cut, _) in whole.char_indices() {
            let r = plan(&whole[..cut]);
            // A cut at a clause boundary may still be a whole query.
            if let Err(e) = r {
                assert!(!e.to_string().is_empty());
            }
        }
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[13; 32]);
        for _ in 0..200 {
            let len = rng.random_range(0..2_000);
            let text: String = (0..len)
                .map(|_| char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('\u{fffd}'))
                .collect();
            let _ = plan(&format!("{PREFIX}{text}"));
            let _ = plan(&text);
        }
    });
}

/// A specification written as JSON obeys the same nesting limit as SQL, with the same error.
#[test]
fn deep_json_predicates_are_refused_with_the_same_limit() {
    let mut predicate = r#"{"compare": {"column": "m", "op": "==", "value": 1}}"#.to_string();
    for _ in 0..MAX_NESTING + 1 {
        predicate = format!(r#"{{"not": {predicate}}}"#);
    }
    let json = format!(
        r#"{{"dataset": "flights", "columns": [{{"name": "m", "min": 0, "max": 9}}],
            "predicate": {predicate}}}"#
    );
    let r = crate::spec::JobSpec::parse(&json);
    assert!(is_too_deep(&r), "{r:?}");
}
