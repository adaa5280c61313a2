//! `exemesh.v1.Traces`: what the [`TraceStore`] holds, for `exemesh trace`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::store::TraceStore;
use crate::pb::v1::traces_server::Traces;
use crate::pb::v1::{GetTraceRequest, GetTraceResponse, ListTracesRequest, ListTracesResponse};

/// Serves what was received.
#[derive(Debug, Clone)]
pub struct Query(pub Arc<TraceStore>);

#[tonic::async_trait]
impl Traces for Query {
    async fn list_traces(
        &self,
        request: Request<ListTracesRequest>,
    ) -> Result<Response<ListTracesResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => 20,
            n => n as usize,
        };
        Ok(Response::new(ListTracesResponse {
            traces: self.0.list(limit),
        }))
    }

    async fn get_trace(
        &self,
        request: Request<GetTraceRequest>,
    ) -> Result<Response<GetTraceResponse>, Status> {
        let id = &request.get_ref().trace_id;
        let spans = self.0.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "no trace {id} (or the prefix is ambiguous); `exemesh trace` lists the recent ones"
            ))
        })?;
        Ok(Response::new(GetTraceResponse { spans }))
    }
}
