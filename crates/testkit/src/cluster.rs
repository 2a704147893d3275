//! A consortium on loopback: a real coordinator and real parties in this process, speaking
//! gRPC over mutual TLS on 127.0.0.1, created with the same code as `veil init` in a temporary
//! directory. Each party is its own task and can be stopped alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use veil_coordinator::consortium::{self, ConsortiumLayout, ConsortiumSpec};
use veil_coordinator::{CoordinatorConfig, CoordinatorFile};
use veil_party_worker::{Fault, PartyConfig, PartyFile, WorkerError, WorkerOptions};
use veil_proto::client::ConsumerFile;
use veil_proto::submission::Signer;
use veil_proto::v1::JobState;
use veil_proto::v1::admin_client::AdminClient;
use veil_proto::v1::jobs_client::JobsClient;
use veil_proto::v1::{JobRef, JobResult, JobStatus, ListPartiesRequest};

/// A dataset a party serves: name, CSV file, and `column = type` pairs.
#[derive(Clone, Debug)]
pub struct DatasetSpec {
    /// The name jobs use.
    pub name: String,
    /// The CSV file.
    pub path: PathBuf,
    /// `(column, type)` with type `int`, `float` or `string`.
    pub columns: Vec<(String, String)>,
    /// More TOML for the dataset's section: `grade = …`, `tags = {…}`, `[datasets.policy]`.
    pub extra_toml: String,
}

/// One party of the cluster.
#[derive(Clone, Debug, Default)]
pub struct PartySpec {
    /// Its name.
    pub name: String,
    /// The datasets it serves.
    pub datasets: Vec<DatasetSpec>,
    /// An injected fault.
    pub fault: Option<Fault>,
    /// Whether it accepts synthetic benchmark jobs.
    pub benchmark: bool,
    /// TOML appended to its `party.toml` after the datasets (a `[trainers]` table, say).
    pub extra_toml: String,
}

/// The whole cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The parties, ids in order.
    pub parties: Vec<PartySpec>,
    /// Stage timeout of the coordinator.
    pub stage_timeout: Duration,
    /// Offer timeout of the coordinator.
    pub offer_timeout: Duration,
    /// Quotas of the consumer `analyst`: jobs and result fetches per 24 hours.
    pub analyst_quota: Option<(u32, u32)>,
}

/// A file under the repository's `examples/data`.
pub fn example_data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/data").join(path)
}

/// The three hospitals of `examples/data/breast_cancer`, each serving its file as dataset
/// `cells` with these columns and extra TOML; `fault` injects a fault into one of them.
pub fn hospitals(
    columns: &[(String, String)],
    extra_toml: &str,
    fault: Option<(usize, Fault)>,
) -> Vec<PartySpec> {
    ["hospital_a", "hospital_b", "hospital_c"]
        .iter()
        .enumerate()
        .map(|(i, h)| PartySpec {
            name: h.to_string(),
            datasets: vec![DatasetSpec {
                name: "cells".into(),
                path: example_data(&format!("breast_cancer/{h}.csv")),
                columns: columns.to_vec(),
                extra_toml: extra_toml.to_string(),
            }],
            fault: fault.and_then(|(j, f)| (j == i).then_some(f)),
            ..PartySpec::default()
        })
        .collect()
}

/// The three hospitals and a fourth party, `clinic_d`, serving a copy of hospital_c's rows:
/// rounds that tolerate one colluding party survive one dropout from four parties (the survivor
/// quorum of four is three), not from three.
pub fn hospitals_and_a_clinic(
    columns: &[(String, String)],
    extra_toml: &str,
    fault: Option<(usize, Fault)>,
) -> Vec<PartySpec> {
    let mut parties = hospitals(columns, extra_toml, fault);
    let mut clinic = parties[2].clone();
    clinic.name = "clinic_d".into();
    clinic.fault = fault.and_then(|(j, f)| (j == 3).then_some(f));
    parties.push(clinic);
    parties
}

