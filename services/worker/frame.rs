//! The worker protocol's frames as JSON lines.
//!
//! Frames exemesh writes are serialized straight from borrowed data; frames workers write are parsed
//! without copying the reply message (it stays raw JSON until the call converts it to the reply
//! type). The shapes follow `exemesh.v1.WorkerFrame`; a test checks them against that contract.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::services::json::{JsonMessage, json_writer, unwritable, write_str, write_u32};
use crate::services::spawn::ErrorBody;
use prost_reflect::DynamicMessage;

/// The start of a call (exemesh → worker).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Start<'a> {
    /// `pkg.Service/Method`.
    pub method: &'a str,
    /// The RPC kind's name.
    pub kind: &'a str,
    /// Milliseconds left; 0 = none.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout_ms: u32,
    /// W3C traceparent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    /// W3C tracestate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<&'a str>,
    /// An id for logs.
    pub request_id: &'a str,
    /// The caller's mTLS identity (`spiffe://...`); absent on a plaintext server.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub caller: &'a str,
    /// Forwarded metadata.
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata<'a>,
    /// The first request message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<JsonMessage<'a>>,
    /// No more messages follow.
    #[serde(skip_serializing_if = "is_false")]
    pub half_close: bool,
}

/// Request metadata serialized as a JSON object.
pub struct Metadata<'a>(pub &'a [(String, String)]);

impl Metadata<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Metadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Outbound<'a> {
    Message(JsonMessage<'a>),
    HalfClose(Empty),
    Cancel { reason: &'a str },
}

#[derive(Serialize)]
struct OutFrame<'a> {
    id: u32,
    #[serde(flatten)]
    kind: Outbound<'a>,
}

/// A frame as one line. Only a message inside can fail to serialize (see
/// [`crate::services::json::write_json`]); the error is serde_json's.
fn line(id: u32, kind: Outbound<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    OutFrame { id, kind }.serialize(&mut json_writer(&mut out))?;
    out.push(b'\n');
    Ok(out)
}

/// `{"id":N,"start":{...}}\n`; an error when the request message cannot be written as JSON.
///
/// Written field by field, in [`Start`]'s order and shape (a test holds it to serde's output for
/// the same frame), because a string with nothing to escape is then copied whole: serde_json looks
/// up every byte of the method, the ids and the trace context, on every call.
pub fn start_line(id: u32, start: Start<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"id\":");
    write_u32(&mut out, id);
    str_field(&mut out, b",\"start\":{\"method\":", start.method);
    str_field(&mut out, b",\"kind\":", start.kind);
    if start.timeout_ms != 0 {
        out.extend_from_slice(b",\"timeoutMs\":");
        write_u32(&mut out, start.timeout_ms);
    }
    if let Some(traceparent) = start.traceparent {
        str_field(&mut out, b",\"traceparent\":", traceparent);
    }
    if let Some(tracestate) = start.tracestate {
        str_field(&mut out, b",\"tracestate\":", tracestate);
    }
    str_field(&mut out, b",\"requestId\":", start.request_id);
    if !start.caller.is_empty() {
        str_field(&mut out, b",\"caller\":", start.caller);
    }
    if !start.metadata.is_empty() {
        out.extend_from_slice(b",\"metadata\":{");
        for (i, (key, value)) in start.metadata.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&mut out, key);
            out.push(b':');
            write_str(&mut out, value);
        }
        out.push(b'}');
    }
    if let Some(message) = &start.message {
        out.extend_from_slice(b",\"message\":");
        message
            .serialize(&mut json_writer(&mut out))
            .map_err(|e| unwritable(message.0, &e))?;
    }
    if start.half_close {
        out.extend_from_slice(b",\"halfClose\":true");
    }
    out.extend_from_slice(b"}}\n");
    Ok(out)
}

/// Appends `prefix` (what comes before a value: a comma, the quoted key and a colon), then `value`
/// as a JSON string.
fn str_field(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    out.extend_from_slice(prefix);
    write_str(out, value);
}

/// `{"id":N,"message":{...}}\n`; an error when `message` cannot be written as JSON.
pub fn message_line(id: u32, message: &DynamicMessage) -> Result<Vec<u8>, String> {
    line(id, Outbound::Message(JsonMessage(message))).map_err(|e| unwritable(message, &e))
}

/// `{"id":N,"halfClose":{}}\n`
pub fn half_close_line(id: u32) -> Vec<u8> {
    // No message inside: it always serializes.
    line(id, Outbound::HalfClose(Empty {})).unwrap_or_default()
}

