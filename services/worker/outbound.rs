//! Calls from workers into the mesh: a worker names a method (`pkg.Service/Method`), exemesh fetches
//! the callee's contract through reflection (once per service), converts the JSON request, and sends it
//! through a [`MeshChannel`] (discovery, balancing, ejection, retries of idempotent methods) with the
//! deadline and trace context of the inbound call it is made for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::conn::{Conn, ParentInfo};
use super::frame::{self, OutboundCall};
use crate::mesh::channel::{CallPolicy, MeshChannel};
use crate::mesh::deadline::with_call_deadline;
use crate::mesh::discovery::Discovery;
use crate::mesh::dynamic_client;
use crate::mesh::reflection::fetch_pool;
use crate::mesh::status_code::code_name;
use crate::mesh::telemetry::propagation;
use crate::mesh::telemetry::span;
use crate::services::json::from_json;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;

/// Timeout of an outbound call with no parent deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The mesh as workers see it: one balanced channel and one contract per callee service.
#[derive(Debug)]
pub struct Outbound {
    discovery: Arc<dyn Discovery>,
    targets: tokio::sync::Mutex<HashMap<String, Arc<Target>>>,
}

#[derive(Debug)]
struct Target {
    channel: MeshChannel,
    pool: DescriptorPool,
}

impl Outbound {
    /// Outbound calls resolved through `discovery`.
    pub fn new(discovery: Arc<dyn Discovery>) -> Arc<Outbound> {
        Arc::new(Outbound {
            discovery,
            targets: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn target(&self, service: &str) -> Result<Arc<Target>, Status> {
        let mut targets = self.targets.lock().await;
        if let Some(target) = targets.get(service) {
            return Ok(target.clone());
        }
        // Learn the contract through reflection (over the mesh), then build the channel whose retry
        // policy knows which methods the contract declares idempotent.
        let probe = MeshChannel::new(
            self.discovery.clone(),
            service,
            CallPolicy {
                timeout: Duration::from_secs(10),
                ..CallPolicy::default()
            },
        );
        let pool = fetch_pool(probe, service).await.map_err(|e| {
            Status::unavailable(format!("cannot learn the contract of {service}: {e}"))
        })?;
        let mut policy = CallPolicy::default();
        if let Some(svc) = pool.get_service_by_name(service) {
            for method in svc.methods() {
                policy.idempotent_method(&method);
            }
        }
        let channel = MeshChannel::new(self.discovery.clone(), service, policy);
        let target = Arc::new(Target { channel, pool });
        targets.insert(service.to_string(), target.clone());
        Ok(target)
    }

    /// Carries out the worker's call `call_id` and writes the reply frames to the worker.
    pub async fn run(
        self: Arc<Self>,
        conn: Arc<Conn>,
        call_id: u32,
        call: OutboundCall,
        parent: Option<ParentInfo>,
    ) {
        let deadline = {
            let own = (call.timeout_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(u64::from(call.timeout_ms)));
            let inherited = parent.as_ref().map(|p| p.deadline);
            [own, inherited]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + DEFAULT_TIMEOUT)
        };
        // The call is a child of the execution that made it (carried as the parent's traceparent).
        let mut parent_cx = opentelemetry::Context::new();
        if let Some(parent) = &parent {
            let mut headers = http::HeaderMap::new();
            for (key, value) in [
                ("traceparent", &parent.traceparent),
                ("tracestate", &parent.tracestate),
            ] {
                if let Some(value) = value
                    .as_deref()
                    .and_then(|v| http::HeaderValue::from_str(v).ok())
                {
                    headers.insert(key, value);
                }
            }
            parent_cx = propagation::extract(&headers);
        }
        let span = span::start(
            format!("call {}", call.method),
            SpanKind::Internal,
            &parent_cx,
            |attributes| attributes.i64("exemesh.call_id", i64::from(call_id)),
        );
        let outcome = with_call_deadline(deadline, self.execute(&conn, call_id, call, parent))
            .with_context(span)
            .await;
        let last = match outcome {
            Ok(()) => frame::reply_end_line(call_id),
            Err(status) => {
                frame::reply_error_line(call_id, code_name(status.code()), status.message())
            }
        };
        conn.send(last).await;
    }

    async fn execute(
        &self,
        conn: &Conn,
        call_id: u32,
        call: OutboundCall,
        parent: Option<ParentInfo>,
    ) -> Result<(), Status> {
        let (service, method_name) = call
            .method
            .trim_start_matches('/')
            .split_once('/')
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "outbound call: {:?} is not pkg.Service/Method",
                    call.method
                ))
            })?;
        let target = self.target(service).await?;
        let method = find(&target.pool, service, method_name)?;
        if method.is_client_streaming() {
            return Err(Status::unimplemented(format!(
                "outbound call: {} is client streaming; workers can call unary and server-streaming methods",
                call.method
            )));
        }
        let request = match &call.message {
            Some(raw) => from_json(&method.input(), raw.get().as_bytes()),
            None => Ok(DynamicMessage::new(method.input())),
        }
        .map_err(|e| {
            Status::invalid_argument(format!(
                "outbound call to {}: the request is not a valid {}: {e}",
                call.method,
                method.input().full_name()
            ))
        })?;
        let mut request = tonic::Request::new(tokio_stream::once(request));
        let metadata = request.metadata_mut();
        let inherited = parent.iter().flat_map(|p| {
            [
                ("traceparent", p.traceparent.clone()),
                ("tracestate", p.tracestate.clone()),
            ]
        });
        for (key, value) in inherited
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .chain(call.metadata)
        {
            if let (Ok(key), Ok(value)) = (
                key.parse::<tonic::metadata::MetadataKey<_>>(),
                value.parse(),
            ) {
                metadata.insert(key, value);
            }
        }
        let mut replies = dynamic_client::Method::new(&method)?
            .call(target.channel.clone(), request)
            .await?
            .into_inner();
        while let Some(reply) = replies.message().await? {
            let line = frame::reply_message_line(call_id, &reply).map_err(|e| {
                Status::internal(format!("outbound call to {}: the reply: {e}", call.method))
            })?;
            if !conn.send(line).await {
                return Err(Status::cancelled("the worker went away"));
            }
        }
        Ok(())
    }
}

fn find(pool: &DescriptorPool, service: &str, method: &str) -> Result<MethodDescriptor, Status> {
    let svc = pool.get_service_by_name(service).ok_or_else(|| {
        Status::unimplemented(format!("{service} is not in its own reflection data"))
    })?;
    svc.methods().find(|m| m.name() == method).ok_or_else(|| {
        Status::new(
            Code::Unimplemented,
            format!("{service} has no method {method}"),
        )
    })
}