impl ClusterSpec {
    /// Parties with these names and no datasets, short timeouts.
    pub fn named(names: &[&str]) -> Self {
        Self {
            parties: names
                .iter()
                .map(|n| PartySpec { name: n.to_string(), ..PartySpec::default() })
                .collect(),
            stage_timeout: Duration::from_secs(5),
            offer_timeout: Duration::from_secs(5),
            analyst_quota: None,
        }
    }
}

struct Running<T> {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(mut self) -> Option<T> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.ok()
    }
}

/// The coordinator runs on its own runtime, so that killing it tears down every connection and
/// task it had, as a crash of its process would.
struct CoordinatorRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<(), veil_coordinator::CoordinatorError>>>,
}

impl CoordinatorRuntime {
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for CoordinatorRuntime {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running cluster. Dropping it aborts every task.
pub struct Cluster {
    _dir: Option<tempfile::TempDir>,
    /// Where `veil init` wrote the consortium.
    pub layout: ConsortiumLayout,
    /// The coordinator's address.
    pub addr: SocketAddr,
    spec: ClusterSpec,
    coordinator: Option<CoordinatorRuntime>,
    parties: Vec<Option<Running<Result<(), WorkerError>>>>,
    /// Every envelope the coordinator received from a party, as encoded on the wire.
    pub inbound: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.coordinator.take();
        for p in self.parties.iter().flatten() {
            p.task.abort();
        }
    }
}

fn dataset_toml(d: &DatasetSpec) -> String {
    let columns: Vec<String> = d.columns.iter().map(|(c, t)| format!("{c} = \"{t}\"")).collect();
    let path = if d.path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("path = {:?}\n", d.path.display().to_string())
    };
    format!(
        "\n[[datasets]]\nname = \"{}\"\n{path}columns = {{ {} }}\n{}\n",
        d.name,
        columns.join(", "),
        d.extra_toml
    )
}

/// Loads a party's configuration from its `party.toml`.
pub fn party_config(path: &Path) -> PartyConfig {
    PartyFile::load(path)
        .and_then(|f| f.into_config(false))
        .unwrap_or_else(|e| panic!("party configuration {}: {e}", path.display()))
}

