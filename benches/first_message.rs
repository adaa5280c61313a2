//! What committing an idempotent call at its first response message costs
//! (`mesh/channel/first_message`): a unary reply's body (a message, then trailers) read as is,
//! against the same body read after `first_message` has held back its first message and put it
//! back. Per call, in one process, alternating
//! rounds; the body is built the same way in both.
//!
//! `cargo bench --bench first_message` (release build; a second).

mod support;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use tonic::Status;
use tonic::body::Body;

use exemesh::mesh::channel::first_message::first_message;
use support::{median, ns_per_call};

const ROUNDS: usize = 7;
const CALLS: usize = 200_000;

/// A unary reply: one 100-byte gRPC message (5-byte prefix, 95 bytes), then `grpc-status: 0`.
fn reply() -> Response<Body> {
    const MESSAGE: [u8; 100] = {
        let mut message = [7; 100];
        message[0] = 0;
        message[1] = 0;
        message[2] = 0;
        message[3] = 0;
        message[4] = 95;
        message
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Status>; 2] = [
        Ok(Frame::data(Bytes::from_static(&MESSAGE))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::new(Body::new(StreamBody::new(stream::iter(frames))))
}

/// Reads the whole body; returns its data bytes.
async fn drain(response: Response<Body>) -> usize {
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(Ok(frame)) = body.frame().await {
        bytes += frame.data_ref().map_or(0, Bytes::len);
    }
    bytes
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let (mut plain, mut peeked) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(ns_per_call(CALLS, || runtime.block_on(drain(reply()))));
        peeked.push(ns_per_call(CALLS, || {
            runtime.block_on(async {
                let (_, response) = first_message(reply(), true).await;
                drain(response).await
            })
        }));
    }
    let (plain, peeked) = (median(plain), median(peeked));
    println!("| unary reply body | read as is, ns | after first_message, ns | added, ns |");
    println!("|---|---:|---:|---:|");
    println!(
        "| 100-byte message + trailers | {plain:.0} | {peeked:.0} | {:.0} |",
        peeked - plain
    );
}
