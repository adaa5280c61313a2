//! Recent spans, grouped by trace, bounded in memory (the oldest traces are dropped first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use prost::Message as _;

use super::span_head::SpanHead;
use super::span_log::{Loc, Record, SpanLog};
use crate::mesh::telemetry::propagation::hex;
use crate::pb::v1::{SpanView, TraceSummary};

/// Memory the kept spans may take, over all traces: some 11,000 of exemesh's spans (~270 bytes
/// each, plus ~100 of index), a few thousand traces: ample for a local trace view.
pub const MAX_BYTES: usize = 4 << 20;

/// The collected traces.
#[derive(Debug, Default)]
pub struct TraceStore {
    inner: Mutex<Inner>,
}

/// A trace id (16 bytes).
type TraceKey = [u8; 16];

/// A trace's spans: the first one kept and the last (each links to the next, in arrival order).
#[derive(Debug, Clone, Copy)]
struct Trace {
    first: Loc,
    last: Loc,
}

/// Spans are kept as received, encoded: most collected spans are never looked at, and their
/// protobuf encoding takes a fraction of the memory of the decoded messages. What a trace summary
/// needs is kept beside each ([`Record`]).
#[derive(Debug, Default)]
struct Inner {
    log: SpanLog,
    /// Trace ids are hashed with foldhash, seeded per process: SipHash took a tenth of the
    /// receiver's work per span.
    traces: HashMap<TraceKey, Trace, foldhash::fast::RandomState>,
}

impl Inner {
    /// The spans of `trace` with their encodings, in arrival order.
    fn spans(&self, trace: Trace) -> Vec<(&Record, &[u8])> {
        let mut spans = Vec::new();
        let mut next = Some(trace.first);
        while let Some(loc) = next {
            let Some((record, encoded)) = self.log.get(loc) else {
                break;
            };
            spans.push((record, encoded));
            next = record.next;
        }
        spans
    }
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

/// A span as sent (its head was decoded when it was filed, so the rest decodes too).
fn decoded(encoded: &[u8]) -> Span {
    Span::decode(encoded).unwrap_or_default()
}

fn view(record: &Record, encoded: &[u8]) -> SpanView {
    let span = &decoded(encoded);
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
        service: record.service.to_string(),
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

impl TraceStore {
    /// Files spans: (the service that sent it, its head, its encoding, copied). When the kept
    /// spans take more than [`MAX_BYTES`], the oldest are dropped, a chunk of them at a time, and
    /// with them every trace that had a span among them: a trace is kept whole or not at all.
    pub fn add(&self, spans: Vec<(Arc<str>, SpanHead, &[u8])>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { log, traces } = &mut *inner;
        for (service, head, encoded) in spans {
            let trace_id = head.trace_id;
            let loc = log.push(service, head, encoded);
            match traces.get_mut(&trace_id) {
                Some(trace) => {
                    if let Some(last) = log.record_mut(trace.last) {
                        last.next = Some(loc);
                    }
                    trace.last = loc;
                }
                None => {
                    traces.insert(
                        trace_id,
                        Trace {
                            first: loc,
                            last: loc,
                        },
                    );
                }
            }
        }
        while log.bytes() > MAX_BYTES {
            // A trace's spans are all in or after the chunk of its first one: the trace goes
            // with that chunk (its later spans stay as unreachable bytes until theirs goes).
            let dropped = log.drop_oldest(|chunk, record| {
                let id = &record.head.trace_id;
                if traces.get(id).is_some_and(|t| t.first.chunk == chunk) {
                    traces.remove(id);
                }
            });
            if !dropped {
                break;
            }
        }
    }

    /// The newest traces first.
    pub fn list(&self, limit: usize) -> Vec<TraceSummary> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut summaries: Vec<TraceSummary> = inner
            .traces
            .iter()
            .map(|(id, trace)| summary(id, &inner.spans(*trace)))
            .collect();
        summaries.sort_by_key(|s| std::cmp::Reverse(s.start_unix_nanos));
        summaries.truncate(limit);
        summaries
    }

    /// The spans of a trace (by full id or a unique prefix).
    pub fn get(&self, trace_id: &str) -> Option<Vec<SpanView>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = trace_id.to_ascii_lowercase();
        let mut matches = inner
            .traces
            .iter()
            .filter(|(k, _)| hex(&k[..]).starts_with(&id));
        // Ids have one length, so a full id matches only itself; a prefix must be unique.
        match (matches.next(), matches.next()) {
            (Some((_, trace)), None) if !id.is_empty() => Some(
                inner
                    .spans(*trace)
                    .into_iter()
                    .map(|(record, encoded)| view(record, encoded))
                    .collect(),
            ),
            _ => None,
        }
    }
}

