//! The few fields of an OTLP `Span` the trace store indexes, read from its encoding without
//! decoding the rest (names, attributes, events stay bytes until someone looks at the trace).

use super::wire::{Field, Fields, Malformed};

/// `Span.trace_id`, `span_id`, `parent_span_id`, start and end times, status (OTLP field numbers).
const TRACE_ID: u32 = 1;
const SPAN_ID: u32 = 2;
const PARENT_SPAN_ID: u32 = 4;
const START: u32 = 7;
const END: u32 = 8;
const STATUS: u32 = 15;
/// `Status.code`, and its value for an error.
const STATUS_CODE: u32 = 3;
const STATUS_CODE_ERROR: i32 = 2;

/// What a trace summary needs of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpanHead {
    /// Its trace (all zeros when absent).
    pub trace_id: [u8; 16],
    /// Its id as a number (0 when absent).
    pub span_id: u64,
    /// Its parent's id as a number; 0 for a root.
    pub parent_span_id: u64,
    /// Start, Unix nanoseconds.
    pub start: u64,
    /// End, Unix nanoseconds.
    pub end: u64,
    /// Whether its status is an error.
    pub error: bool,
}

impl SpanHead {
    /// Reads the head of an encoded OTLP `Span`. Ids of a length OTLP does not allow (trace ids
    /// are 16 bytes, span ids 8; empty means absent) are errors, as a collector rejects them.
    pub fn read(span: &[u8]) -> Result<SpanHead, Malformed> {
        let mut head = SpanHead::default();
        // A field seen twice takes its last value, so ids are checked once all are read.
        let (mut trace_id, mut span_id, mut parent_span_id): (&[u8], &[u8], &[u8]) =
            (&[], &[], &[]);
        for field in Fields::new(span) {
            match field? {
                (TRACE_ID, Field::Bytes(id)) => trace_id = id,
                (SPAN_ID, Field::Bytes(id)) => span_id = id,
                (PARENT_SPAN_ID, Field::Bytes(id)) => parent_span_id = id,
                (START, Field::Fixed64(nanos)) => head.start = nanos,
                (END, Field::Fixed64(nanos)) => head.end = nanos,
                (STATUS, Field::Bytes(status)) => {
                    // A message field seen twice is merged: a later status without a code
                    // keeps the earlier code.
                    if let Some(code) = status_code(status)? {
                        head.error = code == STATUS_CODE_ERROR;
                    }
                }
                (TRACE_ID | SPAN_ID | PARENT_SPAN_ID | START | END | STATUS, _) => {
                    return Err(Malformed("a span field has the wrong wire type"));
                }
                _ => {}
            }
        }
        head.trace_id = match trace_id {
            [] => [0; 16],
            _ => trace_id
                .try_into()
                .map_err(|_| Malformed("a trace id is not 16 bytes"))?,
        };
        head.span_id = self::span_id(span_id)?;
        head.parent_span_id = self::span_id(parent_span_id)?;
        Ok(head)
    }
}

/// A span id as a number (0 when empty).
fn span_id(id: &[u8]) -> Result<u64, Malformed> {
    match id {
        [] => Ok(0),
        _ => <[u8; 8]>::try_from(id)
            .map(u64::from_be_bytes)
            .map_err(|_| Malformed("a span id is not 8 bytes")),
    }
}

/// The code of an encoded `Status`, if it has one (an `int32` enum: a longer varint is cut to
/// 32 bits, as decoders do).
fn status_code(status: &[u8]) -> Result<Option<i32>, Malformed> {
    let mut code = None;
    for field in Fields::new(status) {
        match field? {
            (STATUS_CODE, Field::Varint(value)) => code = Some(value as i32),
            (STATUS_CODE, _) => return Err(Malformed("a status code has the wrong wire type")),
            _ => {}
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::Event};
    use prost::Message as _;

    fn full_span() -> Span {
        Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0, 0, 0, 0, 0, 0, 1, 2],
            parent_span_id: vec![0xff; 8],
            name: "shop.v1.UserService/GetUser".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_001,
            end_time_unix_nano: 1_700_000_000_000_000_999,
            attributes: vec![KeyValue {
                key: "rpc.system".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue("grpc".into())),
                }),
                ..KeyValue::default()
            }],
            events: vec![Event {
                name: "retry".into(),
                ..Event::default()
            }],
            status: Some(Status {
                code: 2,
                message: "NOT_FOUND".into(),
            }),
            ..Span::default()
        }
    }

    #[test]
    fn the_head_of_a_span_is_read_and_the_rest_skipped() {
        let head = SpanHead::read(&full_span().encode_to_vec()).expect("a span");
        let trace_id: Vec<u8> = (1..=16).collect();
        assert_eq!(
            head,
            SpanHead {
                trace_id: trace_id.try_into().expect("16 bytes"),
                span_id: 0x102,
                parent_span_id: u64::MAX,
                start: 1_700_000_000_000_000_001,
                end: 1_700_000_000_000_000_999,
                error: true,
            }
        );
        let ok = Span {
            status: Some(Status {
                code: 1,
                message: String::new(),
            }),
            parent_span_id: Vec::new(),
            ..full_span()
        };
        let head = SpanHead::read(&ok.encode_to_vec()).expect("a span");
        assert_eq!((head.error, head.parent_span_id), (false, 0));
        assert_eq!(
            SpanHead::read(&Span::default().encode_to_vec()),
            Ok(SpanHead::default())
        );
    }

    #[test]
    fn ids_of_the_wrong_length_are_refused() {
        let short_trace = Span {
            trace_id: vec![1; 8],
            ..full_span()
        };
        assert_eq!(
            SpanHead::read(&short_trace.encode_to_vec()),
            Err(Malformed("a trace id is not 16 bytes"))
        );
        let long_parent = Span {
            parent_span_id: vec![1; 16],
            ..full_span()
        };
        assert_eq!(
            SpanHead::read(&long_parent.encode_to_vec()),
            Err(Malformed("a span id is not 8 bytes"))
        );
        // The start time as a varint instead of fixed64.
        assert_eq!(
            SpanHead::read(&[7 << 3, 1]),
            Err(Malformed("a span field has the wrong wire type"))
        );
    }
}
