//! Everything that can go wrong in a call, and the one place where it becomes a gRPC status.

use std::time::Duration;

use tonic::{Code, Status};

/// Bound on any text an executable controls that ends up in a status message.
pub const MAX_DETAIL: usize = 2048;

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request cannot be used (undecodable, or a value that cannot be an argument).
    #[error("{0}")]
    BadRequest(String),
    /// The method's concurrency limit and queue are full.
    #[error("{method}: too many calls ({running} running, {queued} queued); try again later")]
    Overloaded {
        /// The method.
        method: String,
        /// Its concurrency limit.
        running: usize,
        /// Its queue bound.
        queued: usize,
    },
    /// The executable wrote more than allowed.
    #[error("{method}: output exceeded the limit of {limit} bytes; the process was killed")]
    OutputTooLarge {
        /// The method.
        method: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The deadline passed.
    #[error("{method}: deadline of {}ms exceeded", .after.as_millis())]
    DeadlineExceeded {
        /// The method.
        method: String,
        /// The time the call had.
        after: Duration,
    },
    /// The executable's reply is not valid for the reply type.
    #[error("{method}: reply is not valid JSON for {message_type}: {detail}")]
    BadReply {
        /// The method.
        method: String,
        /// The reply type.
        message_type: String,
        /// The parse error (bounded).
        detail: String,
    },
    /// The executable reported an error itself (error JSON, error frame, or exit code).
    #[error("{message}")]
    Reported {
        /// The status it chose.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The program could not be started.
    #[error("{method}: cannot start {program}: {detail}")]
    SpawnFailed {
        /// The method.
        method: String,
        /// The program.
        program: String,
        /// The OS error.
        detail: String,
    },
    /// The worker running the call went away.
    #[error("{method}: worker {worker} {detail}")]
    WorkerLost {
        /// The method.
        method: String,
        /// The worker's id.
        worker: String,
        /// What happened.
        detail: String,
    },
    /// No worker of the pool is running.
    #[error("{method}: no worker of pool {pool} is ready")]
    NoWorker {
        /// The method.
        method: String,
        /// The pool.
        pool: String,
    },
    /// The executable broke the protocol or the RPC shape (e.g. two replies to a unary call).
    #[error("{method}: {detail}")]
    Protocol {
        /// The method.
        method: String,
        /// What was wrong.
        detail: String,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<CallError> for Status {
    fn from(err: CallError) -> Status {
        let code = match &err {
            CallError::BadRequest(_) => Code::InvalidArgument,
            CallError::Overloaded { .. } | CallError::OutputTooLarge { .. } => {
                Code::ResourceExhausted
            }
            CallError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            CallError::BadReply { .. }
            | CallError::SpawnFailed { .. }
            | CallError::Protocol { .. } => Code::Internal,
            CallError::Reported { code, .. } => *code,
            CallError::WorkerLost { .. } | CallError::NoWorker { .. } | CallError::ShuttingDown => {
                Code::Unavailable
            }
        };
        Status::new(code, bounded(&err.to_string(), MAX_DETAIL))
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The last `max` bytes of `text`, on a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
