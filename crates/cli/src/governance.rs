//! `veil catalog scan`, `veil budget`, `veil receipts`, `veil audit export` and
//! `veil audit verify`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use veil_governance::audit::{self, Entry};
use veil_governance::budget::{Ledger, REPORT_DELTA, epsilon};
use veil_governance::receipt::Receipt;
use veil_governance::scan::Scanner;
use veil_party_worker::PartyFile;
use veil_party_worker::store::PartyStore;
use veil_proto::roster::RosterFile;
use veil_proto::v1::admin_client::AdminClient;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{AuditLogRequest, ListJobsRequest};

/// Proposes column tags for a CSV file; prints counts and reasons, never values.
pub(crate) fn scan(path: &Path, json: bool) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let names: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut scanner = Scanner::new(&names);
    let mut record = csv::StringRecord::new();
    while reader
        .read_record(&mut record)
        .with_context(|| format!("{}: unreadable row", path.display()))?
    {
        let cells: Vec<&str> = record.iter().collect();
        scanner.push_row(&cells);
    }
    let reports = scanner.finish();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    println!("{:<24} {:<18} {:>10} {:>10}  reason", "column", "proposed tag", "values", "distinct");
    for r in reports {
        let tag = serde_json::to_value(r.proposed)?.as_str().unwrap_or_default().to_string();
        println!("{:<24} {:<18} {:>10} {:>10}  {}", r.column, tag, r.values, r.distinct, r.reason);
    }
    Ok(())
}

