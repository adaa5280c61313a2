//! A reply on its way to the client, and how an executable's JSON becomes one.
//!
//! Most replies are JSON an executable wrote. [`ReplyReader`] transcodes that JSON straight to
//! protobuf bytes when it can ([`crate::services::transcode::json_to_proto`]) and falls back to the
//! general mapping ([`crate::services::json::from_json`]) otherwise, so a reply is either bytes ready
//! to send or a `DynamicMessage`. Both paths accept the same inputs with the same meaning; only the
//! general one words errors, so every error reads the same whichever path saw the reply first.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::EncodeBuf;

use super::error::CallError;
use super::json::from_json;
use super::transcode::json_to_proto::JsonToProto;
use crate::mesh::codec::Outgoing;

/// One reply message.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A message built by the general path (or by exemesh itself).
    Message(DynamicMessage),
    /// A message already encoded as protobuf.
    Encoded(Bytes),
}

impl Outgoing for Reply {
    fn encode_to(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match self {
            Self::Message(message) => message.encode_to(dst),
            Self::Encoded(bytes) => bytes.encode_to(dst),
        }
    }
}

/// Reads an executable's JSON replies of one message type.
#[derive(Debug, Clone)]
pub struct ReplyReader {
    desc: MessageDescriptor,
    fast: JsonToProto,
}

impl ReplyReader {
    /// A reader of replies of type `desc`.
    pub fn new(desc: MessageDescriptor) -> Self {
        let fast = JsonToProto::new(&desc);
        Self { desc, fast }
    }

    /// The reply type.
    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.desc
    }

    /// The reply of a call to `method` in `text`, or [`CallError::BadReply`] saying what is wrong
    /// with it.
    pub fn read(&self, method: &str, text: &[u8]) -> Result<Reply, CallError> {
        let mut out = Vec::with_capacity(text.len());
        if self.fast.transcode(text, &mut out) {
            return Ok(Reply::Encoded(out.into()));
        }
        from_json(&self.desc, text)
            .map(Reply::Message)
            .map_err(|detail| CallError::BadReply {
                method: method.to_string(),
                message_type: self.desc.full_name().to_string(),
                detail,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::transcode::tests::{canonical, everything};

    #[test]
    fn a_plain_reply_is_sent_as_the_bytes_of_the_same_message() {
        let reader = ReplyReader::new(everything());
        let text = br#"{"maybeText": "hi", "counts": {"a": "3"}, "colours": ["RED", "BLUE"]}"#;
        let Ok(Reply::Encoded(bytes)) = reader.read("kinds.v1.Test/Get", text) else {
            panic!("a plain reply takes the fast path");
        };
        let decoded = DynamicMessage::decode(everything(), bytes).expect("decodes");
        let general = from_json(&everything(), text).expect("valid");
        // Compared as canonical JSON (map order aside; a failure prints JSON, not descriptors).
        assert_eq!(canonical(&decoded), canonical(&general));
    }

    #[test]
    fn a_well_known_type_goes_the_general_way_and_errors_read_as_before() {
        let reader = ReplyReader::new(everything());
        let reply = reader.read("kinds.v1.Test/Get", br#"{"at": "2024-01-02T03:04:05Z"}"#);
        let Ok(Reply::Message(message)) = reply else {
            panic!("a Timestamp is left to the general path: {reply:?}");
        };
        assert!(message.has_field_by_name("at"));

        let bad = br#"{"maybe": "seven"}"#;
        let expected = from_json(&everything(), bad).expect_err("invalid");
        match reader.read("kinds.v1.Test/Get", bad) {
            Err(CallError::BadReply {
                method,
                message_type,
                detail,
            }) => {
                assert_eq!(method, "kinds.v1.Test/Get");
                assert_eq!(message_type, "kinds.v1.Everything");
                assert_eq!(detail, expected, "the general path words the error");
            }
            other => panic!("expected BadReply, got {other:?}"),
        }
    }
}
