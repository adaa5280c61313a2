//! exemesh's own recording span: an OpenTelemetry [`Span`] that writes its OTLP protobuf as it goes.
//!
//! The SDK's span keeps every attribute, event and link as a `KeyValue` list behind its lock,
//! builds a `SpanData` from them when it ends, and hands that to a processor, which (in exemesh)
//! encoded it and freed it all. Here each attribute, event and link is written as a `Span` field
//! the moment it is set (the `KeyValue` is freed at once), and the rest of the span (ids, name,
//! times, status) is written when it ends, straight into the batch being filled ([`Batches`]). The
//! behaviour is the SDK's: the same limits (`OTEL_SPAN_*_LIMIT`), status order, name update, end
//! on drop, and nothing recorded after the end; the tests hold both to the same script.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span, SpanContext, SpanId, SpanKind, Status};
use opentelemetry_sdk::trace::SpanLimits;

use super::batch::Batches;
use super::otlp::{self, SpanEnd};

/// Room for a span's attributes as protobuf: exemesh's spans take up to ~250 bytes of them.
const WRITTEN: usize = 320;

/// A recording span (see the module documentation).
#[derive(Debug)]
pub struct MeshSpan {
    context: SpanContext,
    parent: SpanId,
    parent_remote: bool,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    /// The attributes, events and links set so far, as `Span` fields in the order they came.
    written: Vec<u8>,
    attributes: u32,
    dropped_attributes: u32,
    events: u32,
    dropped_events: u32,
    links: u32,
    dropped_links: u32,
    status: Status,
    limits: SpanLimits,
    /// Where the span is written when it ends; `None` for a span recorded but not sampled.
    batches: Option<Batches>,
    ended: bool,
}

/// Attributes that many spans get (a connection's addresses), written as protobuf once.
#[derive(Debug, Clone)]
pub struct EncodedAttributes {
    list: Arc<[KeyValue]>,
    encoded: Arc<[u8]>,
}

impl EncodedAttributes {
    /// `list`, written once.
    pub fn new(list: Vec<KeyValue>) -> EncodedAttributes {
        let mut encoded = Vec::new();
        for attribute in &list {
            otlp::write_attribute(&mut encoded, attribute);
        }
        EncodedAttributes {
            list: list.into(),
            encoded: encoded.into(),
        }
    }

    /// The attributes.
    pub fn list(&self) -> &[KeyValue] {
        &self.list
    }
}

/// A new span's parent.
#[derive(Debug)]
pub struct Lineage {
    /// The parent's span id (invalid for a root span).
    pub parent: SpanId,
    /// Whether the parent came from another process.
    pub parent_remote: bool,
}

impl MeshSpan {
    /// A span with `context` (its own ids) started at `start`, recording under `limits`; written
    /// to `batches` when it ends (`None`: recorded, not exported).
    pub fn start(
        context: SpanContext,
        lineage: Lineage,
        name: Cow<'static, str>,
        kind: SpanKind,
        limits: SpanLimits,
        batches: Option<Batches>,
        start: SystemTime,
    ) -> MeshSpan {
        MeshSpan {
            context,
            parent: lineage.parent,
            parent_remote: lineage.parent_remote,
            kind,
            name,
            start,
            written: Vec::with_capacity(WRITTEN),
            attributes: 0,
            dropped_attributes: 0,
            events: 0,
            dropped_events: 0,
            links: 0,
            dropped_links: 0,
            status: Status::Unset,
            limits,
            batches,
            ended: false,
        }
    }

    /// Whether one more attribute is kept (counted as dropped when over the limit).
    fn room_for_attribute(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if self.attributes < self.limits.max_attributes_per_span {
            self.attributes += 1;
            true
        } else {
            self.dropped_attributes += 1;
            false
        }
    }

    /// Sets a string attribute, written at once (no `KeyValue` made).
    pub fn set_str(&mut self, key: &str, value: &str) {
        if self.room_for_attribute() {
            otlp::write_str_attribute(&mut self.written, key, value);
        }
    }

    /// Sets an integer attribute, written at once (no `KeyValue` made).
    pub fn set_i64(&mut self, key: &str, value: i64) {
        if self.room_for_attribute() {
            otlp::write_i64_attribute(&mut self.written, key, value);
        }
    }

    /// Sets `attributes`, written once for all the spans that get them.
    pub fn set_encoded(&mut self, attributes: &EncodedAttributes) {
        let room = self.limits.max_attributes_per_span
            - self.attributes.min(self.limits.max_attributes_per_span);
        if self.ended || attributes.list.len() > room as usize {
            // Some go over the limit: one at a time, as the SDK would.
            for attribute in attributes.list.iter() {
                self.set_attribute(attribute.clone());
            }
            return;
        }
        self.attributes += attributes.list.len() as u32;
        self.written.extend_from_slice(&attributes.encoded);
    }

