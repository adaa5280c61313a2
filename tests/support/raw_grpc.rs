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
    unary_raw(
        addr,
        path,
        &request.encode_to_vec(),
        &[("grpc-timeout", grpc_timeout)],
    )
    .await
    .expect("the server answers")
}

/// Sends one unary request whose message is `body` (any bytes) with extra headers; returns the
/// server's grpc-status, or the HTTP/2 error when the server refused the stream itself.
pub async fn unary_raw(
    addr: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<RawStatus, h2::Error> {
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
        .body(())
        .expect("request");
    let mut req = req;
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let (response, mut send) = client.send_request(req, false)?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    send.send_data(frame.into(), true)?;
    let response = response.await?;
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
        return Ok(status);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk?;
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    conn_task.abort();
    Ok(read(&trailers).expect("grpc-status trailer"))
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