fn summary(id: &[u8], spans: &[(&Record, &[u8])]) -> TraceSummary {
    let heads = || spans.iter().map(|(record, _)| &record.head);
    let ids: std::collections::HashSet<u64> = heads().map(|h| h.span_id).collect();
    let root = spans
        .iter()
        .filter(|(r, _)| r.head.parent_span_id == 0 || !ids.contains(&r.head.parent_span_id))
        .min_by_key(|(r, _)| r.head.start);
    let start = heads().map(|h| h.start).min().unwrap_or(0);
    let end = heads().map(|h| h.end).max().unwrap_or(start);
    TraceSummary {
        trace_id: hex(id),
        root_service: root.map(|(r, _)| r.service.to_string()).unwrap_or_default(),
        root_name: root.map(|(_, e)| decoded(e).name).unwrap_or_default(),
        start_unix_nanos: start,
        duration_nanos: end.saturating_sub(start),
        span_count: spans.len() as u32,
        error: heads().any(|h| h.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::trace_view::span_log::CHUNK_BYTES;
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

    /// A one-span trace numbered `t`, started at `t`.
    fn numbered(t: usize) -> Span {
        let mut s = span(0, 1, 0, "x", t as u64, false);
        s.trace_id = (t as u128).to_be_bytes().to_vec();
        s
    }

    fn kept(store: &TraceStore, t: usize) -> bool {
        store.get(&hex(&(t as u128).to_be_bytes())).is_some()
    }

    #[test]
    fn the_oldest_traces_go_first_when_over_the_memory_budget() {
        let store = TraceStore::default();
        let per_span = numbered(0).encoded_len();
        let traces = (MAX_BYTES + 2 * CHUNK_BYTES) / per_span;
        for t in 0..traces {
            add(&store, "s", vec![numbered(t)]);
        }
        {
            let inner = store.inner.lock().expect("lock");
            assert!(
                inner.log.bytes() <= MAX_BYTES,
                "{} bytes kept",
                inner.log.bytes()
            );
        }
        let list = store.list(usize::MAX);
        assert!(list.len() < traces, "nothing was dropped");
        assert!(!kept(&store, 0), "the oldest stays");
        assert!(kept(&store, traces - 1), "the newest went");
        // What is kept is the newest traces, every one of them whole.
        let numbers = list
            .iter()
            .map(|t| u128::from_str_radix(&t.trace_id, 16).expect("hex"));
        let oldest_kept = numbers.min().expect("some kept") as usize;
        assert_eq!(list.len(), traces - oldest_kept);
        assert!(list.iter().all(|t| t.span_count == 1));
    }

    #[test]
    fn a_trace_with_a_span_among_the_dropped_ones_is_dropped_whole() {
        let store = TraceStore::default();
        // Trace 1's first span is filed first; its second comes after enough other traces to
        // push the first out of the budget.
        add(&store, "s", vec![span(1, 1, 0, "root", 0, false)]);
        let per_span = numbered(0).encoded_len() + std::mem::size_of::<Record>();
        let others = MAX_BYTES / per_span;
        for t in 0..others / 4 {
            add(&store, "s", vec![numbered(1000 + t)]);
        }
        add(&store, "s", vec![span(1, 2, 1, "child", 5, false)]);
        assert_eq!(
            store.get(&"01".repeat(16)).map(|v| v.len()),
            Some(2),
            "both spans, while the first is kept"
        );
        for t in others / 4..others * 2 {
            add(&store, "s", vec![numbered(1000 + t)]);
        }
        assert!(store.get(&"01".repeat(16)).is_none(), "kept in part");
        assert!(store.list(usize::MAX).iter().all(|t| t.span_count == 1));
    }
}
