//! The coordinator's services on their own, over real gRPC with mutual TLS on loopback: a
//! consortium from `veil init`, the coordinator from its configuration file, and consumers and
//! parties as their certificates make them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tonic::Code;
use veil_coordinator::consortium::{ConsortiumLayout, ConsortiumSpec, create};
use veil_coordinator::{CoordinatorFile, serve};
use veil_proto::client::ConsumerFile;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{JobRef, JobState, ListJobsRequest, PlanRequest};

/// A consortium of two parties (not running) and an analyst, and its coordinator serving on
/// loopback until the returned sender is dropped.
async fn coordinator(
    dir: &std::path::Path,
) -> (ConsortiumLayout, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let spec = ConsortiumSpec {
        name: "services".into(),
        parties: vec!["a".into(), "b".into()],
        consumers: vec![("analyst".into(), false)],
        coordinator: addr,
    };
    let layout = create(dir, &spec).unwrap();
    let mut config =
        CoordinatorFile::load(&layout.coordinator_config).unwrap().into_config(false).unwrap();
    config.offer_timeout = Duration::from_secs(2);
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(config, listener, async {
        let _ = stopped.await;
    }));
    (layout, stop)
}

async fn analyst(
    layout: &ConsortiumLayout,
) -> (JobsClient<tonic::transport::Channel>, ConsumerFile) {
    let path = layout.root.join("consumers/analyst/consumer.toml");
    let file = ConsumerFile::load(&path).unwrap();
    let channel =
        veil_proto::client::connect(&file.coordinator, Some(&file.tls().unwrap())).await.unwrap();
    (JobsClient::new(channel), file)
}

const CELLS: &str = "dataset = \"cells\"\n[[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n";

/// With no party connected, a signed job is taken and fails saying why; a SQL query cannot even
/// be planned, as no party has announced the dataset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_parties_fails_with_the_reason_and_sql_needs_a_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, _stop) = coordinator(dir.path()).await;
    let (mut jobs, file) = analyst(&layout).await;
    let signer = file.signer(veil_analytics::Job::plan_check).unwrap();
    let status = signer.submit(&mut jobs, CELLS).await.unwrap();
    assert_eq!(status.state(), JobState::Queued);
    let mut watch =
        jobs.watch(JobRef { job_id: status.job_id.clone() }).await.unwrap().into_inner();
    let mut last = None;
    while let Some(s) =
        tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap()
    {
        last = Some(s);
    }
    let last = last.unwrap();
    assert_eq!(last.state(), JobState::Failed);
    assert!(last.detail.contains("0 connected parties serve dataset \"cells\""), "{}", last.detail);
    let listed = jobs.list(ListJobsRequest {}).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 1);
    let sql = serde_json::json!({ "sql": "SELECT COUNT(*) FROM cells" }).to_string();
    let status = jobs.plan(PlanRequest { spec: sql }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("no dataset \"cells\""), "{status}");
}

/// A party's certificate is no consumer's: the jobs service refuses it, and a consumer's
/// certificate is refused on the party gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_is_served_only_in_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, _stop) = coordinator(dir.path()).await;
    let party = layout.party_configs[0].parent().unwrap();
    let (_, file) = analyst(&layout).await;
    let tls = veil_proto::tls::TlsMaterial::load(&veil_proto::tls::TlsFiles {
        ca: layout.root.join("ca.pem"),
        cert: party.join("cert.pem"),
        key: party.join("key.pem"),
    })
    .unwrap();
    let channel = veil_proto::client::connect(&file.coordinator, Some(&tls)).await.unwrap();
    let status =
        JobsClient::new(channel).plan(PlanRequest { spec: CELLS.into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains("is a party"), "{status}");

    let channel =
        veil_proto::client::connect(&file.coordinator, Some(&file.tls().unwrap())).await.unwrap();
    let mut gateway = veil_proto::v1::party_gateway_client::PartyGatewayClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = veil_proto::v1::Hello { party_id: 0, ..Default::default() };
    let body = veil_proto::v1::party_envelope::Body::Hello(hello);
    tx.send(veil_proto::v1::PartyEnvelope { body: Some(body) }).await.unwrap();
    let outcome = match gateway.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(outcome.code(), Code::PermissionDenied, "{outcome}");
    assert!(outcome.message().contains("consumer"), "{outcome}");
}
