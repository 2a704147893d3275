//! Attacks on the release records (threat model, guarantee 11): a party or a coordinator that
//! cuts or rewrites its own audit log, checked against what `PartyStore::check_ledger` sees at
//! start and against `veil audit verify LOG --against OTHER`.
//!
//! Each test plays a job as the worker and the coordinator's driver record it: the coordinator
//! logs `job-offered`, the party records the offer with the coordinator's head and its
//! acceptance (`PartyStore::accept`), replies with its head (`PartyStore::audit_head`),
//! reserves the charge at round start (`PartyStore::reserve_and_log`), and both log the
//! receipt, which carries the party's head. `audit_verify` runs `audit::verify_against`, the
//! check behind `veil audit verify`.
//!
//! A head handed to the other side carries its writer's signature for the job, so a made-up
//! record is blamed on the side that made it.

// A panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use veil_governance::audit::{self, Entry, Event, Head};
use veil_governance::budget::{Caps, Ledger, Reservation};
use veil_governance::receipt::{Contribution, Receipt};
use veil_party_worker::store::PartyStore;

const PARTY: u32 = 1;
const CAP: f64 = 1.0;

fn party_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn coordinator_key() -> SigningKey {
    SigningKey::from_bytes(&[8; 32])
}

fn open(path: &Path) -> PartyStore {
    PartyStore::open(path, &format!("party {PARTY}"), party_key()).unwrap()
}

/// Direct SQL on the party's database, as its operator can.
fn sql(path: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn charge(job: &str, rho: f64) -> Reservation {
    Reservation {
        job_id: job.into(),
        dataset: "d".into(),
        consumer: "x".into(),
        rho,
        caps: Caps { per_consumer: Some(CAP), total: None },
        max_uses: None,
    }
}

#[derive(Default)]
struct Coordinator {
    log: Vec<Entry>,
}

impl Coordinator {
    fn append(&mut self, event: Event) -> Entry {
        let t = 1_000 + self.log.len() as i64;
        let e = Entry::new(self.log.last(), t, "coordinator", event, &coordinator_key());
        self.log.push(e.clone());
        e
    }

    fn offer(&mut self, job: &str) -> Head {
        self.append(Event::JobOffered {
            job_id: job.into(),
            job_hash: format!("hash of {job}"),
            consumer: "x".into(),
            coordinator_head: None,
        })
        .head()
        .signed(job, &coordinator_key())
    }
}

/// The party's side of an offer it accepts: the events `decide` records, then the head its
/// reply carries.
fn accept(s: &PartyStore, job: &str, coordinator_head: Head) -> Option<Head> {
    let events = vec![
        Event::JobOffered {
            job_id: job.into(),
            job_hash: format!("hash of {job}"),
            consumer: "x".into(),
            coordinator_head: Some(coordinator_head),
        },
        Event::JobAccepted { job_id: job.into(), party: PARTY },
    ];
    assert!(s.accept(events, None, 2_000).unwrap());
    s.audit_head().unwrap().map(|h| h.signed(job, &party_key()))
}

fn receipt(job: &str, rho: f64, head: Option<Head>) -> Receipt {
    Receipt {
        job_id: job.into(),
        job_hash: format!("hash of {job}"),
        consumer: "x".into(),
        dataset: "d".into(),
        parties: vec![Contribution { party: PARTY, dataset_sha256: "f".repeat(64), head }],
        rho,
        result_sha256: "0".repeat(64),
        time_ms: 3_000,
    }
}

/// One released job, recorded as the worker and the driver record it. Returns the receipt.
fn released_job(s: &PartyStore, c: &mut Coordinator, job: &str, rho: f64) -> Receipt {
    let offered = c.offer(job);
    let head = accept(s, job, offered);
    s.reserve_and_log(&charge(job, rho), 2_500).unwrap().unwrap();
    let r = receipt(job, rho, head);
    c.append(Event::ResultReleased { receipt: r.clone() });
    s.put_receipt(&r).unwrap();
    s.audit(Event::ResultReleased { receipt: r.clone() }, 3_500).unwrap();
    r
}

fn key_of(writer: &str) -> VerifyingKey {
    if writer == "coordinator" {
        coordinator_key().verifying_key()
    } else {
        party_key().verifying_key()
    }
}

/// `veil audit verify LOG --against OTHER`: the checks the command runs.
fn audit_verify(log: &[Entry], other: &[Entry]) -> Result<(), String> {
    let writer = log.first().map_or("party 1", |e| e.writer.as_str());
    audit::verify_against(log, &key_of(writer), other).map_err(|e| e.to_string())
}

/// Both directions, and the party's own start-up check.
fn all_checks(s: &PartyStore, c: &Coordinator) -> Result<(), String> {
    s.check_ledger().map_err(|e| e.to_string())?;
    let party_log = s.audit_log().unwrap();
    audit_verify(&party_log, &c.log).map_err(|e| format!("party log: {e}"))?;
    audit_verify(&c.log, &party_log).map_err(|e| format!("coordinator log: {e}"))
}

/// The head a party's reply carries is taken once its acceptance is logged; the charge is
/// reserved later, at round start, so it lies beyond every head the coordinator records. A
/// party that holds its own key (it signs its log with its identity) cuts its log back to that
/// head, drops the ledger row and logs the release again: its log verifies, matches its ledger
/// and holds every head and release the coordinator recorded, and the refunded ρ is spent a
/// second time. Nothing compares the ρ of the coordinator's receipts with the party's
/// `budget-charged` entries.
#[test]
fn a_party_refunds_a_released_charge_by_rewriting_its_log_past_the_recorded_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let s = open(&path);
    let mut c = Coordinator::default();
    let a = released_job(&s, &mut c, "a", 0.6);
    all_checks(&s, &c).unwrap();
    let head = a.parties[0].head.clone().unwrap();
    assert!((s.spent("d", "x").unwrap().consumer - 0.6).abs() < 1e-12);

    // The rewrite: everything after the head the receipt recorded goes, with the ledger row;
    // the release is logged again, signed with the party's own key.
    sql(
        &path,
        &format!(
            "DELETE FROM audit WHERE seq > {}; DELETE FROM ledger WHERE job_id = 'a';",
            head.seq
        ),
    );
    let s = open(&path);
    s.audit(Event::ResultReleased { receipt: a.clone() }, 3_600).unwrap();

    // A second job of ρ 0.6 for the same consumer, which the cap of 1.0 refused before.
    let b = released_job(&s, &mut c, "b", 0.6);
    let released: f64 = [&a, &b].iter().map(|r| r.rho).sum();
    let outcome = all_checks(&s, &c);
    assert!(
        outcome.is_err(),
        "the consumer received ρ = {released} from this party's dataset against a cap of {CAP}, \
         and its start-up check and both audit verifications pass: the charge for job a, which \
         the coordinator's receipt records with ρ = {}, is gone from the party's log and ledger",
        a.rho
    );
}

