//! The server span of every gRPC call, as one tower layer: the caller's context is extracted from the
//! headers, the span follows the OpenTelemetry RPC semantic conventions, and the gRPC status is
//! recorded when the response ends (trailers-only errors at once, others from the trailers).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context as OtelContext, KeyValue, Value};

use super::mesh_span::EncodedAttributes;
use super::method_metrics::MethodMetrics;
use super::span::Attributes;
use super::{propagation, span};
use crate::mesh::status_code;

/// The addresses of a call's connection, set as a request extension by the accept loop: the span
/// attributes that name them, formatted once per connection rather than on every call.
#[derive(Debug, Clone)]
pub struct ConnectionAddrs {
    attributes: EncodedAttributes,
}

impl ConnectionAddrs {
    /// The connection from `peer`, accepted on `local` (if known).
    pub fn new(peer: SocketAddr, local: Option<SocketAddr>) -> ConnectionAddrs {
        let text = |ip: std::net::IpAddr| Value::String(Arc::<str>::from(ip.to_string()).into());
        let mut attributes = Vec::with_capacity(3);
        if let Some(local) = local {
            attributes.push(KeyValue::new("server.address", text(local.ip())));
            attributes.push(KeyValue::new("server.port", i64::from(local.port())));
        }
        attributes.push(KeyValue::new("network.peer.address", text(peer.ip())));
        ConnectionAddrs {
            attributes: EncodedAttributes::new(attributes),
        }
    }
}

/// Adds [`RpcSpan`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpanLayer;

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

/// Opens a `rpc.server` span per call.
#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
}

