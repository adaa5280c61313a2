//! OTLP trace protobuf written straight from exemesh's spans.
//!
//! opentelemetry-otlp first converts a batch into the generated OTLP messages (a `String` per name,
//! key and value, a `Vec` per attribute list), copies that whole tree once more for a possible
//! retry, then encodes it, computing nested lengths again at every level. Here a span writes its
//! attributes, events and links as `Span` fields the moment they are set
//! ([`super::mesh_span::MeshSpan`]), and the rest of the span when it ends, into the batch being
//! filled ([`EncodedSpans`]): the same bytes on the wire, without the intermediate tree.
//!
//! The fields and their mapping follow opentelemetry-proto's conversion (`From<SpanData> for Span`,
//! `group_spans_by_resource_and_scope`); the tests of `mesh_span` decode both and compare.

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::Resource;
use prost::encoding::{WireType, encoded_len_varint};

/// The path of `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The instrumentation scope of every span exemesh makes.
pub const SCOPE_NAME: &str = "exemesh";

/// `ExportTraceServiceRequest` with its `ResourceSpans` as encoded bytes (the same wire format):
/// what the exporter sends, and what `exemesh up`'s receiver reads without decoding the spans.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportRequest {
    /// Encoded `ResourceSpans` messages.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub resource_spans: Vec<bytes::Bytes>,
}

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: the flags say whether the parent is remote.
const HAS_IS_REMOTE: u32 = 0x100;
/// `SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const IS_REMOTE: u32 = 0x200;

/// The fields of an export request that only depend on the resource, encoded once per exporter:
/// every batch's message starts with them ([`EncodedSpans::export_message`]).
#[derive(Debug)]
pub struct ResourceFields {
    /// `ResourceSpans.resource` (field 1), key and length included.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1): exemesh's instrumentation scope.
    scope: Vec<u8>,
    /// `ResourceSpans.schema_url` (field 3), or nothing.
    schema_url: Vec<u8>,
}

impl ResourceFields {
    /// The fields of `resource`'s requests.
    pub fn new(resource: &Resource) -> ResourceFields {
        let mut fields = ResourceFields {
            resource: Vec::new(),
            scope: Vec::new(),
            schema_url: Vec::new(),
        };
        nested_sized(&mut fields.resource, 1, 2, |buf| {
            for (key, value) in resource.iter() {
                nested(buf, 1, |buf| key_value(buf, key.as_str(), value));
            }
        });
        nested(&mut fields.scope, 1, |buf| {
            string(buf, 1, SCOPE_NAME);
            string(buf, 2, env!("CARGO_PKG_VERSION"));
        });
        string(
            &mut fields.schema_url,
            3,
            resource.schema_url().unwrap_or_default(),
        );
        fields
    }

    /// The bytes an export request takes before its first span, at most: the gRPC prefix, the keys
    /// and lengths of `ExportTraceServiceRequest.resource_spans` and `ResourceSpans.scope_spans`
    /// (a length takes at most 5 bytes: the prefix cannot say more than 4 GiB), the resource and
    /// the scope. A batch keeps that much room in front of its spans.
    pub fn header_room(&self) -> usize {
        5 + (1 + 5) + self.resource.len() + (1 + 5) + self.scope.len()
    }
}

/// Finished spans written as OTLP protobuf as they end: an export request waiting for its
/// header. Each span is written once, as a `spans` field of the `ScopeSpans` message of exemesh's
/// instrumentation scope, after room kept for the message's header, which
/// [`EncodedSpans::export_message`] fills in: the spans are never copied into another buffer.
#[derive(Debug, Default)]
pub struct EncodedSpans {
    /// `room` bytes for the header, then the spans as `ScopeSpans.spans` fields; empty (nothing
    /// allocated) until the first span.
    buf: Vec<u8>,
    room: usize,
    /// Bytes reserved for spans when the first one is written.
    expected: usize,
    len: usize,
}

