//! Calling any method of any server with messages known only at run time.

use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{DynamicCodec, Outgoing};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC channel exemesh's generic clients accept: a tonic `Channel`, a [`MeshChannel`], or any
/// tower service of the same shape. One name for the bounds every such function needs.
///
/// [`MeshChannel`]: crate::mesh::channel::MeshChannel
pub trait GrpcChannel:
    tonic::client::GrpcService<
        tonic::body::Body,
        Future: Send,
        Error: Into<BoxError>,
        ResponseBody: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError> + Send>
                          + Send
                          + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> GrpcChannel for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Future: Send,
            Error: Into<BoxError>,
            ResponseBody: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError> + Send>
                              + Send
                              + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A method as a client calls it: its HTTP/2 path and reply type, worked out once (a load generator
/// makes every call of a run to the same method).
#[derive(Debug, Clone)]
pub struct Method {
    path: PathAndQuery,
    reply: MessageDescriptor,
}

impl Method {
    /// The path and reply type of `method`.
    pub fn new(method: &MethodDescriptor) -> Result<Method, Status> {
        Ok(Method {
            path: method_path(method)?,
            reply: method.output(),
        })
    }

    /// Calls the method with `request` (a stream of input messages) and returns the stream of
    /// replies.
    ///
    /// Every RPC kind goes over the same HTTP/2 shape, so one entry point serves unary, client-,
    /// server- and bidi-streaming methods alike; for unary methods send exactly one message. The
    /// messages sent are [`DynamicMessage`]s or anything else that writes its own encoding
    /// ([`Outgoing`]: bytes already encoded, say).
    pub async fn call<T, S, E>(
        &self,
        channel: T,
        request: Request<S>,
    ) -> Result<Response<Streaming<DynamicMessage>>, Status>
    where
        S: tokio_stream::Stream<Item = E> + Send + 'static,
        E: Outgoing + Sync,
        T: GrpcChannel,
    {
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connecting: {}", e.into())))?;
        grpc.streaming(
            request,
            self.path.clone(),
            DynamicCodec::<E>::new(self.reply.clone()),
        )
        .await
    }
}

/// The HTTP/2 path of a method: `/pkg.Service/Method`.
pub fn method_path(method: &MethodDescriptor) -> Result<PathAndQuery, Status> {
    PathAndQuery::try_from(path_text(method))
        .map_err(|e| Status::internal(format!("method path: {e}")))
}

/// A method's path as text, `/pkg.Service/Method`: how retry policies, spans and metrics name it.
pub fn path_text(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}
