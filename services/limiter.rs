//! Per-method concurrency limit with a bounded queue.
//!
//! At most `max_concurrency` calls run; up to `max_queue` more wait in FIFO order; beyond that a call
//! is refused at once, so an overloaded server sheds load instead of growing memory and latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::CallError;
use crate::mesh::telemetry::metrics::{metrics, name};

/// The limiter of one method.
#[derive(Debug)]
pub struct Limiter {
    method: String,
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    waiting: AtomicUsize,
    max_queue: usize,
    /// The method's `queue_depth` gauge, looked up in its family the first time a call waits.
    depth: OnceLock<Gauge>,
}

/// A running call's slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Limiter {
    /// A limiter for `method`.
    pub fn new(method: impl Into<String>, max_concurrency: usize, max_queue: usize) -> Self {
        Self {
            method: method.into(),
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            waiting: AtomicUsize::new(0),
            max_queue,
            depth: OnceLock::new(),
        }
    }

    /// Waits for a slot, or fails at once with `Overloaded` when the queue is full.
    pub async fn acquire(&self) -> Result<Slot, CallError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.overloaded());
        }
        let depth = self
            .depth
            .get_or_init(|| {
                metrics()
                    .queue_depth
                    .get_or_create(&name(&self.method))
                    .clone()
            })
            .clone();
        depth.inc();
        let _queued = QueuedGuard(&self.waiting);
        let _depth = DepthGuard(depth);
        match self.slots.clone().acquire_owned().await {
            Ok(permit) => Ok(Slot { _permit: permit }),
            Err(_) => Err(CallError::ShuttingDown),
        }
    }

    /// Calls waiting right now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn overloaded(&self) -> CallError {
        CallError::Overloaded {
            method: self.method.clone(),
            running: self.max_concurrency,
            queued: self.max_queue,
        }
    }
}

struct QueuedGuard<'a>(&'a AtomicUsize);

struct DepthGuard(Gauge);

impl Drop for DepthGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_when_running_and_queue_are_full() {
        let limiter = Arc::new(Limiter::new("m", 1, 1));
        let first = limiter.acquire().await.expect("free slot");
        let queued = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await.map(|_| ()) })
        };
        while limiter.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            limiter.acquire().await,
            Err(CallError::Overloaded { .. })
        ));
        drop(first);
        queued
            .await
            .expect("task")
            .expect("queued call gets the slot");
        assert_eq!(limiter.queued(), 0);
    }
}
