//! The HTTP/2 (h2c) accept loop serving gRPC routes, with graceful shutdown.
//!
//! exemesh drives hyper directly instead of `tonic::transport::Server` because tonic's server
//! enforces `grpc-timeout` itself and answers an expired deadline with `CANCELLED`; the gRPC spec
//! (and every other implementation) says `DEADLINE_EXCEEDED`. Owning the loop also keeps each
//! connection task owned: they are tracked, drained on shutdown and aborted after the drain timeout.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer as _, ServiceExt as _};

use crate::mesh::telemetry::rpc_span::{LocalAddr, PeerAddr, RpcSpanLayer};
use tokio::task::JoinSet;

/// HTTP/2 settings for served connections.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    /// Concurrent streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Largest header list, in bytes.
    pub max_header_list_size: u32,
    /// Interval of HTTP/2 pings on idle connections.
    pub keepalive_interval: Duration,
    /// How long to wait for a ping's answer before closing.
    pub keepalive_timeout: Duration,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets open
/// connections finish their calls (GOAWAY), and returns once they are done or `drain` has passed.
/// Returns false when the drain timeout cut calls short.
pub async fn serve_h2c(
    listener: TcpListener,
    router: axum::Router,
    settings: Http2Settings,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> bool {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .adaptive_window(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok();
                    // Every request learns the connection's addresses (for spans), then runs in its
                    // server span (the one tower layer for tracing).
                    let traced = RpcSpanLayer.layer(router.clone()).map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(PeerAddr(peer));
                        if let Some(local) = local {
                            request.extensions_mut().insert(LocalAddr(local));
                        }
                        request
                    });
                    let service = TowerToHyperService::new(traced);
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    connections.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    drained
}