    /// Ends the span at `end` (now if `None`): the first time only.
    fn finish(&mut self, end: Option<SystemTime>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let Some(batches) = self.batches.take() else {
            return;
        };
        let end = SpanEnd {
            context: &self.context,
            parent: self.parent,
            parent_remote: self.parent_remote,
            name: &self.name,
            kind: &self.kind,
            start: self.start,
            end: end.unwrap_or_else(opentelemetry::time::now),
            dropped_attributes: self.dropped_attributes,
            dropped_events: self.dropped_events,
            dropped_links: self.dropped_links,
            status: &self.status,
        };
        batches.add(|buf| otlp::write_span(buf, &end, &self.written));
    }
}

impl Span for MeshSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        if self.ended {
            return;
        }
        if self.events < self.limits.max_events_per_span {
            self.events += 1;
            let limit = self.limits.max_attributes_per_event as usize;
            otlp::write_event(
                &mut self.written,
                &name.into(),
                timestamp,
                &attributes,
                limit,
            );
        } else {
            self.dropped_events += 1;
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        !self.ended
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        if self.room_for_attribute() {
            otlp::write_attribute(&mut self.written, &attribute);
        }
    }

    fn set_status(&mut self, status: Status) {
        // Ok > Error > Unset, as the SDK orders them.
        if !self.ended && status > self.status {
            self.status = status;
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if !self.ended {
            self.name = new_name.into();
        }
    }

    fn add_link(&mut self, span_context: SpanContext, attributes: Vec<KeyValue>) {
        if self.ended {
            return;
        }
        if self.links < self.limits.max_links_per_span {
            self.links += 1;
            let limit = self.limits.max_attributes_per_link as usize;
            otlp::write_link(&mut self.written, &span_context, &attributes, limit);
        } else {
            self.dropped_links += 1;
        }
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        self.finish(Some(timestamp));
    }
}

