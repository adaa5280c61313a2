//! One HTTP/2 connection to one endpoint, shared by every call to it: opened by the first call,
//! reopened by the first call after it closes.
//!
//! This is what a tonic `Channel` per endpoint used to do, minus its queue: a `Channel` hands every
//! call to a tower `Buffer` task that owns the connection, and that task hands it to the
//! connection's own task, so each call crossed two tasks before reaching HTTP/2. Here a call clones
//! the connection's handle under a short lock and sends on it directly (one hand-off, to the
//! connection's task). The connection's settings are those the channel had: TCP_NODELAY, a 1 s
//! connect timeout, HTTP/2 keep-alive pings every 10 s answered within 5 s, and mTLS when the
//! process has an identity ([`crate::mesh::tls`]); the TLS handshake now has 5 s too.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tonic::Status;
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long opening a TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the TLS handshake may take once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("exemesh/", env!("CARGO_PKG_VERSION"));

/// A connection being opened, awaited by every call that arrived meanwhile. The error is the
/// reason, worded for a status message.
type Opening = Shared<BoxFuture<'static, Result<SendRequest<Body>, Arc<str>>>>;

enum State {
    Closed,
    Opening(Opening),
    Open(SendRequest<Body>),
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
    tls: Option<Arc<ClientConfig>>,
    state: Mutex<State>,
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
    pub fn new(address: &str, service: Option<&str>) -> Result<Link, http::uri::InvalidUri> {
        let tls = crate::mesh::tls::installed().map(|identity| {
            crate::mesh::tls::client::client_config(identity, service.map(str::to_string))
        });
        Link::with_tls(address, tls)
    }

    /// A link to `address` with an explicit TLS configuration (`None`: plaintext h2c).
    pub fn with_tls(
        address: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Link, http::uri::InvalidUri> {
        Ok(Link {
            inner: Arc::new(Inner {
                address: address.into(),
                authority: Authority::try_from(address)?,
                tls,
                state: Mutex::new(State::Closed),
            }),
        })
    }

    /// Sends `request` (its URI is a path; the link supplies scheme and authority) and returns the
    /// response as soon as its headers arrive. An error is `UNAVAILABLE` when no connection could be
    /// opened, otherwise HTTP/2's own (mapped to a status by [`Status::from_error`]).
    ///
    /// A request that the connection gave back unsent (it closed as the call arrived) is sent once
    /// more, on a new connection.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let request = self.with_origin(request)?;
        let mut sender = self.sender().await?;
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut error) => match error.take_message() {
                Some(unsent) => self.sender().await?.send_request(unsent).await?,
                None => return Err(error.into_error().into()),
            },
        };
        Ok(response.map(Body::new))
    }

    /// True while a connection is open (not merely being opened).
    pub fn is_open(&self) -> bool {
        matches!(&*self.state(), State::Open(sender) if !sender.is_closed())
    }

    /// The open connection's handle, opening the connection first if there is none.
    async fn sender(&self) -> Result<SendRequest<Body>, Status> {
        let opening = {
            let mut state = self.state();
            match &*state {
                State::Open(sender) if !sender.is_closed() => return Ok(sender.clone()),
                State::Opening(opening) => opening.clone(),
                State::Open(_) | State::Closed => {
                    let opening = open(self.inner.address.clone(), self.inner.tls.clone())
                        .boxed()
                        .shared();
                    *state = State::Opening(opening.clone());
                    opening
                }
            }
        };
        let outcome = opening.clone().await;
        let mut state = self.state();
        if let State::Opening(current) = &*state
            && current.ptr_eq(&opening)
        {
            *state = match &outcome {
                Ok(sender) => State::Open(sender.clone()),
                Err(_) => State::Closed,
            };
        }
        outcome.map_err(|reason| Status::unavailable(reason.to_string()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The request with this endpoint's origin in its URI (HTTP/2 sends it as `:scheme` and
    /// `:authority`), and a user agent unless it has one.
    fn with_origin(&self, request: Request<Body>) -> Result<Request<Body>, Status> {
        let (mut head, body) = request.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.inner.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        head.uri =
            Uri::from_parts(uri).map_err(|e| Status::internal(format!("request URI: {e}")))?;
        if !head.headers.contains_key(http::header::USER_AGENT) {
            head.headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        Ok(Request::from_parts(head, body))
    }
}

/// Opens a connection to `address` (TCP within [`CONNECT_TIMEOUT`], then the TLS handshake within
/// [`HANDSHAKE_TIMEOUT`]) and starts its task.
async fn open(
    address: Arc<str>,
    tls: Option<Arc<ClientConfig>>,
) -> Result<SendRequest<Body>, Arc<str>> {
    handshake(&address, tls)
        .await
        .map_err(|e| format!("connecting to {address}: {e}").into())
}

async fn handshake(
    address: &str,
    tls: Option<Arc<ClientConfig>>,
) -> Result<SendRequest<Body>, BoxError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| format!("no connection within {}ms", CONNECT_TIMEOUT.as_millis()))??;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => start(TokioIo::new(tcp)).await,
        Some(config) => {
            let host = Authority::try_from(address)?;
            let name = ServerName::try_from(host.host().trim_matches(['[', ']']).to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls)
                .await
                .map_err(|_| {
                    format!(
                        "no TLS handshake within {}ms",
                        HANDSHAKE_TIMEOUT.as_millis()
                    )
                })??;
            start(TokioIo::new(stream)).await
        }
    }
}

/// The HTTP/2 handshake on `io`; the connection then runs in its own task until it closes.
async fn start<T>(io: T) -> Result<SendRequest<Body>, BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to an endpoint ended");
        }
    });
    Ok(sender)
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
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(socket).await.expect("handshake");
                    let mut served = 0;
                    while let Some(Ok((_, mut respond))) = connection.accept().await {
                        let head = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let mut stream = respond.send_response(head, false).expect("headers");
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        stream.send_trailers(trailers).expect("trailers");
                        served += 1;
                        if Some(served) == close_after {
                            connection.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn call() -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/test.v1.Echo/Unary")
            .body(Body::empty())
            .expect("request")
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
    async fn an_address_where_nothing_listens_is_unavailable_and_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        let link = Link::with_tls(&address, None).expect("link");
        let error = link.send(call()).await.expect_err("nothing listens");
        let status = error.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains(&address), "{}", status.message());
        assert!(!link.is_open());
    }

    #[test]
    fn an_address_that_is_no_authority_is_refused() {
        assert!(Link::with_tls("not an address", None).is_err());
    }
}
