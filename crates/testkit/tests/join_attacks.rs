//! Attacks on the private join as a job, end to end: real party workers over gRPC with mutual
//! TLS, against the real coordinator or against a malicious one this file plays (the
//! consortium's coordinator stopped, a gateway of the test's own bound to its address with its
//! certificate, so the parties reconnect to it and it offers, pairs, relays and starts rounds as
//! it likes).
//!
//! Each test plays an attack and checks that it fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use veil_analytics::{Job, Layout};
use veil_coordinator::CoordinatorFile;
use veil_proto::submission::new_job_id;
use veil_proto::v1::coordinator_envelope::Body as Out;
use veil_proto::v1::party_envelope::Body as In;
use veil_proto::v1::party_gateway_server::{PartyGateway, PartyGatewayServer};
use veil_proto::v1::{
    CoordinatorEnvelope, JobState, Outcome, PartyEnvelope, PlannedJob, PsiRole, PsiStart,
    RoundPayload, TaskOffer,
};
use veil_protocol::{PartyId, RoundConfig, SessionId};
use veil_testkit::cluster::{
    Cluster, ClusterSpec, DatasetSpec, PartySpec, example_data, party_config,
};

const JOIN: &str = "[datasets.policy]\njoin_keys = [\"tailnum\"]\n";
/// An airport's policy: joins on the tail number, and the registry may learn which of
/// its tail numbers fly from the airport.
const AIRPORT: &str =
    "[datasets.policy]\njoin_keys = [\"tailnum\"]\nreveal_membership_to = [\"registry\"]\n";
const MAKERS: [&str; 6] =
    ["BOEING", "AIRBUS INDUSTRIE", "BOMBARDIER INC", "AIRBUS", "EMBRAER", "MCDONNELL DOUGLAS"];
/// How long any one wait of these tests may take.
const WAIT: Duration = Duration::from_secs(60);

fn airport(name: &str, file: &str) -> PartySpec {
    PartySpec {
        name: name.into(),
        datasets: vec![DatasetSpec {
            name: "flights".into(),
            path: example_data(file),
            columns: vec![
                ("tailnum".into(), "string".into()),
                ("dep_delay".into(), "float".into()),
            ],
            extra_toml: AIRPORT.into(),
        }],
        ..PartySpec::default()
    }
}

/// A party serving the aircraft registry's file as a dataset named `planes`.
fn registry(name: &str, policy: &str) -> PartySpec {
    PartySpec {
        name: name.into(),
        datasets: vec![DatasetSpec {
            name: "planes".into(),
            path: example_data("flights/planes.csv"),
            columns: vec![
                ("tailnum".into(), "string".into()),
                ("manufacturer".into(), "string".into()),
            ],
            extra_toml: policy.into(),
        }],
        ..PartySpec::default()
    }
}

fn job(k: u64) -> String {
    let makers: Vec<String> = MAKERS.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "kind = \"join\"\n\
         groups = {{ dataset = \"planes\", key = \"tailnum\", column = \"manufacturer\" }}\n\
         values = {{ dataset = \"flights\", key = \"tailnum\" }}\n\
         [aggregate]\n\
         dataset = \"flights\"\n\
         k_threshold = {k}\n\
         columns = [{{ name = \"dep_delay\", min = -60, max = 600 }}]\n\
         group_by = [{{ column = \"manufacturer\", values = [{}] }}]\n",
        makers.join(", ")
    )
}

