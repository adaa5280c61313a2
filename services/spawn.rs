//! Spawn mode: one process per call.
//!
//! The request goes to stdin as JSON lines, stdout is the reply (one JSON document, or one message
//! per line for server streaming), stderr's tail explains failures, and the exit code maps to a
//! status (see [`super::exit_status`]). The process group is killed whenever the call ends early:
//! deadline, cancellation, oversized output or a reported error.

use futures_util::StreamExt;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::Code;

use super::call::{CallContext, Executor, ReplySink, RequestStream, first_request};
use super::child::{ChildStdin, ChildStdout};
use super::error::{CallError, tail};
use super::exit_status::describe_exit;
use super::json::write_json;
use super::line_reader::{Line, read_line};
use super::manifest::{Output, SpawnSpec};
use super::placeholder::render_argv;
use super::process::{self, Launch};
use super::reply::{Reply, ReplyReader};
use crate::mesh::status_code::parse_code;
use crate::mesh::telemetry::span;

/// How long output may keep flowing after the process exited, before whatever it left running
/// (and holding stdout) is killed.
const LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// stderr lines recorded as span events, at most.
const MAX_STDERR_EVENTS: usize = 32;

/// How much of stderr is kept to explain a failure.
const STDERR_TAIL: usize = 2048;

/// Runs one method in spawn mode.
#[derive(Debug)]
pub struct SpawnRunner {
    spec: SpawnSpec,
    reply: ReplyReader,
    max_output: usize,
}

/// `{"error": {...}}` as the whole of an executable's output.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorDocument {
    error: ErrorBody,
}

/// The error an executable reports in JSON (stdout in spawn mode, a frame in worker mode).
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// A status name or number.
    #[serde(default)]
    pub code: serde_json::Value,
    /// The message for the client.
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// The status it names; unknown codes (and `OK`) become `UNKNOWN`.
    pub fn into_error(self) -> CallError {
        let code = match &self.code {
            serde_json::Value::String(s) => parse_code(s),
            serde_json::Value::Number(n) => n.as_i64().and_then(|n| parse_code(&n.to_string())),
            _ => None,
        }
        .filter(|c| *c != Code::Ok)
        .unwrap_or(Code::Unknown);
        CallError::Reported {
            code,
            message: self.message,
        }
    }
}

/// Recognizes an error document; `None` for anything else.
pub fn reported_error(text: &[u8]) -> Option<CallError> {
    serde_json::from_slice::<ErrorDocument>(text)
        .ok()
        .map(|doc| doc.error.into_error())
}

