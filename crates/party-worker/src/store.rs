//! The party's own records in SQLite (WAL, synchronous writes): its privacy-budget ledger, the
//! sessions it has taken part in, its signed audit log and the receipts of releases it
//! contributed to. Each write is one transaction, so a crash leaves every table consistent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use veil_governance::audit::{Entry, Event};
use veil_governance::audit_store;
use veil_governance::budget::{BudgetError, Caps, Ledger, Reservation, Spent, check};
use veil_governance::receipt::Receipt;
use veil_governance::{Decline, Rule};

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("party store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not parse.
    #[error("party store: corrupt row: {0}")]
    Corrupt(String),
    /// The audit log's table failed.
    #[error("party store: {0}")]
    Audit(#[from] audit_store::AuditStoreError),
    /// The database file cannot be opened as the party's store.
    #[error(
        "party store {path}: {source}. It holds the budget ledger and the audit log: restore it \
         from a backup (a party that starts afresh forgets what it has spent)"
    )]
    Open {
        /// The file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The budget ledger and the signed audit log disagree, or the log does not verify: rows
    /// were deleted or edited. The party serves no job until an operator resolves it.
    #[error(
        "party store: {0}. The party serves no job until this is resolved: restore the \
         database from a backup, or, once `veil audit verify` has checked the exported log \
         against the coordinator's (a cut log would lose charges), rebuild the ledger from it \
         with `veil budget --repair-ledger --config <party.toml>`"
    )]
    Tampered(String),
}

/// The party's store.
pub struct PartyStore {
    conn: Mutex<Connection>,
    writer: String,
    key: SigningKey,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger (
    job_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    consumer TEXT NOT NULL,
    rho REAL NOT NULL,
    PRIMARY KEY (job_id, dataset)
);
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS training_steps (
    job_id TEXT PRIMARY KEY,
    job_hash TEXT NOT NULL,
    next_step INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (job_id TEXT PRIMARY KEY, receipt TEXT NOT NULL);
";

impl PartyStore {
    /// Opens (or creates) the store; `writer` names the party in its audit entries, `key` signs
    /// them.
    pub fn open(path: &Path, writer: &str, key: SigningKey) -> Result<Self, StoreError> {
        let opened = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(audit_store::sqlite::SCHEMA)?;
            Ok(conn)
        };
        let conn = opened()
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Self { conn: Mutex::new(conn), writer: writer.to_string(), key })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // Every write is one transaction: a panic elsewhere cannot leave a half-written row.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event to the audit log, chained to the last entry and signed.
    pub fn audit(&self, event: Event, time_ms: i64) -> Result<Entry, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let entry = self.append(&tx, event, time_ms)?;
        tx.commit()?;
        Ok(entry)
    }

    fn append(
        &self,
        tx: &rusqlite::Transaction<'_>,
        event: Event,
        time_ms: i64,
    ) -> Result<Entry, StoreError> {
        Ok(audit_store::append(&**tx, &self.writer, &self.key, event, time_ms)?)
    }

    /// Reserves a charge and logs it in one transaction: after a crash either both the charge
    /// and its `budget-charged` entry are there, or neither.
    pub fn reserve_and_log(
        &self,
        r: &Reservation,
        time_ms: i64,
    ) -> Result<Result<(), BudgetError>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match reserve_in(&tx, r)? {
            Reserved::Refused(e) => return Ok(Err(e)),
            Reserved::New => {}
        }
        let event = Event::BudgetCharged {
            job_id: r.job_id.clone(),
            dataset: r.dataset.clone(),
            consumer: r.consumer.clone(),
            rho: r.rho,
        };
        self.append(&tx, event, time_ms)?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// The head of the audit log (its last entry), if it has any.
    pub fn audit_head(&self) -> Result<Option<veil_governance::audit::Head>, StoreError> {
        Ok(audit_store::head(&*self.conn())?)
    }

