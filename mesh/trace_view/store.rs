//! Recent spans, grouped by trace, bounded in memory (the oldest traces are dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};

use crate::pb::v1::{SpanView, TraceSummary};

/// Spans kept at most, over all traces.
pub const MAX_SPANS: usize = 50_000;

/// The collected traces.
#[derive(Debug, Default)]
pub struct TraceStore {
    inner: Mutex<Inner>,
}

/// A trace id as it arrives (16 bytes; other lengths are kept as they are).
type TraceKey = Vec<u8>;

/// A span as received: converting it to a [`SpanView`] (hex ids, attribute values as text) waits
/// until somebody looks, since most collected spans never are.
#[derive(Debug)]
struct Stored {
    service: Arc<str>,
    span: Span,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<TraceKey, Vec<Stored>>,
    order: VecDeque<TraceKey>,
    spans: usize,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "",
    }
}

impl Stored {
    fn view(&self) -> SpanView {
        let span = &self.span;
        let events = span
            .events
            .iter()
            .map(|e| {
                let attrs: Vec<String> = e.attributes.iter().map(|kv| text(&kv.value)).collect();
                if attrs.is_empty() {
                    e.name.clone()
                } else {
                    format!("{}: {}", e.name, attrs.join(" "))
                }
            })
            .collect();
        SpanView {
            span_id: hex(&span.span_id),
            parent_span_id: hex(&span.parent_span_id),
            service: self.service.to_string(),
            name: span.name.clone(),
            kind: kind(span.kind).to_string(),
            start_unix_nanos: span.start_time_unix_nano,
            end_unix_nanos: span.end_time_unix_nano,
            status: match span.status.as_ref().map(|s| s.code) {
                Some(1) => "ok".into(),
                Some(2) => "error".into(),
                _ => String::new(),
            },
            status_message: span
                .status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default(),
            attributes: span
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), text(&kv.value)))
                .collect(),
            events,
        }
    }

    fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == 2)
    }
}

impl TraceStore {
    /// Adds the spans of an OTLP export request.
    pub fn add(&self, resource_spans: Vec<ResourceSpans>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for rs in resource_spans {
            let service: Arc<str> = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(&kv.value))
                .unwrap_or_default()
                .into();
            for scope in rs.scope_spans {
                for span in scope.spans {
                    let stored = Stored {
                        service: service.clone(),
                        span,
                    };
                    match inner.traces.get_mut(&stored.span.trace_id) {
                        Some(spans) => spans.push(stored),
                        None => {
                            let key = stored.span.trace_id.clone();
                            inner.order.push_back(key.clone());
                            inner.traces.insert(key, vec![stored]);
                        }
                    }
                    inner.spans += 1;
                }
            }
        }
        while inner.spans > MAX_SPANS {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            let dropped = inner.traces.remove(&oldest).map_or(0, |s| s.len());
            inner.spans -= dropped;
        }
    }

    /// The newest traces first.
    pub fn list(&self, limit: usize) -> Vec<TraceSummary> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut summaries: Vec<TraceSummary> = inner
            .traces
            .iter()
            .map(|(id, spans)| summary(id, spans))
            .collect();
        summaries.sort_by_key(|s| std::cmp::Reverse(s.start_unix_nanos));
        summaries.truncate(limit);
        summaries
    }

    /// The spans of a trace (by full id or a unique prefix).
    pub fn get(&self, trace_id: &str) -> Option<Vec<SpanView>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = trace_id.to_ascii_lowercase();
        let views = |spans: &Vec<Stored>| spans.iter().map(Stored::view).collect();
        let mut matches = inner.traces.iter().filter(|(k, _)| hex(k).starts_with(&id));
        // Ids have one length, so a full id matches only itself; a prefix must be unique.
        match (matches.next(), matches.next()) {
            (Some((_, spans)), None) if !id.is_empty() => Some(views(spans)),
            _ => None,
        }
    }
}

fn summary(id: &[u8], spans: &[Stored]) -> TraceSummary {
    let ids: std::collections::HashSet<&[u8]> =
        spans.iter().map(|s| s.span.span_id.as_slice()).collect();
    let root = spans
        .iter()
        .filter(|s| {
            s.span.parent_span_id.is_empty() || !ids.contains(s.span.parent_span_id.as_slice())
        })
        .min_by_key(|s| s.span.start_time_unix_nano);
    let start = spans
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.span.end_time_unix_nano)
        .max()
        .unwrap_or(start);
    TraceSummary {
        trace_id: hex(id),
        root_service: root.map(|r| r.service.to_string()).unwrap_or_default(),
        root_name: root.map(|r| r.span.name.clone()).unwrap_or_default(),
        start_unix_nanos: start,
        duration_nanos: end.saturating_sub(start),
        span_count: spans.len() as u32,
        error: spans.iter().any(Stored::is_error),
    }
}
