//! Request bodies that are read to their end even when the server answered without them.
//!
//! A server may answer before it has read a request: an unknown method, a call over the
//! connection's limit, a refused caller, a handler that returned early. h2 (0.4.16 and later)
//! charges each small DATA frame against a per-connection budget and gives the charge back when the
//! application reads the frame; a frame that arrives after the request body was dropped, while the
//! answer is still going out, is charged and never given back. Once the budget is spent, h2 closes
//! the whole connection (`GOAWAY ENHANCE_YOUR_CALM`, "too_many_data_frames") and every call on it
//! fails. Under load a client's request is often still on the wire when the answer leaves, so each
//! early answer could cost the connection a little: about a hundred of them killed it.
//!
//! [`DrainOnDrop`] wraps every request body a server receives. Dropped before its end, it hands the
//! body to a task that reads it to the end (at most [`DRAIN_BYTES`] and [`DRAIN_TIME`]), so every
//! frame is read and its charge given back; once the body ends (or the task gives up) the stream
//! closes and h2 ignores late frames without charging them. A body read to its end, as every
//! answered call's is, costs nothing more than the wrapper.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf as _;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// The most a dropped request body is read for before it is given up.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The most bytes read from a dropped request body: large frames cost h2's budget nothing, so a
/// client still streaming big messages is simply reset.
pub const DRAIN_BYTES: usize = 64 * 1024;

/// A request body that, dropped before its end, is read to its end in the background.
#[derive(Debug)]
pub struct DrainOnDrop<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    body: Option<B>,
}

impl<B> DrainOnDrop<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    /// Wraps `body`.
    pub fn new(body: B) -> DrainOnDrop<B> {
        DrainOnDrop { body: Some(body) }
    }
}

impl<B> Body for DrainOnDrop<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut().body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for DrainOnDrop<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (never, in a server) the body is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads `body` until it ends, fails, or [`DRAIN_BYTES`] or [`DRAIN_TIME`] have passed.
async fn drain<B: Body + Unpin>(mut body: B) {
    let read = async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            let size = frame.data_ref().map_or(0, |data| data.remaining());
            left = left.saturating_sub(size);
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc;

    type Channel = http_body_util::StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>,
    >;

    /// A body fed by hand, and the sender feeding it.
    fn channel_body(capacity: usize) -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, Channel) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            tx,
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
    }

    fn data(n: usize) -> Result<Frame<Bytes>, Infallible> {
        Ok(Frame::data(Bytes::from(vec![0u8; n])))
    }

    /// A body that counts its polls and says it has ended (or not) without being read.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ended: bool,
    }

    impl Body for Probe {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(None)
        }

        fn is_end_stream(&self) -> bool {
            self.ended
        }
    }

    /// How often a dropped [`Probe`] was polled once its drain (if any) has had time to run.
    async fn polls_after_drop(ended: bool) -> usize {
        let polls = Arc::new(AtomicUsize::new(0));
        drop(DrainOnDrop::new(Probe {
            polls: polls.clone(),
            ended,
        }));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        polls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn only_a_body_dropped_before_its_end_is_drained() {
        assert_eq!(polls_after_drop(false).await, 1, "read until it ended");
        assert_eq!(
            polls_after_drop(true).await,
            0,
            "an ended body is left alone"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_is_read_to_the_end() {
        // Room for one frame only: every later send waits until the drain task reads.
        let (tx, body) = channel_body(1);
        let mut wrapped = DrainOnDrop::new(body);
        tx.send(data(8)).await.expect("first frame");
        let first = wrapped.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data").len(), 8);
        drop(wrapped);
        let sends = async {
            for _ in 0..10 {
                tx.send(data(8))
                    .await
                    .expect("the drain task keeps reading");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), sends)
            .await
            .expect("nobody read the dropped body");
    }

    #[tokio::test]
    async fn the_drain_stops_after_its_byte_budget() {
        let (tx, body) = channel_body(1);
        drop(DrainOnDrop::new(body));
        let frame = 16 * 1024;
        let mut sent = 0;
        // The receiver goes away once DRAIN_BYTES are read; a send then fails.
        while tx.send(data(frame)).await.is_ok() {
            sent += frame;
            assert!(sent <= DRAIN_BYTES + 2 * frame, "read past its budget");
        }
        assert!(sent >= DRAIN_BYTES, "stopped after {sent} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_stops_after_its_time() {
        let (tx, body) = channel_body(1);
        drop(DrainOnDrop::new(body));
        tx.send(data(1)).await.expect("read while draining");
        tokio::time::sleep(DRAIN_TIME / 2).await;
        assert!(!tx.is_closed(), "still draining before DRAIN_TIME");
        tokio::time::sleep(DRAIN_TIME).await;
        tokio::task::yield_now().await;
        assert!(tx.is_closed(), "given up after DRAIN_TIME");
    }
}