impl Drop for MeshSpan {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::trace::{Status, TraceContextExt as _};
    use opentelemetry::trace::{TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _};
    use opentelemetry::{Array, Context, InstrumentationScope, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;

    use crate::mesh::telemetry::otlp::{ResourceFields, SCOPE_NAME};
    use crate::mesh::telemetry::reference::{CountedIds, Kept};
    use crate::mesh::telemetry::span::Attributes;

    /// Limits low enough for the script to go over each of them.
    fn limits() -> SpanLimits {
        SpanLimits {
            max_events_per_span: 2,
            max_attributes_per_span: 14,
            max_links_per_span: 1,
            max_attributes_per_event: 1,
            max_attributes_per_link: 1,
        }
    }

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::from_key_value([("k", state)]).expect("a trace state"),
        )
    }

    /// The attributes a span could start with, written by every means [`Attributes`] has;
    /// `variant` 2 sets a pre-encoded group across the attribute limit.
    fn start_attributes(attributes: &mut Attributes<'_>, variant: u64) {
        attributes.str("rpc.service", "shop.v1.Orders");
        attributes.i64("exemesh.call_id", -7);
        attributes.add(KeyValue::new("exemesh.queue_ms", 0.5));
        if variant == 2 {
            for (i, key) in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
                .into_iter()
                .enumerate()
            {
                attributes.i64(key, i as i64);
            }
        }
        attributes.encoded(&EncodedAttributes::new(vec![
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 4317),
            KeyValue::new("network.peer.address", "10.0.0.7"),
        ]));
    }

    /// What a call could do to a span, `variant` choosing the status and the name: every kind of
    /// attribute value, events, links, more of each than [`limits`] keep, then the end, and more
    /// after it (which must change nothing).
    fn script(span: &mut impl Span, start: SystemTime, variant: u64) {
        span.set_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.grpc.status_code", 0i64),
            KeyValue::new("negative", -5i64),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("zero", 0.0),
            KeyValue::new("yes", true),
            KeyValue::new("no", false),
            KeyValue::new("empty", ""),
            KeyValue::new(
                "names",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, 0, -1]))),
            KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, 0.0]))),
        ]);
        span.add_event_with_timestamp(
            "retry",
            start + Duration::from_micros(5),
            vec![KeyValue::new("attempt", 2), KeyValue::new("dropped", "")],
        );
        span.add_link(
            context(7, 8, true, "linked"),
            vec![KeyValue::new("why", "batch"), KeyValue::new("dropped", 1)],
        );
        span.add_link(context(9, 10, false, "over"), vec![]);
        match variant % 3 {
            0 => {}
            1 => {
                span.set_status(Status::Ok);
                span.set_status(Status::error("Ok stays"));
            }
            _ => {
                span.set_status(Status::error("worker crashed"));
                span.set_status(Status::Unset);
                span.update_name("renamed");
            }
        }
        span.set_attribute(KeyValue::new("exemesh.worker", format!("worker-{variant}")));
        span.add_event_with_timestamp("ejected", start + Duration::from_micros(9), vec![]);
        span.add_event_with_timestamp("over the limit", start, vec![]);
        for late in ["process.pid", "over", "the limit"] {
            span.set_attribute(KeyValue::new(late, 77));
        }
        span.end_with_timestamp(start + Duration::from_millis(3));
        span.set_attribute(KeyValue::new("after the end", 1));
        span.add_event_with_timestamp("after the end", start, vec![]);
        span.add_link(context(11, 12, false, "after"), vec![]);
        span.set_status(Status::Ok);
        span.update_name("after the end");
        span.end_with_timestamp(start + Duration::from_millis(9));
    }

    #[test]
    fn a_span_records_and_encodes_as_the_sdks_span_does() {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "shop.v1.Orders"),
                KeyValue::new("replica", 3),
            ])
            .build();
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(kept.clone())
            .with_span_limits(limits())
            .with_id_generator(CountedIds::new(0))
            .with_resource(resource.clone())
            .build();
        let scope = InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        let batches = Batches::detached();
        let parents = [
            Context::new(),
            Context::new().with_remote_span_context(context(0xabc, 0x99, true, "remote")),
            Context::new().with_remote_span_context(context(0xdef, 0x98, false, "local")),
        ];
        let mut reference = Vec::new();
        for (variant, (parent, kind)) in parents
            .iter()
            .zip([SpanKind::Server, SpanKind::Internal, SpanKind::Client])
            .enumerate()
        {
            let variant = variant as u64;
            let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + variant);
            let name = ["test.v1.Echo/Unary", "exec test.v1.Echo/Unary", "call"][variant as usize];
            let mut sdk = tracer
                .span_builder(name)
                .with_kind(kind.clone())
                .with_start_time(start)
                .start_with_context(&tracer, parent);
            let mut list = Vec::new();
            start_attributes(&mut Attributes::collect(&mut list), variant);
            sdk.set_attributes(list);
            script(&mut sdk, start, variant);
            let data = kept.take().pop().expect("the SDK's span ended");
            let lineage = Lineage {
                parent: data.parent_span_id,
                parent_remote: data.parent_span_is_remote,
            };
            let mut ours = MeshSpan::start(
                data.span_context.clone(),
                lineage,
                name.into(),
                kind,
                limits(),
                Some(batches.clone()),
                start,
            );
            start_attributes(&mut Attributes::of(&mut ours), variant);
            script(&mut ours, start, variant);
            reference.push(data);
        }
        let expected = group_spans_by_resource_and_scope(
            reference,
            &ResourceAttributesWithSchema::from(&resource),
        );
        let message = batches
            .take()
            .export_message(&ResourceFields::new(&resource));
        let ours = ExportTraceServiceRequest::decode(&message[5..]).expect("decodes");
        assert_eq!(ours.resource_spans, expected);
        let spans = &ours.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        // The script went over every limit: 6 + 16 attributes for 14 places, 16 more for the
        // third, whose pre-encoded group went across the limit.
        assert_eq!(spans[0].dropped_attributes_count, 8);
        assert_eq!(spans[2].dropped_attributes_count, 18);
        let keys: Vec<&str> = spans[2]
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(keys[12..], ["j", "server.address"]);
        assert_eq!(spans[0].dropped_events_count, 1);
        assert_eq!(spans[0].dropped_links_count, 1);
        assert_eq!(spans[0].events[0].dropped_attributes_count, 1);
        assert_eq!(spans[2].name, "renamed");
    }

    #[test]
    fn a_span_recorded_but_not_sampled_writes_nothing() {
        let batches = Batches::detached();
        let lineage = Lineage {
            parent: SpanId::INVALID,
            parent_remote: false,
        };
        let mut span = MeshSpan::start(
            context(1, 2, false, "s"),
            lineage,
            "x".into(),
            SpanKind::Server,
            limits(),
            None,
            opentelemetry::time::now(),
        );
        assert!(span.is_recording());
        span.set_attribute(KeyValue::new("k", "v"));
        drop(span);
        assert!(batches.take().is_empty());
    }

    #[test]
    fn a_dropped_span_ends_now() {
        let batches = Batches::detached();
        let before = opentelemetry::time::now();
        let lineage = Lineage {
            parent: SpanId::INVALID,
            parent_remote: false,
        };
        let span = MeshSpan::start(
            context(1, 2, false, "s"),
            lineage,
            "x".into(),
            SpanKind::Server,
            limits(),
            Some(batches.clone()),
            opentelemetry::time::now(),
        );
        let cx = Context::new().with_span(span);
        assert!(cx.span().is_recording());
        drop(cx);
        let message = batches
            .take()
            .export_message(&ResourceFields::new(&Resource::builder_empty().build()));
        let decoded = ExportTraceServiceRequest::decode(&message[5..]).expect("decodes");
        let span = &decoded.resource_spans[0].scope_spans[0].spans[0];
        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos();
        assert!(u128::from(span.start_time_unix_nano) >= nanos(before));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert!(u128::from(span.end_time_unix_nano) <= nanos(opentelemetry::time::now()));
    }
}