/// Without any rewriting: a party whose masked input left (the charge is reserved first) in a
/// round that then released nothing, or that released without it (a dropped party is left out
/// of the receipt). Its first round message carried its head after the charge, which the
/// coordinator recorded, so deleting the newest rows of its log and ledger together (its
/// `budget-charged` entry and the ledger row) is caught.
#[test]
fn a_charge_for_a_round_without_a_receipt_can_be_cut_from_log_and_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let s = open(&path);
    let mut c = Coordinator::default();
    let offered = c.offer("a");
    accept(&s, "a", offered).unwrap();
    s.reserve_and_log(&charge("a", 0.9), 2_500).unwrap().unwrap();
    // The party's first round message carries its head, after the charge; the coordinator
    // records it.
    let head = s.audit_head().unwrap().unwrap().signed("a", &party_key());
    c.append(Event::PartyCharged { job_id: "a".into(), party: PARTY, head });
    all_checks(&s, &c).unwrap();

    sql(
        &path,
        "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit);
         DELETE FROM ledger WHERE job_id = 'a';",
    );
    let s = open(&path);
    let spent = s.spent("d", "x").unwrap().consumer;
    let caught = all_checks(&s, &c).expect_err(&format!(
        "the reservation of ρ = 0.9 for job a (made before the party's masked input left) was \
         deleted from the newest rows of both the log and the ledger, and every check passes; \
         spent ρ is now {spent}"
    ));
    assert!(caught.contains("nothing"), "{caught}");
}

