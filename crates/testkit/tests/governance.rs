//! Governance end to end: owner policies enforced by the parties themselves, budgets that
//! cannot be overspent, signed decisions, and audit logs that catch a rewritten history.

// Helpers here read the repository's own files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use veil_governance::audit::{self, Entry, Event};
use veil_party_worker::store::PartyStore;
use veil_proto::roster::RosterFile;
use veil_proto::v1::JobState;
use veil_proto::v1::admin_client::AdminClient;
use veil_proto::v1::{AuditLogRequest, JobRef};
use veil_testkit::cluster::{Cluster, ClusterSpec, DatasetSpec, PartySpec};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data").join(path)
}

fn hospitals(policy: &str) -> Vec<PartySpec> {
    ["hospital_a", "hospital_b", "hospital_c"]
        .iter()
        .map(|h| PartySpec {
            name: h.to_string(),
            datasets: vec![DatasetSpec {
                name: "cells".into(),
                path: data(&format!("breast_cancer/{h}.csv")),
                columns: [("mean_radius", "float"), ("mean_area", "float"), ("target", "int")]
                    .iter()
                    .map(|(c, t)| (c.to_string(), t.to_string()))
                    .collect(),
                extra_toml: policy.to_string(),
            }],
            ..PartySpec::default()
        })
        .collect()
}

fn job(purpose: &str, column: &str, rho: Option<f64>) -> String {
    let privacy = rho.map_or(String::new(), |r| format!("privacy = {{ rho = {r} }}\n"));
    format!(
        "dataset = \"cells\"\npurpose = \"{purpose}\"\n{privacy}[[columns]]\nname = \"{column}\"\nmin = 0\nmax = 3000\n"
    )
}

fn party_log(cluster: &Cluster, i: usize) -> Vec<Entry> {
    let dir = cluster.layout.party_configs[i].parent().unwrap().to_path_buf();
    // A second connection to the party's store, for reading.
    PartyStore::open(
        &dir.join("party-state.db"),
        &format!("party {i}"),
        SigningKey::from_bytes(&[0; 32]),
    )
    .unwrap()
    .audit_log()
    .unwrap()
}

fn party_store(cluster: &Cluster, i: usize) -> PartyStore {
    let dir = cluster.layout.party_configs[i].parent().unwrap().to_path_buf();
    PartyStore::open(
        &dir.join("party-state.db"),
        &format!("party {i}"),
        SigningKey::from_bytes(&[0; 32]),
    )
    .unwrap()
}

const POLICY: &str = r#"
grade = "general"
tags = { target = "sensitive" }
[datasets.policy]
purposes = ["research"]
columns = ["mean_radius", "target"]
budget_per_consumer = 1.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_rule_and_the_consumer_sees_it() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(POLICY), ..ClusterSpec::named(&[]) }).await;
    let (ok, _) = cluster.run_job(&job("research", "mean_radius", None)).await;
    assert_eq!(ok.state(), JobState::Succeeded, "{ok:?}");
    let (column, _) = cluster.run_job(&job("research", "mean_area", None)).await;
    assert_eq!(column.state(), JobState::Failed);
    assert!(column.detail.contains("refused by rule column"), "{}", column.detail);
    assert!(column.detail.contains("mean_area"), "{}", column.detail);
    let (purpose, _) = cluster.run_job(&job("marketing", "mean_radius", None)).await;
    assert!(purpose.detail.contains("refused by rule purpose"), "{}", purpose.detail);
    // Each party logged its own decisions.
    let log = party_log(&cluster, 0);
    assert!(
        log.iter().any(|e| matches!(&e.event, Event::JobRefused { rule, .. } if rule == "column"))
    );
    assert!(log.iter().any(|e| matches!(&e.event, Event::JobAccepted { .. })));
    cluster.shutdown().await;
}

