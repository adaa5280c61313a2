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

/// Adds an event to the current span's OpenTelemetry span (retries, ejections, stderr lines): these
/// belong on the trace, not in the log. A no-op when tracing is off.
pub fn span_event(name: &'static str, attributes: Vec<opentelemetry::KeyValue>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    tracing::Span::current().add_event(name, attributes);
}
