//! Recent spans, grouped by trace, bounded in memory (the oldest traces are dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::pb::v1::{SpanView, TraceSummary};

/// Spans kept at most, over all traces.
pub const MAX_SPANS: usize = 50_000;

/// The collected traces.
#[derive(Debug, Default)]
pub struct TraceStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<String, Vec<SpanView>>,
    order: VecDeque<String>,
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

impl TraceStore {
    /// Adds the spans of an OTLP export request.
    pub fn add(&self, resource_spans: Vec<ResourceSpans>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for rs in resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for scope in rs.scope_spans {
                for span in scope.spans {
                    let trace_id = hex(&span.trace_id);
                    let events = span
                        .events
                        .iter()
                        .map(|e| {
                            let attrs: Vec<String> =
                                e.attributes.iter().map(|kv| text(&kv.value)).collect();
                            if attrs.is_empty() {
                                e.name.clone()
                            } else {
                                format!("{}: {}", e.name, attrs.join(" "))
                            }
                        })
                        .collect();
                    let view = SpanView {
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        service: service.clone(),
                        name: span.name,
                        kind: kind(span.kind).to_string(),
                        start_unix_nanos: span.start_time_unix_nano,
                        end_unix_nanos: span.end_time_unix_nano,
                        status: match span.status.as_ref().map(|s| s.code) {
                            Some(1) => "ok".into(),
                            Some(2) => "error".into(),
                            _ => String::new(),
                        },
                        status_message: span.status.map(|s| s.message).unwrap_or_default(),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(&kv.value)))
                            .collect(),
                        events,
                    };
                    if !inner.traces.contains_key(&trace_id) {
                        inner.order.push_back(trace_id.clone());
                    }
                    inner.traces.entry(trace_id).or_default().push(view);
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
        if let Some(spans) = inner.traces.get(&id) {
            return Some(spans.clone());
        }
        let mut matches = inner.traces.iter().filter(|(k, _)| k.starts_with(&id));
        match (matches.next(), matches.next()) {
            (Some((_, spans)), None) if !id.is_empty() => Some(spans.clone()),
            _ => None,
        }
    }
}

fn summary(id: &str, spans: &[SpanView]) -> TraceSummary {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
        .min_by_key(|s| s.start_unix_nanos);
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_unix_nanos)
        .max()
        .unwrap_or(start);
    TraceSummary {
        trace_id: id.to_string(),
        root_service: root.map(|r| r.service.clone()).unwrap_or_default(),
        root_name: root.map(|r| r.name.clone()).unwrap_or_default(),
        start_unix_nanos: start,
        duration_nanos: end.saturating_sub(start),
        span_count: spans.len() as u32,
        error: spans.iter().any(|s| s.status == "error"),
    }
}
