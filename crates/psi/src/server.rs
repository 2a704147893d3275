//! The server role (party B): it learns the client's set size and nothing else.
//!
//! ```text
//!  new ──► ExpectClientHello ──Hello──► ExpectClientKeys ──BlindedKeys × ⌈|A|/β⌉──┐
//!            (sends: Hello)              (sends: Replies per batch,               │
//!                                         in mode IntersectionToClient)           │
//!    ┌────────────────────────────────────────────────────────────────────────────┘
//!    └──► SendReplies (mode SizeOnly: all replies, shuffled) ──► SendOwnKeys ──► Finished
//! ```
//!
//! In mode [`Mode::IntersectionToClient`] each batch of the client's keys is answered at once,
//! in the client's order, and nothing is held. In mode [`Mode::SizeOnly`] the server keeps the
//! digests of the client's double-blinded keys (16 bytes each) until the last batch, shuffles
//! them uniformly with the caller's RNG, and sends them in batches: a shuffle within batches
//! only would tell the client how many of each batch's keys are in the intersection.
//!
//! The server's own keys go out in an order drawn uniformly at construction (4 bytes per key),
//! so the client learns nothing from where in the stream its matches fall; they are blinded
//! lazily, one batch per [`Server::poll_transmit`].

use std::collections::VecDeque;

use rand_core::CryptoRngCore;

use crate::Status;
use crate::error::{Error, Result};
use crate::group::{self, BlindingKey};
use crate::keys::KeySet;
use crate::message::{ClientMessage, KeyDigest, MAX_PAYLOAD_WIDTH, ServerMessage};
use crate::params::{Mode, PsiParams};

/// Waiting for the client's hello.
struct ExpectClientHello;

/// The client's blinded keys are coming in.
struct ExpectClientKeys {
    client_count: u64,
    received: u64,
    next_batch: u32,
    /// Mode [`Mode::SizeOnly`]: every reply so far, to be shuffled.
    held: Vec<KeyDigest>,
}

/// Mode [`Mode::SizeOnly`]: the shuffled replies are going out.
struct SendReplies {
    client_count: u64,
    replies: Vec<KeyDigest>,
    sent: usize,
    next_batch: u32,
}

/// The server's own blinded keys are going out.
struct SendOwnKeys {
    client_count: u64,
    sent: usize,
    next_batch: u32,
}

enum State {
    ExpectClientHello(ExpectClientHello),
    ExpectClientKeys(ExpectClientKeys),
    SendReplies(SendReplies),
    SendOwnKeys(SendOwnKeys),
    Finished(ServerOutput),
    Aborted(Error),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::ExpectClientHello(_) => "expecting the client's hello",
            State::ExpectClientKeys(_) => "expecting the client's keys",
            State::SendReplies(_) => "sending replies",
            State::SendOwnKeys(_) => "sending its keys",
            State::Finished(_) => "finished",
            State::Aborted(_) => "aborted",
        }
    }
}

/// What the server learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOutput {
    client_count: u64,
}

impl ServerOutput {
    /// The client's set size.
    pub fn client_count(&self) -> u64 {
        self.client_count
    }
}

/// Opaque bytes to send with each of the server's keys, `width` bytes per key in the key
/// set's order (the join's encrypted values).
#[derive(Clone)]
pub struct Payloads {
    width: usize,
    bytes: Vec<u8>,
}

impl Payloads {
    /// `bytes` holds `width` bytes per key, 1 ≤ width ≤ [`MAX_PAYLOAD_WIDTH`].
    pub fn new(width: usize, bytes: Vec<u8>) -> Result<Self> {
        if width == 0 || width > MAX_PAYLOAD_WIDTH as usize || bytes.len() % width != 0 {
            return Err(Error::InvalidParameters("payloads of 1 to 65,536 bytes each"));
        }
        Ok(Self { width, bytes })
    }

    fn len(&self) -> usize {
        self.bytes.len() / self.width
    }

    fn get(&self, position: usize) -> &[u8] {
        &self.bytes[position * self.width..(position + 1) * self.width]
    }
}

