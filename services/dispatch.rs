//! The generic gRPC service: routes `/pkg.Service/Method` to the method's runtime, turns tonic's
//! request into a [`CallContext`] and a request stream, enforces the deadline and the concurrency
//! limit, and turns the backend's replies into the response for each RPC kind.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tonic::server::{
    ClientStreamingService, Grpc, ServerStreamingService, StreamingService, UnaryService,
};
use tonic::{Request, Response, Status, Streaming};

use super::call::{CallContext, Executor, RequestStream};
use super::call_headers::CallHeaders;
use super::error::CallError;
use super::limiter::Limiter;
use super::reply::Reply;
use super::rpc_kind::RpcKind;
use crate::mesh::codec::DynamicCodec;
use crate::mesh::deadline::with_call_deadline;
use crate::mesh::telemetry::metrics::{ExecLabels, metrics};
use crate::mesh::telemetry::propagation;
use crate::mesh::telemetry::span;
use crate::mesh::tls::identity::PeerIdentity;
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;
use prometheus_client::metrics::histogram::Histogram;

/// A method ready to serve.
#[derive(Debug)]
pub struct MethodRuntime {
    /// `pkg.Service/Method`.
    pub name: Arc<str>,
    /// Its descriptor.
    pub desc: MethodDescriptor,
    /// Its kind.
    pub kind: RpcKind,
    /// Deadline when the client sends none.
    pub default_timeout: Duration,
    /// Largest request or reply message.
    pub max_message: usize,
    /// Concurrency limit.
    pub limiter: Limiter,
    /// Execution.
    pub executor: Arc<dyn Executor>,
    /// The duration of its executions (looked up in its family at the first one, then kept).
    pub exec_duration: OnceLock<Histogram>,
}

/// The tower service serving every method of a contract.
#[derive(Debug, Clone)]
pub struct DynamicService {
    /// By path, looked up on every call (foldhash, seeded per process, instead of SipHash).
    methods: Arc<HashMap<String, Arc<MethodRuntime>, foldhash::fast::RandomState>>,
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

impl DynamicService {
    /// A service for `methods`.
    pub fn new(methods: Vec<MethodRuntime>) -> Self {
        let methods = methods
            .into_iter()
            .map(|m| (format!("/{}", m.name), Arc::new(m)))
            .collect();
        Self {
            methods: Arc::new(methods),
        }
    }
}

impl<B> tower::Service<http::Request<B>> for DynamicService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(method) = self.methods.get(req.uri().path()).cloned() else {
            let path = req.uri().path().to_string();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("unknown method {path}")).into_http())
            });
        };
        Box::pin(async move {
            let codec = DynamicCodec::<Reply>::new(method.desc.input());
            let mut grpc = Grpc::new(codec)
                .max_decoding_message_size(method.max_message)
                .max_encoding_message_size(usize::MAX);
            let handler = Handler(method.clone());
            let response = match method.kind {
                RpcKind::Unary => grpc.unary(handler, req).await,
                RpcKind::ServerStreaming => grpc.server_streaming(handler, req).await,
                RpcKind::ClientStreaming => grpc.client_streaming(handler, req).await,
                RpcKind::BidiStreaming => grpc.streaming(handler, req).await,
            };
            Ok(oversized_as_resource_exhausted(
                response,
                method.max_message,
            ))
        })
    }
}

/// tonic answers a request message over the limit with `OUT_OF_RANGE`; the gRPC spec (and every
/// other implementation) says `RESOURCE_EXHAUSTED`, which is also what clients treat as "too big".
/// Every request error passes here: the unary and server-streaming ones as the response's status,
/// the client- and bidi-streaming ones as items of the request stream.
fn request_status(status: Status, limit: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        Status::resource_exhausted(format!(
            "the request message is larger than this server's limit of {limit} bytes ([server] max_request_bytes)"
        ))
    } else {
        status
    }
}

