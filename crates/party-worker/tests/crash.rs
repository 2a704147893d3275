//! A party killed while writing its audit log and budget ledger leaves both consistent: the
//! log still verifies and the ledger's charges are exactly those the log recorded.
//!
//! The test runs itself again as a child process that writes in a loop, kills it with
//! SIGKILL mid-write, and reopens the store.

// A panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use veil_governance::audit::{Event, verify};
use veil_governance::budget::{Caps, Ledger, Reservation};
use veil_party_worker::store::PartyStore;

const CHILD: &str = "VEIL_CRASH_CHILD_DB";

fn store(path: &Path) -> PartyStore {
    PartyStore::open(path, "party 0", SigningKey::from_bytes(&[5; 32])).unwrap()
}

/// In the child: reserve and log forever, as fast as possible.
fn write_forever(path: &Path) -> ! {
    let s = store(path);
    let caps = Caps { per_consumer: None, total: Some(1e9) };
    for i in 0u64.. {
        let r = Reservation {
            job_id: format!("job{}-{i}", std::process::id()),
            dataset: "d".into(),
            consumer: "c".into(),
            rho: 0.001,
            caps,
            max_uses: None,
        };
        s.reserve_and_log(&r, i as i64).unwrap().unwrap();
    }
    unreachable!("the loop is unbounded")
}

#[test]
fn a_kill_mid_write_leaves_log_and_ledger_consistent() {
    if let Some(path) = std::env::var_os(CHILD) {
        write_forever(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("party.db");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_kill_mid_write_leaves_log_and_ledger_consistent", "--nocapture"])
            .env(CHILD, &db)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + 100 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let s = store(&db);
        let log = s.audit_log().unwrap();
        assert!(!log.is_empty(), "the child wrote before it was killed");
        verify(&log, &SigningKey::from_bytes(&[5; 32]).verifying_key(), &[]).unwrap();
        let charged =
            log.iter().filter(|e| matches!(e.event, Event::BudgetCharged { .. })).count() as f64;
        let spent = s.spent("d", "c").unwrap().total;
        // Each charge and its log entry are one transaction: a kill leaves both or neither.
        let reserved = (spent / 0.001).round();
        assert_eq!(reserved, charged, "ledger and log disagree after a kill");
    }
}
