//! Private set intersection for veil, with no I/O.
//!
//! Two parties each hold a set of keys (patient ids, e-mail addresses…) and want the size of
//! the sets' intersection, or for one of them its keys in it, without showing each other
//! their keys. This crate is the core of that exchange: ECDH-PSI over Ristretto255, as two
//! state machines, one per role. It performs no networking and draws no OS randomness:
//! messages come in through `handle_message`, go out through `poll_transmit`, and the CSPRNG
//! is an argument. The services run it between two parties through the coordinator's relay.
//!
//! # The exchange
//!
//! Each party draws a secret scalar fresh for the job (`a` for the client A, `b` for the
//! server B) and hashes each normalised key to the group under a label with the job's
//! [`Session`], so blinded keys from one job are useless in another.
//!
//! ```text
//!  A (Client)                                          B (Server)
//!  Hello { mode, key policy, |A| }  ─────────────────►
//!                                   ◄─────────────────  Hello { |B| }
//!  BlindedKeys { a·H(x) } × ⌈|A|/β⌉ ─────────────────►
//!                                   ◄─────────────────  Replies { digest(b·a·H(x)) } × ⌈|A|/β⌉
//!                                   ◄─────────────────  BlindedKeys { b·H(y) } × ⌈|B|/β⌉
//!  counts digest(a·b·H(y)) among the replies
//! ```
//!
//! Every stream goes in numbered batches of at most β = [`MAX_BATCH`] keys, each blinded in
//! parallel on rayon's pool when it is polled, so neither party ever holds the other's blinded
//! set: the client keeps 20 bytes per key of its own (a 16-byte digest and a position), the
//! server 4 bytes per key of its own, plus, in mode [`Mode::SizeOnly`], the 16-byte digests of
//! the client's keys it shuffles.
//!
//! # Who learns what
//!
//! | mode | the client A learns | the server B learns |
//! | --- | --- | --- |
//! | [`Mode::SizeOnly`] (default) | \|B\| and \|A ∩ B\| | \|A\| |
//! | [`Mode::IntersectionToClient`] | \|B\| and which of its keys are in A ∩ B | \|A\| |
//!
//! In mode [`Mode::SizeOnly`] B returns A's double-blinded keys in a uniformly random order,
//! so A cannot link a match to its key; in mode [`Mode::IntersectionToClient`] in A's order.
//! B's own keys go out in a uniformly random order either way. The guarantees hold against a
//! semi-honest peer under the decisional Diffie–Hellman assumption with the hash to the group
//! as a random oracle. A peer that deviates can make the result wrong, and a client can always
//! probe with a small set (the mode gives the size of the intersection with whatever set it
//! sends); how small a set a party accepts is policy, outside this crate. What the parties
//! check of each other: sessions, mode and key policy, batch order, counts against those
//! announced, every point's validity, and that the server's keys and replies do not repeat.
//!
//! # Cost
//!
//! Per key of its own, each party does one hash to the group, two constant-time scalar
//! multiplications, one decompression and two shares of a batched compression; on the wire a
//! key costs 32 bytes from its owner, and a key of the client 16 more back from the server.
//! `examples/psi_bench.rs` measures it.
//!
//! Layout:
//! - [`params`]: the session, the mode, the key policy, the batch size.
//! - [`KeySet`]: a party's keys, normalised and checked (no empty key, no repeat).
//! - [`client`] and [`server`]: the two roles.
//! - [`message`]: the messages and their strict binary encoding.
//! - `group`: hashing to Ristretto255, blinding, digests, the shuffle.

mod codec;
mod error;
mod group;
mod keys;
mod membership;

pub mod client;
pub mod join;
pub mod message;
pub mod paillier;
pub mod params;
pub mod server;

pub use client::{Client, ClientOutput, PayloadMatch};
pub use error::{DecodeError, Error, Result};
pub use keys::KeySet;
pub use membership::Membership;
pub use message::{BlindedKey, ClientMessage, KeyDigest, ServerMessage};
pub use params::{KeyPolicy, MAX_BATCH, MAX_SET_SIZE, Mode, PsiParams, Session};
pub use server::{Payloads, Server, ServerOutput};

/// Where a party's exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Under way, at the stage named.
    InProgress(&'static str),
    /// Done: its output is ready.
    Finished,
    /// Stopped, for the reason given; it sends nothing further.
    Aborted(Error),
}
