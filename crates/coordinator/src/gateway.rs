//! The party gateway: each party's one bidirectional stream.
//!
//! The first message must be a `Hello` naming the party the client certificate belongs to.
//! After it, replies to offers and round messages are routed to the job they name; when the
//! stream ends, every running job hears that the party is gone.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use veil_governance::{Decline, DeclineKind};
use veil_proto::roster::Member;
use veil_proto::v1::party_envelope::Body as Inbound;
use veil_proto::v1::party_gateway_server::PartyGateway;
use veil_proto::v1::{
    CoordinatorEnvelope, Decline as WireDecline, PartyEnvelope, Welcome, coordinator_envelope,
};
use veil_protocol::PartyId;

use crate::offer::{Decision, Reply};
use crate::{Connection, JobInput, Shared, lock, next_connection_id, now_ms};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most datasets a party may announce.
const MAX_DATASETS: usize = 256;

/// The `PartyGateway` service.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<CoordinatorEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl PartyGateway for Gateway {
    type ConnectStream = EnvelopeStream;

    async fn connect(
        &self,
        request: Request<Streaming<PartyEnvelope>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let certified = if self.shared.plaintext {
            None
        } else {
            match self.shared.caller(&request)? {
                Member::Party(p) => Some(p),
                Member::Consumer { name, .. } => {
                    return Err(Status::permission_denied(format!(
                        "{name} is a consumer; only parties may connect to the party gateway"
                    )));
                }
            }
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))?
            .ok_or_else(|| Status::cancelled("stream closed before hello"))?
            .map_err(inbound_error)?;
        self.tap(&first);
        let Some(Inbound::Hello(hello)) = first.body else {
            return Err(Status::failed_precondition("the first message must be a hello"));
        };
        let party = PartyId(hello.party_id);
        if let Some(p) = certified {
            if p != party {
                return Err(Status::permission_denied(format!(
                    "the certificate belongs to {p}, not {party}"
                )));
            }
        } else if self.shared.roster.party(party).is_none() {
            return Err(Status::permission_denied(format!("{party} is not in the roster")));
        }
        if hello.datasets.len() > MAX_DATASETS || hello.datasets.iter().any(|d| d.len() > 256) {
            return Err(Status::invalid_argument("too many datasets, or a name over 256 bytes"));
        }
        let catalog: Vec<veil_analytics::DatasetCatalog> = if hello.catalog_json.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&hello.catalog_json)
                .map_err(|e| Status::invalid_argument(format!("unreadable catalog: {e}")))?
        };
        let (tx, rx) = mpsc::channel(256);
        let id = next_connection_id(&self.shared);
        let since = now_ms();
        // One live stream per party. A second process with the party's identity is refused
        // while the first one's stream is open (it would otherwise take over the routing and
        // leave the first connected but never spoken to); a stream whose other end is gone is
        // replaced.
        let previous = {
            let mut parties = lock(&self.shared.parties);
            if let Some(live) = parties.get(&party).filter(|c| !c.tx.is_closed()) {
                let message = format!(
                    "{party} is already connected (since {} ms after the epoch); a second \
                     connection with its identity is refused: stop the other process, or wait \
                     for its stream to close",
                    live.since_ms
                );
                tracing::warn!(party = %self.shared.party_name(party), "a second connection with a connected party's identity refused");
                return Err(Status::already_exists(message));
            }
            parties.insert(
                party,
                Connection {
                    id,
                    tx: tx.clone(),
                    datasets: hello.datasets.clone(),
                    catalog,
                    since_ms: since,
                },
            )
        };
        if let Err(e) = self.shared.store.party_seen(party.0, &hello.datasets, since) {
            return Err(Status::internal(format!("store: {e}")));
        }
        if previous.is_some() {
            // The old stream is replaced; jobs treat the party as gone from their round.
            self.shared.broadcast_departure(party);
        }
        tracing::info!(party = %self.shared.party_name(party), datasets = ?hello.datasets, "party connected");
        if let Err(e) = self
            .shared
            .store
            .audit(veil_governance::audit::Event::PartyJoined { party: party.0 }, since)
        {
            return Err(Status::internal(format!("audit log: {e}")));
        }
        let welcome = CoordinatorEnvelope {
            body: Some(coordinator_envelope::Body::Welcome(Welcome {
                coordinator_version: env!("CARGO_PKG_VERSION").into(),
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let reason = read_loop(&shared, party, &mut inbound, &tx).await;
            let mine = {
                let mut parties = lock(&shared.parties);
                if parties.get(&party).is_some_and(|c| c.id == id) {
                    parties.remove(&party);
                    true
                } else {
                    false
                }
            };
            tracing::info!(party = %shared.party_name(party), %reason, "party stream ended");
            if mine {
                shared.broadcast_departure(party);
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }
}

impl Gateway {
    fn tap(&self, envelope: &PartyEnvelope) {
        if let Some(tap) = &self.shared.tap {
            tap(&envelope.encode_to_vec());
        }
    }
}

/// A party's reply as the driver reads it: its decision typed, and every field cut to the
/// size an honest party sends.
fn reply_of(party: PartyId, r: veil_proto::v1::TaskReply) -> Reply {
    let reason: String = r.reason.chars().take(2_000).collect();
    let next_step = veil_proto::round::next_position(&r);
    let decision = if let Err(e) = &next_step {
        Decision::Malformed(e.to_string())
    } else if r.accept {
        Decision::Accept
    } else {
        let kind = match WireDecline::try_from(r.decline) {
            Ok(WireDecline::Refused) => Some(DeclineKind::Refused),
            Ok(WireDecline::DataUnavailable) => Some(DeclineKind::DataUnavailable),
            Ok(WireDecline::Fault) => Some(DeclineKind::Fault),
            Ok(WireDecline::Unspecified) | Err(_) => None,
        };
        match kind.and_then(|k| Decline::from_parts(k, &r.rule, reason.clone())) {
            Some(d) => Decision::Decline(d),
            None => Decision::Malformed(format!(
                "declined with kind {} and rule {:?}, which do not fit together: {reason}",
                r.decline, r.rule
            )),
        }
    };
    Reply {
        from: party,
        decision,
        job_hash: r.job_hash,
        signature: r.signature,
        dataset_sha256: r.dataset_sha256.chars().take(64).collect(),
        next_step: next_step.unwrap_or(0),
        min_cohort: r.min_cohort,
        // A hash is 64 hex digits; anything else records no head.
        head: head_of(r.head_seq, r.head_hash, r.head_signature),
        // An advertisement is under 200 bytes; a longer one is cut, and refused as
        // undecodable when the round starts.
        advertise: {
            let mut a = r.advertise;
            a.truncate(512);
            a
        },
    }
}

/// A head a party sent, with its signature: a hash is 64 hex digits and a signature 128;
/// anything else records no head.
fn head_of(seq: u64, hash: String, signature: String) -> Option<veil_governance::audit::Head> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(&hash, 64) && hex(&signature, 128)).then_some(veil_governance::audit::Head {
        seq,
        hash,
        signature: Some(signature),
    })
}

/// A message that does not decode is the sender's fault, not the coordinator's: tonic reports
/// it as INTERNAL, the party hears INVALID_ARGUMENT.
fn inbound_error(status: Status) -> Status {
    if status.code() == tonic::Code::Internal && status.message().contains("decode") {
        Status::invalid_argument(format!("undecodable message: {}", status.message()))
    } else {
        status
    }
}

/// Routes a party's messages until its stream ends; returns why it ended.
async fn read_loop(
    shared: &Shared,
    party: PartyId,
    inbound: &mut Streaming<PartyEnvelope>,
    tx: &mpsc::Sender<Result<CoordinatorEnvelope, Status>>,
) -> String {
    loop {
        let envelope = match inbound.next().await {
            None => return "closed by the party".into(),
            Some(Err(status)) => {
                // Oversized or undecodable: tell the party why before the stream closes.
                let status = inbound_error(status);
                let _ = tx.send(Err(status.clone())).await;
                return format!("transport error: {status}");
            }
            Some(Ok(e)) => e,
        };
        if let Some(tap) = &shared.tap {
            tap(&envelope.encode_to_vec());
        }
        let (job_id, input) = match envelope.body {
            Some(Inbound::Reply(r)) => {
                (r.job_id.clone(), JobInput::Reply(Box::new(reply_of(party, r))))
            }
            Some(Inbound::PsiResult(r)) => {
                (r.job_id.clone(), JobInput::PsiResult { from: party, result: r })
            }
            Some(Inbound::Round(r)) => {
                let head = head_of(r.head_seq, r.head_hash, r.head_signature);
                (r.job_id, JobInput::Round { from: party, bytes: r.message, head })
            }
            Some(Inbound::Hello(_)) | None => {
                let status =
                    Status::failed_precondition("expected a task reply or a round message");
                let _ = tx.send(Err(status)).await;
                return "protocol violation: a second hello or an empty message".into();
            }
        };
        if !shared.route(&job_id, input) {
            tracing::debug!(party = %shared.party_name(party), job_id, "message for a job that is not running");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_message_is_the_senders_invalid_argument() {
        // As tonic's codec reports a message prost cannot decode.
        let decode = Status::internal("failed to decode Protobuf message: invalid wire type");
        let mapped = inbound_error(decode);
        assert_eq!(mapped.code(), tonic::Code::InvalidArgument);
        assert!(mapped.message().contains("undecodable message"), "{mapped}");
        // Anything else passes through unchanged.
        let other = inbound_error(Status::out_of_range("message over 40 MiB"));
        assert_eq!(other.code(), tonic::Code::OutOfRange);
    }
}
