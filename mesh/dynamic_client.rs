//! Calling any method of any server with messages known only at run time.

use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Request, Response, Status, Streaming};

use super::codec::DynamicCodec;

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

/// Calls `method` with `request` (a stream of input messages) and returns the stream of replies.
///
/// Every RPC kind goes over the same HTTP/2 shape, so one entry point serves unary, client-,
/// server- and bidi-streaming methods alike; for unary methods send exactly one message.
pub async fn call<T, S>(
    channel: T,
    method: &MethodDescriptor,
    request: Request<S>,
) -> Result<Response<Streaming<DynamicMessage>>, Status>
where
    S: tokio_stream::Stream<Item = DynamicMessage> + Send + 'static,
    T: GrpcChannel,
{
    let path = method_path(method)?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connecting: {}", e.into())))?;
    grpc.streaming(request, path, DynamicCodec::new(method.output()))
        .await
}

/// The HTTP/2 path of a method: `/pkg.Service/Method`.
pub fn method_path(method: &MethodDescriptor) -> Result<PathAndQuery, Status> {
    let text = format!("/{}/{}", method.parent_service().full_name(), method.name());
    PathAndQuery::try_from(text).map_err(|e| Status::internal(format!("method path: {e}")))
}
