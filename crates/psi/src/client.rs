//! The client role (party A): it learns the intersection's size, or its own keys in it.
//!
//! ```text
//!  new ──► ExpectServerHello ──Hello──► ExpectReplies ──Replies × ⌈|A|/β⌉──► ExpectServerKeys
//!  (sends Hello, then its blinded keys                              │
//!   batch by batch as poll_transmit is called)                      └──BlindedKeys × ⌈|B|/β⌉──► Finished
//! ```
//!
//! The client blinds its keys lazily, one batch per [`Client::poll_transmit`], and drops its
//! key set once the last batch is out. It keeps one [`KeyDigest`] (16 bytes) and a position
//! (4 bytes) per key of its own, sorted, and streams the server's blinded keys through them
//! batch by batch; it never holds the server's set. Two different keys share a digest with
//! probability at most `|A|·|B|·2^-125` (see the digest's definition), so a false match is
//! out of reach at any size this crate accepts.

use std::collections::VecDeque;

use rand_core::CryptoRngCore;
use rayon::prelude::*;

use crate::error::{DecodeError, Error, Result};
use crate::group::{self, BlindingKey};
use crate::keys::KeySet;
use crate::message::{BlindedKey, ClientMessage, KeyDigest, ServerMessage};
use crate::params::{Mode, PsiParams};
use crate::{Membership, Status};

/// One of the client's keys after both blindings: its digest and its position in the client's
/// order (meaningful in [`Mode::IntersectionToClient`] only).
#[derive(Clone, Copy)]
struct Entry {
    digest: KeyDigest,
    position: u32,
}

/// The client's keys are going out; the server's hello has not come.
struct ExpectServerHello;

/// The server's double-blinded replies to the client's keys are coming in.
struct ExpectReplies {
    server_count: u64,
    next_batch: u32,
    entries: Vec<Entry>,
}

/// The replies are in and sorted; the server's blinded keys are coming in.
struct ExpectServerKeys {
    server_count: u64,
    next_batch: u32,
    received: u64,
    /// The client's entries, sorted by digest.
    table: Vec<Entry>,
    /// Which entries a server key matched.
    matched: Membership,
}

enum State {
    ExpectServerHello(ExpectServerHello),
    ExpectReplies(ExpectReplies),
    ExpectServerKeys(ExpectServerKeys),
    Finished(ClientOutput),
    Aborted(Error),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::ExpectServerHello(_) => "expecting the server's hello",
            State::ExpectReplies(_) => "expecting replies",
            State::ExpectServerKeys(_) => "expecting the server's keys",
            State::Finished(_) => "finished",
            State::Aborted(_) => "aborted",
        }
    }
}

/// What the client learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOutput {
    server_count: u64,
    intersection_size: u64,
    members: Option<Membership>,
}

impl ClientOutput {
    /// The server's set size.
    pub fn server_count(&self) -> u64 {
        self.server_count
    }

    /// The intersection's size.
    pub fn intersection_size(&self) -> u64 {
        self.intersection_size
    }

    /// In [`Mode::IntersectionToClient`], which of the client's keys (by position in its
    /// [`KeySet`]) are in the intersection; `None` in [`Mode::SizeOnly`].
    pub fn members(&self) -> Option<&Membership> {
        self.members.as_ref()
    }
}

/// A server key's payload that matched one of the client's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadMatch {
    /// The client's key, by position in its [`KeySet`].
    pub position: u32,
    /// The payload the server sent with its key.
    pub payload: Vec<u8>,
}

/// The keys still to blind and send.
struct Outgoing {
    keys: Option<KeySet>,
    sent: usize,
    next_batch: u32,
}

