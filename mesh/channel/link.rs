//! One HTTP/2 connection to one endpoint, shared by every call to it: opened by the first call,
//! reopened by the first call after it closes.
//!
//! A call clones the connection's handle under a short lock and opens its stream on it directly,
//! in its own task (h2's `SendRequest`): the request's headers and body are queued from the
//! caller's task, and the response wakes the caller's task. A tonic `Channel` per endpoint would
//! hand every call to a tower `Buffer` task, then to hyper's connection task, which spawns one
//! more task per call to await its response: three task hand-offs per call where this has none
//! (only the connection's own task, which reads and writes the socket). See
//! [`stream`](super::stream) for the streams themselves.
//!
//! The connection: TCP with `TCP_NODELAY`, each resolved address tried for 1 s; mTLS when the
//! process has an identity ([`crate::mesh::tls`]), its handshake within 1 s; HTTP/2 with hyper's
//! client settings (2 MB stream and 5 MB connection windows) and keep-alive pings every 10 s while
//! calls are open, answered within 5 s or the connection is closed. Opening runs in its own task, so
//! it completes even when every call waiting for it gave up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use h2::SendStream;
use h2::client::{ResponseFuture, SendRequest};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body as _;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::body::Body;

use super::stream::{
    OpenCall, ResponseBody, Sent, never_processed, send_again, send_body, transport_status,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a TCP connection to one address, and then the TLS handshake, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long resolving a host name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("exemesh/", env!("CARGO_PKG_VERSION"));
/// Headers of an HTTP/1 connection, which an HTTP/2 request must not carry.
const CONNECTION_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Why an endpoint's address cannot be connected to.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Not `host:port`.
    #[error("endpoint address '{address}' is not host:port: {detail}")]
    Invalid {
        /// The address as discovery gave it.
        address: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A TLS connection needs the host as a server name (an IP address or a DNS name).
    #[error("endpoint address '{address}': '{host}' is not a TLS server name")]
    ServerName {
        /// The address as discovery gave it.
        address: String,
        /// Its host part.
        host: String,
    },
}

/// An open HTTP/2 connection: the handle calls open streams with, and what its task shares.
#[derive(Clone)]
struct Connection {
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
    /// Calls open on it (keep-alive pings are sent only while there are some).
    open_calls: Arc<AtomicUsize>,
    /// The opening that made it.
    attempt: u64,
}

impl Connection {
    fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// False once the connection can open no more streams: the peer announced its shutdown, the
    /// connection failed, or its stream IDs ran out.
    fn takes_streams(&self) -> bool {
        !matches!(self.sender.clone().ready().now_or_never(), Some(Err(_)))
    }
}

/// A connection being opened, awaited by every call that arrived meanwhile. The error is the
/// reason, worded for a status message.
type Opening = Shared<BoxFuture<'static, Result<Connection, Arc<str>>>>;

enum State {
    Closed,
    /// The `attempt`-th opening of this link.
    Opening {
        attempt: u64,
        opening: Opening,
    },
    Open(Connection),
}

/// A lazily opened, reopening HTTP/2 connection to one endpoint (see the module docs). Clones share
/// the connection.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    address: Arc<str>,
    authority: Authority,
    scheme: Scheme,
    tls: Option<Tls>,
    state: Mutex<State>,
    /// Openings started so far.
    attempts: AtomicU64,
}

/// What a TLS connection needs, worked out once.
#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.inner.address)
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

impl Link {
    /// A link to `address` (`host:port`), not yet connected: over mTLS when the process has an
    /// identity, in which case the server must prove to be `service` when it is given.
    pub fn new(address: &str, service: Option<&str>) -> Result<Link, AddressError> {
        let tls = crate::mesh::tls::installed().map(|identity| {
            crate::mesh::tls::client::client_config(identity, service.map(str::to_string))
        });
        Link::with_tls(address, tls)
    }

