//! Starting the coordinator: the store, the progress writer, interrupted jobs, and the three
//! gRPC services on one listener.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tonic::transport::Server;

use crate::store::{self, Store};
use crate::{
    CoordinatorConfig, CoordinatorError, ProgressWrite, Shared, admin, driver, gateway, jobs,
    now_ms,
};

/// Serves the coordinator on `listener` until `shutdown` completes. Jobs that were under way
/// when a previous run stopped are marked failed with the reason first.
pub async fn serve(
    config: CoordinatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let store = Store::open(&config.database, config.identity.clone())?;
    let interrupted = store.fail_interrupted(now_ms())?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "marked jobs interrupted by the last stop as failed");
    }
    let protocol_roster =
        Arc::new(config.roster.protocol_roster().map_err(CoordinatorError::Roster)?);
    let (status, _) = broadcast::channel(1024);
    // The roster and quotas in force, logged whenever they change.
    let roster_text = format!("{:?}", config.roster);
    let what = format!(
        "roster of {} parties and {} consumers, fingerprint {}",
        config.roster.parties.len(),
        config.roster.consumers.len(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(roster_text.as_bytes()))
    );
    let last = store.audit_log()?.into_iter().rev().find_map(|t| {
        match serde_json::from_str::<veil_governance::audit::Entry>(&t).ok()?.event {
            veil_governance::audit::Event::ConfigChanged { what } => Some(what),
            _ => None,
        }
    });
    if last.as_deref() != Some(what.as_str()) {
        store.audit(veil_governance::audit::Event::ConfigChanged { what }, now_ms())?;
    }
    let store = Arc::new(store);
    let (progress, writes) = std::sync::mpsc::channel::<ProgressWrite>();
    let writer_store = store.clone();
    std::thread::Builder::new()
        .name("veil-progress-writer".into())
        .spawn(move || {
            for w in writes {
                if let Err(e) =
                    writer_store.update_job(&w.job_id, w.state, &w.detail, &w.parties, w.at_ms)
                {
                    tracing::error!(job = %w.job_id, error = %e, "cannot record job progress");
                }
            }
        })
        .map_err(|e| CoordinatorError::Roster(format!("cannot start the progress writer: {e}")))?;
    let shared = Arc::new(Shared {
        store,
        progress: Mutex::new(progress),
        roster: config.roster,
        protocol_roster,
        plaintext: config.tls.is_none(),
        stage_timeout: config.stage_timeout,
        offer_timeout: config.offer_timeout,
        max_corrupt: config.max_corrupt,
        identity: config.identity.clone(),
        tap: config.inbound_tap,
        parties: Mutex::new(BTreeMap::new()),
        jobs: Mutex::new(HashMap::new()),
        status,
        next_connection: AtomicU64::new(1),
    });
    resume_interrupted(&shared);
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Masked vectors are megabytes: HTTP/2's default 64 KiB windows would make every upload
        // wait on window updates.
        .initial_stream_window_size(Some(veil_proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(veil_proto::CONNECTION_WINDOW));
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let max = veil_proto::MAX_MESSAGE_BYTES;
    builder
        .add_service(
            veil_proto::v1::party_gateway_server::PartyGatewayServer::new(gateway::Gateway::new(
                shared.clone(),
            ))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            veil_proto::v1::jobs_server::JobsServer::new(jobs::JobsApi::new(shared.clone()))
                .max_decoding_message_size(1 << 20)
                .max_encoding_message_size(max),
        )
        .add_service(veil_proto::v1::admin_server::AdminServer::new(admin::AdminApi::new(
            shared.clone(),
        )))
        .serve_with_incoming_shutdown(
            // Small protocol messages must not wait behind delayed acknowledgements.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Restarts the training jobs a previous run left with a checkpoint, from their last finished
/// step; a checkpoint that cannot be read fails its job with the reason.
fn resume_interrupted(shared: &Arc<Shared>) {
    let resumable = match shared.store.resumable() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the checkpoints");
            return;
        }
    };
    for (mut record, checkpoint, parties) in resumable {
        let parsed = veil_analytics::Job::parse(&record.spec_json)
            .map_err(|e| e.to_string())
            .and_then(|job| {
                serde_json::from_str::<veil_learning::job::Training>(&checkpoint)
                    .map(|t| (job, t))
                    .map_err(|e| format!("unreadable checkpoint: {e}"))
            });
        match parsed {
            Ok((job, training)) => {
                let done = training.history.len();
                tracing::warn!(job = %record.id, rounds = done, "resuming a training job");
                record.state = store::JobState::Queued;
                record.detail = format!("resuming after {done} rounds: the coordinator restarted");
                record.updated_ms = now_ms();
                shared.progress(&record);
                driver::start(shared.clone(), record, job, Some((training, parties)));
            }
            Err(reason) => {
                let detail = format!("interrupted and cannot resume: {reason}");
                if let Err(e) = shared.store.update_job(
                    &record.id,
                    store::JobState::Failed,
                    &detail,
                    &record.parties,
                    now_ms(),
                ) {
                    tracing::error!(job = %record.id, error = %e, "cannot record the job's end");
                }
            }
        }
    }
}
