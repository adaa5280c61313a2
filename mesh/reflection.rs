//! Fetching a server's contracts through gRPC server reflection, so that a client (such as
//! `exemesh call`) needs no local `.proto` files.
//!
//! Reflection v1 is tried first, then v1alpha (older servers, grpcurl's generation). Both versions
//! share the same wire format, so one set of generated types serves both paths.

use crate::mesh::dynamic_client::GrpcChannel;
use std::collections::{HashMap, HashSet};

use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// The server reflection service's method, in both versions (newest first). It only reads, so a
/// call of it is safe to send again: mesh channels retry it ([`CallPolicy::default`]).
///
/// [`CallPolicy::default`]: crate::mesh::channel::CallPolicy
pub const PATHS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Why the contracts could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The server answered with an error status (for example reflection is not served), or could
    /// not be reached.
    #[error(
        "server reflection failed: {}: {}",
        crate::mesh::status_code::code_name(.0.code()),
        .0.message()
    )]
    Rpc(Status),
    /// The server does not know the symbol.
    #[error("the server does not know {symbol:?}: {message}")]
    UnknownSymbol {
        /// The symbol that was asked for.
        symbol: String,
        /// The server's explanation.
        message: String,
    },
    /// The descriptors the server sent do not form a valid set.
    #[error("the server sent invalid descriptors: {0}")]
    Invalid(String),
}

impl From<Status> for ReflectionError {
    fn from(status: Status) -> Self {
        ReflectionError::Rpc(status)
    }
}

/// Asks the server for the file defining `symbol` (a service or message name) and every file it
/// imports, and returns them as a descriptor pool.
pub async fn fetch_pool<T>(channel: T, symbol: &str) -> Result<DescriptorPool, ReflectionError>
where
    T: GrpcChannel,
{
    let mut last = None;
    for path in PATHS {
        match fetch_with(channel.clone(), path, symbol).await {
            Err(ReflectionError::Rpc(status)) if status.code() == Code::Unimplemented => {
                last = Some(ReflectionError::Rpc(status));
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ReflectionError::Invalid("no reflection service".into())))
}

async fn fetch_with<T>(
    channel: T,
    path: &'static str,
    symbol: &str,
) -> Result<DescriptorPool, ReflectionError>
where
    T: GrpcChannel,
{
    let mut files: HashMap<String, FileDescriptorProto> = HashMap::new();
    let mut pending = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
    let mut asked: HashSet<String> = HashSet::new();
    while let Some(request) = pending.pop() {
        for file in ask(channel.clone(), path, request, symbol).await? {
            for dep in &file.dependency {
                if !files.contains_key(dep) && asked.insert(dep.clone()) {
                    pending.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
            files.insert(file.name().to_string(), file);
        }
    }
    let mut pool = DescriptorPool::new();
    let mut added = HashSet::new();
    let names: Vec<String> = files.keys().cloned().collect();
    for name in names {
        add_in_order(&name, &files, &mut added, &mut pool)?;
    }
    Ok(pool)
}

/// Adds `name` after its dependencies (the pool requires imports to be present first).
fn add_in_order(
    name: &str,
    files: &HashMap<String, FileDescriptorProto>,
    added: &mut HashSet<String>,
    pool: &mut DescriptorPool,
) -> Result<(), ReflectionError> {
    if !added.insert(name.to_string()) {
        return Ok(());
    }
    let Some(file) = files.get(name) else {
        return Err(ReflectionError::Invalid(format!(
            "missing imported file {name}"
        )));
    };
    for dep in &file.dependency {
        add_in_order(dep, files, added, pool)?;
    }
    pool.add_file_descriptor_proto(file.clone())
        .map_err(|e| ReflectionError::Invalid(e.to_string()))
}

async fn ask<T>(
    channel: T,
    path: &'static str,
    request: MessageRequest,
    symbol: &str,
) -> Result<Vec<FileDescriptorProto>, ReflectionError>
where
    T: GrpcChannel,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connecting: {}", e.into())))?;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let codec =
        tonic_prost::ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
    let outbound = tokio_stream::once(request);
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static(path),
            codec,
        )
        .await?
        .into_inner();
    let Some(response) = inbound.message().await? else {
        return Err(ReflectionError::Invalid("empty reflection response".into()));
    };
    // Read to the end (our request stream is already closed, so the server ends the call): the call
    // then finishes with its status instead of being cut off.
    while inbound.message().await?.is_some() {}
    match response.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files
            .file_descriptor_proto
            .iter()
            .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| ReflectionError::Invalid(e.to_string())),
        Some(MessageResponse::ErrorResponse(err)) => Err(ReflectionError::UnknownSymbol {
            symbol: symbol.to_string(),
            message: err.error_message,
        }),
        _ => Err(ReflectionError::Invalid(
            "unexpected reflection response".into(),
        )),
    }
}
