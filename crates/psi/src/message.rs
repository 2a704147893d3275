//! The messages and their binary encoding.
//!
//! Every message is `version (1) ‖ tag (1) ‖ session (32)` followed by its fields; integers
//! are little-endian. Client tags are 1 and 2, server tags 3 to 5, so one role's message never
//! decodes as the other's.
//!
//! | message | tag | fields |
//! | --- | --- | --- |
//! | [`ClientMessage::Hello`] | 1 | mode `u8`, key policy `u8` (bit 0 trim, bit 1 case fold), count `u64` |
//! | [`ClientMessage::BlindedKeys`] | 2 | batch `u32`, n `u32`, n × 32-byte point |
//! | [`ServerMessage::Hello`] | 3 | count `u64` |
//! | [`ServerMessage::Replies`] | 4 | batch `u32`, n `u32`, n × 16-byte digest |
//! | [`ServerMessage::BlindedKeys`] | 5 | batch `u32`, n `u32`, n × 32-byte point |
//! | [`ServerMessage::KeysWithPayloads`] | 6 | batch `u32`, n `u32`, n × 32-byte point, width `u32`, n × width bytes |
//!
//! A batch holds 1 to [`MAX_BATCH`] items; a count is at most [`MAX_SET_SIZE`]. Points are
//! only length-checked here; whether they are valid group elements is checked, in parallel,
//! by the party that multiplies them.

use std::fmt;

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::params::{KeyPolicy, MAX_BATCH, MAX_SET_SIZE, Mode, Session};

/// The version byte every encoded message starts with.
pub const WIRE_VERSION: u8 = 1;

/// Bytes before a message's own fields: version, tag and session.
const HEADER_LEN: usize = 34;

const TAG_CLIENT_HELLO: u8 = 1;
const TAG_CLIENT_KEYS: u8 = 2;
const TAG_SERVER_HELLO: u8 = 3;
const TAG_SERVER_REPLIES: u8 = 4;
const TAG_SERVER_KEYS: u8 = 5;
const TAG_SERVER_KEYS_WITH_PAYLOADS: u8 = 6;

/// The most bytes a key's payload may have.
pub const MAX_PAYLOAD_WIDTH: u32 = 1 << 16;

/// A key blinded by one or both parties' scalars: a compressed Ristretto255 point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlindedKey(pub [u8; 32]);

impl fmt::Debug for BlindedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindedKey(..)")
    }
}

/// The digest of a key blinded by both parties' scalars: the first 16 bytes of its encoding
/// (see the collision bound in [`crate::client`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyDigest(pub [u8; 16]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// What the client (party A) sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Opens the exchange: the terms the client runs under, and its set size.
    Hello {
        /// The job's session.
        session: Session,
        /// What the client is to learn; the server refuses another mode than its own.
        mode: Mode,
        /// How the client normalised its keys; the server refuses another policy.
        policy: KeyPolicy,
        /// The client's set size.
        count: u64,
    },
    /// A batch of the client's keys blinded by its scalar, in its order.
    BlindedKeys {
        /// The job's session.
        session: Session,
        /// The batch's number, from zero.
        batch: u32,
        /// `a·H(x)` for each key `x` of the batch.
        keys: Vec<BlindedKey>,
    },
}

/// What the server (party B) sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// Answers the client's hello with the server's set size.
    Hello {
        /// The job's session.
        session: Session,
        /// The server's set size.
        count: u64,
    },
    /// A batch of the client's keys blinded again by the server's scalar, as digests: in the
    /// client's order (mode [`Mode::IntersectionToClient`]) or in a uniformly random order
    /// (mode [`Mode::SizeOnly`]).
    Replies {
        /// The job's session.
        session: Session,
        /// The batch's number, from zero.
        batch: u32,
        /// Digests of `b·a·H(x)`.
        digests: Vec<KeyDigest>,
    },
    /// A batch of the server's keys blinded by its scalar, in a uniformly random order.
    BlindedKeys {
        /// The job's session.
        session: Session,
        /// The batch's number, from zero.
        batch: u32,
        /// `b·H(y)` for each key `y` of the batch.
        keys: Vec<BlindedKey>,
    },
    /// As [`ServerMessage::BlindedKeys`], each key with an opaque payload of `width` bytes
    /// (mode [`Mode::IntersectionToClient`] only; the join's encrypted values).
    KeysWithPayloads {
        /// The job's session.
        session: Session,
        /// The batch's number, from zero.
        batch: u32,
        /// `b·H(y)` for each key `y` of the batch.
        keys: Vec<BlindedKey>,
        /// Bytes per payload, 1 to [`MAX_PAYLOAD_WIDTH`].
        width: u32,
        /// The keys' payloads, in the keys' order.
        payloads: Vec<u8>,
    },
}