    /// A link to `address` with an explicit TLS configuration (`None`: plaintext h2c).
    pub fn with_tls(address: &str, tls: Option<Arc<ClientConfig>>) -> Result<Link, AddressError> {
        let invalid = |detail: String| AddressError::Invalid {
            address: address.to_string(),
            detail,
        };
        let authority = Authority::try_from(address).map_err(|e| invalid(e.to_string()))?;
        if authority.port_u16().is_none() {
            return Err(invalid("no port".into()));
        }
        let tls = match tls {
            None => None,
            Some(config) => {
                let host = authority.host().trim_matches(['[', ']']).to_string();
                let name =
                    ServerName::try_from(host.clone()).map_err(|_| AddressError::ServerName {
                        address: address.to_string(),
                        host,
                    })?;
                Some(Tls { config, name })
            }
        };
        Ok(Link {
            inner: Arc::new(Inner {
                address: address.into(),
                authority,
                scheme: if tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                },
                tls,
                state: Mutex::new(State::Closed),
                attempts: AtomicU64::new(0),
            }),
        })
    }

    /// Sends `request` (its URI is a path; the link supplies scheme and authority) and returns the
    /// response as soon as its headers arrive. Errors are statuses: `UNAVAILABLE` when no
    /// connection could be opened or the connection failed or closed under the call, otherwise what
    /// the peer's HTTP/2 error means (`REFUSED_STREAM`: `UNAVAILABLE`, `ENHANCE_YOUR_CALM`:
    /// `RESOURCE_EXHAUSTED`…). The response body's errors are statuses too.
    ///
    /// A request is sent once more, on a new connection, when the connection refused it before it
    /// left (the peer had announced its shutdown, or the connection had just failed), or when the
    /// peer's shutdown announcement excluded it unprocessed (it was queued behind the peer's stream
    /// limit, say), if its body was sent whole from the caller's task (a unary request always is).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<ResponseBody>, BoxError> {
        let (head, body) = self.with_origin(request)?;
        let end_of_stream = body.is_end_stream();
        let (mut connection, response, stream) = self.open_stream(&head, end_of_stream).await?;
        let mut open = OpenCall::new(&connection.open_calls);
        let sent = if end_of_stream {
            Sent::Whole(Vec::new())
        } else {
            send_body(body, stream).await?
        };
        let (response, guard) = match (response.await, sent) {
            (Ok(response), Sent::Whole(_) | Sent::NotKept) => (response, None),
            (Ok(response), Sent::Piped(guard)) => (response, Some(guard)),
            // The peer announced its shutdown before it took this stream: send it once more, on a
            // new connection.
            (Err(error), Sent::Whole(data)) if never_processed(&error) => {
                self.forget(&connection);
                let (again, response, mut stream) = self.open_stream(&head, end_of_stream).await?;
                connection = again;
                open = OpenCall::new(&connection.open_calls);
                if !end_of_stream {
                    send_again(&mut stream, &data);
                }
                let response = response.await.map_err(|e| self.transport_status(&e))?;
                (response, None)
            }
            (Err(error), _) => return Err(self.transport_status(&error).into()),
        };
        let address = self.inner.address.clone();
        Ok(response.map(|recv| ResponseBody::new(recv, address, open, guard)))
    }

    /// Opens a stream for a request with `head` on the open connection (opening one if needed). A
    /// connection that takes no more streams (the peer announced its shutdown, the connection
    /// failed, or its stream IDs ran out) is replaced by a new one, once: the request never left.
    async fn open_stream(
        &self,
        head: &Parts,
        end_of_stream: bool,
    ) -> Result<(Connection, ResponseFuture, SendStream<Bytes>), Status> {
        let mut connection = self.connection().await?;
        let (response, stream) = match connection.sender.send_request(head_of(head), end_of_stream)
        {
            Ok(sent) => sent,
            Err(_) if !connection.takes_streams() => {
                self.forget(&connection);
                connection = self.connection().await?;
                connection
                    .sender
                    .send_request(head_of(head), end_of_stream)
                    .map_err(|e| self.refused(&e))?
            }
            Err(error) => return Err(self.refused(&error)),
        };
        Ok((connection, response, stream))
    }

    /// True while a connection is open (not merely being opened).
    pub fn is_open(&self) -> bool {
        matches!(&*self.state(), State::Open(connection) if connection.is_usable())
    }

    /// The open connection, opening one first if there is none.
    async fn connection(&self) -> Result<Connection, Status> {
        let (attempt, opening) = {
            let mut state = self.state();
            match &*state {
                State::Open(connection) if connection.is_usable() => return Ok(connection.clone()),
                State::Opening { attempt, opening } => (*attempt, opening.clone()),
                State::Open(_) | State::Closed => {
                    let attempt = self.inner.attempts.fetch_add(1, Ordering::Relaxed);
                    let opening = open_in_task(&self.inner, attempt);
                    *state = State::Opening {
                        attempt,
                        opening: opening.clone(),
                    };
                    (attempt, opening)
                }
            }
        };
        let outcome = opening.await;
        // The task records the outcome itself; recording it here too covers a task that panicked.
        self.inner.settle(attempt, &outcome);
        outcome.map_err(|reason| Status::unavailable(reason.to_string()))
    }

    /// Drops `connection` from the state if it is still the current one: it refuses new calls.
    fn forget(&self, connection: &Connection) {
        let mut state = self.state();
        if matches!(&*state, State::Open(current) if current.attempt == connection.attempt) {
            *state = State::Closed;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn transport_status(&self, error: &h2::Error) -> Status {
        transport_status(&self.inner.address, error)
    }

    /// A request that the connection refused before sending it: `UNAVAILABLE` when the connection
    /// was the cause, `INTERNAL` when the request itself was (h2 checks headers before sending).
    fn refused(&self, error: &h2::Error) -> Status {
        if error.is_go_away() || error.is_io() {
            self.transport_status(error)
        } else {
            Status::internal(format!(
                "request to {} refused before sending: {error}",
                self.inner.address
            ))
        }
    }

    /// The request's head with this endpoint's origin in its URI (HTTP/2 sends it as `:scheme` and
    /// `:authority`), and a user agent unless it has one; and its body.
    fn with_origin(&self, request: Request<Body>) -> Result<(Parts, Body), Status> {
        let (mut head, body) = request.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(self.inner.scheme.clone());
        uri.authority = Some(self.inner.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        head.uri =
            Uri::from_parts(uri).map_err(|e| Status::internal(format!("request URI: {e}")))?;
        // HTTP/1 connection headers have no meaning in HTTP/2, and h2 refuses a request that has
        // them (as hyper's client does, they are dropped; `te` is kept only as `trailers`). One
        // pass over the few headers a call has finds what to change; a lookup by name would hash
        // each of the names below.
        let mut drop_connection_headers = false;
        let (mut drop_te, mut has_user_agent) = (false, false);
        for (name, value) in &head.headers {
            if *name == http::header::TE {
                drop_te |= value != "trailers";
            } else if *name == http::header::USER_AGENT {
                has_user_agent = true;
            } else if CONNECTION_HEADERS.contains(&name.as_str()) {
                drop_connection_headers = true;
            }
        }
        if drop_connection_headers {
            for name in CONNECTION_HEADERS {
                head.headers.remove(name);
            }
        }
        if drop_te {
            head.headers.remove(http::header::TE);
        }
        if !has_user_agent {
            head.headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        Ok((head, body))
    }
}

/// A link as a gRPC client for one server (for `exemesh bench --client exemesh`): calls go straight
/// to [`Link::send`], without the mesh channel's balancing, deadline or retries.
impl tower::Service<Request<Body>> for Link {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let link = self.clone();
        async move { Ok(link.send(request).await?.map(Body::new)) }.boxed()
    }
}

/// A copy of a request's head for h2 (which takes it by value), so that the request can be sent
/// again. Extensions are not copied: h2 does not send them.
fn head_of(head: &Parts) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

/// Opens a connection for the link `inner` in a task of its own, which then records the outcome in its
/// state (unless the link is gone, or a newer attempt replaced this one). The opening thus completes
/// even when every call waiting for it gave up.
fn open_in_task(inner: &Arc<Inner>, attempt: u64) -> Opening {
    let address = inner.address.clone();
    let link = Arc::downgrade(inner);
    let task = tokio::spawn({
        let (address, tls) = (address.clone(), inner.tls.clone());
        async move {
            let outcome = open(address, tls, attempt).await;
            if let Some(inner) = link.upgrade() {
                inner.settle(attempt, &outcome);
            }
            outcome
        }
    });
    async move {
        task.await
            .unwrap_or_else(|e| Err(format!("connecting to {address}: {e}").into()))
    }
    .boxed()
    .shared()
}

impl Inner {
    /// Records the outcome of opening `attempt`, unless a newer attempt replaced it.
    fn settle(&self, attempt: u64, outcome: &Result<Connection, Arc<str>>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*state, State::Opening { attempt: current, .. } if *current == attempt) {
            *state = match outcome {
                Ok(connection) => State::Open(connection.clone()),
                Err(_) => State::Closed,
            };
        }
    }
}

/// Opens a connection to `address` and starts its task; the error says what failed.
async fn open(address: Arc<str>, tls: Option<Tls>, attempt: u64) -> Result<Connection, Arc<str>> {
    handshake(&address, tls, attempt)
        .await
        .map_err(|e| format!("connecting to {address}: {e}").into())
}

async fn handshake(address: &str, tls: Option<Tls>, attempt: u64) -> Result<Connection, BoxError> {
    let tcp = tcp(address).await?;
    match tls {
        None => start(tcp, address, attempt).await,
        Some(Tls { config, name }) => {
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    format!("no TLS handshake within {}ms", CONNECT_TIMEOUT.as_millis())
                })??;
            start(stream, address, attempt).await
        }
    }
}

