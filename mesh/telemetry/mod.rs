//! Telemetry: OpenTelemetry traces (exemesh's own spans made with the SDK, exported over OTLP),
//! W3C trace-context propagation on every hop, and golden metrics. Logs go through `tracing`.
//!
//! * [`config`]: every environment variable and setting, read in one place;
//! * [`metrics`]: golden metrics (Prometheus), and [`admin`]: the HTTP port that serves them;
//! * [`tracer`]: the tracer provider (batched OTLP export; off unless configured) and its shutdown;
//!   [`batch`]: the span processor that writes each span's OTLP protobuf ([`otlp`]) as it ends, and
//!   [`exporter`]: the OTLP/gRPC exporter that sends the batches; [`on_runtime`]: how the
//!   `http/protobuf` exporter runs under the SDK's batch processor;
//! * [`propagation`]: W3C `traceparent`/`tracestate`/`baggage` in and out of gRPC metadata (B3 accepted
//!   on input);
//! * [`rpc_span`]: the one tower layer that opens the server span of every call, with the
//!   OpenTelemetry RPC semantic conventions, and records its status;
//! * [`span`]: how those spans are made, and the current span of a task.

pub mod admin;
pub mod batch;
pub mod config;
pub mod exporter;
pub mod metrics;
pub mod on_runtime;
pub mod otlp;
pub mod propagation;
pub mod rpc_span;
pub mod span;
pub mod tracer;
