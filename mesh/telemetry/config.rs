//! Telemetry settings from the standard OpenTelemetry environment variables.

use std::time::Duration;

/// `OTEL_SDK_DISABLED`: `true` turns all telemetry off.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: base endpoint of an OTLP collector.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: endpoint for traces only (takes precedence).
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`): `grpc` (default) or `http/protobuf`.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Traces-specific protocol.
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_SERVICE_NAME`: the service name on every span (default: the served contract).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

/// The resolved telemetry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where to export; `None` means tracing is off.
    pub endpoint: Option<String>,
    /// The export protocol.
    pub protocol: Protocol,
    /// The default service name (used when `OTEL_SERVICE_NAME` is unset).
    pub service_name: String,
    /// How long to wait for the last spans at shutdown.
    pub flush_timeout: Duration,
    /// The sampler (`OTEL_TRACES_SAMPLER`) and its argument; `None` keeps the SDK's default
    /// (parent-based, always on).
    pub sampler: Option<(String, Option<String>)>,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {problem}")]
pub struct ConfigError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl TelemetryConfig {
    /// Reads the environment through `get`; `endpoint_override` (e.g. `exemesh up`'s own collector or
    /// a manifest key) applies when no OTEL endpoint variable is set.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        default_service: &str,
        endpoint_override: Option<String>,
    ) -> Result<Self, ConfigError> {
        let disabled =
            get(OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let endpoint = if disabled {
            None
        } else {
            get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
                .or_else(|| get(OTEL_EXPORTER_OTLP_ENDPOINT))
                .filter(|e| !e.trim().is_empty())
                .or(endpoint_override)
        };
        let protocol = match get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
            .or_else(|| get(OTEL_EXPORTER_OTLP_PROTOCOL))
            .as_deref()
            .map(str::trim)
        {
            None | Some("") | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                return Err(ConfigError {
                    variable: OTEL_EXPORTER_OTLP_PROTOCOL,
                    value: other.to_string(),
                    problem: "supported protocols are grpc and http/protobuf",
                });
            }
        };
        Ok(TelemetryConfig {
            endpoint,
            protocol,
            service_name: get(OTEL_SERVICE_NAME).unwrap_or_else(|| default_service.to_string()),
            flush_timeout: Duration::from_secs(5),
            sampler: get("OTEL_TRACES_SAMPLER").map(|s| (s, get("OTEL_TRACES_SAMPLER_ARG"))),
        })
    }

    /// True when spans are exported.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_env(|k| map.get(k).cloned(), "svc", None)
    }

    #[test]
    fn off_unless_an_endpoint_is_configured() {
        assert!(!config(&[]).expect("ok").enabled());
        assert!(
            config(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://127.0.0.1:4317")])
                .expect("ok")
                .enabled()
        );
        let c = config(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4317"),
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://b:4317"),
        ])
        .expect("ok");
        assert_eq!(
            c.endpoint.as_deref(),
            Some("http://b:4317"),
            "the traces endpoint wins"
        );
        let off = config(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4317"),
            (OTEL_SDK_DISABLED, "true"),
        ])
        .expect("ok");
        assert!(!off.enabled());
    }

    #[test]
    fn protocol_and_service_name() {
        assert_eq!(config(&[]).expect("ok").protocol, Protocol::Grpc);
        assert_eq!(
            config(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")])
                .expect("ok")
                .protocol,
            Protocol::HttpProtobuf
        );
        assert!(config(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "carrier-pigeon")]).is_err());
        assert_eq!(config(&[]).expect("ok").service_name, "svc");
        assert_eq!(
            config(&[(OTEL_SERVICE_NAME, "orders")])
                .expect("ok")
                .service_name,
            "orders"
        );
    }
}
