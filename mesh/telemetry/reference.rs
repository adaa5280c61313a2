//! The OpenTelemetry SDK as the reference exemesh's spans are held to in tests: a tracer provider
//! whose finished spans are kept, and ids that two tracers can be given alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{IdGenerator, Span, SpanData, SpanProcessor};

/// Keeps every span that ends (recording ones: sampled or not).
#[derive(Debug, Clone, Default)]
pub struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl Kept {
    /// The spans ended so far, taken.
    pub fn take(&self) -> Vec<SpanData> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl SpanProcessor for Kept {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Ids from a counter, spread over the whole range (as ratio samplers need): two generators made
/// with the same seed give the same ids in the same order.
#[derive(Debug)]
pub struct CountedIds(AtomicU64);

impl CountedIds {
    /// Ids counted from `seed`.
    pub fn new(seed: u64) -> CountedIds {
        CountedIds(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
    }
}

impl IdGenerator for CountedIds {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from(u128::from(self.next()) << 64 | u128::from(self.next()))
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from(self.next())
    }
}
