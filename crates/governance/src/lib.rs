//! Governance for veil, with no I/O: what a data owner allows, what it has spent, and what
//! everyone can verify afterwards. Storage sits behind traits; the services keep it in SQLite.
//!
//! - [`scan`]: proposes column tags by looking at values (national ids, phones, e-mail, cards,
//!   dates of birth, names), reporting counts, never values.
//! - [`policy`]: grades, tags and owner policies, and their evaluation for one job, naming the
//!   rule that refuses.
//! - [`budget`]: zCDP budgets, caps, the (ε, δ) conversion, and the ledger trait whose
//!   reservation is atomic and never refunded.
//! - [`decision`]: a party's signed answer to an offer, and the three kinds of no.
//! - [`audit`]: the append-only, hash-chained, signed log and its verification.
//! - [`audit_store`]: appending to a log behind a storage trait (SQLite with `sqlite`).
//! - [`quota`]: consumers' job and fetch quotas over a 24-hour window.
//! - [`receipt`]: release receipts and result fingerprints.

pub mod audit;
pub mod audit_store;
pub mod budget;
pub mod decision;
pub mod policy;
pub mod quota;
pub mod receipt;
pub mod scan;

pub use decision::{Decline, DeclineKind};
pub use policy::{DatasetGovernance, Denial, Grade, Policy, Request, Rule};
pub use receipt::Receipt;
