//! The OpenTelemetry tracer provider: batched OTLP export (gRPC with exemesh's own span processor
//! and exporter, or HTTP/protobuf with the SDK's batch processor and opentelemetry-otlp's exporter)
//! that never blocks a call, and a flush at shutdown. Off (no exporter at all) unless an endpoint is
//! configured.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};

use super::batch::EncodingProcessor;
use super::config::{Protocol, TelemetryConfig};
use super::exporter::GrpcExporter;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP exporter for {endpoint}: {detail}")]
pub struct TelemetryError {
    endpoint: String,
    detail: String,
}

/// A running tracer provider; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    flush_timeout: std::time::Duration,
}

/// Installs the W3C trace-context and baggage propagators (always: context is propagated even when
/// this process exports nothing).
pub fn install_propagator() {
    let propagator = opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    opentelemetry::global::set_text_map_propagator(propagator);
}

impl Telemetry {
    /// Starts exporting per `config` and makes exemesh's spans from then on; `None` when tracing is
    /// off. Must run inside a tokio runtime.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Telemetry>, TelemetryError> {
        let Some(endpoint) = config.endpoint.clone() else {
            return Ok(None);
        };
        let error = |detail: String| TelemetryError {
            endpoint: endpoint.clone(),
            detail,
        };
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let builder = match config.protocol {
            Protocol::Grpc => {
                SdkTracerProvider::builder().with_span_processor(EncodingProcessor::start(
                    GrpcExporter::new(&endpoint, &config.headers, config.export_timeout)
                        .map_err(error)?,
                    config.batch,
                ))
            }
            Protocol::HttpProtobuf => {
                // The base endpoint gets the signal path; a traces-specific endpoint is used as is.
                let url = if std::env::var_os(super::config::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
                    .is_some()
                    || endpoint.ends_with("/v1/traces")
                {
                    endpoint.clone()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(url)
                    .build()
                    .map_err(|e| error(e.to_string()))?;
                let batch = BatchConfigBuilder::default()
                    .with_max_queue_size(config.batch.max_queue_size)
                    .with_max_export_batch_size(config.batch.max_export_batch_size)
                    .with_scheduled_delay(config.batch.schedule_delay)
                    .build();
                SdkTracerProvider::builder().with_span_processor(
                    BatchSpanProcessor::builder(exporter)
                        .with_batch_config(batch)
                        .build(),
                )
            }
        };
        let mut builder = builder.with_resource(resource);
        if let Some((name, arg)) = &config.sampler {
            builder = builder.with_sampler(sampler(name, arg.as_deref()).map_err(error)?);
        }
        let provider = builder.build();
        super::span::install(provider.tracer("exemesh"));
        Ok(Some(Telemetry {
            provider,
            flush_timeout: config.flush_timeout,
        }))
    }

    /// Flushes queued spans and stops the exporter. Blocking: call it off the async threads.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.flush_timeout) {
            eprintln!("exemesh: flushing spans failed: {e}");
        }
    }
}

/// The sampler named like `OTEL_TRACES_SAMPLER` (with its `..._ARG`).
fn sampler(name: &str, arg: Option<&str>) -> Result<opentelemetry_sdk::trace::Sampler, String> {
    use opentelemetry_sdk::trace::Sampler;
    let ratio = || -> Result<f64, String> {
        arg.unwrap_or("1.0")
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("sampler argument {arg:?} must be a ratio between 0 and 1"))
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err(format!(
                "unknown sampler {other:?} (always_on, always_off, traceidratio, parentbased_*)"
            ));
        }
    })
}
