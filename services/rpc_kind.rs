//! The four RPC kinds.

use std::fmt;

use prost_reflect::MethodDescriptor;

/// Which side streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    /// One request, one reply.
    Unary,
    /// One request, a stream of replies.
    ServerStreaming,
    /// A stream of requests, one reply.
    ClientStreaming,
    /// Streams both ways.
    BidiStreaming,
}

impl RpcKind {
    /// The kind of a method.
    pub fn of(method: &MethodDescriptor) -> RpcKind {
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => RpcKind::Unary,
            (false, true) => RpcKind::ServerStreaming,
            (true, false) => RpcKind::ClientStreaming,
            (true, true) => RpcKind::BidiStreaming,
        }
    }

    /// True when the client sends exactly one message.
    pub fn single_request(self) -> bool {
        matches!(self, RpcKind::Unary | RpcKind::ServerStreaming)
    }

    /// True when the server sends exactly one message.
    pub fn single_reply(self) -> bool {
        matches!(self, RpcKind::Unary | RpcKind::ClientStreaming)
    }

    /// The name used in worker frames and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcKind::Unary => "unary",
            RpcKind::ServerStreaming => "server_streaming",
            RpcKind::ClientStreaming => "client_streaming",
            RpcKind::BidiStreaming => "bidi_streaming",
        }
    }
}

impl fmt::Display for RpcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
