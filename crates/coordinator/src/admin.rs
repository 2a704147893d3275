//! The admin service: the parties and their state.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use veil_proto::roster::Member;
use veil_proto::v1::admin_server::Admin;
use veil_proto::v1::{
    AuditLogRequest, AuditLogResponse, ListPartiesRequest, PartyList, PartyState,
};

use crate::Shared;

/// The `Admin` service.
pub struct AdminApi {
    shared: Arc<Shared>,
}

impl AdminApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn audit_log(
        &self,
        request: Request<AuditLogRequest>,
    ) -> Result<Response<AuditLogResponse>, Status> {
        match self.shared.caller(&request)? {
            Member::Consumer { admin: true, .. } => {}
            _ => return Err(Status::permission_denied("the admin service needs an administrator")),
        }
        let entries_json =
            self.shared.store.audit_log().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(AuditLogResponse { entries_json }))
    }

    async fn list_parties(
        &self,
        request: Request<ListPartiesRequest>,
    ) -> Result<Response<PartyList>, Status> {
        match self.shared.caller(&request)? {
            Member::Consumer { admin: true, .. } => {}
            _ => return Err(Status::permission_denied("the admin service needs an administrator")),
        }
        let connected = self.shared.connected_parties();
        let seen = self.shared.store.parties().map_err(|e| Status::internal(e.to_string()))?;
        let parties = self
            .shared
            .roster
            .parties
            .iter()
            .map(|p| {
                let id = veil_protocol::PartyId(p.id);
                let last = seen.iter().find(|(i, _, _)| *i == p.id);
                PartyState {
                    party_id: p.id,
                    name: p.name.clone(),
                    connected: connected.contains_key(&id),
                    datasets: connected
                        .get(&id)
                        .map(|(d, _)| d.clone())
                        .or_else(|| last.map(|(_, d, _)| d.clone()))
                        .unwrap_or_default(),
                    last_seen_unix_ms: last.map_or(0, |(_, _, t)| *t),
                }
            })
            .collect();
        Ok(Response::new(PartyList { parties }))
    }
}
