//! One call's HTTP/2 stream on a [`Link`](super::link::Link): its request body sent, its response
//! body received, and what an HTTP/2 error means to the caller.
//!
//! A request body is sent in the caller's task as far as it is ready (a unary request always is),
//! so most calls never leave that task; what is not ready yet (a client stream) is sent by a task
//! of its own that waits for the peer's flow-control window, as hyper's client does.

use std::future::{Future as _, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::{Code, Status};

/// Request bytes sent from the caller's task before the rest waits for flow control in a task of its
/// own: HTTP/2's initial stream window.
const EAGER_LIMIT: usize = 65_535;

/// What a failed HTTP/2 exchange with `address` means to the caller. A stream reset keeps its
/// meaning (`REFUSED_STREAM`: `UNAVAILABLE`, `CANCEL`: `CANCELLED`, `ENHANCE_YOUR_CALM`:
/// `RESOURCE_EXHAUSTED`…); anything else is the connection failing, closing or going away under
/// the call, and for the caller that means the endpoint was unavailable.
pub fn transport_status(address: &str, error: &h2::Error) -> Status {
    match error.reason() {
        Some(reason) if error.is_reset() => {
            let code = match reason {
                Reason::REFUSED_STREAM => Code::Unavailable,
                Reason::CANCEL => Code::Cancelled,
                Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
                Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
                _ => Code::Internal,
            };
            let by = if error.is_remote() {
                " by the peer"
            } else {
                ""
            };
            Status::new(code, format!("stream to {address} reset{by}: {reason}"))
        }
        _ => Status::unavailable(format!("connection to {address}: {error}")),
    }
}

/// Counts a connection's calls that are open (sent, response not yet finished or dropped).
#[derive(Debug)]
pub struct OpenCall(Arc<AtomicUsize>);

impl OpenCall {
    /// Counts one more call in `open`, until dropped.
    pub fn new(open: &Arc<AtomicUsize>) -> OpenCall {
        open.fetch_add(1, Ordering::Relaxed);
        OpenCall(open.clone())
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Kept by a call while a task sends the rest of its request; dropping it (the caller gave up the
/// response) stops that task and resets the stream.
pub type RequestGuard = oneshot::Sender<()>;

/// How a request body was sent.
pub enum Sent {
    /// Whole, from the caller's task: its data, kept to send it again if the peer never processes
    /// the stream (see [`never_processed`]).
    Whole(Vec<Bytes>),
    /// From the caller's task, but not kept: it ended with trailers, or its stream failed while it
    /// was being sent.
    NotKept,
    /// Partly or wholly by a task of its own, which the guard keeps going.
    Piped(RequestGuard),
}

/// Sends `body` on `stream`: what is ready now from this task, the rest from a task of its own (see
/// the module docs). A request body that fails before anything is handed off fails the call with
/// its own status.
pub async fn send_body(mut body: Body, mut stream: SendStream<Bytes>) -> Result<Sent, Status> {
    let mut kept = Vec::new();
    let mut sent = 0;
    while sent < EAGER_LIMIT {
        let next = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        match next {
            Poll::Pending => break,
            Poll::Ready(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return Ok(Sent::Whole(kept));
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    sent += data.len();
                    kept.push(data.clone());
                    let end_of_stream = body.is_end_stream();
                    // A stream that failed while its body was being sent may have lost some of it.
                    if stream.send_data(data, end_of_stream).is_err() {
                        return Ok(Sent::NotKept);
                    }
                    if end_of_stream {
                        return Ok(Sent::Whole(kept));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                    }
                    return Ok(Sent::NotKept);
                }
            },
            Poll::Ready(Some(Err(status))) => {
                stream.send_reset(Reason::INTERNAL_ERROR);
                return Err(status);
            }
        }
    }
    let (guard, dropped) = oneshot::channel();
    tokio::spawn(pipe(body, stream, dropped));
    Ok(Sent::Piped(guard))
}

/// Sends a request body kept by [`send_body`] again, on a new stream.
pub fn send_again(stream: &mut SendStream<Bytes>, data: &[Bytes]) {
    match data.split_last() {
        None => {
            let _ = stream.send_data(Bytes::new(), true);
        }
        Some((last, rest)) => {
            for chunk in rest {
                let _ = stream.send_data(chunk.clone(), false);
            }
            let _ = stream.send_data(last.clone(), true);
        }
    }
}

/// True when the peer never processed the stream that failed with `error`: it announced a graceful
/// shutdown (GOAWAY, `NO_ERROR`) that excludes the stream, which h2 fails with that GOAWAY. Streams
/// the peer did take fail otherwise (reset, or the connection's I/O error).
pub fn never_processed(error: &h2::Error) -> bool {
    error.is_go_away() && error.is_remote() && error.reason() == Some(Reason::NO_ERROR)
}

/// Sends one frame; true when it ended the stream (or the stream is gone).
fn send_frame(stream: &mut SendStream<Bytes>, frame: Frame<Bytes>, end_of_stream: bool) -> bool {
    match frame.into_data() {
        Ok(data) => stream.send_data(data, end_of_stream).is_err() || end_of_stream,
        Err(frame) => {
            if let Ok(trailers) = frame.into_trailers() {
                let _ = stream.send_trailers(trailers);
            }
            true
        }
    }
}

/// What stopped [`pipe`].
enum Stop {
    /// The peer reset the stream, or it failed.
    Gone,
    /// The caller dropped the response.
    Dropped,
    /// The request body failed.
    Failed,
}

/// Sends the rest of `body`: each frame as the body yields it, once the peer's window has room for
/// some of it (the body is polled first, so an idle client stream holds no window, as in hyper);
/// stops when the peer resets the stream or the caller drops the response (`dropped`).
async fn pipe(mut body: Body, mut stream: SendStream<Bytes>, mut dropped: oneshot::Receiver<()>) {
    let stop = loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = &mut dropped => break Stop::Dropped,
            _ = poll_fn(|cx| stream.poll_reset(cx)) => break Stop::Gone,
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => break Stop::Failed,
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref().filter(|data| !data.is_empty()) {
            stream.reserve_capacity(data.len());
            let room = poll_fn(|cx| {
                if Pin::new(&mut dropped).poll(cx).is_ready() {
                    return Poll::Ready(Err(Stop::Dropped));
                }
                if stream.poll_reset(cx).is_ready() {
                    return Poll::Ready(Err(Stop::Gone));
                }
                loop {
                    if stream.capacity() > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    match ready!(stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Poll::Ready(Err(Stop::Gone)),
                    }
                }
            })
            .await;
            if let Err(stop) = room {
                break stop;
            }
        }
        if send_frame(&mut stream, frame, body.is_end_stream()) {
            return;
        }
    };
    match stop {
        Stop::Gone => {}
        Stop::Dropped => stream.send_reset(Reason::CANCEL),
        Stop::Failed => stream.send_reset(Reason::INTERNAL_ERROR),
    }
}

/// A response body read from its HTTP/2 stream: returns flow-control window as data is read, ends
/// with the trailers, and reports errors as statuses ([`transport_status`]).
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    done: bool,
    address: Arc<str>,
    _open: OpenCall,
    _request: Option<RequestGuard>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("address", &self.address)
            .field("data_done", &self.data_done)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The body of a call to `address`, which keeps the call counted and its request task going
    /// until it is dropped.
    pub fn new(
        recv: RecvStream,
        address: Arc<str>,
        open: OpenCall,
        request: Option<RequestGuard>,
    ) -> ResponseBody {
        ResponseBody {
            recv,
            data_done: false,
            done: false,
            address,
            _open: open,
            _request: request,
        }
    }

    fn failed(&mut self, error: &h2::Error) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(transport_status(&self.address, error))))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return this.failed(&error),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => {
                this.done = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Err(error) => this.failed(&error),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt as _;
    use h2::server::SendResponse;
    use http::{HeaderMap, HeaderValue, Request};
    use http_body_util::StreamBody;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::mesh::channel::link::Link;

    type Call = (Request<RecvStream>, SendResponse<Bytes>);

    /// An HTTP/2 server on 127.0.0.1 that hands over each call it receives, and keeps serving its
    /// connections; dropping the last receiver stops nothing (calls are then dropped).
    async fn server() -> (Link, mpsc::Receiver<Call>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (calls, received) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let calls = calls.clone();
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(socket).await.expect("handshake");
                    while let Some(Ok(call)) = connection.accept().await {
                        let _ = calls.send(call).await;
                    }
                });
            }
        });
        (Link::with_tls(&address, None).expect("link"), received)
    }

    fn request(body: Body) -> Request<Body> {
        Request::post("/test.v1.Echo/Stream")
            .body(body)
            .expect("request")
    }

    /// A request body that yields what is sent on the returned channel, and ends when it closes.
    fn streamed() -> (mpsc::Sender<Bytes>, Body) {
        let (chunks, rx) = mpsc::channel::<Bytes>(64);
        let frames = ReceiverStream::new(rx).map(|chunk| Ok::<_, Status>(Frame::data(chunk)));
        (chunks, Body::new(StreamBody::new(frames)))
    }

    /// Reads a request body to its end, returning its capacity as it goes.
    async fn read_all(mut body: RecvStream) -> Result<Vec<u8>, h2::Error> {
        let mut all = Vec::new();
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            all.extend_from_slice(&data);
        }
        Ok(all)
    }

    fn answer(mut respond: SendResponse<Bytes>, body: &[u8]) {
        let head = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("response");
        let mut stream = respond.send_response(head, false).expect("headers");
        stream
            .send_data(Bytes::copy_from_slice(body), false)
            .expect("data");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        stream.send_trailers(trailers).expect("trailers");
    }

    async fn next_call(calls: &mut mpsc::Receiver<Call>) -> Call {
        tokio::time::timeout(Duration::from_secs(10), calls.recv())
            .await
            .expect("a call within 10 s")
            .expect("the server is running")
    }

    #[tokio::test]
    async fn a_request_larger_than_the_peers_window_arrives_whole() {
        let (link, mut calls) = server().await;
        // 1 MiB in 16 chunks: past the peer's 64 KiB window, so most of it waits for flow control.
        let sent: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let (chunks, body) = streamed();
        for chunk in sent.chunks(64 * 1024) {
            chunks
                .send(Bytes::copy_from_slice(chunk))
                .await
                .expect("queued");
        }
        drop(chunks);
        let call = tokio::spawn(async move { link.send(request(body)).await.map(|r| r.status()) });
        let (received, respond) = next_call(&mut calls).await;
        let got = read_all(received.into_body())
            .await
            .expect("the whole body");
        answer(respond, b"");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the body arrived changed");
        assert_eq!(
            call.await.expect("task").expect("answered"),
            http::StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_request_body_not_ready_yet_is_sent_as_it_comes() {
        let (link, mut calls) = server().await;
        let (chunks, body) = streamed();
        chunks
            .send(Bytes::from_static(b"first "))
            .await
            .expect("queued");
        let call = tokio::spawn(async move {
            let response = link.send(request(body)).await.expect("answered");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        });
        let (received, respond) = next_call(&mut calls).await;
        // The server answers at once (a bidirectional call), while the request is still open.
        let mut stream_body = received.into_body();
        let first = stream_body.data().await.expect("a frame").expect("data");
        assert_eq!(&first[..], b"first ");
        chunks
            .send(Bytes::from_static(b"second"))
            .await
            .expect("queued");
        drop(chunks);
        let rest = read_all(stream_body).await.expect("the rest");
        assert_eq!(&rest[..], b"second");
        answer(respond, b"reply");
        assert_eq!(&call.await.expect("task")[..], b"reply");
    }

    #[tokio::test]
    async fn dropping_the_response_stops_the_request_and_resets_the_stream() {
        let (link, mut calls) = server().await;
        let (chunks, body) = streamed();
        chunks
            .send(Bytes::from_static(b"open"))
            .await
            .expect("queued");
        let call = tokio::spawn(async move { link.send(request(body)).await.map(|_| ()) });
        let (received, mut respond) = next_call(&mut calls).await;
        let head = http::Response::builder().body(()).expect("response");
        let _stream = respond.send_response(head, false).expect("headers");
        call.await.expect("task").expect("response headers");
        // The caller has dropped the response; the request body never ended.
        let outcome = tokio::time::timeout(Duration::from_secs(10), read_all(received.into_body()))
            .await
            .expect("the stream ends within 10 s");
        let error = outcome.expect_err("the stream was reset");
        assert_eq!(error.reason(), Some(Reason::CANCEL));
        assert!(chunks.is_closed(), "the request body was not dropped");
    }

    #[tokio::test]
    async fn http1_connection_headers_are_dropped_before_sending() {
        let (link, mut calls) = server().await;
        let mut call = request(Body::empty());
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ] {
            call.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        let sent = tokio::spawn(async move { link.send(call).await.map(|r| r.status()) });
        let (received, respond) = next_call(&mut calls).await;
        let headers = received.headers().clone();
        answer(respond, b"");
        assert_eq!(
            sent.await.expect("task").expect("answered"),
            http::StatusCode::OK
        );
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "te",
        ] {
            assert!(!headers.contains_key(name), "{name} was sent");
        }
        assert_eq!(
            headers.get("x-kept").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
    }

    #[tokio::test]
    async fn a_request_body_that_fails_midway_resets_the_stream_as_an_internal_error() {
        let (link, mut calls) = server().await;
        let (frames, rx) = mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let body = Body::new(StreamBody::new(ReceiverStream::new(rx)));
        frames
            .send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .expect("queued");
        let call = tokio::spawn(async move { link.send(request(body)).await.map(|_| ()) });
        let (received, _respond) = next_call(&mut calls).await;
        let mut stream_body = received.into_body();
        let first = stream_body.data().await.expect("a frame").expect("data");
        assert_eq!(&first[..], b"first");
        // The rest of the body is in the pipe's hands now; it fails.
        frames
            .send(Err(Status::out_of_range("message too large")))
            .await
            .expect("queued");
        let reset = read_all(stream_body)
            .await
            .expect_err("the stream was reset");
        assert_eq!(reset.reason(), Some(Reason::INTERNAL_ERROR));
        let error = call.await.expect("task").expect_err("the call failed");
        let status = error.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), Code::Internal, "{}", status.message());
    }

    #[tokio::test]
    async fn a_stream_the_peer_resets_keeps_its_meaning() {
        let (link, mut calls) = server().await;
        for (reason, code) in [
            (Reason::REFUSED_STREAM, Code::Unavailable),
            (Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
            (Reason::INTERNAL_ERROR, Code::Internal),
        ] {
            let call = tokio::spawn({
                let link = link.clone();
                async move { link.send(request(Body::empty())).await.map(|_| ()) }
            });
            let (_, mut respond) = next_call(&mut calls).await;
            respond.send_reset(reason);
            let error = call.await.expect("task").expect_err("the stream was reset");
            let status = error.downcast_ref::<Status>().expect("a status");
            assert_eq!(status.code(), code, "{reason:?}: {}", status.message());
            assert!(status.message().contains(&reason.to_string()));
        }
    }

    #[tokio::test]
    async fn a_connection_lost_in_the_middle_of_a_body_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (lose, lost) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(socket).await.expect("handshake");
            let (_, mut respond) = connection
                .accept()
                .await
                .expect("a call")
                .expect("a stream");
            let head = http::Response::builder().body(()).expect("response");
            let mut stream = respond.send_response(head, false).expect("headers");
            stream
                .send_data(Bytes::from_static(b"part"), false)
                .expect("data");
            // Serve until the client has read the first frame, then drop the connection without
            // ending the stream.
            tokio::select! {
                _ = lost => {}
                _ = async { while connection.accept().await.is_some() {} } => {}
            }
        });
        let link = Link::with_tls(&address, None).expect("link");
        let response = link.send(request(Body::empty())).await.expect("headers");
        let mut body = response.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"part")
        );
        let _ = lose.send(());
        let error = body
            .frame()
            .await
            .expect("an error, not the end")
            .expect_err("the connection was lost");
        assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
        assert!(error.message().contains(&address), "{}", error.message());
    }
}