/// A party that refuses is left out of the round: the others answer without it, over their own
/// rows only, and the refusal is not reported as a dropout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_others_answer_without_a_party_that_refuses() {
    let mut parties = hospitals(POLICY);
    parties[2].datasets[0].extra_toml =
        POLICY.replace(r#"purposes = ["research"]"#, r#"purposes = ["care"]"#);
    // A fourth party with hospital_b's rows: a round tolerating one colluder needs three.
    let mut clinic = parties[1].clone();
    clinic.name = "clinic_d".into();
    parties.push(clinic);
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let spec = format!("min_parties = 2\n{}", job("research", "mean_radius", None));
    let (status, result) = cluster.run_job(&spec).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    assert!(!status.detail.contains("dropped"), "{}", status.detail);
    let result = result.unwrap();
    assert_eq!(result.contributors, vec![0, 1, 3]);
    assert!(result.dropped.is_empty(), "{result:?}");
    let answer: serde_json::Value = serde_json::from_str(&result.answer_json).unwrap();
    let rows = |h: &str| {
        csv::Reader::from_path(data(&format!("breast_cancer/{h}.csv"))).unwrap().records().count()
            as u64
    };
    assert_eq!(answer["rows"], rows("hospital_a") + 2 * rows("hospital_b"));
    let log = party_log(&cluster, 2);
    assert!(
        log.iter().any(|e| matches!(&e.event, Event::JobRefused { rule, .. } if rule == "purpose"))
    );
    // With the job's minimum at four, the same refusal fails the job and names the rule.
    let (status, _) = cluster
        .run_job(&format!("min_parties = 4\n{}", job("research", "mean_radius", None)))
        .await;
    assert_eq!(status.state(), JobState::Failed);
    assert!(status.detail.contains("refused by rule purpose"), "{}", status.detail);
    cluster.shutdown().await;
}