fn open_party_store(config: &Path) -> Result<(PartyFile, PartyStore)> {
    let file = PartyFile::load(config)?;
    let text = std::fs::read_to_string(&file.identity)
        .with_context(|| format!("cannot read {}", file.identity.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .context("the identity key must be 64 hex digits")?;
    let store = PartyStore::open(
        &file.state,
        &format!("party {}", file.id),
        SigningKey::from_bytes(&seed),
    )?;
    seed.fill(0);
    Ok((file, store))
}

/// Spent and remaining privacy budget per dataset and consumer, at a party.
pub(crate) fn budget(config: &Path, json: bool) -> Result<()> {
    let (file, store) = open_party_store(config)?;
    let rows = store.spending()?;
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(d, c, rho, jobs)| {
                serde_json::json!({"dataset": d, "consumer": c, "rho": rho, "jobs": jobs,
                "epsilon": epsilon(*rho, REPORT_DELTA), "delta": REPORT_DELTA})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    for d in &file.datasets {
        let _ = store.spent(&d.name, "")?;
    }
    print!("{}", budget_report(&file, &rows, |d| Ok(store.uses(d)?))?);
    Ok(())
}

/// Rebuilds a party's budget ledger from its signed audit log and checks the two agree.
pub(crate) fn repair_ledger(config: &Path) -> Result<()> {
    let (_, store) = open_party_store(config)?;
    match store.check_ledger() {
        Ok(()) => println!("the ledger already holds exactly the charges the audit log records"),
        Err(e) => println!("before: {e}"),
    }
    let n = store.rebuild_ledger()?;
    store.check_ledger()?;
    println!("rebuilt the ledger from the signed audit log: {n} charges");
    Ok(())
}

/// `x` with `places` decimals, never as a negative zero: a sum over no values is -0.0 and a
/// tiny negative rounds to "-0.0000", and both mean nothing was spent.
fn decimals(x: f64, places: usize) -> String {
    let s = format!("{x:.places$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.bytes().all(|b| b == b'0' || b == b'.') => rest.to_string(),
        _ => s,
    }
}

/// The text of `veil budget`: per dataset of `file`, the ρ spent (from `rows`, as
/// [`PartyStore::spending`] gives them), its cap and uses, then per consumer.
fn budget_report(
    file: &PartyFile,
    rows: &[(String, String, f64, u64)],
    mut uses: impl FnMut(&str) -> Result<u64>,
) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for d in &file.datasets {
        let p = &d.policy;
        let total: f64 = rows.iter().filter(|r| r.0 == d.name).map(|r| r.2).sum();
        let cap = |c: Option<f64>| {
            c.map_or("no cap".to_string(), |c| {
                format!("cap ρ = {}", if c == 0.0 { 0.0 } else { c })
            })
        };
        writeln!(
            out,
            "dataset {:?} ({:?}): spent ρ = {} (ε = {} at δ = {REPORT_DELTA}), {}, uses {}",
            d.name,
            d.grade,
            decimals(total, 4),
            decimals(epsilon(total, REPORT_DELTA), 3),
            cap(p.budget_total),
            uses(&d.name)?
        )?;
        for (_, consumer, rho, jobs) in rows.iter().filter(|r| r.0 == d.name) {
            let remaining = p
                .budget_per_consumer
                .map_or("unlimited".to_string(), |c| decimals((c - rho).max(0.0), 4));
            writeln!(
                out,
                "  consumer {consumer:<16} spent ρ = {} (ε = {}) over {jobs} jobs, remaining ρ {remaining}",
                decimals(*rho, 4),
                decimals(epsilon(*rho, REPORT_DELTA), 3)
            )?;
        }
    }
    Ok(out)
}

/// Release receipts: a party's own (from its store) or a consumer's (from the coordinator).
pub(crate) async fn receipts(config: &Path, json: bool) -> Result<()> {
    let receipts: Vec<Receipt> = if PartyFile::load(config).is_ok() {
        open_party_store(config)?.1.receipts()?
    } else {
        let mut jobs = JobsClient::new(veil_cli::consumer::channel(config, false).await?);
        let list = jobs
            .receipts(ListJobsRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        list.into_inner()
            .receipts_json
            .iter()
            .map(|t| serde_json::from_str(t).context("unreadable receipt"))
            .collect::<Result<_>>()?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&receipts)?);
        return Ok(());
    }
    if receipts.is_empty() {
        println!("no receipts");
    }
    for r in receipts {
        let parties: Vec<String> = r
            .parties
            .iter()
            .map(|c| format!("{} (data {}…)", c.party, &c.dataset_sha256.get(..12).unwrap_or("")))
            .collect();
        println!(
            "{}  {:<12} to {:<12} ρ = {:<6} result {}…  parties {}",
            r.job_id,
            r.dataset,
            r.consumer,
            r.rho,
            r.result_sha256.get(..16).unwrap_or(""),
            parties.join(", ")
        );
    }
    Ok(())
}

/// Prints an audit log as a JSON array: a party's from its store, or the coordinator's (for an
/// administrator's consumer configuration).
pub(crate) async fn export(config: &Path) -> Result<()> {
    let entries: Vec<Entry> = if PartyFile::load(config).is_ok() {
        open_party_store(config)?.1.audit_log()?
    } else {
        let mut admin = AdminClient::new(veil_cli::consumer::channel(config, false).await?);
        let log = admin
            .audit_log(AuditLogRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        log.into_inner()
            .entries_json
            .iter()
            .map(|t| serde_json::from_str(t).context("unreadable audit entry"))
            .collect::<Result<_>>()?
    };
    println!("{}", serde_json::to_string_pretty(&entries)?);
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<Entry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not an exported audit log", path.display()))
}

/// Verifies a log's chain and signatures against the roster's keys and, when another log is
/// given, the cross-references between them in both directions (`audit::verify_against`);
/// names the first entry that fails.
pub(crate) fn verify(log: &Path, roster: &Path, against: Option<&Path>) -> Result<()> {
    let entries = read_log(log)?;
    let roster = RosterFile::load(roster)?;
    let other = against.map(read_log).transpose()?;
    let Some(first) = entries.first() else {
        if other.as_ref().is_some_and(|o| !o.is_empty()) {
            bail!(
                "{}: the log is empty, but the other log records entries of this consortium (a \
                 log that took part is never empty: export it again, or it was emptied)",
                log.display()
            );
        }
        println!("{}: empty log", log.display());
        return Ok(());
    };
    let writer = first.writer.clone();
    let key = roster
        .audit_key(&writer)
        .with_context(|| format!("the roster has no key for {writer:?}"))?;
    let checked = match &other {
        Some(other) => audit::verify_against(&entries, &key, other),
        None => audit::verify(&entries, &key, &[]).map_err(audit::AgainstError::from),
    };
    match checked {
        Ok(()) => {
            println!(
                "{}: {} entries by {writer}, chain and signatures valid{}",
                log.display(),
                entries.len(),
                if other.is_some() { ", and every record of the other log matches" } else { "" }
            );
            Ok(())
        }
        Err(e) => bail!("{}: {e}", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset nothing was spent on (its sum over no rows is -0.0), a cap written as -0.0
    /// and a consumer at its cap all print as zero, never as "-0".
    #[test]
    fn budget_never_prints_a_negative_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        std::fs::write(
            &path,
            "id = 1\nname = \"p\"\ncoordinator = \"https://127.0.0.1:7443\"\nroster = \"r\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nidentity = \"i\"\n\
             [[datasets]]\nname = \"untouched\"\npath = \"u.csv\"\ncolumns = { x = \"float\" }\n\
             [datasets.policy]\nbudget_total = -0.0\n\
             [[datasets]]\nname = \"used\"\npath = \"s.csv\"\ncolumns = { x = \"float\" }\n\
             [datasets.policy]\nbudget_per_consumer = 0.5\n",
        )
        .unwrap();
        let file = PartyFile::load(&path).unwrap();
        let rows = vec![("used".to_string(), "analyst".to_string(), 0.5, 2)];
        let text = budget_report(&file, &rows, |_| Ok(0)).unwrap();
        assert!(!text.contains("-0"), "{text}");
        assert!(
            text.contains("dataset \"untouched\" (General): spent ρ = 0.0000 (ε = 0.000 at δ = ")
                && text.contains("cap ρ = 0,"),
            "{text}"
        );
        assert!(text.contains("spent ρ = 0.5000") && text.contains("remaining ρ 0.0000"), "{text}");
    }

    /// Rounding keeps the sign of values that are not zero at the precision shown.
    #[test]
    fn decimals_drop_only_the_sign_of_zero() {
        assert_eq!(decimals(-0.0, 4), "0.0000");
        assert_eq!(decimals(-1e-9, 4), "0.0000");
        assert_eq!(decimals(-0.0002, 4), "-0.0002");
        assert_eq!(decimals(0.25, 3), "0.250");
        assert_eq!(decimals(-2.5, 1), "-2.5");
    }
}
