//! A tonic [`Codec`] over [`DynamicMessage`], for contracts loaded at run time.
//!
//! The codec knows the descriptor of the message it decodes; encoding needs no descriptor because
//! what it encodes carries its own: a dynamic message, or anything else that can write itself
//! ([`Outgoing`]; a server's replies may arrive already encoded).

use std::marker::PhantomData;

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A message on its way out that writes its own protobuf encoding.
pub trait Outgoing: Send + 'static {
    /// Writes the message to `dst`.
    fn encode_to(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status>;
}

impl Outgoing for DynamicMessage {
    fn encode_to(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.encode(dst).map_err(|e| {
            Status::internal(format!("encoding {}: {e}", self.descriptor().full_name()))
        })
    }
}

/// A message already encoded as protobuf (a reply transcoded from JSON, a load generator's request
/// encoded once for a whole run) is written as it is.
impl Outgoing for bytes::Bytes {
    fn encode_to(self, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &self);
        Ok(())
    }
}

/// Encodes [`Outgoing`] messages (`DynamicMessage`s by default) and decodes bytes into messages of
/// one descriptor.
#[derive(Debug)]
pub struct DynamicCodec<E = DynamicMessage> {
    decode_as: MessageDescriptor,
    encodes: PhantomData<fn(E)>,
}

impl<E> Clone for DynamicCodec<E> {
    fn clone(&self) -> Self {
        Self::new(self.decode_as.clone())
    }
}

impl<E> DynamicCodec<E> {
    /// A codec that decodes incoming messages as `decode_as` (the method's input type on a server,
    /// its output type on a client).
    pub fn new(decode_as: MessageDescriptor) -> Self {
        Self {
            decode_as,
            encodes: PhantomData,
        }
    }
}

impl<E: Outgoing> Codec for DynamicCodec<E> {
    type Encode = E;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder<E>;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            desc: self.decode_as.clone(),
        }
    }
}

/// The encoding half of [`DynamicCodec`].
#[derive(Debug)]
pub struct DynamicEncoder<E>(PhantomData<fn(E)>);

impl<E: Outgoing> Encoder for DynamicEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode_to(dst)
    }
}

/// The decoding half of [`DynamicCodec`].
#[derive(Debug)]
pub struct DynamicDecoder {
    desc: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.desc.clone(), src)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!("undecodable {}: {e}", self.desc.full_name()))
            })
    }
}
