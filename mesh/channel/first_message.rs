//! Committing an idempotent call at its first response message instead of its response headers.
//!
//! gRPC commits a call once the response headers arrive. A replica killed between a unary reply's
//! headers and its message (`serve` writes the two separately) would then fail a call that is safe
//! to run again. For idempotent methods the mesh channel waits for the body's first whole message
//! before it hands the response on: a message follows its headers within microseconds, so the wait
//! costs nothing, while a body that breaks before a whole message has arrived means that the
//! replica is gone and that the call may be retried elsewhere. Trailers before any message (headers,
//! then an error status) are read the same way as a trailers-only response.

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use tonic::body::Body;
use tonic::{Code, Status};

use super::retry::status_in;

/// The longest first message waited for in full: tonic's default decoding limit. A longer one is
/// handed on at its first frame (a caller with the default limit refuses it anyway).
const MAX_HELD: usize = 4 * 1024 * 1024;

/// The gRPC message prefix: a compression flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// What came first on a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// A whole message (or the first frame of one longer than [`MAX_HELD`]).
    Message,
    /// Trailers before any message, with their `grpc-status` if it is readable.
    Trailers(Option<Code>),
    /// The end of the body, without a frame.
    End,
    /// An error before a whole message: the connection or the stream broke.
    Broken,
}

/// Counts the bytes of the first message as its frames arrive.
#[derive(Default)]
struct FirstMessage {
    prefix: [u8; PREFIX],
    prefix_len: usize,
    received: usize,
    /// Longer than [`MAX_HELD`]: handed on without waiting.
    too_long: bool,
}

impl FirstMessage {
    /// Takes in a data frame; true once the message is whole (or too long to wait for).
    fn add(&mut self, data: &[u8]) -> bool {
        let take = (PREFIX - self.prefix_len).min(data.len());
        self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
        self.prefix_len += take;
        self.received += data.len();
        if self.prefix_len < PREFIX {
            return false;
        }
        let [_, a, b, c, d] = self.prefix;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        self.too_long = len > MAX_HELD;
        self.too_long || self.received >= PREFIX + len
    }
}