/// The client's side (party A) of one exchange.
pub struct Client {
    params: PsiParams,
    key: BlindingKey,
    count: usize,
    outgoing: Outgoing,
    state: State,
    outbox: VecDeque<ClientMessage>,
    /// Payloads matched since the caller last took them.
    matches: Vec<PayloadMatch>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.params.session())
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts an exchange over `keys` (normalised under the parameters' policy) with a blinding
    /// scalar drawn fresh from `rng`, and queues the hello.
    pub fn new(params: &PsiParams, keys: KeySet, rng: &mut impl CryptoRngCore) -> Result<Self> {
        if keys.policy() != params.policy() {
            return Err(Error::KeySetPolicy { keys: keys.policy(), params: params.policy() });
        }
        let count = keys.len();
        let hello = ClientMessage::Hello {
            session: params.session(),
            mode: params.mode(),
            policy: params.policy(),
            count: count as u64,
        };
        Ok(Self {
            params: *params,
            key: BlindingKey::generate(rng),
            count,
            outgoing: Outgoing { keys: Some(keys), sent: 0, next_batch: 0 },
            state: State::ExpectServerHello(ExpectServerHello),
            outbox: VecDeque::from([hello]),
            matches: Vec::new(),
        })
    }

    /// The next message to send, if any. Each call past the hello blinds one batch of keys (in
    /// parallel), so a driver that sends each message before asking for the next holds one
    /// batch at a time. Nothing comes out once the exchange has ended.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        if matches!(self.state, State::Aborted(_)) {
            return None;
        }
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        let keys = self.outgoing.keys.as_ref()?;
        let start = self.outgoing.sent;
        let len = (self.params.batch_size() as usize).min(keys.len() - start);
        if len == 0 {
            self.outgoing.keys = None;
            return None;
        }
        let blinded = group::blind(&self.key, &self.params.session(), len, |i| keys.key(start + i));
        let message = ClientMessage::BlindedKeys {
            session: self.params.session(),
            batch: self.outgoing.next_batch,
            keys: blinded,
        };
        self.outgoing.sent += len;
        self.outgoing.next_batch += 1;
        if self.outgoing.sent == self.count {
            self.outgoing.keys = None; // zeroized on drop
        }
        Some(message)
    }

    /// Takes a message from the server. A message for another session is refused with
    /// [`Error::WrongSession`] and changes nothing; any other fault ends the exchange, and the
    /// client sends nothing further.
    pub fn handle_message(&mut self, message: ServerMessage) -> Result<()> {
        if matches!(self.state, State::Finished(_) | State::Aborted(_)) {
            return Err(Error::Ended);
        }
        if message.session() != self.params.session() {
            return Err(Error::WrongSession {
                expected: self.params.session(),
                got: message.session(),
            });
        }
        let state = std::mem::replace(&mut self.state, State::Aborted(Error::Ended));
        match self.step(state, message) {
            Ok(next) => {
                self.state = next;
                Ok(())
            }
            Err(e) => {
                self.outbox.clear();
                self.outgoing.keys = None;
                self.state = State::Aborted(e.clone());
                Err(e)
            }
        }
    }

    fn step(&mut self, state: State, message: ServerMessage) -> Result<State> {
        match (state, message) {
            (State::ExpectServerHello(_), ServerMessage::Hello { count, .. }) => {
                let expect = ExpectReplies {
                    server_count: count,
                    next_batch: 0,
                    entries: Vec::with_capacity(self.count),
                };
                self.after_replies(expect)
            }
            (State::ExpectReplies(mut s), ServerMessage::Replies { batch, digests, .. }) => {
                check_batch("replies", s.next_batch, batch)?;
                let received = s.entries.len();
                if received + digests.len() > self.outgoing.sent {
                    return Err(Error::TooManyItems {
                        stream: "replies",
                        announced: self.outgoing.sent as u64,
                    });
                }
                s.entries.extend(digests.into_iter().enumerate().map(|(i, digest)| Entry {
                    digest,
                    // At most `count` entries, and the count fits in u32 (`MAX_SET_SIZE`).
                    position: (received + i) as u32,
                }));
                s.next_batch += 1;
                self.after_replies(s)
            }
            (State::ExpectServerKeys(mut s), ServerMessage::BlindedKeys { batch, keys, .. }) => {
                check_batch("server blinded keys", s.next_batch, batch)?;
                if s.received + keys.len() as u64 > s.server_count {
                    return Err(Error::TooManyItems {
                        stream: "server blinded keys",
                        announced: s.server_count,
                    });
                }
                self.absorb_server_keys(&mut s, batch, &keys, None)?;
                s.received += keys.len() as u64;
                s.next_batch += 1;
                Ok(self.after_server_keys(s))
            }
            (
                State::ExpectServerKeys(mut s),
                ServerMessage::KeysWithPayloads { batch, keys, width, payloads, .. },
            ) if self.params.mode() == Mode::IntersectionToClient => {
                check_batch("server blinded keys", s.next_batch, batch)?;
                if width == 0 || payloads.len() != width as usize * keys.len() {
                    return Err(Error::Decode(DecodeError::Invalid("payload width")));
                }
                if s.received + keys.len() as u64 > s.server_count {
                    return Err(Error::TooManyItems {
                        stream: "server blinded keys",
                        announced: s.server_count,
                    });
                }
                self.absorb_server_keys(&mut s, batch, &keys, Some((width as usize, &payloads)))?;
                s.received += keys.len() as u64;
                s.next_batch += 1;
                Ok(self.after_server_keys(s))
            }
            (state, message) => {
                Err(Error::UnexpectedMessage { expected: state.name(), got: message.name() })
            }
        }
    }

    /// Once every key has its reply, sorts them into the table the server's keys are looked
    /// up in.
    fn after_replies(&self, s: ExpectReplies) -> Result<State> {
        if s.entries.len() < self.count {
            return Ok(State::ExpectReplies(s));
        }
        let mut table = s.entries;
        table.par_sort_unstable_by_key(|e| e.digest);
        let repeats = table.windows(2).filter(|w| w[0].digest == w[1].digest).count();
        if repeats > 0 {
            return Err(Error::DuplicateReplies { count: repeats as u64 });
        }
        let matched = Membership::empty(table.len());
        let next = ExpectServerKeys {
            server_count: s.server_count,
            next_batch: 0,
            received: 0,
            table,
            matched,
        };
        Ok(self.after_server_keys(next))
    }

    /// Blinds a batch of the server's keys again and marks the entries they match.
    fn absorb_server_keys(
        &mut self,
        s: &mut ExpectServerKeys,
        batch: u32,
        keys: &[BlindedKey],
        payloads: Option<(usize, &[u8])>,
    ) -> Result<()> {
        let digests = group::reblind(&self.key, keys).map_err(|index| Error::InvalidPoint {
            stream: "server blinded keys",
            batch,
            index: index as u32,
        })?;
        let table = &s.table;
        let hits: Vec<(usize, usize)> = digests
            .par_iter()
            .enumerate()
            .filter_map(|(i, d)| table.binary_search_by_key(d, |e| e.digest).ok().map(|h| (i, h)))
            .collect();
        for (i, hit) in hits {
            if !s.matched.insert(hit) {
                return Err(Error::DuplicatePeerKey { batch });
            }
            if let Some((width, bytes)) = payloads {
                let payload = bytes[i * width..(i + 1) * width].to_vec();
                self.matches.push(PayloadMatch { position: table[hit].position, payload });
            }
        }
        Ok(())
    }

    fn after_server_keys(&self, s: ExpectServerKeys) -> State {
        if s.received < s.server_count {
            return State::ExpectServerKeys(s);
        }
        let intersection_size = s.matched.count() as u64;
        let members = match self.params.mode() {
            Mode::SizeOnly => None,
            Mode::IntersectionToClient => {
                let mut members = Membership::empty(self.count);
                for hit in s.matched.iter() {
                    members.insert(s.table[hit].position as usize);
                }
                Some(members)
            }
        };
        State::Finished(ClientOutput { server_count: s.server_count, intersection_size, members })
    }

    /// The payloads of the server's keys that matched since the last call, each with the
    /// position of the client's key it matched (payloads come with mode
    /// [`Mode::IntersectionToClient`] only). A caller takes them after each message, so it
    /// holds at most one batch's.
    pub fn take_matches(&mut self) -> Vec<PayloadMatch> {
        std::mem::take(&mut self.matches)
    }

    /// Where the exchange stands.
    pub fn status(&self) -> Status {
        match &self.state {
            State::Finished(_) => Status::Finished,
            State::Aborted(e) => Status::Aborted(e.clone()),
            other => Status::InProgress(other.name()),
        }
    }

    /// What the client learned, once the exchange has finished.
    pub fn output(&self) -> Option<&ClientOutput> {
        match &self.state {
            State::Finished(output) => Some(output),
            _ => None,
        }
    }
}

fn check_batch(stream: &'static str, expected: u32, got: u32) -> Result<()> {
    if got == expected { Ok(()) } else { Err(Error::OutOfOrder { stream, expected, got }) }
}
