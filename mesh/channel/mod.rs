//! The mesh channel: a tonic-compatible channel to a *service name* rather than an address.
//!
//! ```text
//! MeshChannel (per call: deadline = min(own timeout, grpc-timeout, inbound call's deadline);
//!   │          retries of idempotent methods on UNAVAILABLE or on a reply that breaks before
//!   │          its first message (see [`first_message`]), bounded by a retry budget)
//!   └─ p2c over peak-EWMA latency, picked in the caller's task (see [`balancer`])
//!       └─ endpoints: discovery's instances minus the ejected ones (see [`endpoints`])
//! ```
//!
//! Generated tonic clients use it directly: `ProductServiceClient::new(mesh_channel)`.

pub mod balancer;
pub mod endpoints;
pub mod first_message;
pub mod link;
pub mod retry;
pub mod stream;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::Service;

use self::balancer::Balancer;
use self::endpoints::{DECAY, DEFAULT_RTT, EndpointStats, manage};
use self::first_message::{First, first_message};
use self::retry::RetryBudget;
use crate::mesh::deadline::{
    GRPC_TIMEOUT_HEADER, call_deadline, grpc_timeout_value, parse_grpc_timeout,
};
use crate::mesh::discovery::Discovery;
use crate::mesh::discovery::watcher::Watcher;
use crate::mesh::telemetry::propagation;
use crate::mesh::telemetry::rpc_span::{CallRecord, Side, client_span, with_status_record};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pause before the first retry (then 2×, 3×...).
const RETRY_BACKOFF: Duration = Duration::from_millis(5);

/// How calls through a mesh channel behave.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// Deadline for calls that carry none (and no inbound deadline applies).
    pub timeout: Duration,
    /// Method paths (`/pkg.Service/Method`) that are safe to retry. By default, the server
    /// reflection service's ([`reflection::PATHS`]): exemesh learns a callee's contract through it
    /// over the mesh, and one dead instance must not fail that.
    ///
    /// [`reflection::PATHS`]: crate::mesh::reflection::PATHS
    pub idempotent: HashSet<String>,
    /// Those of them that answer with one message (not server streaming): a call is committed at
    /// the end of the answer (its status follows the message at once), not at the message, so one
    /// whose replica dies between the two is retried too. [`CallPolicy::idempotent_method`] fills
    /// both sets from a method's descriptor.
    pub one_message: HashSet<String>,
    /// Status codes that make an idempotent call be retried (connection failures always do).
    pub retry_on: Vec<Code>,
    /// Attempts at most per call, the first included.
    pub max_attempts: usize,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            idempotent: crate::mesh::reflection::PATHS
                .iter()
                .map(|path| path.to_string())
                .collect(),
            one_message: HashSet::new(),
            retry_on: vec![Code::Unavailable],
            max_attempts: 3,
        }
    }
}

impl CallPolicy {
    /// Lets `method` be retried when its contract marks it idempotent
    /// (`option idempotency_level`); true when it does.
    pub fn idempotent_method(&mut self, method: &prost_reflect::MethodDescriptor) -> bool {
        if !retry::is_idempotent(method) {
            return false;
        }
        let path = crate::mesh::dynamic_client::path_text(method);
        if !method.is_server_streaming() {
            self.one_message.insert(path.clone());
        }
        self.idempotent.insert(path);
        true
    }
}

/// A balanced, resilient channel to every instance of one service.
#[derive(Clone)]
pub struct MeshChannel {
    service: Arc<str>,
    balancer: Arc<Balancer>,
    policy: Arc<CallPolicy>,
    budget: Arc<RetryBudget>,
    stats: Arc<EndpointStats>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshChannel")
            .field("service", &self.service)
            .field("active", &self.stats.active)
            .finish()
    }
}

struct Tasks {
    manager: JoinHandle<()>,
    _watcher: Watcher,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.manager.abort();
    }
}

impl MeshChannel {
    /// A channel to `service` (e.g. `shop.v1.ProductService`) whose instances come from `discovery`.
    pub fn new(discovery: Arc<dyn Discovery>, service: &str, policy: CallPolicy) -> MeshChannel {
        let watcher = Watcher::start(discovery, service);
        let stats = Arc::new(EndpointStats::default());
        let balancer = Arc::new(Balancer::new(DEFAULT_RTT, DECAY));
        let manager = tokio::spawn(manage(
            service.to_string(),
            watcher.subscribe(),
            balancer.clone(),
            stats.clone(),
        ));
        MeshChannel {
            service: service.into(),
            balancer,
            policy: Arc::new(policy),
            budget: Arc::new(RetryBudget::default()),
            stats,
            _tasks: Arc::new(Tasks {
                manager,
                _watcher: watcher,
            }),
        }
    }

    /// This channel (the same instances, connections, balancer and retry budget) for calls of
    /// `method`: with its contract's idempotency added to the policy
    /// ([`CallPolicy::idempotent_method`]), so that an idempotent method is retried.
    pub fn for_method(&self, method: &prost_reflect::MethodDescriptor) -> MeshChannel {
        let mut policy = CallPolicy::clone(&self.policy);
        if !policy.idempotent_method(method) {
            return self.clone();
        }
        MeshChannel {
            policy: Arc::new(policy),
            ..self.clone()
        }
    }

    /// The service this channel reaches.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Endpoints in the balancer now.
    pub fn active_endpoints(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed)
    }

    /// Ejections so far.
    pub fn ejections(&self) -> usize {
        self.stats.ejections.load(Ordering::Relaxed)
    }

    /// The deadline for a call: its own `grpc-timeout`, the inbound call's deadline, the policy's
    /// timeout, whichever ends first.
    fn deadline(&self, request: &Request<Body>) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let own = request
            .headers()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| now + t);
        let mut deadline = now + self.policy.timeout;
        for cap in [own, call_deadline()].into_iter().flatten() {
            deadline = deadline.min(cap);
        }
        deadline
    }
}

