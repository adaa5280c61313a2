//! Retry support: the budget that bounds retries to a fraction of the traffic, and reading a
//! trailers-only status.

use std::time::Duration;

use http::{HeaderMap, Response};
use prost_reflect::{MethodDescriptor, Value};
use tonic::Code;
use tower::retry::budget::{Budget, TpsBudget};

/// Retries allowed: 20% of the calls of the last 10 s, plus a floor of 10 per second so a quiet
/// client can still retry.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl Default for RetryBudget {
    fn default() -> Self {
        Self(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
    }
}

impl RetryBudget {
    /// Records a call.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry from the budget; false when exhausted.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

/// The status of a trailers-only response (an error answered without messages), if it is one.
pub fn status_of<B>(response: &Response<B>) -> Option<Code> {
    status_in(response.headers())
}

/// The `grpc-status` among `headers` (response headers or trailers), if present and readable.
pub fn status_in(headers: &HeaderMap) -> Option<Code> {
    crate::mesh::status_code::status_number(headers).map(Code::from_i32)
}

/// True when the contract marks the method `idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT`:
/// such calls may be retried on another instance.
pub fn is_idempotent(method: &MethodDescriptor) -> bool {
    let options = method.options();
    matches!(
        options.get_field_by_name("idempotency_level").as_deref(),
        Some(Value::EnumNumber(1 | 2))
    )
}