/// Applies [`request_status`] to a trailers-only response (a request refused before the handler).
fn oversized_as_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    if let Some(status) = Status::from_header_map(response.headers()) {
        let mapped = request_status(status, limit);
        if mapped.code() == tonic::Code::ResourceExhausted {
            let headers = response.headers_mut();
            headers.remove("grpc-message");
            let _ = mapped.add_header(headers);
        }
    }
    response
}

/// The span of one execution, a child of the call's server span (current here): queue wait, then
/// what the executor records (pid, exit code, bytes, the worker, spawn time, stderr lines as events).
fn exec_span(method: &str, mode: &'static str, queued: Duration) -> opentelemetry::Context {
    opentelemetry::Context::map_current(|parent| {
        let mut name = String::with_capacity(5 + method.len());
        name.push_str("exec ");
        name.push_str(method);
        span::start(name, SpanKind::Internal, parent, |attributes| {
            attributes.str("exemesh.mode", mode);
            attributes.add(KeyValue::new(
                "exemesh.queue_ms",
                queued.as_secs_f64() * 1000.0,
            ));
        })
    })
}

/// Adapts one method to tonic's four handler traits.
struct Handler(Arc<MethodRuntime>);

type Replies = BoxStream<'static, Result<Reply, Status>>;

impl MethodRuntime {
    /// The histogram of this method's executions.
    fn exec_duration(&self) -> &Histogram {
        self.exec_duration.get_or_init(|| {
            let labels = ExecLabels {
                method: self.name.to_string(),
                mode: self.executor.mode().to_string(),
            };
            metrics().exec_duration.get_or_create(&labels).clone()
        })
    }

    fn context(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
    ) -> CallContext {
        let headers = CallHeaders::read(metadata);
        let timeout = headers.timeout.flatten().unwrap_or(self.default_timeout);
        CallContext {
            method: self.name.clone(),
            kind: self.kind,
            deadline: Instant::now() + timeout,
            deadline_wall: SystemTime::now() + timeout,
            timeout,
            request_id: headers
                .request_id
                .unwrap_or_else(|| format!("{:x}", REQUEST_IDS.fetch_add(1, Ordering::Relaxed))),
            traceparent: headers.traceparent,
            tracestate: headers.tracestate,
            metadata: headers.forwarded,
            caller: extensions
                .get::<PeerIdentity>()
                .map(PeerIdentity::primary)
                .unwrap_or_default(),
        }
    }

    /// Starts the call on its backend and returns its replies, bounded by the deadline.
    async fn start(
        self: Arc<Self>,
        mut ctx: CallContext,
        input: RequestStream,
    ) -> Result<ReplyStream, Status> {
        let queued_at = Instant::now();
        let slot = tokio::time::timeout_at(ctx.deadline, self.limiter.acquire())
            .await
            .map_err(|_| Status::from(ctx.deadline_exceeded()))??;
        // The execution's span, a child of the call's server span (current here).
        let exec = exec_span(&self.name, self.executor.mode(), queued_at.elapsed());
        if let (Some(traceparent), tracestate) = propagation::to_strings(&exec) {
            // The executable continues this span's trace (when tracing is off, the caller's context
            // is passed on unchanged).
            ctx.traceparent = Some(traceparent);
            ctx.tracestate = tracestate;
        }
        let (tx, rx) = mpsc::channel(16);
        let deadline_error = ctx.deadline_exceeded();
        let deadline = ctx.deadline;
        let executor = self.executor.clone();
        let exec_duration = self.exec_duration().clone();
        let task = tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                // Outbound calls made while running this call are capped by its deadline.
                let deadline = ctx.deadline;
                if let Err(err) =
                    with_call_deadline(deadline, executor.execute(&ctx, input, &tx)).await
                {
                    span::set_error(&opentelemetry::Context::current(), err.to_string());
                    let _ = tx.send(Err(err)).await;
                }
                exec_duration.observe(started.elapsed().as_secs_f64());
                drop(slot);
            }
            .with_context(exec),
        );
        Ok(ReplyStream {
            rx,
            task: Some(AbortOnDrop(task)),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline_error: Some(deadline_error),
        })
    }

    async fn single(
        self: Arc<Self>,
        ctx: CallContext,
        input: RequestStream,
    ) -> Result<Response<Reply>, Status> {
        let mut replies = self.clone().start(ctx, input).await?;
        let mut reply = None;
        while let Some(next) = replies.next().await {
            match next {
                Ok(message) if reply.is_none() => reply = Some(message),
                Ok(_) => {
                    return Err(Status::internal(format!(
                        "{}: more than one reply to a {} call",
                        self.name, self.kind
                    )));
                }
                Err(status) => return Err(status),
            }
        }
        reply
            .map(Response::new)
            .ok_or_else(|| Status::internal(format!("{}: the executable sent no reply", self.name)))
    }
}

