//! The HTTP/2 server every exemesh process runs (`serve_h2c`), seen from a bare h2 client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use exemesh::mesh::router::GrpcRouter;
use exemesh::mesh::transport::{Http2Settings, serve_h2c};
use http_body::Frame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A route that drops the request body unread, sends its response headers at once, and ends the
/// call (`OK`) only once `finish` is notified: a call answered before its request was read, with
/// the answer still going out while the client keeps sending.
fn answers_before_reading(finish: Arc<Notify>) -> GrpcRouter {
    GrpcRouter::new().fallback(tower::service_fn(
        move |request: http::Request<tonic::body::Body>| {
            drop(request);
            let finish = finish.clone();
            async move {
                let trailers = async move {
                    finish.notified().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Ok::<_, Infallible>(Frame::<Bytes>::trailers(trailers))
                };
                let body = http_body_util::StreamBody::new(futures_util::stream::once(trailers));
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(tonic::body::Body::new(body))
                    .expect("a response");
                Ok::<_, Infallible>(response)
            }
        },
    ))
}

/// A request for `path`.
fn post(addr: std::net::SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request")
}

/// Reads a response body to its end and checks the call ended `OK`.
async fn assert_ends_ok(mut body: h2::RecvStream) {
    while let Some(data) = body.data().await {
        data.expect("no data error");
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("some trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
}

#[tokio::test]
async fn a_client_still_sending_after_the_answer_began_does_not_cost_the_connection() {
    let finish = Arc::new(Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_h2c(
        listener,
        answers_before_reading(finish.clone()),
        Http2Settings::default(),
        None,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));

    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut ping = connection.ping_pong().expect("ping-pong");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let (response, mut send) = client
        .send_request(post(addr, "/early.v1.Answer/Call"), false)
        .expect("send the request headers");
    // The headers mean the server has dropped the request body: every frame below arrives for a
    // body nobody reads. h2 charges each small DATA frame against a per-connection budget (256
    // bytes less its size) until the frame is read; it is meant to stop a peer that sends tiny
    // frames faster than they are read, so the frames go in batches well under it, each followed
    // by a ping (answered once every frame before it was taken in). 10,000 frames that are never
    // read would spend far more than any budget h2 allows.
    let response = response.await.expect("response headers");
    assert_eq!(response.status(), http::StatusCode::OK);
    for batch in 0..500 {
        for _ in 0..20 {
            send.send_data(Bytes::from_static(b"x"), false)
                .unwrap_or_else(|e| panic!("batch {batch}: the stream is open: {e}"));
        }
        ping.ping(h2::Ping::opaque())
            .await
            .unwrap_or_else(|e| panic!("batch {batch}: the connection survived: {e}"));
    }
    send.send_data(Bytes::new(), true).expect("end the request");
    finish.notify_one();
    assert_ends_ok(response.into_body()).await;

    // The same connection still takes calls.
    let mut client = client.ready().await.expect("still ready");
    let (response, mut send) = client
        .send_request(post(addr, "/early.v1.Answer/Call"), false)
        .expect("a second call on the same connection");
    send.send_data(Bytes::new(), true).expect("end the request");
    let response = response.await.expect("its response headers");
    finish.notify_one();
    assert_ends_ok(response.into_body()).await;

    let _ = stop.send(());
    assert!(server.await.expect("the server task"), "drained in time");
}
