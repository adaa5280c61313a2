//! The canonical proto3 JSON mapping between dynamic messages and the text executables read and
//! write.
//!
//! Requests are written with lowerCamelCase names, 64-bit integers as strings and default values
//! omitted. Replies are read leniently: unknown fields are ignored and both JSON and proto field names
//! are accepted, so an executable written against an older contract keeps working.
//!
//! Everything exemesh writes for an executable goes through [`json_writer`], whose formatter writes
//! every `float` so that a reader parsing it as a double gets a value inside the `float` range.

use std::io;

use prost_reflect::{
    DeserializeOptions, DynamicMessage, MessageDescriptor, ReflectMessage as _, SerializeOptions,
};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

use super::error::bounded;

const MAX_PARSE_DETAIL: usize = 512;

/// A message serialized with the canonical options (usable inside any serde structure).
pub struct JsonMessage<'a>(pub &'a DynamicMessage);

impl Serialize for JsonMessage<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_with_options(serializer, &SerializeOptions::new())
    }
}

/// serde_json's compact output, except for the largest finite `float`s.
///
/// The shortest text that reads back as `f32::MAX` is `3.4028235e+38`, which as a double lies above
/// `f32::MAX`, so range-checking readers reject it (prost-reflect, and with it exemesh's own reply
/// parser; protobuf-python's `json_format`). `±f32::MAX` is therefore written with one more digit,
/// `3.402823466e+38`: below `f32::MAX` even for a parser that is off by a few units in the last
/// place (serde_json's default one is), and still nearer to `f32::MAX` than to any other `float`.
/// Every other `float` keeps its shortest text, which lies strictly inside the range.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProtoJsonFormatter;

/// `f32::MAX` as exemesh writes it for executables (in JSON and in argument placeholders): below
/// `f32::MAX` as a double, yet nearer to `f32::MAX` than to any other `float`.
pub const FLOAT_MAX_READABLE: f64 = 3.402823466e38;

impl Formatter for ProtoJsonFormatter {
    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        if value.abs() == f32::MAX {
            CompactFormatter.write_f64(writer, FLOAT_MAX_READABLE.copysign(f64::from(value)))
        } else {
            CompactFormatter.write_f32(writer, value)
        }
    }
}

/// A serde_json serializer writing compact JSON with [`ProtoJsonFormatter`] into `writer`.
pub fn json_writer<W: io::Write>(writer: W) -> serde_json::Serializer<W, ProtoJsonFormatter> {
    serde_json::Serializer::with_formatter(writer, ProtoJsonFormatter)
}

/// Appends `text` as a JSON string, byte for byte as serde_json writes it: copied whole when nothing
/// in it needs escaping (checked without a branch per byte; ids, method names and trace contexts
/// never do), through serde_json otherwise.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let plain = text.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = text.serialize(&mut json_writer(&mut *out));
    }
}

/// Appends `n` in decimal.
pub fn write_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the JSON of `message` to `out`. Most messages always serialize; a well-known type can
/// hold what JSON cannot say (an `Any` of a type the contract does not know, a `Timestamp` or
/// `Duration` out of range, a non-finite number in a `Struct`). Then the error names the type and
/// `out` is left as it was.
pub fn write_json(message: &DynamicMessage, out: &mut Vec<u8>) -> Result<(), String> {
    let len = out.len();
    let written = JsonMessage(message).serialize(&mut json_writer(&mut *out));
    written.map_err(|e| {
        out.truncate(len);
        unwritable(message, &e)
    })
}

/// The error for a `message` that cannot be written as JSON.
pub fn unwritable(message: &DynamicMessage, error: &dyn std::fmt::Display) -> String {
    bounded(
        &format!(
            "a {} cannot be written as JSON: {error}",
            message.descriptor().full_name()
        ),
        MAX_PARSE_DETAIL,
    )
}