impl ClientMessage {
    /// The session the message names.
    pub fn session(&self) -> Session {
        match self {
            ClientMessage::Hello { session, .. } | ClientMessage::BlindedKeys { session, .. } => {
                *session
            }
        }
    }

    /// The message's kind, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "client hello",
            ClientMessage::BlindedKeys { .. } => "client blinded keys",
        }
    }

    /// The length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                ClientMessage::Hello { .. } => 10,
                ClientMessage::BlindedKeys { keys, .. } => 8 + 32 * keys.len(),
            }
    }

    /// The message's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len());
        match self {
            ClientMessage::Hello { session, mode, policy, count } => {
                header(&mut w, TAG_CLIENT_HELLO, session);
                w.u8(mode.to_byte());
                w.u8(policy.to_byte());
                w.u64(*count);
            }
            ClientMessage::BlindedKeys { session, batch, keys } => {
                header(&mut w, TAG_CLIENT_KEYS, session);
                batch_header(&mut w, *batch, keys.len());
                keys.iter().for_each(|k| w.bytes(&k.0));
            }
        }
        w.finish()
    }

    /// Decodes a message, checking every length against its limit and the bytes present, and
    /// refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let (tag, session) = read_header(&mut r)?;
        let message = match tag {
            TAG_CLIENT_HELLO => {
                let mode = Mode::from_byte(r.u8("mode")?).ok_or(DecodeError::Invalid("mode"))?;
                let policy = KeyPolicy::from_byte(r.u8("key policy")?)
                    .ok_or(DecodeError::Invalid("key policy"))?;
                let count = read_set_count(&mut r)?;
                ClientMessage::Hello { session, mode, policy, count }
            }
            TAG_CLIENT_KEYS => {
                let (batch, keys) = read_points(&mut r)?;
                ClientMessage::BlindedKeys { session, batch, keys }
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

impl ServerMessage {
    /// The session the message names.
    pub fn session(&self) -> Session {
        match self {
            ServerMessage::Hello { session, .. }
            | ServerMessage::Replies { session, .. }
            | ServerMessage::BlindedKeys { session, .. }
            | ServerMessage::KeysWithPayloads { session, .. } => *session,
        }
    }

    /// The message's kind, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ServerMessage::Hello { .. } => "server hello",
            ServerMessage::Replies { .. } => "server replies",
            ServerMessage::BlindedKeys { .. } => "server blinded keys",
            ServerMessage::KeysWithPayloads { .. } => "server blinded keys with payloads",
        }
    }

    /// The length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                ServerMessage::Hello { .. } => 8,
                ServerMessage::Replies { digests, .. } => 8 + 16 * digests.len(),
                ServerMessage::BlindedKeys { keys, .. } => 8 + 32 * keys.len(),
                ServerMessage::KeysWithPayloads { keys, payloads, .. } => {
                    12 + 32 * keys.len() + payloads.len()
                }
            }
    }

    /// The message's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len());
        match self {
            ServerMessage::Hello { session, count } => {
                header(&mut w, TAG_SERVER_HELLO, session);
                w.u64(*count);
            }
            ServerMessage::Replies { session, batch, digests } => {
                header(&mut w, TAG_SERVER_REPLIES, session);
                batch_header(&mut w, *batch, digests.len());
                digests.iter().for_each(|d| w.bytes(&d.0));
            }
            ServerMessage::BlindedKeys { session, batch, keys } => {
                header(&mut w, TAG_SERVER_KEYS, session);
                batch_header(&mut w, *batch, keys.len());
                keys.iter().for_each(|k| w.bytes(&k.0));
            }
            ServerMessage::KeysWithPayloads { session, batch, keys, width, payloads } => {
                header(&mut w, TAG_SERVER_KEYS_WITH_PAYLOADS, session);
                batch_header(&mut w, *batch, keys.len());
                keys.iter().for_each(|k| w.bytes(&k.0));
                w.u32(*width);
                w.bytes(payloads);
            }
        }
        w.finish()
    }

    /// Decodes a message, checking every length against its limit and the bytes present, and
    /// refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let (tag, session) = read_header(&mut r)?;
        let message = match tag {
            TAG_SERVER_HELLO => ServerMessage::Hello { session, count: read_set_count(&mut r)? },
            TAG_SERVER_REPLIES => {
                let batch = r.u32("batch")?;
                let n = read_batch_len(&mut r, 16)?;
                let digests = r
                    .take(16 * n, "digests")?
                    .chunks_exact(16)
                    .map(|c| KeyDigest(c.try_into().expect("chunks_exact yields 16 bytes")))
                    .collect();
                ServerMessage::Replies { session, batch, digests }
            }
            TAG_SERVER_KEYS => {
                let (batch, keys) = read_points(&mut r)?;
                ServerMessage::BlindedKeys { session, batch, keys }
            }
            TAG_SERVER_KEYS_WITH_PAYLOADS => {
                let (batch, keys) = read_points(&mut r)?;
                let width = r.u32("payload width")?;
                if width == 0 || width > MAX_PAYLOAD_WIDTH {
                    return Err(DecodeError::Invalid("payload width"));
                }
                let payloads = r.take(width as usize * keys.len(), "payloads")?.to_vec();
                ServerMessage::KeysWithPayloads { session, batch, keys, width, payloads }
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

fn header(w: &mut Writer, tag: u8, session: &Session) {
    w.u8(WIRE_VERSION);
    w.u8(tag);
    w.bytes(&session.0);
}

fn batch_header(w: &mut Writer, batch: u32, len: usize) {
    w.u32(batch);
    // Batches are built by this crate from at most `MAX_BATCH` items.
    w.u32(u32::try_from(len).expect("a batch holds at most MAX_BATCH items"));
}

fn read_header(r: &mut Reader<'_>) -> Result<(u8, Session), DecodeError> {
    let version = r.u8("version")?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let tag = r.u8("tag")?;
    Ok((tag, Session(r.array("session")?)))
}

fn read_set_count(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let count = r.u64("count")?;
    if count > MAX_SET_SIZE {
        return Err(DecodeError::TooLong { field: "count", len: count, max: MAX_SET_SIZE });
    }
    Ok(count)
}

fn read_batch_len(r: &mut Reader<'_>, item_size: usize) -> Result<usize, DecodeError> {
    let n = r.count("batch length", MAX_BATCH, item_size)?;
    if n == 0 {
        return Err(DecodeError::Invalid("empty batch"));
    }
    Ok(n)
}

fn read_points(r: &mut Reader<'_>) -> Result<(u32, Vec<BlindedKey>), DecodeError> {
    let batch = r.u32("batch")?;
    let n = read_batch_len(r, 32)?;
    let keys = r
        .take(32 * n, "points")?
        .chunks_exact(32)
        .map(|c| BlindedKey(c.try_into().expect("chunks_exact yields 32 bytes")))
        .collect();
    Ok((batch, keys))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn session() -> Session {
        Session([9; 32])
    }

    fn samples() -> (Vec<ClientMessage>, Vec<ServerMessage>) {
        let client = vec![
            ClientMessage::Hello {
                session: session(),
                mode: Mode::IntersectionToClient,
                policy: KeyPolicy { trim: false, case_fold: true },
                count: 12,
            },
            ClientMessage::BlindedKeys {
                session: session(),
                batch: 3,
                keys: vec![BlindedKey([1; 32]), BlindedKey([2; 32])],
            },
        ];
        let server = vec![
            ServerMessage::Hello { session: session(), count: 0 },
            ServerMessage::Replies {
                session: session(),
                batch: 0,
                digests: vec![KeyDigest([5; 16])],
            },
            ServerMessage::BlindedKeys {
                session: session(),
                batch: 7,
                keys: vec![BlindedKey([3; 32])],
            },
            ServerMessage::KeysWithPayloads {
                session: session(),
                batch: 2,
                keys: vec![BlindedKey([3; 32]), BlindedKey([4; 32])],
                width: 3,
                payloads: vec![1, 2, 3, 4, 5, 6],
            },
        ];
        (client, server)
    }

    #[test]
    fn messages_round_trip_at_their_stated_length() {
        let (client, server) = samples();
        for m in client {
            let bytes = m.encode();
            assert_eq!(bytes.len(), m.encoded_len());
            assert_eq!(ClientMessage::decode(&bytes), Ok(m));
        }
        for m in server {
            let bytes = m.encode();
            assert_eq!(bytes.len(), m.encoded_len());
            assert_eq!(ServerMessage::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        let (client, server) = samples();
        for bytes in client.iter().map(ClientMessage::encode) {
            for cut in 0..bytes.len() {
                assert!(ClientMessage::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(ClientMessage::decode(&long), Err(DecodeError::TrailingBytes(1)));
        }
        for bytes in server.iter().map(ServerMessage::encode) {
            for cut in 0..bytes.len() {
                assert!(ServerMessage::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn headers_and_fields_out_of_their_domain_are_refused() {
        let (client, server) = samples();
        let hello = client[0].encode();
        let mut bad = hello.clone();
        bad[0] = 2;
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::UnsupportedVersion(2)));
        // A server message is not a client message, and the other way round.
        assert_eq!(ClientMessage::decode(&server[0].encode()), Err(DecodeError::UnknownTag(3)));
        assert_eq!(ServerMessage::decode(&hello), Err(DecodeError::UnknownTag(1)));
        let mut bad = hello.clone();
        bad[34] = 2;
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::Invalid("mode")));
        let mut bad = hello.clone();
        bad[35] = 4;
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::Invalid("key policy")));
        let mut bad = hello;
        bad[36..44].copy_from_slice(&(MAX_SET_SIZE + 1).to_le_bytes());
        assert!(matches!(ClientMessage::decode(&bad), Err(DecodeError::TooLong { .. })));

        // A batch's length against the limit, the bytes present, and zero.
        let keys = client[1].encode();
        let mut bad = keys.clone();
        bad[38..42].copy_from_slice(&(MAX_BATCH + 1).to_le_bytes());
        assert!(matches!(ClientMessage::decode(&bad), Err(DecodeError::TooLong { .. })));
        let mut bad = keys.clone();
        bad[38..42].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            ClientMessage::decode(&bad),
            Err(DecodeError::Truncated { field: "batch length", needed: 32 })
        );
        let mut bad = keys[..42].to_vec();
        bad[38..42].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(ClientMessage::decode(&bad), Err(DecodeError::Invalid("empty batch")));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ClientMessage::decode(&bytes);
            let _ = ServerMessage::decode(&bytes);
        }

        #[test]
        fn batches_round_trip(batch in any::<u32>(), raw in proptest::collection::vec(any::<[u8; 32]>(), 1..20)) {
            let m = ServerMessage::BlindedKeys {
                session: session(),
                batch,
                keys: raw.iter().copied().map(BlindedKey).collect(),
            };
            prop_assert_eq!(ServerMessage::decode(&m.encode()), Ok(m));
            let d = ServerMessage::Replies {
                session: session(),
                batch,
                digests: raw.iter().map(|r| KeyDigest(r[..16].try_into().expect("16 bytes"))).collect(),
            };
            prop_assert_eq!(ServerMessage::decode(&d.encode()), Ok(d));
        }
    }
}
