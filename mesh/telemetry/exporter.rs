//! exemesh's OTLP/gRPC span exporter: a batch of spans already written as protobuf ([`super::otlp`],
//! by the span processor of [`super::batch`]) is sent as one `TraceService/Export` call over the
//! mesh channel's own HTTP/2 connection ([`Link`]).
//!
//! It replaces opentelemetry-otlp's gRPC exporter, which converted each batch into the generated
//! OTLP messages, copied them for a retry, encoded them again and sent them through a tonic channel
//! (a buffer task and hyper's client): with every call traced that cost the serving process more
//! than making the spans did.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt as _;

use super::otlp;
use crate::mesh::channel::link::Link;

/// Sends span batches to an OTLP/gRPC collector (plaintext HTTP/2).
#[derive(Debug)]
pub struct GrpcExporter {
    endpoint: String,
    /// Whether the last export failed: a failure is logged when exports start failing, and again
    /// when they work again, not on every batch.
    failing: AtomicBool,
    link: Link,
    headers: HeaderMap,
    timeout: Duration,
}

impl GrpcExporter {
    /// An exporter to `endpoint` (`http://host:port`), sending `headers` with every export and
    /// giving each one `timeout`. Connects lazily, at the first export.
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
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("not a valid endpoint URL: {e}"))?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) => authority.as_str(),
            _ => return Err("not a valid endpoint URL: expected http://host:port".to_string()),
        };
        let link = Link::with_tls(authority, None).map_err(|e| e.to_string())?;
        let mut map = HeaderMap::new();
        for (key, value) in headers {
            let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("header name {key:?} cannot be sent"))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("the value of header {key:?} cannot be sent"))?;
            map.insert(name, value);
        }
        map.insert("content-type", HeaderValue::from_static("application/grpc"));
        map.insert("te", HeaderValue::from_static("trailers"));
        let millis = timeout.as_millis().clamp(1, 99_999_999);
        map.insert(
            "grpc-timeout",
            HeaderValue::try_from(format!("{millis}m")).map_err(|e| e.to_string())?,
        );
        Ok(GrpcExporter {
            endpoint: endpoint.to_string(),
            failing: AtomicBool::new(false),
            link,
            headers: map,
            timeout,
        })
    }

    /// What to log after an export with `outcome`: the first failure after a success (or at
    /// start), and the first success after a failure; nothing otherwise.
    fn change(&self, outcome: &Result<(), String>) -> Option<(bool, String)> {
        let failed = outcome.is_err();
        if self.failing.swap(failed, Ordering::Relaxed) == failed {
            return None;
        }
        Some(match outcome {
            Err(reason) => (
                true,
                format!(
                    "exporting spans to {} failed: {reason}; spans are dropped until it works \
                     again (this is logged once)",
                    self.endpoint
                ),
            ),
            Ok(()) => (
                false,
                format!("exporting spans to {} works again", self.endpoint),
            ),
        })
    }

    /// Sends `message` (a gRPC-framed export request, see [`otlp::EncodedSpans::export_message`])
    /// as one `Export` call, waiting up to the export timeout: `Err` with the reason when the
    /// collector did not take it. Logs when exports start failing and when they work again.
    pub async fn send(&self, message: bytes::Bytes) -> Result<(), String> {
        let mut request = Request::new(tonic::body::Body::new(http_body_util::Full::new(message)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(otlp::EXPORT_PATH);
        *request.headers_mut() = self.headers.clone();
        let outcome =
            match tokio::time::timeout(self.timeout, export(self.link.clone(), request)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
        match self.change(&outcome) {
            Some((true, message)) => tracing::warn!("{message}"),
            Some((false, message)) => tracing::info!("{message}"),
            None => {}
        }
        outcome
    }
}

/// Sends one export and reads its status: `Err` with the reason when the collector did not take it.
async fn export(link: Link, request: Request<tonic::body::Body>) -> Result<(), String> {
    let response =
        link.send(request)
            .await
            .map_err(|e| match e.downcast_ref::<tonic::Status>() {
                Some(status) => format!("{:?}: {}", status.code(), status.message()),
                None => e.to_string(),
            })?;
    let (head, body) = response.into_parts();
    if !head.status.is_success() {
        return Err(format!("the collector answered HTTP {}", head.status));
    }
    // A trailers-only answer carries the status in its headers; otherwise it ends the body.
    let trailers = if head.headers.contains_key("grpc-status") {
        Some(head.headers)
    } else {
        let collected = body.collect().await.map_err(|e| e.to_string())?;
        collected.trailers().cloned()
    };
    match trailers.as_ref().and_then(tonic::Status::from_header_map) {
        Some(status) if status.code() == tonic::Code::Ok => Ok(()),
        Some(status) => Err(format!(
            "the collector answered {:?}: {}",
            status.code(),
            status.message()
        )),
        None => Err("the collector's answer has no gRPC status".to_string()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use opentelemetry_sdk::Resource;

    use crate::mesh::telemetry::otlp::{EncodedSpans, ResourceFields};
    use crate::mesh::trace_view::receiver::Receiver;
    use crate::mesh::trace_view::store::TraceStore;

    /// The header [`collector`] demands, as `OTEL_EXPORTER_OTLP_HEADERS` gives it.
    pub(in crate::mesh::telemetry) fn api_key() -> [(String, String); 1] {
        [("API-Key".to_string(), "s=cr,et".to_string())]
    }

    /// A receiver on an ephemeral port filing into `store` that demands one header (see
    /// [`api_key`]), as a collector with an API key.
    pub(in crate::mesh::telemetry) async fn collector(store: Arc<TraceStore>) -> SocketAddr {
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

    #[tokio::test]
    async fn an_export_reaches_a_collector_with_the_configured_headers() {
        let store = Arc::new(TraceStore::default());
        let endpoint = format!("http://{}", collector(store.clone()).await);
        let exporter =
            GrpcExporter::new(&endpoint, &api_key(), Duration::from_secs(5)).expect("an exporter");
        let resource = Resource::builder().with_service_name("orders").build();
        let mut spans = EncodedSpans::default();
        spans.push(|buf| otlp::tests::root_span(buf, 1, "test.v1.Echo/Unary"));
        let message = spans.export_message(&ResourceFields::new(&resource));
        exporter
            .send(message.clone())
            .await
            .expect("the export succeeded");
        let traces = store.list(10);
        assert_eq!(traces.len(), 1, "{traces:?}");
        assert_eq!(traces[0].root_name, "test.v1.Echo/Unary");
        assert_eq!(traces[0].root_service, "orders");

        // Without the header the collector refuses: the export reports it.
        let refused =
            GrpcExporter::new(&endpoint, &[], Duration::from_secs(5)).expect("an exporter");
        let error = refused.send(message).await.expect_err("refused");
        assert!(error.contains("Unauthenticated: no api key"), "{error}");
        assert_eq!(store.list(10).len(), 1, "nothing more was filed");
    }

    #[tokio::test]
    async fn failures_are_reported_when_they_start_and_when_they_end() {
        let exporter = GrpcExporter::new("http://127.0.0.1:1", &[], Duration::from_secs(1))
            .expect("an exporter");
        let failed = Err("the collector answered Unauthenticated: bad key".to_string());
        let (warning, message) = exporter.change(&failed).expect("the first failure is told");
        assert!(warning);
        assert!(
            message.contains("http://127.0.0.1:1") && message.contains("bad key"),
            "{message}"
        );
        assert_eq!(exporter.change(&failed), None, "not on every batch");
        let (warning, message) = exporter.change(&Ok(())).expect("the recovery is told");
        assert!(!warning);
        assert!(message.contains("works again"), "{message}");
        assert_eq!(exporter.change(&Ok(())), None);
        // A collector that is not there: the export itself says why.
        let empty = EncodedSpans::default()
            .export_message(&ResourceFields::new(&Resource::builder_empty().build()));
        let error = exporter.send(empty).await.expect_err("nothing listens");
        assert!(error.contains("127.0.0.1:1"), "{error}");
        assert!(exporter.failing.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn endpoints_it_cannot_use_are_refused_at_start() {
        let tls = GrpcExporter::new("https://collector:4317", &[], Duration::from_secs(1));
        assert!(tls.expect_err("tls").contains("http://"));
        let bad = GrpcExporter::new("not a url", &[], Duration::from_secs(1));
        assert!(bad.expect_err("bad url").contains("endpoint"));
        let no_scheme = GrpcExporter::new("127.0.0.1:4317", &[], Duration::from_secs(1));
        assert!(
            no_scheme
                .expect_err("no scheme")
                .contains("http://host:port")
        );
        let header = GrpcExporter::new(
            "http://127.0.0.1:1",
            &[("bad key".to_string(), "v".to_string())],
            Duration::from_secs(1),
        );
        assert!(header.expect_err("bad header").contains("bad key"));
    }
}