impl EncodedSpans {
    /// No span yet; `room` bytes will be kept for the header (see [`ResourceFields::header_room`])
    /// and `expected` bytes reserved for the spans when the first one is written.
    pub fn with_room(room: usize, expected: usize) -> EncodedSpans {
        EncodedSpans {
            buf: Vec::new(),
            room,
            expected,
            len: 0,
        }
    }

    /// Writes a span after the others: `write` appends the body of its `Span` message.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        // A span takes a few hundred bytes: two for its length.
        nested_sized(self.started(), 2, 2, write);
        self.len += 1;
    }

    /// The buffer, with the room for the header kept (and the expected bytes reserved) if nothing
    /// was written yet.
    fn started(&mut self) -> &mut Vec<u8> {
        if self.buf.is_empty() {
            self.buf.reserve(self.room + self.expected);
            self.buf.resize(self.room, 0);
        }
        &mut self.buf
    }

    /// The spans written, as `ScopeSpans.spans` fields.
    fn spans(&self) -> &[u8] {
        self.buf.get(self.room..).unwrap_or_default()
    }

    /// The bytes the buffer has room for.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Writes `other`'s spans after these.
    #[cfg(test)]
    pub(super) fn append(&mut self, other: EncodedSpans) {
        self.started().extend_from_slice(other.spans());
        self.len += other.len;
    }

    /// How many spans are written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// How many bytes the spans take.
    pub fn bytes(&self) -> usize {
        self.spans().len()
    }

    /// Whether no span is written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The spans as the message of a gRPC `Export` call from the resource of `fields`: the 5-byte
    /// gRPC prefix, then an `ExportTraceServiceRequest` holding one `ResourceSpans`. The header is
    /// written into the room kept in front of the spans, when there is enough (otherwise the
    /// spans are copied after it).
    pub fn export_message(mut self, fields: &ResourceFields) -> bytes::Bytes {
        let spans = self.bytes();
        self.started().extend_from_slice(&fields.schema_url);
        let scope_spans = fields.scope.len() + spans;
        let resource_spans = fields.resource.len()
            + 1
            + encoded_len_varint(scope_spans as u64)
            + scope_spans
            + fields.schema_url.len();
        let request = 1 + encoded_len_varint(resource_spans as u64) + resource_spans;
        let mut header = Vec::with_capacity(fields.header_room());
        header.push(0);
        header.extend_from_slice(&u32::try_from(request).unwrap_or(u32::MAX).to_be_bytes());
        encode_key(1, WireType::LengthDelimited, &mut header);
        encode_varint(resource_spans as u64, &mut header);
        header.extend_from_slice(&fields.resource);
        encode_key(2, WireType::LengthDelimited, &mut header);
        encode_varint(scope_spans as u64, &mut header);
        header.extend_from_slice(&fields.scope);
        match self.room.checked_sub(header.len()) {
            Some(start) => {
                self.buf[start..self.room].copy_from_slice(&header);
                bytes::Bytes::from(self.buf).slice(start..)
            }
            None => {
                header.extend_from_slice(&self.buf[self.room..]);
                header.into()
            }
        }
    }
}

/// What a span knows when it ends, besides the attributes, events and links it wrote as it went.
#[derive(Debug)]
pub struct SpanEnd<'a> {
    /// The span's own context.
    pub context: &'a SpanContext,
    /// Its parent's span id (invalid for a root span).
    pub parent: opentelemetry::trace::SpanId,
    /// Whether its parent came from another process.
    pub parent_remote: bool,
    /// Its name.
    pub name: &'a str,
    /// Its kind.
    pub kind: &'a SpanKind,
    /// When it started.
    pub start: std::time::SystemTime,
    /// When it ended.
    pub end: std::time::SystemTime,
    /// Attributes over the limit.
    pub dropped_attributes: u32,
    /// Events over the limit.
    pub dropped_events: u32,
    /// Links over the limit.
    pub dropped_links: u32,
    /// Its status.
    pub status: &'a Status,
}

