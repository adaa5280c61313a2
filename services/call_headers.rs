//! What a call's request headers tell its execution: the deadline, the request id, the trace
//! context, and the metadata forwarded to the executable.

use std::time::Duration;

use crate::mesh::deadline::{GRPC_TIMEOUT_HEADER, parse_grpc_timeout};

/// Headers that describe the transport, not the call; never forwarded to executables.
const HIDDEN_HEADERS: [&str; 8] = [
    "te",
    "content-type",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "user-agent",
    "traceparent",
    // Passed on as the trace context, not as metadata.
    "tracestate",
];

/// The headers of one call, read in one pass (looking each name up would hash, and parse, it on
/// every call). Of a header sent twice, the first value counts, as a lookup would give.
#[derive(Debug, Default, PartialEq)]
pub struct CallHeaders {
    /// `grpc-timeout`: `Some(None)` when it is malformed.
    pub timeout: Option<Option<Duration>>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// Every other ASCII header, in order, for the executable.
    pub forwarded: Vec<(String, String)>,
}

impl CallHeaders {
    /// Reads `metadata`. Binary (`-bin`) headers and values that are not visible ASCII are skipped.
    pub fn read(metadata: &tonic::metadata::MetadataMap) -> CallHeaders {
        let mut headers = CallHeaders::default();
        for entry in metadata.iter() {
            let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry else {
                continue;
            };
            let Ok(value) = value.to_str() else {
                continue;
            };
            let key = key.as_str();
            let first = |slot: &mut Option<String>| {
                slot.get_or_insert_with(|| value.to_string());
            };
            match key {
                GRPC_TIMEOUT_HEADER => {
                    headers
                        .timeout
                        .get_or_insert_with(|| parse_grpc_timeout(value));
                }
                "traceparent" => first(&mut headers.traceparent),
                "tracestate" => first(&mut headers.tracestate),
                // Also forwarded.
                "x-request-id" => first(&mut headers.request_id),
                _ => {}
            }
            if !HIDDEN_HEADERS.contains(&key) {
                headers.forwarded.push((key.to_string(), value.to_string()));
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_header_goes_where_it_belongs() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        let mut add = |key: &'static str, value: &str| {
            metadata.append(key, value.parse().expect("ascii"));
        };
        add("content-type", "application/grpc");
        add("te", "trailers");
        add("user-agent", "grpc-go/1.0");
        add("grpc-timeout", "250m");
        add("grpc-timeout", "1S");
        add("x-request-id", "req-7");
        add(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        add("tracestate", "vendor=x");
        add("tracestate", "vendor=y");
        add("x-tenant", "acme");
        add("x-tenant", "umbrella");
        metadata.append_bin(
            "x-blob-bin",
            tonic::metadata::MetadataValue::from_bytes(b"\0"),
        );
        let headers = CallHeaders::read(&metadata);
        assert_eq!(headers.timeout, Some(Some(Duration::from_millis(250))));
        assert_eq!(headers.request_id.as_deref(), Some("req-7"));
        assert_eq!(
            headers.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(headers.tracestate.as_deref(), Some("vendor=x"));
        let forwarded: Vec<(&str, &str)> = headers
            .forwarded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            forwarded,
            [
                ("x-request-id", "req-7"),
                ("x-tenant", "acme"),
                ("x-tenant", "umbrella")
            ]
        );
    }

    #[test]
    fn a_malformed_timeout_is_told_apart_from_none() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(CallHeaders::read(&metadata), CallHeaders::default());
        metadata.insert("grpc-timeout", "soon".parse().expect("ascii"));
        assert_eq!(CallHeaders::read(&metadata).timeout, Some(None));
    }
}