/// Every answer says which parties serve the dataset and what became of each: contributed,
/// refused (with the rule), data unavailable (without the party's paths) or offline; the
/// consumer can ask for all of them and then gets a failure instead of a partial answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_which_parties_it_covers_and_why() {
    use veil_proto::v1::Outcome;
    let dir = tempfile::tempdir().unwrap();
    // hospital_c's rows with the column the job reads renamed: declared, but not in the file.
    let renamed = dir.path().join("renamed.csv");
    let text = std::fs::read_to_string(data("breast_cancer/hospital_c.csv")).unwrap();
    std::fs::write(&renamed, text.replacen("mean_radius", "radius_mean", 1)).unwrap();
    let mut parties = hospitals(POLICY);
    parties.push(PartySpec { name: "clinic_d".into(), ..parties[2].clone() });
    parties.push(PartySpec { name: "clinic_e".into(), ..parties[0].clone() });
    parties.push(PartySpec { name: "clinic_f".into(), ..parties[1].clone() });
    parties[2].datasets[0].extra_toml = POLICY.replace("\"research\"", "\"care\"");
    parties[3].datasets[0].path = renamed.clone();
    let mut cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    cluster.kill_party(4);
    cluster.wait_disconnected(4).await;

    let (status, result) = cluster.run_job(&job("research", "mean_radius", None)).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let coverage = result.unwrap().coverage;
    let seen: Vec<(&str, i32, &str)> =
        coverage.iter().map(|p| (p.name.as_str(), p.outcome, p.rule.as_str())).collect();
    assert_eq!(
        seen,
        vec![
            ("hospital_a", Outcome::Contributed as i32, ""),
            ("hospital_b", Outcome::Contributed as i32, ""),
            ("hospital_c", Outcome::Refused as i32, "purpose"),
            ("clinic_d", Outcome::DataUnavailable as i32, ""),
            ("clinic_e", Outcome::Offline as i32, ""),
            ("clinic_f", Outcome::Contributed as i32, ""),
        ]
    );
    let unavailable = &coverage[3].reason;
    assert!(unavailable.contains("radius") || unavailable.contains("mean_radius"), "{unavailable}");
    assert!(!unavailable.contains(&dir.path().display().to_string()), "a path: {unavailable}");
    assert!(!unavailable.contains(".csv"), "a file name: {unavailable}");
    assert_eq!(status.coverage, coverage, "the status carries the same coverage");

    // Asked for every serving party, the consumer gets a failure naming who is missing.
    let mut jobs = cluster.jobs().await;
    let submitted = cluster
        .signer("analyst")
        .submit_with(&mut jobs, &job("research", "mean_radius", None), true)
        .await
        .unwrap();
    let failed = cluster.wait_job(&submitted.job_id).await;
    assert_eq!(failed.state(), JobState::Failed, "{failed:?}");
    assert!(failed.detail.contains("requires every party"), "{}", failed.detail);
    assert!(failed.detail.contains("party 4 offline"), "{}", failed.detail);
    let status =
        jobs.result(veil_proto::v1::JobRef { job_id: submitted.job_id }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_charged_before_release_and_exhaustion_refuses() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(POLICY), ..ClusterSpec::named(&[]) }).await;
    for _ in 0..2 {
        let (s, r) = cluster.run_job(&job("research", "mean_radius", Some(0.4))).await;
        assert_eq!(s.state(), JobState::Succeeded, "{s:?}");
        assert!(r.is_some());
    }
    let (third, _) = cluster.run_job(&job("research", "mean_radius", Some(0.4))).await;
    assert_eq!(third.state(), JobState::Failed);
    assert!(third.detail.contains("refused by rule budget"), "{}", third.detail);
    for i in 0..3 {
        let spent =
            veil_governance::budget::Ledger::spent(&party_store(&cluster, i), "cells", "analyst")
                .unwrap();
        assert!((spent.consumer - 0.8).abs() < 1e-9, "party {i} spent {spent:?}");
        let receipts = party_store(&cluster, i).receipts().unwrap();
        assert_eq!(receipts.len(), 2);
        assert!(receipts.iter().all(|r| (r.rho - 0.4).abs() < 1e-12 && r.parties.len() == 3));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_cannot_overspend() {
    let policy = "[datasets.policy]\nbudget_total = 1.0\n";
    let cluster = Cluster::start(ClusterSpec {
        parties: hospitals(policy),
        stage_timeout: Duration::from_secs(10),
        ..ClusterSpec::named(&[])
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let s = cluster.submit(&job("research", "mean_radius", Some(0.3))).await.unwrap();
        ids.push(s.job_id);
    }
    let mut succeeded = 0;
    for id in &ids {
        if cluster.wait_job(id).await.state() == JobState::Succeeded {
            succeeded += 1;
        }
    }
    assert!((1..=3).contains(&succeeded), "{succeeded} jobs of ρ = 0.3 fit in a budget of 1.0");
    for i in 0..3 {
        let spent =
            veil_governance::budget::Ledger::spent(&party_store(&cluster, i), "cells", "analyst")
                .unwrap();
        assert!(spent.total <= 1.0 + 1e-9, "party {i} overspent: {spent:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_data_takes_part_in_nothing_and_identifiers_are_never_read() {
    let mut parties = hospitals("grade = \"core\"\n");
    parties[1].datasets[0].extra_toml = "tags = { mean_radius = \"identifier\" }\n".into();
    let cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let (s, _) = cluster.run_job(&job("research", "mean_radius", None)).await;
    assert_eq!(s.state(), JobState::Failed);
    assert!(s.detail.contains("core-grade"), "{}", s.detail);
    assert!(s.detail.contains("identifier-column"), "{}", s.detail);
    cluster.shutdown().await;
}

/// The coordinator's and the parties' logs verify against the roster's keys; a coordinator
/// that rewrites an entry of its history (and even re-signs everything after it) is caught by
/// the heads the parties recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_logs_verify_and_a_rewritten_history_is_caught() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(""), ..ClusterSpec::named(&[]) }).await;
    for _ in 0..2 {
        let (s, r) = cluster.run_job(&job("research", "mean_radius", None)).await;
        assert_eq!(s.state(), JobState::Succeeded);
        let mut jobs = cluster.jobs().await;
        jobs.result(JobRef { job_id: r.unwrap().job_id }).await.unwrap();
    }
    let roster = RosterFile::load(&cluster.layout.roster).unwrap();
    let mut admin = AdminClient::new(cluster.channel("operator").await);
    let coordinator: Vec<Entry> = admin
        .audit_log(AuditLogRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries_json
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let party = party_log(&cluster, 1);
    let ckey = roster.audit_key("coordinator").unwrap();
    let pkey = roster.audit_key("party 1").unwrap();
    let heads = audit::recorded_coordinator_heads(&party);
    assert_eq!(heads.len(), 2, "the party recorded the coordinator's head with each offer");
    assert_eq!(audit::verify(&coordinator, &ckey, &heads), Ok(()));
    assert_eq!(audit::verify(&party, &pkey, &[]), Ok(()));
    assert!(coordinator.iter().any(|e| matches!(e.event, Event::ResultFetched { .. })));
    assert!(party.iter().any(|e| matches!(e.event, Event::ResultReleased { .. })));

    // The coordinator rewrites who its first job was for, and re-signs the rest of its log.
    let first_offer =
        coordinator.iter().position(|e| matches!(e.event, Event::JobOffered { .. })).unwrap();
    let seed_hex =
        std::fs::read_to_string(cluster.layout.root.join("coordinator/identity.key")).unwrap();
    let seed: [u8; 32] = hex::decode(seed_hex.trim()).unwrap().try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    let mut rewritten: Vec<Entry> = coordinator[..first_offer].to_vec();
    for e in &coordinator[first_offer..] {
        let mut event = e.event.clone();
        if let Event::JobOffered { consumer, .. } = &mut event {
            *consumer = "someone-else".into();
        }
        rewritten.push(Entry::new(rewritten.last(), e.time_ms, &e.writer, event, &key));
    }
    assert_eq!(
        audit::verify(&rewritten, &ckey, &[]),
        Ok(()),
        "a re-signed chain is valid on its own"
    );
    let caught = audit::verify(&rewritten, &ckey, &heads).unwrap_err();
    assert!(caught.to_string().contains(&format!("entry {first_offer}")), "{caught}");
    // Truncating the log is caught the same way.
    assert!(audit::verify(&coordinator[..first_offer], &ckey, &heads).is_err());
    cluster.shutdown().await;
}

async fn next(
    inbound: &mut tokio::sync::mpsc::UnboundedReceiver<veil_proto::v1::PartyEnvelope>,
) -> veil_proto::v1::party_envelope::Body {
    let e = tokio::time::timeout(Duration::from_secs(10), inbound.recv()).await;
    e.expect("the party answers").expect("stream open").body.expect("a body")
}

mod fake {
    //! A coordinator that does whatever the test says: it offers forbidden jobs and starts
    //! rounds regardless of the parties' answers.
    use std::sync::Mutex;

    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};
    use veil_proto::v1::party_gateway_server::PartyGateway;
    use veil_proto::v1::{CoordinatorEnvelope, PartyEnvelope};

    pub(crate) struct FakeCoordinator {
        pub(crate) inbound: mpsc::UnboundedSender<PartyEnvelope>,
        pub(crate) outbound: Mutex<Option<mpsc::Receiver<Result<CoordinatorEnvelope, Status>>>>,
    }

    #[tonic::async_trait]
    impl PartyGateway for FakeCoordinator {
        type ConnectStream = ReceiverStream<Result<CoordinatorEnvelope, Status>>;

        async fn connect(
            &self,
            request: Request<Streaming<PartyEnvelope>>,
        ) -> Result<Response<Self::ConnectStream>, Status> {
            let mut stream = request.into_inner();
            let tx = self.inbound.clone();
            tokio::spawn(async move {
                while let Some(Ok(e)) = stream.next().await {
                    let _ = tx.send(e);
                }
            });
            let rx = self
                .outbound
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| Status::unavailable("one stream only"))?;
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }
}

/// A fake coordinator (with the real coordinator's certificate) and the first party of a new
/// consortium connected to it; `datasets` is appended to that party's configuration.
struct FakeRun {
    layout: veil_coordinator::consortium::ConsortiumLayout,
    inbound: tokio::sync::mpsc::UnboundedReceiver<veil_proto::v1::PartyEnvelope>,
    outbound: tokio::sync::mpsc::Sender<Result<veil_proto::v1::CoordinatorEnvelope, tonic::Status>>,
    party: tokio::task::JoinHandle<Result<(), veil_party_worker::WorkerError>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _dir: tempfile::TempDir,
}

impl FakeRun {
    async fn start(consumers: &[&str], min_cohort: u32, datasets: &str) -> Self {
        use tokio::sync::mpsc;
        use veil_proto::v1::party_envelope::Body as In;

        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let layout = veil_coordinator::consortium::create(
            dir.path(),
            &veil_coordinator::consortium::ConsortiumSpec {
                name: "fake".into(),
                parties: vec!["a".into(), "b".into(), "c".into()],
                consumers: consumers.iter().map(|c| (c.to_string(), false)).collect(),
                coordinator: addr,
            },
        )
        .unwrap();
        let party_toml = &layout.party_configs[0];
        let mut text = std::fs::read_to_string(party_toml).unwrap();
        text = text.replace("min_cohort = 2", &format!("min_cohort = {min_cohort}"));
        text += datasets;
        std::fs::write(party_toml, text).unwrap();

        let coordinator_dir = layout.root.join("coordinator");
        let tls = veil_proto::tls::TlsMaterial::load(&veil_proto::tls::TlsFiles {
            ca: layout.root.join("ca.pem"),
            cert: coordinator_dir.join("cert.pem"),
            key: coordinator_dir.join("key.pem"),
        })
        .unwrap();
        let (inbound_tx, mut inbound) = mpsc::unbounded_channel();
        let (outbound, outbound_rx) = mpsc::channel(16);
        let fake = fake::FakeCoordinator {
            inbound: inbound_tx,
            outbound: std::sync::Mutex::new(Some(outbound_rx)),
        };
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let server = tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .unwrap()
            .add_service(veil_proto::v1::party_gateway_server::PartyGatewayServer::new(fake))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        let server = tokio::spawn(server);

        let config = veil_testkit::cluster::party_config(party_toml);
        let party = tokio::spawn(veil_party_worker::run(
            config,
            Default::default(),
            std::future::pending(),
        ));
        assert!(matches!(next(&mut inbound).await, In::Hello(_)));
        Self { layout, inbound, outbound, party, server, _dir: dir }
    }

    /// Offers a job and returns the party's reply. The offer carries `signer`'s signature over
    /// the job under `signed_id` (None: no signature).
    async fn offer(
        &mut self,
        job_id: &str,
        spec: &veil_analytics::Job,
        consumer: &str,
        signed: Option<(&str, &str)>,
        session: Vec<u8>,
    ) -> veil_proto::v1::TaskReply {
        use veil_proto::v1::coordinator_envelope::Body as Out;
        use veil_proto::v1::party_envelope::Body as In;
        let consumer_signature = signed
            .map(|(signer, signed_id)| {
                let planned = veil_proto::v1::PlannedJob {
                    spec_json: spec.canonical_json(),
                    job_hash: spec.hash(),
                    purpose: spec.purpose().into(),
                };
                self.signer(signer).sign(signed_id, &planned)
            })
            .unwrap_or_default();
        let offer = veil_proto::v1::TaskOffer {
            job_id: job_id.into(),
            spec_json: spec.canonical_json(),
            consumer: consumer.into(),
            consumer_signature,
            session,
            ..Default::default()
        };
        self.send(Out::Offer(offer)).await;
        match next(&mut self.inbound).await {
            In::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    async fn send(&self, body: veil_proto::v1::coordinator_envelope::Body) {
        let envelope = veil_proto::v1::CoordinatorEnvelope { body: Some(body) };
        self.outbound.send(Ok(envelope)).await.unwrap();
    }

    fn signer(&self, consumer: &str) -> veil_proto::submission::Signer {
        let path = self.layout.root.join("consumers").join(consumer).join("consumer.toml");
        veil_proto::client::ConsumerFile::load(&path)
            .unwrap()
            .signer(veil_analytics::Job::plan_check)
            .unwrap()
    }

    /// Stops the party and the fake, and returns the party's audit log.
    fn stop(self) -> Vec<Entry> {
        self.party.abort();
        self.server.abort();
        PartyStore::open(
            &self.layout.party_configs[0].parent().unwrap().join("party-state.db"),
            "party 0",
            SigningKey::from_bytes(&[0; 32]),
        )
        .unwrap()
        .audit_log()
        .unwrap()
    }
}

fn refusals(log: &[Entry]) -> Vec<&str> {
    log.iter()
        .filter_map(|e| match &e.event {
            Event::JobRefused { rule, .. } => Some(rule.as_str()),
            _ => None,
        })
        .collect()
}

/// Nothing the coordinator says can make a party run a job its policy denies: a coordinator
/// that offers a job on core data, and then starts the round anyway, gets a signed refusal and
/// not one round message; a round whose cohort is below the party's minimum gets its signed
/// refusal and not one round message either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cannot_make_a_party_run_a_forbidden_job() {
    use veil_proto::v1::RoundStart;
    use veil_proto::v1::coordinator_envelope::Body as Out;

    let hospital = data("breast_cancer/hospital_a.csv").display().to_string();
    let datasets = format!(
        "\n[[datasets]]\nname = \"core\"\npath = {hospital:?}\ncolumns = {{ mean_radius = \"float\" }}\ngrade = \"core\"\n\
         \n[[datasets]]\nname = \"cells\"\npath = {hospital:?}\ncolumns = {{ mean_radius = \"float\" }}\n",
    );
    let mut run = FakeRun::start(&["analyst"], 3, &datasets).await;

    for (dataset, parties, expect_rule) in
        [("core", vec![0u32, 1, 2], "core-grade"), ("cells", vec![0, 1], "")]
    {
        let spec = veil_analytics::Job::parse(&format!(
            "dataset = \"{dataset}\"\nmin_parties = 2\n[[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n"
        ))
        .unwrap();
        let job_id = veil_proto::submission::new_job_id();
        // The accepted job's offer names its round's session.
        let session = if expect_rule.is_empty() { vec![7; 32] } else { vec![] };
        let reply = run.offer(&job_id, &spec, "analyst", Some(("analyst", &job_id)), session).await;
        if expect_rule.is_empty() {
            assert!(reply.accept, "{}", reply.reason);
            // Its round keys come with the acceptance, for that session.
            match veil_protocol::PartyMessage::decode(&reply.advertise).unwrap() {
                veil_protocol::PartyMessage::AdvertiseKeys { session, keys } => {
                    assert_eq!((session.0, keys.party.0), ([7; 32], 0));
                }
                other => panic!("expected round keys, got {other:?}"),
            }
        } else {
            assert!(reply.advertise.is_empty());
            assert!(!reply.accept);
            assert_eq!(reply.rule, expect_rule, "{}", reply.reason);
            assert_eq!(reply.decline, veil_proto::v1::Decline::Refused as i32);
        }
        // The decision (its kind, rule and message) is signed by the party's roster key over
        // the job hash.
        let roster = RosterFile::load(&run.layout.roster).unwrap();
        let key = roster.audit_key("party 0").unwrap();
        let decline = (!reply.accept).then(|| {
            veil_governance::Decline::refused(
                veil_governance::Rule::from_name(&reply.rule).unwrap(),
                reply.reason.clone(),
            )
        });
        let statement =
            veil_governance::decision::decision_statement(&job_id, &spec.hash(), decline.as_ref());
        let sig =
            ed25519_dalek::Signature::from_bytes(&reply.signature.clone().try_into().unwrap());
        ed25519_dalek::Verifier::verify(&key, &statement, &sig).unwrap();
        // Start the round anyway (for "cells", with a cohort below the party's minimum of 3).
        let start_parties_minus_one = parties.len() as u32 - 1;
        let start = RoundStart {
            job_id,
            session: vec![7; 32],
            parties,
            threshold: 2,
            neighbours: start_parties_minus_one,
            min_cohort: 2,
            vector_len: veil_analytics::Plan::new(
                match &spec {
                    veil_analytics::Job::Columns(s) => s,
                    _ => unreachable!(),
                },
                &veil_analytics::DatasetSchema {
                    name: dataset.into(),
                    columns: vec![("mean_radius".into(), veil_analytics::ColumnType::Float)],
                },
            )
            .unwrap()
            .vector_len() as u32,
            plain: false,
            ..RoundStart::default()
        };
        run.send(Out::Start(start)).await;
        // A refused job gets nothing; a round below the cohort, the party's signed refusal
        // with its rule, and no round message.
        let sent = tokio::time::timeout(Duration::from_millis(800), run.inbound.recv()).await;
        match sent {
            Err(_) => assert!(!expect_rule.is_empty(), "no refusal of the small round"),
            Ok(Some(veil_proto::v1::PartyEnvelope {
                body: Some(veil_proto::v1::party_envelope::Body::Reply(r)),
            })) => assert!(expect_rule.is_empty() && !r.accept && r.rule == "cohort", "{r:?}"),
            Ok(other) => panic!("the party sent something after a forbidden start: {other:?}"),
        }
    }
    let log = run.stop();
    assert_eq!(refusals(&log), vec!["core-grade", "cohort"]);
    assert!(!log.iter().any(|e| matches!(e.event, Event::BudgetCharged { .. })));
}

/// A coordinator colluding with one consumer cannot pass that consumer's job off as another's:
/// the party checks the consumer's signature against the roster before its policy, so the
/// allow-list and the per-consumer budget apply to the consumer who signed the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cannot_relabel_a_job_to_another_consumer() {
    let hospital = data("breast_cancer/hospital_a.csv").display().to_string();
    let datasets = format!(
        "\n[[datasets]]\nname = \"cells\"\npath = {hospital:?}\ncolumns = {{ mean_radius = \"float\" }}\n\
         [datasets.policy]\nconsumers = [\"analyst\"]\nbudget_per_consumer = 1.0\n",
    );
    let mut run = FakeRun::start(&["analyst", "partner"], 2, &datasets).await;
    let spec = veil_analytics::Job::parse(
        "dataset = \"cells\"\n[[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n\
         [privacy]\nrho = 0.5\n",
    )
    .unwrap();
    let other_id = veil_proto::submission::new_job_id();
    // (what the offer says, who signed it and under which id, the rule the party cites)
    let cases = [
        // The partner's job relabelled as the analyst's: the allow-list would pass it.
        ("analyst", Some(("partner", "")), "consumer-signature"),
        // No signature at all.
        ("analyst", None, "consumer-signature"),
        // The analyst's signature over the same job under another id (a replay).
        ("analyst", Some(("analyst", other_id.as_str())), "consumer-signature"),
        // A consumer the roster does not list.
        ("stranger", Some(("partner", "")), "consumer-signature"),
        // The partner's own signed job meets the allow-list.
        ("partner", Some(("partner", "")), "consumer"),
    ];
    for (named, signed, rule) in cases {
        let job_id = veil_proto::submission::new_job_id();
        let signed =
            signed.map(|(who, id)| (who, if id.is_empty() { job_id.as_str() } else { id }));
        let reply = run.offer(&job_id, &spec, named, signed, Vec::new()).await;
        assert!(!reply.accept, "{named} / {signed:?} was accepted");
        assert_eq!(reply.rule, rule, "{named}: {}", reply.reason);
    }
    // The analyst's own signed job is taken.
    let job_id = veil_proto::submission::new_job_id();
    let reply = run.offer(&job_id, &spec, "analyst", Some(("analyst", &job_id)), vec![9; 32]).await;
    assert!(reply.accept, "{}", reply.reason);
    // Its end comes with a receipt that names the partner: the party does not log it as a
    // release to anyone. The true receipt of the next accepted job it does log.
    let receipt = |job_id: &str, consumer: &str| veil_governance::Receipt {
        job_id: job_id.into(),
        job_hash: spec.hash(),
        consumer: consumer.into(),
        dataset: "cells".into(),
        parties: vec![veil_governance::receipt::Contribution {
            party: 0,
            dataset_sha256: String::new(),
            head: None,
        }],
        rho: 0.5,
        result_sha256: "00".repeat(32),
        time_ms: 1,
    };
    let end = |job_id: &str, consumer: &str| {
        veil_proto::v1::coordinator_envelope::Body::End(veil_proto::v1::TaskEnd {
            job_id: job_id.into(),
            succeeded: true,
            reason: String::new(),
            receipt_json: serde_json::to_string(&receipt(job_id, consumer)).unwrap(),
        })
    };
    run.send(end(&job_id, "partner")).await;
    let second = veil_proto::submission::new_job_id();
    let reply = run.offer(&second, &spec, "analyst", Some(("analyst", &second)), vec![8; 32]).await;
    assert!(reply.accept, "{}", reply.reason);
    run.send(end(&second, "analyst")).await;
    // A message after the end, so the end has been handled when the log is read.
    let third = veil_proto::submission::new_job_id();
    run.offer(&third, &spec, "partner", Some(("partner", &third)), Vec::new()).await;
    let log = run.stop();
    let released: Vec<(&str, &str)> = log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ResultReleased { receipt } => {
                Some((receipt.job_id.as_str(), receipt.consumer.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![(second.as_str(), "analyst")]);
    assert_eq!(
        refusals(&log),
        vec!["consumer-signature"; 4]
            .into_iter()
            .chain(["consumer", "consumer"])
            .collect::<Vec<_>>()
    );
    assert!(!log.iter().any(|e| matches!(e.event, Event::BudgetCharged { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_quotas_are_enforced_before_anything_is_offered() {
    let cluster = Cluster::start(ClusterSpec {
        parties: hospitals(""),
        analyst_quota: Some((2, 1)),
        ..ClusterSpec::named(&[])
    })
    .await;
    let (first, result) = cluster.run_job(&job("research", "mean_radius", None)).await;
    assert_eq!(first.state(), JobState::Succeeded);
    let mut jobs = cluster.jobs().await;
    // run_job fetched the result once: the fetch quota of 1 is used up.
    let status = jobs.result(JobRef { job_id: result.unwrap().job_id }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("fetch"), "{status}");
    cluster.submit(&job("research", "mean_radius", None)).await.unwrap();
    let status = cluster.submit(&job("research", "mean_radius", None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("2 jobs per 24 hours"), "{status}");
    // Every party logged its configuration on first start.
    assert!(matches!(party_log(&cluster, 0)[0].event, Event::ConfigChanged { .. }));
    cluster.shutdown().await;
}

/// Distributed differential privacy end to end: every party adds its share of discrete
/// Gaussian noise before masking; over repeated releases the errors of the released counts
/// and sums are centred with the spread the answers declare, and each release is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_answers_carry_the_declared_noise_and_are_charged() {
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(""), ..ClusterSpec::named(&[]) }).await;
    let spec = "dataset = \"cells\"\npurpose = \"research\"\nmin_parties = 3\nprivacy = { rho = 1.0 }\n\
                [[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n";
    let truth_rows = 569.0;
    let truth_sum: f64 = ["hospital_a", "hospital_b", "hospital_c"]
        .iter()
        .flat_map(|h| {
            let mut r = csv::Reader::from_path(data(&format!("breast_cancer/{h}.csv"))).unwrap();
            let i = r.headers().unwrap().iter().position(|c| c == "mean_radius").unwrap();
            r.records().map(move |rec| rec.unwrap()[i].parse::<f64>().unwrap()).collect::<Vec<_>>()
        })
        .sum();
    let runs = 24;
    let (mut count_err, mut sum_err) = (Vec::new(), Vec::new());
    let mut declared = None;
    for _ in 0..runs {
        let (status, result) = cluster.run_job(spec).await;
        assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
        let a: veil_analytics::Answer = serde_json::from_str(&result.unwrap().answer_json).unwrap();
        let privacy = a.privacy.expect("the answer reports its guarantee");
        assert_eq!((privacy.rho, privacy.parties), (1.0, 3));
        let c = &a.columns[0];
        count_err.push(c.count as f64 - truth_rows);
        sum_err.push(c.sum - truth_sum);
        declared = c.noise.clone();
    }
    let declared = declared.unwrap();
    let spread = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
    };
    for (name, errors, ci) in
        [("count", &count_err, declared.count_ci95), ("sum", &sum_err, declared.sum_ci95)]
    {
        let (mean, sd) = spread(errors);
        let expected = ci / 1.96;
        // With 24 releases the sample deviation lies within ±40% of the truth with
        // probability above 0.999; stochastic rounding adds a little spread to sums.
        assert!(
            sd > 0.6 * expected && sd < 1.4 * expected + 0.5,
            "{name}: sd {sd} vs declared {expected}"
        );
        assert!(
            mean.abs() < 4.0 * expected / (runs as f64).sqrt() + 0.5,
            "{name}: mean error {mean}"
        );
    }
    let spent =
        veil_governance::budget::Ledger::spent(&party_store(&cluster, 0), "cells", "analyst")
            .unwrap();
    assert!((spent.total - runs as f64).abs() < 1e-9, "each release charged ρ = 1: {spent:?}");
    cluster.shutdown().await;
}

/// A SQL query cannot reach an identifier or a disallowed column through its WHERE clause or
/// its GROUP BY, and a query that never ran charges no budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_where_and_group_by_columns_are_checked_too() {
    let policy = "bounds = { mean_radius = [0.0, 50.0], mean_area = [0.0, 3000.0] }\n\
                  domains = { target = [\"0\", \"1\"] }\n\
                  tags = { mean_area = \"identifier\" }\n\
                  [datasets.policy]\ncolumns = [\"mean_radius\"]\nbudget_total = 5.0\n";
    let cluster =
        Cluster::start(ClusterSpec { parties: hospitals(policy), ..ClusterSpec::named(&[]) }).await;
    let sql = |q: &str| serde_json::json!({ "sql": q, "privacy": { "rho": 0.5 } }).to_string();
    let (s, _) =
        cluster.run_job(&sql("SELECT AVG(mean_radius) FROM cells WHERE mean_area > 100")).await;
    assert_eq!(s.state(), JobState::Failed);
    assert!(s.detail.contains("identifier-column"), "{}", s.detail);
    let (s, _) =
        cluster.run_job(&sql("SELECT target, AVG(mean_radius) FROM cells GROUP BY target")).await;
    assert_eq!(s.state(), JobState::Failed);
    assert!(
        s.detail.contains("refused by rule column") && s.detail.contains("target"),
        "{}",
        s.detail
    );
    // Refused everywhere: nothing ran, nothing was charged.
    for i in 0..3 {
        let spent =
            veil_governance::budget::Ledger::spent(&party_store(&cluster, i), "cells", "analyst")
                .unwrap();
        assert_eq!(spent.total, 0.0, "party {i} charged a job that never ran");
    }
    let (ok, _) = cluster
        .run_job(&sql("SELECT COUNT(*), AVG(mean_radius) FROM cells WHERE mean_radius > 10"))
        .await;
    assert_eq!(ok.state(), JobState::Succeeded, "{ok:?}");
    cluster.shutdown().await;
}

/// A public-data operator answering alone: the same path with one party, allowed only when
/// its own policy accepts a cohort of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_party_release_needs_its_own_consent() {
    let mut parties = hospitals("bounds = { mean_radius = [0.0, 50.0] }\n");
    parties.truncate(1);
    let mut cluster = Cluster::start(ClusterSpec { parties, ..ClusterSpec::named(&[]) }).await;
    let query = serde_json::json!({
        "sql": "SELECT COUNT(*), AVG(mean_radius) FROM cells",
        "min_parties": 1,
        "privacy": { "rho": 2.0 }
    })
    .to_string();
    // Its configuration says its data is combined with at least two parties' (the default).
    let (refused, _) = cluster.run_job(&query).await;
    assert_eq!(refused.state(), JobState::Failed);
    // Allowing a cohort of one, it answers alone, with the noise it owes the consumer.
    let path = cluster.layout.party_configs[0].clone();
    let text = std::fs::read_to_string(&path).unwrap().replace("min_cohort = 2", "min_cohort = 1");
    std::fs::write(&path, text).unwrap();
    cluster.kill_party(0);
    // The old stream must be gone first, or it would count as the restarted party.
    cluster.wait_disconnected(0).await;
    cluster.start_party(0);
    cluster.wait_connected(1).await;
    let (status, result) = cluster.run_job(&query).await;
    assert_eq!(status.state(), JobState::Succeeded, "{status:?}");
    let a: veil_analytics::Answer = serde_json::from_str(&result.unwrap().answer_json).unwrap();
    assert_eq!(a.contributors, vec![0]);
    assert_eq!(a.privacy.unwrap().parties, 1);
    cluster.shutdown().await;
}
