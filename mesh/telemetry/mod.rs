//! Telemetry: OpenTelemetry traces (through `tracing` + `tracing-opentelemetry`, exported over OTLP)
//! and W3C trace-context propagation on every hop.
//!
//! * [`config`]: every environment variable and setting, read in one place;
//! * [`metrics`]: golden metrics (Prometheus), and [`admin`]: the HTTP port that serves them;
//! * [`tracer`]: the tracer provider (batched OTLP export; off unless configured) and its shutdown;
//! * [`propagation`]: W3C `traceparent`/`tracestate`/`baggage` in and out of gRPC metadata (B3 accepted
//!   on input);
//! * [`rpc_span`]: the one tower layer that opens the server span of every call, with the
//!   OpenTelemetry RPC semantic conventions, and records its status.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod propagation;
pub mod rpc_span;
pub mod tracer;

/// The `tracing` target of events that belong on spans only (exported, not printed in the log):
/// stderr lines of executions, retries, ejections.
pub const SPAN_EVENTS: &str = "exemesh::span_events";