/// The JSON text of `message` (see [`write_json`]).
pub fn to_json(message: &DynamicMessage) -> Result<String, String> {
    let mut out = Vec::new();
    write_json(message, &mut out)?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// A parse error, with a way out where the cause is a known trap.
fn with_hint(error: String) -> String {
    if error.starts_with("float value out of range") {
        // Go's protojson and Java write the largest float rounded up to 3.4028235e+38, which lies
        // above it as a double; prost-reflect, like protobuf's C++ and Python parsers before their
        // fixes, refuses that.
        return format!(
            "{error} (a float holds at most 3.4028234663852886e38; write the largest one as \
             3.402823466e38, not 3.4028235e38)"
        );
    }
    error
}

/// Parses `text` as a message of type `desc`; the error is a bounded description.
pub fn from_json(desc: &MessageDescriptor, text: &[u8]) -> Result<DynamicMessage, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
        .map_err(|e| bounded(&with_hint(e.to_string()), MAX_PARSE_DETAIL))?;
    de.end().map_err(|e| {
        bounded(
            &format!("trailing data after the message: {e}"),
            MAX_PARSE_DETAIL,
        )
    })?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost_reflect::{DescriptorPool, MapKey, Value};
    use std::path::PathBuf;

    fn pool() -> DescriptorPool {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/echo");
        crate::services::contract::compile(&[dir.join("echo.proto")], &[dir])
            .expect("fixture compiles")
            .0
    }

    proptest! {
        #[test]
        fn strings_and_numbers_are_written_as_serde_json_writes_them(
            text in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f])*",
            n in any::<u32>(),
        ) {
            let mut ours = b"x".to_vec();
            write_str(&mut ours, &text);
            write_u32(&mut ours, n);
            let mut theirs = b"x".to_vec();
            serde_json::to_writer(&mut theirs, &text).expect("writes");
            serde_json::to_writer(&mut theirs, &n).expect("writes");
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn messages_survive_the_json_round_trip(
            text in "\\PC*",
            index in any::<i32>(),
            big in any::<i64>(),
            timeout in any::<i64>(),
            argv in proptest::collection::vec("\\PC{0,12}", 0..5),
            env in proptest::collection::btree_map("[a-zA-Z_]{1,8}", "\\PC{0,12}", 0..4),
        ) {
            let desc = pool().get_message_by_name("test.v1.EchoReply").expect("EchoReply");
            let mut message = DynamicMessage::new(desc.clone());
            message.set_field_by_name("text", Value::String(text));
            message.set_field_by_name("index", Value::I32(index));
            message.set_field_by_name("big", Value::I64(big));
            message.set_field_by_name("timeout_ms", Value::I64(timeout));
            message.set_field_by_name("argv", Value::List(argv.into_iter().map(Value::String).collect()));
            message.set_field_by_name("env", Value::Map(env.into_iter().map(|(k, v)| (MapKey::String(k), Value::String(v))).collect()));
            let json = to_json(&message).expect("writable");
            if big != 0 {
                let expected = format!("\"big\":\"{big}\"");
                prop_assert!(json.contains(&expected), "int64 is a JSON string: {}", json);
            }
            let back = from_json(&desc, json.as_bytes()).expect("parses back");
            // Field by field: proto3 does not distinguish an unset scalar from its default.
            for field in desc.fields() {
                prop_assert_eq!(back.get_field(&field), message.get_field(&field), "field {}", field.name());
            }
        }

        /// What exemesh writes for an executable reads back bit for bit: an executable that echoes a
        /// number returns the very value it was given (serde_json's `float_roundtrip` feature; its
        /// default parser is off by one unit in the last place for about a third of all doubles).
        #[test]
        fn floats_and_doubles_read_back_bit_for_bit(
            double in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO
                | proptest::num::f64::POSITIVE | proptest::num::f64::NEGATIVE,
            float in proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO
                | proptest::num::f32::POSITIVE | proptest::num::f32::NEGATIVE,
        ) {
            let desc = crate::services::transcode::tests::everything();
            let mut message = DynamicMessage::new(desc.clone());
            message.set_field_by_name("maybe_double", Value::F64(double));
            message.set_field_by_name("ratio", Value::F32(float));
            let json = to_json(&message).expect("writable");
            let back = from_json(&desc, json.as_bytes()).expect("reads back");
            let read_double = back.get_field_by_name("maybe_double").and_then(|v| v.as_f64());
            let read_float = back.get_field_by_name("ratio").and_then(|v| v.as_f32());
            prop_assert_eq!(read_double.map(f64::to_bits), Some(double.to_bits()), "{}", json);
            if float != 0.0 {
                prop_assert_eq!(read_float.map(f32::to_bits), Some(float.to_bits()), "{}", json);
            }
        }

        #[test]
        fn any_bytes_give_a_bounded_error_or_a_message(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let desc = pool().get_message_by_name("test.v1.EchoRequest").expect("EchoRequest");
            if let Err(e) = from_json(&desc, &bytes) {
                prop_assert!(e.len() <= MAX_PARSE_DETAIL + 4);
            }
        }
    }

    #[test]
    fn the_largest_floats_read_back_and_others_keep_their_shortest_text() {
        let desc = crate::services::transcode::tests::everything();
        let just_below = f32::from_bits(f32::MAX.to_bits() - 1);
        for value in [
            f32::MAX,
            -f32::MAX,
            just_below,
            f32::MIN_POSITIVE,
            0.1,
            -1.5,
        ] {
            let mut message = DynamicMessage::new(desc.clone());
            message.set_field_by_name("ratio", Value::F32(value));
            let json = to_json(&message).expect("writable");
            let back = from_json(&desc, json.as_bytes())
                .unwrap_or_else(|e| panic!("{value:e} written as {json} does not read back: {e}"));
            let read = back.get_field_by_name("ratio").and_then(|v| v.as_f32());
            assert_eq!(read.map(f32::to_bits), Some(value.to_bits()), "{json}");
            if value == f32::MAX {
                assert_eq!(json, r#"{"ratio":3.402823466e+38}"#);
            }
            if value.abs() != f32::MAX {
                let mut shortest = Vec::new();
                serde_json::to_writer(&mut shortest, &value).expect("a float");
                let expected = format!("{{\"ratio\":{}}}", String::from_utf8_lossy(&shortest));
                assert_eq!(json, expected);
            }
        }
    }

    #[test]
    fn a_message_json_cannot_say_is_an_error_and_leaves_the_output_as_it_was() {
        let message = crate::services::transcode::tests::unwritable();
        let mut out = b"{\"id\":1,\"message\":".to_vec();
        let error = write_json(&message, &mut out).expect_err("out of range");
        assert_eq!(out, b"{\"id\":1,\"message\":");
        assert!(
            error.contains("kinds.v1.Everything cannot be written as JSON"),
            "{error}"
        );
        assert!(to_json(&message).is_err());
    }

    #[test]
    fn the_rounded_up_largest_float_is_refused_with_a_way_out() {
        let desc = crate::services::transcode::tests::everything();
        let error = from_json(&desc, br#"{"ratio": 3.4028235e+38}"#).expect_err("out of range");
        assert!(
            error.contains("write the largest one as 3.402823466e38"),
            "{error}"
        );
        let error = from_json(&desc, br#"{"ratio": "x"}"#).expect_err("not a number");
        assert!(!error.contains("largest"), "{error}");
    }

    #[test]
    fn replies_may_use_proto_names_and_unknown_fields() {
        let desc = pool()
            .get_message_by_name("test.v1.EchoReply")
            .expect("EchoReply");
        let message = from_json(
            &desc,
            br#"{"timeout_ms": 5, "timeoutMs": 6, "future_field": [1]}"#,
        );
        // Both spellings name the same field; the later one wins, unknown fields are ignored.
        let message = message.expect("lenient");
        assert_eq!(
            message.get_field_by_name("timeout_ms").map(|v| v.as_i64()),
            Some(Some(6))
        );
        assert!(
            from_json(&desc, br#"{"text": 5}"#).is_err(),
            "wrong types are still errors"
        );
        assert!(from_json(&desc, br#"{} trailing"#).is_err());
    }
}
