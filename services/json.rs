//! The canonical proto3 JSON mapping between dynamic messages and the text executables read and
//! write.
//!
//! Requests are written with lowerCamelCase names, 64-bit integers as strings and default values
//! omitted. Replies are read leniently: unknown fields are ignored and both JSON and proto field names
//! are accepted, so an executable written against an older contract keeps working.

use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde::Serialize;

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

/// Appends the JSON of `message` to `out`.
pub fn write_json(message: &DynamicMessage, out: &mut Vec<u8>) {
    let mut ser = serde_json::Serializer::new(out);
    // Writing into a Vec cannot fail, and a DynamicMessage always serializes.
    let _ = JsonMessage(message).serialize(&mut ser);
}

/// The JSON text of `message`.
pub fn to_json(message: &DynamicMessage) -> String {
    let mut out = Vec::new();
    write_json(message, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Parses `text` as a message of type `desc`; the error is a bounded description.
pub fn from_json(desc: &MessageDescriptor, text: &[u8]) -> Result<DynamicMessage, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
        .map_err(|e| bounded(&e.to_string(), MAX_PARSE_DETAIL))?;
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
            let json = to_json(&message);
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

        #[test]
        fn any_bytes_give_a_bounded_error_or_a_message(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let desc = pool().get_message_by_name("test.v1.EchoRequest").expect("EchoRequest");
            if let Err(e) = from_json(&desc, &bytes) {
                prop_assert!(e.len() <= MAX_PARSE_DETAIL + 4);
            }
        }
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
