//! A bare HTTP/2 gRPC client (the `h2` crate, no tonic), for observing exactly what the server
//! answers: tonic's client enforces `grpc-timeout` itself and would race the server's answer.

use prost::Message;
use tokio::net::TcpStream;

/// What the server ended the call with.
#[derive(Debug)]
pub struct RawStatus {
    pub code: i32,
    pub message: String,
}

/// Sends one unary request with a `grpc-timeout` header and returns the server's grpc-status.
pub async fn unary_with_timeout<M: Message>(
    addr: &str,
    path: &str,
    request: &M,
    grpc_timeout: &str,
) -> RawStatus {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(req, false).expect("send headers");
    let body = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    send.send_data(frame.into(), true).expect("send data");
    let response = response.await.expect("response");
    let read = |headers: &http::HeaderMap| {
        headers.get("grpc-status").map(|code| RawStatus {
            code: code
                .to_str()
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1),
            message: percent_decode(
                headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .unwrap_or(""),
            ),
        })
    };
    if let Some(status) = read(response.headers()) {
        conn_task.abort();
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.expect("body");
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    conn_task.abort();
    read(&trailers).expect("grpc-status trailer")
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
