//! The per-connection call limit: one connection may run at most `limit` calls at once; one more
//! is answered `RESOURCE_EXHAUSTED` at once (nothing runs), so a single client cannot take every
//! worker and every stream of a server.
//!
//! The HTTP/2 stream limit is set above this one (see [`Http2Settings`]): a compliant client never
//! reaches it, so the limit it meets is this one, with a gRPC status that says what happened.
//!
//! [`Http2Settings`]: crate::mesh::transport::Http2Settings

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame};

use crate::mesh::telemetry::metrics::{metrics, name};

/// Applies [`CallLimit`]; build one per connection (the count is the connection's).
#[derive(Debug, Clone)]
pub struct CallLimitLayer {
    limit: usize,
    in_flight: Arc<AtomicUsize>,
}

impl CallLimitLayer {
    /// A fresh count for one connection allowing `limit` calls at once.
    pub fn new(limit: usize) -> CallLimitLayer {
        CallLimitLayer {
            limit,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> CallLimit<S> {
        CallLimit {
            inner,
            limit: self.limit,
            in_flight: self.in_flight.clone(),
        }
    }
}

/// A service that refuses calls beyond its connection's limit.
#[derive(Debug, Clone)]
pub struct CallLimit<S> {
    inner: S,
    limit: usize,
    in_flight: Arc<AtomicUsize>,
}

/// One call's place in its connection's count, given back when the response body is dropped
/// (the call ended, or the client reset it).
#[derive(Debug)]
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Permit {
    /// A place if fewer than `limit` calls run on this connection.
    fn try_take(in_flight: &Arc<AtomicUsize>, limit: usize) -> Option<Permit> {
        in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(in_flight.clone()))
    }
}

impl<S, B, RB> tower::Service<Request<B>> for CallLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body + Default + Send + 'static,
{
    type Response = Response<PermitBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(permit) = Permit::try_take(&self.in_flight, self.limit) else {
            metrics()
                .server_refused
                .get_or_create(&name("max_calls_per_connection"))
                .inc();
            let refused = refusal(self.limit);
            return Box::pin(async move { Ok(refused) });
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| PermitBody {
                body,
                _permit: Some(permit),
            }))
        })
    }
}

/// The trailers-only `RESOURCE_EXHAUSTED` answer to a call over the limit.
fn refusal<RB: Default>(limit: usize) -> Response<PermitBody<RB>> {
    let status = tonic::Status::resource_exhausted(format!(
        "this connection already has {limit} calls in flight ([server] max_calls_per_connection); \
         retry later or open another connection"
    ));
    let (parts, _) = status.into_http::<()>().into_parts();
    Response::from_parts(
        parts,
        PermitBody {
            body: RB::default(),
            _permit: None,
        },
    )
}

pin_project_lite::pin_project! {
    /// A response body holding its call's place in the connection's count.
    pub struct PermitBody<B> {
        #[pin]
        body: B,
        _permit: Option<Permit>,
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_stop_at_the_limit_and_come_back_when_dropped() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = Permit::try_take(&count, 2).expect("first");
        let second = Permit::try_take(&count, 2).expect("second");
        assert!(Permit::try_take(&count, 2).is_none(), "a third is refused");
        drop(first);
        let third = Permit::try_take(&count, 2).expect("a place came back");
        drop((second, third));
        assert_eq!(count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_refusal_is_a_trailers_only_resource_exhausted() {
        let response = refusal::<http_body_util::Empty<bytes::Bytes>>(7);
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("max_calls_per_connection"));
        assert!(status.message().contains('7'));
    }
}
