//! Telemetry: OpenTelemetry traces (exemesh's own spans, exported over OTLP),
//! W3C trace-context propagation on every hop, and golden metrics. Logs go through `tracing`.
//!
//! * [`config`]: every environment variable and setting, read in one place;
//! * [`metrics`]: golden metrics (Prometheus), and [`admin`]: the HTTP port that serves them;
//! * [`tracer`]: what starts exporting (batched OTLP; off unless configured) and its shutdown;
//!   for OTLP/gRPC, [`mesh_tracer`] starts [`mesh_span`]s, which write their OTLP protobuf
//!   ([`otlp`]) as they go and into [`batch`]es when they end, which [`exporter`] sends; for
//!   `http/protobuf`, the SDK's tracer, batch processor and exporter ([`on_runtime`]: how that
//!   exporter runs under the SDK's batch processor);
//! * [`propagation`]: W3C `traceparent`/`tracestate`/`baggage` in and out of gRPC metadata (B3 accepted
//!   on input);
//! * [`rpc_span`]: the one tower layer that opens the server span of every call, with the
//!   OpenTelemetry RPC semantic conventions, and records its status;
//! * [`span`]: how those spans are made, and the current span of a task.

pub mod admin;
pub mod batch;
pub mod config;
pub mod exporter;
pub mod mesh_span;
pub mod mesh_tracer;
pub mod method_metrics;
pub mod metrics;
pub mod on_runtime;
pub mod otlp;
pub mod propagation;
#[cfg(test)]
mod reference;
pub mod rpc_span;
pub mod span;
pub mod tracer;
