//! W3C trace context (`traceparent`, `tracestate`) and `baggage` in HTTP/2 headers (gRPC metadata),
//! through the globally installed OpenTelemetry propagator. B3 headers (single `b3` or the
//! `X-B3-*` set) are accepted on input when no `traceparent` is present.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// A traceparent-only view synthesized from B3 headers.
struct B3<'a> {
    traceparent: String,
    rest: &'a HeaderMap,
}

impl Extractor for B3<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == "traceparent" {
            Some(&self.traceparent)
        } else {
            self.rest.get(key).and_then(|v| v.to_str().ok())
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The caller's context from request headers (W3C, else B3); the empty context when there is none.
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| {
        if headers.contains_key("traceparent") {
            return p.extract(&Headers(headers));
        }
        match b3_traceparent(headers) {
            Some(traceparent) => p.extract(&B3 {
                traceparent,
                rest: headers,
            }),
            None => Context::new(),
        }
    })
}

/// Writes `context` into request headers.
pub fn inject(context: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(context, &mut HeadersMut(headers))
    });
}

/// The `traceparent` and `tracestate` of `context`, for carriers that are not headers (environment
/// variables, worker frames).
pub fn to_strings(context: &Context) -> (Option<String>, Option<String>) {
    let mut headers = HeaderMap::new();
    inject(context, &mut headers);
    let text = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    (
        text("traceparent"),
        text("tracestate").filter(|s| !s.is_empty()),
    )
}

fn b3_traceparent(headers: &HeaderMap) -> Option<String> {
    let text = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let (trace, span, sampled) = if let Some(single) = text("b3") {
        let mut parts = single.split('-');
        let trace = parts.next()?;
        let span = parts.next()?;
        (
            trace.to_string(),
            span.to_string(),
            parts.next().unwrap_or("1") == "1",
        )
    } else {
        let trace = text("x-b3-traceid")?;
        let span = text("x-b3-spanid")?;
        (
            trace.to_string(),
            span.to_string(),
            text("x-b3-sampled").unwrap_or("1") == "1",
        )
    };
    // 64-bit B3 trace ids are left-padded to 128 bits.
    let trace = format!("{trace:0>32}");
    let valid = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (valid(&trace, 32) && valid(&span, 16)).then(|| {
        format!(
            "00-{}-{}-{}",
            trace.to_ascii_lowercase(),
            span.to_ascii_lowercase(),
            if sampled { "01" } else { "00" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_headers_become_a_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .expect("ascii"),
        );
        assert_eq!(
            b3_traceparent(&h).as_deref(),
            Some("00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01")
        );
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", "64fe8b2a57d3eff7".parse().expect("ascii"));
        h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().expect("ascii"));
        h.insert("x-b3-sampled", "0".parse().expect("ascii"));
        assert_eq!(
            b3_traceparent(&h).as_deref(),
            Some("00-000000000000000064fe8b2a57d3eff7-e457b5a2e4d86bd1-00")
        );
        let mut h = HeaderMap::new();
        h.insert("b3", "nothex-e457b5a2e4d86bd1-1".parse().expect("ascii"));
        assert_eq!(b3_traceparent(&h), None);
    }
}