/// The server's side (party B) of one exchange.
pub struct Server {
    params: PsiParams,
    key: BlindingKey,
    /// Dropped (and zeroized) once the last of the server's keys is out.
    keys: Option<KeySet>,
    /// What goes with each key, if anything.
    payloads: Option<Payloads>,
    /// The order the server's keys go out in: a uniform permutation of their positions.
    order: Vec<u32>,
    state: State,
    outbox: VecDeque<ServerMessage>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("session", &self.params.session())
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Prepares to answer a client over `keys` (normalised under the parameters' policy), with
    /// a blinding scalar and the order of its keys drawn fresh from `rng`.
    pub fn new(params: &PsiParams, keys: KeySet, rng: &mut impl CryptoRngCore) -> Result<Self> {
        if keys.policy() != params.policy() {
            return Err(Error::KeySetPolicy { keys: keys.policy(), params: params.policy() });
        }
        let len = u32::try_from(keys.len()).expect("a key set holds at most u32::MAX keys");
        let mut order: Vec<u32> = (0..len).collect();
        group::shuffle(&mut order, rng);
        Ok(Self {
            params: *params,
            key: BlindingKey::generate(rng),
            keys: Some(keys),
            payloads: None,
            order,
            state: State::ExpectClientHello(ExpectClientHello),
            outbox: VecDeque::new(),
        })
    }

    /// As [`Self::new`], each key sent with its payload (mode
    /// [`Mode::IntersectionToClient`] only, so the client can tell which of its keys a payload
    /// belongs to).
    pub fn with_payloads(
        params: &PsiParams,
        keys: KeySet,
        payloads: Payloads,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        if params.mode() != Mode::IntersectionToClient {
            return Err(Error::InvalidParameters("payloads need mode IntersectionToClient"));
        }
        if payloads.len() != keys.len() {
            return Err(Error::InvalidParameters("one payload per key"));
        }
        let mut server = Self::new(params, keys, rng)?;
        server.payloads = Some(payloads);
        Ok(server)
    }

    /// Takes a message from the client; `rng` shuffles the replies in mode
    /// [`Mode::SizeOnly`]. A message for another session is refused with
    /// [`Error::WrongSession`] and changes nothing; any other fault ends the exchange, and the
    /// server sends nothing further.
    ///
    /// In mode [`Mode::IntersectionToClient`] a batch's replies are queued at once: a driver
    /// that sends what [`Self::poll_transmit`] gives after each message holds one batch.
    pub fn handle_message(
        &mut self,
        message: ClientMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
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
        match self.step(state, message, rng) {
            Ok(next) => {
                self.state = next;
                Ok(())
            }
            Err(e) => {
                self.outbox.clear();
                self.keys = None;
                self.state = State::Aborted(e.clone());
                Err(e)
            }
        }
    }

    fn step(
        &mut self,
        state: State,
        message: ClientMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<State> {
        match (state, message) {
            (State::ExpectClientHello(_), ClientMessage::Hello { mode, policy, count, .. }) => {
                if mode != self.params.mode() {
                    return Err(Error::ModeMismatch { ours: self.params.mode(), theirs: mode });
                }
                if policy != self.params.policy() {
                    return Err(Error::PolicyMismatch {
                        ours: self.params.policy(),
                        theirs: policy,
                    });
                }
                self.outbox.push_back(ServerMessage::Hello {
                    session: self.params.session(),
                    count: self.order.len() as u64,
                });
                let expect = ExpectClientKeys {
                    client_count: count,
                    received: 0,
                    next_batch: 0,
                    held: Vec::new(),
                };
                Ok(self.after_client_keys(expect, rng))
            }
            (State::ExpectClientKeys(mut s), ClientMessage::BlindedKeys { batch, keys, .. }) => {
                if batch != s.next_batch {
                    return Err(Error::OutOfOrder {
                        stream: "client blinded keys",
                        expected: s.next_batch,
                        got: batch,
                    });
                }
                if s.received + keys.len() as u64 > s.client_count {
                    return Err(Error::TooManyItems {
                        stream: "client blinded keys",
                        announced: s.client_count,
                    });
                }
                let digests =
                    group::reblind(&self.key, &keys).map_err(|index| Error::InvalidPoint {
                        stream: "client blinded keys",
                        batch,
                        index: index as u32,
                    })?;
                s.received += keys.len() as u64;
                s.next_batch += 1;
                match self.params.mode() {
                    Mode::IntersectionToClient => {
                        self.outbox.push_back(ServerMessage::Replies {
                            session: self.params.session(),
                            batch,
                            digests,
                        });
                    }
                    Mode::SizeOnly => s.held.extend_from_slice(&digests),
                }
                Ok(self.after_client_keys(s, rng))
            }
            (state, message) => {
                Err(Error::UnexpectedMessage { expected: state.name(), got: message.name() })
            }
        }
    }

    /// Once the client's keys are all in: in mode [`Mode::SizeOnly`], shuffles the replies to
    /// send them; then the server's own keys.
    fn after_client_keys(
        &mut self,
        mut s: ExpectClientKeys,
        rng: &mut impl CryptoRngCore,
    ) -> State {
        if s.received < s.client_count {
            return State::ExpectClientKeys(s);
        }
        match self.params.mode() {
            Mode::SizeOnly if !s.held.is_empty() => {
                group::shuffle(&mut s.held, rng);
                State::SendReplies(SendReplies {
                    client_count: s.client_count,
                    replies: s.held,
                    sent: 0,
                    next_batch: 0,
                })
            }
            _ => self.send_own_keys(s.client_count),
        }
    }

    fn send_own_keys(&mut self, client_count: u64) -> State {
        if self.order.is_empty() {
            self.keys = None;
            return State::Finished(ServerOutput { client_count });
        }
        State::SendOwnKeys(SendOwnKeys { client_count, sent: 0, next_batch: 0 })
    }

    /// The next message to send, if any. Replies come out of what is held; each call that
    /// sends the server's own keys blinds one batch of them (in parallel). Nothing comes out
    /// once the exchange has ended in a fault.
    pub fn poll_transmit(&mut self) -> Option<ServerMessage> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        let batch_size = self.params.batch_size() as usize;
        let session = self.params.session();
        match &mut self.state {
            State::SendReplies(s) => {
                let end = (s.sent + batch_size).min(s.replies.len());
                let digests = s.replies[s.sent..end].to_vec();
                let message = ServerMessage::Replies { session, batch: s.next_batch, digests };
                s.sent = end;
                s.next_batch += 1;
                if s.sent == s.replies.len() {
                    let client_count = s.client_count;
                    self.state = self.send_own_keys(client_count);
                }
                Some(message)
            }
            State::SendOwnKeys(s) => {
                let keys = self.keys.as_ref()?;
                let end = (s.sent + batch_size).min(self.order.len());
                let order = &self.order[s.sent..end];
                let blinded =
                    group::blind(&self.key, &session, order.len(), |i| keys.key(order[i] as usize));
                let batch = s.next_batch;
                let message = match &self.payloads {
                    None => ServerMessage::BlindedKeys { session, batch, keys: blinded },
                    Some(p) => ServerMessage::KeysWithPayloads {
                        session,
                        batch,
                        keys: blinded,
                        width: p.width as u32,
                        payloads: order.iter().flat_map(|&i| p.get(i as usize)).copied().collect(),
                    },
                };
                s.sent = end;
                s.next_batch += 1;
                if s.sent == self.order.len() {
                    let client_count = s.client_count;
                    self.keys = None;
                    self.payloads = None;
                    self.state = State::Finished(ServerOutput { client_count });
                }
                Some(message)
            }
            _ => None,
        }
    }

    /// Where the exchange stands. The server has finished once its last message is out.
    pub fn status(&self) -> Status {
        match &self.state {
            State::Finished(_) if !self.outbox.is_empty() => Status::InProgress("sending"),
            State::Finished(_) => Status::Finished,
            State::Aborted(e) => Status::Aborted(e.clone()),
            other => Status::InProgress(other.name()),
        }
    }

    /// What the server learned, once the exchange has finished.
    pub fn output(&self) -> Option<&ServerOutput> {
        match &self.state {
            State::Finished(output) => Some(output),
            _ => None,
        }
    }
}