/// The body of an OTLP `Span`: `span`'s fields, with `written` (its attributes, events and links,
/// as `Span` fields) in between.
pub fn write_span(buf: &mut Vec<u8>, span: &SpanEnd<'_>, written: &[u8]) {
    let context = span.context;
    bytes(buf, 1, &context.trace_id().to_bytes());
    bytes(buf, 2, &context.span_id().to_bytes());
    string(buf, 3, &context.trace_state().header());
    if span.parent != opentelemetry::trace::SpanId::INVALID {
        bytes(buf, 4, &span.parent.to_bytes());
    }
    string(buf, 5, span.name);
    let kind = match span.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    varint(buf, 6, kind);
    fixed64(buf, 7, nanos(span.start));
    fixed64(buf, 8, nanos(span.end));
    buf.extend_from_slice(written);
    varint(buf, 10, u64::from(span.dropped_attributes));
    varint(buf, 12, u64::from(span.dropped_events));
    varint(buf, 14, u64::from(span.dropped_links));
    nested(buf, 15, |buf| {
        let (code, message) = match span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(buf, 2, message);
        varint(buf, 3, code);
    });
    fixed32(buf, 16, flags(span.parent_remote, context));
}

/// A `Span.events` field (tag 11): the event, with at most `limit` of its attributes.
pub fn write_event(
    buf: &mut Vec<u8>,
    name: &str,
    time: std::time::SystemTime,
    attributes: &[KeyValue],
    limit: usize,
) {
    let kept = attributes.len().min(limit);
    nested_sized(buf, 11, 1, |buf| {
        fixed64(buf, 1, nanos(time));
        string(buf, 2, name);
        self::attributes(buf, 3, &attributes[..kept]);
        varint(buf, 4, (attributes.len() - kept) as u64);
    });
}

/// A `Span.links` field (tag 13): the link, with at most `limit` of its attributes.
pub fn write_link(buf: &mut Vec<u8>, linked: &SpanContext, attributes: &[KeyValue], limit: usize) {
    let kept = attributes.len().min(limit);
    nested(buf, 13, |buf| {
        bytes(buf, 1, &linked.trace_id().to_bytes());
        bytes(buf, 2, &linked.span_id().to_bytes());
        string(buf, 3, &linked.trace_state().header());
        self::attributes(buf, 4, &attributes[..kept]);
        varint(buf, 5, (attributes.len() - kept) as u64);
        fixed32(buf, 6, flags(linked.is_remote(), linked));
    });
}

/// A `Span.attributes` field (tag 9).
pub fn write_attribute(buf: &mut Vec<u8>, attribute: &KeyValue) {
    attributes(buf, 9, std::slice::from_ref(attribute));
}

/// A span's or link's `flags`: the W3C trace flags, and whether the parent is remote.
fn flags(remote: bool, context: &SpanContext) -> u32 {
    let flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if remote { flags | IS_REMOTE } else { flags }
}

fn nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Repeated `KeyValue`s in field `tag`.
fn attributes<'a>(buf: &mut Vec<u8>, tag: u32, list: impl IntoIterator<Item = &'a KeyValue>) {
    for kv in list {
        let key = kv.key.as_str();
        match scalar_len(&kv.value) {
            // The usual case, a key and a scalar value: lengths known up front, nothing moves.
            Some(value_len) => {
                scalar_attribute(buf, tag, key, value_len, |buf| any_value(buf, &kv.value))
            }
            None => nested(buf, tag, |buf| key_value(buf, key, &kv.value)),
        }
    }
}

/// A `KeyValue` in field `tag` whose value is a scalar `AnyValue` with a body of `value_len`
/// bytes, which `value` writes.
fn scalar_attribute(
    buf: &mut Vec<u8>,
    tag: u32,
    key: &str,
    value_len: usize,
    value: impl FnOnce(&mut Vec<u8>),
) {
    let body = string_len(1, key) + 1 + encoded_len_varint(value_len as u64) + value_len;
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
    string(buf, 1, key);
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(value_len as u64, buf);
    value(buf);
}