/// Splits `/pkg.Service/Method`.
pub fn service_and_method(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

/// Health checks and reflection are infrastructure, not traffic: they get no span.
fn traced(path: &str) -> bool {
    !(path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection."))
}

/// The server span for a request (a child of the caller's context, if any), as the context that
/// holds it; the empty context for untraced paths, and with tracing off.
pub fn server_span<B>(request: &Request<B>) -> OtelContext {
    let path = request.uri().path();
    if !span::enabled() || !traced(path) {
        return OtelContext::new();
    }
    let parent = propagation::extract(request.headers());
    span::start(span_name(path), SpanKind::Server, &parent, |attributes| {
        let (service, method) = service_and_method(path);
        rpc_attributes(attributes, service, method);
        if let Some(addrs) = request.extensions().get::<ConnectionAddrs>() {
            attributes.encoded(&addrs.attributes);
        }
    })
}

/// A call's span name, `pkg.Service/Method`.
fn span_name(path: &str) -> String {
    let (service, method) = service_and_method(path);
    let trimmed = path.trim_start_matches('/');
    if trimmed.len() == service.len() + 1 + method.len() {
        trimmed.to_string()
    } else {
        format!("{service}/{method}")
    }
}

/// The RPC semantic conventions' attributes of a gRPC call.
fn rpc_attributes(attributes: &mut Attributes<'_>, service: &str, method: &str) {
    attributes.str("rpc.system", "grpc");
    attributes.str("rpc.service", service);
    attributes.str("rpc.method", method);
}

/// The client span of one outbound call (a child of the current context), to `target` (the
/// service name the mesh channel resolves, if any).
pub fn client_span(path: &str, target: Option<&str>) -> OtelContext {
    if !span::enabled() {
        // No span: the current context, without naming one (an allocation per call).
        return OtelContext::current();
    }
    let (service, method) = service_and_method(path);
    OtelContext::map_current(|parent| {
        span::start(span_name(path), SpanKind::Client, parent, |attributes| {
            rpc_attributes(attributes, service, method);
            if let Some(target) = target {
                attributes.str("exemesh.target", target);
            }
        })
    })
}

/// Records a gRPC status code on the span of `cx` (and marks the span as an error unless it is OK).
pub fn record_status(cx: &OtelContext, code: i32, message: Option<&str>) {
    span::set(cx, "rpc.grpc.status_code", i64::from(code));
    if code != 0 {
        span::set_error(cx, message.unwrap_or_default().to_string());
    }
}

/// Which side of a call a record measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A call this process serves.
    Server,
    /// A call this process makes through the mesh channel.
    Client,
}

/// Finishes a call once: records its status on its span and its count, latency (and, for served
/// calls, in-flight gauge) in the metrics.
#[derive(Debug)]
pub struct CallRecord {
    span: OtelContext,
    metrics: Arc<MethodMetrics>,
    started: std::time::Instant,
    finished: bool,
}

impl CallRecord {
    /// Starts recording a call of `path`.
    pub fn start(span: OtelContext, side: Side, path: &str) -> CallRecord {
        let metrics = MethodMetrics::of(side, path);
        metrics.started();
        CallRecord {
            span,
            metrics,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    /// Records the call's outcome (only the first time).
    pub fn finish(&mut self, code: i32, message: Option<&str>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        record_status(&self.span, code, message);
        self.metrics
            .finished(code, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // A response dropped before its trailers: the call was cancelled.
        self.finish(
            tonic::Code::Cancelled as i32,
            Some("the call ended before its status"),
        );
    }
}

/// The status of a response that carries it in its headers (trailers-only), if any.
pub fn status_from(headers: &http::HeaderMap) -> Option<(i32, Option<String>)> {
    let code = status_code::status_number(headers)?;
    let message = headers
        .get(&status_code::GRPC_MESSAGE)
        .and_then(|m| m.to_str().ok())
        .map(str::to_string);
    Some((code, message))
}

impl<S, B, RB> tower::Service<Request<B>> for RpcSpan<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body,
{
    type Response = Response<StatusBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let cx = server_span(&request);
        let record = traced(request.uri().path())
            .then(|| CallRecord::start(cx.clone(), Side::Server, request.uri().path()));
        if !span::enabled() {
            // Nothing to make current: no context switch on every poll.
            let future = self.inner.call(request);
            return Box::pin(async move { Ok(with_status_record(future.await?, record)) });
        }
        let future = {
            let _current = cx.clone().attach();
            self.inner.call(request)
        };
        Box::pin(async move {
            let response = future.with_context(cx).await?;
            Ok(with_status_record(response, record))
        })
    }
}

/// Finishes `record` from a trailers-only status now, or from the trailers when the body ends.
pub fn with_status_record<RB: Body>(
    response: Response<RB>,
    mut record: Option<CallRecord>,
) -> Response<StatusBody<RB>> {
    if let (Some((code, message)), Some(r)) = (status_from(response.headers()), record.as_mut()) {
        r.finish(code, message.as_deref());
    }
    response.map(|body| StatusBody { body, record })
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's record (span status, metrics) from the trailers; the
    /// span closes when the body is dropped.
    pub struct StatusBody<B> {
        #[pin]
        body: B,
        record: Option<CallRecord>,
    }
}

impl<B: Body> Body for StatusBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), this.record.as_mut())
                    && let Some((code, message)) = status_from(trailers)
                {
                    record.finish(code, message.as_deref());
                }
            }
            // The body ended without trailers: nothing more will tell the status.
            Poll::Ready(None) => {
                if let Some(record) = this.record.as_mut() {
                    record.finish(tonic::Code::Ok as i32, None);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_named_service_slash_method() {
        assert_eq!(span_name("/shop.v1.Orders/Place"), "shop.v1.Orders/Place");
        assert_eq!(span_name("/a/b/c"), "a/b/c");
        assert_eq!(span_name("/no-method"), "/no-method/");
        assert_eq!(span_name("no-slash"), "no-slash/");
    }

    #[test]
    fn a_connections_addresses_are_span_attributes() {
        let peer = "10.0.0.7:51000".parse().expect("an address");
        let local = "127.0.0.1:4317".parse().expect("an address");
        let text = |addrs: &ConnectionAddrs| {
            addrs
                .attributes
                .list()
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            text(&ConnectionAddrs::new(peer, Some(local))),
            [
                "server.address=127.0.0.1",
                "server.port=4317",
                "network.peer.address=10.0.0.7"
            ]
        );
        assert_eq!(
            text(&ConnectionAddrs::new(peer, None)),
            ["network.peer.address=10.0.0.7"]
        );
    }
}
