//! The HTTP/2 (h2c) accept loop serving gRPC routes, with graceful shutdown.
//!
//! exemesh drives hyper directly instead of `tonic::transport::Server` because tonic's server
//! enforces `grpc-timeout` itself and answers an expired deadline with `CANCELLED`; the gRPC spec
//! (and every other implementation) says `DEADLINE_EXCEEDED`. Owning the loop also keeps each
//! connection task owned: they are tracked, drained on shutdown and aborted after the drain timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer as _, ServiceExt as _};

use crate::mesh::call_limit::{CallLimitLayer, PermitBody};
use crate::mesh::drain_body::DrainOnDrop;
use crate::mesh::router::GrpcRouter;
use crate::mesh::telemetry::rpc_span::{ConnectionAddrs, RpcSpanLayer};
use crate::mesh::tls::identity::PeerIdentity;
use tokio::task::JoinSet;

/// HTTP/2 settings for served connections.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    /// Calls running at once on one connection; one more is answered `RESOURCE_EXHAUSTED`.
    pub max_calls_per_connection: u32,
    /// The HTTP/2 stream limit advertised to clients (`SETTINGS_MAX_CONCURRENT_STREAMS`), at least
    /// `max_calls_per_connection`: the headroom lets a call over the call limit reach the server
    /// and get a gRPC status; a stream beyond this one is refused by HTTP/2 itself (`REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
    /// Largest header list, in bytes.
    pub max_header_list_size: u32,
    /// Interval of HTTP/2 pings on idle connections.
    pub keepalive_interval: Duration,
    /// How long to wait for a ping's answer before closing.
    pub keepalive_timeout: Duration,
    /// A connection on which no call started for this long is closed gracefully (GOAWAY: calls in
    /// flight finish; clients reconnect on their next call).
    pub idle_timeout: Duration,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_calls_per_connection: DEFAULT_MAX_CALLS_PER_CONNECTION,
            max_concurrent_streams: streams_for_calls(DEFAULT_MAX_CALLS_PER_CONNECTION),
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The default call limit per connection.
pub const DEFAULT_MAX_CALLS_PER_CONNECTION: u32 = 256;

/// The HTTP/2 stream limit to advertise for a call limit: a quarter more, so calls over the limit
/// arrive and are answered with a gRPC status.
pub fn streams_for_calls(calls: u32) -> u32 {
    calls.saturating_add(calls / 4).max(calls.saturating_add(1))
}

/// Anything a connection can run over: TCP, or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// One accepted connection and what it needs to serve.
struct Connection {
    addresses: Addresses,
    router: GrpcRouter,
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    idle_timeout: Duration,
    max_calls: u32,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    /// The TLS handshake (when configured, bounded), then HTTP/2 until the peer leaves, the server
    /// stops, or no call started for `idle_timeout`.
    async fn run(mut self, tcp: tokio::net::TcpStream) {
        let peer = self.addresses.peer;
        let (io, identity): (Box<dyn Stream>, _) = match &self.acceptor {
            None => (Box::new(tcp), None),
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = crate::mesh::tls::server::peer_identity(stream.get_ref().1);
                        (Box::new(stream), Some(identity))
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let activity = Arc::new(Activity::new());
        let service = self.addresses.service(
            self.router.clone(),
            identity,
            activity.clone(),
            self.max_calls,
        );
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let served = loop {
            let idle_at = activity.last_call() + self.idle_timeout;
            tokio::select! {
                served = conn.as_mut() => break served,
                () = async { let _ = self.stop.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    break conn.as_mut().await;
                }
                () = tokio::time::sleep_until(idle_at.into()) => {
                    if activity.last_call().elapsed() >= self.idle_timeout {
                        tracing::debug!(%peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        break conn.as_mut().await;
                    }
                }
            }
        };
        if let Err(e) = served {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }
}

/// When the last call of a connection started.
struct Activity {
    epoch: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last_call(&self) -> std::time::Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The addresses (and identity) of one connection, given to each of its requests.
#[derive(Clone, Copy)]
struct Addresses {
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

impl Addresses {
    /// The connection's service: every request learns the connection's addresses and caller (for
    /// spans and authorization), then runs in its server span (the one tower layer for tracing),
    /// within the connection's call limit. Its body is read to the end even when the call is
    /// answered first ([`DrainOnDrop`]), so early answers cannot exhaust h2's frame budget.
    fn service(
        self,
        router: GrpcRouter,
        identity: Option<PeerIdentity>,
        activity: Arc<Activity>,
        max_calls: u32,
    ) -> TowerToHyperService<
        impl tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<
                crate::mesh::telemetry::rpc_span::StatusBody<PermitBody<tonic::body::Body>>,
            >,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone,
    > {
        let Addresses { peer, local } = self;
        let addrs = ConnectionAddrs::new(peer, local);
        let limited =
            CallLimitLayer::new(usize::try_from(max_calls).unwrap_or(usize::MAX)).layer(router);
        let traced = RpcSpanLayer.layer(limited).map_request(
            move |request: http::Request<hyper::body::Incoming>| {
                activity.touch();
                let mut request =
                    request.map(|body| tonic::body::Body::new(DrainOnDrop::new(body)));
                request.extensions_mut().insert(addrs.clone());
                if let Some(identity) = &identity {
                    request.extensions_mut().insert(identity.clone());
                }
                request
            },
        );
        TowerToHyperService::new(traced)
    }
}

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets open
/// connections finish their calls (GOAWAY), and returns once they are done or `drain` has passed.
/// Returns false when the drain timeout cut calls short.
///
/// With `tls`, every connection starts with a TLS handshake (client certificate required by the
/// mesh configuration) and its requests carry the caller's [`PeerIdentity`]; without, it is h2c.
pub async fn serve_h2c(
    listener: TcpListener,
    router: GrpcRouter,
    settings: Http2Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> bool {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(
            settings
                .max_concurrent_streams
                .max(settings.max_calls_per_connection),
        )
        .max_header_list_size(settings.max_header_list_size)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .adaptive_window(true);
    // Shutdown and idle closing both end a connection gracefully: GOAWAY, in-flight calls finish.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok();
                    let connection = Connection {
                        addresses: Addresses { peer, local },
                        router: router.clone(),
                        builder: builder.clone(),
                        acceptor: acceptor.clone(),
                        idle_timeout: settings.idle_timeout,
                        max_calls: settings.max_calls_per_connection,
                        stop: stop_rx.clone(),
                    };
                    connections.spawn(connection.run(stream));
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
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    drained
}