/// A `Span.attributes` field holding a string, without a `KeyValue` to say it.
pub fn write_str_attribute(buf: &mut Vec<u8>, key: &str, value: &str) {
    scalar_attribute(buf, 9, key, str_value_len(value), |buf| {
        str_value(buf, value)
    });
}

/// A `Span.attributes` field holding an integer, without a `KeyValue` to say it.
pub fn write_i64_attribute(buf: &mut Vec<u8>, key: &str, value: i64) {
    scalar_attribute(buf, 9, key, i64_value_len(value), |buf| {
        i64_value(buf, value)
    });
}

/// The body of a `KeyValue`.
fn key_value(buf: &mut Vec<u8>, key: &str, value: &Value) {
    string(buf, 1, key);
    nested(buf, 2, |buf| any_value(buf, value));
}

/// The length of a scalar value's `AnyValue` body; `None` for arrays and unknown kinds.
fn scalar_len(value: &Value) -> Option<usize> {
    Some(match value {
        Value::Bool(_) => 2,
        Value::I64(i) => i64_value_len(*i),
        Value::F64(_) => 9,
        Value::String(s) => str_value_len(s.as_str()),
        _ => return None,
    })
}

/// The length of the body of an `AnyValue` holding the string `value`.
fn str_value_len(value: &str) -> usize {
    1 + encoded_len_varint(value.len() as u64) + value.len()
}

/// The length of the body of an `AnyValue` holding the integer `value`.
fn i64_value_len(value: i64) -> usize {
    1 + encoded_len_varint(value as u64)
}

/// The body of an `AnyValue` holding the string `value`.
fn str_value(buf: &mut Vec<u8>, value: &str) {
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

/// The body of an `AnyValue` holding the integer `value`.
fn i64_value(buf: &mut Vec<u8>, value: i64) {
    encode_key(3, WireType::Varint, buf);
    encode_varint(value as u64, buf);
}

/// The encoded length of a string field (0 when empty, as [`string`] omits it).
fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

/// The body of an `AnyValue`: a oneof, so its one field is written even when it holds a default.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*b), buf);
        }
        Value::I64(i) => i64_value(buf, *i),
        Value::F64(f) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => str_value(buf, s.as_str()),
        Value::Array(array) => nested(buf, 5, |buf| match array {
            Array::Bool(values) => array_values(buf, values, |v| Value::Bool(*v)),
            Array::I64(values) => array_values(buf, values, |v| Value::I64(*v)),
            Array::F64(values) => array_values(buf, values, |v| Value::F64(*v)),
            Array::String(values) => array_values(buf, values, |v| Value::String(v.clone())),
            // A kind of array added after this was written: sent as an empty array.
            _ => {}
        }),
        // A kind of value added after this was written: sent as an empty value.
        _ => {}
    }
}

/// The `values` of an `ArrayValue`.
fn array_values<T>(buf: &mut Vec<u8>, values: &[T], value: impl Fn(&T) -> Value) {
    for v in values {
        nested(buf, 1, |buf| any_value(buf, &value(v)));
    }
}

/// A length-delimited field `tag` whose body `write` appends (expected under 128 bytes).
fn nested(buf: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    nested_sized(buf, tag, 1, write);
}

/// A length-delimited field `tag` whose body `write` appends, with `room` bytes kept in front for
/// its length: the body moves only when its length takes another number of bytes.
fn nested_sized(buf: &mut Vec<u8>, tag: u32, room: usize, write: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    let start = buf.len();
    buf.resize(start + room, 0);
    write(buf);
    let len = buf.len() - start - room;
    let prefix = encoded_len_varint(len as u64);
    if prefix != room {
        if prefix > room {
            buf.resize(buf.len() + prefix - room, 0);
        }
        buf.copy_within(start + room..start + room + len, start + prefix);
        buf.truncate(start + prefix + len);
    }
    varint_into(&mut buf[start..start + prefix], len as u64);
}