/// Waits for the first whole message of `response`'s body; with `one_message` (a method that
/// answers with one message), for the end of the body after it too (its trailers follow at once),
/// so that a body that breaks between the message and its status counts as broken. Returns what
/// came first, and the response, whose body still yields everything it would have: the frames read
/// come first, then the rest, or the error that broke it.
pub async fn first_message(response: Response<Body>, one_message: bool) -> (First, Response<Body>) {
    let (parts, mut body) = response.into_parts();
    let mut held: Vec<Frame<Bytes>> = Vec::new();
    let mut message = FirstMessage::default();
    let mut message_whole = false;
    let (first, ended) = loop {
        match body.frame().await {
            None if held.is_empty() => break (First::End, true),
            // Ended inside the message: the caller's decoder says so.
            None => break (First::Message, true),
            Some(Err(error)) => {
                let replay = held.into_iter().map(Ok).chain([Err::<_, Status>(error)]);
                let body = Body::new(StreamBody::new(stream::iter(replay)));
                return (First::Broken, Response::from_parts(parts, body));
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let first = match held.is_empty() {
                        true => First::Trailers(status_in(trailers)),
                        false => First::Message,
                    };
                    held.push(frame);
                    break (first, true);
                }
                if message_whole {
                    // More data after the message: not a one-message answer after all; the
                    // caller's decoder has the last word.
                    let more = frame.data_ref().is_some_and(|data| !data.is_empty());
                    held.push(frame);
                    if more {
                        break (First::Message, false);
                    }
                    continue;
                }
                let whole = frame.data_ref().is_some_and(|data| message.add(data));
                held.push(frame);
                if whole {
                    if !one_message || message.too_long {
                        break (First::Message, false);
                    }
                    message_whole = true;
                }
            }
        }
    };
    let held = stream::iter(held.into_iter().map(Ok::<_, Status>));
    let body = match ended {
        true => Body::new(StreamBody::new(held)),
        false => Body::new(StreamBody::new(held.chain(BodyStream::new(body)))),
    };
    (first, Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn response(frames: Vec<Result<Frame<Bytes>, Status>>) -> Response<Body> {
        Response::new(Body::new(StreamBody::new(stream::iter(frames))))
    }

    /// `text` as one gRPC message (prefix and bytes).
    fn grpc(text: &str) -> Vec<u8> {
        let mut message = vec![0];
        message.extend_from_slice(&(text.len() as u32).to_be_bytes());
        message.extend_from_slice(text.as_bytes());
        message
    }

    fn data(bytes: &[u8]) -> Result<Frame<Bytes>, Status> {
        Ok(Frame::data(Bytes::copy_from_slice(bytes)))
    }

    fn trailers(status: &'static str) -> Result<Frame<Bytes>, Status> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", http::HeaderValue::from_static(status));
        Ok(Frame::trailers(map))
    }

    /// Everything the body yields: data as its length, trailers as their status, errors.
    async fn drain(response: Response<Body>) -> Vec<String> {
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => format!("data:{}", data.len()),
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
    async fn a_whole_message_commits_and_the_whole_body_follows() {
        let (first, response) = first_message(
            response(vec![
                data(&grpc("one")),
                data(&grpc("three")),
                trailers("0"),
            ]),
            false,
        )
        .await;
        assert_eq!(first, First::Message);
        assert_eq!(
            drain(response).await,
            ["data:8", "data:10", "trailers:Some(Ok)"]
        );
    }

    #[tokio::test]
    async fn a_message_split_over_frames_commits_once_it_is_whole() {
        let message = grpc("hello, world");
        let (head, tail) = message.split_at(3);
        let (first, response) =
            first_message(response(vec![data(head), data(tail), trailers("0")]), false).await;
        assert_eq!(first, First::Message);
        assert_eq!(
            drain(response).await,
            ["data:3", "data:14", "trailers:Some(Ok)"]
        );
    }

    #[tokio::test]
    async fn a_body_broken_inside_the_first_message_is_broken_and_replays_what_came() {
        let message = grpc("hello, world");
        let (first, response) = first_message(
            response(vec![
                data(&message[..8]),
                Err(Status::unknown("broken pipe")),
                data(&message[8..]),
            ]),
            false,
        )
        .await;
        assert_eq!(first, First::Broken);
        assert_eq!(drain(response).await, ["data:8", "error:broken pipe"]);
    }

    #[tokio::test]
    async fn a_message_longer_than_the_limit_commits_at_its_first_frame() {
        let mut head = vec![0];
        head.extend_from_slice(&(MAX_HELD as u32 + 1).to_be_bytes());
        head.extend_from_slice(b"start");
        let (first, response) = first_message(
            response(vec![data(&head), Err(Status::unknown("later"))]),
            false,
        )
        .await;
        assert_eq!(first, First::Message);
        assert_eq!(drain(response).await, ["data:10", "error:later"]);
    }

    #[tokio::test]
    async fn trailers_before_any_message_carry_their_status() {
        let (first, response) = first_message(response(vec![trailers("14")]), false).await;
        assert_eq!(first, First::Trailers(Some(Code::Unavailable)));
        assert_eq!(drain(response).await, ["trailers:Some(Unavailable)"]);
    }

    #[tokio::test]
    async fn a_body_broken_before_any_frame_is_broken_and_says_so_again() {
        let (first, response) = first_message(
            response(vec![Err(Status::unknown("broken pipe")), data(b"x")]),
            false,
        )
        .await;
        assert_eq!(first, First::Broken);
        assert_eq!(drain(response).await, ["error:broken pipe"]);
    }

    #[tokio::test]
    async fn an_empty_body_ends() {
        let (first, response) = first_message(response(vec![]), false).await;
        assert_eq!(first, First::End);
        assert!(drain(response).await.is_empty());
    }

    #[tokio::test]
    async fn a_one_message_answer_commits_at_its_end_and_is_broken_before_it() {
        let message = grpc("hello");
        let (first, answer) = first_message(
            response(vec![data(&message), data(&[]), trailers("0")]),
            true,
        )
        .await;
        assert_eq!(first, First::Message);
        assert_eq!(
            drain(answer).await,
            ["data:10", "data:0", "trailers:Some(Ok)"]
        );
        // The replica died after the message, before the status: retryable.
        let (first, answer) = first_message(
            response(vec![data(&message), Err(Status::unavailable("reset"))]),
            true,
        )
        .await;
        assert_eq!(first, First::Broken);
        assert_eq!(drain(answer).await, ["data:10", "error:reset"]);
        // Without `one_message` the same body commits at the message.
        let (first, _) = first_message(
            response(vec![data(&message), Err(Status::unavailable("reset"))]),
            false,
        )
        .await;
        assert_eq!(first, First::Message);
    }

    #[tokio::test]
    async fn a_second_message_is_handed_on_without_waiting_for_the_end() {
        let message = grpc("hello");
        // After the second message the body would wait forever: nothing may read that far.
        let (first, response) = first_message(
            response(vec![data(&message), data(&message)]).map(|body| {
                Body::new(StreamBody::new(
                    BodyStream::new(body).chain(stream::pending()),
                ))
            }),
            true,
        )
        .await;
        assert_eq!(first, First::Message);
        let mut body = response.into_body();
        for _ in 0..2 {
            let frame = body.frame().await.expect("a frame").expect("data");
            assert_eq!(frame.data_ref().map(Bytes::len), Some(10));
        }
    }
}
