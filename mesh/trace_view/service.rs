//! The OTLP receiver (`opentelemetry.proto.collector.trace.v1.TraceService`, from the official protos)
//! and `exemesh.v1.Traces`, both over one [`TraceStore`].

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

use super::store::TraceStore;
use crate::pb::v1::traces_server::Traces;
use crate::pb::v1::{GetTraceRequest, GetTraceResponse, ListTracesRequest, ListTracesResponse};

/// Receives spans.
#[derive(Debug, Clone)]
pub struct Receiver(pub Arc<TraceStore>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.add(request.into_inner().resource_spans);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

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
