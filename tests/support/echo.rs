//! A tonic client for the test contract `test.v1.Echo`, with prost messages written by hand (the
//! same wire format tonic-build would generate).

use exemesh::mesh::dynamic_client::GrpcChannel;
use std::collections::HashMap;
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(int32, tag = "2")]
    pub count: i32,
    #[prost(int32, tag = "3")]
    pub sleep_ms: i32,
    #[prost(string, tag = "4")]
    pub mode: String,
    #[prost(int64, tag = "5")]
    pub big: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(int32, tag = "2")]
    pub index: i32,
    #[prost(map = "string, string", tag = "3")]
    pub env: HashMap<String, String>,
    #[prost(int64, tag = "4")]
    pub big: i64,
    #[prost(string, repeated, tag = "5")]
    pub argv: Vec<String>,
    #[prost(int64, tag = "6")]
    pub timeout_ms: i64,
    #[prost(string, tag = "7")]
    pub traceparent: String,
}

pub fn req(text: &str, mode: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        mode: mode.into(),
        ..Default::default()
    }
}

/// `test.v1.Echo` over a tonic channel (or any gRPC transport, such as a mesh channel).
#[derive(Clone)]
pub struct EchoClient<T = Channel> {
    channel: T,
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

impl EchoClient<Channel> {
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

impl<T> EchoClient<T>
where
    T: GrpcChannel,
{
    pub fn new_with(channel: T) -> Self {
        Self { channel }
    }

    async fn grpc(&self) -> tonic::client::Grpc<T> {
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(64 << 20);
        if grpc.ready().await.is_err() {
            panic!("channel not ready");
        }
        grpc
    }

    pub async fn unary_with(
        &self,
        method: &'static str,
        request: EchoRequest,
        timeout: Option<Duration>,
    ) -> Result<EchoReply, Status> {
        let mut request = Request::new(request);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        request.metadata_mut().insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("ascii"),
        );
        request
            .metadata_mut()
            .insert("x-tenant", "acme".parse().expect("ascii"));
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        self.grpc()
            .await
            .unary(request, path(method), codec)
            .await
            .map(|r| r.into_inner())
    }

    /// Unary with a raw `grpc-timeout` header and no client-side timer.
    pub async fn unary_with_header(
        &self,
        method: &'static str,
        request: EchoRequest,
        grpc_timeout: &str,
    ) -> Result<EchoReply, Status> {
        let mut request = Request::new(request);
        request
            .metadata_mut()
            .insert("grpc-timeout", grpc_timeout.parse().expect("ascii"));
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        self.grpc()
            .await
            .unary(request, path(method), codec)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn unary(&self, request: EchoRequest) -> Result<EchoReply, Status> {
        self.unary_with("/test.v1.Echo/Unary", request, None).await
    }

    pub async fn expand(&self, request: EchoRequest) -> Result<Vec<EchoReply>, Status> {
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let mut stream = self
            .grpc()
            .await
            .server_streaming(Request::new(request), path("/test.v1.Echo/Expand"), codec)
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(reply) = stream.message().await? {
            out.push(reply);
        }
        Ok(out)
    }

    /// Server streaming, returning what arrived before the error too.
    pub async fn expand_partial(
        &self,
        request: EchoRequest,
    ) -> (Vec<EchoReply>, Result<(), Status>) {
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let mut out = Vec::new();
        let mut stream = match self
            .grpc()
            .await
            .server_streaming(Request::new(request), path("/test.v1.Echo/Expand"), codec)
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => return (out, Err(e)),
        };
        loop {
            match stream.message().await {
                Ok(Some(reply)) => out.push(reply),
                Ok(None) => return (out, Ok(())),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    pub async fn collect(&self, requests: Vec<EchoRequest>) -> Result<EchoReply, Status> {
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let request = Request::new(tokio_stream::iter(requests));
        self.grpc()
            .await
            .client_streaming(request, path("/test.v1.Echo/Collect"), codec)
            .await
            .map(|r| r.into_inner())
    }

    /// Bidi: sends each request only after the previous reply arrived, proving replies stream.
    pub async fn chat(&self, texts: &[&str]) -> Result<Vec<EchoReply>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let first = texts.first().map(|t| req(t, ""));
        if let Some(first) = first {
            tx.send(first).await.expect("send");
        }
        let mut stream = self
            .grpc()
            .await
            .streaming(Request::new(outbound), path("/test.v1.Echo/Chat"), codec)
            .await?
            .into_inner();
        let mut out = Vec::new();
        for next in texts.iter().skip(1) {
            let reply = stream
                .message()
                .await?
                .ok_or_else(|| Status::internal("stream ended early"))?;
            out.push(reply);
            tx.send(req(next, "")).await.expect("send");
        }
        drop(tx);
        while let Some(reply) = stream.message().await? {
            out.push(reply);
        }
        Ok(out)
    }
}
