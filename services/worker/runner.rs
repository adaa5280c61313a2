//! One gRPC call carried out on a worker of a pool.

use std::sync::Arc;

use futures_util::StreamExt;
use prost_reflect::MessageDescriptor;

use super::conn::{Conn, Event, ParentInfo};
use super::frame::{self, Metadata, Start};
use super::pool::{Lease, Pool};
use crate::mesh::telemetry::span;
use crate::services::call::{CallContext, Executor, ReplySink, RequestStream, first_request};
use crate::services::error::CallError;
use crate::services::json::JsonMessage;
use crate::services::reply::ReplyReader;

/// Runs calls of one method on a pool.
#[derive(Debug)]
pub struct WorkerRunner {
    pool: Arc<Pool>,
    reply: ReplyReader,
    max_output: usize,
}

/// Cancels the call on the worker unless the worker finished it.
struct CancelOnDrop<'a> {
    conn: Arc<Conn>,
    id: u32,
    ctx: &'a CallContext,
    done: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            let reason = if self.ctx.remaining().is_zero() {
                "deadline_exceeded"
            } else {
                "cancelled"
            };
            self.conn.cancel(self.id, reason);
        }
    }
}

impl WorkerRunner {
    /// A runner for replies of type `reply_type` on `pool`.
    pub fn new(pool: Arc<Pool>, reply_type: MessageDescriptor, max_output: usize) -> Self {
        Self {
            pool,
            reply: ReplyReader::new(reply_type),
            max_output,
        }
    }

    async fn run_call(
        &self,
        ctx: &CallContext,
        mut input: RequestStream,
        replies: &ReplySink,
    ) -> Result<(), CallError> {
        let first = first_request(ctx, &mut input).await?;
        let parent = ParentInfo {
            deadline: ctx.deadline,
            traceparent: ctx.traceparent.clone(),
            tracestate: ctx.tracestate.clone(),
        };
        let mut lease = self.pool.acquire(&ctx.method, &parent).await?;
        span::record(
            "exemesh.worker",
            opentelemetry::StringValue::from(lease.conn.shared_id()),
        );
        span::record("process.pid", i64::from(lease.conn.pid()));
        let mut guard = CancelOnDrop {
            conn: lease.conn.clone(),
            id: lease.id,
            ctx,
            done: false,
        };
        let timeout_ms = u32::try_from(ctx.remaining().as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let start = Start {
            method: &ctx.method,
            kind: ctx.kind.as_str(),
            timeout_ms,
            traceparent: ctx.traceparent.as_deref(),
            tracestate: ctx.tracestate.as_deref(),
            request_id: &ctx.request_id,
            caller: &ctx.caller,
            metadata: Metadata(&ctx.metadata),
            message: first.as_ref().map(JsonMessage),
            half_close: first.is_some(),
        };
        let conn = lease.conn.clone();
        let start = match frame::start_line(lease.id, start) {
            Ok(line) => line,
            Err(e) => {
                // The worker never hears of this call.
                guard.done = true;
                return Err(CallError::BadRequest(format!("{}: {e}", ctx.method)));
            }
        };
        if !conn.send(start).await {
            return Err(self.lost(ctx, &lease, "is closing"));
        }
        let mut input_open = first.is_none();
        let mut sent = 0usize;
        loop {
            tokio::select! {
                next = input.next(), if input_open => match next {
                    Some(Ok(message)) => {
                        let line = match frame::message_line(lease.id, &message) {
                            Ok(line) => line,
                            Err(e) => break Err(CallError::BadRequest(format!("{}: {e}", ctx.method))),
                        };
                        if !conn.send(line).await {
                            break Err(self.lost(ctx, &lease, "is closing"));
                        }
                    }
                    Some(Err(status)) => break Err(CallError::Reported { code: status.code(), message: status.message().to_string() }),
                    None => {
                        input_open = false;
                        if !conn.send(frame::half_close_line(lease.id)).await {
                            break Err(self.lost(ctx, &lease, "is closing"));
                        }
                    }
                },
                event = lease.events.recv() => match event {
                    Some(Event::Message(raw)) => {
                        if raw.get().len() > self.max_output {
                            break Err(CallError::OutputTooLarge { method: ctx.method.to_string(), limit: self.max_output });
                        }
                        sent += 1;
                        if ctx.kind.single_reply() && sent > 1 {
                            break Err(CallError::Protocol { method: ctx.method.to_string(), detail: format!("worker {} sent more than one reply to a {} call", conn.id(), ctx.kind) });
                        }
                        let reply = self.reply.read(&ctx.method, raw.get().as_bytes())?;
                        if replies.send(Ok(reply)).await.is_err() {
                            break Ok(());
                        }
                    }
                    Some(Event::End) => {
                        guard.done = true;
                        if ctx.kind.single_reply() && sent == 0 {
                            break Err(CallError::Protocol { method: ctx.method.to_string(), detail: format!("worker {} ended a {} call without a reply", conn.id(), ctx.kind) });
                        }
                        break Ok(());
                    }
                    Some(Event::Failed(err)) => {
                        guard.done = true;
                        break Err(err);
                    }
                    None => break Err(self.lost(ctx, &lease, "dropped the call")),
                },
            }
        }
    }

    fn lost(&self, ctx: &CallContext, lease: &Lease, detail: &str) -> CallError {
        CallError::WorkerLost {
            method: ctx.method.to_string(),
            worker: lease.conn.id().to_string(),
            detail: detail.to_string(),
        }
    }
}

impl Executor for WorkerRunner {
    fn mode(&self) -> &'static str {
        "worker"
    }

    fn execute<'a>(
        &'a self,
        ctx: &'a CallContext,
        input: RequestStream,
        replies: &'a ReplySink,
    ) -> futures_util::future::BoxFuture<'a, Result<(), CallError>> {
        Box::pin(self.run_call(ctx, input, replies))
    }
}
