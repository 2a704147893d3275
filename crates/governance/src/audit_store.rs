//! Where an audit log is kept. Appending is the same for every writer (read the last entry,
//! chain and sign the next, store it, in one transaction); only the storage differs, so it
//! sits behind [`AuditStore`]. With the `sqlite` feature, a SQLite connection or transaction is
//! one: both services keep their logs in an `audit` table through it.

use ed25519_dalek::SigningKey;

use crate::audit::{Entry, Event, Head};

/// A failure of an audit log's storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditStoreError {
    /// The storage failed.
    #[error("audit log storage: {0}")]
    Storage(String),
    /// A stored entry does not parse.
    #[error("corrupt audit log: table audit, row seq = {seq}: {message}")]
    Corrupt {
        /// The entry's sequence number.
        seq: i64,
        /// What is wrong.
        message: String,
    },
}

/// An audit log's storage. Callers append within one transaction of theirs, so the entry and
/// what it records are written together.
pub trait AuditStore {
    /// The last entry.
    fn last_entry(&self) -> Result<Option<Entry>, AuditStoreError>;
    /// Stores an entry after the last one.
    fn push_entry(&self, entry: &Entry) -> Result<(), AuditStoreError>;
    /// Every entry, in order.
    fn entries(&self) -> Result<Vec<Entry>, AuditStoreError>;
}

/// Appends `event` to the log in `store`, chained to its last entry and signed by `key` as
/// `writer`; returns the entry.
pub fn append(
    store: &(impl AuditStore + ?Sized),
    writer: &str,
    key: &SigningKey,
    event: Event,
    time_ms: i64,
) -> Result<Entry, AuditStoreError> {
    let last = store.last_entry()?;
    let entry = Entry::new(last.as_ref(), time_ms, writer, event, key);
    store.push_entry(&entry)?;
    Ok(entry)
}

/// The log's head: its last entry's sequence number and hash, if it has any.
pub fn head(store: &(impl AuditStore + ?Sized)) -> Result<Option<Head>, AuditStoreError> {
    Ok(store.last_entry()?.map(|e| e.head()))
}

/// The SQLite table both services keep their logs in.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    use rusqlite::{Connection, OptionalExtension, params};

    use super::{AuditStore, AuditStoreError};
    use crate::audit::Entry;

    /// The table.
    pub const SCHEMA: &str =
        "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL);";

    fn storage(e: rusqlite::Error) -> AuditStoreError {
        AuditStoreError::Storage(e.to_string())
    }

    fn parse(seq: i64, text: &str) -> Result<Entry, AuditStoreError> {
        serde_json::from_str(text)
            .map_err(|e| AuditStoreError::Corrupt { seq, message: e.to_string() })
    }

    /// A connection or (through `Deref`) a transaction holds the log in its `audit` table.
    impl AuditStore for Connection {
        fn last_entry(&self) -> Result<Option<Entry>, AuditStoreError> {
            let last: Option<(i64, String)> = self
                .query_row("SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(storage)?;
            last.map(|(seq, text)| parse(seq, &text)).transpose()
        }

        fn push_entry(&self, entry: &Entry) -> Result<(), AuditStoreError> {
            let text = serde_json::to_string(entry)
                .map_err(|e| AuditStoreError::Storage(e.to_string()))?;
            self.execute(
                "INSERT INTO audit (seq, entry) VALUES (?1, ?2)",
                params![entry.seq as i64, text],
            )
            .map_err(storage)?;
            Ok(())
        }

        fn entries(&self) -> Result<Vec<Entry>, AuditStoreError> {
            let mut stmt =
                self.prepare("SELECT seq, entry FROM audit ORDER BY seq").map_err(storage)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(storage)?;
            rows.map(|row| {
                let (seq, text) = row.map_err(storage)?;
                parse(seq, &text)
            })
            .collect()
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use ed25519_dalek::SigningKey;

        use super::*;
        use crate::audit::Event;
        use crate::audit_store::{append, head};

        #[test]
        fn entries_chain_in_a_table_and_a_corrupt_row_is_named() {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            let key = SigningKey::from_bytes(&[5; 32]);
            assert_eq!(head(&conn).unwrap(), None);
            for i in 0..3 {
                let event = Event::ConfigChanged { what: format!("change {i}") };
                append(&conn, "party 0", &key, event, i).unwrap();
            }
            let entries = conn.entries().unwrap();
            assert_eq!(entries.len(), 3);
            assert_eq!(entries[2].prev, entries[1].hash());
            assert_eq!(head(&conn).unwrap().unwrap().hash, entries[2].hash());
            // A transaction is a store too.
            let tx = conn.unchecked_transaction().unwrap();
            append(&*tx, "party 0", &key, Event::ConfigChanged { what: "x".into() }, 9).unwrap();
            tx.commit().unwrap();
            assert_eq!(conn.entries().unwrap().len(), 4);
            conn.execute("UPDATE audit SET entry = 'garbage' WHERE seq = 2", []).unwrap();
            let e = conn.entries().unwrap_err().to_string();
            assert!(e.contains("row seq = 2"), "{e}");
        }
    }
}