/// The coordinator deletes the newest row of its own log, the receipt of its last release.
/// The heads parties record are those of `job-offered` entries, so none lies beyond the
/// receipt; the party's log holds that receipt, but the coordinator's log is checked only
/// against recorded heads.
#[test]
fn a_coordinator_hides_its_last_release_by_cutting_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("p.db"));
    let mut c = Coordinator::default();
    released_job(&s, &mut c, "a", 0.1);
    released_job(&s, &mut c, "b", 0.1);
    all_checks(&s, &c).unwrap();

    let hidden = c.log.pop().unwrap();
    assert!(matches!(&hidden.event, Event::ResultReleased { receipt } if receipt.job_id == "b"));
    let party_log = s.audit_log().unwrap();
    assert!(
        audit_verify(&c.log, &party_log).is_err(),
        "the coordinator's log no longer records the release of job b, which the party's log \
         records with its receipt, and `veil audit verify <coordinator log> --against <party \
         log>` passes"
    );
}

/// A party whose reply carried no head would be anchored by nothing, and could rewrite its
/// whole log from the first entry (with its own key) keeping only the offers and the releases,
/// without a single charge. The coordinator refuses an acceptance without a head, and a
/// receipt without one, or whose head is not the party's acceptance of that job, or whose ρ
/// the party's log does not charge, fails verification.
#[test]
fn a_receipt_without_the_partys_head_lets_it_rewrite_its_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("p.db"));
    let mut c = Coordinator::default();
    // The party's replies carried no usable head: the receipts hold none.
    let mut receipts = Vec::new();
    for job in ["a", "b", "c"] {
        let offered = c.offer(job);
        accept(&s, job, offered);
        s.reserve_and_log(&charge(job, 0.3), 2_500).unwrap().unwrap();
        let r = receipt(job, 0.3, None);
        c.append(Event::ResultReleased { receipt: r.clone() });
        s.audit(Event::ResultReleased { receipt: r.clone() }, 3_500).unwrap();
        receipts.push(r);
    }
    // A receipt without the party's head is refused outright (and the coordinator no longer
    // takes an acceptance without one).
    let refused = all_checks(&s, &c).unwrap_err();
    assert!(refused.contains("records no head"), "{refused}");

    // A fresh database with the same key: offers, acceptances and releases, no charges.
    let forged = open(&dir.path().join("forged.db"));
    for (i, r) in receipts.iter().enumerate() {
        let offered = c.log[2 * i].head();
        accept(&forged, &r.job_id, offered);
        forged.audit(Event::ResultReleased { receipt: r.clone() }, 3_500).unwrap();
    }
    assert_eq!(forged.spent("d", "x").unwrap().consumer, 0.0);
    assert!(
        all_checks(&forged, &c).is_err(),
        "a party log rewritten from its first entry, with none of the three charges the \
         coordinator's receipts record (ρ = 0.9 in all), passes every check"
    );
}

/// A recorded head is not signed by the writer of the log it anchors. A party's signed log
/// records, for an offer, a coordinator head the coordinator never had: the honest
/// coordinator's log then fails against it with "history rewritten or truncated", while the
/// party's own log verifies, and an auditor cannot tell which of the two lied.
#[test]
fn a_party_can_make_an_honest_coordinators_log_fail() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("p.db"));
    let mut c = Coordinator::default();
    released_job(&s, &mut c, "a", 0.1);
    let offered = c.offer("b");
    let claimed = Head { seq: offered.seq, hash: "ab".repeat(32), signature: None };
    accept(&s, "b", claimed);
    let party_log = s.audit_log().unwrap();
    audit_verify(&party_log, &c.log).unwrap();
    // The made-up head carries no coordinator signature: the failure names the party's record.
    let blame = audit_verify(&c.log, &party_log).unwrap_err();
    assert!(blame.contains("the party's record is false"), "{blame}");
}

/// The converse: the coordinator writes into a receipt a head for a party that the party never
/// sent; the honest party's untouched log fails against the coordinator's, which verifies.
#[test]
fn a_coordinator_can_make_an_honest_partys_log_fail() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("p.db"));
    let mut c = Coordinator::default();
    let offered = c.offer("a");
    let real = accept(&s, "a", offered).unwrap();
    s.reserve_and_log(&charge("a", 0.1), 2_500).unwrap().unwrap();
    let r = receipt("a", 0.1, Some(Head { seq: real.seq, hash: "cd".repeat(32), signature: None }));
    c.append(Event::ResultReleased { receipt: r.clone() });
    s.audit(Event::ResultReleased { receipt: r }, 3_500).unwrap();
    let party_log = s.audit_log().unwrap();
    audit_verify(&c.log, &party_log).unwrap();
    s.check_ledger().unwrap();
    // The made-up head carries no signature of the party: the failure names the coordinator's.
    let blame = audit_verify(&party_log, &c.log).unwrap_err();
    assert!(blame.contains("the coordinator's record is false"), "{blame}");
}