    /// Checks that the audit log verifies under this party's key and that the budget ledger
    /// holds exactly the charges its `budget-charged` entries record. Deleting ledger rows
    /// (which would reset a budget), or log rows that hold charges, alone is caught here, at
    /// start; deleting a released job's charge from both is caught against the coordinator's
    /// receipts (`veil audit verify --against`).
    pub fn check_ledger(&self) -> Result<(), StoreError> {
        let log = self.audit_log()?;
        veil_governance::audit::verify(&log, &self.key.verifying_key(), &[])
            .map_err(|e| StoreError::Tampered(format!("the audit log does not verify: {e}")))?;
        // (job, dataset, consumer) → ρ; ρ compared to 1e-9, as the log keeps it in JSON.
        let logged: BTreeMap<(String, String, String), f64> = log
            .iter()
            .filter_map(|e| match &e.event {
                Event::BudgetCharged { job_id, dataset, consumer, rho } => {
                    Some(((job_id.clone(), dataset.clone(), consumer.clone()), *rho))
                }
                _ => None,
            })
            .collect();
        let ledger: BTreeMap<(String, String, String), f64> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT job_id, dataset, consumer, rho FROM ledger")?;
            let rows =
                stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let same = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        for (key, rho) in &logged {
            let (job, dataset, _) = key;
            if !ledger.get(key).is_some_and(|r| same(*r, *rho)) {
                return Err(StoreError::Tampered(format!(
                    "the audit log records a charge of ρ = {rho} for job {job} on dataset \
                     {dataset:?} that the budget ledger lacks or holds differently (ledger rows \
                     were deleted or edited)"
                )));
            }
        }
        for (job, dataset, consumer) in ledger.keys() {
            if !logged.contains_key(&(job.clone(), dataset.clone(), consumer.clone())) {
                return Err(StoreError::Tampered(format!(
                    "the budget ledger holds a charge for job {job} on dataset {dataset:?} that \
                     the audit log does not record (log rows were deleted, or the ledger edited)"
                )));
            }
        }
        Ok(())
    }