/// A field's key: one byte for the tags and wire types OTLP's spans use, a constant once inlined.
#[inline(always)]
fn encode_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

/// A varint, appended at once (prost's `encode_varint` goes byte by byte through `BufMut`, which
/// checks the room for each: the most frequent call of the encoding). The one-byte case, most
/// keys and lengths, is inlined; the rest is a call.
#[inline(always)]
fn encode_varint(value: u64, buf: &mut Vec<u8>) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        encode_long_varint(value, buf);
    }
}

/// A varint of two bytes or more.
#[inline(never)]
fn encode_long_varint(value: u64, buf: &mut Vec<u8>) {
    let mut bytes = [0u8; 10];
    let len = varint_into(&mut bytes, value);
    buf.extend_from_slice(&bytes[..len]);
}

/// Writes `value` as a varint at the start of `out`, which must have room for it; its length.
fn varint_into(out: &mut [u8], mut value: u64) -> usize {
    let mut len = 0;
    while value >= 0x80 {
        out[len] = value as u8 | 0x80;
        value >>= 7;
        len += 1;
    }
    out[len] = value as u8;
    len + 1
}

/// A string field (omitted when empty, as proto3 does).
fn string(buf: &mut Vec<u8>, tag: u32, value: &str) {
    bytes(buf, tag, value.as_bytes());
}

/// A bytes field (omitted when empty).
fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    }
}