/// A TCP connection to the first of `address`'s resolved addresses that accepts one.
async fn tcp(address: &str) -> Result<TcpStream, BoxError> {
    let resolved: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address))
            .await
            .map_err(|_| format!("no address within {}ms", RESOLVE_TIMEOUT.as_millis()))??
            .collect();
    let mut failure = String::from("the name has no address");
    for socket in resolved {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(socket)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => failure = e.to_string(),
            Err(_) => {
                failure = format!(
                    "no connection to {socket} within {}ms",
                    CONNECT_TIMEOUT.as_millis()
                )
            }
        }
    }
    Err(failure.into())
}

/// The HTTP/2 handshake on `io`, with hyper's client settings; the connection then runs in its own
/// task until it closes, and that task sends the keep-alive pings.
async fn start<T>(io: T, address: &str, attempt: u64) -> Result<Connection, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_max_send_streams(100)
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let open_calls = Arc::new(AtomicUsize::new(0));
    let ping_pong = connection.ping_pong();
    tokio::spawn({
        let (closed, open_calls, address) =
            (closed.clone(), open_calls.clone(), address.to_string());
        async move {
            tokio::select! {
                ended = &mut connection => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, %address, "connection to an endpoint ended");
                    }
                }
                reason = keep_alive(ping_pong, &open_calls) => {
                    tracing::debug!(%address, "closing the connection to an endpoint: {reason}");
                }
            }
            closed.store(true, Ordering::Release);
        }
    });
    Ok(Connection {
        sender,
        closed,
        open_calls,
        attempt,
    })
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`] while calls are open; returns why the connection
/// should close: a ping not answered within [`KEEP_ALIVE_TIMEOUT`], or failed.
async fn keep_alive(ping_pong: Option<h2::PingPong>, open_calls: &AtomicUsize) -> String {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if open_calls.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
            Err(_) => {
                return format!(
                    "no answer to a keep-alive ping within {}s",
                    KEEP_ALIVE_TIMEOUT.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// An HTTP/2 server on 127.0.0.1 that answers every call `OK` and counts the connections it
    /// accepts; with `close_after`, it ends each connection gracefully (GOAWAY) after that many calls.
    async fn server(close_after: Option<usize>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(listener, accepted.clone(), close_after));
        (address, accepted)
    }

    async fn serve(listener: TcpListener, accepted: Arc<AtomicUsize>, close_after: Option<usize>) {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(socket).await.expect("handshake");
                let mut served = 0;
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("response");
                    // A call its client already gave up (reset) gets no answer.
                    if let Ok(mut stream) = respond.send_response(head, false) {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        stream.send_trailers(trailers).expect("trailers");
                    }
                    served += 1;
                    if Some(served) == close_after {
                        connection.graceful_shutdown();
                    }
                }
            });
        }
    }

    /// Keeps a closing `connection` going, with the call `held` open, and serves new connections on
    /// `listener` meanwhile.
    async fn keep_serving<T>(
        mut connection: h2::server::Connection<TcpStream, Bytes>,
        held: T,
        listener: TcpListener,
        accepted: Arc<AtomicUsize>,
    ) where
        T: Send + 'static,
    {
        tokio::spawn(async move {
            let _held = held;
            while connection.accept().await.is_some() {}
        });
        serve(listener, accepted, None).await;
    }

    /// A call on `link` in a task of its own.
    fn spawn_call(link: &Link) -> tokio::task::JoinHandle<Result<(), BoxError>> {
        let link = link.clone();
        tokio::spawn(async move { link.send(call()).await.map(|_| ()) })
    }

    fn call() -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/test.v1.Echo/Unary")
            .body(Body::empty())
            .expect("request")
    }

    #[test]
    fn requests_lose_http1_connection_headers_and_get_the_origin_and_a_user_agent() {
        let link = Link::with_tls("127.0.0.1:9", None).expect("link");
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut request = call();
            for (name, value) in pairs {
                request
                    .headers_mut()
                    .append(*name, HeaderValue::from_static(value));
            }
            let (head, _) = link.with_origin(request).expect("a valid request");
            assert_eq!(head.uri, "http://127.0.0.1:9/test.v1.Echo/Unary");
            let mut kept: Vec<String> = head
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
                .collect();
            kept.sort();
            kept
        };
        let ua = format!("user-agent: {USER_AGENT}");
        // Every HTTP/1 connection header goes, `te` other than `trailers` too; others stay.
        assert_eq!(
            headers(&[
                ("connection", "close"),
                ("keep-alive", "5"),
                ("proxy-connection", "x"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "h2c"),
                ("te", "gzip"),
                ("x-id", "1"),
            ]),
            [ua.as_str(), "x-id: 1"]
        );
        // One connection header is enough for it to go; `te: trailers` and the caller's own
        // user agent stay.
        assert_eq!(
            headers(&[
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("user-agent", "mine/1"),
            ]),
            ["te: trailers", "user-agent: mine/1"]
        );
        assert_eq!(headers(&[]), [ua.as_str()]);
    }

    #[tokio::test]
    async fn calls_that_arrive_together_share_one_connection() {
        let (address, accepted) = server(None).await;
        let link = Link::with_tls(&address, None).expect("link");
        let calls = (0..8).map(|_| {
            let link = link.clone();
            tokio::spawn(async move { link.send(call()).await.map(|r| r.status()) })
        });
        for call in calls {
            let status = call.await.expect("task").expect("answered");
            assert_eq!(status, http::StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(link.is_open());
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_reopened_by_the_next_call() {
        let (address, accepted) = server(Some(1)).await;
        let link = Link::with_tls(&address, None).expect("link");
        link.send(call()).await.expect("first call");
        // The server ends the connection after one call; wait until the link has seen it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while link.is_open() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the link never saw the GOAWAY"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let response = link
            .send(call())
            .await
            .expect("second call, on a new connection");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_named_and_not_kept() {
        // A bound socket that does not listen yet: connecting to it is refused, and no other test
        // can take its port meanwhile.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let address = socket.local_addr().expect("address").to_string();
        let link = Link::with_tls(&address, None).expect("link");
        let error = link.send(call()).await.expect_err("nothing listens");
        let status = error.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains(&address), "{}", status.message());
        assert!(!link.is_open());
        // Once something listens there, the next call connects.
        let listener = socket.listen(16).expect("listen");
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(listener, accepted.clone(), None));
        let response = link.send(call()).await.expect("answered once listening");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_and_its_addresses_tried_in_turn() {
        let (address, accepted) = server(None).await;
        let port = address.rsplit(':').next().expect("a port");
        // localhost may resolve to ::1 first, where nothing listens.
        let link = Link::with_tls(&format!("localhost:{port}"), None).expect("link");
        let response = link.send(call()).await.expect("answered");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_that_meets_a_closing_connection_is_sent_on_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (closing_seen, seen) = tokio::sync::oneshot::channel();
        let accepted = Arc::new(AtomicUsize::new(1));
        let counter = accepted.clone();
        tokio::spawn(async move {
            // The first connection: hold its first call open, announce the shutdown (GOAWAY),
            // and make sure the client has read it (a ping sent after it comes back).
            let (socket, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(socket).await.expect("handshake");
            let mut ping_pong = connection.ping_pong().expect("ping pong");
            let held = connection
                .accept()
                .await
                .expect("a call")
                .expect("a stream");
            connection.graceful_shutdown();
            let pong = ping_pong.ping(h2::Ping::opaque());
            tokio::pin!(pong);
            loop {
                tokio::select! {
                    answered = &mut pong => { answered.expect("pong"); break; }
                    stream = connection.accept() => assert!(stream.is_none(), "a call on a closing connection"),
                }
            }
            let _ = closing_seen.send(());
            keep_serving(connection, held, listener, counter).await;
        });
        let link = Link::with_tls(&address, None).expect("link");
        let first = spawn_call(&link);
        seen.await
            .expect("the server read the first call and closed");
        let response = link.send(call()).await.expect("sent on a new connection");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        first.abort();
    }

    /// The open connection of `link`, for tests that look inside it.
    fn open_connection(link: &Link) -> Option<Connection> {
        match &*link.state() {
            State::Open(connection) => Some(connection.clone()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_call_the_server_left_unprocessed_at_its_shutdown_is_sent_on_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (holding, held_call) = tokio::sync::oneshot::channel();
        let (shut, shut_down) = tokio::sync::oneshot::channel::<()>();
        let accepted = Arc::new(AtomicUsize::new(1));
        let counter = accepted.clone();
        tokio::spawn(async move {
            // The first connection takes one stream at a time: hold the first call, then announce
            // the shutdown while the client has a second call queued behind it.
            let (socket, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(socket)
                .await
                .expect("handshake");
            let held = connection
                .accept()
                .await
                .expect("a call")
                .expect("a stream");
            let _ = holding.send(());
            tokio::select! {
                _ = shut_down => {}
                stream = connection.accept() => panic!("a second stream over the limit: {stream:?}"),
            }
            connection.graceful_shutdown();
            keep_serving(connection, held, listener, counter).await;
        });
        let link = Link::with_tls(&address, None).expect("link");
        let first = spawn_call(&link);
        held_call.await.expect("the server holds the first call");
        let connection = open_connection(&link).expect("open");
        // The server's one-stream limit has reached the client…
        while connection.sender.current_max_send_streams() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = tokio::spawn({
            let link = link.clone();
            async move { link.send(call()).await.map(|r| r.status()) }
        });
        // …and the second call waits in its queue.
        while connection.open_calls.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shut.send(()).expect("the server runs");
        let status = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("answered within 10 s")
            .expect("task")
            .expect("sent on a new connection");
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        first.abort();
    }

    #[tokio::test]
    async fn a_connection_is_opened_even_when_every_waiting_call_gave_up() {
        let (address, accepted) = server(None).await;
        let link = Link::with_tls(&address, None).expect("link");
        // A call that gives up after its first step, which starts the opening (this test's runtime
        // has one thread: the opening's task cannot have run yet).
        let gave_up = link.send(call()).now_or_never();
        assert!(gave_up.is_none(), "the call should not have finished");
        // The connection is opened all the same…
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !link.is_open() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection was never opened"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // …and the next call uses it.
        link.send(call())
            .await
            .expect("answered on that connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(link.is_open());
    }

    /// A server that answers the first call and holds the others, until told to stop reading its
    /// connection (a peer that vanished without closing it: pings go unanswered).
    async fn vanishing_server() -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(socket).await.expect("handshake");
            let mut held = Vec::new();
            let serve = async {
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    if !held.is_empty() {
                        held.push(respond);
                        continue;
                    }
                    let head = http::Response::builder().body(()).expect("response");
                    let mut stream = respond.send_response(head, false).expect("headers");
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    stream.send_trailers(trailers).expect("trailers");
                    held.push(respond);
                }
            };
            tokio::select! {
                _ = stopped => {}
                _ = serve => {}
            }
            std::future::pending::<()>().await;
            drop((connection, held, listener));
        });
        (address, stop)
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_while_a_call_waits_is_dropped() {
        let (address, stop) = vanishing_server().await;
        let link = Link::with_tls(&address, None).expect("link");
        link.send(call()).await.expect("the first call is answered");
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { link.send(call()).await.map(|_| ()) }
        });
        stop.send(()).expect("the server runs");
        // From here time moves only while every task waits: the keep-alive's 10 s and 5 s pass at
        // once.
        tokio::time::pause();
        let error = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("dropped within 15 s of (paused) time")
            .expect("task")
            .expect_err("the connection was dropped");
        let status = error.downcast_ref::<Status>().expect("a status");
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{}",
            status.message()
        );
        assert!(status.message().contains(&address), "{}", status.message());
        assert!(!link.is_open());
    }

    #[tokio::test]
    async fn an_idle_connection_is_not_pinged() {
        let (address, stop) = vanishing_server().await;
        let link = Link::with_tls(&address, None).expect("link");
        link.send(call()).await.expect("the call is answered");
        stop.send(()).expect("the server runs");
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(link.is_open(), "an idle connection was dropped");
    }

    #[test]
    fn an_address_must_be_host_and_port() {
        assert!(Link::with_tls("not an address", None).is_err());
        assert!(Link::with_tls("127.0.0.1", None).is_err());
        assert!(Link::with_tls("[::1]:80", None).is_ok());
    }
}
