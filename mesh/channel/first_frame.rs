//! Committing an idempotent call at its first response frame instead of its response headers.
//!
//! gRPC commits a call once the response headers arrive. A replica killed between a unary reply's
//! headers and its message (`serve` writes the two separately) would then fail a call that is safe
//! to run again. For idempotent methods the mesh channel waits for the body's first frame before it
//! hands the response on: a message follows its headers within microseconds, so the wait costs
//! nothing, while a body that breaks before any frame means that the replica is gone and that the
//! call may be retried elsewhere. Trailers before any message (headers, then an error status) are
//! read the same way as a trailers-only response.

use futures_util::{StreamExt as _, stream};
use http::Response;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use tonic::Code;
use tonic::body::Body;

use super::retry::status_in;

/// What came first on a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// A message.
    Data,
    /// Trailers before any message, with their `grpc-status` if it is readable.
    Trailers(Option<Code>),
    /// The end of the body, without a frame.
    End,
    /// An error before any frame: the connection or the stream broke.
    Broken,
}

/// Waits for the first frame of `response`'s body. Returns what it was, and the response, whose
/// body still yields everything it would have: the frame comes first, then the rest; a broken body
/// yields its error again.
pub async fn first_frame(response: Response<Body>) -> (First, Response<Body>) {
    let (parts, mut body) = response.into_parts();
    let (first, body) = match body.frame().await {
        None => (First::End, Body::empty()),
        Some(Err(error)) => (
            First::Broken,
            Body::new(StreamBody::new(stream::iter([Err(error)]))),
        ),
        Some(Ok(frame)) => {
            let first = match frame.trailers_ref() {
                Some(trailers) => First::Trailers(status_in(trailers)),
                None => First::Data,
            };
            let rest = BodyStream::new(body);
            (
                first,
                Body::new(StreamBody::new(stream::iter([Ok(frame)]).chain(rest))),
            )
        }
    };
    (first, Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body::Frame;
    use tonic::Status;

    fn response(frames: Vec<Result<Frame<Bytes>, Status>>) -> Response<Body> {
        Response::new(Body::new(StreamBody::new(stream::iter(frames))))
    }

    fn trailers(status: &'static str) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", http::HeaderValue::from_static(status));
        Frame::trailers(map)
    }

    /// Everything the body yields, frames as text (`data:…`, `trailers:STATUS`) and errors.
    async fn drain(response: Response<Body>) -> Vec<String> {
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => format!("data:{}", String::from_utf8_lossy(&data)),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        format!("trailers:{:?}", status_in(&trailers))
                    }
                },
                Err(e) => format!("error:{}", e.message()),
            });
        }
        seen
    }

    #[tokio::test]
    async fn a_message_first_commits_and_the_whole_body_follows() {
        let (first, response) = first_frame(response(vec![
            Ok(Frame::data(Bytes::from_static(b"one"))),
            Ok(Frame::data(Bytes::from_static(b"two"))),
            Ok(trailers("0")),
        ]))
        .await;
        assert_eq!(first, First::Data);
        assert_eq!(
            drain(response).await,
            ["data:one", "data:two", "trailers:Some(Ok)"]
        );
    }

    #[tokio::test]
    async fn trailers_before_any_message_carry_their_status() {
        let (first, response) = first_frame(response(vec![Ok(trailers("14"))])).await;
        assert_eq!(first, First::Trailers(Some(Code::Unavailable)));
        assert_eq!(drain(response).await, ["trailers:Some(Unavailable)"]);
    }

    #[tokio::test]
    async fn a_body_broken_before_any_frame_is_broken_and_says_so_again() {
        let (first, response) = first_frame(response(vec![
            Err(Status::unknown("broken pipe")),
            Ok(Frame::data(Bytes::from_static(b"never"))),
        ]))
        .await;
        assert_eq!(first, First::Broken);
        assert_eq!(drain(response).await, ["error:broken pipe"]);
    }

    #[tokio::test]
    async fn an_empty_body_ends() {
        let (first, response) = first_frame(response(vec![])).await;
        assert_eq!(first, First::End);
        assert!(drain(response).await.is_empty());
    }
}
