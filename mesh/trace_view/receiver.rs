//! The OTLP trace receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) of
//! `exemesh up`, which files spans without decoding them.
//!
//! An export request is read as nested byte ranges: each span stays the protobuf bytes it arrived
//! as, and only the few fields a trace summary needs are read from it ([`SpanHead`]); names,
//! attributes and events are skipped, not decoded. The generated OTLP server would decode every
//! span into a tree of strings and vectors, only for the store to keep a fraction of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::span_head::SpanHead;
use super::store::{TraceStore, text};
use super::wire::repeated;
use crate::mesh::telemetry::otlp::ExportRequest;

/// The export method's path.
const EXPORT: &str = crate::mesh::telemetry::otlp::EXPORT_PATH;

/// The gRPC service name of the OTLP trace collector.
pub const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The largest export request accepted.
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// `ExportTraceServiceRequest.resource_spans[].resource` and `.scope_spans`, and
/// `ScopeSpans.spans` (OTLP field numbers).
const RESOURCE: u32 = 1;
const SCOPE_SPANS: u32 = 2;
const SPANS: u32 = 2;

/// Receives spans into a [`TraceStore`]: a tower service to mount in a [`GrpcRouter`](crate::mesh::router::GrpcRouter).
#[derive(Debug, Clone)]
pub struct Receiver(pub Arc<TraceStore>);

impl tonic::server::NamedService for Receiver {
    const NAME: &'static str = SERVICE;
}

impl<B> tower::Service<http::Request<B>> for Receiver
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT {
            let status = Status::unimplemented(format!("{} is not served", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let store = self.0.clone();
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, ExportRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(Export(store), request).await)
        })
    }
}

/// One export call.
struct Export(Arc<TraceStore>);

impl tonic::server::UnaryService<ExportRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<ExportRequest>) -> Self::Future {
        std::future::ready(file(&self.0, request.into_inner()).map(|()| {
            Response::new(ExportTraceServiceResponse {
                partial_success: None,
            })
        }))
    }
}

/// Files every span of a request; a malformed one fails the request (INVALID_ARGUMENT) before
/// anything of it is kept.
fn file(store: &TraceStore, request: ExportRequest) -> Result<(), Status> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("malformed OTLP export ({what}): {e}"))
    };
    let mut batch = Vec::new();
    for resource_spans in &request.resource_spans {
        let mut service: Arc<str> = Arc::from("");
        for resource in repeated(resource_spans, RESOURCE) {
            let resource = resource.map_err(|e| invalid("ResourceSpans", &e))?;
            let resource = Resource::decode(resource).map_err(|e| invalid("Resource", &e))?;
            if let Some(name) = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
            {
                service = text(&name.value).into();
            }
        }
        for scope_spans in repeated(resource_spans, SCOPE_SPANS) {
            let scope_spans = scope_spans.map_err(|e| invalid("ResourceSpans", &e))?;
            for span in repeated(scope_spans, SPANS) {
                let span = span.map_err(|e| invalid("ScopeSpans", &e))?;
                let head = SpanHead::read(span).map_err(|e| invalid("Span", &e))?;
                batch.push((service.clone(), head, span));
            }
        }
    }
    store.add(batch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{self as otlp, Span, Status as SpanStatus};

    fn request(service: &str, spans: Vec<Span>) -> ExportRequest {
        let full = ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(Value::StringValue(service.into())),
                        }),
                        ..KeyValue::default()
                    }],
                    ..Resource::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    spans,
                    ..otlp::ScopeSpans::default()
                }],
                ..otlp::ResourceSpans::default()
            }],
        };
        ExportRequest::decode(full.encode_to_vec().as_slice()).expect("the same wire format")
    }

    #[test]
    fn spans_are_filed_with_their_service_and_read_back_whole() {
        let store = TraceStore::default();
        let span = Span {
            trace_id: vec![7; 16],
            span_id: vec![1; 8],
            name: "shop.v1.UserService/GetUser".into(),
            start_time_unix_nano: 5,
            end_time_unix_nano: 9,
            status: Some(SpanStatus {
                code: 2,
                message: "NOT_FOUND".into(),
            }),
            ..Span::default()
        };
        file(&store, request("shop.v1.UserService", vec![span])).expect("filed");
        let list = store.list(5);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].root_service, "shop.v1.UserService");
        assert_eq!(list[0].root_name, "shop.v1.UserService/GetUser");
        assert_eq!((list[0].duration_nanos, list[0].error), (4, true));
        let views = store.get("0707").expect("by prefix");
        assert_eq!(views[0].status_message, "NOT_FOUND");
    }

    #[test]
    fn a_malformed_span_fails_the_whole_request_and_keeps_nothing() {
        let store = TraceStore::default();
        let mut bad = request("s", vec![Span::default()]);
        // A ResourceSpans holding a ScopeSpans whose span's trace id claims 100 bytes it does
        // not have.
        let span = [0x0a, 100, 1, 2];
        let scope = [&[(SPANS << 3 | 2) as u8, 4][..], &span].concat();
        let resource = [&[(SCOPE_SPANS << 3 | 2) as u8, 6][..], &scope].concat();
        bad.resource_spans.push(resource.into());
        let status = file(&store, bad).expect_err("malformed");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("Span"), "{}", status.message());
        assert!(store.list(5).is_empty());
    }
}
