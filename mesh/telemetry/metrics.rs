//! Golden metrics in the Prometheus exposition format (prometheus-client), served on the admin port
//! (`/metrics`) by `serve`, `registry` and `up`. One process-wide set, recorded where the events happen:
//! the server-span layer (server calls), the mesh channel (client calls, retries, ejections,
//! endpoints), the executors (executions, spawns) and the worker pools.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `pkg.Service`.
    pub service: String,
    /// `Method`.
    pub method: String,
}

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// `pkg.Service`.
    pub service: String,
    /// `Method`.
    pub method: String,
    /// The gRPC status name, e.g. `OK`, `NOT_FOUND`.
    pub code: String,
}

/// Labels of an execution.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecLabels {
    /// `pkg.Service/Method`.
    pub method: String,
    /// `spawn` or `worker`.
    pub mode: String,
}

/// Labels of an authorization decision against a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `pkg.Service/Method`.
    pub method: String,
    /// The caller's identity (`spiffe://...`, or empty when unauthenticated).
    pub caller: String,
    /// `denied` (refused) or `audit` (would have been refused; allowed in audit mode).
    pub decision: String,
}

/// A label set with one name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// The service, pool or method.
    pub name: String,
}

fn latency() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// Every metric exemesh exports.
pub struct Metrics {
    registry: Registry,
    /// Server calls finished, by status.
    pub server_requests: Family<CodeLabels, Counter>,
    /// Server call latency (to the end of the response).
    pub server_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// Server calls in flight.
    pub server_in_flight: Family<CallLabels, Gauge>,
    /// Client calls through the mesh channel, by status.
    pub client_requests: Family<CodeLabels, Counter>,
    /// Client call latency.
    pub client_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// Retries made by the mesh channel.
    pub client_retries: Family<NameLabel, Counter>,
    /// Endpoints benched by outlier ejection.
    pub client_ejections: Family<NameLabel, Counter>,
    /// Endpoints in a mesh channel's balancer.
    pub client_endpoints: Family<NameLabel, Gauge>,
    /// Executions (spawned processes or worker calls) and their duration.
    pub exec_duration: Family<ExecLabels, Histogram, fn() -> Histogram>,
    /// Processes spawned (spawn mode).
    pub spawns: Family<NameLabel, Counter>,
    /// Calls waiting for a concurrency slot.
    pub queue_depth: Family<NameLabel, Gauge>,
    /// Ready workers per pool.
    pub pool_ready: Family<NameLabel, Gauge>,
    /// Worker restarts per pool.
    pub pool_restarts: Family<NameLabel, Counter>,
    /// Calls refused by a server limit before anything ran, by the limit's manifest key.
    pub server_refused: Family<NameLabel, Counter>,
    /// Calls refused (or, in audit mode, let through) by the authorization policy.
    pub authz_denied: Family<AuthzLabels, Counter>,
    /// Instances in the embedded registry.
    pub registry_instances: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("exemesh");
        let m = Metrics {
            server_requests: Family::default(),
            server_duration: Family::new_with_constructor(latency),
            server_in_flight: Family::default(),
            client_requests: Family::default(),
            client_duration: Family::new_with_constructor(latency),
            client_retries: Family::default(),
            client_ejections: Family::default(),
            client_endpoints: Family::default(),
            exec_duration: Family::new_with_constructor(latency),
            spawns: Family::default(),
            queue_depth: Family::default(),
            pool_ready: Family::default(),
            pool_restarts: Family::default(),
            server_refused: Family::default(),
            authz_denied: Family::default(),
            registry_instances: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "server_requests",
            "gRPC calls served, by status",
            m.server_requests.clone(),
        );
        registry.register(
            "server_request_duration_seconds",
            "Latency of served calls",
            m.server_duration.clone(),
        );
        registry.register(
            "server_in_flight",
            "Served calls in flight",
            m.server_in_flight.clone(),
        );
        registry.register(
            "client_requests",
            "Calls made through the mesh channel, by status",
            m.client_requests.clone(),
        );
        registry.register(
            "client_request_duration_seconds",
            "Latency of calls through the mesh channel",
            m.client_duration.clone(),
        );
        registry.register(
            "client_retries",
            "Retries by the mesh channel",
            m.client_retries.clone(),
        );
        registry.register(
            "client_ejections",
            "Endpoints benched by outlier ejection",
            m.client_ejections.clone(),
        );
        registry.register(
            "client_endpoints",
            "Endpoints in a mesh channel's balancer",
            m.client_endpoints.clone(),
        );
        registry.register(
            "exec_duration_seconds",
            "Duration of executions (spawned processes, worker calls)",
            m.exec_duration.clone(),
        );
        registry.register("spawns", "Processes spawned (spawn mode)", m.spawns.clone());
        registry.register(
            "queue_depth",
            "Calls waiting for a concurrency slot",
            m.queue_depth.clone(),
        );
        registry.register(
            "worker_pool_ready",
            "Ready workers in a pool",
            m.pool_ready.clone(),
        );
        registry.register(
            "worker_restarts",
            "Worker restarts",
            m.pool_restarts.clone(),
        );
        registry.register(
            "server_refused",
            "Calls refused by a server limit before anything ran, by the limit's [server] key",
            m.server_refused.clone(),
        );
        registry.register(
            "authz_denied",
            "Calls outside the authorization policy, by caller (denied, or let through in audit mode)",
            m.authz_denied.clone(),
        );
        registry.register(
            "registry_instances",
            "Instances in the embedded registry",
            m.registry_instances.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition text (OpenMetrics text format).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Labels for `/pkg.Service/Method`.
pub fn call_labels(path: &str) -> CallLabels {
    let (service, method) = super::rpc_span::service_and_method(path);
    CallLabels {
        service: service.to_string(),
        method: method.to_string(),
    }
}

/// The same labels with a status.
pub fn code_labels(call: &CallLabels, code: i32) -> CodeLabels {
    CodeLabels {
        service: call.service.clone(),
        method: call.method.clone(),
        code: crate::mesh::status_code::code_name(tonic::Code::from_i32(code)).to_string(),
    }
}

/// One label.
pub fn name(name: &str) -> NameLabel {
    NameLabel {
        name: name.to_string(),
    }
}