/// `{"id":N,"cancel":{"reason":...}}\n`
pub fn cancel_line(id: u32, reason: &str) -> Vec<u8> {
    // No message inside: it always serializes.
    line(id, Outbound::Cancel { reason }).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Reply<'a> {
    Message(JsonMessage<'a>),
    End(Empty),
    Error { code: &'a str, message: &'a str },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyFrame<'a> {
    call_id: u32,
    #[serde(flatten)]
    kind: Reply<'a>,
}

fn reply_line(call_id: u32, kind: Reply<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    ReplyFrame { call_id, kind }.serialize(&mut json_writer(&mut out))?;
    out.push(b'\n');
    Ok(out)
}

/// `{"callId":C,"message":{...}}\n`: a reply to the worker's outbound call; an error when
/// `message` cannot be written as JSON.
pub fn reply_message_line(call_id: u32, message: &DynamicMessage) -> Result<Vec<u8>, String> {
    reply_line(call_id, Reply::Message(JsonMessage(message))).map_err(|e| unwritable(message, &e))
}

/// `{"callId":C,"end":{}}\n`
pub fn reply_end_line(call_id: u32) -> Vec<u8> {
    // No message inside: it always serializes.
    reply_line(call_id, Reply::End(Empty {})).unwrap_or_default()
}

/// `{"callId":C,"error":{"code":...,"message":...}}\n`
pub fn reply_error_line(call_id: u32, code: &str, message: &str) -> Vec<u8> {
    // No message inside: it always serializes.
    reply_line(call_id, Reply::Error { code, message }).unwrap_or_default()
}

/// The worker's handshake.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Ready {
    /// Methods served (empty = all).
    pub methods: Vec<String>,
    /// Calls the worker accepts at once (0 = no preference).
    pub max_in_flight: u32,
    /// The implementation's name.
    pub sdk: String,
}

/// A worker's call to another service.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundCall {
    /// `pkg.Service/Method`.
    pub method: String,
    /// The inbound call it is made for (0 = none).
    pub parent_id: u32,
    /// A shorter timeout, ms (0 = none).
    pub timeout_ms: u32,
    /// Request metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The request message.
    pub message: Option<Box<RawValue>>,
}

