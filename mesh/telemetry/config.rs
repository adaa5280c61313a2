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
/// `OTEL_EXPORTER_OTLP_HEADERS` (or `..._TRACES_HEADERS`): `key=value,...` sent with every export
/// (values percent-decoded), e.g. a collector's API key.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Traces-specific headers (take precedence).
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (or `..._TRACES_TIMEOUT`): milliseconds an export may take.
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// Traces-specific timeout (takes precedence).
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_COMPRESSION` (or `..._TRACES_COMPRESSION`): only `none` is supported.
pub const OTEL_EXPORTER_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
/// Traces-specific compression.
pub const OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
/// `OTEL_SERVICE_NAME`: the service name on every span (default: the served contract).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_BSP_MAX_QUEUE_SIZE`: how many finished spans may wait for export (default 2048).
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: the most spans one export carries (default 512).
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// `OTEL_BSP_SCHEDULE_DELAY`: milliseconds between exports of a batch that is not full (default
/// 5000).
pub const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";

/// How finished spans are batched for export (the `OTEL_BSP_*` variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// The most spans waiting for export; more are dropped.
    pub max_queue_size: usize,
    /// The most spans in one export (at most `max_queue_size`).
    pub max_export_batch_size: usize,
    /// How long spans of a batch that is not full may wait.
    pub schedule_delay: Duration,
}

impl Default for BatchSettings {
    /// The OpenTelemetry specification's defaults.
    fn default() -> Self {
        BatchSettings {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_millis(5000),
        }
    }
}

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
    /// Headers sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`; 10 s by default).
    pub export_timeout: Duration,
    /// How long to wait for the last spans at shutdown.
    pub flush_timeout: Duration,
    /// The sampler (`OTEL_TRACES_SAMPLER`) and its argument; `None` keeps the SDK's default
    /// (parent-based, always on).
    pub sampler: Option<(String, Option<String>)>,
    /// Batching for export (`OTEL_BSP_*`).
    pub batch: BatchSettings,
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
        let specific = |traces: &'static str, any: &'static str| {
            get(traces)
                .map(|v| (traces, v))
                .or_else(|| get(any).map(|v| (any, v)))
        };
        let headers = match specific(
            OTEL_EXPORTER_OTLP_TRACES_HEADERS,
            OTEL_EXPORTER_OTLP_HEADERS,
        ) {
            Some((variable, value)) => parse_headers(&value).ok_or(ConfigError {
                variable,
                value,
                problem: "expected key=value pairs separated by commas (values percent-encoded)",
            })?,
            None => Vec::new(),
        };
        let export_timeout = match specific(
            OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
            OTEL_EXPORTER_OTLP_TIMEOUT,
        ) {
            Some((variable, value)) => Duration::from_millis(positive(
                variable,
                value,
                "expected a positive number of milliseconds",
            )?),
            None => Duration::from_secs(10),
        };
        if let Some((variable, value)) = specific(
            OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
            OTEL_EXPORTER_OTLP_COMPRESSION,
        ) && !matches!(value.trim(), "" | "none")
        {
            return Err(ConfigError {
                variable,
                value,
                problem: "exemesh exports uncompressed (use none, or compress at a collector)",
            });
        }
        let count = |variable: &'static str, default: u64| match get(variable) {
            None => Ok(default),
            Some(value) => positive(variable, value, "expected a positive whole number"),
        };
        let defaults = BatchSettings::default();
        let max_queue_size = count(OTEL_BSP_MAX_QUEUE_SIZE, defaults.max_queue_size as u64)?;
        let max_export_batch_size = count(
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
            defaults.max_export_batch_size as u64,
        )?
        .min(max_queue_size);
        let batch = BatchSettings {
            max_queue_size: usize::try_from(max_queue_size).unwrap_or(usize::MAX),
            max_export_batch_size: usize::try_from(max_export_batch_size).unwrap_or(usize::MAX),
            schedule_delay: Duration::from_millis(count(
                OTEL_BSP_SCHEDULE_DELAY,
                defaults.schedule_delay.as_millis() as u64,
            )?),
        };
        Ok(TelemetryConfig {
            endpoint,
            protocol,
            headers,
            export_timeout,
            batch,
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

/// `value` of `variable` as a number above 0; `problem` says what was expected otherwise.
fn positive(
    variable: &'static str,
    value: String,
    problem: &'static str,
) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError {
            variable,
            value,
            problem,
        }),
    }
}

