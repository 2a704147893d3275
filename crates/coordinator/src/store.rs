//! The coordinator's embedded store: jobs, results and parties in SQLite (WAL, synchronous
//! writes), so a restarted coordinator keeps every finished result.

use std::path::Path;
use std::sync::Mutex;

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use veil_governance::audit::{Entry, Event};
use veil_governance::audit_store;
use veil_governance::receipt::Receipt;

use crate::offer::Coverage;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not parse.
    #[error("corrupt database row: {0}")]
    Corrupt(String),
    /// The audit log's table failed.
    #[error(transparent)]
    Audit(#[from] audit_store::AuditStoreError),
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Offered to parties, waiting for their answers.
    Offering,
    /// The secure round runs.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Ended without a result; `detail` says why.
    Failed,
    /// Cancelled by its consumer.
    Cancelled,
}

impl JobState {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Offering => "offering",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => JobState::Queued,
            "offering" => JobState::Offering,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(StoreError::Corrupt(format!("unknown job state {other:?}"))),
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// Its id.
    pub id: String,
    /// Who submitted it.
    pub consumer: String,
    /// The dataset it reads.
    pub dataset: String,
    /// The canonical specification.
    pub spec_json: String,
    /// The consumer's signature over the job (hex), which every offer carries to the parties.
    pub signature: String,
    /// Whether the consumer asked for every party that serves the dataset, or a failure.
    pub require_all: bool,
    /// Every party that serves the dataset and what became of it.
    pub coverage: Coverage,
    /// Where it stands.
    pub state: JobState,
    /// Progress or, for a failed job, why.
    pub detail: String,
    /// The parties taking part.
    pub parties: Vec<u32>,
    /// Submission time, Unix milliseconds.
    pub created_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_ms: i64,
    /// Training jobs: the last finished round's report as JSON (kept in memory only; the
    /// `training_rounds` table holds every report).
    pub progress_json: String,
}

/// A stored result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultRecord {
    /// The job.
    pub job_id: String,
    /// The answer as JSON.
    pub answer_json: String,
    /// Parties in the answer.
    pub contributors: Vec<u32>,
    /// Parties that dropped out.
    pub dropped: Vec<u32>,
}

/// The store.
pub struct Store {
    conn: Mutex<Connection>,
    key: SigningKey,
}

