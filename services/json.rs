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
