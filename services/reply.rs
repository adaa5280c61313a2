//! A reply on its way to the client, and how an executable's JSON becomes one.
//!
//! Most replies are JSON an executable wrote. [`ReplyReader`] transcodes that JSON straight to
//! protobuf bytes when it can ([`crate::services::transcode::json_to_proto`]) and falls back to the
//! general mapping ([`crate::services::json::from_json`]) otherwise, so a reply is either bytes ready
//! to send or a `DynamicMessage`. Both paths accept the same inputs with the same meaning; only the
//! general one words errors, so every error reads the same whichever path saw the reply first.

use bytes::{BufMut, Bytes};
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
            Self::Encoded(bytes) => {
                dst.put_slice(&bytes);
                Ok(())
            }
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