impl Service<Request<Body>> for MeshChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: each attempt picks an endpoint and, if need be, waits for its connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let deadline = self.deadline(&request);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT_HEADER, grpc_timeout_value(remaining));
        let span = client_span(request.uri().path(), Some(&self.service));
        if span.span().span_context().is_valid() {
            // With tracing on, the callee continues this span; otherwise headers pass unchanged.
            propagation::inject(&span, request.headers_mut());
        }
        let this = self.clone();
        let mut record = CallRecord::start(span.clone(), Side::Client, request.uri().path());
        let call = async move {
            let outcome = tokio::time::timeout_at(deadline, this.call_with_retries(request)).await;
            let result = match outcome {
                Ok(result) => result,
                Err(_) => {
                    let active = this.active_endpoints();
                    let why = if active == 0 {
                        format!("; no instance of {} is available", this.service)
                    } else {
                        String::new()
                    };
                    Err(Box::new(Status::deadline_exceeded(format!(
                        "deadline of {}ms exceeded{why}",
                        remaining.as_millis()
                    ))) as BoxError)
                }
            };
            match result {
                // The status comes with the response headers (errors) or its trailers.
                Ok(response) => Ok(with_status_record(response, Some(record)).map(Body::new)),
                Err(e) => {
                    match e.downcast_ref::<Status>() {
                        Some(status) => record.finish(status.code() as i32, Some(status.message())),
                        None => record.finish(Code::Unavailable as i32, Some(&e.to_string())),
                    }
                    Err(e)
                }
            }
        };
        if !crate::mesh::telemetry::span::enabled() {
            // No span of its own: nothing to make current on every poll (the caller's context
            // was injected above, if any).
            return Box::pin(call);
        }
        Box::pin(call.with_context(span))
    }
}

impl MeshChannel {
    /// True when an idempotent call answered with `code` may be retried: `UNAVAILABLE` always, other
    /// codes when the policy lists them.
    fn retries_on(&self, code: Code) -> bool {
        code == Code::Unavailable || self.policy.retry_on.contains(&code)
    }

    async fn call_with_retries(&self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        self.budget.deposit();
        let idempotent = self.policy.idempotent.contains(request.uri().path());
        let one_message = self.policy.one_message.contains(request.uri().path());
        if !idempotent || self.policy.max_attempts <= 1 {
            return self.balancer.pick().await.call(request).await;
        }
        // The body must be replayable: buffer it (a unary request is one small message).
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| Box::new(Status::internal(format!("request body: {e}"))) as BoxError)?
            .to_bytes();
        let mut attempt = 1;
        loop {
            let request = Request::from_parts(
                parts.clone(),
                Body::new(http_body_util::Full::new(bytes.clone())),
            );
            let (retryable, result) = match self.balancer.pick().await.call(request).await {
                Err(e) => (true, Err(e)),
                Ok(response) => match retry::status_of(&response) {
                    Some(code) => (self.retries_on(code), Ok(response)),
                    None => {
                        let (first, response) = first_message(response, one_message).await;
                        let retryable = match first {
                            First::Broken => true,
                            First::Trailers(Some(code)) => self.retries_on(code),
                            First::Message | First::Trailers(None) | First::End => false,
                        };
                        (retryable, Ok(response))
                    }
                },
            };
            if !retryable || attempt >= self.policy.max_attempts || !self.budget.withdraw() {
                return result;
            }
            crate::mesh::telemetry::span::event("retry", || {
                vec![opentelemetry::KeyValue::new("attempt", attempt as i64)]
            });
            crate::mesh::telemetry::metrics::metrics()
                .client_retries
                .get_or_create(&crate::mesh::telemetry::metrics::name(&self.service))
                .inc();
            tracing::debug!(service = %self.service, path = %parts.uri.path(), attempt, "retrying");
            // A short, growing pause: it lets the endpoint manager bench the endpoint that just
            // failed before the next pick, and spreads retries out under a burst of failures.
            tokio::time::sleep(RETRY_BACKOFF * attempt as u32).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods_are_retried_and_one_message_answers_commit_at_their_end() {
        let dir = tempfile::tempdir().expect("a directory");
        std::fs::write(
            dir.path().join("kv.proto"),
            r#"syntax = "proto3";
            package kv.v1;
            message Key { string key = 1; }
            service Store {
              rpc Get(Key) returns (Key) { option idempotency_level = NO_SIDE_EFFECTS; }
              rpc Scan(Key) returns (stream Key) { option idempotency_level = IDEMPOTENT; }
              rpc Put(Key) returns (Key);
            }"#,
        )
        .expect("written");
        let mut compiler = protox::Compiler::new([dir.path()]).expect("a compiler");
        compiler.open_file("kv.proto").expect("compiles");
        let pool = compiler.descriptor_pool();
        let service = pool
            .get_service_by_name("kv.v1.Store")
            .expect("the service");
        let mut policy = CallPolicy::default();
        let marked: Vec<bool> = service
            .methods()
            .map(|m| policy.idempotent_method(&m))
            .collect();
        assert_eq!(marked, [true, true, false]);
        // Added to the default: the reflection service, which only reads.
        assert_eq!(
            policy.idempotent,
            HashSet::from([
                "/kv.v1.Store/Get".to_string(),
                "/kv.v1.Store/Scan".to_string(),
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(),
            ])
        );
        assert_eq!(
            policy.one_message,
            HashSet::from(["/kv.v1.Store/Get".to_string()])
        );
    }
}
