//! Retry support: the budget that bounds retries to a fraction of the traffic, and reading a
//! trailers-only status.

use std::time::Duration;

use http::Response;
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
    let value = response
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}