impl SpawnRunner {
    /// A runner for `spec`, whose replies are of type `reply_type`.
    pub fn new(spec: SpawnSpec, reply_type: MessageDescriptor, max_output: usize) -> Self {
        Self {
            spec,
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
        // Streaming-request methods have no placeholders (checked at bind time).
        let args = render_argv(
            &self.spec.args,
            first.as_ref(),
            self.spec.allow_option_values,
        )
        .map_err(|e| CallError::BadRequest(format!("{}: {e}", ctx.method)))?;
        // Written before anything starts: a request JSON cannot say fails here, having run nothing.
        let first = match &first {
            Some(message) => {
                let mut line = Vec::new();
                json_line(&ctx.method, message, &mut line)?;
                Some(line)
            }
            None => None,
        };
        let timeout_ms = ctx.remaining().as_millis().max(1).to_string();
        let deadline_ms = ctx.deadline_unix_ms().to_string();
        let mut extra: Vec<(&str, &str)> = vec![
            ("EXEMESH_METHOD", &ctx.method),
            ("EXEMESH_REQUEST_ID", &ctx.request_id),
            ("EXEMESH_TIMEOUT_MS", &timeout_ms),
            ("EXEMESH_DEADLINE_UNIX_MS", &deadline_ms),
        ];
        if !ctx.caller.is_empty() {
            extra.push(("EXEMESH_CALLER", &ctx.caller));
        }
        if let Some(tp) = &ctx.traceparent {
            extra.push(("TRACEPARENT", tp));
        }
        if let Some(ts) = &ctx.tracestate {
            extra.push(("TRACESTATE", ts));
        }
        let launch = Launch {
            program: &self.spec.program,
            args: &args,
            cwd: &self.spec.cwd,
            env: &self.spec.env,
            sandbox: &self.spec.sandbox,
        };
        let spawn_started = std::time::Instant::now();
        let mut started = process::start(&launch, &extra).map_err(|e| CallError::SpawnFailed {
            method: ctx.method.to_string(),
            program: self.spec.program.display().to_string(),
            detail: e.to_string(),
        })?;
        crate::mesh::telemetry::metrics::metrics()
            .spawns
            .get_or_create(&crate::mesh::telemetry::metrics::name(&ctx.method))
            .inc();
        span::record("process.pid", i64::from(started.group.pgid()));
        span::record(
            "exemesh.spawn_ms",
            spawn_started.elapsed().as_secs_f64() * 1000.0,
        );
        let stdin = started.child.stdin.take();
        let stdout = started.child.stdout.take();
        let stderr = started.child.stderr.take();
        let group = &started.group;
        let child = &mut started.child;
        let main = async {
            let outcome = async {
                let io = async {
                    tokio::try_join!(
                        feed(&ctx.method, stdin, first, input),
                        self.read_output(ctx, stdout, replies)
                    )
                };
                tokio::pin!(io);
                let waited = {
                    let wait = child.wait();
                    tokio::pin!(wait);
                    tokio::select! {
                        done = &mut io => Err(done),
                        status = &mut wait => Ok(status),
                    }
                };
                let (document, status) = match waited {
                    // The usual order: output ends, then the process exits.
                    Err(done) => {
                        let (bytes_in, document) = done?;
                        span::record("exemesh.bytes_in", bytes_in as i64);
                        (document, child.wait().await)
                    }
                    // The process exited but something it started still holds stdout open (a daemon):
                    // give the pipe a moment to drain, then end the leftovers.
                    Ok(status) => {
                        let done = match tokio::time::timeout(LEFTOVER_GRACE, &mut io).await {
                            Ok(done) => done,
                            Err(_) => {
                                group.signal(libc::SIGKILL);
                                io.await
                            }
                        };
                        let (bytes_in, document) = done?;
                        span::record("exemesh.bytes_in", bytes_in as i64);
                        (document, status)
                    }
                };
                let status = status.map_err(|e| CallError::Protocol {
                    method: ctx.method.to_string(),
                    detail: format!("waiting for the process: {e}"),
                })?;
                Ok((document, status))
            }
            .await;
            // Whatever happened, nothing of this call may keep running: leftovers in the group would
            // also hold stderr open.
            group.signal(libc::SIGKILL);
            outcome
        };
        let (outcome, stderr_text) = tokio::join!(main, read_tail(stderr, &ctx.request_id));
        let (document, status) = outcome?;
        if let Some(code) = status.code() {
            span::record("process.exit_code", i64::from(code));
        }
        if let Some(doc) = &document {
            span::record("exemesh.bytes_out", doc.len() as i64);
        }
        if let Some(doc) = &document
            && let Some(err) = reported_error(doc)
        {
            return Err(err);
        }
        let (code, how) = describe_exit(status, &self.spec.exit_codes);
        if code != Code::Ok {
            let stderr_text = stderr_text.trim();
            let message = if stderr_text.is_empty() {
                format!("{}: {how}", ctx.method)
            } else {
                format!("{}: {how}: {stderr_text}", ctx.method)
            };
            return Err(CallError::Reported { code, message });
        }
        if let Some(doc) = document {
            let reply = self.parse_reply(ctx, &doc)?;
            let _ = replies.send(Ok(reply)).await;
        }
        Ok(())
    }

    /// Unary/client streaming: returns the whole of stdout. Streaming: sends each line and returns
    /// `None`.
    async fn read_output(
        &self,
        ctx: &CallContext,
        stdout: Option<ChildStdout>,
        replies: &ReplySink,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let Some(stdout) = stdout else {
            return Ok(Some(Vec::new()));
        };
        let too_large = || CallError::OutputTooLarge {
            method: ctx.method.to_string(),
            limit: self.max_output,
        };
        if ctx.kind.single_reply() {
            let mut doc = Vec::new();
            let read = stdout
                .take(self.max_output as u64 + 1)
                .read_to_end(&mut doc)
                .await;
            read.map_err(|e| CallError::Protocol {
                method: ctx.method.to_string(),
                detail: format!("reading stdout: {e}"),
            })?;
            if doc.len() > self.max_output {
                return Err(too_large());
            }
            return Ok(Some(doc));
        }
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            match read_line(&mut reader, &mut line, self.max_output).await {
                Ok(Line::Complete) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Line::Complete) => {
                    if let Some(err) = reported_error(&line) {
                        return Err(err);
                    }
                    let reply = self.parse_reply(ctx, &line)?;
                    if replies.send(Ok(reply)).await.is_err() {
                        return Ok(None);
                    }
                }
                Ok(Line::Eof) => return Ok(None),
                Ok(Line::TooLong) => return Err(too_large()),
                Err(e) => {
                    return Err(CallError::Protocol {
                        method: ctx.method.to_string(),
                        detail: format!("reading stdout: {e}"),
                    });
                }
            }
        }
    }

    fn parse_reply(&self, ctx: &CallContext, text: &[u8]) -> Result<Reply, CallError> {
        match &self.spec.output {
            Output::Json => self.reply.read(&ctx.method, text),
            Output::Text { field } => {
                let mut text = String::from_utf8_lossy(text).into_owned();
                if ctx.kind.single_reply() && text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                let mut reply = DynamicMessage::new(self.reply.descriptor().clone());
                reply
                    .try_set_field_by_name(field, Value::String(text))
                    .map_err(|e| CallError::Protocol {
                        method: ctx.method.to_string(),
                        detail: format!("setting text field {field}: {e}"),
                    })?;
                Ok(Reply::Message(reply))
            }
        }
    }
}

