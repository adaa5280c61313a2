//! W3C trace context (`traceparent`, `tracestate`) and `baggage` in HTTP/2 headers (gRPC metadata),
//! through the globally installed OpenTelemetry propagator. B3 headers (single `b3` or the
//! `X-B3-*` set) are accepted on input when no `traceparent` is present.

use http::{HeaderMap, HeaderName};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// The headers looked up on every call, named once (a lookup by `&str` parses the name each time).
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3_SINGLE: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

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
    match carried(headers) {
        Carried::W3c => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
        }
        Carried::B3 => match b3_traceparent(headers) {
            Some(traceparent) => {
                let b3 = B3 {
                    traceparent,
                    rest: headers,
                };
                opentelemetry::global::get_text_map_propagator(|p| p.extract(&b3))
            }
            None => Context::new(),
        },
        Carried::Nothing => Context::new(),
    }
}

/// Which trace context headers a request carries.
#[derive(Debug, PartialEq)]
enum Carried {
    W3c,
    B3,
    Nothing,
}

/// Which trace context `headers` carry, from one pass over their names: cheaper than looking up
/// each name that could carry one (a hash per name), and most calls into a mesh's edge carry none.
fn carried(headers: &HeaderMap) -> Carried {
    let mut b3 = false;
    for name in headers.keys() {
        if *name == TRACEPARENT {
            return Carried::W3c;
        }
        b3 |= *name == B3_SINGLE || name.as_str().starts_with("x-b3-");
    }
    if b3 { Carried::B3 } else { Carried::Nothing }
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
    use opentelemetry::trace::TraceContextExt as _;
    // Written directly (the W3C format is fixed): going through the global propagator costs a
    // lock, a header map and several allocations on every execution.
    let span = context.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return (None, None);
    }
    // version-trace_id-span_id-flags: 2 + 32 + 16 + 2 hex digits and 3 dashes.
    let mut traceparent = [b'-'; 55];
    hex_into(&mut traceparent[0..2], &[0]);
    hex_into(&mut traceparent[3..35], &sc.trace_id().to_bytes());
    hex_into(&mut traceparent[36..52], &sc.span_id().to_bytes());
    hex_into(&mut traceparent[53..55], &[sc.trace_flags().to_u8()]);
    // Hex digits and dashes: always UTF-8.
    let traceparent = String::from_utf8(traceparent.to_vec()).unwrap_or_default();
    let tracestate = sc.trace_state().header();
    (
        Some(traceparent),
        Some(tracestate).filter(|s| !s.is_empty()),
    )
}

/// `bytes` as lowercase hex digits, as W3C trace context writes ids.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_into(&mut out, bytes);
    // Hex digits: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` as lowercase hex digits into `out` (two per byte).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn b3_traceparent(headers: &HeaderMap) -> Option<String> {
    let text = |k: &HeaderName| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let (trace, span, sampled) = if let Some(single) = text(&B3_SINGLE) {
        let mut parts = single.split('-');
        let trace = parts.next()?;
        let span = parts.next()?;
        (
            trace.to_string(),
            span.to_string(),
            parts.next().unwrap_or("1") == "1",
        )
    } else {
        let trace = text(&B3_TRACE_ID)?;
        let span = text(&B3_SPAN_ID)?;
        (
            trace.to_string(),
            span.to_string(),
            text(&B3_SAMPLED).unwrap_or("1") == "1",
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
    fn to_strings_writes_what_the_w3c_propagator_writes() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        };
        let state = TraceState::from_key_value([("vendor", "x")]).expect("state");
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("id"),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        let context = Context::new().with_remote_span_context(sc);
        let (traceparent, tracestate) = to_strings(&context);
        assert_eq!(
            traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(tracestate.as_deref(), Some("vendor=x"));
        let mut headers = HeaderMap::new();
        use opentelemetry::propagation::TextMapPropagator as _;
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&context, &mut HeadersMut(&mut headers));
        assert_eq!(
            headers.get("traceparent").and_then(|v| v.to_str().ok()),
            traceparent.as_deref()
        );
        assert_eq!(to_strings(&Context::new()), (None, None));
    }

    #[test]
    fn the_carried_context_is_found_among_other_headers() {
        let with = |names: &[&str]| {
            let mut h = HeaderMap::new();
            for name in ["content-type", "te", "user-agent", "grpc-timeout"]
                .iter()
                .chain(names)
            {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                    "x".parse().expect("ascii"),
                );
            }
            carried(&h)
        };
        assert_eq!(with(&[]), Carried::Nothing);
        assert_eq!(with(&["x-tenant", "b3x", "traceparentx"]), Carried::Nothing);
        assert_eq!(with(&["traceparent"]), Carried::W3c);
        assert_eq!(with(&["b3", "traceparent", "x-b3-spanid"]), Carried::W3c);
        assert_eq!(with(&["b3"]), Carried::B3);
        assert_eq!(with(&["x-b3-traceid", "x-b3-spanid"]), Carried::B3);
    }

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