/// The three airports, and the registry under `policy`.
fn airports_and_registry(policy: &str) -> Vec<PartySpec> {
    vec![
        registry("registry", policy),
        airport("jfk", "flights/jfk.csv"),
        airport("ewr", "flights/ewr.csv"),
        airport("lga", "flights/lga.csv"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Against the real coordinator.
// ---------------------------------------------------------------------------------------------

/// Membership goes to the party the policy names, not to whoever serves a dataset of the
/// expected name: the registry refuses the join, and a broker, another member of the
/// consortium, serves a file it calls `planes` and accepts. The honest coordinator picks the
/// broker as the group side; every airport's policy names the party `registry` in
/// `reveal_membership_to`, checks the exchange's peer against it, and refuses, so no airport
/// tells the broker which of its tail numbers it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_goes_only_to_the_owner_the_policy_meant_not_to_any_party_naming_a_dataset_planes()
 {
    let mut parties = airports_and_registry("");
    parties.push(registry("broker", JOIN));
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (status, _) = tokio::time::timeout(2 * WAIT, cluster.run_job(&job(5))).await.unwrap();
    let outcome = |name: &str| {
        status.coverage.iter().find(|p| p.name == name).map(|p| (p.outcome, p.rule.clone()))
    };
    let contributed = Outcome::Contributed as i32;
    let reached: Vec<&str> = ["jfk", "ewr", "lga"]
        .into_iter()
        .filter(|a| outcome(a).is_some_and(|(o, _)| o == contributed))
        .collect();
    assert!(
        status.state() != JobState::Succeeded && reached.is_empty(),
        "the registry refused, yet {reached:?} told the broker (not the registry) which of its \
         tail numbers they hold: {:?} / {}",
        status.state(),
        status.detail
    );
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A malicious coordinator.
// ---------------------------------------------------------------------------------------------

type Outbox = mpsc::UnboundedSender<Result<CoordinatorEnvelope, tonic::Status>>;

/// The party gateway of the malicious coordinator: it keeps each party's stream and hands the
/// test everything the parties send.
struct Gateway {
    inbound: mpsc::UnboundedSender<(u32, In)>,
    outboxes: Arc<Mutex<BTreeMap<u32, Outbox>>>,
}

#[tonic::async_trait]
impl PartyGateway for Gateway {
    type ConnectStream =
        Pin<Box<dyn Stream<Item = Result<CoordinatorEnvelope, tonic::Status>> + Send>>;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<PartyEnvelope>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        let mut stream = request.into_inner();
        let Some(PartyEnvelope { body: Some(In::Hello(hello)) }) = stream.message().await? else {
            return Err(tonic::Status::failed_precondition("a hello first"));
        };
        let id = hello.party_id;
        let (tx, rx) = mpsc::unbounded_channel();
        self.outboxes.lock().unwrap().insert(id, tx);
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            while let Ok(Some(envelope)) = stream.message().await {
                if let Some(body) = envelope.body {
                    if inbound.send((id, body)).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// The malicious coordinator, in the real one's place.
struct Malicious {
    inbound: mpsc::UnboundedReceiver<(u32, In)>,
    outboxes: Arc<Mutex<BTreeMap<u32, Outbox>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Malicious {
    /// Stops the cluster's coordinator and serves the party gateway on its address with its
    /// certificate; returns once `parties` are connected.
    async fn replace(cluster: &mut Cluster, parties: usize) -> Malicious {
        let tls = CoordinatorFile::load(&cluster.layout.coordinator_config)
            .unwrap()
            .into_config(false)
            .unwrap()
            .tls
            .expect("the consortium speaks TLS");
        cluster.kill_coordinator().await;
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(cluster.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = listener.expect("the coordinator's port is free");
        let (tx, inbound) = mpsc::unbounded_channel();
        let outboxes = Arc::new(Mutex::new(BTreeMap::new()));
        let gateway = Gateway { inbound: tx, outboxes: outboxes.clone() };
        let max = veil_proto::MAX_MESSAGE_BYTES;
        let service = PartyGatewayServer::new(gateway)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .tls_config(tls.server_config())
                .unwrap()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        let malicious = Malicious { inbound, outboxes, server };
        let deadline = tokio::time::Instant::now() + WAIT;
        while malicious.outboxes.lock().unwrap().len() < parties {
            assert!(tokio::time::Instant::now() < deadline, "the parties did not reconnect");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        malicious
    }

    fn send(&self, to: u32, body: Out) {
        let outbox = self.outboxes.lock().unwrap().get(&to).cloned().unwrap();
        outbox.send(Ok(CoordinatorEnvelope { body: Some(body) })).unwrap();
    }

    /// The next thing a party sends; `None` after `within` of silence.
    async fn next_within(&mut self, within: Duration) -> Option<(u32, In)> {
        tokio::time::timeout(within, self.inbound.recv()).await.ok().flatten()
    }

    async fn next(&mut self) -> (u32, In) {
        self.next_within(WAIT).await.expect("a party's message within the wait")
    }

    /// Offers the analyst's signed join to `to`; returns the job id once each accepted.
    async fn offer(&mut self, cluster: &Cluster, spec: &str, to: &[u32]) -> String {
        let job = Job::parse(spec).unwrap();
        let job_id = new_job_id();
        let planned = PlannedJob {
            spec_json: job.canonical_json(),
            job_hash: job.hash(),
            purpose: job.purpose().into(),
        };
        let offer = TaskOffer {
            job_id: job_id.clone(),
            spec_json: planned.spec_json.clone(),
            consumer: "analyst".into(),
            consumer_signature: cluster.signer("analyst").sign(&job_id, &planned),
            ..TaskOffer::default()
        };
        for &p in to {
            self.send(p, Out::Offer(offer.clone()));
        }
        let mut accepted = 0;
        while accepted < to.len() {
            match self.next().await {
                (from, In::Reply(r)) if r.job_id == job_id => {
                    assert!(r.accept, "party {from} declined: {} {}", r.rule, r.reason);
                    accepted += 1;
                }
                _ => {}
            }
        }
        job_id
    }

    /// Starts an exchange of `job_id` between `client` and `server` and relays it, as the honest
    /// coordinator does, until both report; returns the client's report, or why it did not
    /// come (a party left, or all went quiet for ten seconds).
    async fn exchange(
        &mut self,
        job_id: &str,
        session: [u8; 32],
        client: u32,
        server: u32,
    ) -> Result<veil_proto::v1::PsiResult, String> {
        let start = |role: PsiRole, peer: u32| PsiStart {
            job_id: job_id.to_string(),
            session: session.to_vec(),
            role: role as i32,
            peer,
        };
        // The value side speaks first (its public key, once its vectors are encrypted); the
        // group side starts then.
        self.send(server, Out::PsiStart(start(PsiRole::Server, client)));
        loop {
            match self.next_within(Duration::from_secs(20)).await {
                None => return Err("the value side sent nothing for twenty seconds".into()),
                Some((from, In::Round(p))) if from == server && p.job_id == job_id => {
                    self.send(client, Out::PsiStart(start(PsiRole::Client, server)));
                    let relayed = RoundPayload {
                        job_id: job_id.to_string(),
                        message: p.message,
                        ..RoundPayload::default()
                    };
                    self.send(client, Out::Round(relayed));
                    break;
                }
                Some((from, In::Reply(r))) if !r.accept => {
                    return Err(format!("party {from} left the exchange: {} {}", r.rule, r.reason));
                }
                Some(_) => {}
            }
        }
        let (mut from_client, mut from_server) = (None, None);
        while from_client.is_none() || from_server.is_none() {
            let Some(next) = self.next_within(Duration::from_secs(10)).await else {
                return Err("no party sent anything for ten seconds".into());
            };
            match next {
                (from, In::Round(p)) if p.job_id == job_id => {
                    let to = if from == client { server } else { client };
                    let relayed = RoundPayload {
                        job_id: job_id.to_string(),
                        message: p.message,
                        ..RoundPayload::default()
                    };
                    self.send(to, Out::Round(relayed));
                }
                (from, In::PsiResult(r)) if from == client => from_client = Some(r),
                (from, In::PsiResult(r)) if from == server => from_server = Some(r),
                (from, In::Reply(r)) if !r.accept => {
                    return Err(format!("party {from} left the exchange: {} {}", r.rule, r.reason));
                }
                _ => {}
            }
        }
        Ok(from_client.unwrap())
    }

    fn stop(self) {
        self.server.abort();
    }
}

/// The party ids of the cluster's parties, in order.
fn ids(cluster: &Cluster) -> Vec<u32> {
    cluster.layout.party_configs.iter().map(|p| party_config(p).id.0).collect()
}

/// The length of the join's shares: groups × values per key.
fn share_len(spec: &str) -> usize {
    let Job::Join(join) = Job::parse(spec).unwrap() else { panic!("a join") };
    let segment = Layout::new(&join.per_key()).unwrap().vector_len();
    let total = Layout::new(&join.aggregate).unwrap().vector_len();
    (total / segment) * segment
}

/// A coordinator runs one exchange (registry with jfk), then starts a round over the registry,
/// jfk, ewr and lga with a survivor minimum of three: ewr and lga hold no share and would drop
/// out, a colluding party would take their place with zeros, and the round's sum would be
/// jfk's own per-group sums (the registry's −r plus jfk's Σ + r). The group side joins only a
/// round over exactly itself and the value parties it exchanged with, every one of them
/// required, and refuses this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_side_joins_no_round_over_value_parties_it_never_exchanged_with() {
    let mut cluster = Cluster::start(ClusterSpec {
        parties: airports_and_registry(JOIN),
        ..ClusterSpec::named(&[])
    })
    .await;
    let ids = ids(&cluster);
    let (registry, jfk) = (ids[0], ids[1]);
    let mut coordinator = Malicious::replace(&mut cluster, ids.len()).await;
    let spec = job(5);
    let job_id = coordinator.offer(&cluster, &spec, &ids).await;
    coordinator.exchange(&job_id, [0x31; 32], registry, jfk).await.unwrap();
    // One exchange, and a round over four.
    let mut config = RoundConfig::all_pairs(
        SessionId([0x32; 32]),
        ids.iter().map(|&p| PartyId(p)).collect(),
        share_len(&spec),
    )
    .tolerating(1);
    config.min_cohort = 3;
    let params = config.validate().unwrap();
    coordinator.send(registry, Out::Start(veil_proto::round::start(&job_id, &params)));
    let mut joined = false;
    while let Some((from, body)) = coordinator.next_within(Duration::from_secs(10)).await {
        match body {
            In::Round(p) if from == registry && p.job_id == job_id => {
                joined = true;
                break;
            }
            In::Reply(r) if from == registry && !r.accept => break,
            _ => {}
        }
    }
    assert!(
        !joined,
        "the registry joined a round over ewr and lga after exchanging with jfk alone: its share \
         and jfk's sum to jfk's per-group sums"
    );
    coordinator.stop();
    cluster.shutdown().await;
}

/// A coordinator pairs jfk with lga (a party of the consortium whose signing key stands for
/// any colluder's) in the group side's role: were jfk to start, lga would learn which of its
/// guessed tail numbers fly from JFK. jfk exchanges only with a party its policy names in
/// `reveal_membership_to`, and refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_party_exchanges_only_with_the_group_datasets_owner() {
    let mut cluster = Cluster::start(ClusterSpec {
        parties: airports_and_registry(JOIN),
        ..ClusterSpec::named(&[])
    })
    .await;
    let ids = ids(&cluster);
    let (jfk, lga) = (ids[1], ids[3]);
    let mut coordinator = Malicious::replace(&mut cluster, ids.len()).await;
    let job_id = coordinator.offer(&cluster, &job(5), &ids).await;
    let start = PsiStart {
        job_id: job_id.clone(),
        session: vec![0x33; 32],
        role: PsiRole::Server as i32,
        peer: lga,
    };
    coordinator.send(jfk, Out::PsiStart(start));
    let mut started = false;
    while let Some((from, body)) = coordinator.next_within(Duration::from_secs(10)).await {
        match body {
            In::Round(p) if from == jfk && p.job_id == job_id => {
                started = true;
                break;
            }
            In::Reply(r) if from == jfk && !r.accept => break,
            _ => {}
        }
    }
    assert!(!started, "jfk opened the join's exchange with lga, which serves no \"planes\"");
    coordinator.stop();
    cluster.shutdown().await;
}

/// The coordinator learns the join's per-group answer, not how many of each airport's tail
/// numbers are in the registry: in a join the group side reports (and signs) an intersection
/// size of zero, as the value side does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_learns_no_intersection_size_per_value_party() {
    let mut cluster = Cluster::start(ClusterSpec {
        parties: airports_and_registry(JOIN),
        ..ClusterSpec::named(&[])
    })
    .await;
    let ids = ids(&cluster);
    let (registry, jfk) = (ids[0], ids[1]);
    let mut coordinator = Malicious::replace(&mut cluster, ids.len()).await;
    let job_id = coordinator.offer(&cluster, &job(5), &ids).await;
    let report = coordinator.exchange(&job_id, [0x34; 32], registry, jfk).await.unwrap();
    assert_eq!(
        report.intersection_size, 0,
        "the registry told the coordinator that {} of its {} tail numbers fly from jfk",
        report.intersection_size, report.client_keys
    );
    coordinator.stop();
    cluster.shutdown().await;
}

/// A coordinator that ran an exchange twice would add a second share of jfk's per-group sums to
/// the round, and with a consumer submitting the same join twice (once doubled) subtract the
/// two answers to hold jfk's sums alone. Each side takes part in one exchange per peer and job
/// (the value side in one in all) and leaves a second start with a signed refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_party_takes_part_in_one_exchange_per_job() {
    let mut cluster = Cluster::start(ClusterSpec {
        parties: airports_and_registry(JOIN),
        ..ClusterSpec::named(&[])
    })
    .await;
    let ids = ids(&cluster);
    let (registry, jfk) = (ids[0], ids[1]);
    let mut coordinator = Malicious::replace(&mut cluster, ids.len()).await;
    let job_id = coordinator.offer(&cluster, &job(5), &ids).await;
    coordinator.exchange(&job_id, [0x35; 32], registry, jfk).await.unwrap();
    let again = coordinator.exchange(&job_id, [0x36; 32], registry, jfk).await;
    assert!(
        again.is_err(),
        "jfk and the registry ran the job's exchange a second time, each adding a second share \
         of jfk's per-group sums to what the round adds up"
    );
    coordinator.stop();
    cluster.shutdown().await;
}