/// A varint field (omitted when 0).
fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A fixed64 field (omitted when 0).
fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// A fixed32 field (omitted when 0).
fn fixed32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    /// Writes the body of a finished, sampled root span of trace `trace`, named `name`.
    pub(in crate::mesh::telemetry) fn root_span(buf: &mut Vec<u8>, trace: u128, name: &str) {
        let context = SpanContext::new(
            TraceId::from(trace),
            SpanId::from(1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let end = SpanEnd {
            context: &context,
            parent: SpanId::INVALID,
            parent_remote: false,
            name,
            kind: &SpanKind::Server,
            start,
            end: start + Duration::from_millis(1),
            dropped_attributes: 0,
            dropped_events: 0,
            dropped_links: 0,
            status: &Status::Unset,
        };
        write_span(buf, &end, &[]);
    }

    fn svc() -> Resource {
        Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "svc")])
            .with_schema_url([], "https://example.com/schema")
            .build()
    }

    /// `svc`'s spans named `names`, written in batches with `room` kept for the header.
    fn batch(room: usize, names: &[&str]) -> EncodedSpans {
        let mut encoded = EncodedSpans::with_room(room, 0);
        for (trace, name) in (1..).zip(names) {
            encoded.push(|buf| root_span(buf, trace, name));
        }
        encoded
    }

    #[test]
    fn an_export_message_is_a_grpc_framed_export_request() {
        let fields = ResourceFields::new(&svc());
        let encoded = batch(fields.header_room(), &["one", "two"]);
        assert_eq!(encoded.len(), 2);
        let (first_span, spans) = (encoded.spans().as_ptr(), encoded.bytes());
        let message = encoded.export_message(&fields);
        assert_eq!(message[0], 0, "not compressed");
        let len = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
        assert_eq!(len as usize, message.len() - 5);
        let decoded = ExportTraceServiceRequest::decode(&message[5..]).expect("decodes");
        let resource_spans = &decoded.resource_spans[0];
        let attributes = &resource_spans
            .resource
            .as_ref()
            .expect("a resource")
            .attributes;
        assert_eq!(attributes[0].key, "service.name");
        assert_eq!(resource_spans.schema_url, "https://example.com/schema");
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().expect("a scope");
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            (SCOPE_NAME, env!("CARGO_PKG_VERSION"))
        );
        let names: Vec<&str> = scope_spans.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(scope_spans.spans[1].trace_id, 2u128.to_be_bytes());
        // The header went into the room in front of the spans: they were not copied.
        let at = message.len() - fields.schema_url.len() - spans;
        assert_eq!(message[at..].as_ptr(), first_span);
    }

    #[test]
    fn the_message_is_the_same_whatever_room_was_kept() {
        let fields = ResourceFields::new(&svc());
        let names = ["a"; 300];
        let reference = batch(0, &names).export_message(&fields);
        for room in [1, 10, fields.header_room() - 1, fields.header_room(), 4096] {
            assert_eq!(
                batch(room, &names).export_message(&fields),
                reference,
                "{room}"
            );
        }
        // No span: a request of an empty ResourceSpans, still.
        let empty = EncodedSpans::with_room(fields.header_room(), 64).export_message(&fields);
        let decoded = ExportTraceServiceRequest::decode(&empty[5..]).expect("decodes");
        assert!(decoded.resource_spans[0].scope_spans[0].spans.is_empty());
    }

    #[test]
    fn the_receivers_request_type_reads_what_the_exporter_writes() {
        let fields = ResourceFields::new(&svc());
        let message = batch(fields.header_room(), &["one"]).export_message(&fields);
        let request = ExportRequest::decode(&message[5..]).expect("decodes");
        assert_eq!(request.resource_spans.len(), 1);
        assert_eq!(request.encode_to_vec(), message[5..]);
    }

    #[test]
    fn attributes_written_without_a_key_value_are_written_as_with_one() {
        let long = "x".repeat(300);
        for (key, value) in [("rpc.service", ""), ("k", "v"), ("", "v"), ("long", &long)] {
            let mut ours = Vec::new();
            write_str_attribute(&mut ours, key, value);
            let mut with_key_value = Vec::new();
            write_attribute(&mut with_key_value, &KeyValue::new(key, value.to_string()));
            assert_eq!(ours, with_key_value, "{key}={value}");
        }
        for value in [0, 1, -1, 300, i64::MAX, i64::MIN] {
            let mut ours = Vec::new();
            write_i64_attribute(&mut ours, "process.pid", value);
            let mut with_key_value = Vec::new();
            write_attribute(&mut with_key_value, &KeyValue::new("process.pid", value));
            assert_eq!(ours, with_key_value, "{value}");
        }
    }

    #[test]
    fn a_long_body_gets_a_multi_byte_length() {
        let mut buf = vec![0xff];
        nested(&mut buf, 3, |buf| buf.extend(std::iter::repeat_n(7u8, 300)));
        assert_eq!(&buf[..4], &[0xff, 3 << 3 | 2, 0xac, 0x02]);
        assert_eq!(buf.len(), 4 + 300);
        assert!(buf[4..].iter().all(|b| *b == 7));
        // However much room was kept for the length, the bytes are the same.
        for room in [1, 2, 3] {
            let mut sized = vec![0xff];
            nested_sized(&mut sized, 3, room, |buf| {
                buf.extend(std::iter::repeat_n(7u8, 300))
            });
            assert_eq!(sized, buf, "room {room}");
            let mut small = vec![0xff];
            nested_sized(&mut small, 3, room, |buf| buf.extend([1, 2]));
            assert_eq!(small, [0xff, 3 << 3 | 2, 2, 1, 2], "room {room}");
        }
    }

    #[test]
    fn varints_are_prosts() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            -1i64 as u64,
            u64::MAX,
        ] {
            let mut ours = vec![9];
            encode_varint(value, &mut ours);
            let mut theirs = vec![9];
            prost::encoding::encode_varint(value, &mut theirs);
            assert_eq!(ours, theirs, "{value}");
            assert_eq!(ours.len() - 1, encoded_len_varint(value));
        }
        let mut key = Vec::new();
        encode_key(16, WireType::ThirtyTwoBit, &mut key);
        assert_eq!(key, [0x85, 0x01]);
    }
}