fn streaming_input(stream: Streaming<DynamicMessage>, limit: usize) -> RequestStream {
    stream
        .map(move |item| item.map_err(|status| request_status(status, limit)))
        .boxed()
}

fn single_input(message: DynamicMessage) -> RequestStream {
    stream::once(async move { Ok(message) }).boxed()
}

impl UnaryService<DynamicMessage> for Handler {
    type Response = Reply;
    type Future = BoxFuture<'static, Result<Response<Reply>, Status>>;

    fn call(&mut self, request: Request<DynamicMessage>) -> Self::Future {
        let method = self.0.clone();
        let ctx = method.context(request.metadata(), request.extensions());
        Box::pin(method.single(ctx, single_input(request.into_inner())))
    }
}

impl ServerStreamingService<DynamicMessage> for Handler {
    type Response = Reply;
    type ResponseStream = Replies;
    type Future = BoxFuture<'static, Result<Response<Replies>, Status>>;

    fn call(&mut self, request: Request<DynamicMessage>) -> Self::Future {
        let method = self.0.clone();
        let ctx = method.context(request.metadata(), request.extensions());
        Box::pin(async move {
            Ok(Response::new(
                method
                    .start(ctx, single_input(request.into_inner()))
                    .await?
                    .boxed(),
            ))
        })
    }
}

impl ClientStreamingService<DynamicMessage> for Handler {
    type Response = Reply;
    type Future = BoxFuture<'static, Result<Response<Reply>, Status>>;

    fn call(&mut self, request: Request<Streaming<DynamicMessage>>) -> Self::Future {
        let method = self.0.clone();
        let ctx = method.context(request.metadata(), request.extensions());
        let input = streaming_input(request.into_inner(), method.max_message);
        Box::pin(method.single(ctx, input))
    }
}

impl StreamingService<DynamicMessage> for Handler {
    type Response = Reply;
    type ResponseStream = Replies;
    type Future = BoxFuture<'static, Result<Response<Replies>, Status>>;

    fn call(&mut self, request: Request<Streaming<DynamicMessage>>) -> Self::Future {
        let method = self.0.clone();
        let ctx = method.context(request.metadata(), request.extensions());
        let input = streaming_input(request.into_inner(), method.max_message);
        Box::pin(async move { Ok(Response::new(method.start(ctx, input).await?.boxed())) })
    }
}

/// Aborts the task (and so kills its process or cancels its worker call) when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A call's replies, ended by `DEADLINE_EXCEEDED` when the deadline passes first. Dropping it (the
/// client went away) aborts the call.
struct ReplyStream {
    rx: mpsc::Receiver<Result<Reply, CallError>>,
    task: Option<AbortOnDrop>,
    sleep: Pin<Box<Sleep>>,
    deadline_error: Option<CallError>,
}

impl Stream for ReplyStream {
    type Item = Result<Reply, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.task.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.rx.poll_recv(cx) {
            if item.is_none() || matches!(item, Some(Err(_))) {
                self.task = None;
            }
            return Poll::Ready(item.map(|r| r.map_err(Status::from)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.task = None;
            let err = self
                .deadline_error
                .take()
                .unwrap_or(CallError::ShuttingDown);
            return Poll::Ready(Some(Err(Status::from(err))));
        }
        Poll::Pending
    }
}