/// Replaces `line` with `message` as a JSON line, or fails with [`CallError::BadRequest`] when JSON
/// cannot say it.
fn json_line(method: &str, message: &DynamicMessage, line: &mut Vec<u8>) -> Result<(), CallError> {
    line.clear();
    write_json(message, line).map_err(|e| CallError::BadRequest(format!("{method}: {e}")))?;
    line.push(b'\n');
    Ok(())
}

/// Writes the request to stdin as JSON lines (`first`, already written, or the messages of
/// `input`), then closes it; returns the bytes written. A process that exits without reading its
/// input is not an error.
async fn feed(
    method: &str,
    stdin: Option<ChildStdin>,
    first: Option<Vec<u8>>,
    mut input: RequestStream,
) -> Result<u64, CallError> {
    let Some(mut stdin) = stdin else {
        return Ok(0);
    };
    if let Some(line) = first {
        let _ = stdin.write_all(&line).await;
        return Ok(line.len() as u64);
    }
    let mut written = 0;
    let mut line = Vec::new();
    while let Some(next) = input.next().await {
        let message = next.map_err(|status| CallError::Reported {
            code: status.code(),
            message: status.message().to_string(),
        })?;
        json_line(method, &message, &mut line)?;
        if stdin.write_all(&line).await.is_err() {
            break;
        }
        written += line.len() as u64;
    }
    Ok(written)
}

/// Logs stderr lines (debug level) and keeps the last bytes to explain a failure.
async fn read_tail<R: AsyncRead + Unpin>(stderr: Option<R>, request_id: &str) -> String {
    let Some(stderr) = stderr else {
        return String::new();
    };
    let mut reader = BufReader::new(stderr);
    let mut kept = String::new();
    let mut line = Vec::new();
    let mut events = 0;
    while let Ok(Line::Complete | Line::TooLong) =
        read_line(&mut reader, &mut line, 64 * 1024).await
    {
        let text = String::from_utf8_lossy(&line);
        tracing::debug!(request_id, "stderr: {text}");
        if events < MAX_STDERR_EVENTS {
            // Becomes an event on the execution's span (bounded).
            crate::mesh::telemetry::span::event("stderr", || {
                vec![opentelemetry::KeyValue::new("line", text.to_string())]
            });
            events += 1;
        }
        kept.push_str(&text);
        kept.push('\n');
        if kept.len() > 2 * STDERR_TAIL {
            kept = tail(&kept, STDERR_TAIL).to_string();
        }
    }
    tail(&kept, STDERR_TAIL).to_string()
}

impl Executor for SpawnRunner {
    fn mode(&self) -> &'static str {
        "spawn"
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