fn ids_to_text(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn ids_from_text(s: &str) -> Result<Vec<u32>, StoreError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| p.parse().map_err(|_| StoreError::Corrupt(format!("party list {s:?}"))))
        .collect()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    dataset TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    parties TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    signature TEXT NOT NULL DEFAULT '',
    require_all INTEGER NOT NULL DEFAULT 0,
    coverage TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    answer TEXT NOT NULL,
    contributors TEXT NOT NULL,
    dropped TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (job_id TEXT PRIMARY KEY, consumer TEXT NOT NULL, receipt TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fetches (job_id TEXT NOT NULL, consumer TEXT NOT NULL, time_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    state TEXT NOT NULL,
    parties TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS training_rounds (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS parties (
    id INTEGER PRIMARY KEY,
    datasets TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
";

impl Store {
    /// Opens (or creates) the database: WAL journal, full synchronous writes.
    pub fn open(path: &Path, key: SigningKey) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(audit_store::sqlite::SCHEMA)?;
        // Stores made by earlier versions lack the newer columns.
        for (column, definition) in [
            ("signature", "TEXT NOT NULL DEFAULT ''"),
            ("require_all", "INTEGER NOT NULL DEFAULT 0"),
            ("coverage", "TEXT NOT NULL DEFAULT ''"),
        ] {
            let present: i64 = conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = ?1",
                params![column],
                |r| r.get(0),
            )?;
            if present == 0 {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {definition}"))?;
            }
        }
        Ok(Self { conn: Mutex::new(conn), key })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (every write is one
        // statement or transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks jobs that were under way when the coordinator stopped as failed, with the reason.
    /// Returns how many.
    pub fn fail_interrupted(&self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE jobs SET state = 'failed', updated_ms = ?1,
                 detail = 'interrupted: the coordinator stopped while the job was ' || state ||
                          '; no result was released; submit the job again'
             WHERE state IN ('queued', 'offering', 'running')
               AND id NOT IN (SELECT job_id FROM checkpoints)",
            params![now_ms],
        )?)
    }

    /// Jobs under way when the coordinator stopped that have a checkpoint to resume from,
    /// with the checkpoint and the parties it was taken with.
    pub fn resumable(&self) -> Result<Vec<(JobRecord, String, Vec<u32>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT j.id, j.consumer, j.dataset, j.spec, j.state, j.detail, j.parties,
                    j.created_ms, j.updated_ms, j.signature, j.require_all, j.coverage,
                    c.state, c.parties
             FROM jobs j JOIN checkpoints c ON c.job_id = j.id
             WHERE j.state IN ('queued', 'offering', 'running') ORDER BY j.created_ms",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((Self::job_from_row(row)?, row.get::<_, String>(12)?, row.get::<_, String>(13)?))
        })?;
        rows.map(|r| {
            let (job, checkpoint, parties) = r?;
            Ok((Self::finish_job(job)?, checkpoint, ids_from_text(&parties)?))
        })
        .collect()
    }

    /// Records a training job's state after a finished step, replacing the previous one, and
    /// appends the reports (round, JSON) of the rounds finished since, atomically: the state
    /// holds no report list, so its size does not grow with the rounds. A round stored before
    /// is refused, and then nothing is written.
    pub fn put_checkpoint(
        &self,
        job_id: &str,
        state_json: &str,
        rounds: &[(u32, String)],
        parties: &[u32],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut append = tx.prepare_cached(
                "INSERT INTO training_rounds (job_id, round, report) VALUES (?1, ?2, ?3)",
            )?;
            for (round, report) in rounds {
                append.execute(params![job_id, round, report])?;
            }
        }
        tx.execute(
            "INSERT INTO checkpoints (job_id, state, parties, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job_id) DO UPDATE SET state = ?2, parties = ?3, updated_ms = ?4",
            params![job_id, state_json, ids_to_text(parties), now_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A training job's stored round reports (JSON), in round order.
    pub fn training_rounds(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT report FROM training_rounds WHERE job_id = ?1 ORDER BY round")?;
        let rows = stmt.query_map(params![job_id], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many round reports a training job has stored.
    pub fn training_round_count(&self, job_id: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM training_rounds WHERE job_id = ?1",
            params![job_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Stores a new job; false (and nothing written) if its id is taken.
    pub fn insert_job(&self, j: &JobRecord) -> Result<bool, StoreError> {
        let inserted = self.conn().execute(
            "INSERT INTO jobs (id, consumer, dataset, spec, state, detail, parties, created_ms, updated_ms,
                               signature, require_all, coverage)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (id) DO NOTHING",
            params![
                j.id,
                j.consumer,
                j.dataset,
                j.spec_json,
                j.state.as_str(),
                j.detail,
                ids_to_text(&j.parties),
                j.created_ms,
                j.updated_ms,
                j.signature,
                j.require_all,
                j.coverage.to_json()
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Updates a job's state, detail and parties. A job that already ended is left alone.
    pub fn update_job(
        &self,
        id: &str,
        state: JobState,
        detail: &str,
        parties: &[u32],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET state = ?2, detail = ?3, parties = ?4, updated_ms = ?5
             WHERE id = ?1 AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            params![id, state.as_str(), detail, ids_to_text(parties), now_ms],
        )?;
        Ok(())
    }

    /// Stores a result and marks its job succeeded, atomically.
    pub fn put_result(
        &self,
        r: &ResultRecord,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO results (job_id, answer, contributors, dropped) VALUES (?1, ?2, ?3, ?4)",
            params![r.job_id, r.answer_json, ids_to_text(&r.contributors), ids_to_text(&r.dropped)],
        )?;
        tx.execute(
            "UPDATE jobs SET state = 'succeeded', detail = ?2, updated_ms = ?3 WHERE id = ?1",
            params![r.job_id, detail, now_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A job row (id, consumer, dataset, spec, state, detail, parties, created, updated,
    /// signature, require_all, coverage), with its state, parties and coverage as text.
    fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(JobRecord, [String; 3])> {
        Ok((
            JobRecord {
                id: row.get(0)?,
                consumer: row.get(1)?,
                dataset: row.get(2)?,
                spec_json: row.get(3)?,
                signature: row.get(9)?,
                require_all: row.get(10)?,
                coverage: Coverage::default(),
                state: JobState::Queued,
                detail: row.get(5)?,
                parties: Vec::new(),
                created_ms: row.get(7)?,
                updated_ms: row.get(8)?,
                progress_json: String::new(),
            },
            [row.get(4)?, row.get(6)?, row.get(11)?],
        ))
    }

    fn finish_job(
        (mut j, [state, parties, coverage]): (JobRecord, [String; 3]),
    ) -> Result<JobRecord, StoreError> {
        j.state = JobState::parse(&state)?;
        j.parties = ids_from_text(&parties)?;
        j.coverage = Coverage::from_json(&coverage).map_err(|e| {
            StoreError::Corrupt(format!("table jobs, row {:?}: coverage: {e}", j.id))
        })?;
        Ok(j)
    }

    /// Records who a job covers.
    pub fn set_coverage(&self, id: &str, coverage: &Coverage) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET coverage = ?2 WHERE id = ?1",
            params![id, coverage.to_json()],
        )?;
        Ok(())
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, consumer, dataset, spec, state, detail, parties, created_ms, updated_ms,
                        signature, require_all, coverage
                 FROM jobs WHERE id = ?1",
                params![id],
                Self::job_from_row,
            )
            .optional()?;
        row.map(Self::finish_job).transpose()
    }

    /// The most recent jobs, newest first, optionally of one consumer.
    pub fn jobs(&self, consumer: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, consumer, dataset, spec, state, detail, parties, created_ms, updated_ms,
                    signature, require_all, coverage
             FROM jobs WHERE (?1 IS NULL OR consumer = ?1) ORDER BY created_ms DESC, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![consumer, limit as i64], Self::job_from_row)?;
        rows.map(|r| Self::finish_job(r?)).collect()
    }

    /// A job's result.
    pub fn result(&self, job_id: &str) -> Result<Option<ResultRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT job_id, answer, contributors, dropped FROM results WHERE job_id = ?1",
                params![job_id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(job_id, answer_json, c, d)| {
            Ok(ResultRecord {
                job_id,
                answer_json,
                contributors: ids_from_text(&c)?,
                dropped: ids_from_text(&d)?,
            })
        })
        .transpose()
    }

    /// Appends an event to the coordinator's audit log, chained and signed; returns the entry.
    pub fn audit(&self, event: Event, time_ms: i64) -> Result<Entry, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let entry = audit_store::append(&*tx, "coordinator", &self.key, event, time_ms)?;
        tx.commit()?;
        Ok(entry)
    }

    /// The whole audit log as stored (JSON per entry), in order.
    pub fn audit_log(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT entry FROM audit ORDER BY seq")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a release receipt.
    pub fn put_receipt(&self, r: &Receipt) -> Result<(), StoreError> {
        let text = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn().execute(
            "INSERT OR IGNORE INTO receipts (job_id, consumer, receipt) VALUES (?1, ?2, ?3)",
            params![r.job_id, r.consumer, text],
        )?;
        Ok(())
    }

    /// Receipts as JSON, oldest first, optionally of one consumer.
    pub fn receipts(&self, consumer: Option<&str>) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT receipt FROM receipts WHERE (?1 IS NULL OR consumer = ?1) ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![consumer], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs a consumer submitted since `since_ms`.
    pub fn jobs_since(&self, consumer: &str, since_ms: i64) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM jobs WHERE consumer = ?1 AND created_ms >= ?2",
            params![consumer, since_ms],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Records a result fetch.
    pub fn record_fetch(
        &self,
        job_id: &str,
        consumer: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO fetches (job_id, consumer, time_ms) VALUES (?1, ?2, ?3)",
            params![job_id, consumer, now_ms],
        )?;
        Ok(())
    }

    /// Result fetches by a consumer since `since_ms`.
    pub fn fetches_since(&self, consumer: &str, since_ms: i64) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM fetches WHERE consumer = ?1 AND time_ms >= ?2",
            params![consumer, since_ms],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Records that a party connected, with the datasets it serves.
    pub fn party_seen(&self, id: u32, datasets: &[String], now_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO parties (id, datasets, last_seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET datasets = excluded.datasets, last_seen_ms = excluded.last_seen_ms",
            params![id, datasets.join(","), now_ms],
        )?;
        Ok(())
    }

    /// When each party was last seen, and what it served then.
    pub fn parties(&self) -> Result<Vec<(u32, Vec<String>, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, datasets, last_seen_ms FROM parties ORDER BY id")?;
        let rows = stmt.query_map([], |row| {
            let datasets: String = row.get(1)?;
            Ok((
                row.get::<_, u32>(0)?,
                datasets.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                row.get::<_, i64>(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            consumer: "analyst".into(),
            dataset: "flights".into(),
            spec_json: "{}".into(),
            signature: "ab".repeat(64),
            require_all: false,
            coverage: Coverage::default(),
            state,
            detail: String::new(),
            parties: vec![0, 2],
            created_ms: 1,
            updated_ms: 1,
            progress_json: String::new(),
        }
    }

    #[test]
    fn results_survive_reopening_and_interrupted_jobs_fail_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let s = Store::open(&path, SigningKey::from_bytes(&[1; 32])).unwrap();
            assert!(s.insert_job(&job("done", JobState::Running)).unwrap());
            assert!(!s.insert_job(&job("done", JobState::Queued)).unwrap(), "an id is taken once");
            assert_eq!(s.job("done").unwrap().unwrap().signature, "ab".repeat(64));
            let r = ResultRecord {
                job_id: "done".into(),
                answer_json: "{\"rows\":3}".into(),
                contributors: vec![0, 2],
                dropped: vec![],
            };
            s.put_result(&r, "finished", 2).unwrap();
            assert!(s.insert_job(&job("busy", JobState::Running)).unwrap());
        }
        let s = Store::open(&path, SigningKey::from_bytes(&[1; 32])).unwrap();
        assert_eq!(s.fail_interrupted(3).unwrap(), 1);
        let done = s.job("done").unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(s.result("done").unwrap().unwrap().contributors, vec![0, 2]);
        let busy = s.job("busy").unwrap().unwrap();
        assert_eq!(busy.state, JobState::Failed);
        assert!(busy.detail.contains("interrupted"), "{}", busy.detail);
        // An ended job is not revived by a late update.
        s.update_job("busy", JobState::Running, "late", &[], 4).unwrap();
        assert_eq!(s.job("busy").unwrap().unwrap().state, JobState::Failed);
        assert_eq!(s.jobs(Some("analyst"), 10).unwrap().len(), 2);
        assert!(s.jobs(Some("other"), 10).unwrap().is_empty());
    }

    /// A training job's round reports go to their own table, in the transaction that replaces
    /// its checkpoint: they read back in round order, the checkpoint row stays the same size
    /// however many rounds ran, and a round stored twice writes nothing.
    #[test]
    fn round_reports_are_appended_beside_a_checkpoint_that_does_not_grow() {
        use veil_learning::job::{Step, TrainSpec, Training};
        let spec: TrainSpec = serde_json::from_value(serde_json::json!({
            "kind": "train", "dataset": "flights", "features": ["a", "b"], "label": "y",
            "model": { "kind": "logistic_regression" }, "rounds": 1000,
            "local": { "epochs": 1, "batch_size": 8, "learning_rate": 0.1,
                       "optimizer": { "kind": "sgd", "momentum": 0.0 } },
            "standardize": false, "evaluation": { "holdout": 0.0 },
        }))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("c.db"), SigningKey::from_bytes(&[1; 32])).unwrap();
        assert!(s.insert_job(&job("train", JobState::Running)).unwrap());
        let checkpoint = |state: &Training| {
            let (_, text, parties) = s.resumable().unwrap().pop().unwrap();
            assert_eq!(parties, vec![0, 2]);
            assert_eq!(serde_json::from_str::<Training>(&text).unwrap(), *state);
            text.len()
        };
        // Every round is lost (its parties were never asked), which finishes it without a sum.
        let mut state = Training::new(&spec).unwrap();
        let mut sizes = Vec::new();
        for round in 0..900u32 {
            let next = Step::Train { round: round + 1 }.code().into();
            assert_eq!(state.skip_lost(&spec, next).unwrap(), vec![Step::Train { round }]);
            let rounds: Vec<(u32, String)> = state
                .history
                .take_unsaved()
                .iter()
                .map(|r| (r.round, serde_json::to_string(r).unwrap()))
                .collect();
            let text = serde_json::to_string(&state).unwrap();
            s.put_checkpoint("train", &text, &rounds, &[0, 2], i64::from(round)).unwrap();
            if round == 199 || round == 899 {
                sizes.push(checkpoint(&state));
            }
        }
        // 200 and 900 rounds: the same digits, the same size.
        assert_eq!(sizes[0], sizes[1]);
        let stored = s.training_rounds("train").unwrap();
        assert_eq!(s.training_round_count("train").unwrap(), 900);
        for (round, text) in (0..).zip(&stored) {
            let report: veil_learning::job::RoundReport = serde_json::from_str(text).unwrap();
            assert_eq!(report.round, round);
            assert!(report.lost);
        }
        // Round 899 again: refused, and the checkpoint is the one before.
        let again = vec![(899, stored[899].clone())];
        assert!(s.put_checkpoint("train", "{}", &again, &[0], 1000).is_err());
        assert_eq!(checkpoint(&state), sizes[1]);
        assert_eq!(s.training_round_count("train").unwrap(), 900);
        assert!(s.training_rounds("other").unwrap().is_empty());
    }
}