impl Cluster {
    /// Creates the consortium in a temporary directory and starts everything; returns once
    /// every party is connected.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let layout = consortium::create(
            dir.path(),
            &ConsortiumSpec {
                name: "test".into(),
                parties: spec.parties.iter().map(|p| p.name.clone()).collect(),
                consumers: vec![("analyst".into(), false), ("operator".into(), true)],
                coordinator: addr,
            },
        )
        .expect("consortium created");
        if let Some((jobs, fetches)) = spec.analyst_quota {
            let mut roster = veil_proto::roster::RosterFile::load(&layout.roster).expect("roster");
            for c in roster.consumers.iter_mut().filter(|c| c.name == "analyst") {
                c.jobs_per_day = Some(jobs);
                c.fetches_per_day = Some(fetches);
            }
            std::fs::write(&layout.roster, roster.to_toml()).expect("roster written");
        }
        for (p, path) in spec.parties.iter().zip(&layout.party_configs) {
            let mut text = std::fs::read_to_string(path).expect("party.toml");
            for d in &p.datasets {
                text += &dataset_toml(d);
            }
            text += &p.extra_toml;
            std::fs::write(path, text).expect("party.toml written");
        }
        let mut cluster = Cluster {
            _dir: Some(dir),
            layout,
            addr,
            spec,
            coordinator: None,
            parties: Vec::new(),
            inbound: Arc::new(Mutex::new(Vec::new())),
        };
        cluster.start_coordinator(listener);
        for i in 0..cluster.spec.parties.len() {
            cluster.parties.push(None);
            cluster.start_party(i);
        }
        cluster.wait_connected(cluster.spec.parties.len()).await;
        cluster
    }

    fn coordinator_config(&self) -> CoordinatorConfig {
        let mut config = CoordinatorFile::load(&self.layout.coordinator_config)
            .and_then(|f| f.into_config(false))
            .expect("coordinator configuration");
        config.stage_timeout = self.spec.stage_timeout;
        config.offer_timeout = self.spec.offer_timeout;
        let inbound = self.inbound.clone();
        config.inbound_tap = Some(Arc::new(move |bytes: &[u8]| {
            inbound.lock().unwrap_or_else(|e| e.into_inner()).push(bytes.to_vec());
        }));
        config
    }

    fn start_coordinator(&mut self, listener: std::net::TcpListener) {
        let config = self.coordinator_config();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the coordinator");
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        listener.set_nonblocking(true).expect("non-blocking listener");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let r = veil_coordinator::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await;
            let _ = done_tx.send(r);
        });
        self.coordinator =
            Some(CoordinatorRuntime { runtime: Some(runtime), stop: Some(stop), done: Some(done) });
    }

    /// Starts (or restarts) party `i` with its spec's options.
    pub fn start_party(&mut self, i: usize) {
        let config = party_config(&self.layout.party_configs[i]);
        let p = &self.spec.parties[i];
        let options = WorkerOptions { dangerous_benchmark: p.benchmark, fault: p.fault };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(veil_party_worker::run(config, options, async {
            let _ = stopped.await;
        }));
        self.parties[i] = Some(Running { stop: Some(stop), task });
    }

    /// Changes party `i`'s injected fault for its next start.
    pub fn set_fault(&mut self, i: usize, fault: Option<Fault>) {
        self.spec.parties[i].fault = fault;
    }

    /// Watches a job until it reaches `state` or ends (at most 30 s).
    pub async fn wait_state(&self, job_id: &str, state: &str) -> JobStatus {
        let mut jobs = self.jobs().await;
        let mut stream =
            jobs.watch(JobRef { job_id: job_id.to_string() }).await.expect("watch").into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(s))) if s.state().name() == state => return s,
                Ok(Ok(Some(s))) if s.state().is_final() => {
                    return s;
                }
                Ok(Ok(Some(_))) => {}
                other => panic!("job {job_id} never reached {state}: {other:?}"),
            }
        }
    }

    /// Kills party `i` at once (its task is aborted; its connection drops).
    pub fn kill_party(&mut self, i: usize) {
        if let Some(p) = self.parties[i].take() {
            p.task.abort();
        }
    }

    /// Whether party `i`'s task has ended, and how.
    pub async fn party_outcome(&mut self, i: usize) -> Option<Result<(), WorkerError>> {
        match self.parties[i].take() {
            Some(p) if p.task.is_finished() => p.task.await.ok(),
            other => {
                self.parties[i] = other;
                None
            }
        }
    }

    /// Kills the coordinator: its runtime is torn down mid-work with every task and connection,
    /// as by a crash.
    pub async fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            c.kill();
        }
    }

    /// Stops the coordinator cleanly.
    pub async fn stop_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            if let Some(s) = c.stop.take() {
                let _ = s.send(());
            }
            if let Some(done) = c.done.take() {
                // Graceful shutdown waits for open streams; parties hold theirs open.
                let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
            }
            c.kill();
        }
    }

    /// Starts the coordinator again on the same address and database; waits for the parties
    /// still running to reconnect.
    pub async fn restart_coordinator(&mut self) {
        let mut listener = None;
        for _ in 0..50 {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.start_coordinator(listener.expect("the coordinator's port is free again"));
        let alive = self
            .parties
            .iter()
            .filter(|p| p.as_ref().is_some_and(|p| !p.task.is_finished()))
            .count();
        self.wait_connected(alive).await;
    }

    /// The ρ party `i`'s dataset has spent for `consumer`, and in all, read from its store
    /// (opened read-alongside the running party; the signing key only signs new entries).
    pub fn spent(&self, i: usize, dataset: &str, consumer: &str) -> veil_governance::budget::Spent {
        let dir = self.layout.party_configs[i].parent().expect("a party's folder").to_path_buf();
        let key = ed25519_dalek::SigningKey::from_bytes(&[0; 32]);
        let store = veil_party_worker::store::PartyStore::open(
            &dir.join("party-state.db"),
            &format!("party {i}"),
            key,
        )
        .expect("the party's store opens");
        veil_governance::budget::Ledger::spent(&store, dataset, consumer).expect("the ledger reads")
    }

    /// Stops every party and the coordinator cleanly.
    pub async fn shutdown(mut self) {
        for p in self.parties.iter_mut() {
            if let Some(p) = p.take() {
                let _ = p.stop().await;
            }
        }
        self.stop_coordinator().await;
    }

    /// A client for a consumer from the roster (`analyst`, or the administrator `operator`).
    pub async fn channel(&self, consumer: &str) -> Channel {
        let path = self.layout.root.join("consumers").join(consumer).join("consumer.toml");
        let file = ConsumerFile::load(&path).expect("consumer.toml");
        let tls = file.tls().expect("consumer TLS material");
        veil_proto::client::connect(&file.coordinator, Some(&tls)).await.expect("connect")
    }

    /// The key that signs a consumer's jobs (`analyst` or `operator`).
    pub fn signer(&self, consumer: &str) -> Signer {
        let path = self.layout.root.join("consumers").join(consumer).join("consumer.toml");
        ConsumerFile::load(&path)
            .expect("consumer.toml")
            .signer(veil_analytics::Job::plan_check)
            .expect("the consumer's signing key")
    }

    /// Submits a specification as `analyst`, signed.
    pub async fn submit(&self, spec: &str) -> Result<JobStatus, tonic::Status> {
        self.signer("analyst").submit(&mut self.jobs().await, spec).await
    }

    /// A job client for `analyst`.
    pub async fn jobs(&self) -> JobsClient<Channel> {
        JobsClient::new(self.channel("analyst").await)
    }

    /// Waits (at most 20 s) until `n` parties are connected.
    pub async fn wait_connected(&self, n: usize) {
        let mut admin = AdminClient::new(self.channel("operator").await);
        for _ in 0..200 {
            if let Ok(list) = admin.list_parties(ListPartiesRequest {}).await {
                if list.into_inner().parties.iter().filter(|p| p.connected).count() >= n {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{n} parties did not connect within 20 s");
    }

    /// Waits (at most 20 s) until the coordinator no longer lists `party` as connected, so that
    /// a stream left over from a stopped party is not counted as its replacement.
    pub async fn wait_disconnected(&self, party: u32) {
        let mut admin = AdminClient::new(self.channel("operator").await);
        for _ in 0..200 {
            if let Ok(list) = admin.list_parties(ListPartiesRequest {}).await {
                if !list.into_inner().parties.iter().any(|p| p.party_id == party && p.connected) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("party {party} still counted as connected after 20 s");
    }

    /// Submits a specification and waits (at most 60 s) for the job to end; returns its final
    /// status and, if it succeeded, its result.
    pub async fn run_job(&self, spec: &str) -> (JobStatus, Option<JobResult>) {
        let mut jobs = self.jobs().await;
        let status = self
            .signer("analyst")
            .submit(&mut jobs, spec)
            .await
            .unwrap_or_else(|s| panic!("submit refused: {s}"));
        let status = self.wait_job(&status.job_id).await;
        let result = if status.state() == JobState::Succeeded {
            Some(
                jobs.result(JobRef { job_id: status.job_id.clone() })
                    .await
                    .expect("result")
                    .into_inner(),
            )
        } else {
            None
        };
        (status, result)
    }

    /// Watches a job until it ends (at most 60 s).
    pub async fn wait_job(&self, job_id: &str) -> JobStatus {
        let mut jobs = self.jobs().await;
        let mut stream =
            jobs.watch(JobRef { job_id: job_id.to_string() }).await.expect("watch").into_inner();
        let mut last = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(s))) => last = Some(s),
                Ok(Ok(None)) => break,
                Ok(Err(status)) => panic!("watch failed: {status}"),
                Err(_) => panic!("job {job_id} did not end within 60 s: {last:?}"),
            }
        }
        last.expect("watch sends the current status first")
    }
}
