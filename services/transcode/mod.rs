//! Proto3 JSON ↔ protobuf without a `DynamicMessage` in between, for the hot path of a call.
//!
//! [`plan`] computes once what each message type needs; [`json_to_proto`] turns an executable's
//! JSON reply into the bytes sent to the client. Both defer to [`crate::services::json`] (the
//! general, canonical mapping) on anything they do not handle.

pub mod json_to_proto;
pub mod plan;
pub mod scalar;

#[cfg(test)]
pub(crate) mod tests;
