//! What every execution backend receives: the call's context, its request stream, and a sink for
//! replies.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::BoxStream;
use prost_reflect::DynamicMessage;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use super::error::CallError;
use super::reply::Reply;
use super::rpc_kind::RpcKind;

/// Request messages as they arrive from the client.
pub type RequestStream = BoxStream<'static, Result<DynamicMessage, Status>>;

/// Where a backend sends replies; an `Err` ends the call with that status. A closed channel without
/// an error means success.
pub type ReplySink = mpsc::Sender<Result<Reply, CallError>>;

/// Something that carries out calls of one method: spawn mode or a worker pool.
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// `spawn` or `worker`, for spans and metrics.
    fn mode(&self) -> &'static str;

    /// Runs one call to completion, sending reply messages to `replies`. An `Err` ends the call
    /// with that status (after the replies already sent).
    fn execute<'a>(
        &'a self,
        ctx: &'a CallContext,
        input: RequestStream,
        replies: &'a ReplySink,
    ) -> futures_util::future::BoxFuture<'a, Result<(), CallError>>;
}

/// Everything about a call that is not a message.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// `pkg.Service/Method`.
    pub method: Arc<str>,
    /// The RPC kind.
    pub kind: RpcKind,
    /// When the call must be over.
    pub deadline: Instant,
    /// The same deadline as wall-clock time.
    pub deadline_wall: SystemTime,
    /// The time the call was given in total.
    pub timeout: Duration,
    /// An id for logs.
    pub request_id: String,
    /// W3C trace context, when the caller sent one.
    pub traceparent: Option<String>,
    /// W3C trace state.
    pub tracestate: Option<String>,
    /// ASCII request metadata to forward (no transport or pseudo headers).
    pub metadata: Vec<(String, String)>,
    /// The caller's identity proven by mTLS (`spiffe://...`), or empty on a plaintext server.
    pub caller: String,
}

impl CallContext {
    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The deadline in milliseconds since the Unix epoch.
    pub fn deadline_unix_ms(&self) -> u128 {
        self.deadline_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    }

    /// The error for this call's deadline.
    pub fn deadline_exceeded(&self) -> CallError {
        CallError::DeadlineExceeded {
            method: self.method.to_string(),
            after: self.timeout,
        }
    }
}

/// The request of a unary or server-streaming call (taken from `input`); `None` for the streaming
/// kinds, whose messages stay in `input`.
pub async fn first_request(
    ctx: &CallContext,
    input: &mut RequestStream,
) -> Result<Option<DynamicMessage>, CallError> {
    if ctx.kind.single_request() {
        single_request(&ctx.method, input).await.map(Some)
    } else {
        Ok(None)
    }
}

/// Takes the single request of a unary or server-streaming call.
pub async fn single_request(
    method: &str,
    input: &mut RequestStream,
) -> Result<DynamicMessage, CallError> {
    use futures_util::StreamExt;
    match input.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(status)) => Err(CallError::Reported {
            code: status.code(),
            message: status.message().to_string(),
        }),
        None => Err(CallError::BadRequest(format!(
            "{method}: the request carried no message"
        ))),
    }
}
