//! The consumer's side of a signed job: a coordinator that plans another job than the one
//! asked for gets no signature.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use tonic::{Request, Response, Status};
use veil_analytics::Job;
use veil_proto::submission::{Signer, verify_job};
use veil_proto::v1::jobs_server::{Jobs, JobsServer};
use veil_proto::v1::{
    JobList, JobRef, JobResult, JobStatus, ListJobsRequest, PlanRequest, PlannedJob, ReceiptList,
    SubmitRequest, jobs_client::JobsClient,
};

/// How the fake coordinator plans a request.
type Plan = fn(&str) -> String;

/// A coordinator's job service that plans every request as `plan` says and records what is
/// submitted to it.
struct Planner {
    plan: Plan,
    submitted: Arc<Mutex<Vec<SubmitRequest>>>,
}

type Statuses = Pin<Box<dyn tokio_stream::Stream<Item = Result<JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for Planner {
    type WatchStream = Statuses;
    async fn plan(&self, r: Request<PlanRequest>) -> Result<Response<PlannedJob>, Status> {
        let text = (self.plan)(&r.into_inner().spec);
        let job = Job::parse(&text).unwrap();
        let (spec_json, job_hash) = (job.canonical_json(), job.hash());
        Ok(Response::new(PlannedJob { spec_json, job_hash, purpose: job.purpose().into() }))
    }
    async fn submit(&self, r: Request<SubmitRequest>) -> Result<Response<JobStatus>, Status> {
        self.submitted.lock().unwrap().push(r.into_inner());
        Ok(Response::new(JobStatus::default()))
    }
    async fn watch(&self, _: Request<JobRef>) -> Result<Response<Statuses>, Status> {
        Err(Status::unimplemented("watch"))
    }
    async fn get(&self, _: Request<JobRef>) -> Result<Response<JobStatus>, Status> {
        Err(Status::unimplemented("get"))
    }
    async fn list(&self, _: Request<ListJobsRequest>) -> Result<Response<JobList>, Status> {
        Err(Status::unimplemented("list"))
    }
    async fn cancel(&self, _: Request<JobRef>) -> Result<Response<JobStatus>, Status> {
        Err(Status::unimplemented("cancel"))
    }
    async fn receipts(&self, _: Request<ListJobsRequest>) -> Result<Response<ReceiptList>, Status> {
        Err(Status::unimplemented("receipts"))
    }
    async fn result(&self, _: Request<JobRef>) -> Result<Response<JobResult>, Status> {
        Err(Status::unimplemented("result"))
    }
    async fn catalog(
        &self,
        _: Request<veil_proto::v1::CatalogRequest>,
    ) -> Result<Response<veil_proto::v1::CatalogList>, Status> {
        Err(Status::unimplemented("catalog"))
    }
}

/// Submits `request` through a coordinator that plans as `plan` does; returns the outcome and
/// what reached the coordinator's Submit.
async fn submit_through(
    plan: Plan,
    request: &str,
) -> (Result<JobStatus, Status>, Vec<SubmitRequest>, Signer) {
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(JobsServer::new(Planner { plan, submitted: submitted.clone() }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let signer = Signer::new("analyst", SigningKey::from_bytes(&[7; 32]), Job::plan_check);
    let outcome = signer.submit(&mut JobsClient::new(channel), request).await;
    server.abort();
    let sent = submitted.lock().unwrap().clone();
    (outcome, sent, signer)
}

const CELLS: &str = "dataset = \"cells\"\npurpose = \"research\"\nprivacy = { rho = 0.5 }\n\
                     [[columns]]\nname = \"mean_radius\"\nmin = 0\nmax = 50\n";

const SQL: &str = r#"{"sql": "SELECT COUNT(*), AVG(dep_delay) FROM flights", "purpose": "research", "privacy": {"rho": 0.5}}"#;

/// The honest plan of `SQL`, as JSON to tamper with.
fn flights_plan() -> serde_json::Value {
    let catalog = veil_analytics::DatasetCatalog {
        name: "flights".into(),
        columns: vec![veil_analytics::ColumnInfo {
            name: "dep_delay".into(),
            ty: veil_analytics::ColumnType::Float,
            bounds: Some((-60.0, 600.0)),
            domain: None,
        }],
    };
    let options = veil_analytics::sql::SqlOptions {
        purpose: "research".into(),
        rho: Some(0.5),
        k_threshold: None,
        min_parties: 2,
    };
    let spec = veil_analytics::sql::plan_sql(
        "SELECT COUNT(*), AVG(dep_delay) FROM flights",
        &[catalog],
        &options,
    )
    .unwrap();
    serde_json::from_str(&spec.canonical_json()).unwrap()
}

fn tampered(change: fn(&mut serde_json::Value)) -> String {
    let mut plan = flights_plan();
    change(&mut plan);
    plan.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_plans_another_job_gets_no_signature() {
    let substitutes: [(&str, Plan); 5] = [
        ("another dataset", |_| CELLS.replace("\"cells\"", "\"patients\"")),
        ("one party", |_| format!("min_parties = 1\n{CELLS}")),
        ("no noise", |_| CELLS.replace("privacy = { rho = 0.5 }\n", "")),
        ("another purpose", |_| CELLS.replace("research", "marketing")),
        ("another column", |_| CELLS.replace("mean_radius", "mean_area")),
    ];
    for (what, plan) in substitutes {
        let (outcome, sent, _) = submit_through(plan, CELLS).await;
        let status = outcome.unwrap_err();
        assert!(status.message().contains("nothing was signed"), "{what}: {status}");
        assert!(sent.is_empty(), "{what}: a substituted plan was signed and submitted");
    }
    // The honest plan (the request's own canonical form) is signed over its hash and purpose.
    let (outcome, sent, signer) = submit_through(|r| r.to_string(), CELLS).await;
    outcome.unwrap();
    let job = Job::parse(CELLS).unwrap();
    let s = &sent[0];
    assert_eq!(s.spec, job.canonical_json());
    assert!(verify_job(
        &signer.verifying_key(),
        &s.signature,
        &s.job_id,
        &job.hash(),
        "analyst",
        "research"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_plan_must_keep_the_querys_table_options_and_outputs() {
    let substitutes: [(&str, Plan); 4] = [
        ("another table", |_| tampered(|p| p["dataset"] = "cells".into())),
        ("no noise", |_| tampered(|p| _ = p.as_object_mut().unwrap().remove("privacy"))),
        ("one party", |_| tampered(|p| p["min_parties"] = 1.into())),
        ("a dropped output", |_| tampered(|p| _ = p["select"].as_array_mut().unwrap().remove(0))),
    ];
    for (what, plan) in substitutes {
        let (outcome, sent, _) = submit_through(plan, SQL).await;
        assert!(outcome.is_err(), "{what}: signed");
        assert!(sent.is_empty(), "{what}: a substituted plan was submitted");
    }
    let (outcome, sent, _) = submit_through(|_| flights_plan().to_string(), SQL).await;
    outcome.unwrap();
    assert_eq!(sent.len(), 1);
}
