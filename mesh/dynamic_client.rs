//! Calling any method of any server with messages known only at run time.

use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Request, Response, Status, Streaming};

use super::codec::DynamicCodec;

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
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
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