/// `key=value,key2=value2` with percent-encoded values; `None` when an entry has no `=` or an
/// empty key, or a value's percent-encoding is not UTF-8.
fn parse_headers(text: &str) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    for entry in text.split(',').filter(|e| !e.trim().is_empty()) {
        let (key, value) = entry.split_once('=')?;
        let key = key.trim();
        if key.is_empty() {
            return None;
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .ok()?;
        headers.push((key.to_string(), value.into_owned()));
    }
    Some(headers)
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

    #[test]
    fn export_headers_timeout_and_compression() {
        let c = config(&[(
            OTEL_EXPORTER_OTLP_HEADERS,
            "api-key=s%3Dcr%2Cet, x-tenant = blue ,",
        )])
        .expect("ok");
        assert_eq!(
            c.headers,
            vec![
                ("api-key".to_string(), "s=cr,et".to_string()),
                ("x-tenant".to_string(), "blue".to_string())
            ]
        );
        let c = config(&[
            (OTEL_EXPORTER_OTLP_HEADERS, "a=1"),
            (OTEL_EXPORTER_OTLP_TRACES_HEADERS, "b=2%"),
        ])
        .expect("ok");
        assert_eq!(c.headers, vec![("b".to_string(), "2%".to_string())]);
        let bad = config(&[(OTEL_EXPORTER_OTLP_TRACES_HEADERS, "novalue")]).expect_err("bad");
        assert_eq!(bad.variable, OTEL_EXPORTER_OTLP_TRACES_HEADERS);

        assert_eq!(
            config(&[]).expect("ok").export_timeout,
            Duration::from_secs(10)
        );
        let c = config(&[(OTEL_EXPORTER_OTLP_TIMEOUT, "2500")]).expect("ok");
        assert_eq!(c.export_timeout, Duration::from_millis(2500));
        let bad = config(&[(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "soon")]).expect_err("bad");
        assert_eq!(bad.variable, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT);
        assert!(bad.to_string().contains("\"soon\""), "{bad}");

        assert!(config(&[(OTEL_EXPORTER_OTLP_COMPRESSION, "none")]).is_ok());
        let bad = config(&[(OTEL_EXPORTER_OTLP_COMPRESSION, "gzip")]).expect_err("bad");
        assert_eq!(bad.variable, OTEL_EXPORTER_OTLP_COMPRESSION);
    }

    #[test]
    fn batch_settings() {
        assert_eq!(config(&[]).expect("ok").batch, BatchSettings::default());
        let c = config(&[
            (OTEL_BSP_MAX_QUEUE_SIZE, "100"),
            (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, " 10 "),
            (OTEL_BSP_SCHEDULE_DELAY, "250"),
        ])
        .expect("ok");
        assert_eq!(
            c.batch,
            BatchSettings {
                max_queue_size: 100,
                max_export_batch_size: 10,
                schedule_delay: Duration::from_millis(250),
            }
        );
        // A batch never holds more than the queue.
        let c = config(&[(OTEL_BSP_MAX_QUEUE_SIZE, "100")]).expect("ok");
        assert_eq!(c.batch.max_export_batch_size, 100);
        for variable in [
            OTEL_BSP_MAX_QUEUE_SIZE,
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
            OTEL_BSP_SCHEDULE_DELAY,
        ] {
            for value in ["0", "-1", "lots"] {
                let bad = config(&[(variable, value)]).expect_err("refused");
                assert_eq!(bad.variable, variable);
                assert!(bad.to_string().contains("positive whole number"), "{bad}");
            }
        }
    }
}
