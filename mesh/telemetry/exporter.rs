//! exemesh's OTLP/gRPC span exporter: a batch of finished spans is written as protobuf in one pass
//! ([`super::otlp`]) and sent as one `TraceService/Export` call.
//!
//! It replaces opentelemetry-otlp's gRPC exporter, which converted each batch into the generated
//! OTLP messages, copied them for a retry and encoded them again: with every call traced that cost
//! the serving process more than making the spans did. The batch span processor of the SDK still
//! collects the spans on its own thread and calls [`GrpcExporter::export`] there.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::otlp::{self, ExportRequest};

/// Sends span batches to an OTLP/gRPC collector (plaintext HTTP/2).
#[derive(Debug)]
pub struct GrpcExporter {
    client: tonic::client::Grpc<Channel>,
    runtime: tokio::runtime::Handle,
    headers: MetadataMap,
    timeout: Duration,
    resource: Resource,
}

impl GrpcExporter {
    /// An exporter to `endpoint` (`http://host:port`), sending `headers` with every export and
    /// giving each one `timeout`. Connects lazily; must be called inside a tokio runtime, which then
    /// runs every export.
    pub fn new(
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<GrpcExporter, String> {
        if endpoint.starts_with("https://") {
            return Err(
                "TLS to the collector is not built in: use an http:// endpoint (a collector on \
                 this machine or network forwards to a TLS backend)"
                    .to_string(),
            );
        }
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("not a valid endpoint URL: {e}"))?
            .connect_timeout(timeout)
            .connect_lazy();
        let mut metadata = MetadataMap::new();
        for (key, value) in headers {
            let name = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("header name {key:?} cannot be sent"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| format!("the value of header {key:?} cannot be sent"))?;
            metadata.insert(name, value);
        }
        Ok(GrpcExporter {
            client: tonic::client::Grpc::new(channel),
            runtime: tokio::runtime::Handle::current(),
            headers: metadata,
            timeout,
            resource: Resource::builder_empty().build(),
        })
    }
}

impl SpanExporter for GrpcExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = Bytes::from(otlp::resource_spans(&self.resource, &batch));
        drop(batch);
        let mut request = tonic::Request::new(ExportRequest {
            resource_spans: vec![body],
        });
        *request.metadata_mut() = self.headers.clone();
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let timeout = self.timeout;
        // The export runs on the runtime (the channel's I/O lives there), not on the processor's
        // thread that awaits it.
        let call = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, async {
                client
                    .ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let path = http::uri::PathAndQuery::from_static(otlp::EXPORT_PATH);
                let codec =
                    tonic_prost::ProstCodec::<ExportRequest, ExportTraceServiceResponse>::default();
                client.unary(request, path, codec).await
            })
            .await
        });
        match call.await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(status))) => Err(OTelSdkError::InternalFailure(format!(
                "exporting spans failed: {status}"
            ))),
            Ok(Err(_)) => Err(OTelSdkError::Timeout(timeout)),
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "exporting spans failed: {e}"
            ))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use crate::mesh::trace_view::receiver::Receiver;
    use crate::mesh::trace_view::store::TraceStore;

    /// A receiver on an ephemeral port that checks one header, as a collector with an API key.
    async fn collector(store: Arc<TraceStore>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let routes = tonic::service::Routes::new(Receiver(store));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tonic::service::interceptor::InterceptorLayer::new(
                    |request: tonic::Request<()>| match request.metadata().get("api-key") {
                        Some(key) if key == "s=cr,et" => Ok(request),
                        _ => Err(tonic::Status::unauthenticated("no api key")),
                    },
                ))
                .add_routes(routes)
                .serve_with_incoming(incoming),
        );
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_a_collector_with_the_configured_headers() {
        let store = Arc::new(TraceStore::default());
        let addr = collector(store.clone()).await;
        let endpoint = format!("http://{addr}");
        let headers = [("API-Key".to_string(), "s=cr,et".to_string())];
        let exporter =
            GrpcExporter::new(&endpoint, &headers, Duration::from_secs(5)).expect("an exporter");
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("orders").build())
            .build();
        let tracer = provider.tracer("exemesh");
        tracer.in_span("test.v1.Echo/Unary", |_| {});
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .expect("flushed")
            .expect("the export succeeded");
        let traces = store.list(10);
        assert_eq!(traces.len(), 1, "{traces:?}");
        assert_eq!(traces[0].root_name, "test.v1.Echo/Unary");
        assert_eq!(traces[0].root_service, "orders");

        // Without the header the collector refuses: the export reports it.
        let refused =
            GrpcExporter::new(&endpoint, &[], Duration::from_secs(5)).expect("an exporter");
        let error = refused.export(Vec::new()).await.expect_err("refused");
        assert!(error.to_string().contains("no api key"), "{error}");
    }

    #[tokio::test]
    async fn endpoints_it_cannot_use_are_refused_at_start() {
        let tls = GrpcExporter::new("https://collector:4317", &[], Duration::from_secs(1));
        assert!(tls.expect_err("tls").contains("http://"));
        let bad = GrpcExporter::new("not a url", &[], Duration::from_secs(1));
        assert!(bad.expect_err("bad url").contains("endpoint"));
        let header = GrpcExporter::new(
            "http://127.0.0.1:1",
            &[("bad key".to_string(), "v".to_string())],
            Duration::from_secs(1),
        );
        assert!(header.expect_err("bad header").contains("bad key"));
    }
}