/// A frame written by a worker.
#[derive(Debug)]
pub enum Inbound {
    /// The worker calls another service.
    Call(u32, OutboundCall),
    /// The worker abandons its outbound call.
    CancelCall(u32),
    /// The handshake.
    Ready(Ready),
    /// A reply message, still as raw JSON.
    Message(u32, Box<RawValue>),
    /// Successful end of a call.
    End(u32),
    /// Failure of a call.
    Error(u32, ErrorBody),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InFrame {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    call_id: u32,
    ready: Option<Ready>,
    message: Option<Box<RawValue>>,
    end: Option<serde::de::IgnoredAny>,
    error: Option<ErrorBody>,
    call: Option<OutboundCall>,
    cancel: Option<serde::de::IgnoredAny>,
}

/// Parses one line written by a worker; the error explains what is wrong (for the log).
pub fn parse_inbound(line: &[u8]) -> Result<Inbound, String> {
    let frame: InFrame = serde_json::from_slice(line).map_err(|e| format!("not a frame: {e}"))?;
    if frame.call_id != 0 {
        return match (frame.call, frame.cancel, frame.id) {
            (Some(call), None, 0) => Ok(Inbound::Call(frame.call_id, call)),
            (None, Some(_), 0) => Ok(Inbound::CancelCall(frame.call_id)),
            _ => Err(
                "a frame with a callId must be exactly a call or a cancel, without an id".into(),
            ),
        };
    }
    if frame.call.is_some() || frame.cancel.is_some() {
        return Err("call and cancel frames from a worker need a callId".into());
    }
    let kinds = [
        frame.ready.is_some(),
        frame.message.is_some(),
        frame.end.is_some(),
        frame.error.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("a frame must have exactly one of ready, message, end, error".into());
    }
    if frame.ready.is_none() && frame.id == 0 {
        return Err("a call frame needs a non-zero id".into());
    }
    Ok(match frame {
        InFrame { ready: Some(r), .. } => Inbound::Ready(r),
        InFrame {
            message: Some(m),
            id,
            ..
        } => Inbound::Message(id, m),
        InFrame {
            error: Some(e), id, ..
        } => Inbound::Error(id, e),
        InFrame { id, .. } => Inbound::End(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost_reflect::{DescriptorPool, DeserializeOptions, MessageDescriptor, SerializeOptions};

    fn frame_type() -> MessageDescriptor {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        pool.get_message_by_name("exemesh.v1.WorkerFrame")
            .expect("WorkerFrame")
    }

    /// Parses a line strictly as the contract's `WorkerFrame`.
    fn as_contract(line: &[u8]) -> DynamicMessage {
        let mut de = serde_json::Deserializer::from_slice(line);
        DynamicMessage::deserialize_with_options(
            frame_type(),
            &mut de,
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{} is not a WorkerFrame: {e}",
                String::from_utf8_lossy(line)
            )
        })
    }

    fn payload() -> DynamicMessage {
        // Any message type works as a payload; use the contract's own Error message.
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut m =
            DynamicMessage::new(pool.get_message_by_name("exemesh.v1.Error").expect("Error"));
        m.set_field_by_name("code", prost_reflect::Value::String("x\"y\n".into()));
        m
    }

    proptest! {
        #[test]
        fn frames_we_write_follow_the_contract(
            id in 1u32..,
            method in "\\PC{0,40}",
            timeout_ms in any::<u32>(),
            traceparent in proptest::option::of("[0-9a-f-]{0,55}"),
            tracestate in proptest::option::of("(\\PC|[\\x00-\\x1f])*"),
            caller in "(spiffe://[a-z./]{0,20})?",
            request_id in "\\PC{0,12}",
            meta in proptest::collection::vec(("[a-z-]{1,10}", "(\\PC|\\n){0,20}"), 0..4),
            half_close in any::<bool>(),
            with_message in any::<bool>(),
            zero_timeout in any::<bool>(),
        ) {
            let payload = payload();
            let timeout_ms = if zero_timeout { 0 } else { timeout_ms };
            let start = || Start {
                method: &method, kind: "unary", timeout_ms, traceparent: traceparent.as_deref(),
                tracestate: tracestate.as_deref(), caller: &caller, request_id: &request_id,
                metadata: Metadata(&meta), message: with_message.then_some(JsonMessage(&payload)),
                half_close,
            };
            let text = start_line(id, start()).expect("writable");
            // Byte for byte what serde writes for the same frame.
            #[derive(Serialize)]
            struct Derived<'a> {
                id: u32,
                start: Start<'a>,
            }
            let mut derived = Vec::new();
            Derived { id, start: start() }.serialize(&mut json_writer(&mut derived)).expect("writable");
            derived.push(b'\n');
            prop_assert_eq!(&text, &derived);
            prop_assert_eq!(text.last(), Some(&b'\n'));
            prop_assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 1);
            let parsed = as_contract(&text[..text.len() - 1]);
            let json = serde_json::to_value(JsonMessage(&parsed)).expect("json");
            prop_assert_eq!(json["id"].as_u64(), Some(u64::from(id)));
            prop_assert_eq!(json["start"]["method"].as_str().unwrap_or(""), method.as_str());
            if with_message {
                prop_assert_eq!(json["start"]["message"]["code"].as_str(), Some("x\"y\n"));
            }
            for line in [
                message_line(id, &payload).expect("writable"),
                half_close_line(id),
                cancel_line(id, "cancelled"),
                reply_message_line(id, &payload).expect("writable"),
                reply_end_line(id),
                reply_error_line(id, "NOT_FOUND", &method),
            ] {
                as_contract(&line[..line.len() - 1]);
            }
        }

        #[test]
        fn frames_the_contract_allows_parse(id in 1u32.., code in "[A-Z_]{0,20}", msg in "\\PC{0,40}", which in 0..4u8) {
            let mut frame = DynamicMessage::new(frame_type());
            let pool = frame_type().parent_pool().clone();
            frame.set_field_by_name("id", prost_reflect::Value::U32(id));
            match which {
                0 => {
                    let mut e = DynamicMessage::new(pool.get_message_by_name("exemesh.v1.Error").expect("Error"));
                    e.set_field_by_name("code", prost_reflect::Value::String(code.clone()));
                    e.set_field_by_name("message", prost_reflect::Value::String(msg.clone()));
                    frame.set_field_by_name("error", prost_reflect::Value::Message(e));
                }
                1 => frame.set_field_by_name("end", prost_reflect::Value::Message(DynamicMessage::new(pool.get_message_by_name("exemesh.v1.End").expect("End")))),
                2 => {
                    let mut r = DynamicMessage::new(pool.get_message_by_name("exemesh.v1.Ready").expect("Ready"));
                    r.set_field_by_name("max_in_flight", prost_reflect::Value::U32(id % 100));
                    frame.set_field_by_name("ready", prost_reflect::Value::Message(r));
                }
                _ => {
                    let value = frame_type().get_field_by_name("message").expect("message field");
                    let mut st = DynamicMessage::new(match value.kind() { prost_reflect::Kind::Message(m) => m, _ => unreachable!() });
                    st.set_field_by_name("string_value", prost_reflect::Value::String(msg.clone()));
                    frame.set_field_by_name("message", prost_reflect::Value::Message(st));
                }
            }
            let mut text = Vec::new();
            frame.serialize_with_options(&mut serde_json::Serializer::new(&mut text), &SerializeOptions::new()).expect("serialize");
            match (which, parse_inbound(&text).expect("parses")) {
                (0, Inbound::Error(got, body)) => {
                    prop_assert_eq!(got, id);
                    prop_assert_eq!(body.message, msg);
                }
                (1, Inbound::End(got)) => prop_assert_eq!(got, id),
                (2, Inbound::Ready(r)) => prop_assert_eq!(r.max_in_flight, id % 100),
                (3, Inbound::Message(got, raw)) => {
                    prop_assert_eq!(got, id);
                    prop_assert_eq!(serde_json::from_str::<String>(raw.get()).expect("string"), msg);
                }
                (w, other) => prop_assert!(false, "case {} parsed as {:?}", w, other),
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_inbound(&bytes);
        }
    }

    #[test]
    fn frames_write_the_largest_float_so_that_it_reads_back() {
        let desc = crate::services::transcode::tests::everything();
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("ratio", prost_reflect::Value::F32(f32::MAX));
        let lines = [message_line(3, &message), reply_message_line(3, &message)];
        for line in lines.into_iter().map(|l| l.expect("writable")) {
            let frame: serde_json::Value = serde_json::from_slice(&line).expect("a JSON line");
            let text = frame["message"].to_string();
            let back = crate::services::json::from_json(&desc, text.as_bytes())
                .unwrap_or_else(|e| panic!("{text} does not read back: {e}"));
            assert_eq!(
                back.get_field_by_name("ratio").and_then(|v| v.as_f32()),
                Some(f32::MAX)
            );
        }
    }

    #[test]
    fn a_message_json_cannot_say_is_an_error_not_a_broken_line() {
        let message = crate::services::transcode::tests::unwritable();
        let meta = Vec::new();
        let start = Start {
            method: "kinds.v1.Kinds/Echo",
            kind: "unary",
            timeout_ms: 5,
            traceparent: None,
            tracestate: None,
            caller: "",
            request_id: "r1",
            metadata: Metadata(&meta),
            message: Some(JsonMessage(&message)),
            half_close: true,
        };
        for error in [
            start_line(1, start),
            message_line(1, &message),
            reply_message_line(1, &message),
        ]
        .into_iter()
        .map(|line| line.expect_err("unwritable"))
        {
            assert!(
                error.contains("kinds.v1.Everything cannot be written as JSON"),
                "{error}"
            );
        }
    }

    #[test]
    fn parses_outbound_calls_and_their_cancellation() {
        let call = br#"{"callId":3,"call":{"method":"a.v1.S/M","parentId":7,"timeoutMs":50,"metadata":{"k":"v"},"message":{"id":"x"}}}"#;
        as_contract(call);
        match parse_inbound(call) {
            Ok(Inbound::Call(3, c)) => {
                assert_eq!(
                    (c.method.as_str(), c.parent_id, c.timeout_ms),
                    ("a.v1.S/M", 7, 50)
                );
                assert_eq!(c.metadata.get("k").map(String::as_str), Some("v"));
                assert_eq!(
                    c.message.map(|m| m.get().to_string()).as_deref(),
                    Some(r#"{"id":"x"}"#)
                );
            }
            other => panic!("{other:?}"),
        }
        let cancel = br#"{"callId":3,"cancel":{}}"#;
        as_contract(cancel);
        assert!(matches!(parse_inbound(cancel), Ok(Inbound::CancelCall(3))));
        assert!(
            parse_inbound(br#"{"call":{"method":"a.v1.S/M"}}"#).is_err(),
            "a call needs a callId"
        );
        assert!(parse_inbound(br#"{"callId":3,"id":2,"call":{}}"#).is_err());
    }

    #[test]
    fn rejects_ambiguous_and_idless_frames() {
        assert!(parse_inbound(br#"{"id":1,"end":{},"error":{"code":"X"}}"#).is_err());
        assert!(parse_inbound(br#"{"end":{}}"#).is_err());
        assert!(parse_inbound(br#"{"id":3}"#).is_err());
        assert!(matches!(
            parse_inbound(br#"{"ready":{}}"#),
            Ok(Inbound::Ready(_))
        ));
        assert!(matches!(
            parse_inbound(br#"{"id":2,"message":{"a":1},"debug":"ignored"}"#),
            Ok(Inbound::Message(2, _))
        ));
    }
}