    /// Rebuilds the budget ledger from the signed audit log (after [`Self::check_ledger`]
    /// named a mismatch and the operator chose the log as the record): one transaction.
    pub fn rebuild_ledger(&self) -> Result<usize, StoreError> {
        let log = self.audit_log()?;
        veil_governance::audit::verify(&log, &self.key.verifying_key(), &[])
            .map_err(|e| StoreError::Tampered(format!("the audit log does not verify: {e}")))?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM ledger", [])?;
        let mut n = 0;
        for e in &log {
            if let Event::BudgetCharged { job_id, dataset, consumer, rho } = &e.event {
                n += tx.execute(
                    "INSERT OR IGNORE INTO ledger (job_id, dataset, consumer, rho) VALUES (?1, ?2, ?3, ?4)",
                    params![job_id, dataset, consumer, rho],
                )?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// The whole audit log, in order.
    pub fn audit_log(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(audit_store::AuditStore::entries(&*self.conn())?)
    }

    /// Records the acceptance of a job in one transaction: its audit entries and, when the
    /// offer named the round's session, the session as used. Returns false, and writes nothing,
    /// if the session was used before.
    pub fn accept(
        &self,
        events: Vec<Event>,
        session: Option<&[u8; 32]>,
        time_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(session) = session {
            if !claim(&tx, session)? {
                return Ok(false);
            }
        }
        for event in events {
            self.append(&tx, event, time_ms)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Records a session as used; false if it was used before.
    pub fn claim_session(&self, session: &[u8; 32]) -> Result<bool, StoreError> {
        claim(&self.conn(), session)
    }

    /// Claims a training job's step before the party contributes to it, in one transaction:
    /// at the job's first step the whole job's charge is reserved (with its audit entry) and
    /// the job id is bound to the specification's hash; steps then only move forward, each
    /// contributed to once. Returns why a claim is refused.
    pub fn claim_training_step(
        &self,
        charge: &Reservation,
        job_hash: &str,
        step: u32,
        time_ms: i64,
    ) -> Result<Result<(), Decline>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match training_progress_in(&tx, &charge.job_id)? {
            Some((hash, _)) if hash != job_hash => {
                return Ok(Err(Decline::Fault(format!(
                    "job id {} was first used for another training specification",
                    charge.job_id
                ))));
            }
            Some((_, next)) if i64::from(step) < next => {
                return Ok(Err(Decline::Fault(format!(
                    "step {step} of job {} was already contributed to, and a step runs once",
                    charge.job_id
                ))));
            }
            Some(_) => {
                let charged: Option<String> = tx
                    .query_row(
                        "SELECT consumer FROM ledger WHERE job_id = ?1 AND dataset = ?2",
                        params![charge.job_id, charge.dataset],
                        |r| r.get(0),
                    )
                    .optional()?;
                if charged.as_ref() != Some(&charge.consumer) {
                    return Ok(Err(Decline::Fault(format!(
                        "job id {} is charged to another consumer",
                        charge.job_id
                    ))));
                }
            }
            None => {
                if let Reserved::Refused(e) = reserve_in(&tx, charge)? {
                    return Ok(Err(Decline::refused(Rule::Budget, e.to_string())));
                }
                let event = Event::BudgetCharged {
                    job_id: charge.job_id.clone(),
                    dataset: charge.dataset.clone(),
                    consumer: charge.consumer.clone(),
                    rho: charge.rho,
                };
                self.append(&tx, event, time_ms)?;
            }
        }
        tx.execute(
            "INSERT INTO training_steps (job_id, job_hash, next_step) VALUES (?1, ?2, ?3)
             ON CONFLICT (job_id) DO UPDATE SET next_step = ?3",
            params![charge.job_id, job_hash, i64::from(step) + 1],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// The consumer a job id was first charged to, if it was.
    pub fn charged_consumer(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT consumer FROM ledger WHERE job_id = ?1 LIMIT 1",
                params![job_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// A training job's recorded progress: the hash its id is bound to and the first step code
    /// it still accepts.
    pub fn training_progress(&self, job_id: &str) -> Result<Option<(String, i64)>, StoreError> {
        training_progress_in(&self.conn(), job_id)
    }

    /// How many jobs a dataset has taken part in.
    pub fn uses(&self, dataset: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM ledger WHERE dataset = ?1",
            params![dataset],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Stores a receipt (once per job).
    pub fn put_receipt(&self, r: &Receipt) -> Result<(), StoreError> {
        let text = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn().execute(
            "INSERT OR IGNORE INTO receipts (job_id, receipt) VALUES (?1, ?2)",
            params![r.job_id, text],
        )?;
        Ok(())
    }

    /// Every receipt, oldest first.
    pub fn receipts(&self) -> Result<Vec<Receipt>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT job_id, receipt FROM receipts ORDER BY rowid")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (job, text) = row?;
            serde_json::from_str(&text).map_err(|e| {
                StoreError::Corrupt(format!("table receipts, row job_id = {job:?}: {e}"))
            })
        })
        .collect()
    }

    /// Spent ρ per (dataset, consumer), for `veil budget`.
    pub fn spending(&self) -> Result<Vec<(String, String, f64, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT dataset, consumer, SUM(rho), COUNT(*) FROM ledger GROUP BY dataset, consumer ORDER BY dataset, consumer",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Ledger for PartyStore {
    type Error = StoreError;

    fn reserve(&self, r: &Reservation) -> Result<Result<(), BudgetError>, StoreError> {
        let mut conn = self.conn();
        // An immediate transaction holds the write lock from the first read, so no other
        // reservation (in this process or another) can slip between the check and the insert.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = reserve_in(&tx, r)?;
        tx.commit()?;
        Ok(match outcome {
            Reserved::Refused(e) => Err(e),
            Reserved::New => Ok(()),
        })
    }

    fn spent(&self, dataset: &str, consumer: &str) -> Result<Spent, StoreError> {
        spent_in(&self.conn(), dataset, consumer)
    }
}

enum Reserved {
    New,
    Refused(BudgetError),
}

/// Checks the caps and records the charge inside the caller's transaction.
fn reserve_in(tx: &rusqlite::Transaction<'_>, r: &Reservation) -> Result<Reserved, StoreError> {
    let already: Option<f64> = tx
        .query_row(
            "SELECT rho FROM ledger WHERE job_id = ?1 AND dataset = ?2",
            params![r.job_id, r.dataset],
            |row| row.get(0),
        )
        .optional()?;
    if already.is_some() {
        return Ok(Reserved::Refused(BudgetError::Reused(r.job_id.clone())));
    }
    if let Some(max) = r.max_uses {
        let uses: i64 = tx.query_row(
            "SELECT COUNT(*) FROM ledger WHERE dataset = ?1",
            params![r.dataset],
            |row| row.get(0),
        )?;
        if uses as u64 >= max {
            return Ok(Reserved::Refused(BudgetError::UsesExhausted(max)));
        }
    }
    let spent = spent_in(tx, &r.dataset, &r.consumer)?;
    if let Err(e) = check(spent, r.rho, r.caps) {
        return Ok(Reserved::Refused(e));
    }
    tx.execute(
        "INSERT INTO ledger (job_id, dataset, consumer, rho) VALUES (?1, ?2, ?3, ?4)",
        params![r.job_id, r.dataset, r.consumer, r.rho],
    )?;
    Ok(Reserved::New)
}

fn training_progress_in(
    conn: &Connection,
    job_id: &str,
) -> Result<Option<(String, i64)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT job_hash, next_step FROM training_steps WHERE job_id = ?1",
            params![job_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

fn spent_in(conn: &Connection, dataset: &str, consumer: &str) -> Result<Spent, StoreError> {
    let (consumer_sum, total): (f64, f64) = conn.query_row(
        "SELECT COALESCE(SUM(CASE WHEN consumer = ?2 THEN rho END), 0), COALESCE(SUM(rho), 0)
         FROM ledger WHERE dataset = ?1",
        params![dataset, consumer],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Spent { consumer: consumer_sum, total })
}

/// Records a session as used on `conn` (or inside a transaction); false if it was used before.
fn claim(conn: &Connection, session: &[u8; 32]) -> Result<bool, StoreError> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO sessions (session) VALUES (?1)",
        params![hex::encode(session)],
    )?;
    Ok(n == 1)
}

/// The caps a policy sets.
pub fn caps(policy: &veil_governance::Policy) -> Caps {
    Caps { per_consumer: policy.budget_per_consumer, total: policy.budget_total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store(dir: &Path) -> PartyStore {
        PartyStore::open(&dir.join("p.db"), "party 0", SigningKey::from_bytes(&[3; 32])).unwrap()
    }

    /// Rows deleted from the ledger (a budget reset) or from the log alone are caught when the
    /// party starts; the signed log rebuilds the ledger. Deleting the newest rows of both
    /// together leaves them consistent here, and is caught against the heads the coordinator
    /// recorded (`veil audit verify --against`).
    #[test]
    fn a_ledger_or_log_cut_alone_is_caught_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let charge = |job: &str| Reservation {
            job_id: job.into(),
            dataset: "d".into(),
            consumer: "x".into(),
            rho: 0.1,
            caps: Caps { per_consumer: Some(1.0), total: None },
            max_uses: None,
        };
        for job in ["a", "b", "c"] {
            s.reserve_and_log(&charge(job), 1).unwrap().unwrap();
        }
        s.check_ledger().unwrap();
        // A budget reset: ledger rows deleted.
        s.conn().execute("DELETE FROM ledger WHERE job_id = 'a'", []).unwrap();
        let err = s.check_ledger().unwrap_err();
        assert!(matches!(err, StoreError::Tampered(_)), "{err}");
        assert!(err.to_string().contains("job a") && err.to_string().contains("--repair-ledger"));
        assert_eq!(s.rebuild_ledger().unwrap(), 3);
        s.check_ledger().unwrap();
        assert!((s.spent("d", "x").unwrap().consumer - 0.3).abs() < 1e-12);
        // The newest log row alone: the ledger holds a charge the log does not record.
        s.conn().execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)", []).unwrap();
        let err = s.check_ledger().unwrap_err();
        assert!(err.to_string().contains("job c"), "{err}");
        // Both together: consistent locally.
        s.conn().execute("DELETE FROM ledger WHERE job_id = 'c'", []).unwrap();
        s.check_ledger().unwrap();
        // An edited log entry fails its signature.
        s.conn().execute("UPDATE audit SET entry = replace(entry, '\"a\"', '\"z\"')", []).unwrap();
        assert!(s.check_ledger().unwrap_err().to_string().contains("does not verify"));
    }

    /// A file that is not the party's database, and a row that does not parse, are named with
    /// the path, table and row.
    #[test]
    fn a_corrupt_store_names_the_file_table_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = PartyStore::open(&path, "party 0", SigningKey::from_bytes(&[3; 32]))
            .err()
            .expect("a file of garbage is no database");
        assert!(err.to_string().contains("garbage.db"), "{err}");
        let s = store(dir.path());
        s.audit(Event::ConfigChanged { what: "x".into() }, 1).unwrap();
        s.conn().execute("UPDATE audit SET entry = '{broken' WHERE seq = 0", []).unwrap();
        let err = s.audit_log().unwrap_err().to_string();
        assert!(err.contains("table audit") && err.contains("seq = 0"), "{err}");
    }

    /// A training job reserves its whole charge at its first step, binds its id to its
    /// specification, and contributes to each step once; a job id used before by another job
    /// gets no free steps.
    #[test]
    fn training_steps_run_once_and_pay_at_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let caps = Caps { per_consumer: Some(1.0), total: None };
        let charge = |job: &str, rho: f64| Reservation {
            job_id: job.into(),
            dataset: "d".into(),
            consumer: "x".into(),
            rho,
            caps,
            max_uses: None,
        };
        let t = charge("t", 0.6);
        assert_eq!(s.claim_training_step(&t, "h", 0, 1).unwrap(), Ok(()));
        assert_eq!(s.spent("d", "x").unwrap().consumer, 0.6);
        assert_eq!(s.claim_training_step(&t, "h", 1, 2).unwrap(), Ok(()));
        assert_eq!(s.spent("d", "x").unwrap().consumer, 0.6, "later steps pay nothing more");
        assert!(s.claim_training_step(&t, "h", 1, 3).unwrap().is_err(), "a step runs once");
        assert!(s.claim_training_step(&t, "h", 0, 3).unwrap().is_err());
        assert!(s.claim_training_step(&t, "other", 5, 3).unwrap().is_err(), "bound to its hash");
        assert_eq!(s.training_progress("t").unwrap(), Some(("h".to_string(), 2)));
        // The same job id and hash under another consumer claims nothing and charges nothing.
        let other = Reservation { consumer: "y".into(), ..t.clone() };
        let refusal = s.claim_training_step(&other, "h", 2, 3).unwrap().unwrap_err();
        assert!(refusal.to_string().contains("another consumer"), "{refusal}");
        assert_eq!(s.charged_consumer("t").unwrap().as_deref(), Some("x"));
        assert_eq!(s.training_progress("t").unwrap(), Some(("h".to_string(), 2)));
        // A job id that a column job used (and paid for) starts no training.
        s.reserve_and_log(&charge("c", 0.1), 4).unwrap().unwrap();
        assert!(s.claim_training_step(&charge("c", 0.2), "h", 0, 5).unwrap().is_err());
        // A job the budget cannot pay for claims nothing.
        let big = charge("u", 0.5);
        let refusal = s.claim_training_step(&big, "h", 0, 6).unwrap().unwrap_err();
        assert_eq!(refusal.rule(), Some(Rule::Budget), "{refusal}");
        assert_eq!(s.training_progress("u").unwrap(), None);
    }

    /// Many jobs reserving at once, from many threads and two connections, never overspend.
    #[test]
    fn concurrent_reservations_never_exceed_the_caps() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(store(dir.path()));
        let b = Arc::new(store(dir.path()));
        let caps = Caps { per_consumer: Some(1.0), total: Some(1.5) };
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    let r = Reservation {
                        job_id: format!("job{i}"),
                        dataset: "d".into(),
                        consumer: if i % 4 < 2 { "x".into() } else { "y".into() },
                        rho: 0.3,
                        caps,
                        max_uses: None,
                    };
                    s.reserve(&r).unwrap().is_ok()
                })
            })
            .collect();
        let granted = threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count();
        let total = a.spent("d", "x").unwrap().total;
        assert_eq!(granted, 5, "1.5 / 0.3 = 5 reservations fit");
        assert!(total <= 1.5 + 1e-9);
        assert!(a.spent("d", "x").unwrap().consumer <= 1.0 + 1e-9);
        assert!(a.spent("d", "y").unwrap().consumer <= 1.0 + 1e-9);
        // A job that was charged cannot be charged, and so released, again.
        let again = Reservation {
            job_id: "job-again".into(),
            dataset: "d".into(),
            consumer: "x".into(),
            rho: 0.0,
            caps,
            max_uses: None,
        };
        assert!(a.reserve(&again).unwrap().is_ok());
        assert_eq!(a.reserve(&again).unwrap(), Err(BudgetError::Reused("job-again".into())));
        assert_eq!(a.spent("d", "x").unwrap().total, total);
        // The use count is checked in the same transaction.
        let capped = Reservation { job_id: "one-more".into(), max_uses: Some(6), ..again.clone() };
        assert_eq!(a.reserve(&capped).unwrap(), Err(BudgetError::UsesExhausted(6)));
    }

    #[test]
    fn the_audit_log_chains_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for i in 0..5 {
            s.audit(Event::ConfigChanged { what: format!("change {i}") }, i).unwrap();
        }
        let log = s.audit_log().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
        assert_eq!(veil_governance::audit::verify(&log, &key, &[]), Ok(()));
        assert!(s.claim_session(&[1; 32]).unwrap());
        assert!(!s.claim_session(&[1; 32]).unwrap());
    }

    /// An acceptance writes its entries and claims its session together; one that names a
    /// used session writes nothing.
    #[test]
    fn an_acceptance_claims_its_session_with_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let accepted = |job: &str| vec![Event::JobAccepted { job_id: job.into(), party: 0 }];
        assert!(s.accept(accepted("a"), Some(&[2; 32]), 1).unwrap());
        assert!(!s.accept(accepted("b"), Some(&[2; 32]), 2).unwrap());
        assert!(s.accept(accepted("c"), None, 3).unwrap());
        assert!(!s.claim_session(&[2; 32]).unwrap());
        let jobs: Vec<String> = s
            .audit_log()
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.event {
                Event::JobAccepted { job_id, .. } => Some(job_id),
                _ => None,
            })
            .collect();
        assert_eq!(jobs, ["a", "c"]);
    }
}
