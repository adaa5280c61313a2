//! Recent spans, grouped by trace, bounded in memory (the oldest traces are dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use prost::Message as _;

use super::span_head::SpanHead;
use crate::mesh::telemetry::propagation::hex;
use crate::pb::v1::{SpanView, TraceSummary};

/// Memory the kept spans may take, over all traces: about 20,000 of exemesh's spans (some 6,000
/// traces of the shop example), ample for a local trace view.
pub const MAX_BYTES: usize = 4 << 20;

/// The collected traces.
#[derive(Debug, Default)]
pub struct TraceStore {
    inner: Mutex<Inner>,
}

/// A trace id (16 bytes).
type TraceKey = [u8; 16];

/// A span as received, kept encoded: most collected spans are never looked at, and its protobuf
/// encoding takes a fraction of the memory of the decoded message (one allocation instead of one
/// per name, attribute and value). What a trace summary needs is kept beside it.
#[derive(Debug)]
struct Stored {
    service: Arc<str>,
    span_id: u64,
    parent_span_id: u64,
    start: u64,
    end: u64,
    error: bool,
    encoded: Box<[u8]>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Trace ids are hashed with foldhash, seeded per process: SipHash took a tenth of the
    /// receiver's work per span.
    traces: HashMap<TraceKey, Vec<Stored>, foldhash::fast::RandomState>,
    order: VecDeque<TraceKey>,
    bytes: usize,
}

/// An attribute value as text (strings as they are, numbers and booleans printed).
pub(super) fn text(value: &Option<AnyValue>) -> String {
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
    /// The memory it takes.
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.encoded.len()
    }

    /// Keeps a copy of `encoded` (not the request buffer it is a slice of).
    fn new(service: Arc<str>, head: &SpanHead, encoded: &[u8]) -> Self {
        Self {
            service,
            span_id: head.span_id,
            parent_span_id: head.parent_span_id,
            start: head.start,
            end: head.end,
            error: head.error,
            encoded: encoded.into(),
        }
    }

    /// The span as sent (its head decoded when it was filed, so the rest does too).
    fn span(&self) -> Span {
        Span::decode(&*self.encoded).unwrap_or_default()
    }

    fn view(&self) -> SpanView {
        let span = &self.span();
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
}

impl TraceStore {
    /// Files spans: (the service that sent it, its head, its encoding, copied).
    pub fn add(&self, spans: Vec<(Arc<str>, SpanHead, &[u8])>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (service, head, encoded) in spans {
            let stored = Stored::new(service, &head, encoded);
            inner.bytes += stored.size();
            match inner.traces.get_mut(&head.trace_id) {
                Some(spans) => spans.push(stored),
                None => {
                    inner.order.push_back(head.trace_id);
                    inner.traces.insert(head.trace_id, vec![stored]);
                }
            }
        }
        while inner.bytes > MAX_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            let dropped: usize = inner
                .traces
                .remove(&oldest)
                .map_or(0, |spans| spans.iter().map(Stored::size).sum());
            inner.bytes -= dropped;
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
        let mut matches = inner
            .traces
            .iter()
            .filter(|(k, _)| hex(&k[..]).starts_with(&id));
        // Ids have one length, so a full id matches only itself; a prefix must be unique.
        match (matches.next(), matches.next()) {
            (Some((_, spans)), None) if !id.is_empty() => Some(views(spans)),
            _ => None,
        }
    }
}

fn summary(id: &[u8], spans: &[Stored]) -> TraceSummary {
    let ids: std::collections::HashSet<u64> = spans.iter().map(|s| s.span_id).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id == 0 || !ids.contains(&s.parent_span_id))
        .min_by_key(|s| s.start);
    let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end).max().unwrap_or(start);
    TraceSummary {
        trace_id: hex(id),
        root_service: root.map(|r| r.service.to_string()).unwrap_or_default(),
        root_name: root.map(|r| r.span().name).unwrap_or_default(),
        start_unix_nanos: start,
        duration_nanos: end.saturating_sub(start),
        span_count: spans.len() as u32,
        error: spans.iter().any(|s| s.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..KeyValue::default()
        }
    }

    fn span(trace: u8, id: u8, parent: u8, name: &str, start: u64, error: bool) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: name.into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 100,
            attributes: vec![string("rpc.method", name)],
            status: error.then(|| Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Span::default()
        }
    }

    /// Files `spans` of `service` as the receiver does.
    fn add(store: &TraceStore, service: &str, spans: Vec<Span>) {
        let encoded: Vec<Vec<u8>> = spans.iter().map(Span::encode_to_vec).collect();
        store.add(
            encoded
                .iter()
                .map(|e| (service.into(), SpanHead::read(e).expect("a span"), &e[..]))
                .collect(),
        );
    }

    #[test]
    fn spans_come_back_as_sent_with_their_trace_summary() {
        let store = TraceStore::default();
        add(
            &store,
            "shop.v1.OrderService",
            vec![
                span(1, 2, 1, "child", 20, true),
                span(1, 1, 0, "root", 10, false),
            ],
        );
        let list = store.list(10);
        assert_eq!(list.len(), 1);
        let t = &list[0];
        assert_eq!(
            (t.root_name.as_str(), t.root_service.as_str()),
            ("root", "shop.v1.OrderService")
        );
        assert_eq!(
            (t.start_unix_nanos, t.duration_nanos, t.span_count, t.error),
            (10, 110, 2, true)
        );
        let views = store.get(&"01".repeat(16)).expect("the trace");
        let child = views.iter().find(|v| v.name == "child").expect("child");
        assert_eq!(child.parent_span_id, "01".repeat(8));
        assert_eq!(
            (child.status.as_str(), child.status_message.as_str()),
            ("error", "boom")
        );
        assert_eq!(
            child.attributes.get("rpc.method").map(String::as_str),
            Some("child")
        );
        assert!(store.get("02").is_none());
    }

    #[test]
    fn the_oldest_traces_go_first_when_over_the_memory_budget() {
        let store = TraceStore::default();
        let encoded = span(0, 1, 0, "x", 0, false).encode_to_vec();
        let head = SpanHead::read(&encoded).expect("a span");
        let per_span = Stored::new("s".into(), &head, &encoded).size();
        let traces = MAX_BYTES / per_span + 10;
        for t in 0..traces {
            let mut s = span(0, 1, 0, "x", t as u64, false);
            s.trace_id = (t as u128).to_be_bytes().to_vec();
            add(&store, "s", vec![s]);
        }
        let inner = store.inner.lock().expect("lock");
        assert!(inner.bytes <= MAX_BYTES, "{} bytes kept", inner.bytes);
        assert_eq!(inner.traces.len(), inner.order.len());
        assert!(inner.traces.len() < traces, "nothing was dropped");
        assert!(
            !inner.traces.contains_key(&0u128.to_be_bytes()),
            "the oldest stays"
        );
        let newest = ((traces - 1) as u128).to_be_bytes();
        assert!(inner.traces.contains_key(&newest), "the newest went");
    }
}
