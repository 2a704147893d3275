//! The JSON views of the consumer's answers that every client shows the same way: who an
//! answer covers, and a query's result with its privacy block (`veil query --json`, the
//! Python client's DataFrames).

use veil_proto::v1::{JobResult, Outcome, PartyOutcome};

/// Who an answer covers: one object per serving party, with its outcome and, when it did not
/// contribute, the rule and reason.
pub fn coverage_json(coverage: &[PartyOutcome]) -> serde_json::Value {
    coverage
        .iter()
        .map(|p| {
            let outcome = Outcome::try_from(p.outcome).unwrap_or(Outcome::Unspecified);
            let mut v = serde_json::json!({
                "party_id": p.party_id,
                "name": p.name,
                "outcome": outcome_name(outcome),
            });
            if !p.rule.is_empty() {
                v["rule"] = p.rule.clone().into();
            }
            if !p.reason.is_empty() {
                v["reason"] = p.reason.clone().into();
            }
            v
        })
        .collect()
}

/// An outcome's name.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Contributed => "contributed",
        Outcome::Accepted => "accepted",
        Outcome::Refused => "refused",
        Outcome::Offline => "offline",
        Outcome::DataUnavailable => "data-unavailable",
        Outcome::Dropped => "dropped",
        Outcome::NoAnswer => "no-answer",
        Outcome::Fault => "fault",
        Outcome::Unspecified => "unknown",
    }
}

/// An answer's JSON with who it covers added (`coverage`), when it is an object.
pub fn with_coverage(answer_json: &str, coverage: &[PartyOutcome]) -> String {
    match serde_json::from_str::<serde_json::Value>(answer_json) {
        Ok(serde_json::Value::Object(mut o)) if !coverage.is_empty() => {
            o.insert("coverage".into(), coverage_json(coverage));
            serde_json::Value::Object(o).to_string()
        }
        _ => answer_json.to_string(),
    }
}

/// `veil query --json`: the result table (or, for a job without one, the answer), with the
/// answer's privacy block and who it covers.
pub fn query_json(result: &JobResult) -> String {
    if result.table_json.is_empty() {
        return with_coverage(&result.answer_json, &result.coverage);
    }
    let table = serde_json::from_str::<serde_json::Value>(&result.table_json);
    let answer = serde_json::from_str::<serde_json::Value>(&result.answer_json);
    let text = match (table, answer) {
        // A coordinator that predates tables with a privacy block: take the answer's.
        (Ok(serde_json::Value::Object(mut t)), Ok(a)) if !t.contains_key("privacy") => {
            if let Some(p) = a.get("privacy").filter(|p| !p.is_null()) {
                t.insert("privacy".into(), p.clone());
            }
            serde_json::Value::Object(t).to_string()
        }
        _ => result.table_json.clone(),
    };
    with_coverage(&text, &result.coverage)
}
